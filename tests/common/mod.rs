//! Shared fixtures for the DARTS tests: tiny search networks with seeded states and batches.
#![allow(dead_code)]

use darts::check::oracle::architect::{Batch, Point};
use darts::darts::init::init_state;
use darts::darts::network::SearchConfig;
use darts::darts::params::State;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// C = 4, 3 layers (reductions at cells 1 and 2), 4 steps: the reference's smallest
/// supported shape.
pub fn tiny(smooth: bool) -> SearchConfig {
    SearchConfig {
        c: 4,
        layers: 3,
        smooth,
        ..SearchConfig::paper()
    }
}

pub fn state(cfg: &SearchConfig, seed: u64) -> State {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut st = init_state(&cfg.layout().unwrap(), cfg.k(), &mut rng);
    // Alphas away from uniform so the architecture gradient is not degenerate.
    st.alpha_normal
        .mapv_inplace(|_| 0.5 * rng.sample::<f64, _>(StandardNormal));
    st.alpha_reduce
        .mapv_inplace(|_| 0.5 * rng.sample::<f64, _>(StandardNormal));
    st
}

pub fn point(cfg: &SearchConfig, st: &State) -> Point {
    let weights = darts::check::oracle::architect::weight_list(cfg)
        .unwrap()
        .into_iter()
        .map(|(n, _)| {
            let a = st.tensors[&n].clone();
            (n, a)
        })
        .collect();
    Point {
        weights,
        alpha: [st.alpha_normal.clone(), st.alpha_reduce.clone()],
    }
}

pub fn batch(n: usize, hw: usize, classes: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, hw, hw]), || {
        rng.sample::<f64, _>(StandardNormal)
    });
    let mut onehot = ArrayD::zeros(IxDyn(&[n, classes]));
    for r in 0..n {
        onehot[[r, rng.random_range(0..classes)]] = 1.0;
    }
    Batch { x, onehot }
}

pub fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let d = (a - b).iter().map(|v| v * v).sum::<f64>().sqrt();
    let n = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    d / n.max(1e-300)
}

/// The GPU executor for test `test`, or None (with a `SKIP` line) when this machine has no
/// GPU adapter. Under `DARTS_REQUIRE_GPU=1` a missing adapter fails the test instead.
pub fn gpu_executor(test: &str) -> Option<darts::exec::gpu::GpuExecutor> {
    match darts::exec::gpu::GpuExecutor::new() {
        Ok(e) => {
            eprintln!("{test}: running on {}", e.adapter_info());
            Some(e)
        }
        Err(err) => {
            if std::env::var("DARTS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: DARTS_REQUIRE_GPU=1 but no GPU adapter: {err}");
            }
            println!("SKIP {test}: no GPU adapter ({err})");
            None
        }
    }
}

/// What [`gpu_f64_executor`] decided for one test: the executor, or a `SKIP` line.
pub enum F64Outcome {
    Run(Box<darts::exec::gpu::GpuExecutor<f64>>),
    Skip(String),
}

/// Whether this machine is expected to run the f64 GPU kernels: `DARTS_EXPECT_GPU_F64=1`.
pub fn expect_gpu_f64() -> bool {
    std::env::var("DARTS_EXPECT_GPU_F64").is_ok_and(|v| v == "1")
}

/// The policy of [`gpu_f64_executor`], returning instead of printing and panicking: `Ok` with
/// the executor or the `SKIP` line, `Err` with the failure message.
///
/// f64 on the GPU is optional, so these are skips, not failures:
/// * no adapter offers `SHADER_F64` ([`ExecError::MissingGpuFeature`](darts::exec::ExecError));
/// * an adapter offers it but fails the f64 self-check
///   ([`ExecError::F64SelfCheck`](darts::exec::ExecError), e.g. Mesa 22.3.6 lavapipe on an
///   AMD EPYC, whose `f64(i32(a))` is wrong at a = 2147483646.5): the check did its job.
///
/// They are failures where f64 is expected to work, i.e. under `DARTS_EXPECT_GPU_F64=1`. The
/// other errors (no adapter at all, a device that cannot be created) are skips, except under
/// `DARTS_REQUIRE_GPU=1` where they fail, as for the f32 executor.
pub fn gpu_f64_policy(test: &str) -> Result<F64Outcome, String> {
    use darts::exec::gpu::GpuExecutor;
    use darts::exec::ExecError;
    let require = std::env::var("DARTS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let expect = expect_gpu_f64();
    match GpuExecutor::new_f64() {
        Ok(e) => {
            eprintln!("{test}: running in f64 on {}", e.adapter_info());
            Ok(F64Outcome::Run(Box::new(e)))
        }
        Err(e @ ExecError::MissingGpuFeature { .. }) if expect => {
            Err(format!("{test}: DARTS_EXPECT_GPU_F64=1 but {e}"))
        }
        Err(e @ ExecError::MissingGpuFeature { .. }) => {
            Ok(F64Outcome::Skip(format!("SKIP {test}: {e}")))
        }
        Err(e @ ExecError::F64SelfCheck { .. }) if expect => {
            Err(format!("{test}: DARTS_EXPECT_GPU_F64=1 but {e}"))
        }
        Err(ExecError::F64SelfCheck {
            adapter, failure, ..
        }) => Ok(F64Outcome::Skip(format!(
            "SKIP {test}: f64 self-check refused adapter {adapter}: {failure}"
        ))),
        Err(e) => match GpuExecutor::new() {
            Err(no_gpu) if !require && !expect => Ok(F64Outcome::Skip(format!(
                "SKIP {test}: no GPU adapter ({no_gpu})"
            ))),
            Err(no_gpu) => Err(format!(
                "{test}: DARTS_REQUIRE_GPU=1 or DARTS_EXPECT_GPU_F64=1 but no GPU adapter: \
                 {no_gpu}"
            )),
            Ok(f32_gpu) if require || expect => Err(format!(
                "{test}: adapter {} runs f32 but the f64 executor failed: {e}",
                f32_gpu.adapter_info()
            )),
            Ok(_) => Ok(F64Outcome::Skip(format!(
                "SKIP {test}: the f64 executor failed: {e}"
            ))),
        },
    }
}

/// The f64 GPU executor for `test`, or None with a `SKIP` line; panics where
/// [`gpu_f64_policy`] says the test fails. Every test that needs the f64 GPU executor gets it
/// here (not from `GpuExecutor::new_f64` directly), so the rule is applied once:
/// a missing `SHADER_F64` or a refused f64 self-check skips the test
/// (`SKIP <test>: f64 self-check refused adapter <info>: <probe>`), unless
/// `DARTS_EXPECT_GPU_F64=1` says this machine must run f64; no adapter at all fails under
/// `DARTS_REQUIRE_GPU=1`.
pub fn gpu_f64_executor(test: &str) -> Option<darts::exec::gpu::GpuExecutor<f64>> {
    match gpu_f64_policy(test) {
        Ok(F64Outcome::Run(e)) => Some(*e),
        Ok(F64Outcome::Skip(line)) => {
            println!("{line}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// A graph, its outputs, and its inputs' names and shapes.
pub type Branches = (
    darts::graph::Graph,
    Vec<darts::graph::NodeId>,
    Vec<(String, Vec<usize>)>,
);

/// `n` independent branches of the same structure over inputs `x{k}` of shapes
/// `[2 + k % 3, 6, 40]` and a shared `a` of shape `[40]`: per branch a map
/// `relu(x * a + 0.5) * 2`, a sum of `relu(x * a + 0.5) * x` over axes 0 and 2, a max over
/// axis 1 and a mean (a sum with an epilogue). The branches' kernels share texts and levels, so
/// the GPU executor batches them (src/exec/gpu/batch.rs). Returns the graph, the outputs and
/// the inputs' names and shapes.
pub fn parallel_branches(n: usize) -> Branches {
    use darts::graph::{Graph, UnaryOp};
    let mut g = Graph::new();
    let a = g.input("a", [40]).unwrap();
    let mut inputs = vec![("a".to_string(), vec![40])];
    let mut outs = Vec::new();
    for k in 0..n {
        let shape = vec![2 + k % 3, 6, 40];
        let name = format!("x{k}");
        let x = g.input(&name, shape.clone()).unwrap();
        inputs.push((name, shape.clone()));
        let xa = g.mul(x, a).unwrap();
        let half = g.constant(0.5, shape.clone()).unwrap();
        let s = g.add2(xa, half).unwrap();
        let y = g.unary(UnaryOp::Relu, s).unwrap();
        let z = g.scale(y, 2.0).unwrap();
        let yx = g.mul(y, x).unwrap();
        let sum = g.reduce_sum(yx, &[0, 2]).unwrap();
        let max = g.reduce_max(y, &[1]).unwrap();
        let total = g.reduce_sum(x, &[0, 1, 2]).unwrap();
        let mean = g
            .scale(total, 1.0 / shape.iter().product::<usize>() as f64)
            .unwrap();
        outs.extend([z, sum, max, mean]);
    }
    (g, outs, inputs)
}
