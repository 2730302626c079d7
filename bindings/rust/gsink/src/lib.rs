//! Safe Rust API for libgsink: a Llama-style Transformer forward and backward
//! on the CPU, with the attention-sink, gradient-sink and massive-activation
//! diagnostics of "Attention Sinks Induce Gradient Sinks", and the V-scale
//! layer.
//!
//! ```no_run
//! use gsink::{BatchAgg, Model, Site};
//! let mut model = Model::from_preset("micro", 1234)?;
//! let tokens: Vec<i32> = (0..64).map(|t| (t * 7 + 3) % 64).collect();
//! let targets: Vec<i32> = (0..64).map(|t| if t < 63 { (t * 7 + 10) % 64 } else { -1 }).collect();
//! let loss = model.forward(&tokens, Some(&targets), 1, 64)?;
//! model.backward()?;
//! let rgs = model.gradient_sink_ratio(0, 0, 31, BatchAgg::SumThenNorm)?;
//! let t0_early = model.massive_activation_ratio(1, Site::ResidOut)?;
//! println!("loss {loss:?}, R_GS {rgs}, t0/early {t0_early}");
//! # Ok::<(), gsink::Error>(())
//! ```
//!
//! Errors come back as [`Error`], carrying the library's status and message.
//! The layers and metrics without a model, on your own slices, are in
//! [`ops`].
//!
//! Streaming diagnostics over micro-batches: [`Analysis`] and
//! [`analyze_sequences`].
//!
//! Handles ([`Model`], [`Optimizer`], [`Analysis`], [`Tokenizer`], [`ops::Ops`]) free themselves on drop
//! and are `Send` but not `Sync`.

pub use gsink_sys as sys;

mod analysis;
mod error;
mod model;
pub mod ops;
mod optimizer;
mod options;
mod site;
mod tokenizer;
mod util;

pub use analysis::{analyze_sequences, Analysis, AnalysisCounts};
pub use error::{Error, Result, Status};
pub use model::{BranchRatios, ColumnMass, Model, ParamInfo, QkvSplit};
pub use optimizer::Optimizer;
pub use options::{BatchAgg, Config, Device, DiagOptions, ModelOptions, OptimizerOptions, Precision, VScaleMode, VScaleOptions,
                  WeightDtype};
pub use site::{Branch, Site};
pub use tokenizer::Tokenizer;

use std::os::raw::c_int;

/// Version of the header this crate was generated from (MAJOR*10000+MINOR*100+PATCH).
pub const HEADER_VERSION: u32 = sys::GSINK_VERSION_NUMBER;

/// Version number of the loaded library.
pub fn version_number() -> u32 {
    // SAFETY: no arguments.
    unsafe { sys::gsink_version_number() }.max(0) as u32
}

/// Version string of the loaded library ("0.1.0").
pub fn version_string() -> String {
    // SAFETY: returns a static string.
    unsafe { error::cstr_lossy(sys::gsink_version_string()) }
}

/// Fails with `Status::Unsupported` when the loaded library is older than the
/// header this crate was generated from, or has another major version.
pub fn check_library_version() -> Result<()> {
    let have = version_number();
    let want = HEADER_VERSION;
    if have / 10000 != want / 10000 || have < want {
        return Err(Error::new(
            Status::Unsupported,
            format!(
                "libgsink {} (version number {}) is older than or incompatible with the {} this binding expects",
                version_string(),
                have,
                String::from_utf8_lossy(&sys::GSINK_VERSION_STRING[..sys::GSINK_VERSION_STRING.len() - 1])
            ),
        ));
    }
    Ok(())
}

/// Number of usable devices of a kind (CPU: 1; CUDA: 0 without CUDA).
pub fn device_count(device: Device) -> Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: out pointer valid.
    error::check(unsafe { sys::gsink_device_count(device.raw(), &mut n) })?;
    Ok(n.max(0) as usize)
}

/// Largest CPU thread count a model accepts (`ModelOptions::n_threads`,
/// `Model::set_threads`): 2 per CPU this process may run on (its CPU
/// affinity mask). Larger counts fail with `Status::InvalidArgument`.
pub fn max_threads() -> usize {
    // SAFETY: no arguments; reads the process's CPU affinity.
    let n = unsafe { sys::gsink_max_threads() };
    n.max(1) as usize
}

/// Human-readable description of a device.
pub fn device_describe(device: Device, index: usize) -> Result<String> {
    let idx = util::to_c_int(index, "device index")?;
    let mut buf = vec![0u8; 512];
    // SAFETY: buf holds buf.len() bytes; the library NUL-terminates.
    error::check(unsafe { sys::gsink_device_describe(device.raw(), idx, buf.as_mut_ptr().cast(), buf.len()) })?;
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}
