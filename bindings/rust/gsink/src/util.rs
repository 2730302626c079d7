//! Conversions at the FFI boundary, each failing with a library-style error
//! instead of panicking.
use std::ffi::CString;
use std::os::raw::c_int;
use std::path::Path;

use crate::error::{Error, Result, Status};

pub(crate) fn to_cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(Status::InvalidArgument, format!("{what} contains a NUL byte")))
}

pub(crate) fn path_to_cstring(p: &Path) -> Result<CString> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::new(Status::InvalidArgument, "path contains a NUL byte"))
    }
    #[cfg(not(unix))]
    {
        let s = p
            .to_str()
            .ok_or_else(|| Error::new(Status::InvalidArgument, "path is not valid UTF-8"))?;
        to_cstring(s, "path")
    }
}

pub(crate) fn to_c_int(v: usize, what: &str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::new(Status::OutOfRange, format!("{what} {v} does not fit in a C int")))
}

pub(crate) fn checked_product(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        Error::new(Status::OutOfMemory, format!("{what}: size {dims:?} overflows"))
    })
}
