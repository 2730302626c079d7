//! gsink::ops against the model API: the operations and metrics on a micro
//! model's own tensors give the model's results; bad shapes are refused.
use gsink::ops::{self, AttnShape, Ops, VScaleShape};
use gsink::{BatchAgg, Branch, Config, DiagOptions, Model, ModelOptions, Site, Status, VScaleMode, VScaleOptions};

const B: usize = 2;
const T: usize = 32;
const W: usize = 4;
const L: usize = 1;

fn model() -> Model {
    let cfg = Config::preset("micro").unwrap();
    let mut m = Model::new(&cfg, &ModelOptions { seed: 5, n_threads: 1, ..ModelOptions::default() }).unwrap();
    m.vscale_enable(&VScaleOptions { mode: VScaleMode::Full, sigma: 0.05, ..VScaleOptions::default() }).unwrap();
    let n = m.vscale_theta_count().unwrap();
    let theta: Vec<f32> = (0..n).map(|i| 0.3 * i as f32 - 0.2).collect();
    m.set_vscale_theta(&theta).unwrap();
    m.set_diag_options(&DiagOptions { sink_window: W as i32, ..m.diag_options().unwrap() }).unwrap();
    let vocab = cfg.vocab_size;
    let tokens: Vec<i32> = (0..B * T).map(|i| ((i * 7 + 3) as i32) % vocab).collect();
    let targets: Vec<i32> = (0..B * T).map(|i| ((i * 5 + 1) as i32) % vocab).collect();
    m.forward(&tokens, Some(&targets), B, T).unwrap();
    m.zero_grad().unwrap();
    m.backward().unwrap();
    m
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let tol = 1e-7 + 2e-6 * x.abs().max(y.abs());
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn ops_equal_the_model() {
    let mut m = model();
    let cfg = m.config().unwrap();
    let (h, kv, dh) = (cfg.n_heads as usize, cfg.n_kv_heads as usize, cfg.d_head as usize);
    let mut o = Ops::cpu(1).unwrap();

    let theta_all = m.vscale_theta().unwrap();
    let theta = &theta_all[L * kv..(L + 1) * kv];
    let vs = VScaleShape { mode: VScaleMode::Full, n_rows: B * T, heads_in: kv, heads_out: kv, d_head: dh,
                           d_model: cfg.d_model as usize, sigma: 0.05 };
    let v = m.activation(L, Site::V).unwrap();
    let v_scaled = o.vscale_forward(&vs, &v, theta).unwrap();
    close(&v_scaled, &m.activation(L, Site::VScaled).unwrap(), "v_scaled");
    let mut dtheta = vec![0.0f32; kv];
    let dv = o.vscale_backward(&vs, &v, theta, &m.gradient(L, Site::VScaled).unwrap(), Some(&mut dtheta)).unwrap();
    close(&dv, &m.gradient(L, Site::V).unwrap(), "dv");
    let g_all = m.vscale_theta_grad().unwrap();
    for j in 0..kv {
        let (a, b) = (dtheta[j], g_all[L * kv + j]);
        assert!((a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-9, "dtheta[{j}]: {a} vs {b}");
    }

    let s = AttnShape { batch: B, seq: T, n_heads: h, n_kv_heads: kv, n_v_heads: kv, d_head: dh,
                        softmax_scale: 0.0, sink_window: W };
    let q = m.activation(L, Site::Q).unwrap();
    let k = m.activation(L, Site::K).unwrap();
    let f = o.attention_forward(&s, &q, &k, &v_scaled).unwrap();
    close(&f.out, &m.activation(L, Site::Z).unwrap(), "z");
    let mean = ops::column_mean(&f.col_mass, B, h, T).unwrap();
    for head in 0..h {
        close(&mean[head * T..(head + 1) * T], &m.column_mass(L, head).unwrap().mass, "M_s");
    }
    close(&ops::sink_scores(&f.col_win, B, h, T, W, 0).unwrap(), &m.sink_scores(L, 0).unwrap(), "alpha");
    assert_eq!(ops::sink_rate(&f.col_win, B, h, T, W, 0, 0.2).unwrap(), m.sink_rate(L, 0, 0.2).unwrap());
    let g = o.attention_backward(&s, &q, &k, &v_scaled, &f.out, &f.lse, &m.gradient(L, Site::Z).unwrap()).unwrap();
    close(&g.dq, &m.gradient(L, Site::Q).unwrap(), "dq");
    close(&g.dk, &m.gradient(L, Site::K).unwrap(), "dk");
    close(&g.dv, &m.gradient(L, Site::VScaled).unwrap(), "dv_scaled");
}

#[test]
fn metrics_equal_the_model() {
    let mut m = model();
    let d = m.config().unwrap().d_model as usize;
    for agg in [BatchAgg::SumThenNorm, BatchAgg::PerSequence] {
        let g = m.gradient(L, Site::AttnNormOut).unwrap();
        let n = ops::token_norms(&g, B, T, 1, d, None, agg).unwrap();
        assert_eq!(n, m.gradient_norms(L, Site::AttnNormOut, None, agg).unwrap());
        assert_eq!(ops::gradient_sink_ratio(&n, 0, 15).unwrap(), m.gradient_sink_ratio(L, 0, 15, agg).unwrap());
        let r = ops::branch_ratios(&m.gradient(L, Site::ResidMid).unwrap(), &m.gradient(L, Site::ResidOut).unwrap(),
                                   &m.gradient(L, Site::MlpNormOut).unwrap(), B, T, d, agg).unwrap();
        assert_eq!(r, m.branch_ratios(L, Branch::Mlp, agg).unwrap());
    }
    let x = m.activation(L, Site::ResidOut).unwrap();
    let n = ops::token_norms(&x, B, T, 1, d, None, BatchAgg::PerSequence).unwrap();
    assert_eq!(n, m.activation_norms(L, Site::ResidOut, None).unwrap());
    assert_eq!(ops::massive_activation_ratio(&n).unwrap(), m.massive_activation_ratio(L, Site::ResidOut).unwrap());
}

#[test]
fn bad_shapes_are_refused() {
    let mut o = Ops::cpu(1).unwrap();
    let s = AttnShape { batch: 1, seq: 4, n_heads: 2, n_kv_heads: 1, n_v_heads: 1, d_head: 4,
                        softmax_scale: 0.0, sink_window: 2 };
    let e = o.attention_forward(&s, &[0.0; 31], &[0.0; 16], &[0.0; 16]).unwrap_err();
    assert_eq!(e.status(), Status::ShapeMismatch);
    let bad = AttnShape { n_kv_heads: 3, n_v_heads: 3, ..s };
    let e = o.attention_forward(&bad, &[0.0; 32], &[0.0; 48], &[0.0; 48]).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
    assert!(o.last_error_message().contains("multiple"));
    let vs = VScaleShape { mode: VScaleMode::Full, n_rows: 2, heads_in: 1, heads_out: 2, d_head: 4, d_model: 8, sigma: 0.0 };
    let e = o.vscale_forward(&vs, &[0.0; 8], &[0.0; 2]).unwrap_err();
    assert_eq!(e.status(), Status::InvalidArgument);
    assert_eq!(ops::massive_activation_ratio(&[1.0; 8]).unwrap_err().status(), Status::OutOfRange);
    assert_eq!(ops::sink_scores(&[0.0; 8], 1, 2, 4, 4, 1).unwrap_err().status(), Status::OutOfRange);
}
