//! One whole DARTS search step (architecture step of each order + the weight step, as the one
//! step graph runs it: src/search/step_graph.rs through src/search/stepper.rs) on the CPU
//! executor in f32 at C = 8, layers = 5, batch 32, 32x32, and at the default `quick` preset of
//! `darts search` (C = 4, 5 layers, batch 32). Bench IDs: `search_step_c8_l5_b32_f32/<order>`
//! and `search_step_quick_preset_c4_l5_b32_f32/arch_first_order_plus_weight_step` (the IDs
//! the host-step version of this bench used for the same whole steps, so criterion compares
//! them; results in benches/results/).
//!
//! Before the criterion runs, a plain timing pass prints seconds per step, the ratios and the
//! peak resident memory, since criterion reports each function alone.

use criterion::{criterion_group, criterion_main, Criterion};
use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
use darts::search::architect::Order;
use darts::search::step_graph::{OptimState, StepHyper};
use darts::search::stepper::Stepper;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

fn batch(n: usize, rng: &mut ChaCha8Rng) -> Batch {
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, 32, 32]), || rng.sample(StandardNormal));
    let mut onehot = ArrayD::zeros(IxDyn(&[n, 10]));
    for r in 0..n {
        onehot[[r, rng.random_range(0..10)]] = 1.0;
    }
    Batch { x, onehot }
}

/// A stepper of `order` at C channels, `layers` cells, with two batches of 32 images.
fn setup(c: usize, layers: usize, order: Order) -> (Stepper<f32>, Batch, Batch) {
    let cfg = SearchConfig {
        c,
        layers,
        ..SearchConfig::paper()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let st = init_state(&cfg.layout().unwrap(), cfg.k(), &mut rng);
    let (train, valid) = (batch(32, &mut rng), batch(32, &mut rng));
    let s = Stepper::new(
        cfg,
        order,
        StepHyper::reference(),
        Box::new(CpuExecutor::<f32>::new()),
        st,
        OptimState::default(),
    )
    .unwrap();
    (s, train, valid)
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn bench(c: &mut Criterion) {
    let orders = [
        (Order::First, "first_order"),
        (Order::Second, "second_order_fd"),
        (Order::Exact, "exact"),
    ];
    let mut secs = Vec::new();
    for (order, _) in orders {
        let (mut s, t, v) = setup(8, 5, order);
        s.step(&t, &v, 0.025).unwrap();
        let t0 = Instant::now();
        s.step(&t, &v, 0.025).unwrap();
        secs.push(t0.elapsed().as_secs_f64());
    }
    println!(
        "whole search step (C=8, layers=5, batch 32, 32x32, f32, 1 thread): first {:.2} s, \
         second (FD) {:.2} s, exact {:.2} s; ratios second/first {:.2}, exact/second {:.2}; \
         peak RSS {:.0} MB",
        secs[0],
        secs[1],
        secs[2],
        secs[1] / secs[0],
        secs[2] / secs[1],
        peak_rss_mb()
    );
    let mut g = c.benchmark_group("search_step_c8_l5_b32_f32");
    g.sample_size(10);
    for (order, id) in orders {
        let (mut s, t, v) = setup(8, 5, order);
        g.bench_function(id, |b| b.iter(|| s.step(&t, &v, 0.025).unwrap()));
    }
    g.finish();
}

/// One full search step (first-order architect step + weight step) at the default `quick`
/// preset of `darts search` (C = 4, 5 layers, batch 32, f32).
fn bench_quick_preset(c: &mut Criterion) {
    let (mut s, t, v) = setup(4, 5, Order::First);
    let mut g = c.benchmark_group("search_step_quick_preset_c4_l5_b32_f32");
    g.sample_size(10);
    g.bench_function("arch_first_order_plus_weight_step", |b| {
        b.iter(|| s.step(&t, &v, 0.025).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_quick_preset, bench);
criterion_main!(benches);
