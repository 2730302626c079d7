//! BPE tokenizer: GPT-2 style byte-level, read from a GGUF file or a
//! HuggingFace tokenizer.json, or SentencePiece-style (Llama 2, Mistral)
//! read from a tokenizer.json.
use std::path::Path;
use std::ptr::{self, NonNull};

use gsink_sys as sys;

use crate::error::{check, Error, Result, Status};
use crate::util::path_to_cstring;

/// A tokenizer handle, freed on drop. `Send`, not `Sync`.
#[derive(Debug)]
pub struct Tokenizer {
    ptr: NonNull<sys::gsink_tokenizer>,
}

// SAFETY: used by one thread at a time (`&mut self` for encode/decode).
unsafe impl Send for Tokenizer {}

impl Drop for Tokenizer {
    fn drop(&mut self) {
        // SAFETY: ptr came from gsink_tokenizer_load_gguf/_json and is freed once.
        unsafe { sys::gsink_tokenizer_free(self.ptr.as_ptr()) }
    }
}

fn is_buffer_too_small(e: &Error) -> bool {
    e.status() == Status::BufferTooSmall
}

impl Tokenizer {
    /// Builds a tokenizer from a GGUF file's tokenizer.ggml.* metadata.
    pub fn load_gguf(path: impl AsRef<Path>) -> Result<Tokenizer> {
        crate::check_library_version()?;
        let cpath = path_to_cstring(path.as_ref())?;
        let mut out: *mut sys::gsink_tokenizer = ptr::null_mut();
        // SAFETY: valid path and out pointer.
        check(unsafe { sys::gsink_tokenizer_load_gguf(cpath.as_ptr(), &mut out) })?;
        NonNull::new(out)
            .map(|ptr| Tokenizer { ptr })
            .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no tokenizer"))
    }

    /// Builds a tokenizer from a HuggingFace tokenizer.json (the file, or a
    /// model directory holding it; tokenizer_config.json beside it gives
    /// BOS/EOS).
    pub fn load_json(path: impl AsRef<Path>) -> Result<Tokenizer> {
        crate::check_library_version()?;
        let cpath = path_to_cstring(path.as_ref())?;
        let mut out: *mut sys::gsink_tokenizer = ptr::null_mut();
        // SAFETY: valid path and out pointer.
        check(unsafe { sys::gsink_tokenizer_load_json(cpath.as_ptr(), &mut out) })?;
        NonNull::new(out)
            .map(|ptr| Tokenizer { ptr })
            .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no tokenizer"))
    }

    /// Id of the token whose vocabulary text is `text` (e.g.
    /// "<|endoftext|>"), None when there is none.
    pub fn token_id(&self, text: &str) -> Result<Option<i32>> {
        let c = match std::ffi::CString::new(text) {
            Ok(c) => c,
            Err(_) => return Ok(None),
        };
        let mut id = -1i32;
        // SAFETY: valid handle, NUL-terminated text and out pointer.
        match check(unsafe { sys::gsink_tokenizer_token_id(self.ptr.as_ptr(), c.as_ptr(), &mut id) }) {
            Ok(()) => Ok(Some(id)),
            Err(e) if e.status() == Status::UnknownName => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn vocab_size(&self) -> Result<usize> {
        let mut n = 0i32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_tokenizer_vocab_size(self.ptr.as_ptr(), &mut n) })?;
        Ok(n.max(0) as usize)
    }

    /// (BOS, EOS) ids, None when the vocabulary has none.
    pub fn special_tokens(&self) -> Result<(Option<i32>, Option<i32>)> {
        let (mut bos, mut eos) = (-1i32, -1i32);
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_tokenizer_special(self.ptr.as_ptr(), &mut bos, &mut eos) })?;
        Ok(((bos >= 0).then_some(bos), (eos >= 0).then_some(eos)))
    }

    /// Encodes UTF-8 text to token ids.
    pub fn encode(&mut self, text: &str, add_bos: bool, parse_special: bool) -> Result<Vec<i32>> {
        let mut flags = 0u32;
        if add_bos {
            flags |= sys::GSINK_ENCODE_ADD_BOS;
        }
        if parse_special {
            flags |= sys::GSINK_ENCODE_PARSE_SPECIAL;
        }
        let mut ids = vec![0i32; text.len() + 2];
        loop {
            let mut n = 0usize;
            // SAFETY: text is valid for text.len() bytes (not NUL-terminated,
            // the length is passed); ids holds ids.len() ints.
            let r = check(unsafe {
                sys::gsink_tokenizer_encode(
                    self.ptr.as_ptr(),
                    text.as_ptr().cast(),
                    text.len(),
                    flags,
                    ids.as_mut_ptr(),
                    ids.len(),
                    &mut n,
                )
            });
            match r {
                Ok(()) => {
                    ids.truncate(n);
                    return Ok(ids);
                }
                Err(e) if is_buffer_too_small(&e) && n > ids.len() => ids.resize(n, 0),
                Err(e) => return Err(e),
            }
        }
    }

    /// Decodes ids to a string (invalid UTF-8 is replaced).
    pub fn decode(&mut self, ids: &[i32]) -> Result<String> {
        let mut buf = vec![0u8; ids.len() * 8 + 16];
        loop {
            let mut len = 0usize;
            // SAFETY: ids valid for ids.len() ints; buf for buf.len() bytes.
            let r = check(unsafe {
                sys::gsink_tokenizer_decode(self.ptr.as_ptr(), ids.as_ptr(), ids.len(), buf.as_mut_ptr().cast(), buf.len(), &mut len)
            });
            match r {
                Ok(()) => {
                    buf.truncate(len.min(buf.len()));
                    return Ok(String::from_utf8_lossy(&buf).into_owned());
                }
                Err(e) if is_buffer_too_small(&e) && len + 1 > buf.len() => buf.resize(len + 1, 0),
                Err(e) => return Err(e),
            }
        }
    }
}
