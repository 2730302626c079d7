//! The model handle: creation, parameters, forward/backward and metrics.
use std::os::raw::{c_char, c_int};
use std::path::Path;
use std::ptr::{self, NonNull};

use gsink_sys as sys;

use crate::error::{check, cstr_lossy, Error, Result, Status};
use crate::options::{empty_config, empty_diag, empty_vscale, BatchAgg, Config, DiagOptions, ModelOptions, VScaleMode, VScaleOptions};
use crate::site::{Branch, Site};
use crate::util::{checked_product, path_to_cstring, to_c_int, to_cstring};

/// Name and shape of a parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    /// HuggingFace LlamaForCausalLM name, e.g. "model.layers.0.self_attn.q_proj.weight".
    pub name: String,
    /// One or two dimensions, row-major.
    pub shape: Vec<usize>,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Bloat / Change / Compress per token (see `gsink_branch_ratios`).
#[derive(Debug, Clone, PartialEq)]
pub struct BranchRatios {
    pub bloat: Vec<f32>,
    pub change: Vec<f32>,
    pub compress: Vec<f32>,
}

/// Token-wise norms of the Q, K and V parts of dL/d attn_norm_out.
#[derive(Debug, Clone, PartialEq)]
pub struct QkvSplit {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// Column mass M_s and second moment S_s per key position.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMass {
    pub mass: Vec<f32>,
    pub second_moment: Vec<f32>,
}

/// A Llama-style model with its activations, gradients and diagnostics.
///
/// The handle is freed on drop. It may be moved to another thread (`Send`)
/// but not shared between threads (`!Sync`), as the C API requires:
///
/// ```compile_fail
/// fn needs_sync<T: Sync>() {}
/// needs_sync::<gsink::Model>();
/// ```
#[derive(Debug)]
pub struct Model {
    ptr: NonNull<sys::gsink_model>,
}

// SAFETY: a gsink_model may be used from any thread, one thread at a time;
// `&mut self` on every mutating call and the absence of `Sync` enforce that.
unsafe impl Send for Model {}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: ptr came from gsink_model_create/load and is freed once.
        unsafe { sys::gsink_model_free(self.ptr.as_ptr()) }
    }
}

fn wrap_model(code: sys::gsink_status, raw: *mut sys::gsink_model) -> Result<Model> {
    check(code)?;
    NonNull::new(raw)
        .map(|ptr| Model { ptr })
        .ok_or_else(|| Error::new(Status::NullArgument, "library returned success but no model"))
}

impl Model {
    /// Creates a model with freshly initialised weights.
    pub fn new(cfg: &Config, opts: &ModelOptions) -> Result<Model> {
        crate::check_library_version()?;
        let raw_cfg = cfg.to_raw();
        let raw_opts = opts.to_raw();
        let mut out: *mut sys::gsink_model = ptr::null_mut();
        // SAFETY: valid config, options and out pointer.
        let code = unsafe { sys::gsink_model_create(&raw_cfg, &raw_opts, &mut out) };
        wrap_model(code, out)
    }

    /// Creates a model from a named preset with the given seed.
    pub fn from_preset(name: &str, seed: u64) -> Result<Model> {
        let cfg = Config::preset(name)?;
        Model::new(&cfg, &ModelOptions { seed, ..ModelOptions::default() })
    }

    /// Loads a HuggingFace directory, a .safetensors file or a .gguf file.
    pub fn load(path: impl AsRef<Path>, opts: Option<&ModelOptions>) -> Result<Model> {
        crate::check_library_version()?;
        let cpath = path_to_cstring(path.as_ref())?;
        let raw_opts = opts.map(|o| o.to_raw());
        let opts_ptr = raw_opts.as_ref().map_or(ptr::null(), |o| o as *const _);
        let mut out: *mut sys::gsink_model = ptr::null_mut();
        // SAFETY: valid path, optional options, out pointer.
        let code = unsafe { sys::gsink_model_load(cpath.as_ptr(), opts_ptr, &mut out) };
        wrap_model(code, out)
    }

    /// Saves dir/model.safetensors + dir/config.json.
    pub fn save(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let cdir = path_to_cstring(dir.as_ref())?;
        // SAFETY: valid handle and path.
        check(unsafe { sys::gsink_model_save(self.raw(), cdir.as_ptr()) })
    }

    /// The raw handle, for calls the safe API does not cover. It stays owned
    /// by this `Model`.
    pub fn as_ptr(&self) -> *mut sys::gsink_model {
        self.ptr.as_ptr()
    }

    fn raw(&mut self) -> *mut sys::gsink_model {
        self.ptr.as_ptr()
    }

    /// The model's configuration.
    pub fn config(&self) -> Result<Config> {
        let mut raw = empty_config();
        // SAFETY: valid handle and struct with size set.
        check(unsafe { sys::gsink_model_config(self.ptr.as_ptr(), &mut raw) })?;
        Ok(Config::from_raw(&raw))
    }

    /// The last error message recorded on this model ("" if none).
    pub fn last_error_message(&self) -> String {
        // SAFETY: valid handle; the string is copied at once.
        unsafe { cstr_lossy(sys::gsink_model_errmsg(self.ptr.as_ptr())) }
    }

    /// Sets the number of CPU threads: 0 = one per CPU this process may run
    /// on, at most `max_threads()` (more gives `Status::InvalidArgument`).
    pub fn set_threads(&mut self, n_threads: usize) -> Result<()> {
        let n = to_c_int(n_threads, "n_threads")?;
        // SAFETY: valid handle.
        check(unsafe { sys::gsink_model_set_threads(self.raw(), n) })
    }

    /// Bytes of the buffers the model's backend holds now and the most
    /// since creation or the last reset (`gsink_model_memory`): device
    /// memory on CUDA, host memory on the CPU. `reset_peak` restarts the
    /// peak from the current bytes after reading.
    pub fn memory(&mut self, reset_peak: bool) -> Result<(u64, u64)> {
        let (mut bytes, mut peak) = (0u64, 0u64);
        let flags = if reset_peak { sys::gsink_memory_flags_GSINK_MEMORY_RESET_PEAK } else { 0 };
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_model_memory(self.raw(), &mut bytes, &mut peak, flags) })?;
        Ok((bytes, peak))
    }

    // ---------------------------------------------------------------- params

    /// Number of parameter tensors.
    pub fn param_count(&self) -> Result<usize> {
        let mut n = 0usize;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_param_count(self.ptr.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// Name and shape of parameter `index`.
    pub fn param_info(&self, index: usize) -> Result<ParamInfo> {
        let mut name: *const c_char = ptr::null();
        let mut ndim: c_int = 0;
        let mut dims = [0i64; 2];
        // SAFETY: valid handle; dims has room for 2 entries.
        check(unsafe { sys::gsink_param_info(self.ptr.as_ptr(), index, &mut name, &mut ndim, dims.as_mut_ptr()) })?;
        let ndim = usize::try_from(ndim).unwrap_or(0).min(2);
        let shape = dims[..ndim]
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| Error::new(Status::Format, format!("negative dimension {d}"))))
            .collect::<Result<Vec<_>>>()?;
        // SAFETY: the name lives as long as the model; copied here.
        Ok(ParamInfo { name: unsafe { cstr_lossy(name) }, shape })
    }

    /// All parameter tensors, in the library's order.
    pub fn params(&self) -> Result<Vec<ParamInfo>> {
        (0..self.param_count()?).map(|i| self.param_info(i)).collect()
    }

    /// Total number of scalar parameters (tied embeddings counted once).
    pub fn param_numel(&self) -> Result<usize> {
        let mut n = 0usize;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_param_numel(self.ptr.as_ptr(), &mut n) })?;
        Ok(n)
    }

    fn param_len(&self, name: &str) -> Result<usize> {
        for i in 0..self.param_count()? {
            let info = self.param_info(i)?;
            if info.name == name {
                return Ok(info.numel());
            }
        }
        Err(Error::new(Status::UnknownName, format!("unknown parameter '{name}'")))
    }

    /// Copies a parameter out into `out` (length must equal its numel).
    pub fn get_param_into(&mut self, name: &str, out: &mut [f32]) -> Result<()> {
        let cname = to_cstring(name, "parameter name")?;
        // SAFETY: out is valid for out.len() floats.
        check(unsafe { sys::gsink_get_param(self.raw(), cname.as_ptr(), out.as_mut_ptr(), out.len()) })
    }

    /// A copy of a parameter.
    pub fn get_param(&mut self, name: &str) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.param_len(name)?];
        self.get_param_into(name, &mut v)?;
        Ok(v)
    }

    /// Overwrites a parameter (length must equal its numel).
    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let cname = to_cstring(name, "parameter name")?;
        // SAFETY: data is valid for data.len() floats.
        check(unsafe { sys::gsink_set_param(self.raw(), cname.as_ptr(), data.as_ptr(), data.len()) })
    }

    /// A copy of a parameter's accumulated gradient.
    pub fn get_param_grad(&mut self, name: &str) -> Result<Vec<f32>> {
        let cname = to_cstring(name, "parameter name")?;
        let mut v = vec![0f32; self.param_len(name)?];
        // SAFETY: v is valid for v.len() floats.
        check(unsafe { sys::gsink_get_param_grad(self.raw(), cname.as_ptr(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }

    /// Every parameter in one flat vector of `param_numel()` values
    /// (`param_info` order, theta last).
    pub fn params_flat(&mut self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.param_numel()?];
        // SAFETY: v is valid for v.len() floats.
        check(unsafe { sys::gsink_get_params_flat(self.raw(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }

    /// Overwrites every parameter from one flat vector (layout of `params_flat`).
    pub fn set_params_flat(&mut self, data: &[f32]) -> Result<()> {
        // SAFETY: data is valid for data.len() floats.
        check(unsafe { sys::gsink_set_params_flat(self.raw(), data.as_ptr(), data.len()) })
    }

    /// Every accumulated gradient in one flat vector (layout of `params_flat`).
    pub fn grads_flat(&mut self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.param_numel()?];
        // SAFETY: v is valid for v.len() floats.
        check(unsafe { sys::gsink_get_grads_flat(self.raw(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }

    /// Replaces the accumulated gradients the next optimizer step reads.
    pub fn set_grads_flat(&mut self, data: &[f32]) -> Result<()> {
        // SAFETY: data is valid for data.len() floats.
        check(unsafe { sys::gsink_set_grads_flat(self.raw(), data.as_ptr(), data.len()) })
    }

    // ------------------------------------------------------ forward/backward

    /// Runs the model on `tokens` (batch x seq_len, row-major). With
    /// `targets` (same shape, entries < 0 ignored) returns the mean
    /// cross-entropy.
    pub fn forward(&mut self, tokens: &[i32], targets: Option<&[i32]>, batch: usize, seq_len: usize) -> Result<Option<f32>> {
        let n = checked_product(&[batch, seq_len], "tokens")?;
        if tokens.len() != n {
            return Err(Error::new(
                Status::ShapeMismatch,
                format!("tokens has {} entries but batch*seq_len = {}*{} = {}", tokens.len(), batch, seq_len, n),
            ));
        }
        if let Some(t) = targets {
            if t.len() != n {
                return Err(Error::new(
                    Status::ShapeMismatch,
                    format!("targets has {} entries but batch*seq_len = {}", t.len(), n),
                ));
            }
        }
        let b = to_c_int(batch, "batch")?;
        let t = to_c_int(seq_len, "seq_len")?;
        let mut loss = f32::NAN;
        let tgt = targets.map_or(ptr::null(), |t| t.as_ptr());
        // SAFETY: tokens/targets hold batch*seq_len ints each.
        check(unsafe { sys::gsink_forward(self.raw(), tokens.as_ptr(), tgt, b, t, &mut loss) })?;
        Ok(targets.map(|_| loss))
    }

    /// Exact gradients of the last forward's loss (overwrites parameter gradients).
    pub fn backward(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::gsink_backward(self.raw(), 0) })
    }

    /// Like `backward` but adds to the parameter gradients.
    pub fn backward_accumulate(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::gsink_backward(self.raw(), sys::GSINK_BACKWARD_ACCUMULATE) })
    }

    /// Sets all parameter gradients to zero.
    pub fn zero_grad(&mut self) -> Result<()> {
        // SAFETY: valid handle.
        check(unsafe { sys::gsink_zero_grad(self.raw()) })
    }

    /// (batch, seq_len) of the last forward.
    pub fn last_shape(&self) -> Result<(usize, usize)> {
        let (mut b, mut t): (c_int, c_int) = (0, 0);
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_last_shape(self.ptr.as_ptr(), &mut b, &mut t) })?;
        Ok((b.max(0) as usize, t.max(0) as usize))
    }

    fn seq_len(&self) -> Result<usize> {
        Ok(self.last_shape()?.1)
    }

    /// Logits of the last forward, (batch, seq_len, vocab) row-major.
    pub fn logits(&mut self) -> Result<Vec<f32>> {
        let (b, t) = self.last_shape()?;
        let v = self.config()?.vocab_size.max(0) as usize;
        let mut out = vec![0f32; checked_product(&[b, t, v], "logits")?];
        // SAFETY: out holds out.len() floats.
        check(unsafe { sys::gsink_get_logits(self.raw(), out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    // ---------------------------------------------------------------- sites

    /// (heads, width per head) of a site for this model.
    pub fn site_dims(&self, site: Site) -> Result<(usize, usize)> {
        let (mut h, mut w): (c_int, c_int) = (0, 0);
        // SAFETY: valid handle and out pointers.
        check(unsafe { sys::gsink_site_dims(self.ptr.as_ptr(), site.raw(), &mut h, &mut w) })?;
        Ok((h.max(0) as usize, w.max(0) as usize))
    }

    fn head_arg(head: Option<usize>) -> Result<c_int> {
        match head {
            None => Ok(sys::GSINK_ALL_HEADS),
            Some(h) => to_c_int(h, "head"),
        }
    }

    /// Token-wise activation norms mean_b ||x_{b,t}|| (`head`: None = all heads).
    pub fn activation_norms(&mut self, layer: usize, site: Site, head: Option<usize>) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let h = Self::head_arg(head)?;
        let mut out = vec![0f32; self.seq_len()?];
        // SAFETY: out holds out.len() floats.
        check(unsafe { sys::gsink_get_activation_norms(self.raw(), l, site.raw(), h, out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    /// Token-wise gradient norms of dL/dx at a site (needs `backward`).
    pub fn gradient_norms(&mut self, layer: usize, site: Site, head: Option<usize>, agg: BatchAgg) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let h = Self::head_arg(head)?;
        let mut out = vec![0f32; self.seq_len()?];
        // SAFETY: out holds out.len() floats.
        check(unsafe {
            sys::gsink_get_gradient_norms(self.raw(), l, site.raw(), h, agg.raw(), out.as_mut_ptr(), out.len())
        })?;
        Ok(out)
    }

    fn site_len(&self, site: Site) -> Result<usize> {
        let (b, t) = self.last_shape()?;
        let (h, w) = self.site_dims(site)?;
        checked_product(&[b, t, h, w], "site tensor")
    }

    /// Raw activation of a site, (batch, seq_len, heads*width).
    pub fn activation(&mut self, layer: usize, site: Site) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let mut out = vec![0f32; self.site_len(site)?];
        // SAFETY: out holds out.len() floats.
        check(unsafe { sys::gsink_get_activation(self.raw(), l, site.raw(), out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    /// Raw gradient dL/dx of a site, (batch, seq_len, heads*width).
    pub fn gradient(&mut self, layer: usize, site: Site) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let mut out = vec![0f32; self.site_len(site)?];
        // SAFETY: out holds out.len() floats.
        check(unsafe { sys::gsink_get_gradient(self.raw(), l, site.raw(), out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    // ---------------------------------------------------- attention metrics

    /// Sets the model's diagnostic defaults.
    pub fn set_diag_options(&mut self, opts: &DiagOptions) -> Result<()> {
        let raw = opts.to_raw();
        // SAFETY: valid handle and struct.
        check(unsafe { sys::gsink_set_diag_options(self.raw(), &raw) })
    }

    /// The model's diagnostic defaults.
    pub fn diag_options(&self) -> Result<DiagOptions> {
        let mut raw = empty_diag();
        // SAFETY: valid handle and struct.
        check(unsafe { sys::gsink_get_diag_options(self.ptr.as_ptr(), &mut raw) })?;
        DiagOptions::from_raw(&raw)
    }

    /// Column mass M_s and second moment S_s of one layer and head.
    pub fn column_mass(&mut self, layer: usize, head: usize) -> Result<ColumnMass> {
        let l = to_c_int(layer, "layer")?;
        let h = to_c_int(head, "head")?;
        let t = self.seq_len()?;
        let (mut m, mut s) = (vec![0f32; t], vec![0f32; t]);
        // SAFETY: both buffers hold t floats.
        check(unsafe { sys::gsink_attention_column_mass(self.raw(), l, h, m.as_mut_ptr(), s.as_mut_ptr(), t) })?;
        Ok(ColumnMass { mass: m, second_moment: s })
    }

    /// Sink scores alpha_s^h of every head of a layer.
    pub fn sink_scores(&mut self, layer: usize, s: usize) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let sp = to_c_int(s, "s")?;
        let mut out = vec![0f32; self.config()?.n_heads.max(0) as usize];
        // SAFETY: out holds n_heads floats.
        check(unsafe { sys::gsink_sink_scores(self.raw(), l, sp, out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    /// Sink rate (1/H) sum_h [alpha_s^h > eps] of a layer.
    pub fn sink_rate(&mut self, layer: usize, s: usize, eps: f32) -> Result<f32> {
        let l = to_c_int(layer, "layer")?;
        let sp = to_c_int(s, "s")?;
        let mut r = 0f32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_sink_rate(self.raw(), l, sp, eps, &mut r) })?;
        Ok(r)
    }

    /// Attention pattern a_tj (seq_len x seq_len) of one sequence and head.
    pub fn attention_pattern(&mut self, layer: usize, batch_index: usize, head: usize) -> Result<Vec<f32>> {
        let l = to_c_int(layer, "layer")?;
        let b = to_c_int(batch_index, "batch_index")?;
        let h = to_c_int(head, "head")?;
        let t = self.seq_len()?;
        let mut out = vec![0f32; checked_product(&[t, t], "attention pattern")?];
        // SAFETY: out holds t*t floats.
        check(unsafe { sys::gsink_attention_pattern(self.raw(), l, b, h, out.as_mut_ptr(), out.len()) })?;
        Ok(out)
    }

    // ------------------------------------------------------ derived metrics

    /// R_GS(s; T_e), the gradient-sink ratio at attn_norm_out of a layer.
    pub fn gradient_sink_ratio(&mut self, layer: usize, s: usize, t_e: usize, agg: BatchAgg) -> Result<f32> {
        let l = to_c_int(layer, "layer")?;
        let sp = to_c_int(s, "s")?;
        let te = to_c_int(t_e, "t_e")?;
        let mut r = 0f32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_gradient_sink_ratio(self.raw(), l, sp, te, agg.raw(), &mut r) })?;
        Ok(r)
    }

    /// Bloat / Change / Compress per token of a branch.
    pub fn branch_ratios(&mut self, layer: usize, branch: Branch, agg: BatchAgg) -> Result<BranchRatios> {
        let l = to_c_int(layer, "layer")?;
        let t = self.seq_len()?;
        let (mut a, mut b, mut c) = (vec![0f32; t], vec![0f32; t], vec![0f32; t]);
        // SAFETY: each buffer holds t floats.
        check(unsafe {
            sys::gsink_branch_ratios(self.raw(), l, branch.raw(), agg.raw(), a.as_mut_ptr(), b.as_mut_ptr(), c.as_mut_ptr(), t)
        })?;
        Ok(BranchRatios { bloat: a, change: b, compress: c })
    }

    /// ||x_0|| / mean_{t=1..15} ||x_t|| of a site (t0/early).
    pub fn massive_activation_ratio(&mut self, layer: usize, site: Site) -> Result<f32> {
        let l = to_c_int(layer, "layer")?;
        let mut r = 0f32;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_massive_activation_ratio(self.raw(), l, site.raw(), &mut r) })?;
        Ok(r)
    }

    /// Token-wise norms of the Q, K and V paths of dL/d attn_norm_out.
    pub fn qkv_gradient_split(&mut self, layer: usize, agg: BatchAgg) -> Result<QkvSplit> {
        let l = to_c_int(layer, "layer")?;
        let t = self.seq_len()?;
        let (mut q, mut k, mut v) = (vec![0f32; t], vec![0f32; t], vec![0f32; t]);
        // SAFETY: each buffer holds t floats.
        check(unsafe {
            sys::gsink_qkv_gradient_split(self.raw(), l, agg.raw(), q.as_mut_ptr(), k.as_mut_ptr(), v.as_mut_ptr(), t)
        })?;
        Ok(QkvSplit { q, k, v })
    }

    /// JSON report ("gsink.report/1") of every metric; `None` uses the model's defaults.
    pub fn report_json(&mut self, opts: Option<&DiagOptions>) -> Result<String> {
        let raw_opts = opts.map(|o| o.to_raw());
        let opts_ptr = raw_opts.as_ref().map_or(ptr::null(), |o| o as *const _);
        let mut json: *mut c_char = ptr::null_mut();
        // SAFETY: valid handle, optional options, out pointer.
        check(unsafe { sys::gsink_report_json(self.raw(), opts_ptr, &mut json) })?;
        // SAFETY: json is a NUL-terminated string owned by us, freed with gsink_free.
        let s = unsafe { cstr_lossy(json) };
        unsafe { sys::gsink_free(json.cast()) };
        Ok(s)
    }

    // --------------------------------------------------------------- V-scale

    /// Enables V-scale on every layer (mode Off disables it).
    pub fn vscale_enable(&mut self, opts: &VScaleOptions) -> Result<()> {
        let raw = opts.to_raw();
        // SAFETY: valid handle and struct.
        check(unsafe { sys::gsink_vscale_enable(self.raw(), &raw) })
    }

    /// Disables V-scale.
    pub fn vscale_disable(&mut self) -> Result<()> {
        self.vscale_enable(&VScaleOptions { mode: VScaleMode::Off, ..VScaleOptions::default() })
    }

    /// Current V-scale settings.
    pub fn vscale_options(&self) -> Result<VScaleOptions> {
        let mut raw = empty_vscale();
        // SAFETY: valid handle and struct.
        check(unsafe { sys::gsink_vscale_get(self.ptr.as_ptr(), &mut raw) })?;
        VScaleOptions::from_raw(&raw)
    }

    /// Number of theta values (n_layers * n_scale_heads; 0 when off).
    pub fn vscale_theta_count(&self) -> Result<usize> {
        let mut n = 0usize;
        // SAFETY: valid handle and out pointer.
        check(unsafe { sys::gsink_vscale_theta_count(self.ptr.as_ptr(), &mut n) })?;
        Ok(n)
    }

    /// theta, (n_layers, n_scale_heads) row-major.
    pub fn vscale_theta(&mut self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.vscale_theta_count()?];
        // SAFETY: v holds v.len() floats.
        check(unsafe { sys::gsink_vscale_get_theta(self.raw(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }

    /// Overwrites theta.
    pub fn set_vscale_theta(&mut self, data: &[f32]) -> Result<()> {
        // SAFETY: data holds data.len() floats.
        check(unsafe { sys::gsink_vscale_set_theta(self.raw(), data.as_ptr(), data.len()) })
    }

    /// Gradient of theta.
    pub fn vscale_theta_grad(&mut self) -> Result<Vec<f32>> {
        let mut v = vec![0f32; self.vscale_theta_count()?];
        // SAFETY: v holds v.len() floats.
        check(unsafe { sys::gsink_vscale_get_theta_grad(self.raw(), v.as_mut_ptr(), v.len()) })?;
        Ok(v)
    }
}
