//! Status codes and the error type carried by every fallible call.
use std::ffi::CStr;
use std::fmt;
use std::os::raw::c_char;

use gsink_sys as sys;

/// A libgsink status code other than `GSINK_OK`. Codes are stable numbers;
/// codes added by a newer library than this crate knows come as `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    NullArgument,
    InvalidArgument,
    OutOfMemory,
    TokenOutOfRange,
    SeqTooLong,
    BadConfig,
    CallOrder,
    NoTargets,
    UnknownSite,
    UnknownName,
    OutOfRange,
    BufferTooSmall,
    ShapeMismatch,
    Io,
    Format,
    Unsupported,
    NoDevice,
    Backend,
    NonFinite,
    MissingTensor,
    DeviceOutOfMemory,
    /// The handle is inside a call on another thread (`GSINK_ERR_BUSY`). The
    /// crate's handles are `Send` but not `Sync`, so safe Rust cannot get it;
    /// it comes from a handle shared through `as_ptr` with other code.
    Busy,
    /// A progress callback asked to stop (`GSINK_ERR_CANCELLED`).
    Cancelled,
    Other(u32),
}

impl Status {
    /// Maps a raw non-zero `gsink_status` to a `Status`.
    pub fn from_code(code: u32) -> Status {
        use Status::*;
        match code {
            sys::gsink_status_GSINK_ERR_NULL_ARGUMENT => NullArgument,
            sys::gsink_status_GSINK_ERR_INVALID_ARGUMENT => InvalidArgument,
            sys::gsink_status_GSINK_ERR_OUT_OF_MEMORY => OutOfMemory,
            sys::gsink_status_GSINK_ERR_TOKEN_OUT_OF_RANGE => TokenOutOfRange,
            sys::gsink_status_GSINK_ERR_SEQ_TOO_LONG => SeqTooLong,
            sys::gsink_status_GSINK_ERR_BAD_CONFIG => BadConfig,
            sys::gsink_status_GSINK_ERR_CALL_ORDER => CallOrder,
            sys::gsink_status_GSINK_ERR_NO_TARGETS => NoTargets,
            sys::gsink_status_GSINK_ERR_UNKNOWN_SITE => UnknownSite,
            sys::gsink_status_GSINK_ERR_UNKNOWN_NAME => UnknownName,
            sys::gsink_status_GSINK_ERR_OUT_OF_RANGE => OutOfRange,
            sys::gsink_status_GSINK_ERR_BUFFER_TOO_SMALL => BufferTooSmall,
            sys::gsink_status_GSINK_ERR_SHAPE_MISMATCH => ShapeMismatch,
            sys::gsink_status_GSINK_ERR_IO => Io,
            sys::gsink_status_GSINK_ERR_FORMAT => Format,
            sys::gsink_status_GSINK_ERR_UNSUPPORTED => Unsupported,
            sys::gsink_status_GSINK_ERR_NO_DEVICE => NoDevice,
            sys::gsink_status_GSINK_ERR_BACKEND => Backend,
            sys::gsink_status_GSINK_ERR_NON_FINITE => NonFinite,
            sys::gsink_status_GSINK_ERR_MISSING_TENSOR => MissingTensor,
            sys::gsink_status_GSINK_ERR_DEVICE_OUT_OF_MEMORY => DeviceOutOfMemory,
            sys::gsink_status_GSINK_ERR_BUSY => Busy,
            sys::gsink_status_GSINK_ERR_CANCELLED => Cancelled,
            other => Other(other),
        }
    }

    /// The raw `gsink_status` number.
    pub fn code(self) -> u32 {
        use Status::*;
        match self {
            NullArgument => sys::gsink_status_GSINK_ERR_NULL_ARGUMENT,
            InvalidArgument => sys::gsink_status_GSINK_ERR_INVALID_ARGUMENT,
            OutOfMemory => sys::gsink_status_GSINK_ERR_OUT_OF_MEMORY,
            TokenOutOfRange => sys::gsink_status_GSINK_ERR_TOKEN_OUT_OF_RANGE,
            SeqTooLong => sys::gsink_status_GSINK_ERR_SEQ_TOO_LONG,
            BadConfig => sys::gsink_status_GSINK_ERR_BAD_CONFIG,
            CallOrder => sys::gsink_status_GSINK_ERR_CALL_ORDER,
            NoTargets => sys::gsink_status_GSINK_ERR_NO_TARGETS,
            UnknownSite => sys::gsink_status_GSINK_ERR_UNKNOWN_SITE,
            UnknownName => sys::gsink_status_GSINK_ERR_UNKNOWN_NAME,
            OutOfRange => sys::gsink_status_GSINK_ERR_OUT_OF_RANGE,
            BufferTooSmall => sys::gsink_status_GSINK_ERR_BUFFER_TOO_SMALL,
            ShapeMismatch => sys::gsink_status_GSINK_ERR_SHAPE_MISMATCH,
            Io => sys::gsink_status_GSINK_ERR_IO,
            Format => sys::gsink_status_GSINK_ERR_FORMAT,
            Unsupported => sys::gsink_status_GSINK_ERR_UNSUPPORTED,
            NoDevice => sys::gsink_status_GSINK_ERR_NO_DEVICE,
            Backend => sys::gsink_status_GSINK_ERR_BACKEND,
            NonFinite => sys::gsink_status_GSINK_ERR_NON_FINITE,
            MissingTensor => sys::gsink_status_GSINK_ERR_MISSING_TENSOR,
            DeviceOutOfMemory => sys::gsink_status_GSINK_ERR_DEVICE_OUT_OF_MEMORY,
            Busy => sys::gsink_status_GSINK_ERR_BUSY,
            Cancelled => sys::gsink_status_GSINK_ERR_CANCELLED,
            Other(c) => c,
        }
    }

    /// The library's short description of the code ("out of memory").
    pub fn description(self) -> String {
        // SAFETY: gsink_status_str never returns NULL and accepts any value.
        unsafe { cstr_lossy(sys::gsink_status_str(self.code())) }
    }
}

/// A failed libgsink call: the status code and the library's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    status: Status,
    message: String,
}

impl Error {
    pub(crate) fn new(status: Status, message: impl Into<String>) -> Error {
        Error { status, message: message.into() }
    }

    /// Builds the error for a non-zero status just returned on this thread,
    /// taking the thread's last library message.
    pub(crate) fn from_code(code: u32) -> Error {
        let status = Status::from_code(code);
        // SAFETY: gsink_last_error returns a NUL-terminated thread-local string.
        let mut message = unsafe { cstr_lossy(sys::gsink_last_error()) };
        if message.is_empty() {
            message = status.description();
        }
        Error { status, message }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// The raw `gsink_status` number.
    pub fn code(&self) -> u32 {
        self.status.code()
    }

    /// The library's message for this failure.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (gsink status {}): {}", self.status.description(), self.code(), self.message)
    }
}

impl std::error::Error for Error {}

/// Result of a libgsink call.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns a raw status into a `Result`.
pub(crate) fn check(code: sys::gsink_status) -> Result<()> {
    if code == sys::gsink_status_GSINK_OK {
        Ok(())
    } else {
        Err(Error::from_code(code))
    }
}

/// Copies a C string (NULL gives "").
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn cstr_lossy(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
