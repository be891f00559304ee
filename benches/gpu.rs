//! Criterion benchmarks of the wgpu executor [`GpuExecutor`] (f32): the conv kernels of a DARTS
//! cell, and one search step of the search network.
//!
//! Before any measurement the bench prints the adapter ([`GpuExecutor::adapter_info`]) and the
//! configuration. With no adapter it prints `SKIP: no GPU adapter (<reason>)` and exits 0;
//! under `DARTS_REQUIRE_GPU=1` it panics with the reason instead.
//!
//! # Conv kernels
//!
//! The shapes of benches/conv.rs (batch 64, 16 channels, 32x32), plus the dilated convs of
//! the DARTS candidate set: (a) 3x3 depthwise (groups 16, pad 1), (b) 5x5 depthwise (groups
//! 16, pad 2), (c) 3x3 depthwise dilation 2 (pad 2), (d) 5x5 depthwise dilation 2 (pad 4),
//! (e) 1x1 pointwise 16 -> 16. For each: conv2d forward, `Conv2dInputGrad` and
//! `Conv2dWeightGrad`, each built directly as a primitive so its kernel is timed alone.
//!
//! Work measure: one multiply and one add per product term, the same for all three primitives
//! since each contracts the same index set, `FLOP = 2 * N * O * OH * OW * (C / groups) * kh * kw`
//! (a dilated tap counts as one term). It is given to criterion as `Throughput::Elements`, so
//! criterion's `elem/s` reads as FLOP/s; each bench also prints a plain `GFLOP/s` line at the
//! median of criterion's own samples.
//!
//! What one iteration is: one `Executor::run` of the graph whose inputs are device variables
//! (`Executor::set_var`, uploaded once before the case's measurement, as a search step keeps
//! its state), so an iteration records and submits the kernels and reads the requested output
//! back. To keep the readback of a 4 MiB result out of the measurement, the requested output is
//! the scalar `sum_all(conv result)`, so each iteration also runs one sum reduction over the
//! result (1 Mi elements for forward and input grad, 144 to 400 for the weight grad) and reads
//! back 4 bytes. `gpu_executor_floor/sum_readback` times exactly that overhead without a conv
//! (sum one 4 MiB variable, read back the scalar), to be set against the conv times. (Before
//! 2026-11-28 every iteration also uploaded its inputs, 4 to 8 MiB; on an H200 that upload,
//! not the kernels, set the ~3.7 ms floor of benches/results/h200-2026-11-28.md.)
//!
//! # Search step
//!
//! One whole DARTS search step as the GPU runs it (`darts search --backend gpu`): the resident
//! step of src/search/step_graph.rs (architecture step, first order or second order with the
//! paper's finite-difference mixed Hessian-vector product, eqs. (7)-(8) of Liu, Simonyan and
//! Yang, ICLR 2019; Adam on alpha; clipping and SGD on w; BN running statistics) with every
//! piece of state in device variables, uploaded once before the measurement. One iteration
//! feeds the train and validation batch and three scalars and reads back the training loss.
//! The configuration is read from the environment: `DARTS_BENCH_C` (default 4),
//! `DARTS_BENCH_LAYERS` (default 3), `DARTS_BENCH_BATCH` (default 4; the train and the
//! validation batch each), images 3x32x32, 10 classes. The defaults are the smallest search
//! network (3 cells: normal, reduction, reduction) so that a software adapter finishes; the
//! paper's search configuration is `DARTS_BENCH_C=16 DARTS_BENCH_LAYERS=8
//! DARTS_BENCH_BATCH=64`. One untimed step per order runs first so that pipeline compilation
//! is not timed. Each step function then uses flat sampling with criterion's minimum of 10
//! samples, so it runs at least 11 times (one warm-up), or, under `-- --quick`, once when a
//! run is longer than the 2 s measurement time.
//!
//! # Running it, and how long it takes
//!
//! `cargo bench --bench gpu` (on a machine whose only adapter is Mesa lavapipe, set
//! `XDG_RUNTIME_DIR`, e.g. `XDG_RUNTIME_DIR=/tmp/xdg`). Criterion's own options apply:
//! `-- --quick` (stop each bench at 5 % relative spread or at its measurement time, no
//! warm-up), or a name filter such as `-- gpu_dw3x3` or `-- search_step`.
//!
//! Wall time of the measurements (after the build). Each of the 16 conv benches takes its
//! 0.3 s warm-up plus 1 s of measurement while a run is short against that, and each of the
//! 2 step benches 0.5 s plus 2 s while a step is under 0.2 s, otherwise 11 steps. On a real
//! GPU (an estimate: not measured on one) that is about 30 s for the conv part and, for the
//! step part, 11 times the sum of a first-order and a second-order step: seconds at the
//! defaults, and about 1 to 2 minutes at the paper configuration if the two together stay
//! under about 8 s; `-- --quick` bounds each step bench to about its 2 s measurement time
//! plus one step. On a software adapter (Mesa lavapipe on this project's shared 2-core
//! machine) a full run takes about 10 minutes and `-- --quick` under 2; use `-- --quick` (or
//! a filter) there.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::gpu::GpuExecutor;
use darts::exec::{Executor, Feeds};
use darts::graph::{ConvParams, Graph, NodeId, Op};
use darts::search::architect::Order;
use darts::search::step_graph::{upload_state, OptimState, StepGraph, StepHyper};
use darts::search::stepper::step_feeds;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Conv benchmark shapes (those of benches/conv.rs): batch, channels, height, width.
const N: usize = 64;
const C: usize = 16;
const H: usize = 32;
const W: usize = 32;

/// Criterion samples per benchmark (its minimum).
const SAMPLES: usize = 10;

/// Search-step configuration: initial channels C, cells, and the batch size of both the train
/// and the validation batch.
struct StepConfig {
    c: usize,
    layers: usize,
    batch: usize,
}

/// `name` from the environment as a positive integer, or `default` when unset.
fn env_usize(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}")),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v:?}: expected a positive integer")),
        },
    }
}

/// The step configuration from `DARTS_BENCH_C`, `DARTS_BENCH_LAYERS` and `DARTS_BENCH_BATCH`,
/// checked by [`SearchConfig::validate`] for 32x32 images.
fn step_config() -> Result<(StepConfig, SearchConfig), String> {
    let s = StepConfig {
        c: env_usize("DARTS_BENCH_C", 4)?,
        layers: env_usize("DARTS_BENCH_LAYERS", 3)?,
        batch: env_usize("DARTS_BENCH_BATCH", 4)?,
    };
    let cfg = SearchConfig {
        c: s.c,
        layers: s.layers,
        ..SearchConfig::paper()
    };
    cfg.validate(32, 32)
        .map_err(|e| format!("DARTS_BENCH_C={} DARTS_BENCH_LAYERS={}: {e}", s.c, s.layers))?;
    Ok((s, cfg))
}

/// Runs `f` as `group/name` under criterion, timing each sample with `iter_custom`, and
/// returns the median seconds per iteration over the last [`SAMPLES`] samples (criterion's
/// measurement samples; the earlier calls are its warm-up; under `--quick` the last two), or
/// None when criterion ran no sample (the bench was filtered out).
fn bench_median(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut f: impl FnMut(),
) -> Option<f64> {
    let mut per_iter: Vec<f64> = Vec::new();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let e = t.elapsed();
            per_iter.push(e.as_secs_f64() / iters.max(1) as f64);
            e
        })
    });
    let mut last: Vec<f64> = per_iter[per_iter.len().saturating_sub(SAMPLES)..].to_vec();
    last.sort_by(f64::total_cmp);
    let m = last.len() / 2;
    match last.len() {
        0 => None,
        n if n % 2 == 1 => Some(last[m]),
        _ => Some(0.5 * (last[m - 1] + last[m])),
    }
}

fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f32> {
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0f32..1.0))
}

/// `FLOP = 2 * N * O * OH * OW * (C / groups) * kh * kw` for a conv with weight
/// `[O, C/groups, kh, kw]` and output `[N, O, OH, OW]`.
fn conv_flops(y: &[usize], w: &[usize]) -> u64 {
    2 * (y[0] * y[1] * y[2] * y[3] * w[1] * w[2] * w[3]) as u64
}

/// A graph ready to run: built, fed, and with its one scalar output chosen.
struct Case {
    name: &'static str,
    graph: Graph,
    feeds: Feeds<f32>,
    output: NodeId,
    throughput: Throughput,
}

/// Builds a graph with `inputs` (name, shape, fed with uniform(-1, 1) values), applies `body`
/// to their node ids, and requests `sum_all` of its result.
fn case(
    name: &'static str,
    inputs: &[(&str, &[usize])],
    body: impl FnOnce(&mut Graph, &[NodeId]) -> NodeId,
    rng: &mut ChaCha8Rng,
) -> (Case, Vec<usize>) {
    let mut g = Graph::new();
    let mut feeds = Feeds::new();
    let ids: Vec<NodeId> = inputs
        .iter()
        .map(|&(n, s)| {
            feeds.insert(n, random(s, rng));
            g.input(n, s.to_vec()).expect("bench input")
        })
        .collect();
    let y = body(&mut g, &ids);
    let ys = g.shape(y).dims().to_vec();
    let output = g.sum_all(y).expect("sum_all");
    let c = Case {
        name,
        graph: g,
        feeds,
        output,
        throughput: Throughput::Elements(0),
    };
    (c, ys)
}

/// Forward, input-grad and weight-grad cases for one conv configuration (`o` output channels,
/// `k` x `k` kernel).
fn conv_cases(o: usize, k: usize, p: ConvParams, rng: &mut ChaCha8Rng) -> Vec<Case> {
    let xs = [N, C, H, W];
    let ws = [o, C / p.groups, k, k];
    let (mut fwd, ys) = case(
        "forward",
        &[("x", &xs), ("w", &ws)],
        |g, i| g.conv2d(i[0], i[1], p).expect("conv shape"),
        rng,
    );
    let flop = conv_flops(&ys, &ws);
    fwd.throughput = Throughput::Elements(flop);
    let (mut input_grad, _) = case(
        "input_grad",
        &[("gy", &ys), ("w", &ws)],
        |g, i| {
            g.add(Op::Conv2dInputGrad { p, in_hw: [H, W] }, &[i[0], i[1]])
                .expect("input grad shape")
        },
        rng,
    );
    input_grad.throughput = Throughput::Elements(flop);
    let (mut weight_grad, _) = case(
        "weight_grad",
        &[("x", &xs), ("gy", &ys)],
        |g, i| {
            g.add(Op::Conv2dWeightGrad { p, kernel: [k, k] }, &[i[0], i[1]])
                .expect("weight grad shape")
        },
        rng,
    );
    weight_grad.throughput = Throughput::Elements(flop);
    vec![fwd, input_grad, weight_grad]
}

/// The run overhead the conv cases carry: `sum_all` one 64x16x32x32 variable, read back the
/// scalar. Throughput: the bytes the sum reads.
fn floor_case(rng: &mut ChaCha8Rng) -> Case {
    let xs = [N, C, H, W];
    let (mut c, _) = case("sum_readback", &[("x", &xs)], |_, i| i[0], rng);
    c.throughput = Throughput::Bytes((N * C * H * W * std::mem::size_of::<f32>()) as u64);
    c
}

fn conv_benches(c: &mut Criterion, ex: &mut GpuExecutor) {
    let mut rng = ChaCha8Rng::seed_from_u64(20190101);
    let groups = vec![
        (
            "gpu_dw3x3",
            conv_cases(C, 3, ConvParams::new(1, 1, 1, C), &mut rng),
        ),
        (
            "gpu_dw5x5",
            conv_cases(C, 5, ConvParams::new(1, 2, 1, C), &mut rng),
        ),
        (
            "gpu_dil3x3",
            conv_cases(C, 3, ConvParams::new(1, 2, 2, C), &mut rng),
        ),
        (
            "gpu_dil5x5",
            conv_cases(C, 5, ConvParams::new(1, 4, 2, C), &mut rng),
        ),
        (
            "gpu_pw1x1",
            conv_cases(C, 1, ConvParams::new(1, 0, 1, 1), &mut rng),
        ),
        ("gpu_executor_floor", vec![floor_case(&mut rng)]),
    ];
    for (group_name, cases) in groups {
        let mut group = c.benchmark_group(group_name);
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for case in &cases {
            group.throughput(case.throughput.clone());
            let outputs = [case.output];
            // The inputs become device variables: nothing is uploaded per iteration.
            ex.clear_vars();
            for node in case.graph.nodes() {
                if let Op::Input { name, .. } = &node.op {
                    let value = case.feeds.get(name).expect("bench feed");
                    ex.set_var(name, value).expect("upload a bench input");
                }
            }
            let no_feeds = Feeds::new();
            let median = bench_median(&mut group, case.name, || {
                black_box(
                    ex.run(&case.graph, &no_feeds, &outputs)
                        .expect("bench graph runs on the GPU"),
                );
            });
            if let Some(t) = median {
                let rate = match case.throughput {
                    Throughput::Elements(flop) => format!("{:.2} GFLOP/s", flop as f64 / t / 1e9),
                    Throughput::Bytes(b) => format!("{:.2} GB/s summed", b as f64 / t / 1e9),
                    _ => String::new(),
                };
                println!(
                    "{group_name}/{}: median {:.3} ms/run = {rate}",
                    case.name,
                    t * 1e3
                );
            }
        }
        group.finish();
    }
}

/// `n` standard-normal 3x32x32 images with uniformly drawn one-hot labels over 10 classes.
fn batch(n: usize, rng: &mut ChaCha8Rng) -> Batch {
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, 32, 32]), || rng.sample(StandardNormal));
    let mut onehot = ArrayD::zeros(IxDyn(&[n, 10]));
    for r in 0..n {
        onehot[[r, rng.random_range(0..10)]] = 1.0;
    }
    Batch { x, onehot }
}

/// One resident search step (src/search/step_graph.rs) at the reference's hyperparameters:
/// weights, alphas, BN buffers and optimiser state are device variables, uploaded once; an
/// iteration feeds the two batches and three scalars and reads back the training loss.
struct Step {
    graph: StepGraph,
    feeds: Feeds<f32>,
}

impl Step {
    /// Initial state (seed 0) uploaded as variables, a random train and validation batch.
    fn new(ex: &mut GpuExecutor, cfg: &SearchConfig, n: usize, order: Order) -> Step {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let layout = cfg.layout().expect("layout");
        let st = init_state(&layout, cfg.k(), &mut rng);
        let hyper = StepHyper::reference();
        let shape = [n, 3, 32, 32];
        let graph = StepGraph::build(cfg, &shape, &shape, order, &hyper).expect("step graph");
        upload_state(ex, &layout, &st, &OptimState::default()).expect("upload the state");
        let (train, valid) = (batch(n, &mut rng), batch(n, &mut rng));
        let feeds = step_feeds(&train, &valid, 0.025, &hyper, [0, 0]);
        Step { graph, feeds }
    }

    fn run(&self, ex: &mut GpuExecutor) {
        let g = &self.graph;
        black_box(
            ex.run_assign(&g.graph, &self.feeds, &[g.loss_train], &g.assign)
                .expect("resident step runs on the GPU"),
        );
    }
}

fn step_benches(c: &mut Criterion, ex: &mut GpuExecutor, s: &StepConfig, cfg: &SearchConfig) {
    let mut group = c.benchmark_group(format!(
        "gpu_search_step_c{}_l{}_b{}",
        s.c, s.layers, s.batch
    ));
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut medians = Vec::new();
    for (name, order) in [
        ("resident_first_order", Order::First),
        ("resident_second_order_fd", Order::Second),
    ] {
        let step = Step::new(ex, cfg, s.batch, order);
        // Compiles the pipelines (criterion's --quick mode has no warm-up).
        step.run(ex);
        medians.push(bench_median(&mut group, name, || step.run(ex)));
    }
    group.finish();
    if let [Some(first), Some(second)] = medians[..] {
        println!(
            "search step (C={}, layers={}, batch {}, GPU f32, resident: architecture step + \
             weight step), medians: first order {:.3} s, second order (FD) {:.3} s, ratio {:.2}",
            s.c,
            s.layers,
            s.batch,
            first,
            second,
            second / first
        );
    }
}

fn main() {
    let (s, cfg) = match step_config() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("gpu bench: {e}");
            std::process::exit(2);
        }
    };
    let mut ex = match GpuExecutor::new() {
        Ok(ex) => ex,
        Err(e) => {
            if std::env::var("DARTS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("gpu bench: DARTS_REQUIRE_GPU=1 but no GPU adapter: {e}");
            }
            println!("SKIP: no GPU adapter ({e})");
            return;
        }
    };
    println!("gpu bench: adapter {}", ex.adapter_info());
    println!(
        "gpu bench: conv shapes batch {N}, {C} channels, {H}x{W}; search step C={}, layers={}, \
         batch {} (DARTS_BENCH_C, DARTS_BENCH_LAYERS, DARTS_BENCH_BATCH), 3x32x32 images, f32",
        s.c, s.layers, s.batch
    );
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .configure_from_args();
    conv_benches(&mut c, &mut ex);
    step_benches(&mut c, &mut ex, &s, &cfg);
    c.final_summary();
}
