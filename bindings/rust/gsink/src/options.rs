//! Model configuration and the options structs, as plain Rust values. They
//! are converted to the C structs (with their `size` field) at each call.

use gsink_sys as sys;

use crate::error::{check, cstr_lossy, Error, Result, Status};
use crate::util::to_cstring;

/// Model hyper-parameters (`gsink_config`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub vocab_size: i32,
    pub d_model: i32,
    pub n_layers: i32,
    pub n_heads: i32,
    pub n_kv_heads: i32,
    pub d_head: i32,
    pub d_ff: i32,
    pub max_seq_len: i32,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub tie_embeddings: bool,
    pub init_std: f32,
    /// Architecture (`gsink_arch`: 0 llama, 1 mistral, 2 qwen2, 3 qwen3, 4 glm, 5 glm4); see `arch_name`.
    pub arch: i32,
    /// q, k and v projections carry biases (Qwen2).
    pub qkv_bias: bool,
    /// RoPE scaling (`gsink_rope_scaling`: 0 none, 1 linear, 2 llama3, 3 yarn).
    pub rope_scaling: i32,
    pub rope_factor: f32,
    pub rope_low_freq_factor: f32,
    pub rope_high_freq_factor: f32,
    pub rope_original_max_pos: i32,
    pub rope_beta_fast: f32,
    pub rope_beta_slow: f32,
    pub rope_attention_factor: f32,
    pub rope_truncate: bool,
    /// RMSNorm of each q and k head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Rotated dims of each head (0: all of `d_head`; GLM: half).
    pub rope_dims: i32,
    /// RoPE rotates pairs (2i, 2i+1) (GLM) instead of HF's rotate_half halves.
    pub rope_interleaved: bool,
    /// RMSNorm on each branch output before the residual add (GLM-4-0414).
    pub sandwich_norm: bool,
    /// Sliding-window attention: 0 none; W > 0: query t sees keys t-W+1..=t.
    pub sliding_window: i32,
}

impl Default for Config {
    /// The library's default ("tiny" preset).
    fn default() -> Config {
        let mut raw = empty_config();
        // SAFETY: raw is a valid gsink_config.
        unsafe { sys::gsink_config_init_size(&mut raw, std::mem::size_of_val(&raw)) };
        Config::from_raw(&raw)
    }
}

pub(crate) fn empty_config() -> sys::gsink_config {
    sys::gsink_config {
        size: std::mem::size_of::<sys::gsink_config>(),
        vocab_size: 0,
        d_model: 0,
        n_layers: 0,
        n_heads: 0,
        n_kv_heads: 0,
        d_head: 0,
        d_ff: 0,
        max_seq_len: 0,
        rms_eps: 0.0,
        rope_theta: 0.0,
        tie_embeddings: 0,
        init_std: 0.0,
        arch: 0,
        qkv_bias: 0,
        rope_scaling: 0,
        rope_factor: 0.0,
        rope_low_freq_factor: 0.0,
        rope_high_freq_factor: 0.0,
        rope_original_max_pos: 0,
        rope_beta_fast: 0.0,
        rope_beta_slow: 0.0,
        rope_attention_factor: 0.0,
        rope_truncate: 0,
        qk_norm: 0,
        rope_dims: 0,
        rope_interleaved: 0,
        sandwich_norm: 0,
        sliding_window: 0,
    }
}

impl Config {
    /// A named preset ("micro", "tiny", "small", "bench-21m", "paper-0.1b", ...).
    pub fn preset(name: &str) -> Result<Config> {
        let cname = to_cstring(name, "preset name")?;
        let mut raw = empty_config();
        // SAFETY: valid NUL-terminated name and config.
        check(unsafe { sys::gsink_config_preset_size(cname.as_ptr(), &mut raw, std::mem::size_of_val(&raw)) })?;
        Ok(Config::from_raw(&raw))
    }

    /// Names of all presets the library knows.
    pub fn preset_names() -> Vec<String> {
        let mut names = Vec::new();
        for i in 0.. {
            // SAFETY: returns a static string or NULL past the end.
            let p = unsafe { sys::gsink_config_preset_name(i) };
            if p.is_null() {
                break;
            }
            names.push(unsafe { cstr_lossy(p) });
        }
        names
    }

    /// Checks the configuration for consistency (`GSINK_ERR_BAD_CONFIG`).
    pub fn validate(&self) -> Result<()> {
        let raw = self.to_raw();
        // SAFETY: raw is a valid config.
        check(unsafe { sys::gsink_config_validate(&raw) })
    }

    pub(crate) fn to_raw(&self) -> sys::gsink_config {
        sys::gsink_config {
            size: std::mem::size_of::<sys::gsink_config>(),
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            d_head: self.d_head,
            d_ff: self.d_ff,
            max_seq_len: self.max_seq_len,
            rms_eps: self.rms_eps,
            rope_theta: self.rope_theta,
            tie_embeddings: self.tie_embeddings as i32,
            init_std: self.init_std,
            arch: self.arch,
            qkv_bias: self.qkv_bias as i32,
            rope_scaling: self.rope_scaling,
            rope_factor: self.rope_factor,
            rope_low_freq_factor: self.rope_low_freq_factor,
            rope_high_freq_factor: self.rope_high_freq_factor,
            rope_original_max_pos: self.rope_original_max_pos,
            rope_beta_fast: self.rope_beta_fast,
            rope_beta_slow: self.rope_beta_slow,
            rope_attention_factor: self.rope_attention_factor,
            rope_truncate: self.rope_truncate as i32,
            qk_norm: self.qk_norm as i32,
            rope_dims: self.rope_dims,
            rope_interleaved: self.rope_interleaved as i32,
            sandwich_norm: self.sandwich_norm as i32,
            sliding_window: self.sliding_window,
        }
    }

    pub(crate) fn from_raw(raw: &sys::gsink_config) -> Config {
        Config {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            n_layers: raw.n_layers,
            n_heads: raw.n_heads,
            n_kv_heads: raw.n_kv_heads,
            d_head: raw.d_head,
            d_ff: raw.d_ff,
            max_seq_len: raw.max_seq_len,
            rms_eps: raw.rms_eps,
            rope_theta: raw.rope_theta,
            tie_embeddings: raw.tie_embeddings != 0,
            init_std: raw.init_std,
            arch: raw.arch,
            qkv_bias: raw.qkv_bias != 0,
            rope_scaling: raw.rope_scaling,
            rope_factor: raw.rope_factor,
            rope_low_freq_factor: raw.rope_low_freq_factor,
            rope_high_freq_factor: raw.rope_high_freq_factor,
            rope_original_max_pos: raw.rope_original_max_pos,
            rope_beta_fast: raw.rope_beta_fast,
            rope_beta_slow: raw.rope_beta_slow,
            rope_attention_factor: raw.rope_attention_factor,
            rope_truncate: raw.rope_truncate != 0,
            qk_norm: raw.qk_norm != 0,
            rope_dims: raw.rope_dims,
            rope_interleaved: raw.rope_interleaved != 0,
            sandwich_norm: raw.sandwich_norm != 0,
            sliding_window: raw.sliding_window,
        }
    }

    /// Name of the architecture ("llama", "mistral", "qwen2", "qwen3", "glm", "glm4"), if the library knows it.
    pub fn arch_name(&self) -> Option<String> {
        // SAFETY: returns a static string or NULL.
        let p = unsafe { sys::gsink_arch_name(self.arch) };
        if p.is_null() { None } else { Some(unsafe { cstr_lossy(p) }) }
    }

    /// Name of the RoPE scaling ("default", "linear", "llama3", "yarn"), if known.
    pub fn rope_scaling_name(&self) -> Option<String> {
        // SAFETY: returns a static string or NULL.
        let p = unsafe { sys::gsink_rope_scaling_name(self.rope_scaling) };
        if p.is_null() { None } else { Some(unsafe { cstr_lossy(p) }) }
    }
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    pub(crate) fn raw(self) -> sys::gsink_device_kind {
        match self {
            Device::Cpu => sys::gsink_device_kind_GSINK_DEVICE_CPU,
            Device::Cuda => sys::gsink_device_kind_GSINK_DEVICE_CUDA,
        }
    }
}

/// Options for creating or loading a model (`gsink_model_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOptions {
    pub device: Device,
    pub device_index: i32,
    /// CPU threads for this model; 0 = one per CPU this process may run on;
    /// at most `gsink::max_threads()`.
    pub n_threads: i32,
    /// Initialisation seed.
    pub seed: u64,
    /// Matrix-product precision: exact FP32 (default), TF32 or BF16 (CUDA only).
    pub precision: Precision,
    /// Keep no per-layer site gradients (`GSINK_MODEL_DISCARD_SITE_GRADS`):
    /// about half the activation memory of a training run; gradient
    /// diagnostics then fail with `Status::Unsupported`.
    pub discard_site_grads: bool,
    /// Activation gradients only (`GSINK_MODEL_ANALYSIS`): no
    /// parameter-gradient buffer and no weight gradients in `backward`, the
    /// same (bitwise) diagnostics; `param_grad`, `zero_grad`, accumulating
    /// backwards and optimizers then fail with `Status::Unsupported`.
    pub analysis: bool,
    /// With `analysis` only (`GSINK_MODEL_DISCARD_SITE_ACTIVATIONS`): the
    /// sites the activation-gradient backward does not read (attn_norm_out,
    /// attn_out, mlp_norm_out, mlp_out, mlp_post) share one buffer set across
    /// layers and the logit gradients overwrite the logits. Streamed analysis
    /// reports are unchanged; reading those activations, or the logits after
    /// `backward`, fails with `Status::Unsupported`.
    pub discard_site_activations: bool,
    /// Storage type of the weight matrices (`gsink_weight_dtype`): fp32
    /// (default), bf16 or fp16; compute and gradients stay fp32.
    pub weight_dtype: WeightDtype,
}

/// Storage type of the weight matrices (`gsink_weight_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    /// fp32 (the default).
    Fp32,
    /// bfloat16: half the weight memory; set_param rounds to nearest even.
    Bf16,
    /// IEEE half: half the weight memory; set_param rounds to nearest even.
    Fp16,
}

impl WeightDtype {
    fn raw(self) -> i32 {
        match self {
            WeightDtype::Fp32 => sys::gsink_weight_dtype_GSINK_WEIGHTS_FP32 as i32,
            WeightDtype::Bf16 => sys::gsink_weight_dtype_GSINK_WEIGHTS_BF16 as i32,
            WeightDtype::Fp16 => sys::gsink_weight_dtype_GSINK_WEIGHTS_FP16 as i32,
        }
    }

    fn from_raw(x: i32) -> WeightDtype {
        match x {
            w if w == sys::gsink_weight_dtype_GSINK_WEIGHTS_BF16 as i32 => WeightDtype::Bf16,
            w if w == sys::gsink_weight_dtype_GSINK_WEIGHTS_FP16 as i32 => WeightDtype::Fp16,
            _ => WeightDtype::Fp32,
        }
    }
}

/// Matrix-product precision (`gsink_precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Exact fp32 everywhere.
    Fp32,
    /// TF32 tensor cores with fp32 accumulation; CUDA devices only.
    Tf32,
    /// BF16 tensor cores (inputs rounded to bfloat16) with fp32
    /// accumulation and fp32 storage; CUDA devices only.
    Bf16,
}

impl Default for ModelOptions {
    fn default() -> ModelOptions {
        let mut raw = sys::gsink_model_options {
            size: std::mem::size_of::<sys::gsink_model_options>(),
            device: 0,
            device_index: 0,
            n_threads: 0,
            seed: 0,
            precision: 0,
            flags: 0,
            weight_dtype: 0,
        };
        // SAFETY: valid struct.
        unsafe { sys::gsink_model_options_init_size(&mut raw, std::mem::size_of_val(&raw)) };
        ModelOptions {
            device: if raw.device == sys::gsink_device_kind_GSINK_DEVICE_CUDA as i32 { Device::Cuda } else { Device::Cpu },
            device_index: raw.device_index,
            n_threads: raw.n_threads,
            seed: raw.seed,
            precision: match raw.precision {
                p if p == sys::gsink_precision_GSINK_PRECISION_TF32 as i32 => Precision::Tf32,
                p if p == sys::gsink_precision_GSINK_PRECISION_BF16 as i32 => Precision::Bf16,
                _ => Precision::Fp32,
            },
            discard_site_grads: raw.flags & sys::gsink_model_flags_GSINK_MODEL_DISCARD_SITE_GRADS != 0,
            analysis: raw.flags & sys::gsink_model_flags_GSINK_MODEL_ANALYSIS != 0,
            discard_site_activations: raw.flags & sys::gsink_model_flags_GSINK_MODEL_DISCARD_SITE_ACTIVATIONS != 0,
            weight_dtype: WeightDtype::from_raw(raw.weight_dtype),
        }
    }
}

impl ModelOptions {
    pub(crate) fn to_raw(&self) -> sys::gsink_model_options {
        sys::gsink_model_options {
            size: std::mem::size_of::<sys::gsink_model_options>(),
            device: self.device.raw() as i32,
            device_index: self.device_index,
            n_threads: self.n_threads,
            seed: self.seed,
            precision: match self.precision {
                Precision::Fp32 => sys::gsink_precision_GSINK_PRECISION_FP32 as i32,
                Precision::Tf32 => sys::gsink_precision_GSINK_PRECISION_TF32 as i32,
                Precision::Bf16 => sys::gsink_precision_GSINK_PRECISION_BF16 as i32,
            },
            flags: (if self.discard_site_grads { sys::gsink_model_flags_GSINK_MODEL_DISCARD_SITE_GRADS } else { 0 })
                | (if self.analysis { sys::gsink_model_flags_GSINK_MODEL_ANALYSIS } else { 0 })
                | (if self.discard_site_activations { sys::gsink_model_flags_GSINK_MODEL_DISCARD_SITE_ACTIVATIONS } else { 0 }),
            weight_dtype: self.weight_dtype.raw(),
        }
    }
}

/// How gradient norms are aggregated over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAgg {
    /// The paper's: sum dL/dx_{b,t} over b, then the norm per t.
    SumThenNorm,
    /// The norm per (b, t), then the mean over b.
    PerSequence,
}

impl BatchAgg {
    pub(crate) fn raw(self) -> i32 {
        match self {
            BatchAgg::SumThenNorm => sys::gsink_batch_agg_GSINK_AGG_SUM_THEN_NORM as i32,
            BatchAgg::PerSequence => sys::gsink_batch_agg_GSINK_AGG_PER_SEQUENCE as i32,
        }
    }

    pub(crate) fn from_raw(v: i32) -> Result<BatchAgg> {
        match v {
            x if x == sys::gsink_batch_agg_GSINK_AGG_SUM_THEN_NORM as i32 => Ok(BatchAgg::SumThenNorm),
            x if x == sys::gsink_batch_agg_GSINK_AGG_PER_SEQUENCE as i32 => Ok(BatchAgg::PerSequence),
            _ => Err(Error::new(Status::Unsupported, format!("unknown batch aggregation {v}"))),
        }
    }
}

/// Diagnostic defaults of a model (`gsink_diag_options`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiagOptions {
    /// Sink-rate threshold eps.
    pub sink_eps: f32,
    /// T_eps, the sink-score window (used by the next forward).
    pub sink_window: i32,
    /// T_e, the R_GS window.
    pub rgs_window: i32,
    /// Sink position s.
    pub sink_position: i32,
    pub batch_agg: BatchAgg,
}

impl Default for DiagOptions {
    fn default() -> DiagOptions {
        let mut raw = empty_diag();
        // SAFETY: valid struct.
        unsafe { sys::gsink_diag_options_init_size(&mut raw, std::mem::size_of_val(&raw)) };
        DiagOptions::from_raw(&raw).expect("library default batch_agg is known")
    }
}

pub(crate) fn empty_diag() -> sys::gsink_diag_options {
    sys::gsink_diag_options {
        size: std::mem::size_of::<sys::gsink_diag_options>(),
        sink_eps: 0.0,
        sink_window: 0,
        rgs_window: 0,
        sink_position: 0,
        batch_agg: 0,
    }
}

impl DiagOptions {
    pub(crate) fn to_raw(&self) -> sys::gsink_diag_options {
        sys::gsink_diag_options {
            size: std::mem::size_of::<sys::gsink_diag_options>(),
            sink_eps: self.sink_eps,
            sink_window: self.sink_window,
            rgs_window: self.rgs_window,
            sink_position: self.sink_position,
            batch_agg: self.batch_agg.raw(),
        }
    }

    pub(crate) fn from_raw(raw: &sys::gsink_diag_options) -> Result<DiagOptions> {
        Ok(DiagOptions {
            sink_eps: raw.sink_eps,
            sink_window: raw.sink_window,
            rgs_window: raw.rgs_window,
            sink_position: raw.sink_position,
            batch_agg: BatchAgg::from_raw(raw.batch_agg)?,
        })
    }
}

/// V-scale mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VScaleMode {
    Off,
    /// v^ = phi(||v||^2) v in forward and backward.
    Full,
    /// Forward identity; backward applies the V-scale Jacobian.
    BackwardOnly,
}

/// V-scale settings (`gsink_vscale_options`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VScaleOptions {
    pub mode: VScaleMode,
    /// Must be > 0.
    pub sigma: f32,
    pub learnable_theta: bool,
    /// false: one theta per KV head; true: one per query head.
    pub per_query_head: bool,
}

pub(crate) fn empty_vscale() -> sys::gsink_vscale_options {
    sys::gsink_vscale_options {
        size: std::mem::size_of::<sys::gsink_vscale_options>(),
        mode: 0,
        sigma: 0.0,
        learnable_theta: 0,
        per_query_head: 0,
    }
}

impl Default for VScaleOptions {
    fn default() -> VScaleOptions {
        let mut raw = empty_vscale();
        // SAFETY: valid struct.
        unsafe { sys::gsink_vscale_options_init_size(&mut raw, std::mem::size_of_val(&raw)) };
        VScaleOptions::from_raw(&raw).expect("library default mode is known")
    }
}

impl VScaleOptions {
    pub(crate) fn to_raw(&self) -> sys::gsink_vscale_options {
        sys::gsink_vscale_options {
            size: std::mem::size_of::<sys::gsink_vscale_options>(),
            mode: match self.mode {
                VScaleMode::Off => sys::gsink_vscale_mode_GSINK_VSCALE_OFF,
                VScaleMode::Full => sys::gsink_vscale_mode_GSINK_VSCALE_FULL,
                VScaleMode::BackwardOnly => sys::gsink_vscale_mode_GSINK_VSCALE_BACKWARD_ONLY,
            } as i32,
            sigma: self.sigma,
            learnable_theta: self.learnable_theta as i32,
            per_query_head: self.per_query_head as i32,
        }
    }

    pub(crate) fn from_raw(raw: &sys::gsink_vscale_options) -> Result<VScaleOptions> {
        let mode = match raw.mode {
            x if x == sys::gsink_vscale_mode_GSINK_VSCALE_OFF as i32 => VScaleMode::Off,
            x if x == sys::gsink_vscale_mode_GSINK_VSCALE_FULL as i32 => VScaleMode::Full,
            x if x == sys::gsink_vscale_mode_GSINK_VSCALE_BACKWARD_ONLY as i32 => VScaleMode::BackwardOnly,
            m => return Err(Error::new(Status::Unsupported, format!("unknown V-scale mode {m}"))),
        };
        Ok(VScaleOptions {
            mode,
            sigma: raw.sigma,
            learnable_theta: raw.learnable_theta != 0,
            per_query_head: raw.per_query_head != 0,
        })
    }
}

/// AdamW, clipping and cosine-schedule settings (`gsink_optimizer_options`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerOptions {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_steps: i32,
    /// 0 = constant learning rate.
    pub total_steps: i32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global-norm clip; <= 0 disables.
    pub grad_clip: f32,
    pub accumulation_steps: i32,
}

impl Default for OptimizerOptions {
    fn default() -> OptimizerOptions {
        let mut raw = sys::gsink_optimizer_options {
            size: std::mem::size_of::<sys::gsink_optimizer_options>(),
            lr: 0.0,
            min_lr: 0.0,
            warmup_steps: 0,
            total_steps: 0,
            beta1: 0.0,
            beta2: 0.0,
            eps: 0.0,
            weight_decay: 0.0,
            grad_clip: 0.0,
            accumulation_steps: 0,
        };
        // SAFETY: valid struct.
        unsafe { sys::gsink_optimizer_options_init_size(&mut raw, std::mem::size_of_val(&raw)) };
        OptimizerOptions {
            lr: raw.lr,
            min_lr: raw.min_lr,
            warmup_steps: raw.warmup_steps,
            total_steps: raw.total_steps,
            beta1: raw.beta1,
            beta2: raw.beta2,
            eps: raw.eps,
            weight_decay: raw.weight_decay,
            grad_clip: raw.grad_clip,
            accumulation_steps: raw.accumulation_steps,
        }
    }
}

impl OptimizerOptions {
    pub(crate) fn to_raw(&self) -> sys::gsink_optimizer_options {
        sys::gsink_optimizer_options {
            size: std::mem::size_of::<sys::gsink_optimizer_options>(),
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            accumulation_steps: self.accumulation_steps,
        }
    }
}

