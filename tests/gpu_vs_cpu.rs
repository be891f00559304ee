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
use darts::exec::gpu::GpuExecutor;
use darts::exec::{ExecError, Executor, Feeds};
use darts::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
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
fn compare(
    what: &str,
    gpu: &ArrayD<f32>,
    cpu: &ArrayD<f64>,
    input: impl Fn(usize) -> String,
    tol: impl Fn(usize) -> f64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(gpu.shape(), cpu.shape(), "{}: shapes differ", what);
    for (i, (&g, &c)) in gpu.iter().zip(cpu.iter()).enumerate() {
        let g = g as f64;
        let t = tol(i);
        let ok = if c.is_nan() {
            g.is_nan()
        } else {
            !g.is_nan() && (g - c).abs() <= t
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

fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).expect("data matches shape")
}

/// A value of mixed scale: uniform in [-range, range], uniform in [-1, 1], or log-uniform in
/// magnitude over [1e-6, 1] with a random sign, and exactly 0 or -0 now and then.
fn mixed(rng: &mut ChaCha8Rng, range: f32) -> f32 {
    match rng.random_range(0..20) {
        0 => 0.0,
        1 => -0.0,
        2..=10 => rng.random_range(-range..=range),
        11..=15 => rng.random_range(-1.0f32..=1.0),
        _ => {
            let m = 10f32.powf(rng.random_range(-6.0f32..=0.0));
            if rng.random_bool(0.5) {
                m
            } else {
                -m
            }
        }
    }
}

/// log-uniform in [lo, hi].
fn log_uniform(rng: &mut ChaCha8Rng, lo: f32, hi: f32) -> f32 {
    10f32.powf(rng.random_range(lo.log10()..=hi.log10()))
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

/// The GPU (f32) and CPU (f64) values of the same outputs.
type GpuAndCpu = (Vec<ArrayD<f32>>, Vec<ArrayD<f64>>);

fn run_both(
    gpu: &mut GpuExecutor,
    g: &Graph,
    feeds: &Feeds<f32>,
    outs: &[NodeId],
) -> Result<GpuAndCpu, TestCaseError> {
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
fn set_dispatch(gpu: &mut GpuExecutor, two_d: bool) {
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
fn gpu_reports_unsupported_op_clearly() {
    let Some(mut gpu) = common::gpu_executor("gpu_reports_unsupported_op_clearly") else {
        return;
    };
    let mut g = Graph::new();
    let x = g.input("x", [2, 5]).expect("input");
    let y = g.exp(x).expect("exp");
    let l = g
        .scoped("head", |g| g.log_softmax(y, 1))
        .expect("log_softmax");
    // No feeds at all: the refusal comes before any feed is read or any work is recorded.
    let err = gpu
        .run(&g, &Feeds::new(), &[l])
        .expect_err("log_softmax has no GPU kernel");
    match &err {
        ExecError::Unsupported { backend, op, label } => {
            assert!(backend.starts_with("gpu-f32"), "{backend}");
            assert!(op.contains("log_softmax"), "{op}");
            assert_eq!(label, "head");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("no kernel for log_softmax") && msg.contains("'head'"),
        "{msg}"
    );
    // The supported part of the same graph still runs.
    let mut feeds = Feeds::<f32>::new();
    feeds.insert("x", array(&[2, 5], vec![0.5; 10]));
    let out = gpu.run(&g, &feeds, &[y]).expect("exp runs");
    assert!(out[0]
        .iter()
        .all(|&v| (v as f64 - 0.5f64.exp()).abs() <= unary_tol(UnaryOp::Exp, 0.5, 0.5f64.exp())));
}
