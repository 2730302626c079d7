//! Creates (or loads) a model, runs forward + backward on a fixed batch and
//! prints R_GS, sink rate and t0/early per layer. Same inputs and output as
//! examples/c/analyze.c.
//!
//!     cargo run --example analyze -- [--numbers] [--preset NAME] [--seed N] [MODEL_PATH]
use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::process::ExitCode;

use gsink::{BatchAgg, Config, Model, ModelOptions, Site};

const BATCH: usize = 2;

extern "C" {
    fn snprintf(buf: *mut c_char, size: usize, fmt: *const c_char, ...) -> c_int;
}

/// C's "%.9g" (Rust has no %g), so every language prints the same digits.
fn g9(x: f32) -> String {
    let mut buf = [0u8; 64];
    let fmt = CString::new("%.9g").unwrap();
    // SAFETY: buf holds 64 bytes; the format takes one double.
    let n = unsafe { snprintf(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), x as f64) };
    String::from_utf8_lossy(&buf[..n.clamp(0, 63) as usize]).into_owned()
}

fn run() -> gsink::Result<()> {
    let mut preset = "micro".to_string();
    let mut seed = 1234u64;
    let mut path: Option<String> = None;
    let mut numbers = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--numbers" => numbers = true,
            "--preset" => preset = args.next().unwrap_or_default(),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            p if !p.starts_with('-') => path = Some(p.to_string()),
            other => {
                eprintln!("analyze: unknown option {other}");
                std::process::exit(2);
            }
        }
    }

    // One thread: identical numbers in every language.
    let opts = ModelOptions { seed, n_threads: 1, ..ModelOptions::default() };
    let mut model = match &path {
        Some(p) => Model::load(p, Some(&opts))?,
        None => Model::new(&Config::preset(&preset)?, &opts)?,
    };
    let cfg = model.config()?;

    let t_len = cfg.max_seq_len.min(64) as usize;
    let mut diag = model.diag_options()?;
    diag.sink_window = diag.sink_window.min(t_len as i32);
    diag.rgs_window = diag.rgs_window.min(t_len as i32 - 1);
    model.set_diag_options(&diag)?;

    let vocab = cfg.vocab_size as usize;
    let tok = |b: usize, t: usize| ((31 * b + 7 * t + 3) % vocab) as i32;
    let mut tokens = Vec::with_capacity(BATCH * t_len);
    let mut targets = Vec::with_capacity(BATCH * t_len);
    for b in 0..BATCH {
        for t in 0..t_len {
            tokens.push(tok(b, t));
            targets.push(if t + 1 < t_len { tok(b, t + 1) } else { -1 });
        }
    }

    let loss = model.forward(&tokens, Some(&targets), BATCH, t_len)?.unwrap_or(f32::NAN);
    model.backward()?;
    let rgs_window = diag.rgs_window as usize;
    let s = diag.sink_position as usize;
    let last = cfg.n_layers as usize - 1;

    if numbers {
        let rgs = model.gradient_sink_ratio(0, 0, rgs_window, BatchAgg::SumThenNorm)?;
        let rate = model.sink_rate(0, 0, diag.sink_eps)?;
        let score = model.sink_scores(0, 0)?[0];
        let gnorm = model.gradient_norms(0, Site::AttnNormOut, None, BatchAgg::SumThenNorm)?;
        let t0 = model.massive_activation_ratio(last, Site::ResidOut)?;
        println!("loss {}", g9(loss));
        println!("rgs_layer0 {}", g9(rgs));
        println!("sink_rate_layer0 {}", g9(rate));
        println!("sink_score_layer0_head0 {}", g9(score));
        println!("grad_norm_layer0_t0 {}", g9(gnorm[0]));
        println!("t0_early_last {}", g9(t0));
        return Ok(());
    }

    println!(
        "libgsink {}, {}, {} layers, batch {} x {} tokens",
        gsink::version_string(),
        path.as_deref().unwrap_or(&preset),
        cfg.n_layers,
        BATCH,
        t_len
    );
    println!("loss {loss:.6}");
    println!("{:>5} {:>10} {:>10} {:>10}", "layer", "R_GS", "sink_rate", "t0/early");
    for l in 0..cfg.n_layers as usize {
        let rgs = model.gradient_sink_ratio(l, s, rgs_window, diag.batch_agg)?;
        let rate = model.sink_rate(l, s, diag.sink_eps)?;
        let t0 = model.massive_activation_ratio(l, Site::ResidOut)?;
        println!("{l:>5} {rgs:>10.4} {rate:>10.4} {t0:>10.4}");
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("analyze: {e}");
            ExitCode::FAILURE
        }
    }
}
