//! AdamW with clipping and a cosine schedule, bound to one model.
use std::ptr::{self, NonNull};

use gsink_sys as sys;

use crate::error::{check, Error, Result, Status};
use crate::model::Model;
use crate::options::OptimizerOptions;

/// An optimizer over a model's parameters. It borrows the model mutably for
/// its whole life, so the model cannot be freed or used elsewhere while the
/// optimizer exists; reach the model through `model_mut`.
#[derive(Debug)]
pub struct Optimizer<'m> {
    ptr: NonNull<sys::gsink_optimizer>,
    model: &'m mut Model,
}

// SAFETY: like Model, an optimizer may move between threads together with
// the exclusive borrow of its model.
unsafe impl Send for Optimizer<'_> {}

impl Drop for Optimizer<'_> {
    fn drop(&mut self) {
        // SAFETY: ptr came from gsink_optimizer_create and is freed once,
        // before the borrowed model can be dropped.
        unsafe { sys::gsink_optimizer_free(self.ptr.as_ptr()) }
    }
}

impl<'m> Optimizer<'m> {
    pub fn new(model: &'m mut Model, opts: &OptimizerOptions) -> Result<Optimizer<'m>> {
        let raw = opts.to_raw();
        let mut out: *mut sys::gsink_optimizer = ptr::null_mut();
        // SAFETY: valid model handle, options and out pointer.
        check(unsafe { sys::gsink_optimizer_create(model.as_ptr(), &raw, &mut out) })?;
        let ptr = NonNull::new(out)
            .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no optimizer"))?;
        Ok(Optimizer { ptr, model })
    }

    pub fn model(&self) -> &Model {
        self.model
    }

    pub fn model_mut(&mut self) -> &mut Model {
        self.model
    }

    /// One AdamW update from the accumulated gradients (which are then
    /// zeroed); returns the pre-clip global gradient norm.
    pub fn step(&mut self) -> Result<f32> {
        let mut norm = 0f32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_optimizer_step(self.ptr.as_ptr(), &mut norm) })?;
        Ok(norm)
    }

    /// Learning rate of the schedule at `step` (0-based).
    pub fn lr_at(&self, step: i64) -> f32 {
        // SAFETY: valid handle.
        unsafe { sys::gsink_optimizer_lr_at(self.ptr.as_ptr(), step) }
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> i64 {
        // SAFETY: valid handle.
        unsafe { sys::gsink_optimizer_step_count(self.ptr.as_ptr()) }
    }
}
