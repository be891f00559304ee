//! Seconds per resident search step (src/search/step_graph.rs: architecture step, Adam,
//! clipping, SGD and BN statistics as one graph, all state in executor variables) on the CPU
//! or the GPU, for comparing the two executors at one configuration (the target: the
//! second-order step at the paper configuration C=16, 8 layers, batch 64, f32).
//!
//! `cargo run --release --example resident_step -- <cpu|gpu> <first|second|exact> [C] [layers]
//! [batch] [steps]` (defaults: 16 8 64 3). One untimed step first (pipeline compilation on the
//! GPU, buffer pool warm-up on the CPU), then `steps` timed steps; prints each, the median and
//! the peak resident memory of the process. With `DARTS_GPU_PROFILE=1` the GPU also times every
//! dispatch (timestamps between dispatches) and prints the device time by kernel; with
//! `DARTS_GPU_SPLIT_MIN=n` it splits reductions and weight gradients of at least n terms
//! (`GpuExecutor::set_split_min`; 4294967295 never, the default on a CPU adapter); with
//! `DARTS_GPU_BATCHING=0` it records dispatches in graph order, one per kernel, and with
//! `DARTS_GPU_BATCHING=1` level by level with batched dispatches (`GpuExecutor::set_batching`;
//! the default is on for a GPU, off for a CPU adapter), to measure what batching buys.

use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
use darts::exec::gpu::GpuExecutor;
use darts::exec::Executor;
use darts::search::architect::Order;
use darts::search::step_graph::{OptimState, StepHyper};
use darts::search::stepper::Stepper;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: resident_step <cpu|gpu> <first|second|exact> [C] [layers] [batch] [steps]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| -> usize {
        args.get(i).map_or(default, |s| {
            s.parse()
                .unwrap_or_else(|_| usage(&format!("argument {} '{s}' is not a count", i + 1)))
        })
    };
    let order = match args.get(1).map(String::as_str) {
        Some("first") | None => Order::First,
        Some("second") => Order::Second,
        Some("exact") => Order::Exact,
        Some(o) => usage(&format!("unknown order '{o}'")),
    };
    let (c, layers, batch, steps) = (num(2, 16), num(3, 8), num(4, 64), num(5, 3).max(1));
    let exec: Box<dyn Executor<f32>> = match args.first().map(String::as_str) {
        Some("cpu") | None => Box::new(CpuExecutor::<f32>::new()),
        Some("gpu") => match GpuExecutor::new() {
            Ok(mut g) => {
                println!("adapter: {}", g.adapter_info());
                if std::env::var("DARTS_GPU_PROFILE").is_ok_and(|v| v == "1") {
                    let on = g.set_profile(true);
                    println!(
                        "profile: {}",
                        if on {
                            "device time of every dispatch, by kernel"
                        } else {
                            "unavailable (no timestamps inside passes on this adapter)"
                        }
                    );
                }
                // `DARTS_GPU_SPLIT_MIN=n`: split long sums from n terms (1: all that can be;
                // 4294967295: none), to compare with the adapter's default.
                if let Some(n) = std::env::var("DARTS_GPU_SPLIT_MIN")
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    g.set_split_min(n);
                    println!("split reductions and weight gradients from {n} terms");
                }
                match std::env::var("DARTS_GPU_BATCHING").as_deref() {
                    Ok("0") => {
                        g.set_batching(false);
                        println!("batching off: dispatches in graph order, one per kernel");
                    }
                    Ok("1") => {
                        g.set_batching(true);
                        println!("batching on: a level's kernels of one text in one dispatch");
                    }
                    _ => {}
                }
                Box::new(g)
            }
            Err(e) => usage(&format!("no GPU: {e}")),
        },
        Some(b) => usage(&format!("unknown backend '{b}'")),
    };
    let cfg = SearchConfig {
        c,
        layers,
        ..SearchConfig::paper()
    };
    if let Err(e) = cfg.validate(32, 32) {
        usage(&format!("configuration: {e}"));
    }
    let layout = cfg.layout().expect("layout of a valid configuration");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let state = init_state(&layout, cfg.k(), &mut rng);
    let shape = [batch, 3, 32, 32];
    let mut batches = Vec::new();
    for _ in 0..2 {
        let x =
            ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.sample::<f64, _>(StandardNormal));
        let mut onehot = ArrayD::zeros(IxDyn(&[batch, 10]));
        for r in 0..batch {
            onehot[[r, rng.random_range(0..10)]] = 1.0;
        }
        batches.push(Batch { x, onehot });
    }
    let name = exec.name();
    let mut stepper = Stepper::new(
        cfg,
        order,
        StepHyper::reference(),
        exec,
        state,
        OptimState::default(),
    )
    .unwrap_or_else(|e| usage(&format!("step graph: {e}")));
    println!("{name} {order:?} step, C={c}, layers={layers}, batch {batch}, f32");
    let mut times = Vec::new();
    for k in 0..=steps {
        let t = Instant::now();
        let rep = stepper
            .step(&batches[0], &batches[1], 0.025)
            .unwrap_or_else(|e| usage(&format!("step {k}: {e}")));
        let s = t.elapsed().as_secs_f64();
        println!(
            "step {k}{}: {s:.3} s, loss {:.4}",
            if k == 0 {
                " (graph built, untimed warm-up)"
            } else {
                ""
            },
            rep.loss_train
        );
        if let Some(t) = stepper.last_run_timing() {
            println!("  {t}");
        }
        if k > 0 {
            times.push(s);
        }
    }
    times.sort_by(f64::total_cmp);
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!(
        "median {:.3} s per step over {} steps; peak resident memory {rss}",
        times[times.len() / 2],
        times.len()
    );
}
