//! Streaming diagnostics over micro-batches (`gsink_analysis_*`): a batch of
//! N sequences run as micro-batches, keeping only the sums the report needs,
//! with the report of one forward and backward of the whole batch.
use std::os::raw::{c_char, c_int, c_void};
use std::ptr::{self, NonNull};

use gsink_sys as sys;

use crate::error::{check, cstr_lossy, Error, Result, Status};
use crate::model::Model;
use crate::options::{BatchAgg, DiagOptions};
use crate::site::Site;
use crate::util::{checked_product, to_c_int};

/// Sequences, micro-batches and target tokens added so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisCounts {
    pub sequences: i64,
    pub micro_batches: i64,
    pub n_targets: i64,
}

/// A streaming analysis of one model. It borrows the model mutably for its
/// whole life (each `add` runs the model's forward and backward).
#[derive(Debug)]
pub struct Analysis<'m> {
    ptr: NonNull<sys::gsink_analysis>,
    model: &'m mut Model,
    seq_len: usize,
}

// SAFETY: like Model, the handle may move between threads together with the
// exclusive borrow of its model.
unsafe impl Send for Analysis<'_> {}

impl Drop for Analysis<'_> {
    fn drop(&mut self) {
        // SAFETY: ptr came from gsink_analysis_begin and is freed once.
        unsafe { sys::gsink_analysis_free(self.ptr.as_ptr()) }
    }
}

fn take_json(json: *mut c_char) -> String {
    // SAFETY: json is a NUL-terminated string from the library, freed with gsink_free.
    let s = unsafe { cstr_lossy(json) };
    unsafe { sys::gsink_free(json.cast()) };
    s
}

impl<'m> Analysis<'m> {
    /// Starts an analysis of sequences of `seq_len` tokens; `opts` (None: the
    /// model's diagnostic options) sets the sink window of the forwards and
    /// the report's defaults.
    pub fn new(model: &'m mut Model, seq_len: usize, opts: Option<&DiagOptions>) -> Result<Analysis<'m>> {
        let t = to_c_int(seq_len, "seq_len")?;
        let raw = opts.map(|o| o.to_raw());
        let p = raw.as_ref().map_or(ptr::null(), |o| o as *const _);
        let mut out: *mut sys::gsink_analysis = ptr::null_mut();
        // SAFETY: valid model handle, optional options, out pointer.
        check(unsafe { sys::gsink_analysis_begin(model.as_ptr(), t, p, &mut out) })?;
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no analysis"))?;
        Ok(Analysis { ptr, model, seq_len })
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    /// Forward + backward of a micro-batch `tokens` (batch, seq_len);
    /// `targets` (same shape, < 0 ignored) default to the next token of each
    /// sequence.
    pub fn add(&mut self, tokens: &[i32], targets: Option<&[i32]>, batch: usize) -> Result<()> {
        let n = checked_product(&[batch, self.seq_len], "tokens")?;
        if tokens.len() != n || targets.is_some_and(|t| t.len() != n) {
            return Err(Error::new(
                Status::ShapeMismatch,
                format!("tokens (and targets) must hold batch*seq_len = {}*{} = {} ids", batch, self.seq_len, n),
            ));
        }
        let b = to_c_int(batch, "batch")?;
        let t = to_c_int(self.seq_len, "seq_len")?;
        let tg = targets.map_or(ptr::null(), |x| x.as_ptr());
        // SAFETY: tokens/targets hold batch*seq_len ids.
        check(unsafe { sys::gsink_analysis_add(self.ptr.as_ptr(), tokens.as_ptr(), tg, b, t) })
    }

    /// No more micro-batches (`add` then fails with `Status::CallOrder`).
    pub fn finish(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::gsink_analysis_finish(self.ptr.as_ptr()) })
    }

    /// The gsink.report/1 JSON of the micro-batches so far.
    pub fn report_json(&mut self, opts: Option<&DiagOptions>) -> Result<String> {
        let raw = opts.map(|o| o.to_raw());
        let p = raw.as_ref().map_or(ptr::null(), |o| o as *const _);
        let mut json: *mut c_char = ptr::null_mut();
        // SAFETY: valid handle, optional options, out pointer.
        check(unsafe { sys::gsink_analysis_report_json(self.ptr.as_ptr(), p, &mut json) })?;
        Ok(take_json(json))
    }

    /// Gradient-norm profile of a site over the batch: seq_len values for
    /// attn_norm_out, min(seq_len, 64) for the other sites.
    pub fn gradient_norms(&mut self, layer: usize, site: Site, head: Option<usize>, agg: BatchAgg) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let h = match head {
            None => -1,
            Some(h) => to_c_int(h, "head")?,
        };
        let mut len = 0usize;
        // SAFETY: out NULL asks the length only.
        check(unsafe {
            sys::gsink_analysis_gradient_norms(self.ptr.as_ptr(), l, site.raw(), h, agg.raw(), ptr::null_mut(), 0, &mut len)
        })?;
        let mut out = vec![0f32; len];
        // SAFETY: out holds out.len() floats.
        check(unsafe {
            sys::gsink_analysis_gradient_norms(self.ptr.as_ptr(), l, site.raw(), h, agg.raw(), out.as_mut_ptr(), out.len(), &mut len)
        })?;
        Ok(out)
    }

    pub fn counts(&mut self) -> Result<AnalysisCounts> {
        let (mut s, mut m, mut n) = (0i64, 0i64, 0i64);
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_analysis_counts(self.ptr.as_ptr(), &mut s, &mut m, &mut n) })?;
        Ok(AnalysisCounts { sequences: s, micro_batches: m, n_targets: n })
    }

    /// (bytes of the sums, fixed at creation; largest per-micro-batch temporaries so far).
    pub fn memory(&mut self) -> Result<(u64, u64)> {
        let (mut a, mut b) = (0u64, 0u64);
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_analysis_memory(self.ptr.as_ptr(), &mut a, &mut b) })?;
        Ok((a, b))
    }

    /// The sums as one flat vector (element-wise summable across handles).
    pub fn state(&mut self) -> Result<Vec<f64>> {
        let mut n = 0usize;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_analysis_state_size(self.ptr.as_ptr(), &mut n) })?;
        let mut v = vec![0f64; n];
        // SAFETY: v holds n doubles.
        check(unsafe { sys::gsink_analysis_get_state(self.ptr.as_ptr(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }

    /// Replaces the sums (e.g. by the sum of several handles' states).
    pub fn set_state(&mut self, state: &[f64]) -> Result<()> {
        // SAFETY: state holds state.len() doubles.
        check(unsafe { sys::gsink_analysis_set_state(self.ptr.as_ptr(), state.as_ptr(), state.len()) })
    }
}

struct Progress<'a> {
    f: &'a mut dyn FnMut(i64, i64) -> bool,
    panicked: bool,
}

unsafe extern "C" fn progress_tramp(done: i64, total: i64, user: *mut c_void) -> c_int {
    // SAFETY: user is the &mut Progress passed to gsink_analyze_sequences below.
    let p = unsafe { &mut *(user as *mut Progress) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (p.f)(done, total))) {
        Ok(stop) => c_int::from(stop),
        Err(_) => {
            p.panicked = true;
            1
        }
    }
}

/// One call: `tokens` (n_seq, seq_len) with next-token targets, in
/// micro-batches of `micro_batch` sequences; returns the report JSON.
/// `progress(done, total)` runs after each micro-batch; returning true stops
/// the run with `Status::Cancelled` (a panic in it stops the run too).
pub fn analyze_sequences(
    model: &mut Model,
    tokens: &[i32],
    n_seq: usize,
    seq_len: usize,
    micro_batch: usize,
    opts: Option<&DiagOptions>,
    progress: Option<&mut dyn FnMut(i64, i64) -> bool>,
) -> Result<String> {
    let n = checked_product(&[n_seq, seq_len], "tokens")?;
    if tokens.len() != n {
        return Err(Error::new(
            Status::ShapeMismatch,
            format!("tokens has {} ids but n_seq*seq_len = {}", tokens.len(), n),
        ));
    }
    let raw = opts.map(|o| o.to_raw());
    let p = raw.as_ref().map_or(ptr::null(), |o| o as *const _);
    let mut json: *mut c_char = ptr::null_mut();
    let mut state = progress.map(|f| Progress { f, panicked: false });
    let (cb, user): (sys::gsink_progress_fn, *mut c_void) = match state.as_mut() {
        Some(s) => (Some(progress_tramp), s as *mut Progress as *mut c_void),
        None => (None, ptr::null_mut()),
    };
    // SAFETY: tokens hold n_seq*seq_len ids; user outlives the call.
    let code = unsafe {
        sys::gsink_analyze_sequences(
            model.as_ptr(),
            tokens.as_ptr(),
            to_c_int(n_seq, "n_seq")?,
            to_c_int(seq_len, "seq_len")?,
            to_c_int(micro_batch, "micro_batch")?,
            p,
            cb,
            user,
            &mut json,
        )
    };
    if state.as_ref().is_some_and(|s| s.panicked) {
        panic!("the progress callback of analyze_sequences panicked");
    }
    check(code)?;
    Ok(take_json(json))
}
