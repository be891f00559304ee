//! Time per op family of one whole search step (the step graph: architecture step of the
//! given order, Adam, weight step) on the CPU executor in f32 at C = 8, layers = 5, batch 32, 32x32:
//! `cargo run --release --example profile_step -- [first|second|exact]`.

use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
use darts::exec::Executor;
use darts::search::architect::Order;
use darts::search::step_graph::{upload_state, OptimState, StepGraph, StepHyper};
use darts::search::stepper::step_feeds;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

fn main() {
    let order = match std::env::args().nth(1).as_deref() {
        Some("second") => Order::Second,
        Some("exact") => Order::Exact,
        _ => Order::First,
    };
    let cfg = SearchConfig {
        c: 8,
        layers: 5,
        ..SearchConfig::paper()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let layout = cfg.layout().unwrap();
    let st = init_state(&layout, cfg.k(), &mut rng);
    let mut batch = || {
        let x =
            ArrayD::from_shape_simple_fn(IxDyn(&[32, 3, 32, 32]), || rng.sample(StandardNormal));
        let mut onehot = ArrayD::zeros(IxDyn(&[32, 10]));
        for r in 0..32 {
            onehot[[r, r % 10]] = 1.0;
        }
        Batch { x, onehot }
    };
    let (train, valid) = (batch(), batch());
    let t = Instant::now();
    let hyper = StepHyper::reference();
    let shape = [32, 3, 32, 32];
    let sg = StepGraph::build(&cfg, &shape, &shape, order, &hyper).unwrap();
    println!(
        "step graph built in {:.2} s: {} nodes",
        t.elapsed().as_secs_f64(),
        sg.graph.len()
    );
    let mut ex = CpuExecutor::<f32>::new();
    upload_state(&mut ex, &layout, &st, &OptimState::default()).unwrap();
    let feeds = step_feeds::<f32>(&train, &valid, 0.025, &hyper, [0, 0]);
    // Warm the buffer pool, then profile one whole step (architecture step + weight step).
    ex.run_assign(&sg.graph, &feeds, &[sg.loss_train], &sg.assign)
        .unwrap();
    ex.enable_profile();
    let t = Instant::now();
    ex.run_assign(&sg.graph, &feeds, &[sg.loss_train], &sg.assign)
        .unwrap();
    let step = t.elapsed().as_secs_f64();
    println!("{order:?}: whole step (architecture step + weight step) {step:.2} s");
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.to_string())
        .unwrap_or_default();
    println!("peak resident memory: {rss}");
    let total: f64 = ex.profile().iter().map(|p| p.1).sum();
    for (op, s, n) in ex.profile().into_iter().take(18) {
        println!("{op:<22} {s:8.3} s {:5.1}%  {n:7} calls", 100.0 * s / total);
    }
}
