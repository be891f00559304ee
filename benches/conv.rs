//! Criterion benchmarks of the CPU executor (f32) on the shapes a DARTS cell sees in the
//! CIFAR search network: batch 64, 16 channels, 32x32.
//!
//! Benchmarked graphs (each built once, outside the timed loop; one executor is reused across
//! iterations, so its buffer pool is warm, as in training):
//!
//! - conv2d forward, `Conv2dInputGrad` and `Conv2dWeightGrad` (the two transposes, built
//!   directly as primitives so each kernel is timed alone) for
//!   (a) 3x3 depthwise (groups 16, pad 1), (b) 5x5 depthwise (groups 16, pad 2),
//!   (c) 1x1 pointwise 16 -> 16;
//! - the composed batch norm `graph::compose::batch_norm_train` forward, and forward +
//!   backward (`autodiff::grad` of <y, r> for a fixed random r, wrt x, gamma, beta).
//!
//! Work measures (criterion shows `elem/s` for `Throughput::Elements`, so each bench also
//! prints a plain `GFLOP/s` or `GB/s` line from its own timed run):
//!
//! - conv FLOPs (one multiply and one add per product term), the same for all three
//!   primitives since each contracts the same index set:
//!   `FLOP = 2 * N * O * OH * OW * (C / groups) * kh * kw`.
//! - batch-norm bytes moved: the sum over every executed (non-input) node of
//!   `(sum of its input sizes + its output size) * size_of::<f32>()`, i.e. the traffic of the
//!   node-by-node executor if every operand is read once and every result written once.
//!
//! Each executor run also copies its feeds into fresh buffers and clones its outputs (the
//! `Executor::run` contract); `executor floor` prints the time of a run whose only node is a
//! reshape of the 64x16x32x32 input, for scale.
//!
//! Run: `cargo bench --bench conv` (add `-- --quick` for a fast pass).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use darts::autodiff::grad;
use darts::exec::cpu::CpuExecutor;
use darts::exec::{liveness, Executor, Feeds};
use darts::graph::compose::batch_norm_train;
use darts::graph::{ConvParams, Graph, NodeId, Op, Op::Input};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

const N: usize = 64;
const C: usize = 16;
const H: usize = 32;
const W: usize = 32;

fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0f32..1.0))
}

/// `FLOP = 2 * N * O * OH * OW * (C / groups) * kh * kw` for a conv with weight
/// `[O, C/groups, kh, kw]` and output `[N, O, OH, OW]`.
fn conv_flops(y: &[usize], w: &[usize]) -> u64 {
    2 * (y[0] * y[1] * y[2] * y[3] * w[1] * w[2] * w[3]) as u64
}

/// Bytes moved by the executed nodes of `g` for `outputs`: sum over non-input nodes of
/// (input sizes + output size) * 4 bytes.
fn bytes_moved(g: &Graph, outputs: &[NodeId]) -> u64 {
    let (needed, _) = liveness(g, outputs).expect("outputs exist");
    let nodes = g.nodes();
    let elems: usize = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| needed[*i] && !matches!(n.op, Input { .. }))
        .map(|(_, n)| {
            n.shape.dims().iter().product::<usize>()
                + n.inputs
                    .iter()
                    .map(|j| nodes[j.0].shape.dims().iter().product::<usize>())
                    .sum::<usize>()
        })
        .sum();
    (elems * std::mem::size_of::<f32>()) as u64
}

/// A graph ready to run: built, fed and with its outputs chosen.
struct Case {
    name: String,
    graph: Graph,
    feeds: Feeds<f32>,
    outputs: Vec<NodeId>,
    throughput: Throughput,
}

impl Case {
    /// (median, minimum) seconds per run over runs filling about `budget`, after one
    /// warm-up run. The minimum is the run least disturbed by other processes on a shared
    /// machine; the median is what a training loop sees.
    fn timed_seconds(&self, ex: &mut CpuExecutor<f32>, budget: Duration) -> (f64, f64) {
        let run = |ex: &mut CpuExecutor<f32>| {
            black_box(
                ex.run(&self.graph, &self.feeds, &self.outputs)
                    .expect("bench graph runs"),
            );
        };
        run(ex);
        let start = Instant::now();
        let mut times = Vec::new();
        while times.len() < 5 || (start.elapsed() < budget && times.len() < 1000) {
            let t = Instant::now();
            run(ex);
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], times[0])
    }

    /// Prints the plain rate lines (GFLOP/s or GB/s) at the median and at the fastest run.
    fn print_rate(&self, ex: &mut CpuExecutor<f32>) {
        let (med, min) = self.timed_seconds(ex, Duration::from_millis(1500));
        let (work, unit) = match self.throughput {
            Throughput::Elements(flop) => (flop, "GFLOP/s"),
            Throughput::Bytes(b) => (b, "GB/s"),
            _ => (0, "-"),
        };
        println!(
            "{}: median {:.3} ms/run = {:.2} {unit}; best {:.3} ms/run = {:.2} {unit} ({work} {})",
            self.name,
            med * 1e3,
            work as f64 / med / 1e9,
            min * 1e3,
            work as f64 / min / 1e9,
            if unit == "GB/s" { "bytes" } else { "FLOP" },
        );
    }
}

/// Forward, input-grad and weight-grad cases for one conv configuration.
fn conv_cases(tag: &str, o: usize, k: usize, p: ConvParams, rng: &mut ChaCha8Rng) -> Vec<Case> {
    let xs = [N, C, H, W];
    let ws = [o, C / p.groups, k, k];
    let mut cases = Vec::new();

    let mut g = Graph::new();
    let x = g.input("x", xs).expect("x");
    let w = g.input("w", ws).expect("w");
    let y = g.conv2d(x, w, p).expect("conv shape");
    let ys = g.shape(y).dims().to_vec();
    let flop = conv_flops(&ys, &ws);
    let mut f = Feeds::new();
    f.insert("x", random(&xs, rng));
    f.insert("w", random(&ws, rng));
    cases.push(Case {
        name: format!("{tag}/forward"),
        graph: g,
        feeds: f,
        outputs: vec![y],
        throughput: Throughput::Elements(flop),
    });

    let mut g = Graph::new();
    let gy = g.input("gy", ys.clone()).expect("gy");
    let w = g.input("w", ws).expect("w");
    let gx = g
        .add(Op::Conv2dInputGrad { p, in_hw: [H, W] }, &[gy, w])
        .expect("input grad shape");
    let mut f = Feeds::new();
    f.insert("gy", random(&ys, rng));
    f.insert("w", random(&ws, rng));
    cases.push(Case {
        name: format!("{tag}/input_grad"),
        graph: g,
        feeds: f,
        outputs: vec![gx],
        throughput: Throughput::Elements(flop),
    });

    let mut g = Graph::new();
    let x = g.input("x", xs).expect("x");
    let gy = g.input("gy", ys.clone()).expect("gy");
    let gw = g
        .add(Op::Conv2dWeightGrad { p, kernel: [k, k] }, &[x, gy])
        .expect("weight grad shape");
    let mut f = Feeds::new();
    f.insert("x", random(&xs, rng));
    f.insert("gy", random(&ys, rng));
    cases.push(Case {
        name: format!("{tag}/weight_grad"),
        graph: g,
        feeds: f,
        outputs: vec![gw],
        throughput: Throughput::Elements(flop),
    });
    cases
}

/// Batch norm (affine, eps 1e-5) forward, and forward + backward of <y, r>.
fn bn_cases(rng: &mut ChaCha8Rng) -> Vec<Case> {
    let xs = [N, C, H, W];
    let mut g = Graph::new();
    let x = g.input("x", xs).expect("x");
    let gamma = g.input("gamma", [C]).expect("gamma");
    let beta = g.input("beta", [C]).expect("beta");
    let r = g.input("r", xs).expect("r");
    let bn = batch_norm_train(&mut g, x, Some(gamma), Some(beta), 1e-5).expect("bn");
    let loss = g.dot(bn.y, r).expect("loss");
    let grads = grad(&mut g, loss, &[x, gamma, beta]).expect("grad");
    let mut f = Feeds::new();
    f.insert("x", random(&xs, rng));
    f.insert("gamma", random(&[C], rng));
    f.insert("beta", random(&[C], rng));
    f.insert("r", random(&xs, rng));
    let fwd = vec![bn.y];
    let bwd = vec![loss, grads[0], grads[1], grads[2]];
    vec![
        Case {
            name: "batch_norm/forward".into(),
            throughput: Throughput::Bytes(bytes_moved(&g, &fwd)),
            graph: g.clone(),
            feeds: f.clone(),
            outputs: fwd,
        },
        Case {
            name: "batch_norm/forward_backward".into(),
            throughput: Throughput::Bytes(bytes_moved(&g, &bwd)),
            graph: g,
            feeds: f,
            outputs: bwd,
        },
    ]
}

/// A run whose only work is the executor's own: feed copy, one reshape, output clone.
fn floor_case(rng: &mut ChaCha8Rng) -> Case {
    let xs = [N, C, H, W];
    let mut g = Graph::new();
    let x = g.input("x", xs).expect("x");
    let y = g.reshape(x, [N, C, H * W]).expect("reshape");
    let mut f = Feeds::new();
    f.insert("x", random(&xs, rng));
    Case {
        name: "executor_floor/reshape".into(),
        throughput: Throughput::Bytes(bytes_moved(&g, &[y])),
        graph: g,
        feeds: f,
        outputs: vec![y],
    }
}

fn all_cases() -> Vec<(String, Vec<Case>)> {
    let mut rng = ChaCha8Rng::seed_from_u64(20190101);
    vec![
        (
            "dw3x3".into(),
            conv_cases("dw3x3", C, 3, ConvParams::new(1, 1, 1, C), &mut rng),
        ),
        (
            "dw5x5".into(),
            conv_cases("dw5x5", C, 5, ConvParams::new(1, 2, 1, C), &mut rng),
        ),
        (
            "pw1x1".into(),
            conv_cases("pw1x1", C, 1, ConvParams::new(1, 0, 1, 1), &mut rng),
        ),
        ("batch_norm".into(), bn_cases(&mut rng)),
        ("executor_floor".into(), vec![floor_case(&mut rng)]),
    ]
}

fn benches(c: &mut Criterion) {
    let mut ex = CpuExecutor::<f32>::new();
    for (group_name, cases) in all_cases() {
        let mut group = c.benchmark_group(&group_name);
        for case in &cases {
            case.print_rate(&mut ex);
            group.throughput(case.throughput.clone());
            let leaf = case.name.rsplit('/').next().unwrap_or(&case.name);
            group.bench_function(leaf, |b| {
                b.iter(|| {
                    black_box(
                        ex.run(&case.graph, &case.feeds, &case.outputs)
                            .expect("bench graph runs"),
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = conv;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(conv);
