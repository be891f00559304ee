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

/// The f64 GPU executor for `test`, or None with a `SKIP` line: when no adapter offers
/// SHADER_F64 (always a skip: f64 is optional), or when there is no adapter at all, or the f64
/// executor fails otherwise (both failures under DARTS_REQUIRE_GPU=1).
pub fn gpu_f64_executor(test: &str) -> Option<darts::exec::gpu::GpuExecutor<f64>> {
    use darts::exec::gpu::GpuExecutor;
    use darts::exec::ExecError;
    let require = std::env::var("DARTS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    match GpuExecutor::new_f64() {
        Ok(e) => {
            eprintln!("{test}: running in f64 on {}", e.adapter_info());
            Some(e)
        }
        Err(e @ ExecError::MissingGpuFeature { .. }) => {
            println!("SKIP {test}: {e}");
            None
        }
        Err(e) => match GpuExecutor::new() {
            Err(no_gpu) if !require => {
                println!("SKIP {test}: no GPU adapter ({no_gpu})");
                None
            }
            Err(no_gpu) => panic!("{test}: DARTS_REQUIRE_GPU=1 but no GPU adapter: {no_gpu}"),
            Ok(f32_gpu) if require => panic!(
                "{test}: adapter {} runs f32 but the f64 executor failed: {e}",
                f32_gpu.adapter_info()
            ),
            Ok(_) => {
                println!("SKIP {test}: the f64 executor failed: {e}");
                None
            }
        },
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
