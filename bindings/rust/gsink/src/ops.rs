//! The model's layers and metrics on your own buffers, without a model
//! (`gsink_ops_*`, `gsink_metric_*`; docs/embedding.md).
//!
//! [`Ops`] runs V-scale and causal attention (with the column statistics
//! computed in the kernel) on the CPU with slices in, vectors out. The
//! metric functions are pure functions of host slices and compute exactly
//! what the model's diagnostics compute. Every slice length is checked
//! against the shape before the library is called (`Status::ShapeMismatch`).
//!
//! Layout of the attention tensors (row-major, contiguous): q, out
//! `(batch, seq, n_heads, d_head)`, k `(batch, seq, n_kv_heads, d_head)`,
//! v `(batch, seq, n_v_heads, d_head)`, lse and statistics
//! `(batch, n_heads, seq)`.
//!
//! ```
//! use gsink::ops::{self, AttnShape, Ops};
//! let s = AttnShape { batch: 1, seq: 8, n_heads: 2, n_kv_heads: 1, n_v_heads: 1, d_head: 4,
//!                     softmax_scale: 0.0, sink_window: 4 };
//! let q = vec![0.1f32; 8 * 2 * 4];
//! let k = vec![0.2f32; 8 * 4];
//! let v = vec![0.3f32; 8 * 4];
//! let mut ops = Ops::cpu(1)?;
//! let f = ops.attention_forward(&s, &q, &k, &v)?;
//! let alpha = ops::sink_scores(&f.col_win, 1, 2, 8, 4, 0)?;
//! assert_eq!(alpha.len(), 2);
//! # Ok::<(), gsink::Error>(())
//! ```
use std::os::raw::c_int;
use std::ptr::{self, NonNull};

use gsink_sys as sys;

use crate::error::{check, cstr_lossy, Error, Result, Status};
use crate::model::BranchRatios;
use crate::options::{BatchAgg, VScaleMode};
use crate::util::{checked_product, to_c_int};

/// An ops handle on the CPU (`gsink_ops`), freed on drop; `Send`, not `Sync`.
#[derive(Debug)]
pub struct Ops {
    ptr: NonNull<sys::gsink_ops>,
}

// SAFETY: a gsink_ops may be used from any thread, one thread at a time;
// `&mut self` on every call and the absence of `Sync` enforce that.
unsafe impl Send for Ops {}

impl Drop for Ops {
    fn drop(&mut self) {
        // SAFETY: ptr came from gsink_ops_create and is freed once.
        unsafe { sys::gsink_ops_free(self.ptr.as_ptr()) }
    }
}

/// Attention shape (`gsink_attn_desc`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// n_kv_heads, or n_heads (V-scale per query head).
    pub n_v_heads: usize,
    pub d_head: usize,
    /// 0: 1/sqrt(d_head).
    pub softmax_scale: f32,
    /// T_eps of `col_win`.
    pub sink_window: usize,
}

/// Results of [`Ops::attention_forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttnForward {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
    /// M_s per (batch, head, s).
    pub col_mass: Vec<f32>,
    /// S_s per (batch, head, s).
    pub col_sq: Vec<f32>,
    /// Window sums of a_ts over t in [s, s + T_eps).
    pub col_win: Vec<f32>,
}

/// Gradients of [`Ops::attention_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

/// V-scale shape and settings (`gsink_vscale_desc`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VScaleShape {
    pub mode: VScaleMode,
    /// batch * seq.
    pub n_rows: usize,
    /// Heads of v.
    pub heads_in: usize,
    /// Heads of the output and of theta: heads_in or a multiple.
    pub heads_out: usize,
    pub d_head: usize,
    pub d_model: usize,
    pub sigma: f32,
}

fn need_len(got: usize, want: usize, what: &str) -> Result<()> {
    if got != want {
        return Err(Error::new(Status::ShapeMismatch, format!("{what} has {got} values, the shape needs {want}")));
    }
    Ok(())
}

fn mode_raw(m: VScaleMode) -> i32 {
    (match m {
        VScaleMode::Off => sys::gsink_vscale_mode_GSINK_VSCALE_OFF,
        VScaleMode::Full => sys::gsink_vscale_mode_GSINK_VSCALE_FULL,
        VScaleMode::BackwardOnly => sys::gsink_vscale_mode_GSINK_VSCALE_BACKWARD_ONLY,
    }) as i32
}

impl AttnShape {
    fn raw(&self) -> Result<sys::gsink_attn_desc> {
        let mut d = sys::gsink_attn_desc {
            size: 0,
            batch: 0,
            seq: 0,
            n_heads: 0,
            n_kv_heads: 0,
            n_v_heads: 0,
            d_head: 0,
            softmax_scale: 0.0,
            sink_window: 0,
            layout: 0,
        };
        // SAFETY: d is a valid struct of the size passed.
        unsafe { sys::gsink_attn_desc_init_size(&mut d, std::mem::size_of::<sys::gsink_attn_desc>()) };
        d.batch = to_c_int(self.batch, "batch")?;
        d.seq = to_c_int(self.seq, "seq")?;
        d.n_heads = to_c_int(self.n_heads, "n_heads")?;
        d.n_kv_heads = to_c_int(self.n_kv_heads, "n_kv_heads")?;
        d.n_v_heads = to_c_int(self.n_v_heads, "n_v_heads")?;
        d.d_head = to_c_int(self.d_head, "d_head")?;
        d.softmax_scale = self.softmax_scale;
        d.sink_window = to_c_int(self.sink_window, "sink_window")?;
        Ok(d)
    }

    /// Element counts of q, k, v and of lse / each statistic.
    fn lens(&self) -> Result<(usize, usize, usize, usize)> {
        let bt = checked_product(&[self.batch, self.seq], "attention")?;
        Ok((
            checked_product(&[bt, self.n_heads, self.d_head], "q")?,
            checked_product(&[bt, self.n_kv_heads, self.d_head], "k")?,
            checked_product(&[bt, self.n_v_heads, self.d_head], "v")?,
            checked_product(&[bt, self.n_heads], "lse")?,
        ))
    }
}

impl VScaleShape {
    fn raw(&self) -> Result<sys::gsink_vscale_desc> {
        let mut d = sys::gsink_vscale_desc {
            size: 0,
            mode: 0,
            n_rows: 0,
            heads_in: 0,
            heads_out: 0,
            d_head: 0,
            d_model: 0,
            sigma: 0.0,
        };
        // SAFETY: d is a valid struct of the size passed.
        unsafe { sys::gsink_vscale_desc_init_size(&mut d, std::mem::size_of::<sys::gsink_vscale_desc>()) };
        d.mode = mode_raw(self.mode);
        d.n_rows = to_c_int(self.n_rows, "n_rows")?;
        d.heads_in = to_c_int(self.heads_in, "heads_in")?;
        d.heads_out = to_c_int(self.heads_out, "heads_out")?;
        d.d_head = to_c_int(self.d_head, "d_head")?;
        d.d_model = to_c_int(self.d_model, "d_model")?;
        d.sigma = self.sigma;
        Ok(d)
    }

    fn lens(&self) -> Result<(usize, usize)> {
        Ok((
            checked_product(&[self.n_rows, self.heads_in, self.d_head], "v")?,
            checked_product(&[self.n_rows, self.heads_out, self.d_head], "out")?,
        ))
    }

    fn theta_ptr(&self, theta: &[f32]) -> Result<*const f32> {
        if self.mode == VScaleMode::Off && theta.is_empty() {
            return Ok(ptr::null());
        }
        need_len(theta.len(), self.heads_out, "theta")?;
        Ok(theta.as_ptr())
    }
}

impl Ops {
    /// An ops handle on the CPU with `n_threads` threads (0: one per CPU).
    pub fn cpu(n_threads: usize) -> Result<Ops> {
        crate::check_library_version()?;
        let mut o = sys::gsink_ops_options { size: 0, device: 0, device_index: 0, n_threads: 0, precision: 0 };
        // SAFETY: o is a valid struct of the size passed.
        unsafe { sys::gsink_ops_options_init_size(&mut o, std::mem::size_of::<sys::gsink_ops_options>()) };
        o.n_threads = to_c_int(n_threads, "n_threads")?;
        let mut out: *mut sys::gsink_ops = ptr::null_mut();
        // SAFETY: valid options and out pointer.
        check(unsafe { sys::gsink_ops_create(&o, &mut out) })?;
        NonNull::new(out)
            .map(|ptr| Ops { ptr })
            .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no ops handle"))
    }

    /// The raw handle, for code calling `gsink::sys` directly.
    pub fn as_ptr(&self) -> *mut sys::gsink_ops {
        self.ptr.as_ptr()
    }

    /// The handle's last error message.
    pub fn last_error_message(&self) -> String {
        // SAFETY: valid handle; returns a NUL-terminated string.
        unsafe { cstr_lossy(sys::gsink_ops_errmsg(self.ptr.as_ptr())) }
    }

    /// Causal attention: output, log-sum-exp and the column statistics.
    pub fn attention_forward(&mut self, s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnForward> {
        let d = s.raw()?;
        let (nq, nk, nv, nst) = s.lens()?;
        need_len(q.len(), nq, "q")?;
        need_len(k.len(), nk, "k")?;
        need_len(v.len(), nv, "v")?;
        let mut f = AttnForward {
            out: vec![0.0; nq],
            lse: vec![0.0; nst],
            col_mass: vec![0.0; nst],
            col_sq: vec![0.0; nst],
            col_win: vec![0.0; nst],
        };
        // SAFETY: every buffer holds the count the descriptor implies.
        check(unsafe {
            sys::gsink_ops_attention_forward(
                self.ptr.as_ptr(), &d, q.as_ptr(), k.as_ptr(), v.as_ptr(), f.out.as_mut_ptr(),
                f.lse.as_mut_ptr(), f.col_mass.as_mut_ptr(), f.col_sq.as_mut_ptr(), f.col_win.as_mut_ptr(),
            )
        })?;
        Ok(f)
    }

    /// Attention backward from dL/dout and the forward's out and lse.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &mut self, s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &[f32], lse: &[f32], dout: &[f32],
    ) -> Result<AttnGrads> {
        let d = s.raw()?;
        let (nq, nk, nv, nst) = s.lens()?;
        need_len(q.len(), nq, "q")?;
        need_len(k.len(), nk, "k")?;
        need_len(v.len(), nv, "v")?;
        need_len(out.len(), nq, "out")?;
        need_len(lse.len(), nst, "lse")?;
        need_len(dout.len(), nq, "dout")?;
        let mut g = AttnGrads { dq: vec![0.0; nq], dk: vec![0.0; nk], dv: vec![0.0; nv] };
        // SAFETY: every buffer holds the count the descriptor implies.
        check(unsafe {
            sys::gsink_ops_attention_backward(
                self.ptr.as_ptr(), &d, q.as_ptr(), k.as_ptr(), v.as_ptr(), out.as_ptr(), lse.as_ptr(),
                dout.as_ptr(), g.dq.as_mut_ptr(), g.dk.as_mut_ptr(), g.dv.as_mut_ptr(), ptr::null_mut(),
                ptr::null_mut(), ptr::null_mut(),
            )
        })?;
        Ok(g)
    }

    /// V-scale forward (theta: `heads_out` values; may be empty for `Off`).
    pub fn vscale_forward(&mut self, s: &VScaleShape, v: &[f32], theta: &[f32]) -> Result<Vec<f32>> {
        let d = s.raw()?;
        let (nin, nout) = s.lens()?;
        need_len(v.len(), nin, "v")?;
        let th = s.theta_ptr(theta)?;
        let mut out = vec![0.0; nout];
        // SAFETY: buffers hold the counts the descriptor implies.
        check(unsafe { sys::gsink_ops_vscale_forward(self.ptr.as_ptr(), &d, v.as_ptr(), th, out.as_mut_ptr()) })?;
        Ok(out)
    }

    /// V-scale backward: dL/dv, and dL/dtheta added to `dtheta` (Full mode).
    pub fn vscale_backward(
        &mut self, s: &VScaleShape, v: &[f32], theta: &[f32], dout: &[f32], dtheta: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let d = s.raw()?;
        let (nin, nout) = s.lens()?;
        need_len(v.len(), nin, "v")?;
        need_len(dout.len(), nout, "dout")?;
        let th = s.theta_ptr(theta)?;
        let dt = match dtheta {
            Some(dt) => {
                need_len(dt.len(), s.heads_out, "dtheta")?;
                dt.as_mut_ptr()
            }
            None => ptr::null_mut(),
        };
        let mut dv = vec![0.0; nin];
        // SAFETY: buffers hold the counts the descriptor implies.
        check(unsafe {
            sys::gsink_ops_vscale_backward(self.ptr.as_ptr(), &d, v.as_ptr(), th, dout.as_ptr(), dv.as_mut_ptr(), dt)
        })?;
        Ok(dv)
    }
}

fn ci(v: usize, what: &str) -> Result<c_int> {
    to_c_int(v, what)
}

/// Token-wise norms of x `(batch, seq, heads * head_width)`: one head or all
/// (`None`), batch-aggregated with `agg`.
pub fn token_norms(
    x: &[f32], batch: usize, seq: usize, heads: usize, head_width: usize, head: Option<usize>, agg: BatchAgg,
) -> Result<Vec<f32>> {
    need_len(x.len(), checked_product(&[batch, seq, heads, head_width], "x")?, "x")?;
    let h = match head {
        Some(h) => ci(h, "head")?,
        None => -1,
    };
    let mut out = vec![0.0; seq];
    // SAFETY: x holds the shape's values, out seq values.
    check(unsafe {
        sys::gsink_metric_token_norms(
            x.as_ptr(), ci(batch, "batch")?, ci(seq, "seq")?, ci(heads, "heads")?, ci(head_width, "head_width")?,
            h, agg.raw(), out.as_mut_ptr(), out.len(),
        )
    })?;
    Ok(out)
}

/// R_GS(s; T_e) from token-wise gradient norms.
pub fn gradient_sink_ratio(norms: &[f32], s: usize, t_e: usize) -> Result<f32> {
    let mut r = 0.0f32;
    // SAFETY: norms.len() values.
    check(unsafe { sys::gsink_metric_gradient_sink_ratio(norms.as_ptr(), norms.len(), ci(s, "s")?, ci(t_e, "t_e")?, &mut r) })?;
    Ok(r)
}

/// t0/early: norms[0] / mean(norms[1..=15]).
pub fn massive_activation_ratio(norms: &[f32]) -> Result<f32> {
    let mut r = 0.0f32;
    // SAFETY: norms.len() values.
    check(unsafe { sys::gsink_metric_massive_activation_ratio(norms.as_ptr(), norms.len(), &mut r) })?;
    Ok(r)
}

/// Batch mean `(heads, seq)` of a column statistic `(batch, heads, seq)`.
pub fn column_mean(stat: &[f32], batch: usize, heads: usize, seq: usize) -> Result<Vec<f32>> {
    need_len(stat.len(), checked_product(&[batch, heads, seq], "stat")?, "stat")?;
    let mut out = vec![0.0; heads * seq];
    // SAFETY: stat holds the shape's values, out heads*seq.
    check(unsafe {
        sys::gsink_metric_column_mean(stat.as_ptr(), ci(batch, "batch")?, ci(heads, "heads")?, ci(seq, "seq")?,
                                      out.as_mut_ptr(), out.len())
    })?;
    Ok(out)
}

/// Sink scores alpha_s^h of every head from `col_win` `(batch, heads, seq)`.
pub fn sink_scores(col_win: &[f32], batch: usize, heads: usize, seq: usize, sink_window: usize, s: usize) -> Result<Vec<f32>> {
    need_len(col_win.len(), checked_product(&[batch, heads, seq], "col_win")?, "col_win")?;
    let mut out = vec![0.0; heads];
    // SAFETY: col_win holds the shape's values, out heads.
    check(unsafe {
        sys::gsink_metric_sink_scores(col_win.as_ptr(), ci(batch, "batch")?, ci(heads, "heads")?, ci(seq, "seq")?,
                                      ci(sink_window, "sink_window")?, ci(s, "s")?, out.as_mut_ptr(), out.len())
    })?;
    Ok(out)
}

/// Sink rate (share of heads with alpha_s^h > eps).
pub fn sink_rate(col_win: &[f32], batch: usize, heads: usize, seq: usize, sink_window: usize, s: usize, eps: f32) -> Result<f32> {
    need_len(col_win.len(), checked_product(&[batch, heads, seq], "col_win")?, "col_win")?;
    let mut r = 0.0f32;
    // SAFETY: col_win holds the shape's values.
    check(unsafe {
        sys::gsink_metric_sink_rate(col_win.as_ptr(), ci(batch, "batch")?, ci(heads, "heads")?, ci(seq, "seq")?,
                                    ci(sink_window, "sink_window")?, ci(s, "s")?, eps, &mut r)
    })?;
    Ok(r)
}

/// Bloat, Change, Compress from dL/dh_in, dL/d(branch out) and dL/d(normed
/// input), each `(batch, seq, width)`.
pub fn branch_ratios(
    grad_in: &[f32], grad_out: &[f32], grad_normed: &[f32], batch: usize, seq: usize, width: usize, agg: BatchAgg,
) -> Result<BranchRatios> {
    let n = checked_product(&[batch, seq, width], "gradients")?;
    need_len(grad_in.len(), n, "grad_in")?;
    need_len(grad_out.len(), n, "grad_out")?;
    need_len(grad_normed.len(), n, "grad_normed")?;
    let mut r = BranchRatios { bloat: vec![0.0; seq], change: vec![0.0; seq], compress: vec![0.0; seq] };
    // SAFETY: inputs hold n values, outputs seq.
    check(unsafe {
        sys::gsink_metric_branch_ratios(
            grad_in.as_ptr(), grad_out.as_ptr(), grad_normed.as_ptr(), ci(batch, "batch")?, ci(seq, "seq")?,
            ci(width, "width")?, agg.raw(), r.bloat.as_mut_ptr(), r.change.as_mut_ptr(), r.compress.as_mut_ptr(), seq,
        )
    })?;
    Ok(r)
}
