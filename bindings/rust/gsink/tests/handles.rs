//! Drop safety and thread movement of handles.
use gsink::{Config, Model, ModelOptions, Optimizer, OptimizerOptions};

fn assert_send<T: Send>() {}

fn micro(seed: u64) -> Model {
    Model::new(&Config::preset("micro").unwrap(), &ModelOptions { seed, n_threads: 1, ..ModelOptions::default() }).unwrap()
}

fn step_inputs() -> (Vec<i32>, Vec<i32>) {
    let tokens: Vec<i32> = (0..32).map(|i| (i * 3 + 2) % 64).collect();
    let targets: Vec<i32> = (0..32).map(|i| (i * 3 + 5) % 64).collect();
    (tokens, targets)
}

#[test]
fn handles_are_send() {
    assert_send::<Model>();
    assert_send::<Optimizer<'static>>();
    assert_send::<gsink::Tokenizer>();
}

#[test]
fn create_and_drop_many() {
    for seed in 0..200 {
        let m = micro(seed);
        drop(m);
    }
}

#[test]
fn same_seed_same_weights_different_seed_different() {
    let mut a = micro(5);
    let mut b = micro(5);
    let mut c = micro(6);
    let name = "model.embed_tokens.weight";
    assert_eq!(a.get_param(name).unwrap(), b.get_param(name).unwrap());
    assert_ne!(a.get_param(name).unwrap(), c.get_param(name).unwrap());
}

#[test]
fn model_moves_to_another_thread() {
    let (tokens, targets) = step_inputs();
    let mut m = micro(3);
    let here = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
    let (m, there) = std::thread::spawn(move || {
        let mut m = m;
        let l = m.forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
        m.backward().unwrap();
        (m, l)
    })
    .join()
    .unwrap();
    assert_eq!(here, there);
    drop(m);
}

#[test]
fn optimizer_lowers_loss_and_drops_before_model() {
    let (tokens, targets) = step_inputs();
    let mut m = micro(11);
    let first;
    let last;
    {
        let opts = OptimizerOptions { lr: 1e-2, min_lr: 1e-2, total_steps: 0, weight_decay: 0.0, ..OptimizerOptions::default() };
        let mut opt = Optimizer::new(&mut m, &opts).unwrap();
        first = opt.model_mut().forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
        let mut l = first;
        for _ in 0..10 {
            opt.model_mut().backward().unwrap();
            let gn = opt.step().unwrap();
            assert!(gn.is_finite() && gn > 0.0);
            l = opt.model_mut().forward(&tokens, Some(&targets), 1, 32).unwrap().unwrap();
        }
        assert_eq!(opt.step_count(), 10);
        last = l;
    } // optimizer dropped here, model still alive
    assert!(last < first, "loss did not fall: {first} -> {last}");
    m.forward(&tokens, Some(&targets), 1, 32).unwrap();
}
