//! Time per op family of one architecture step (first order, second order or exact) plus the
//! weight step on the CPU executor in f32 at C = 8, layers = 5, batch 32, 32x32:
//! `cargo run --release --example profile_step -- [first|second|exact]`.

use darts::check::oracle::architect::{
    arch_gradient, evaluate, weight_list, ArchGraphs, Order, Point, Unroll,
};
use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
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
    let st = init_state(&cfg.layout().unwrap(), cfg.k(), &mut rng);
    let point = Point {
        weights: weight_list(&cfg)
            .unwrap()
            .into_iter()
            .map(|(n, _)| {
                let a = st.tensors[&n].clone();
                (n, a)
            })
            .collect(),
        alpha: [st.alpha_normal.clone(), st.alpha_reduce.clone()],
    };
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
    let graphs = ArchGraphs::build_for(
        &cfg,
        &[32, 3, 32, 32],
        &[32, 3, 32, 32],
        order == Order::Exact,
    )
    .unwrap();
    println!(
        "graphs built in {:.2} s: train {} nodes, unrolled {} nodes",
        t.elapsed().as_secs_f64(),
        graphs.train.graph.len(),
        graphs.unrolled.as_ref().map_or(0, |u| u.graph.len())
    );
    let u = Unroll {
        eta: 0.025,
        weight_decay: 3e-4,
        momentum: 0.9,
    };
    let mut ex = CpuExecutor::<f32>::new();
    // Warm the buffer pool, then profile one step.
    arch_gradient(&mut ex, &graphs, &point, None, &train, &valid, &u, order).unwrap();
    ex.enable_profile();
    let t = Instant::now();
    arch_gradient(&mut ex, &graphs, &point, None, &train, &valid, &u, order).unwrap();
    let arch = t.elapsed().as_secs_f64();
    let t = Instant::now();
    evaluate(&mut ex, &graphs.train, &point, &train, "weight step").unwrap();
    let weight = t.elapsed().as_secs_f64();
    println!("{order:?}: architecture step {arch:.2} s, weight step {weight:.2} s");
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
