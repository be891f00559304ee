//! One DARTS architecture step (first order, second order with the paper's FD HVP, exact by
//! autodiff through the unrolled step) plus the weight step, on the CPU executor in f32 at
//! C = 8, layers = 5, batch 32, 32x32 (issue target: second <= 2.5x first, exact <= 1.5x second,
//! and 2x faster than the reference under PyTorch on the same CPU and thread count, which was
//! measured at 10.4 s first order and 24.7 s second order per step, 1 thread).
//!
//! Before the criterion runs, a plain timing pass prints seconds per step, the ratios and the
//! peak resident memory, since criterion reports each function alone.

use criterion::{criterion_group, criterion_main, Criterion};
use darts::check::oracle::architect::{
    arch_gradient, evaluate, weight_list, ArchGraphs, Batch, Order, Point, Unroll,
};
use darts::check::oracle::optim::{clip_grad_norm, Sgd};
use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::exec::cpu::CpuExecutor;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::time::Instant;

struct Setup {
    graphs: ArchGraphs,
    point: Point,
    train: Batch,
    valid: Batch,
}

fn batch(n: usize, rng: &mut ChaCha8Rng) -> Batch {
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, 32, 32]), || rng.sample(StandardNormal));
    let mut onehot = ArrayD::zeros(IxDyn(&[n, 10]));
    for r in 0..n {
        onehot[[r, rng.random_range(0..10)]] = 1.0;
    }
    Batch { x, onehot }
}

fn setup() -> Setup {
    setup_with(8, 5, true)
}

/// C channels, `layers` cells, batch 32 of 32x32 images (with the unrolled graph if asked).
fn setup_with(c: usize, layers: usize, unrolled: bool) -> Setup {
    let cfg = SearchConfig {
        c,
        layers,
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
    let (train, valid) = (batch(32, &mut rng), batch(32, &mut rng));
    let graphs = ArchGraphs::build_for(&cfg, train.x.shape(), valid.x.shape(), unrolled).unwrap();
    Setup {
        graphs,
        point,
        train,
        valid,
    }
}

const UNROLL: Unroll = Unroll {
    eta: 0.025,
    weight_decay: 3e-4,
    momentum: 0.9,
};

fn arch(s: &Setup, ex: &mut CpuExecutor<f32>, order: Order) {
    arch_gradient(
        ex, &s.graphs, &s.point, None, &s.train, &s.valid, &UNROLL, order,
    )
    .unwrap();
}

fn weight_step(s: &Setup, ex: &mut CpuExecutor<f32>) {
    let e = evaluate(ex, &s.graphs.train, &s.point, &s.train, "weight step").unwrap();
    let mut g = e.grad_w;
    clip_grad_norm(&mut g, 5.0);
    let mut w: Vec<ArrayD<f64>> = s.point.weights.iter().map(|(_, w)| w.clone()).collect();
    Sgd::new(0.9, 3e-4).step(&mut w, &g, 0.025);
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
    let s = setup();
    let mut ex = CpuExecutor::<f32>::new();
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let w = time(&mut || weight_step(&s, &mut ex));
    let first = time(&mut || arch(&s, &mut ex, Order::First));
    let second = time(&mut || arch(&s, &mut ex, Order::Second));
    let exact = time(&mut || arch(&s, &mut ex, Order::Exact));
    println!(
        "arch step (C=8, layers=5, batch 32, 32x32, f32, 1 thread): first {first:.2} s, \
         second (FD) {second:.2} s, exact {exact:.2} s, weight step {w:.2} s"
    );
    println!(
        "whole search step (arch + weight): first {:.2} s, second {:.2} s (reference under \
         PyTorch: 10.4 s and 24.7 s); ratios second/first {:.2}, exact/second {:.2}; peak RSS {:.0} MB",
        first + w,
        second + w,
        (second + w) / (first + w),
        exact / second,
        peak_rss_mb()
    );
    let mut g = c.benchmark_group("arch_step_c8_l5_b32_f32");
    g.sample_size(10);
    g.bench_function("weight_step", |b| b.iter(|| weight_step(&s, &mut ex)));
    g.bench_function("first_order", |b| {
        b.iter(|| arch(&s, &mut ex, Order::First))
    });
    g.bench_function("second_order_fd", |b| {
        b.iter(|| arch(&s, &mut ex, Order::Second))
    });
    g.bench_function("exact", |b| b.iter(|| arch(&s, &mut ex, Order::Exact)));
    g.finish();
}

/// One full search step (first-order architect step + weight step) at the default `quick`
/// preset of `darts search` (C = 4, 5 layers, batch 32, f32).
fn bench_quick_preset(c: &mut Criterion) {
    let s = setup_with(4, 5, false);
    let mut ex = CpuExecutor::<f32>::new();
    let mut g = c.benchmark_group("search_step_quick_preset_c4_l5_b32_f32");
    g.sample_size(10);
    g.bench_function("arch_first_order_plus_weight_step", |b| {
        b.iter(|| {
            arch(&s, &mut ex, Order::First);
            weight_step(&s, &mut ex);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_quick_preset, bench);
criterion_main!(benches);
