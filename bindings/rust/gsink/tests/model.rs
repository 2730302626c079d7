//! Forward/backward/metrics through the safe API on the "micro" preset,
//! checked against references computed here from raw tensors.
use gsink::{analyze_sequences, Analysis, BatchAgg, Config, DiagOptions, Model, ModelOptions, Site, Status};

const B: usize = 2;
const T: usize = 64;
const SEED: u64 = 1234;

fn inputs(vocab: i32) -> (Vec<i32>, Vec<i32>) {
    let tok = |b: usize, t: usize| ((b * 31 + t * 7 + 3) as i32) % vocab;
    let mut tokens = Vec::with_capacity(B * T);
    let mut targets = Vec::with_capacity(B * T);
    for b in 0..B {
        for t in 0..T {
            tokens.push(tok(b, t));
            targets.push(if t + 1 < T { tok(b, t + 1) } else { -1 });
        }
    }
    (tokens, targets)
}

fn micro() -> Model {
    let cfg = Config::preset("micro").unwrap();
    Model::new(&cfg, &ModelOptions { seed: SEED, n_threads: 1, ..ModelOptions::default() }).unwrap()
}

fn run(model: &mut Model) -> f32 {
    let vocab = model.config().unwrap().vocab_size;
    let (tokens, targets) = inputs(vocab);
    let loss = model.forward(&tokens, Some(&targets), B, T).unwrap().unwrap();
    model.backward().unwrap();
    loss
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-6)
}

#[test]
fn version_matches_header() {
    assert!(gsink::check_library_version().is_ok());
    assert_eq!(gsink::version_number(), gsink::HEADER_VERSION);
    assert!(!gsink::version_string().is_empty());
}

#[test]
fn presets_and_config() {
    let names = Config::preset_names();
    assert!(names.iter().any(|n| n == "micro"));
    let cfg = Config::preset("micro").unwrap();
    cfg.validate().unwrap();
    let m = Model::new(&cfg, &ModelOptions::default()).unwrap();
    assert_eq!(m.config().unwrap(), cfg);
    // Parameter count from the shapes equals the library's total.
    let params = m.params().unwrap();
    let from_shapes: usize = params.iter().map(|p| p.numel()).sum();
    assert_eq!(from_shapes, m.param_numel().unwrap());
    let d = cfg.d_model as usize;
    let embed = params.iter().find(|p| p.name == "model.embed_tokens.weight").unwrap();
    assert_eq!(embed.shape, vec![cfg.vocab_size as usize, d]);
}

#[test]
fn loss_matches_cross_entropy_of_logits() {
    let mut m = micro();
    let vocab = m.config().unwrap().vocab_size;
    let (tokens, targets) = inputs(vocab);
    let loss = m.forward(&tokens, Some(&targets), B, T).unwrap().unwrap();
    assert_eq!(m.last_shape().unwrap(), (B, T));
    let logits = m.logits().unwrap();
    let v = vocab as usize;
    assert_eq!(logits.len(), B * T * v);
    let (mut sum, mut n) = (0f64, 0usize);
    for (i, &tg) in targets.iter().enumerate() {
        if tg < 0 {
            continue;
        }
        let row = &logits[i * v..(i + 1) * v];
        let mx = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let lse = mx + row.iter().map(|&x| ((x as f64) - mx).exp()).sum::<f64>().ln();
        sum += lse - row[tg as usize] as f64;
        n += 1;
    }
    let reference = sum / n as f64;
    assert!(close(loss as f64, reference, 1e-5), "loss {loss} vs reference {reference}");
    // Freshly initialised (std 0.02) model: loss near ln(vocab).
    assert!((loss as f64 - (vocab as f64).ln()).abs() < 0.1);
    // Without targets the loss is not reported.
    assert_eq!(m.forward(&tokens, None, B, T).unwrap(), None);
}

#[test]
fn parameter_gradient_matches_finite_difference() {
    let mut m = micro();
    run(&mut m);
    let name = "model.norm.weight";
    let grad = m.get_param_grad(name).unwrap();
    let w = m.get_param(name).unwrap();
    // Directional derivative along a fixed direction d.
    let d: Vec<f32> = (0..w.len()).map(|i| if i % 3 == 0 { 1.0 } else { -0.5 }).collect();
    let analytic: f64 = grad.iter().zip(&d).map(|(&g, &x)| g as f64 * x as f64).sum();
    let h = 1e-2f32;
    let vocab = m.config().unwrap().vocab_size;
    let (tokens, targets) = inputs(vocab);
    let mut loss_at = |sign: f32| {
        let wp: Vec<f32> = w.iter().zip(&d).map(|(&a, &x)| a + sign * h * x).collect();
        m.set_param(name, &wp).unwrap();
        m.forward(&tokens, Some(&targets), B, T).unwrap().unwrap() as f64
    };
    let numeric = (loss_at(1.0) - loss_at(-1.0)) / (2.0 * h as f64);
    m.set_param(name, &w).unwrap();
    assert_eq!(m.get_param(name).unwrap(), w);
    assert!((analytic - numeric).abs() <= 2e-2 * analytic.abs().max(1e-3), "analytic {analytic} numeric {numeric}");
}

#[test]
fn gradient_norms_and_rgs_match_raw_gradients() {
    let mut m = micro();
    run(&mut m);
    let (heads, width) = m.site_dims(Site::AttnNormOut).unwrap();
    let w = heads * width;
    let g = m.gradient(0, Site::AttnNormOut).unwrap();
    assert_eq!(g.len(), B * T * w);
    // SUM_THEN_NORM: sum over the batch, then the norm per position.
    let mut ref_norms = vec![0f64; T];
    for (t, out) in ref_norms.iter_mut().enumerate() {
        let summed: Vec<f32> = (0..w).map(|j| (0..B).map(|b| g[(b * T + t) * w + j]).sum()).collect();
        *out = norm(&summed);
    }
    let norms = m.gradient_norms(0, Site::AttnNormOut, None, BatchAgg::SumThenNorm).unwrap();
    for t in 0..T {
        assert!(close(norms[t] as f64, ref_norms[t], 1e-4), "t={t}: {} vs {}", norms[t], ref_norms[t]);
    }
    // PER_SEQUENCE: norm per (b, t), then the mean over b.
    let per_seq = m.gradient_norms(0, Site::AttnNormOut, None, BatchAgg::PerSequence).unwrap();
    for t in 0..T {
        let r: f64 = (0..B).map(|b| norm(&g[(b * T + t) * w..(b * T + t + 1) * w])).sum::<f64>() / B as f64;
        assert!(close(per_seq[t] as f64, r, 1e-4));
    }
    // R_GS(0; 31) = ||g_0|| / ((1/T_e) sum_{1<=t<=T_e} ||g_t||).
    let t_e = 31;
    let denom: f64 = (1..=t_e).map(|t| ref_norms[t]).sum::<f64>() / t_e as f64;
    let rgs = m.gradient_sink_ratio(0, 0, t_e, BatchAgg::SumThenNorm).unwrap();
    assert!(close(rgs as f64, ref_norms[0] / denom, 1e-4), "R_GS {rgs} vs {}", ref_norms[0] / denom);
}

#[test]
fn activation_norms_and_t0_early() {
    let mut m = micro();
    run(&mut m);
    let layers = m.config().unwrap().n_layers as usize;
    let last = layers - 1;
    let x = m.activation(last, Site::ResidOut).unwrap();
    let (h, wd) = m.site_dims(Site::ResidOut).unwrap();
    let w = h * wd;
    let ref_norm = |t: usize| (0..B).map(|b| norm(&x[(b * T + t) * w..(b * T + t + 1) * w])).sum::<f64>() / B as f64;
    let norms = m.activation_norms(last, Site::ResidOut, None).unwrap();
    for t in 0..T {
        assert!(close(norms[t] as f64, ref_norm(t), 1e-4));
    }
    let early: f64 = (1..=15).map(ref_norm).sum::<f64>() / 15.0;
    let ratio = m.massive_activation_ratio(last, Site::ResidOut).unwrap();
    assert!(close(ratio as f64, ref_norm(0) / early, 1e-4));
}

#[test]
fn sink_scores_and_rate_match_attention_pattern() {
    let mut m = micro();
    run(&mut m);
    let opts = m.diag_options().unwrap();
    let window = opts.sink_window as usize;
    let n_heads = m.config().unwrap().n_heads as usize;
    let scores = m.sink_scores(0, 0).unwrap();
    assert_eq!(scores.len(), n_heads);
    let mut above = 0;
    for h in 0..n_heads {
        let mut alpha = 0f64;
        for b in 0..B {
            let a = m.attention_pattern(0, b, h).unwrap();
            // Causal rows sum to one.
            for t in 0..T {
                let row: f64 = a[t * T..(t + 1) * T].iter().map(|&x| x as f64).sum();
                assert!((row - 1.0).abs() < 1e-4);
            }
            alpha += (0..window).map(|t| a[t * T] as f64).sum::<f64>() / window as f64;
        }
        alpha /= B as f64;
        assert!(close(scores[h] as f64, alpha, 1e-4), "head {h}: {} vs {alpha}", scores[h]);
        if alpha > 0.3 {
            above += 1;
        }
    }
    let rate = m.sink_rate(0, 0, 0.3).unwrap();
    assert_eq!(rate, above as f32 / n_heads as f32);
}

#[test]
fn zero_grad_and_accumulate() {
    let mut m = micro();
    run(&mut m);
    let name = "model.layers.0.mlp.up_proj.weight";
    let g1 = m.get_param_grad(name).unwrap();
    assert!(norm(&g1) > 0.0);
    m.backward_accumulate().unwrap();
    let g2 = m.get_param_grad(name).unwrap();
    for (a, b) in g1.iter().zip(&g2) {
        assert!((2.0 * a - b).abs() <= 1e-5 * a.abs().max(1e-6) + 1e-9);
    }
    m.zero_grad().unwrap();
    assert!(m.get_param_grad(name).unwrap().iter().all(|&x| x == 0.0));
}

#[test]
fn flat_params_and_grads() {
    let mut m = micro();
    run(&mut m);
    let n = m.param_numel().unwrap();
    let (w, g) = (m.params_flat().unwrap(), m.grads_flat().unwrap());
    assert_eq!((w.len(), g.len()), (n, n));
    let name = "model.embed_tokens.weight"; // the first tensor of the layout
    let e = m.get_param(name).unwrap();
    assert_eq!(&w[..e.len()], &e[..]);
    assert_eq!(&g[..e.len()], &m.get_param_grad(name).unwrap()[..]);
    let g2: Vec<f32> = g.iter().map(|x| 2.0 * x).collect();
    m.set_grads_flat(&g2).unwrap();
    assert_eq!(m.grads_flat().unwrap(), g2);
    m.set_params_flat(&w).unwrap();
    assert_eq!(m.params_flat().unwrap(), w);
    assert_eq!(m.set_params_flat(&w[1..]).unwrap_err().status(), Status::BufferTooSmall);
}

#[test]
fn site_names_round_trip() {
    for s in Site::ALL {
        let (p, layer) = Site::parse(&s.name()).unwrap();
        assert_eq!(p, s);
        assert_eq!(layer, None);
    }
    assert_eq!(Site::parse("blocks.3.hook_resid_post").unwrap(), (Site::ResidOut, Some(3)));
    assert_eq!(Site::parse("nope").unwrap_err().status(), Status::UnknownSite);
}

#[test]
fn memory_accounting() {
    let mut m = micro();
    let (b0, p0) = m.memory(false).unwrap();
    assert!(b0 >= 8 * m.param_numel().unwrap() as u64 && p0 == b0); // weights and gradients
    run(&mut m);
    let (b1, p1) = m.memory(true).unwrap();
    assert!(b1 > b0 && p1 >= b1);
    assert_eq!(m.memory(false).unwrap(), (b1, b1)); // the peak restarted from the live bytes
}

#[test]
fn loads_a_qwen2_checkpoint_with_its_architecture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/hf-archs/qwen2");
    let opts = ModelOptions { n_threads: 1, ..ModelOptions::default() };
    let mut m = Model::load(&dir, Some(&opts)).unwrap();
    let cfg = m.config().unwrap();
    assert_eq!(cfg.arch_name().as_deref(), Some("qwen2"));
    assert!(cfg.qkv_bias);
    assert_eq!(cfg.sliding_window, 0);
    assert_eq!(cfg.rope_scaling_name().as_deref(), Some("default"));
    let bias = m.get_param("model.layers.0.self_attn.q_proj.bias").unwrap();
    assert_eq!(bias.len(), (cfg.n_heads * cfg.d_head) as usize);
    assert!(bias.iter().any(|&v| v != 0.0));
    let llama31 = Model::load(dir.join("../llama31"), Some(&opts)).unwrap();
    assert_eq!(llama31.config().unwrap().rope_scaling_name().as_deref(), Some("llama3"));
}

#[test]
fn loads_qwen3_glm_and_glm4_checkpoints_with_their_flags() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/data/hf-archs");
    let opts = ModelOptions { n_threads: 1, ..ModelOptions::default() };
    let qwen3 = Model::load(data.join("qwen3"), Some(&opts)).unwrap();
    let c = qwen3.config().unwrap();
    assert_eq!(c.arch_name().as_deref(), Some("qwen3"));
    assert!(c.qk_norm && !c.qkv_bias && !c.sandwich_norm && !c.rope_interleaved);
    assert_eq!((c.d_head, c.rope_dims), (32, 0));
    let mut glm4 = Model::load(data.join("glm4"), Some(&opts)).unwrap();
    let c = glm4.config().unwrap();
    assert_eq!(c.arch_name().as_deref(), Some("glm4"));
    assert!(c.qkv_bias && c.rope_interleaved && c.sandwich_norm && !c.qk_norm);
    assert_eq!(c.rope_dims, c.d_head / 2);
    let fused = glm4.get_param("model.layers.0.mlp.gate_up_proj.weight").unwrap();
    assert_eq!(fused.len(), (2 * c.d_ff * c.d_model) as usize);
    assert!(glm4.get_param("model.layers.0.post_mlp_layernorm.weight").is_ok());
    let glm = Model::load(data.join("glm"), Some(&opts)).unwrap();
    assert!(!glm.config().unwrap().sandwich_norm);
}

/// Streaming over micro-batches: 1 + 1 sequences give the gradient norms and
/// R_GS of one batch of 2, the state of two halves sums to the whole, and
/// bad input leaves the analysis usable.
#[test]
fn analysis_over_micro_batches_matches_one_batch() {
    let mut model = micro();
    run(&mut model);
    let whole = model.gradient_norms(1, Site::AttnNormOut, None, BatchAgg::SumThenNorm).unwrap();
    let rgs = model.gradient_sink_ratio(1, 0, 31, BatchAgg::SumThenNorm).unwrap();
    let vocab = model.config().unwrap().vocab_size;
    let (tokens, _) = inputs(vocab);
    let opts = model.diag_options().unwrap();
    let state_sum;
    {
        let mut a = Analysis::new(&mut model, T, Some(&opts)).unwrap();
        a.add(&tokens[..T], None, 1).unwrap();
        let half = a.state().unwrap();
        a.add(&tokens[T..], None, 1).unwrap();
        let err = a.add(&tokens[..T - 1], None, 1).unwrap_err();
        assert_eq!(err.status(), Status::ShapeMismatch);
        let bad = vec![vocab; T];
        assert_eq!(a.add(&bad, None, 1).unwrap_err().status(), Status::TokenOutOfRange);
        let got = a.gradient_norms(1, Site::AttnNormOut, None, BatchAgg::SumThenNorm).unwrap();
        assert_eq!(got.len(), T);
        for t in 0..T {
            assert!(close(got[t] as f64, whole[t] as f64, 1e-5), "t={t}: {} vs {}", got[t], whole[t]);
        }
        let c = a.counts().unwrap();
        assert_eq!((c.sequences, c.micro_batches, c.n_targets), (2, 2, 2 * (T as i64 - 1)));
        let json = a.report_json(None).unwrap();
        assert!(json.contains("\"sequences\": 2, \"micro_batches\": 2"));
        let full = a.state().unwrap();
        assert_eq!(full.len(), half.len());
        let (state_bytes, _) = a.memory().unwrap();
        assert!(state_bytes as usize >= full.len() * 8);
        a.finish().unwrap();
        assert_eq!(a.add(&tokens[..T], None, 1).unwrap_err().status(), Status::CallOrder);
        state_sum = full;
    }
    {
        let mut b = Analysis::new(&mut model, T, Some(&opts)).unwrap();
        b.set_state(&state_sum).unwrap();
        assert_eq!(b.set_state(&state_sum[1..]).unwrap_err().status(), Status::ShapeMismatch);
        let json = b.report_json(Some(&DiagOptions { batch_agg: BatchAgg::SumThenNorm, ..opts })).unwrap();
        let key = "\"gradient_sink_ratio\": ";
        let at = json.find(&format!("\"layer\": 1, ")).unwrap();
        let rest = &json[at..];
        let v: f64 = rest[rest.find(key).unwrap() + key.len()..].split(',').next().unwrap().trim().parse().unwrap();
        assert!(close(v, rgs as f64, 1e-5), "R_GS {v} vs {rgs}");
    }
    let mut calls = 0;
    let mut cb = |done: i64, total: i64| {
        calls += 1;
        assert_eq!(total, 2);
        done >= 1
    };
    let err = analyze_sequences(&mut model, &tokens, 2, T, 1, None, Some(&mut cb)).unwrap_err();
    assert_eq!(err.status(), Status::Cancelled);
    assert_eq!(calls, 1);
    let json = analyze_sequences(&mut model, &tokens, 2, T, 1, Some(&opts), None).unwrap();
    assert!(json.contains("\"schema\": \"gsink.report/1\""));
}
