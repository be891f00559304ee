//! The GPU executor (f32, WGSL) against the CPU reference executor (f64), on random shapes.
//!
//! Inputs are drawn as f32 values and fed to both sides unchanged, so the f32 rounding of the
//! inputs is zero and every difference comes from the arithmetic. Each tolerance is a bound
//! derived below, never a tuned constant:
//! * elementwise: the WGSL spec's f32 accuracy for the builtins each kernel uses (WGSL
//!   §15.7.4.1, "Floating point accuracy": `+ - *` correctly rounded, `x / y` 2.5 ULP for
//!   |y| in [2^-126, 2^126], `exp` 3 + 2|x| ULP, `log` 2^-21 absolute inside [0.5, 2] and 3 ULP
//!   outside, `inverseSqrt` 2 ULP, `sqrt` inherited from 1 / inverseSqrt(x)), propagated through
//!   the kernel's formula to first order, plus 2^-126 for the subnormal flush WGSL allows;
//! * sums of K terms (reduce, matmul): gamma_K(u) * sum |terms| with gamma_K = K u / (1 - K u)
//!   (Higham, ch. 3), for u = 2^-24 (GPU) and u = 2^-53 (CPU) added together.
//!
//! One ULP of a normal f32 value v is at most 2^-23 |v| = 2 U32 |v|, which turns the spec's
//! ULP bounds into relative ones.
//!
//! Cases are drawn by proptest from a fixed seed (`TestRng::deterministic_rng`); about half the
//! cases cap the workgroups per dispatch dimension at 16, so the 2-D dispatch that tensors
//! beyond 65535 workgroups need is exercised on small shapes.

mod common;

use darts::exec::cpu::CpuExecutor;
use darts::exec::gpu::{GpuExecutor, GpuScalar};
use darts::exec::{ExecError, Executor, Feeds, Scalar};
use darts::graph::{BinaryOp, ConvParams, Graph, NodeId, Op, PoolParams, UnaryOp};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::distr::uniform::SampleUniform;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

/// Unit roundoff of f32, 2^-24.
const U32: f64 = 5.960464477539063e-8;
/// Unit roundoff of f64, 2^-53.
const U64: f64 = 1.1102230246251565e-16;
/// Smallest normal f32, 2^-126: WGSL lets an implementation flush subnormal results to zero.
const FLUSH: f64 = 1.1754943508222875e-38;

/// Workgroups per dispatch dimension in the 2-D dispatch cases.
const TEST_DISPATCH_CAP: u32 = 16;

const UNARY_OPS: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Softplus,
    UnaryOp::Step,
];

const BINARY_OPS: [BinaryOp; 7] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Max,
    BinaryOp::Greater,
    BinaryOp::Equal,
];

/// gamma_K(u) = K u / (1 - K u): the relative bound on a sum of K rounded terms (Higham,
/// Lemma 3.1).
fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    assert!(ku < 1.0, "gamma_{k} undefined for u = {u}");
    ku / (1.0 - ku)
}

/// Error bound of a sum of K terms computed on both sides: (gamma_K(2^-24) + gamma_K(2^-53))
/// times sum |terms|.
fn sum_tol(k: usize, abs_sum: f64) -> f64 {
    (gamma(k, U32) + gamma(k, U64)) * abs_sum
}

/// Bound on |exp_gpu(a) - e^a| / e^a: WGSL allows 3 + 2|a| ULP, one ULP <= 2 U32 |v|.
fn exp_rel(a: f64) -> f64 {
    (3.0 + 2.0 * a.abs()) * 2.0 * U32
}

/// Bound on |f_gpu(x) - f(x)| for the unary kernels of shaders/elementwise.wgsl, first order in
/// the per-operation errors, given the f32 input `x` and the exact (f64) value `y = f(x)`:
/// * neg, relu, step: exact (0).
/// * square = x * x: correctly rounded, U32 |y|.
/// * exp: (3 + 2|x|) ULP.
/// * log: 2^-21 absolute for x in [0.5, 2], else 3 ULP = 6 U32 |y|.
/// * rsqrt = inverseSqrt: 2 ULP = 4 U32 |y|.
/// * sqrt, inherited from 1 / inverseSqrt(x): 2 ULP then 2.5 ULP, 9 U32 |y|.
/// * recip = 1 / x: 2.5 ULP = 5 U32 |y|.
/// * tanh = (1 - e) / (1 + e), e = exp(-2|x|) (the 2|x| is exact): d tanh / de = -2 / (1 + e)^2,
///   so the exp error gives 2 e / (1 + e)^2 * exp_rel(2|x|); the subtraction, the addition and
///   the division (2.5 ULP) add (1 + 1 + 5) U32 |y|.
/// * sigmoid, 1 / (1 + e) with e = exp(-x) for x >= 0, e / (1 + e) with e = exp(x) for x < 0:
///   the relative sensitivity to e is e / (1 + e) and 1 / (1 + e) respectively, times
///   exp_rel(|x|); the addition and the division add 6 U32 |y|.
/// * softplus = max(x, 0) + L, L = log1p(t), t = exp(-|x|): dL/dt = 1 / (1 + t) gives
///   exp_rel(|x|) t / (1 + t); for t < 1/32 the series t (1 + t (-1/2 + t (1/3 + t (-1/4 + t/5))))
///   has 9 rounded operations on a well-conditioned sum (inner value in [0.98, 1]) and
///   truncation error t^6 / 6 < U32 t / 10, so 12 U32 L; for t >= 1/32, log(1 + t): the rounding
///   of 1 + t moves the log by U32 and log itself by 2^-21 (its argument is in [1, 2]). Near the
///   1/32 switch the GPU's rounded t may take either branch, so both bounds are allowed there.
///   The final addition adds U32 |y|.
///
/// Every bound adds FLUSH for a subnormal result flushed to zero and 8 U64 |y| for the f64
/// reference (a few correctly rounded or sub-ULP libm operations).
fn unary_tol(op: UnaryOp, x: f64, y: f64) -> f64 {
    let gpu = match op {
        UnaryOp::Neg | UnaryOp::Relu | UnaryOp::Step => return 0.0,
        UnaryOp::Square => U32 * y.abs(),
        UnaryOp::Exp => exp_rel(x) * y.abs(),
        UnaryOp::Log => {
            if (0.5..=2.0).contains(&x) {
                2f64.powi(-21)
            } else {
                6.0 * U32 * y.abs()
            }
        }
        UnaryOp::Rsqrt => 4.0 * U32 * y.abs(),
        UnaryOp::Sqrt => 9.0 * U32 * y.abs(),
        UnaryOp::Recip => 5.0 * U32 * y.abs(),
        UnaryOp::Tanh => {
            let e = (-2.0 * x.abs()).exp();
            2.0 * e / (1.0 + e).powi(2) * exp_rel(2.0 * x) + 7.0 * U32 * y.abs()
        }
        UnaryOp::Sigmoid => {
            let e = (-x.abs()).exp();
            let sensitivity = if x >= 0.0 {
                e / (1.0 + e)
            } else {
                1.0 / (1.0 + e)
            };
            (sensitivity * exp_rel(x) + 6.0 * U32) * y.abs()
        }
        UnaryOp::Softplus => {
            let t = (-x.abs()).exp();
            let l = t.ln_1p();
            let series = 12.0 * U32 * l;
            let log = 2f64.powi(-21) + U32;
            let switch = 1.0 / 32.0;
            let near_switch = (t - switch).abs() <= 2.0 * exp_rel(x) * t;
            let log1p = if near_switch {
                series.max(log)
            } else if t < switch {
                series
            } else {
                log
            };
            exp_rel(x) * t / (1.0 + t) + log1p + U32 * y.abs()
        }
    };
    gpu + FLUSH + 8.0 * U64 * y.abs()
}

/// Bound on |g_gpu(a, b) - g(a, b)| for the binary kernels, given the exact value y:
/// add, sub, mul correctly rounded (U32 |y|); div 2.5 ULP (5 U32 |y|) for |b| in
/// [2^-126, 2^126], which the inputs respect; max, greater, equal exact (0). Arithmetic adds
/// FLUSH and the f64 reference's rounding 2 U64 |y|.
fn binary_tol(op: BinaryOp, y: f64) -> f64 {
    let gpu = match op {
        BinaryOp::Max | BinaryOp::Greater | BinaryOp::Equal => return 0.0,
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul => U32 * y.abs(),
        BinaryOp::Div => 5.0 * U32 * y.abs(),
    };
    gpu + FLUSH + 2.0 * U64 * y.abs()
}

/// Compares element by element: NaN must meet NaN; otherwise |gpu - cpu| <= tol(i).
fn compare<G: Scalar>(
    what: &str,
    gpu: &ArrayD<G>,
    cpu: &ArrayD<f64>,
    input: impl Fn(usize) -> String,
    tol: impl Fn(usize) -> f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(gpu.shape(), cpu.shape(), "{}: shapes differ", what);
    for (i, (&g, &c)) in gpu.iter().zip(cpu.iter()).enumerate() {
        let g = g.as_f64();
        let t = tol(i);
        let ok = if c.is_nan() {
            g.is_nan()
        } else {
            g == c || (!g.is_nan() && (g - c).abs() <= t)
        };
        prop_assert!(
            ok,
            "{} at element {} ({}): gpu {:e}, cpu {:e}, |diff| {:e} > tol {:e}",
            what,
            i,
            input(i),
            g,
            c,
            (g - c).abs(),
            t
        );
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// A shape of rank 0..=max_rank with extents 1..=max_extent.
fn shape_strategy(max_rank: usize, max_extent: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max_extent, 0..=max_rank)
}

fn array<T>(shape: &[usize], data: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("data matches shape")
}

/// A value of mixed scale: uniform in [-range, range], uniform in [-1, 1], or log-uniform in
/// magnitude over [1e-6, 1] with a random sign, and exactly 0 or -0 now and then.
fn mixed<T: Scalar + SampleUniform>(rng: &mut ChaCha8Rng, range: T) -> T {
    let one = T::one();
    match rng.random_range(0..20) {
        0 => T::zero(),
        1 => -T::zero(),
        2..=10 => rng.random_range(-range..=range),
        11..=15 => rng.random_range(-one..=one),
        _ => {
            let m = T::of(10.0).powf(rng.random_range(T::of(-6.0)..=T::zero()));
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        }
    }
}

/// log-uniform in [lo, hi].
fn log_uniform<T: Scalar + SampleUniform>(rng: &mut ChaCha8Rng, lo: T, hi: T) -> T {
    T::of(10.0).powf(rng.random_range(lo.log10()..=hi.log10()))
}

/// A value in the domain of `op` where WGSL defines its builtins: positive for log, sqrt and
/// rsqrt (half of the log values inside [0.5, 2], where the absolute bound applies), nonzero
/// for recip, |x| <= 30 elsewhere (exp stays normal).
fn unary_input(op: UnaryOp, rng: &mut ChaCha8Rng) -> f32 {
    match op {
        UnaryOp::Log => {
            if rng.random_bool(0.5) {
                rng.random_range(0.5f32..=2.0)
            } else {
                log_uniform(rng, 1e-6, 1e6)
            }
        }
        UnaryOp::Sqrt | UnaryOp::Rsqrt => log_uniform(rng, 1e-6, 1e6),
        UnaryOp::Recip => {
            let m = log_uniform(rng, 1e-6, 1e6);
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        }
        UnaryOp::Neg
        | UnaryOp::Exp
        | UnaryOp::Square
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Relu
        | UnaryOp::Softplus
        | UnaryOp::Step => mixed(rng, 30.0),
    }
}

/// Kink, tie and NaN values for `op`, inside its WGSL domain: relu(0) = relu(-0) = 0,
/// step(0) = step(NaN) = 0, NaN propagates through everything else; softplus at the series
/// switch t = 1/32 (x = ln 32).
fn special_inputs(op: UnaryOp) -> Vec<f32> {
    let mut v = vec![f32::NAN, 1.0, 0.5, 2.0, 1e-3, 1e-7];
    match op {
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => {}
        UnaryOp::Recip => v.extend([-1.0, -2.0, -1e-3]),
        _ => v.extend([
            0.0,
            -0.0,
            -1.0,
            -1e-3,
            32f32.ln(),
            -(32f32.ln()),
            30.0,
            -30.0,
        ]),
    }
    v
}

/// The GPU (f32 or f64) and CPU (f64) values of the same outputs.
type GpuAndCpu<T = f32> = (Vec<ArrayD<T>>, Vec<ArrayD<f64>>);

fn run_both<T: GpuScalar>(
    gpu: &mut GpuExecutor<T>,
    g: &Graph,
    feeds: &Feeds<T>,
    outs: &[NodeId],
) -> Result<GpuAndCpu<T>, TestCaseError> {
    let got = gpu
        .run(g, feeds, outs)
        .map_err(|e| TestCaseError::fail(format!("gpu run failed: {e}")))?;
    let want = CpuExecutor::<f64>::new()
        .run(g, &feeds.cast::<f64>(), outs)
        .map_err(|e| TestCaseError::fail(format!("cpu run failed: {e}")))?;
    Ok((got, want))
}

/// Sets the dispatch cap for a case: 16 workgroups per dimension, so any kernel launch of more
/// than 16 workgroups goes 2-D (with a ragged last row when 16 does not divide the count; up
/// to 256 workgroups, more than any case here needs), or the device limit.
fn set_dispatch<T: GpuScalar>(gpu: &mut GpuExecutor<T>, two_d: bool) {
    gpu.set_max_workgroups_per_dim(if two_d { TEST_DISPATCH_CAP } else { u32::MAX });
}

#[test]
fn gpu_unary_matches_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_unary_matches_cpu") else {
        return;
    };
    // Kinks, ties and NaN first, then random shapes.
    check_specials(&mut gpu).unwrap_or_else(|e| panic!("{e}"));
    let gpu = RefCell::new(gpu);
    runner(24)
        .run(
            &(shape_strategy(3, 24), any::<u64>(), any::<bool>()),
            |(shape, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let n: usize = shape.iter().product();
                let mut g = Graph::new();
                let mut feeds = Feeds::<f32>::new();
                let mut outs = Vec::new();
                let mut inputs = Vec::new();
                for op in UNARY_OPS {
                    let name = format!("{op:?}");
                    let x = g.input(name.clone(), shape.clone()).expect("input");
                    let vals: Vec<f32> = (0..n).map(|_| unary_input(op, &mut rng)).collect();
                    feeds.insert(name, array(&shape, vals.clone()));
                    outs.push(g.unary(op, x).expect("unary"));
                    inputs.push(vals);
                }
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                for (k, op) in UNARY_OPS.iter().enumerate() {
                    let (xs, w) = (&inputs[k], &want[k]);
                    let w_flat: Vec<f64> = w.iter().copied().collect();
                    compare(
                        &format!("{op:?} on {shape:?}"),
                        &got[k],
                        w,
                        |i| format!("x = {:e}", xs[i]),
                        |i| unary_tol(*op, xs[i] as f64, w_flat[i]),
                    )?;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every unary op on its kink, tie and NaN values (`special_inputs`).
fn check_specials(gpu: &mut GpuExecutor) -> Result<(), TestCaseError> {
    let mut g = Graph::new();
    let mut feeds = Feeds::<f32>::new();
    let mut outs = Vec::new();
    let mut inputs = Vec::new();
    for op in UNARY_OPS {
        let vals = special_inputs(op);
        let name = format!("{op:?}");
        let x = g.input(name.clone(), [vals.len()]).expect("input");
        feeds.insert(name, array(&[vals.len()], vals.clone()));
        outs.push(g.unary(op, x).expect("unary"));
        inputs.push(vals);
    }
    let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
    for (k, op) in UNARY_OPS.iter().enumerate() {
        let xs = &inputs[k];
        let w = &want[k];
        compare(
            &format!("{op:?} on special values"),
            &got[k],
            w,
            |i| format!("x = {:e}", xs[i]),
            |i| unary_tol(*op, xs[i] as f64, w[[i]]),
        )?;
    }
    Ok(())
}

/// The shape of one operand broadcast to `out`: a random number of leading axes dropped and
/// each remaining axis set to 1 with probability 0.3.
fn operand_shape(out: &[usize], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let drop = rng.random_range(0..=out.len());
    out[drop..]
        .iter()
        .map(|&d| if rng.random_bool(0.3) { 1 } else { d })
        .collect()
}

/// A binary-op operand: with probability 0.3 one of {-1, -0, 0, 1, 2} so ties and equal
/// pairs are common, NaN with probability 0.02, otherwise `mixed` in [-10, 10]. With
/// `nonzero`, magnitudes stay in [1e-6, 10] (a divisor WGSL's 2.5 ULP bound covers).
fn binary_input(rng: &mut ChaCha8Rng, nonzero: bool) -> f32 {
    if rng.random_bool(0.02) {
        return f32::NAN;
    }
    if nonzero {
        let m = log_uniform(rng, 1e-6, 10.0);
        return if rng.random_bool(0.5) { m } else { -m };
    }
    if rng.random_bool(0.3) {
        return [-1.0, -0.0, 0.0, 1.0, 2.0][rng.random_range(0..5)];
    }
    mixed(rng, 10.0)
}

#[test]
fn gpu_binary_broadcast_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_binary_broadcast_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(32)
        .run(
            &(shape_strategy(4, 9), any::<u64>(), any::<bool>()),
            |(out_shape, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let sa = operand_shape(&out_shape, &mut rng);
                let sb = operand_shape(&out_shape, &mut rng);
                // At least one operand keeps the full shape, so the output is `out_shape`.
                let (sa, sb) = if rng.random_bool(0.5) {
                    (out_shape.clone(), sb)
                } else {
                    (sa, out_shape.clone())
                };
                let draw = |s: &[usize], nz: bool, rng: &mut ChaCha8Rng| {
                    let n: usize = s.iter().product();
                    array(s, (0..n).map(|_| binary_input(rng, nz)).collect())
                };
                let (va, vb, vd) = (
                    draw(&sa, false, &mut rng),
                    draw(&sb, false, &mut rng),
                    draw(&sb, true, &mut rng),
                );
                let mut g = Graph::new();
                let a = g.input("a", sa.clone()).expect("input");
                let b = g.input("b", sb.clone()).expect("input");
                let d = g.input("d", sb.clone()).expect("input");
                let outs: Vec<NodeId> = BINARY_OPS
                    .iter()
                    .map(|&op| {
                        let rhs = if op == BinaryOp::Div { d } else { b };
                        g.binary(op, a, rhs).expect("broadcastable")
                    })
                    .collect();
                let mut feeds = Feeds::<f32>::new();
                feeds.insert("a", va.clone());
                feeds.insert("b", vb.clone());
                feeds.insert("d", vd.clone());
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                let ab = va.broadcast(IxDyn(&out_shape)).expect("broadcast a");
                let bb = vb.broadcast(IxDyn(&out_shape)).expect("broadcast b");
                let db = vd.broadcast(IxDyn(&out_shape)).expect("broadcast d");
                let (fa, fb, fd): (Vec<f32>, Vec<f32>, Vec<f32>) = (
                    ab.iter().copied().collect(),
                    bb.iter().copied().collect(),
                    db.iter().copied().collect(),
                );
                for (k, &op) in BINARY_OPS.iter().enumerate() {
                    let w_flat: Vec<f64> = want[k].iter().copied().collect();
                    let rhs = if op == BinaryOp::Div { &fd } else { &fb };
                    compare(
                        &format!("{op:?}: {sa:?} with {sb:?}"),
                        &got[k],
                        &want[k],
                        |i| format!("a = {:e}, b = {:e}", fa[i], rhs[i]),
                        |i| binary_tol(op, w_flat[i]),
                    )?;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Runs reduce_sum(x, axes) on both sides and checks each output against
/// sum_tol(K, sum |x|) over its K = prod(reduced extents) terms; sum |x| comes from the CPU
/// running the same graph on |x|.
fn check_reduce(
    gpu: &mut GpuExecutor,
    shape: &[usize],
    axes: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let x: ArrayD<f32> = array(shape, (0..n).map(|_| mixed(&mut rng, 4.0)).collect());
    let mut g = Graph::new();
    let xi = g.input("x", shape.to_vec()).expect("input");
    let s = g.reduce_sum(xi, axes).expect("reduce_sum");
    let mut feeds = Feeds::<f32>::new();
    feeds.insert("x", x.clone());
    let (got, want) = run_both(gpu, &g, &feeds, &[s])?;
    let mut abs_feeds = Feeds::<f64>::new();
    abs_feeds.insert("x", x.mapv(|v| (v as f64).abs()));
    let abs_sum = CpuExecutor::<f64>::new()
        .run(&g, &abs_feeds, &[s])
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let k: usize = axes.iter().map(|&a| shape[a]).product();
    let abs_flat: Vec<f64> = abs_sum[0].iter().copied().collect();
    compare(
        &format!("reduce_sum{axes:?} of {shape:?}"),
        &got[0],
        &want[0],
        |i| format!("sum |x| = {:e}, K = {k}", abs_flat[i]),
        |i| sum_tol(k, abs_flat[i]),
    )
}

#[test]
fn gpu_reduce_sum_matches_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_reduce_sum_matches_cpu") else {
        return;
    };
    // Reductions long enough for the workgroup kernel (K >= 512), contiguous and strided,
    // and with 2-D dispatch.
    for (shape, axes, two_d) in [
        (vec![3, 2000], vec![1], false),
        (vec![2000, 3], vec![0], true),
        (vec![4, 700], vec![0, 1], false),
        (vec![5, 40, 3, 20], vec![1, 3], true),
    ] {
        set_dispatch(&mut gpu, two_d);
        check_reduce(&mut gpu, &shape, &axes, 7).unwrap_or_else(|e| panic!("{e}"));
    }
    let gpu = RefCell::new(gpu);
    let case = shape_strategy(4, 12)
        .prop_flat_map(|shape| {
            let r = shape.len();
            (
                Just(shape),
                prop::collection::vec(any::<bool>(), r),
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(|(shape, mask, seed, two_d)| {
            let axes: Vec<usize> = (0..shape.len()).filter(|&d| mask[d]).collect();
            (shape, axes, seed, two_d)
        });
    runner(32)
        .run(&case, |(shape, axes, seed, two_d)| {
            let mut gpu = gpu.borrow_mut();
            set_dispatch(&mut gpu, two_d);
            check_reduce(&mut gpu, &shape, &axes, seed)
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// a [m, k] @ b [k, n] on both sides, each entry within sum_tol(k, (|a| |b|)[i, j]);
/// |a| |b| comes from the CPU in f64.
fn check_matmul(
    gpu: &mut GpuExecutor,
    m: usize,
    k: usize,
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |r: usize, c: usize| {
        array(
            &[r, c],
            (0..r * c)
                .map(|_| rng.random_range(-1.0f32..=1.0))
                .collect(),
        )
    };
    let (va, vb) = (draw(m, k), draw(k, n));
    let mut g = Graph::new();
    let a = g.input("a", [m, k]).expect("input");
    let b = g.input("b", [k, n]).expect("input");
    let c = g.matmul(a, b).expect("matmul");
    let mut feeds = Feeds::<f32>::new();
    feeds.insert("a", va.clone());
    feeds.insert("b", vb.clone());
    let (got, want) = run_both(gpu, &g, &feeds, &[c])?;
    let mut abs_feeds = Feeds::<f64>::new();
    abs_feeds.insert("a", va.mapv(|v| (v as f64).abs()));
    abs_feeds.insert("b", vb.mapv(|v| (v as f64).abs()));
    let abs_prod = CpuExecutor::<f64>::new()
        .run(&g, &abs_feeds, &[c])
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let abs_flat: Vec<f64> = abs_prod[0].iter().copied().collect();
    compare(
        &format!("matmul [{m}, {k}] x [{k}, {n}]"),
        &got[0],
        &want[0],
        |i| format!("row {}, col {}", i / n, i % n),
        |i| sum_tol(k, abs_flat[i]),
    )
}

#[test]
fn gpu_matmul_matches_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_matmul_matches_cpu") else {
        return;
    };
    // Several 16 x 16 tiles with a ragged tail in every dimension, with 1-D and 2-D dispatch.
    for two_d in [false, true] {
        set_dispatch(&mut gpu, two_d);
        check_matmul(&mut gpu, 33, 47, 65, 11).unwrap_or_else(|e| panic!("{e}"));
    }
    let gpu = RefCell::new(gpu);
    runner(24)
        .run(
            &(
                1usize..=70,
                1usize..=70,
                1usize..=70,
                any::<u64>(),
                any::<bool>(),
            ),
            |(m, k, n, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                check_matmul(&mut gpu, m, k, n, seed)
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Error bounds of the composed graph r = relu(x w + bias), s = reduce_sum(r, [0]), for one
/// side with unit roundoff u, first order, from exact (f64) values:
///   E_h[i, j] = gamma_k(u) (|x| |w|)[i, j]                            (matmul)
///   E_z[i, j] = E_h (1 + u) + u |z[i, j]|                             (one rounded addition)
///   E_r[i, j] = E_z[i, j]                                             (relu is 1-Lipschitz)
///   E_s[j]    = sum_i E_r[i, j] + gamma_m(u) (sum_i |r[i, j]| + E_r[i, j])  (sum of m terms)
fn composed_bounds(
    u: f64,
    k: usize,
    abs_xw: &ArrayD<f64>,
    z: &ArrayD<f64>,
    r: &ArrayD<f64>,
) -> (ArrayD<f64>, Vec<f64>) {
    let e_h = abs_xw.mapv(|v| gamma(k, u) * v);
    let e_r = &e_h * (1.0 + u) + &z.mapv(|v| u * v.abs());
    let (m, n) = (r.shape()[0], r.shape()[1]);
    let e_s = (0..n)
        .map(|j| {
            let prop: f64 = (0..m).map(|i| e_r[[i, j]]).sum();
            let abs: f64 = (0..m).map(|i| r[[i, j]].abs() + e_r[[i, j]]).sum();
            prop + gamma(m, u) * abs
        })
        .collect();
    (e_r, e_s)
}

#[test]
fn gpu_composed_graph_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_composed_graph_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(16)
        .run(
            &(
                1usize..=40,
                1usize..=40,
                1usize..=40,
                any::<u64>(),
                any::<bool>(),
            ),
            |(m, k, n, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut draw = |s: &[usize]| {
                    let len: usize = s.iter().product();
                    array(
                        s,
                        (0..len).map(|_| rng.random_range(-1.0f32..=1.0)).collect(),
                    )
                };
                let (vx, vw, vb) = (draw(&[m, k]), draw(&[k, n]), draw(&[n]));
                let mut g = Graph::new();
                let x = g.input("x", [m, k]).expect("input");
                let w = g.input("w", [k, n]).expect("input");
                let bias = g.input("bias", [n]).expect("input");
                let h = g.matmul(x, w).expect("matmul");
                let z = g.add2(h, bias).expect("add bias");
                let r = g.relu(z).expect("relu");
                let s = g.reduce_sum(r, &[0]).expect("reduce_sum");
                // Reshape, Broadcast and Const: t = broadcast(reshape(s, [n]), [3, n]) * 0.5.
                let s_flat = g.reshape(s, [n]).expect("reshape");
                let s_rows = g.broadcast_to(s_flat, [3, n]).expect("broadcast");
                let half = g.constant(0.5, [3, n]).expect("const");
                let t = g.mul(s_rows, half).expect("mul");
                let mut feeds = Feeds::<f32>::new();
                feeds.insert("x", vx.clone());
                feeds.insert("w", vw.clone());
                feeds.insert("bias", vb.clone());
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[r, s, z, t])?;
                let mut abs_feeds = Feeds::<f64>::new();
                abs_feeds.insert("x", vx.mapv(|v| (v as f64).abs()));
                abs_feeds.insert("w", vw.mapv(|v| (v as f64).abs()));
                abs_feeds.insert("bias", vb.mapv(|v| v as f64));
                let abs_xw = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[h])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .remove(0);
                let (e32_r, e32_s) = composed_bounds(U32, k, &abs_xw, &want[2], &want[0]);
                let (e64_r, e64_s) = composed_bounds(U64, k, &abs_xw, &want[2], &want[0]);
                let tol_r: Vec<f64> = e32_r.iter().zip(e64_r.iter()).map(|(a, b)| a + b).collect();
                compare(
                    &format!("relu(x w + bias), x [{m}, {k}], w [{k}, {n}]"),
                    &got[0],
                    &want[0],
                    |i| format!("row {}, col {}", i / n, i % n),
                    |i| tol_r[i],
                )?;
                compare(
                    &format!("reduce_sum(relu(x w + bias), [0]), m = {m}"),
                    &got[1],
                    &want[1],
                    |i| format!("col {i}"),
                    |i| e32_s[i] + e64_s[i],
                )?;
                // Reshape and broadcast copy, and the product with 0.5 is exact: half of E_s.
                compare(
                    &format!("broadcast(reshape(s)) * 0.5, n = {n}"),
                    &got[3],
                    &want[3],
                    |i| format!("row {}, col {}", i / n, i % n),
                    |i| 0.5 * (e32_s[i % n] + e64_s[i % n]),
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn gpu_reports_unsupported_rank_clearly() {
    let Some(mut gpu) = common::gpu_executor("gpu_reports_unsupported_rank_clearly") else {
        return;
    };
    let mut g = Graph::new();
    let x = g.input("x", [2, 5]).expect("input");
    let y = g.exp(x).expect("exp");
    let big = g
        .scoped("head", |g| g.reshape(y, [1, 1, 1, 1, 1, 1, 1, 2, 5]))
        .expect("reshape");
    let z = g.scoped("head", |g| g.neg(big)).expect("neg");
    // No feeds at all: the refusal comes before any feed is read or any work is recorded.
    let err = gpu
        .run(&g, &Feeds::new(), &[z])
        .expect_err("rank 9 exceeds MAX_RANK");
    match &err {
        ExecError::Unsupported { backend, op, label } => {
            assert!(backend.starts_with("gpu-f32"), "{backend}");
            assert!(op.contains("rank-9"), "{op}");
            assert_eq!(label, "head");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    // The supported part of the same graph still runs.
    let mut feeds = Feeds::<f32>::new();
    feeds.insert("x", array(&[2, 5], vec![0.5; 10]));
    let out = gpu.run(&g, &feeds, &[y]).expect("exp runs");
    assert!(out[0]
        .iter()
        .all(|&v| (v as f64 - 0.5f64.exp()).abs() <= unary_tol(UnaryOp::Exp, 0.5, 0.5f64.exp())));
}

/// `n` values from `mixed`, with about one in `nan_every` replaced by NaN (0: none).
fn draw<T: Scalar + SampleUniform>(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    nan_every: u32,
) -> ArrayD<T> {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            if nan_every > 0 && rng.random_range(0..nan_every) == 0 {
                T::nan()
            } else {
                mixed(rng, T::of(4.0))
            }
        })
        .collect();
    array(shape, v)
}

/// The CPU (f64) values of `outs` with every feed replaced by its absolute value: for a
/// graph linear in each input, the sum of |terms| of each output.
fn abs_run(g: &Graph, feeds: &Feeds<f32>, names: &[&str], outs: &[NodeId]) -> Vec<ArrayD<f64>> {
    let mut f = Feeds::<f64>::new();
    for n in names {
        f.insert(*n, feeds.get(n).expect("fed").mapv(|v| (v as f64).abs()));
    }
    CpuExecutor::<f64>::new().run(g, &f, outs).expect("cpu run")
}

/// Select and ReduceMax pick one of their inputs (NaN included), so the tolerance is 0:
/// the GPU result must equal the f32 input the CPU picked, exactly.
#[test]
fn gpu_select_and_reduce_max_match_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_select_and_reduce_max_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let case = shape_strategy(4, 9)
        .prop_flat_map(|shape| {
            let r = shape.len();
            (
                Just(shape),
                prop::collection::vec(any::<bool>(), r),
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(|(shape, mask, seed, two_d)| {
            let axes: Vec<usize> = (0..shape.len()).filter(|&d| mask[d]).collect();
            (shape, axes, seed, two_d)
        });
    let mut cases: Vec<(Vec<usize>, Vec<usize>, u64, bool)> = vec![
        (vec![3, 1500], vec![1], 5, false),
        (vec![700, 2], vec![0], 6, true),
    ];
    let mut runner = runner(24);
    for _ in 0..24 {
        cases.push(case.new_tree(&mut runner).expect("case").current());
    }
    for (shape, axes, seed, two_d) in cases {
        let mut gpu = gpu.borrow_mut();
        set_dispatch(&mut gpu, two_d);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = Graph::new();
        let c = g.input("c", shape.clone()).expect("input");
        let a = g.input("a", shape.clone()).expect("input");
        let b = g.input("b", shape.clone()).expect("input");
        let sel = g.select(c, a, b).expect("select");
        let m = g.reduce_max(a, &axes).expect("reduce_max");
        let mut feeds = Feeds::<f32>::new();
        let n: usize = shape.iter().product();
        let cv: Vec<f32> = (0..n)
            .map(|_| [0.0, -0.0, 1.0, -2.5, f32::NAN][rng.random_range(0..5)])
            .collect();
        feeds.insert("c", array(&shape, cv));
        feeds.insert(
            "a",
            draw(&mut rng, &shape, if seed % 3 == 0 { 50 } else { 0 }),
        );
        feeds.insert("b", draw(&mut rng, &shape, 0));
        let (got, want) =
            run_both(&mut gpu, &g, &feeds, &[sel, m]).unwrap_or_else(|e| panic!("{e}"));
        compare(
            &format!("select {shape:?}"),
            &got[0],
            &want[0],
            |i| format!("{i}"),
            |_| 0.0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        compare(
            &format!("reduce_max{axes:?} of {shape:?}"),
            &got[1],
            &want[1],
            |i| format!("{i}"),
            |_| 0.0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Permute, Slice, Pad and Concat copy f32 values or write zeros: tolerance 0.
#[test]
fn gpu_movement_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_movement_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(32)
        .run(
            &(shape_strategy(4, 7), any::<u64>(), any::<bool>()),
            |(shape, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let r = shape.len();
                let mut g = Graph::new();
                let x = g.input("x", shape.clone()).expect("input");
                let mut feeds = Feeds::<f32>::new();
                feeds.insert("x", draw(&mut rng, &shape, 0));
                let mut perm: Vec<usize> = (0..r).collect();
                for k in (1..r).rev() {
                    perm.swap(k, rng.random_range(0..=k));
                }
                let mut outs = vec![g.permute(x, &perm).expect("permute")];
                let mut what = vec![format!("permute{perm:?}")];
                if r > 0 {
                    let axis = rng.random_range(0..r);
                    let n = shape[axis];
                    let start = rng.random_range(0..n);
                    let end = rng.random_range(start + 1..=n);
                    let step = rng.random_range(1..=3);
                    outs.push(g.slice(x, axis, start, end, step).expect("slice"));
                    what.push(format!("slice(axis {axis}, {start}..{end} step {step})"));
                    let (before, after, interior) = (
                        rng.random_range(0..3),
                        rng.random_range(0..3),
                        rng.random_range(0..3),
                    );
                    outs.push(g.pad(x, axis, before, after, interior).expect("pad"));
                    what.push(format!("pad(axis {axis}, {before}, {after}, {interior})"));
                    let mut other = shape.clone();
                    other[axis] = rng.random_range(1..=4);
                    let y = g.input("y", other.clone()).expect("input");
                    feeds.insert("y", draw(&mut rng, &other, 0));
                    outs.push(g.concat(&[x, y, x], axis).expect("concat"));
                    what.push(format!("concat(x, y {other:?}, x; axis {axis})"));
                }
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                for k in 0..outs.len() {
                    compare(
                        &format!("{} of {shape:?}", what[k]),
                        &got[k],
                        &want[k],
                        |i| format!("{i}"),
                        |_| 0.0,
                    )?;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Conv2d (K = (C/groups) kh kw terms per output), Conv2dInputGrad (at most (O/groups) kh kw
/// terms) and Conv2dWeightGrad (N oh ow terms): each output within sum_tol(K, sum |terms|),
/// sum |terms| from the CPU running the same (bilinear) graph on |x|, |w|, |gy|.
#[test]
fn gpu_conv2d_and_transposes_match_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_conv2d_and_transposes_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let case = (
        1usize..=2,
        prop::sample::select(vec![2usize, 4]),
        0usize..3,
        1usize..=2,
        prop::sample::select(vec![1usize, 3, 5]),
        (1usize..=2, 0usize..=2, 1usize..=2),
        (3usize..=9, 3usize..=9),
        (any::<u64>(), any::<bool>()),
    );
    runner(32)
        .run(
            &case,
            |(n, c, gsel, omul, k, (stride, pad, dil), (h, w), (seed, two_d))| {
                let groups = [1, 2, c][gsel];
                let o = groups * omul;
                let p = ConvParams::new(stride, pad, dil, groups);
                let (Some(oh), Some(ow)) = (p.out_len(0, h, k), p.out_len(1, w, k)) else {
                    return Ok(());
                };
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let (xs, ws, ys) = (
                    vec![n, c, h, w],
                    vec![o, c / groups, k, k],
                    vec![n, o, oh, ow],
                );
                let mut g = Graph::new();
                let x = g.input("x", xs.clone()).expect("input");
                let wt = g.input("w", ws.clone()).expect("input");
                let gy = g.input("gy", ys.clone()).expect("input");
                let y = g.conv2d(x, wt, p).expect("conv2d");
                let gx = g
                    .add(Op::Conv2dInputGrad { p, in_hw: [h, w] }, &[gy, wt])
                    .expect("input grad");
                let gw = g
                    .add(Op::Conv2dWeightGrad { p, kernel: [k, k] }, &[x, gy])
                    .expect("weight grad");
                let mut feeds = Feeds::<f32>::new();
                for (name, s) in [("x", &xs), ("w", &ws), ("gy", &ys)] {
                    feeds.insert(name, draw(&mut rng, s, 0));
                }
                let outs = [y, gx, gw];
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                let abs = abs_run(&g, &feeds, &["x", "w", "gy"], &outs);
                let ks = [(c / groups) * k * k, (o / groups) * k * k, n * oh * ow];
                let desc = format!(
                    "x {xs:?} w {ws:?} stride {stride} pad {pad} dil {dil} groups {groups}"
                );
                for (j, name) in ["conv2d", "conv2d_input_grad", "conv2d_weight_grad"]
                    .iter()
                    .enumerate()
                {
                    let a: Vec<f64> = abs[j].iter().copied().collect();
                    compare(
                        &format!("{name}, {desc}"),
                        &got[j],
                        &want[j],
                        |i| format!("K = {}, sum |terms| = {:e}", ks[j], a[i]),
                        |i| sum_tol(ks[j], a[i]) + FLUSH,
                    )?;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Pooling, 3 x 3 windows, stride 1-2, padding 0-1; K_w = count(p, q) <= 9 terms per window,
/// at most K_c = ceil(3 / s)^2 <= 9 windows per input pixel:
/// * avg_pool y = (sum of K_w terms) / K_w: gamma_9 * avg(|x|) for the sum (divided by K_w
///   exactly in the bound) plus the division's 2.5 ULP = 5 U32 |y| (f64: 2 U64 |y|).
/// * avg_pool_grad: each share gy / K_w carries 5 U32 relative error, then a sum of at most 9
///   shares: (gamma_9 + 5 U32) * avg_pool_grad(|gy|) (f64: gamma_9 + 2 U64).
/// * max_pool and max_pool_gather pick one input: 0 (the same first argmax, NaN included;
///   inputs are drawn from a few levels so ties are common).
/// * max_pool_grad: a sum of at most 9 cotangents: sum_tol(9, max_pool_grad(x, |gy|)).
#[test]
fn gpu_pooling_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_pooling_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(32)
        .run(
            &(
                (1usize..=2, 1usize..=3, 2usize..=9, 2usize..=9),
                1usize..=2,
                0usize..=1,
                any::<u64>(),
                any::<bool>(),
            ),
            |((n, c, h, w), stride, pad, seed, two_d)| {
                let p = PoolParams::new(3, stride, pad);
                let (Some(oh), Some(ow)) = (p.out_len(0, h), p.out_len(1, w)) else {
                    return Ok(());
                };
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let (xs, ys) = (vec![n, c, h, w], vec![n, c, oh, ow]);
                let mut g = Graph::new();
                let x = g.input("x", xs.clone()).expect("input");
                let gy = g.input("gy", ys.clone()).expect("input");
                let cc = g.input("c", xs.clone()).expect("input");
                let avg = g.avg_pool2d(x, p).expect("avg_pool");
                let avg_g = g
                    .add(Op::AvgPool2dGrad { p, in_hw: [h, w] }, &[gy])
                    .expect("avg grad");
                let mx = g.max_pool2d(x, p).expect("max_pool");
                let mx_g = g.add(Op::MaxPool2dGrad(p), &[x, gy]).expect("max grad");
                let mx_c = g.add(Op::MaxPool2dGather(p), &[x, cc]).expect("gather");
                let levels = [-1.0f32, 0.0, 0.5, 2.0, f32::NEG_INFINITY];
                let with_nan = seed % 4 == 0;
                let xv: Vec<f32> = (0..n * c * h * w)
                    .map(|_| {
                        if with_nan && rng.random_range(0..20) == 0 {
                            f32::NAN
                        } else {
                            levels[rng.random_range(0..levels.len())]
                        }
                    })
                    .collect();
                let mut feeds = Feeds::<f32>::new();
                feeds.insert("x", array(&xs, xv));
                feeds.insert("gy", draw(&mut rng, &ys, 0));
                feeds.insert("c", draw(&mut rng, &xs, 0));
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[mx, mx_g, mx_c, avg_g])?;
                let desc = format!("x {xs:?}, {p:?}");
                compare(
                    &format!("max_pool {desc}"),
                    &got[0],
                    &want[0],
                    |i| format!("{i}"),
                    |_| 0.0,
                )?;
                compare(
                    &format!("max_pool_gather {desc}"),
                    &got[2],
                    &want[2],
                    |i| format!("{i}"),
                    |_| 0.0,
                )?;
                let mut abs_feeds = Feeds::<f64>::new();
                abs_feeds.insert("x", feeds.get("x").expect("x").mapv(|v| v as f64));
                abs_feeds.insert(
                    "gy",
                    feeds.get("gy").expect("gy").mapv(|v| (v as f64).abs()),
                );
                let abs = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[mx_g, avg_g])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (am, ag): (Vec<f64>, Vec<f64>) = (
                    abs[0].iter().copied().collect(),
                    abs[1].iter().copied().collect(),
                );
                compare(
                    &format!("max_pool_grad {desc}"),
                    &got[1],
                    &want[1],
                    |i| format!("sum |gy| = {:e}", am[i]),
                    |i| sum_tol(9, am[i]) + FLUSH,
                )?;
                compare(
                    &format!("avg_pool_grad {desc}"),
                    &got[3],
                    &want[3],
                    |i| format!("sum |gy / count| = {:e}", ag[i]),
                    |i| (gamma(9, U32) + 5.0 * U32 + gamma(9, U64) + 2.0 * U64) * ag[i] + FLUSH,
                )?;
                // avg_pool on finite inputs (the levels without -inf and NaN).
                let xf = feeds
                    .get("x")
                    .expect("x")
                    .mapv(|v| if v.is_finite() { v } else { 1.5 });
                feeds.insert("x", xf);
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[avg])?;
                let abs = abs_run(&g, &feeds, &["x"], &[avg]);
                let aa: Vec<f64> = abs[0].iter().copied().collect();
                let yv: Vec<f64> = want[0].iter().copied().collect();
                compare(
                    &format!("avg_pool {desc}"),
                    &got[0],
                    &want[0],
                    |i| format!("avg |x| = {:e}", aa[i]),
                    |i| {
                        (gamma(9, U32) + gamma(9, U64)) * aa[i]
                            + (5.0 * U32 + 2.0 * U64) * yv[i].abs()
                            + FLUSH
                    },
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Gather copies rows (tolerance 0); ScatterAdd sums at most n source rows per output row:
/// sum_tol(n, scatter_add(idx, |src|)). Out-of-range and non-integer indices fed as an Input
/// are refused before any work with IndexOutOfRange naming the node.
#[test]
fn gpu_gather_scatter_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_gather_scatter_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(24)
        .run(
            &(
                1usize..=9,
                shape_strategy(2, 5),
                1usize..=12,
                any::<u64>(),
                any::<bool>(),
            ),
            |(rows, tail, n, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut ts = vec![rows];
                ts.extend(&tail);
                let mut ss = vec![n];
                ss.extend(&tail);
                let mut g = Graph::new();
                let table = g.input("table", ts.clone()).expect("input");
                let idx = g.input("idx", [n]).expect("input");
                let src = g.input("src", ss.clone()).expect("input");
                let ga = g.scoped("emb", |g| g.gather(table, idx)).expect("gather");
                let sc = g
                    .scoped("emb_t", |g| g.add(Op::ScatterAdd { rows }, &[idx, src]))
                    .expect("scatter_add");
                let iv: Vec<f32> = (0..n).map(|_| rng.random_range(0..rows) as f32).collect();
                let mut feeds = Feeds::<f32>::new();
                feeds.insert("table", draw(&mut rng, &ts, 0));
                feeds.insert("idx", array(&[n], iv.clone()));
                feeds.insert("src", draw(&mut rng, &ss, 0));
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[ga, sc])?;
                compare("gather", &got[0], &want[0], |i| format!("{i}"), |_| 0.0)?;
                let mut abs_feeds = Feeds::<f64>::new();
                abs_feeds.insert("idx", array(&[n], iv.clone()).mapv(|v| v as f64));
                abs_feeds.insert(
                    "src",
                    feeds.get("src").expect("src").mapv(|v| (v as f64).abs()),
                );
                let abs = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[sc])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let a: Vec<f64> = abs[0].iter().copied().collect();
                compare(
                    &format!("scatter_add rows {rows}, src {ss:?}"),
                    &got[1],
                    &want[1],
                    |i| format!("sum |src| = {:e}", a[i]),
                    |i| sum_tol(n, a[i]) + FLUSH,
                )?;
                // An index equal to `rows`, or not an integer, is refused before any work.
                for bad in [rows as f32, 0.5, -1.0] {
                    let mut bv = iv.clone();
                    bv[n - 1] = bad;
                    feeds.insert("idx", array(&[n], bv));
                    for (out, label) in [(ga, "emb"), (sc, "emb_t")] {
                        match gpu.run(&g, &feeds, &[out]) {
                            Err(ExecError::IndexOutOfRange {
                                label: l, rows: r, ..
                            }) => {
                                prop_assert_eq!(l, label);
                                prop_assert_eq!(r, rows);
                            }
                            other => {
                                prop_assert!(false, "index {} gave {:?}", bad, other.map(|_| ()))
                            }
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Bound on |y_gpu - y| for y_j = x_j - (m + log s), s = sum_{k < n} exp(x_k - m), m the lane
/// maximum, first order:
/// * t_k = x_k - m is rounded (U32 |t_k|), then exp adds exp_rel(t_k): each term of s has
///   relative error at most r = max_k (exp_rel(t_k) + U32 |t_k|) (e^{U32 |t|} - 1 ~ U32 |t|);
///   the sum of n positive terms adds gamma_n, so s has relative error r + gamma_n(U32), which
///   moves log s by at most that much (absolute);
/// * log itself: 2^-21 absolute for s in [0.5, 2], else 3 ULP = 6 U32 |log s|;
/// * the two roundings m + log s and x_j - lse: U32 (|lse| + |y_j|);
/// * the f64 reference: the same formula with U64 (exp/log within a few U64): 8 U64 (n + |x_j| + |lse|);
/// * FLUSH.
fn log_softmax_tol(lane: &[f64], y: f64, x: f64) -> f64 {
    let n = lane.len();
    let m = lane.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = lane.iter().map(|v| (v - m).exp()).sum();
    let r = lane
        .iter()
        .map(|v| exp_rel(v - m) + U32 * (v - m).abs())
        .fold(0.0, f64::max);
    let log_err = if (0.5..=2.0).contains(&s) {
        2f64.powi(-21)
    } else {
        6.0 * U32 * s.ln().abs()
    };
    let lse = m + s.ln();
    r + gamma(n, U32)
        + log_err
        + U32 * (lse.abs() + y.abs())
        + 8.0 * U64 * (n as f64 + x.abs() + lse.abs())
        + FLUSH
}

#[test]
fn gpu_log_softmax_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_log_softmax_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let case = shape_strategy(3, 12)
        .prop_filter("rank >= 1", |s| !s.is_empty())
        .prop_flat_map(|s| {
            let r = s.len();
            (Just(s), 0..r, any::<u64>(), any::<bool>())
        });
    runner(32)
        .run(&case, |(shape, axis, seed, two_d)| {
            let mut gpu = gpu.borrow_mut();
            set_dispatch(&mut gpu, two_d);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut g = Graph::new();
            let x = g.input("x", shape.clone()).expect("input");
            let y = g.log_softmax(x, axis).expect("log_softmax");
            let xv: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-20.0f32..=20.0))
                .collect();
            let xa = array(&shape, xv);
            let mut feeds = Feeds::<f32>::new();
            feeds.insert("x", xa.clone());
            let (got, want) = run_both(&mut gpu, &g, &feeds, &[y])?;
            let x64 = xa.mapv(|v| v as f64);
            let inner: usize = shape[axis + 1..].iter().product();
            let n = shape[axis];
            let lane = |i: usize| -> Vec<f64> {
                let base = (i / (n * inner)) * n * inner + i % inner;
                let flat = x64.as_slice().expect("standard layout");
                (0..n).map(|j| flat[base + j * inner]).collect()
            };
            let (wv, xf): (Vec<f64>, Vec<f64>) = (
                want[0].iter().copied().collect(),
                x64.iter().copied().collect(),
            );
            compare(
                &format!("log_softmax(axis {axis}) of {shape:?}"),
                &got[0],
                &want[0],
                |i| format!("x = {:e}", xf[i]),
                |i| log_softmax_tol(&lane(i), wv[i], xf[i]),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The most terms any single output element of node `id` accumulates (1 for elementwise and
/// data movement): the K of gamma_K for that node's kernel on either executor.
fn term_count(g: &Graph, id: usize) -> usize {
    let node = &g.nodes()[id];
    let ins: Vec<&[usize]> = node.inputs.iter().map(|j| g.shape(*j).dims()).collect();
    let out = node.shape.dims();
    match &node.op {
        Op::ReduceSum { axes } => axes.iter().map(|&a| ins[0][a]).product(),
        Op::MatMul => ins[0][1],
        Op::Conv2d(_) => ins[1][1] * ins[1][2] * ins[1][3],
        Op::Conv2dInputGrad { p, .. } => (ins[1][0] / p.groups) * ins[1][2] * ins[1][3],
        Op::Conv2dWeightGrad { .. } => ins[1][0] * ins[1][2] * ins[1][3],
        Op::AvgPool2d(p) | Op::AvgPool2dGrad { p, .. } | Op::MaxPool2dGrad(p) => {
            p.kernel[0] * p.kernel[1]
        }
        Op::ScatterAdd { .. } => ins[0].iter().product(),
        Op::LogSoftmax { axis } => out[*axis],
        _ => 1,
    }
}

/// A whole DARTS search network (C = 2, 3 layers, batch 2, 8 x 8 images, 10 classes): loss,
/// grad_w and grad_alpha on the GPU (f32) against the CPU (f64).
///
/// Tolerance, the approach of `darts::check::tolerance::evaluation_bound`: every node adds at
/// most one rounding per accumulated term, so an output whose longest path has `depth` nodes,
/// in a graph whose largest single accumulation has K terms (`term_count`, the max over the
/// nodes the outputs need), is within gamma_{K depth}(u) * M of its exact value, M the largest
/// |value| of any node upstream of it (the scale round-off is relative to; condition
/// amplification inside the graph is what `depth` stands in for). Both sides err: the bound is
/// evaluation_bound(K, depth, M, 2^-24) + evaluation_bound(K, depth, M, 2^-53). The f32 inputs
/// are fed to both sides unchanged. Every kernel's f32 builtin error (exp, log, division) is a
/// few ULP, covered by the one rounding per node and term the bound already allows.
#[test]
fn gpu_search_network_gradients_match_cpu() {
    use darts::darts::network::SearchConfig;
    use darts::search::architect::NetGraph;
    let Some(mut gpu) = common::gpu_executor("gpu_search_network_gradients_match_cpu") else {
        return;
    };
    let cfg = SearchConfig {
        c: 2,
        layers: 3,
        smooth: false,
        ..SearchConfig::paper()
    };
    let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).expect("search network");
    let st = common::state(&cfg, 3);
    let point = common::point(&cfg, &st);
    let batch = common::batch(2, 8, cfg.num_classes, 4);
    let mut feeds = Feeds::<f32>::new();
    for (n, a) in &point.weights {
        feeds.insert(n.clone(), a.mapv(|v| v as f32));
    }
    feeds.insert("alpha/normal", point.alpha[0].mapv(|v| v as f32));
    feeds.insert("alpha/reduce", point.alpha[1].mapv(|v| v as f32));
    feeds.insert("x", batch.x.mapv(|v| v as f32));
    feeds.insert("onehot", batch.onehot.mapv(|v| v as f32));
    let mut outs = vec![net.loss, net.grad_alpha[0], net.grad_alpha[1]];
    outs.extend(&net.grad_w);
    let mut names = vec![
        "loss".to_string(),
        "grad_alpha/normal".into(),
        "grad_alpha/reduce".into(),
    ];
    names.extend(point.weights.iter().map(|(n, _)| format!("grad_w/{n}")));
    let worst = assert_gpu_matches_cpu(&mut gpu, &net.graph, &feeds, &outs, &names);
    println!(
        "search network: {} outputs, worst |gpu - cpu| / tol = {worst:.3e}",
        outs.len()
    );
}

/// Run `outs` of `g` on the GPU (element type T, unit roundoff u_T) and the CPU (f64, same
/// inputs) and assert each output agrees within evaluation_bound(K, depth, M, u_T) +
/// evaluation_bound(K, depth, M, 2^-53) (see `gpu_search_network_gradients_match_cpu`).
/// Returns the worst error/bound ratio.
fn assert_gpu_matches_cpu<T: GpuScalar>(
    gpu: &mut GpuExecutor<T>,
    g: &Graph,
    feeds: &Feeds<T>,
    outs: &[NodeId],
    names: &[String],
) -> f64 {
    use darts::check::tolerance::evaluation_bound;
    let got = gpu.run(g, feeds, outs).expect("gpu run");
    let f64_feeds = feeds.cast::<f64>();
    let want = CpuExecutor::<f64>::new()
        .run(g, &f64_feeds, outs)
        .expect("cpu run");
    // Depth of every node and the values of every node the outputs need (for M).
    let mut depth = vec![0usize; g.len()];
    for (i, n) in g.nodes().iter().enumerate() {
        depth[i] = 1 + n.inputs.iter().map(|j| depth[j.0]).max().unwrap_or(0);
    }
    let (needed, _) = darts::exec::liveness(g, outs).expect("liveness");
    let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
    let k = ids.iter().map(|id| term_count(g, id.0)).max().unwrap_or(1);
    let vals = CpuExecutor::<f64>::new()
        .run(g, &f64_feeds, &ids)
        .expect("cpu run of every node");
    let mut max_abs = vec![0.0f64; g.len()];
    for (id, v) in ids.iter().zip(&vals) {
        max_abs[id.0] = v
            .iter()
            .filter(|x| x.is_finite())
            .fold(0.0f64, |m, x| m.max(x.abs()));
    }
    // M(o) = max over the nodes upstream of o (inclusive).
    let mut upstream = max_abs.clone();
    for (i, n) in g.nodes().iter().enumerate() {
        for j in &n.inputs {
            upstream[i] = upstream[i].max(upstream[j.0]);
        }
    }
    let mut worst: f64 = 0.0;
    for (j, &o) in outs.iter().enumerate() {
        let tol = evaluation_bound(k, depth[o.0], upstream[o.0], T::UNIT_ROUNDOFF)
            + evaluation_bound(k, depth[o.0], upstream[o.0], U64);
        let name = &names[j];
        let err = got[j]
            .iter()
            .zip(want[j].iter())
            .map(|(&a, &b)| (a.as_f64() - b).abs())
            .fold(0.0f64, f64::max);
        assert!(
            got[j].iter().all(|v| v.as_f64().is_finite()),
            "{name}: non-finite GPU value"
        );
        worst = worst.max(err / tol);
        assert!(
            err <= tol,
            "{name}: max |gpu - cpu| {err:e} > tol {tol:e} (K = {k}, depth {}, M = {:e})",
            depth[o.0],
            upstream[o.0]
        );
    }
    worst
}

/// The exact mixed Hessian-vector product d2 L / (dalpha dw) . v (autodiff of autodiff) of the
/// smooth search network (C = 2, 3 layers, batch 2, 8 x 8) on the GPU (f32) against the CPU
/// (f64), within the bound of `assert_gpu_matches_cpu`. The smooth variant keeps f32 rounding
/// from flipping a ReLU or max-pool decision, which would change the (almost-everywhere)
/// derivative itself rather than its rounding.
#[test]
fn gpu_exact_hvp_matches_cpu() {
    use darts::darts::network::SearchConfig;
    use darts::search::architect::NetGraph;
    let Some(mut gpu) = common::gpu_executor("gpu_exact_hvp_matches_cpu") else {
        return;
    };
    let cfg = SearchConfig {
        c: 2,
        layers: 3,
        smooth: true,
        ..SearchConfig::paper()
    };
    let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).expect("search network");
    let st = common::state(&cfg, 5);
    let point = common::point(&cfg, &st);
    let batch = common::batch(2, 8, cfg.num_classes, 6);
    let mut feeds = Feeds::<f32>::new();
    for (i, (n, a)) in point.weights.iter().enumerate() {
        feeds.insert(n.clone(), a.mapv(|v| v as f32));
        feeds.insert(
            format!("v/{n}"),
            a.mapv(|v| ((v * 1e3 + i as f64).sin()) as f32),
        );
    }
    feeds.insert("alpha/normal", point.alpha[0].mapv(|v| v as f32));
    feeds.insert("alpha/reduce", point.alpha[1].mapv(|v| v as f32));
    feeds.insert("x", batch.x.mapv(|v| v as f32));
    feeds.insert("onehot", batch.onehot.mapv(|v| v as f32));
    let outs = [net.hvp_alpha[0], net.hvp_alpha[1]];
    let names = ["hvp/normal".to_string(), "hvp/reduce".to_string()];
    let worst = assert_gpu_matches_cpu(&mut gpu, &net.graph, &feeds, &outs, &names);
    println!("exact H v: worst |gpu - cpu| / tol = {worst:.3e}");
}

// ------------------------------------------------------------------------------------------
// The f64 GPU executor (where the adapter offers SHADER_F64) against the CPU f64 executor.
//
// Both sides run in f64 on the same f64 inputs (full 53-bit mantissas, not f32 values), so
// every difference comes from the arithmetic, with u = 2^-53 (U64) on both sides:
// * + - * / and sqrt are correctly rounded on both (the device's are checked bit for bit by
//   tests/gpu_f64_math.rs and when the f64 executor is created), so every kernel that is one
//   such operation per element (neg, square, recip, sqrt, rsqrt = 1 / sqrt, add, sub, mul,
//   div) and every exact one (relu, step, max, compare, select, movement, gather, max-pool)
//   must agree bit for bit: tolerance 0;
// * sums of K terms: gamma_K(u) * sum |terms| per side, 2 gamma_K(u) * sum |terms| in all;
// * exp, log, tanh and the kernels built on them: the f64 prelude's bounds (probe::EXP_U, ...,
//   proofs/gpu-f64-math.md) on the GPU side plus the host libm's allowance (probe::LIBM_U) on
//   the CPU side, propagated through the kernel's formula to first order.
// Inputs are normal numbers; a subnormal result may be flushed to zero on the device (Vulkan
// allows it without denorm preservation): FLUSH64 where a result can be that small.
// Under DARTS_REQUIRE_GPU=1 these tests still skip (with a SKIP line) when no adapter offers
// SHADER_F64, and fail when one does but the f64 executor cannot be created.

use darts::exec::gpu::probe::{self as f64_probe, Probe};

/// Smallest normal f64, 2^-1022: the most a flushed subnormal result is off by.
const FLUSH64: f64 = f64::MIN_POSITIVE;

/// 2 gamma_K(2^-53) * abs_sum: a sum of K terms computed in f64 on both sides.
fn sum_tol64(k: usize, abs_sum: f64) -> f64 {
    2.0 * gamma(k, U64) * abs_sum
}

/// A value in the domain the f64 kernels are tested on: log, sqrt, rsqrt and recip over
/// [1e-300, 1e300] in magnitude (log half in [0.5, 2]), exp over [-700, 700], the rest over
/// [-40, 40] (mixed scales).
fn unary_input64(op: UnaryOp, rng: &mut ChaCha8Rng) -> f64 {
    match op {
        UnaryOp::Log if rng.random_bool(0.5) => rng.random_range(0.5..=2.0),
        UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => log_uniform::<f64>(rng, 1e-300, 1e300),
        UnaryOp::Recip => {
            let m = log_uniform::<f64>(rng, 1e-300, 1e300);
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        }
        UnaryOp::Exp => mixed::<f64>(rng, 700.0),
        _ => mixed::<f64>(rng, 40.0),
    }
}

/// Bound on |f_gpu(x) - f_cpu(x)| for the unary kernels in f64, given the exact value y:
/// * neg, relu, step, square, recip, sqrt, rsqrt: 0 (one or two correctly rounded operations,
///   the same on both sides);
/// * exp, log, tanh: the probe bound, (EXP_U + LIBM_U) u |y| and so on (`Probe::bound`);
/// * sigmoid, 1 / (1 + e) with e = exp(-x) for x >= 0, e / (1 + e) with e = exp(x) for x < 0:
///   the relative sensitivity to e is e / (1 + e) and 1 / (1 + e), times the two exp errors
///   (EXP_U + LIBM_U) u; the addition and the division add 2 u per side;
/// * softplus = max(x, 0) + L, L = log1p(t), t = exp(-|x|): the exp errors move L by
///   (EXP_U + LIBM_U) u t / (1 + t); log1p_unit and libm's ln_1p add (LOG1P_U + LIBM_U) u L;
///   the final addition u |y| per side.
///
/// Every bound but the exact ones adds FLUSH64 for a subnormal result flushed to zero.
fn unary_tol64(op: UnaryOp, x: f64, y: f64) -> f64 {
    let exp_rel = (f64_probe::EXP_U + f64_probe::LIBM_U) * U64;
    let d = match op {
        UnaryOp::Neg
        | UnaryOp::Relu
        | UnaryOp::Step
        | UnaryOp::Square
        | UnaryOp::Recip
        | UnaryOp::Sqrt
        | UnaryOp::Rsqrt => return 0.0,
        UnaryOp::Exp => Probe::Exp.bound(y),
        UnaryOp::Log => Probe::Log.bound(y),
        UnaryOp::Tanh => Probe::Tanh.bound(y),
        UnaryOp::Sigmoid => {
            let e = (-x.abs()).exp();
            let sensitivity = if x >= 0.0 {
                e / (1.0 + e)
            } else {
                1.0 / (1.0 + e)
            };
            (sensitivity * exp_rel + 4.0 * U64) * y.abs()
        }
        UnaryOp::Softplus => {
            let t = (-x.abs()).exp();
            let l = t.ln_1p();
            exp_rel * t / (1.0 + t)
                + (f64_probe::LOG1P_U + f64_probe::LIBM_U) * U64 * l
                + 2.0 * U64 * y.abs()
        }
    };
    d + FLUSH64
}

/// Kinks, ties, NaN, infinities and the ends of the ranges (exp underflowing to a subnormal
/// and to 0, overflowing to infinity; tanh saturating).
const SPECIALS64: [f64; 20] = [
    f64::NAN,
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    1e-3,
    -1e-3,
    1e-300,
    1e300,
    f64::INFINITY,
    f64::NEG_INFINITY,
    30.0,
    -30.0,
    709.0,
    710.0,
    -740.0,
    -746.0,
    22.5,
];

#[test]
fn gpu_f64_unary_matches_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_unary_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    // The specials first (shape [20]), then random shapes.
    let check = |shape: &[usize], inputs: &dyn Fn(UnaryOp, usize) -> Vec<f64>| {
        let mut g = Graph::new();
        let mut feeds = Feeds::<f64>::new();
        let mut outs = Vec::new();
        let mut xs = Vec::new();
        for (k, op) in UNARY_OPS.iter().enumerate() {
            let name = format!("{op:?}");
            let x = g.input(name.clone(), shape.to_vec()).expect("input");
            let vals = inputs(*op, k);
            feeds.insert(name, array::<f64>(shape, vals.clone()));
            outs.push(g.unary(*op, x).expect("unary"));
            xs.push(vals);
        }
        let (got, want) = run_both(&mut gpu.borrow_mut(), &g, &feeds, &outs)?;
        for (k, op) in UNARY_OPS.iter().enumerate() {
            let w: Vec<f64> = want[k].iter().copied().collect();
            compare(
                &format!("{op:?} (f64) on {shape:?}"),
                &got[k],
                &want[k],
                |i| format!("x = {:e}", xs[k][i]),
                |i| unary_tol64(*op, xs[k][i], w[i]),
            )?;
        }
        Ok(())
    };
    check(&[SPECIALS64.len()], &|_, _| SPECIALS64.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    runner(24)
        .run(
            &(shape_strategy(3, 24), any::<u64>(), any::<bool>()),
            |(shape, seed, two_d)| {
                set_dispatch(&mut gpu.borrow_mut(), two_d);
                let n: usize = shape.iter().product();
                check(&shape, &|op, k| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ k as u64);
                    (0..n).map(|_| unary_input64(op, &mut rng)).collect()
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A binary-op operand in f64: one of {-1, -0, 0, 1, 2} with probability 0.3 (ties, equal
/// pairs, division by zero), NaN with probability 0.02, otherwise `mixed64` in [-10, 10].
fn binary_input64(rng: &mut ChaCha8Rng) -> f64 {
    if rng.random_bool(0.02) {
        return f64::NAN;
    }
    if rng.random_bool(0.3) {
        return [-1.0, -0.0, 0.0, 1.0, 2.0][rng.random_range(0..5)];
    }
    mixed::<f64>(rng, 10.0)
}

/// Every binary op is one correctly rounded operation or exact: tolerance 0 (division by
/// zero, NaN and ties included).
#[test]
fn gpu_f64_binary_broadcast_matches_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_binary_broadcast_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(32)
        .run(
            &(shape_strategy(4, 9), any::<u64>(), any::<bool>()),
            |(out_shape, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let sa = operand_shape(&out_shape, &mut rng);
                let sb = operand_shape(&out_shape, &mut rng);
                let (sa, sb) = if rng.random_bool(0.5) {
                    (out_shape.clone(), sb)
                } else {
                    (sa, out_shape.clone())
                };
                let mut draw = |s: &[usize]| {
                    let n: usize = s.iter().product();
                    array::<f64>(s, (0..n).map(|_| binary_input64(&mut rng)).collect())
                };
                let (va, vb) = (draw(&sa), draw(&sb));
                let mut g = Graph::new();
                let a = g.input("a", sa.clone()).expect("input");
                let b = g.input("b", sb.clone()).expect("input");
                let outs: Vec<NodeId> = BINARY_OPS
                    .iter()
                    .map(|&op| g.binary(op, a, b).expect("broadcastable"))
                    .collect();
                let mut feeds = Feeds::<f64>::new();
                feeds.insert("a", va.clone());
                feeds.insert("b", vb.clone());
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                let fa: Vec<f64> = va
                    .broadcast(IxDyn(&out_shape))
                    .expect("a")
                    .iter()
                    .copied()
                    .collect();
                let fb: Vec<f64> = vb
                    .broadcast(IxDyn(&out_shape))
                    .expect("b")
                    .iter()
                    .copied()
                    .collect();
                for (k, op) in BINARY_OPS.iter().enumerate() {
                    compare(
                        &format!("{op:?} (f64): {sa:?} with {sb:?}"),
                        &got[k],
                        &want[k],
                        |i| format!("a = {:e}, b = {:e}", fa[i], fb[i]),
                        |_| 0.0,
                    )?;
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// reduce_sum (each output within sum_tol64(K, sum |x|)), reduce_max and select (exact), on
/// random shapes and axes, and on reductions long enough for the workgroup kernels.
#[test]
fn gpu_f64_reductions_and_select_match_cpu() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_reductions_and_select_match_cpu") else {
        return;
    };
    let case = shape_strategy(4, 12)
        .prop_flat_map(|shape| {
            let r = shape.len();
            (
                Just(shape),
                prop::collection::vec(any::<bool>(), r),
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(|(shape, mask, seed, two_d)| {
            let axes: Vec<usize> = (0..shape.len()).filter(|&d| mask[d]).collect();
            (shape, axes, seed, two_d)
        });
    let mut cases: Vec<(Vec<usize>, Vec<usize>, u64, bool)> = vec![
        (vec![3, 2000], vec![1], 7, false),
        (vec![2000, 3], vec![0], 8, true),
        (vec![5, 40, 3, 20], vec![1, 3], 9, true),
    ];
    let mut runner = runner(32);
    for _ in 0..32 {
        cases.push(case.new_tree(&mut runner).expect("case").current());
    }
    for (shape, axes, seed, two_d) in cases {
        set_dispatch(&mut gpu, two_d);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = Graph::new();
        let c = g.input("c", shape.clone()).expect("input");
        let a = g.input("a", shape.clone()).expect("input");
        let b = g.input("b", shape.clone()).expect("input");
        let sum = g.reduce_sum(b, &axes).expect("reduce_sum");
        let max = g.reduce_max(a, &axes).expect("reduce_max");
        let sel = g.select(c, a, b).expect("select");
        let n: usize = shape.iter().product();
        let cv: Vec<f64> = (0..n)
            .map(|_| [0.0, -0.0, 1.0, -2.5, f64::NAN][rng.random_range(0..5)])
            .collect();
        let mut feeds = Feeds::<f64>::new();
        feeds.insert("c", array::<f64>(&shape, cv));
        feeds.insert(
            "a",
            draw::<f64>(&mut rng, &shape, if seed % 3 == 0 { 50 } else { 0 }),
        );
        let bv = draw::<f64>(&mut rng, &shape, 0);
        feeds.insert("b", bv.clone());
        let (got, want) =
            run_both(&mut gpu, &g, &feeds, &[sum, max, sel]).unwrap_or_else(|e| panic!("{e}"));
        let mut abs_feeds = feeds.clone();
        abs_feeds.insert("b", bv.mapv(f64::abs));
        let abs = CpuExecutor::<f64>::new()
            .run(&g, &abs_feeds, &[sum])
            .expect("cpu run");
        let k: usize = axes.iter().map(|&a| shape[a]).product();
        let abs_flat: Vec<f64> = abs[0].iter().copied().collect();
        let desc = format!("{axes:?} of {shape:?} (f64)");
        compare(
            &format!("reduce_sum{desc}"),
            &got[0],
            &want[0],
            |i| format!("sum |x| = {:e}, K = {k}", abs_flat[i]),
            |i| sum_tol64(k, abs_flat[i]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        compare(
            &format!("reduce_max{desc}"),
            &got[1],
            &want[1],
            |i| format!("{i}"),
            |_| 0.0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        compare(
            &format!("select {desc}"),
            &got[2],
            &want[2],
            |i| format!("{i}"),
            |_| 0.0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// matmul [m, k] x [k, n], each entry within sum_tol64(k, (|a| |b|)[i, j]); f64 products of
/// full-mantissa inputs round, unlike products of f32 values.
#[test]
fn gpu_f64_matmul_matches_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_matmul_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(24)
        .run(
            &(
                1usize..=70,
                1usize..=70,
                1usize..=70,
                any::<u64>(),
                any::<bool>(),
            ),
            |(m, k, n, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let (va, vb) = (
                    draw::<f64>(&mut rng, &[m, k], 0),
                    draw::<f64>(&mut rng, &[k, n], 0),
                );
                let mut g = Graph::new();
                let a = g.input("a", [m, k]).expect("input");
                let b = g.input("b", [k, n]).expect("input");
                let c = g.matmul(a, b).expect("matmul");
                let mut feeds = Feeds::<f64>::new();
                feeds.insert("a", va.clone());
                feeds.insert("b", vb.clone());
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[c])?;
                let mut abs_feeds = Feeds::<f64>::new();
                abs_feeds.insert("a", va.mapv(f64::abs));
                abs_feeds.insert("b", vb.mapv(f64::abs));
                let abs = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[c])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let abs_flat: Vec<f64> = abs[0].iter().copied().collect();
                compare(
                    &format!("matmul (f64) [{m}, {k}] x [{k}, {n}]"),
                    &got[0],
                    &want[0],
                    |i| format!("row {}, col {}", i / n, i % n),
                    |i| sum_tol64(k, abs_flat[i]),
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Permute, slice, pad and concat copy values or write zeros; gather copies rows: tolerance 0.
/// scatter_add sums at most n rows: sum_tol64(n, ...). Bad indices are refused by name.
#[test]
fn gpu_f64_movement_and_gather_match_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_movement_and_gather_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    runner(32)
        .run(
            &(
                shape_strategy(4, 7),
                1usize..=9,
                1usize..=12,
                any::<u64>(),
                any::<bool>(),
            ),
            |(shape, rows, n, seed, two_d)| {
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let r = shape.len();
                let mut g = Graph::new();
                let x = g.input("x", shape.clone()).expect("input");
                let mut feeds = Feeds::<f64>::new();
                feeds.insert("x", draw::<f64>(&mut rng, &shape, 0));
                let mut perm: Vec<usize> = (0..r).collect();
                for k in (1..r).rev() {
                    perm.swap(k, rng.random_range(0..=k));
                }
                let mut outs = vec![g.permute(x, &perm).expect("permute")];
                let mut what = vec![format!("permute{perm:?}")];
                if r > 0 {
                    let axis = rng.random_range(0..r);
                    let len = shape[axis];
                    let start = rng.random_range(0..len);
                    let end = rng.random_range(start + 1..=len);
                    outs.push(g.slice(x, axis, start, end, 2).expect("slice"));
                    what.push(format!("slice(axis {axis}, {start}..{end} step 2)"));
                    outs.push(g.pad(x, axis, 1, 2, 1).expect("pad"));
                    what.push(format!("pad(axis {axis}, 1, 2, 1)"));
                    let mut other = shape.clone();
                    other[axis] = rng.random_range(1..=4);
                    let y = g.input("y", other.clone()).expect("input");
                    feeds.insert("y", draw::<f64>(&mut rng, &other, 0));
                    outs.push(g.concat(&[x, y, x], axis).expect("concat"));
                    what.push(format!("concat(x, y {other:?}, x; axis {axis})"));
                }
                // Gather and scatter-add over a [rows, 3] table.
                let table = g.input("table", [rows, 3]).expect("input");
                let idx = g.input("idx", [n]).expect("input");
                let src = g.input("src", [n, 3]).expect("input");
                let ga = g.scoped("emb", |g| g.gather(table, idx)).expect("gather");
                let sc = g
                    .scoped("emb_t", |g| g.add(Op::ScatterAdd { rows }, &[idx, src]))
                    .expect("scatter_add");
                let iv: Vec<f64> = (0..n).map(|_| rng.random_range(0..rows) as f64).collect();
                feeds.insert("table", draw::<f64>(&mut rng, &[rows, 3], 0));
                feeds.insert("idx", array::<f64>(&[n], iv.clone()));
                let sv = draw::<f64>(&mut rng, &[n, 3], 0);
                feeds.insert("src", sv.clone());
                outs.push(ga);
                what.push(format!("gather {rows} rows"));
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                for k in 0..outs.len() {
                    compare(
                        &format!("{} of {shape:?} (f64)", what[k]),
                        &got[k],
                        &want[k],
                        |i| format!("{i}"),
                        |_| 0.0,
                    )?;
                }
                let (got, want) = run_both(&mut gpu, &g, &feeds, &[sc])?;
                let mut abs_feeds = feeds.clone();
                abs_feeds.insert("src", sv.mapv(f64::abs));
                let abs = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[sc])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let a: Vec<f64> = abs[0].iter().copied().collect();
                compare(
                    &format!("scatter_add rows {rows}, n {n} (f64)"),
                    &got[0],
                    &want[0],
                    |i| format!("sum |src| = {:e}", a[i]),
                    |i| sum_tol64(n, a[i]),
                )?;
                for bad in [rows as f64, 0.5, -1.0] {
                    let mut bv = iv.clone();
                    bv[n - 1] = bad;
                    feeds.insert("idx", array::<f64>(&[n], bv));
                    for (out, label) in [(ga, "emb"), (sc, "emb_t")] {
                        match gpu.run(&g, &feeds, &[out]) {
                            Err(ExecError::IndexOutOfRange {
                                label: l, rows: r, ..
                            }) => {
                                prop_assert_eq!(l, label);
                                prop_assert_eq!(r, rows);
                            }
                            other => {
                                prop_assert!(false, "index {} gave {:?}", bad, other.map(|_| ()))
                            }
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Conv2d and its transposes (K terms as in `gpu_conv2d_and_transposes_match_cpu`) within
/// sum_tol64(K, sum |terms|); pooling: max-pool and max-pool-gather pick one input (exact; on
/// inputs `xp` from a few levels with -inf and NaN, so ties and NaN windows are common), the
/// max-pool gradient sums at most 9 cotangents (sum_tol64(9, ..)); avg-pool's sum of K_w <= 9
/// terms and its division, 2 (gamma_9 + u) per share for the gradient, 2 gamma_9 avg |x| +
/// 2 u |y| for the forward.
#[test]
fn gpu_f64_conv_and_pool_match_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_conv_and_pool_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let case = (
        1usize..=2,
        prop::sample::select(vec![2usize, 4]),
        0usize..3,
        1usize..=2,
        prop::sample::select(vec![1usize, 3]),
        (1usize..=2, 0usize..=1, 1usize..=2),
        (3usize..=8, 3usize..=8),
        (any::<u64>(), any::<bool>()),
    );
    runner(24)
        .run(
            &case,
            |(n, c, gsel, omul, k, (stride, pad, dil), (h, w), (seed, two_d))| {
                let groups = [1, 2, c][gsel];
                let o = groups * omul;
                let cp = ConvParams::new(stride, pad, dil, groups);
                let pp = PoolParams::new(3, stride, pad);
                let (Some(oh), Some(ow)) = (cp.out_len(0, h, k), cp.out_len(1, w, k)) else {
                    return Ok(());
                };
                let (Some(ph), Some(pw)) = (pp.out_len(0, h), pp.out_len(1, w)) else {
                    return Ok(());
                };
                let mut gpu = gpu.borrow_mut();
                set_dispatch(&mut gpu, two_d);
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let (xs, ws, ys, ps) = (
                    vec![n, c, h, w],
                    vec![o, c / groups, k, k],
                    vec![n, o, oh, ow],
                    vec![n, c, ph, pw],
                );
                let mut g = Graph::new();
                let x = g.input("x", xs.clone()).expect("input");
                let wt = g.input("w", ws.clone()).expect("input");
                let gy = g.input("gy", ys.clone()).expect("input");
                let gp = g.input("gp", ps.clone()).expect("input");
                let y = g.conv2d(x, wt, cp).expect("conv2d");
                let gx = g
                    .add(
                        Op::Conv2dInputGrad {
                            p: cp,
                            in_hw: [h, w],
                        },
                        &[gy, wt],
                    )
                    .expect("input grad");
                let gw = g
                    .add(
                        Op::Conv2dWeightGrad {
                            p: cp,
                            kernel: [k, k],
                        },
                        &[x, gy],
                    )
                    .expect("weight grad");
                let xp = g.input("xp", xs.clone()).expect("input");
                let avg = g.avg_pool2d(x, pp).expect("avg_pool");
                let avg_g = g
                    .add(
                        Op::AvgPool2dGrad {
                            p: pp,
                            in_hw: [h, w],
                        },
                        &[gp],
                    )
                    .expect("avg grad");
                let mx = g.max_pool2d(xp, pp).expect("max_pool");
                let mx_g = g.add(Op::MaxPool2dGrad(pp), &[xp, gp]).expect("max grad");
                let mx_c = g.add(Op::MaxPool2dGather(pp), &[xp, x]).expect("gather");
                let mut feeds = Feeds::<f64>::new();
                for (name, s) in [("x", &xs), ("w", &ws), ("gy", &ys), ("gp", &ps)] {
                    feeds.insert(name, draw::<f64>(&mut rng, s, 0));
                }
                let levels = [-1.0, 0.0, 0.5, 2.0, f64::NEG_INFINITY];
                let xpv: Vec<f64> = (0..n * c * h * w)
                    .map(|_| {
                        if seed % 4 == 0 && rng.random_range(0..20) == 0 {
                            f64::NAN
                        } else {
                            levels[rng.random_range(0..levels.len())]
                        }
                    })
                    .collect();
                feeds.insert("xp", array::<f64>(&xs, xpv));
                let outs = [y, gx, gw, avg, avg_g, mx, mx_g, mx_c];
                let (got, want) = run_both(&mut gpu, &g, &feeds, &outs)?;
                let mut abs_feeds = Feeds::<f64>::new();
                for name in ["x", "w", "gy", "gp"] {
                    abs_feeds.insert(name, feeds.get(name).expect("fed").mapv(f64::abs));
                }
                // max_pool_grad on |gp| with the argmax of the real xp.
                let mut mx_feeds = abs_feeds.clone();
                mx_feeds.insert("xp", feeds.get("xp").expect("xp").clone());
                let abs = CpuExecutor::<f64>::new()
                    .run(&g, &abs_feeds, &[y, gx, gw, avg, avg_g])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let abs_mx = CpuExecutor::<f64>::new()
                    .run(&g, &mx_feeds, &[mx_g])
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let flat = |a: &ArrayD<f64>| -> Vec<f64> { a.iter().copied().collect() };
                let desc = format!(
                    "x {xs:?} w {ws:?} stride {stride} pad {pad} dil {dil} groups {groups} (f64)"
                );
                let ks = [(c / groups) * k * k, (o / groups) * k * k, n * oh * ow];
                for (j, name) in ["conv2d", "conv2d_input_grad", "conv2d_weight_grad"]
                    .iter()
                    .enumerate()
                {
                    let a = flat(&abs[j]);
                    compare(
                        &format!("{name}, {desc}"),
                        &got[j],
                        &want[j],
                        |i| format!("K = {}, sum |terms| = {:e}", ks[j], a[i]),
                        |i| sum_tol64(ks[j], a[i]),
                    )?;
                }
                let (aa, ag, yv) = (flat(&abs[3]), flat(&abs[4]), flat(&want[3]));
                compare(
                    &format!("avg_pool {desc}"),
                    &got[3],
                    &want[3],
                    |i| format!("avg |x| = {:e}", aa[i]),
                    |i| 2.0 * gamma(9, U64) * aa[i] + 2.0 * U64 * yv[i].abs(),
                )?;
                compare(
                    &format!("avg_pool_grad {desc}"),
                    &got[4],
                    &want[4],
                    |i| format!("sum |gy / count| = {:e}", ag[i]),
                    |i| 2.0 * (gamma(9, U64) + U64) * ag[i],
                )?;
                compare(
                    &format!("max_pool {desc}"),
                    &got[5],
                    &want[5],
                    |i| format!("{i}"),
                    |_| 0.0,
                )?;
                compare(
                    &format!("max_pool_gather {desc}"),
                    &got[7],
                    &want[7],
                    |i| format!("{i}"),
                    |_| 0.0,
                )?;
                let am = flat(&abs_mx[0]);
                compare(
                    &format!("max_pool_grad {desc}"),
                    &got[6],
                    &want[6],
                    |i| format!("sum |gy| = {:e}", am[i]),
                    |i| sum_tol64(9, am[i]),
                )
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Bound on |y_gpu - y_cpu| for log_softmax in f64, first order, each side:
/// t_k = x_k - m rounds (u |t_k|), exp adds its error (EXP_U u on the device, LIBM_U u on the
/// host); the sum of n positive terms adds gamma_n(u), so s has relative error at most
/// E + u max|t_k| + gamma_n(u), which moves log s by that much (absolute); log itself adds
/// LOG_U u |log s| (device) or LIBM_U u |log s| (host); the two roundings m + log s and
/// x_j - lse add u (|lse| + |y_j|).
fn log_softmax_tol64(lane: &[f64], y: f64) -> f64 {
    let n = lane.len();
    let m = lane.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = lane.iter().map(|v| (v - m).exp()).sum();
    let t_max = lane.iter().map(|v| (v - m).abs()).fold(0.0, f64::max);
    let lse = m + s.ln();
    (f64_probe::EXP_U + f64_probe::LIBM_U) * U64
        + 2.0 * (U64 * t_max + gamma(n, U64))
        + (f64_probe::LOG_U + f64_probe::LIBM_U) * U64 * s.ln().abs()
        + 2.0 * U64 * (lse.abs() + y.abs())
}

#[test]
fn gpu_f64_log_softmax_matches_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_log_softmax_matches_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let case = shape_strategy(3, 12)
        .prop_filter("rank >= 1", |s| !s.is_empty())
        .prop_flat_map(|s| {
            let r = s.len();
            (Just(s), 0..r, any::<u64>(), any::<bool>())
        });
    runner(32)
        .run(&case, |(shape, axis, seed, two_d)| {
            let mut gpu = gpu.borrow_mut();
            set_dispatch(&mut gpu, two_d);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut g = Graph::new();
            let x = g.input("x", shape.clone()).expect("input");
            let y = g.log_softmax(x, axis).expect("log_softmax");
            let xv: Vec<f64> = (0..shape.iter().product::<usize>())
                .map(|_| rng.random_range(-40.0..=40.0))
                .collect();
            let mut feeds = Feeds::<f64>::new();
            feeds.insert("x", array::<f64>(&shape, xv.clone()));
            let (got, want) = run_both(&mut gpu, &g, &feeds, &[y])?;
            let inner: usize = shape[axis + 1..].iter().product();
            let n = shape[axis];
            let lane = |i: usize| -> Vec<f64> {
                let base = (i / (n * inner)) * n * inner + i % inner;
                (0..n).map(|j| xv[base + j * inner]).collect()
            };
            let wv: Vec<f64> = want[0].iter().copied().collect();
            compare(
                &format!("log_softmax(axis {axis}) of {shape:?} (f64)"),
                &got[0],
                &want[0],
                |i| format!("x = {:e}", xv[i]),
                |i| log_softmax_tol64(&lane(i), wv[i]),
            )
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Variables on the f64 device: set_var and var round-trip exactly, and three momentum-SGD
/// steps through run_assign (buf <- 0.9 buf + g, w <- w - lr buf, one correctly rounded
/// operation per element and step) equal the CPU f64 executor's bit for bit, which also
/// checks that a Const (0.9) reaches the device as the f64 nearest 0.9, not an f32.
#[test]
fn gpu_f64_variables_match_cpu_exactly() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_variables_match_cpu_exactly") else {
        return;
    };
    let mut cpu = CpuExecutor::<f64>::new();
    let mut g = Graph::new();
    let w = g.input("w", [2, 3]).expect("input");
    let buf = g.input("buf", [2, 3]).expect("input");
    let grad = g.input("g", [2, 3]).expect("input");
    let lr = g.input("lr", [] as [usize; 0]).expect("input");
    let mu = g.scalar(0.9).expect("scalar");
    let mb = g.mul(mu, buf).expect("mul");
    let nb = g.add2(mb, grad).expect("add");
    let step = g.mul(lr, nb).expect("mul");
    let nw = g.sub(w, step).expect("sub");
    let w0 = array::<f64>(&[2, 3], (0..6).map(|i| (i as f64 - 2.5) / 3.0).collect());
    for exec in [&mut gpu as &mut dyn Executor<f64>, &mut cpu] {
        exec.set_var("w", &w0).expect("set w");
        exec.set_var("buf", &array::<f64>(&[2, 3], vec![0.0; 6]))
            .expect("set buf");
        assert_eq!(exec.var("w").expect("read w"), w0, "{}", exec.name());
        for k in 0..3 {
            let mut f = Feeds::<f64>::new();
            f.insert(
                "g",
                array::<f64>(
                    &[2, 3],
                    (0..6).map(|i| (i as f64 + 1.0) / 7.0 + k as f64).collect(),
                ),
            );
            f.insert("lr", array::<f64>(&[], vec![0.1]));
            exec.run_assign(&g, &f, &[], &[(nw, "w".into()), (nb, "buf".into())])
                .expect("step");
        }
    }
    assert!(gpu.name().starts_with("gpu-f64"), "{}", gpu.name());
    for v in ["w", "buf"] {
        assert_eq!(
            gpu.var(v).expect("gpu var"),
            cpu.var(v).expect("cpu var"),
            "{v}"
        );
    }
}

/// The DARTS search network of `gpu_search_network_gradients_match_cpu` in f64 on both sides:
/// loss, grad_w and grad_alpha within evaluation_bound(K, depth, M, 2^-53) per side. The
/// prelude's exp/log/tanh errors (a few u) sit inside the one rounding per node and term that
/// bound already allows.
#[test]
fn gpu_f64_search_network_gradients_match_cpu() {
    use darts::darts::network::SearchConfig;
    use darts::search::architect::NetGraph;
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_search_network_gradients_match_cpu")
    else {
        return;
    };
    for smooth in [false, true] {
        let cfg = SearchConfig {
            c: 2,
            layers: 3,
            smooth,
            ..SearchConfig::paper()
        };
        let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).expect("search network");
        let st = common::state(&cfg, 3);
        let point = common::point(&cfg, &st);
        let batch = common::batch(2, 8, cfg.num_classes, 4);
        let mut feeds = Feeds::<f64>::new();
        for (i, (n, a)) in point.weights.iter().enumerate() {
            feeds.insert(n.clone(), a.clone());
            feeds.insert(format!("v/{n}"), a.mapv(|v| (v * 1e3 + i as f64).sin()));
        }
        feeds.insert("alpha/normal", point.alpha[0].clone());
        feeds.insert("alpha/reduce", point.alpha[1].clone());
        feeds.insert("x", batch.x.clone());
        feeds.insert("onehot", batch.onehot.clone());
        let mut outs = vec![net.loss, net.grad_alpha[0], net.grad_alpha[1]];
        outs.extend(&net.grad_w);
        let mut names = vec![
            "loss".to_string(),
            "grad_alpha/normal".into(),
            "grad_alpha/reduce".into(),
        ];
        names.extend(point.weights.iter().map(|(n, _)| format!("grad_w/{n}")));
        if smooth {
            outs.extend(net.hvp_alpha);
            names.extend(["hvp/normal".to_string(), "hvp/reduce".to_string()]);
        }
        let worst = assert_gpu_matches_cpu(&mut gpu, &net.graph, &feeds, &outs, &names);
        println!(
            "search network in f64 (smooth {smooth}): {} outputs, worst |gpu - cpu| / tol = \
             {worst:.3e}",
            outs.len()
        );
    }
}
