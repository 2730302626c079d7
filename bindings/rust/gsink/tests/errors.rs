//! Failures come back as Err with the library's status and message, and the
//! handle stays usable afterwards.
use gsink::{BatchAgg, Config, Model, ModelOptions, Precision, Site, Status, WeightDtype};

fn micro() -> Model {
    Model::new(&Config::preset("micro").unwrap(), &ModelOptions { seed: 7, n_threads: 1, ..ModelOptions::default() }).unwrap()
}

fn inputs(t: usize) -> (Vec<i32>, Vec<i32>) {
    let tokens: Vec<i32> = (0..t as i32).map(|i| (i * 5 + 1) % 64).collect();
    let targets: Vec<i32> = (0..t as i32).map(|i| (i * 5 + 6) % 64).collect();
    (tokens, targets)
}

#[test]
fn unknown_preset() {
    let e = Config::preset("no-such-preset").unwrap_err();
    assert_eq!(e.status(), Status::UnknownName);
    assert_eq!(e.code(), 10);
    assert!(!e.message().is_empty());
    assert!(e.to_string().contains(e.message()));
}

#[test]
fn bad_config() {
    let mut cfg = Config::preset("micro").unwrap();
    cfg.d_head = 7; // RoPE needs an even d_head
    assert_eq!(cfg.validate().unwrap_err().status(), Status::BadConfig);
    let e = Model::new(&cfg, &ModelOptions::default()).unwrap_err();
    assert_eq!(e.status(), Status::BadConfig);
}

#[test]
fn call_order_and_targets() {
    let mut m = micro();
    assert_eq!(m.backward().unwrap_err().status(), Status::CallOrder);
    let (tokens, targets) = inputs(32);
    m.forward(&tokens, None, 1, 32).unwrap();
    assert_eq!(m.backward().unwrap_err().status(), Status::NoTargets);
    let e = m.gradient_sink_ratio(0, 0, 31, BatchAgg::SumThenNorm).unwrap_err();
    assert_eq!(e.status(), Status::CallOrder);
    // Still usable.
    let loss = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
    assert!(loss.is_finite());
    m.backward().unwrap();
}

#[test]
fn bad_inputs_leave_model_usable() {
    let mut m = micro();
    let (tokens, targets) = inputs(32);
    let loss = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();

    let mut bad = tokens.clone();
    bad[5] = 64; // vocab is 64
    assert_eq!(m.forward(&bad, Some(&targets), 1, 32).unwrap_err().status(), Status::TokenOutOfRange);
    bad[5] = -1;
    assert_eq!(m.forward(&bad, Some(&targets), 1, 32).unwrap_err().status(), Status::TokenOutOfRange);

    // Slice length disagrees with batch*seq_len: caught before the call.
    let e = m.forward(&tokens[..31], Some(&targets), 1, 32).unwrap_err();
    assert_eq!(e.status(), Status::ShapeMismatch);
    assert!(e.message().contains("31"));
    let e = m.forward(&tokens, Some(&targets[..5]), 1, 32).unwrap_err();
    assert_eq!(e.status(), Status::ShapeMismatch);

    let long: Vec<i32> = vec![1; 65];
    assert_eq!(m.forward(&long, None, 1, 65).unwrap_err().status(), Status::SeqTooLong);

    assert_eq!(m.get_param("no.such.param").unwrap_err().status(), Status::UnknownName);
    let st = m.set_param("model.norm.weight", &[1.0; 3]).unwrap_err().status();
    assert!(matches!(st, Status::ShapeMismatch | Status::BufferTooSmall), "{st:?}");
    assert_eq!(m.set_param("bad\0name", &[1.0]).unwrap_err().status(), Status::InvalidArgument);

    // Same inputs, same loss after all those failures.
    let again = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
    assert_eq!(loss, again);
    m.backward().unwrap();
    assert_eq!(m.activation_norms(99, Site::ResidOut, None).unwrap_err().status(), Status::OutOfRange);
    // The default sink window T_eps = 64 does not fit in seq_len 32.
    let st = m.sink_rate(0, 0, 0.3).unwrap_err().status();
    assert!(matches!(st, Status::OutOfRange | Status::InvalidArgument), "{st:?}");
}

#[test]
fn missing_files() {
    let e = Model::load("/nonexistent/dir/model", None).unwrap_err();
    assert!(!e.message().is_empty());
    let e = gsink::Tokenizer::load_gguf("/nonexistent/tok.gguf").unwrap_err();
    assert!(!e.message().is_empty());
}

#[test]
fn reduced_precision_needs_cuda() {
    for precision in [Precision::Tf32, Precision::Bf16] {
        let opts = ModelOptions { precision, ..ModelOptions::default() };
        let e = Model::new(&Config::preset("micro").unwrap(), &opts).unwrap_err();
        assert_eq!(e.status(), Status::Unsupported);
        assert!(e.message().contains("needs a CUDA device"), "{}", e.message());
    }
}

#[test]
fn discarded_site_grads_are_unsupported() {
    let opts = ModelOptions { seed: 7, n_threads: 1, discard_site_grads: true, ..ModelOptions::default() };
    let mut m = Model::new(&Config::preset("micro").unwrap(), &opts).unwrap();
    let mut keep = micro();
    let (tokens, targets) = inputs(32);
    for mm in [&mut m, &mut keep] {
        mm.forward(&tokens, Some(&targets), 1, 32).unwrap();
        mm.backward().unwrap();
    }
    let e = m.gradient(0, Site::ResidOut).unwrap_err();
    assert_eq!(e.status(), Status::Unsupported);
    assert!(e.message().contains("DISCARD_SITE_GRADS"));
    assert_eq!(m.gradient_sink_ratio(0, 0, 31, BatchAgg::SumThenNorm).unwrap_err().status(), Status::Unsupported);
    assert!(keep.gradient(0, Site::ResidOut).is_ok());
    // the handle stays usable: activations are still there
    assert_eq!(m.activation(0, Site::ResidOut).unwrap().len(), keep.activation(0, Site::ResidOut).unwrap().len());
}

#[test]
fn thread_limit() {
    let max = gsink::max_threads();
    assert!(max >= 2);
    let mut m = micro();
    let (tokens, targets) = inputs(32);
    let reference = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
    for bad in [max + 1, 1000, 5000] {
        if bad <= max {
            continue;
        }
        let e = m.set_threads(bad).unwrap_err();
        assert_eq!(e.status(), Status::InvalidArgument);
        assert!(e.message().contains("limit"), "{}", e.message());
        assert_eq!(m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap(), reference);
    }
    let opts = ModelOptions { n_threads: (max + 1) as i32, ..ModelOptions::default() };
    assert_eq!(Model::new(&Config::preset("micro").unwrap(), &opts).unwrap_err().status(), Status::InvalidArgument);
    m.set_threads(max).unwrap();
    let loss = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
    assert!((loss - reference).abs() <= 1e-6 * reference.abs());
}

#[test]
fn busy_status_maps_both_ways() {
    assert_eq!(Status::from_code(22), Status::Busy);
    assert_eq!(Status::Busy.code(), 22);
    assert_eq!(Status::Busy.description(), "handle busy");
    assert_eq!(Status::from_code(23), Status::Cancelled);
    assert_eq!(Status::Cancelled.code(), 23);
    assert_eq!(Status::Cancelled.description(), "cancelled");
}

#[test]
fn analysis_model_refuses_parameter_gradients() {
    let opts = ModelOptions { seed: 7, n_threads: 1, analysis: true, ..ModelOptions::default() };
    let mut m = Model::new(&Config::preset("micro").unwrap(), &opts).unwrap();
    let mut keep = micro();
    let (tokens, targets) = inputs(32);
    for mm in [&mut m, &mut keep] {
        mm.forward(&tokens, Some(&targets), 1, 32).unwrap();
        mm.backward().unwrap();
    }
    // the same site gradients, with no parameter-gradient buffer
    assert_eq!(m.gradient(1, Site::ResidIn).unwrap(), keep.gradient(1, Site::ResidIn).unwrap());
    assert!(m.memory(false).unwrap().0 < keep.memory(false).unwrap().0);
    let e = m.get_param_grad("model.norm.weight").unwrap_err();
    assert_eq!(e.status(), Status::Unsupported);
    assert!(e.message().contains("GSINK_MODEL_ANALYSIS"), "{}", e.message());
    assert_eq!(m.zero_grad().unwrap_err().status(), Status::Unsupported);
    assert_eq!(m.backward_accumulate().unwrap_err().status(), Status::Unsupported);
    // the handle stays usable
    m.forward(&tokens, Some(&targets), 1, 32).unwrap();
    m.backward().unwrap();
    assert_eq!(m.gradient(0, Site::ResidIn).unwrap(), keep.gradient(0, Site::ResidIn).unwrap());
}

#[test]
fn discard_site_activations_model() {
    let cfg = Config::preset("micro").unwrap();
    let bad = ModelOptions { discard_site_activations: true, ..ModelOptions::default() };
    assert_eq!(Model::new(&cfg, &bad).unwrap_err().status(), Status::InvalidArgument);
    let opts = ModelOptions { seed: 7, n_threads: 1, analysis: true, discard_site_activations: true, ..ModelOptions::default() };
    let mut m = Model::new(&cfg, &opts).unwrap();
    let mut keep = micro();
    let (tokens, targets) = inputs(32);
    for mm in [&mut m, &mut keep] {
        mm.forward(&tokens, Some(&targets), 1, 32).unwrap();
        mm.backward().unwrap();
    }
    // the same site gradients, kept and recomputed activations and logits; the unread ones are refused
    assert_eq!(m.gradient(0, Site::MlpPost).unwrap(), keep.gradient(0, Site::MlpPost).unwrap());
    assert_eq!(m.activation(1, Site::MlpPre).unwrap(), keep.activation(1, Site::MlpPre).unwrap());
    assert_eq!(m.activation(0, Site::MlpPost).unwrap(), keep.activation(0, Site::MlpPost).unwrap());
    assert_eq!(m.logits().unwrap(), keep.logits().unwrap());
    let e = m.activation(0, Site::MlpOut).unwrap_err();
    assert_eq!(e.status(), Status::Unsupported);
    assert!(e.message().contains("GSINK_MODEL_DISCARD_SITE_ACTIVATIONS"), "{}", e.message());
}

#[test]
fn tokenizer_json() {
    let e = gsink::Tokenizer::load_json("/nonexistent/dir").unwrap_err();
    assert_eq!(e.status(), Status::Io);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../models/default");
    if !std::path::Path::new(dir).join("tokenizer.json").exists() {
        return;
    }
    let mut t = gsink::Tokenizer::load_json(dir).unwrap();
    let eot = t.token_id("<|endoftext|>").unwrap().unwrap();
    assert_eq!(t.special_tokens().unwrap().1, Some(eot));
    assert_eq!(t.token_id("no such token").unwrap(), None);
    let ids = t.encode("Hello world<|endoftext|>", false, true).unwrap();
    assert_eq!(*ids.last().unwrap(), eot);
}

#[test]
fn bf16_weights_round_and_halve_memory() {
    let cfg = Config::preset("micro").unwrap();
    let bf = ModelOptions { seed: 7, n_threads: 1, analysis: true, weight_dtype: WeightDtype::Bf16, ..ModelOptions::default() };
    let fp = ModelOptions { weight_dtype: WeightDtype::Fp32, ..bf };
    assert_eq!(ModelOptions::default().weight_dtype, WeightDtype::Fp32);
    let mut m = Model::new(&cfg, &bf).unwrap();
    let mut f = Model::new(&cfg, &fp).unwrap();
    assert!(m.memory(false).unwrap().0 < f.memory(false).unwrap().0);
    let name = "model.layers.0.mlp.up_proj.weight";
    let mut w = f.get_param(name).unwrap();
    w[0] = 1.0 + 1.0 / 256.0; // a tie: to even (1)
    w[1] = 1.0 + 3.0 / 256.0; // a tie: to even (1 + 4/256)
    m.set_param(name, &w).unwrap();
    let got = m.get_param(name).unwrap();
    assert_eq!(got[0], 1.0);
    assert_eq!(got[1], 1.0 + 4.0 / 256.0);
    assert!(got.iter().all(|x| x.to_bits() & 0xffff == 0));
}
