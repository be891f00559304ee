//! The GPU executor against the CPU reference executor (f64), on random shapes, in both of the
//! GPU's element types: f32 (every adapter; the `gpu_*` tests) and f64 (where the adapter offers
//! SHADER_F64; the `gpu_f64_*` tests). Each check is written once, generic over the element
//! type; what a check chooses per type (input domains, special values, the tolerances that
//! depend on the device's arithmetic) comes from [`Precision`], and each test is a wrapper that
//! runs a check on its executor.
//!
//! f32: inputs are drawn as f32 values and fed to both sides unchanged, so the f32 rounding of
//! the inputs is zero and every difference comes from the arithmetic. Each tolerance is a bound
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
//! f64: see the comment above `impl Precision for f64`.
//!
//! Cases are drawn by proptest from a fixed seed (`TestRng::deterministic_rng`); about half the
//! cases cap the workgroups per dispatch dimension at 16, so the 2-D dispatch that tensors
//! beyond 65535 workgroups need is exercised on small shapes.

mod common;

use darts::exec::cpu::CpuExecutor;
use darts::exec::gpu::probe::{self as f64_probe, Probe};
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

const UNARY_OPS: [UnaryOp; 12] = UnaryOp::ALL;

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

/// Error bound of a sum of K terms computed on both sides: (gamma_K(u) + gamma_K(2^-53)) times
/// sum |terms|, u the device's unit roundoff (2^-24 in f32; in f64, 2 gamma_K(2^-53) in all).
fn sum_tol<T: Scalar>(k: usize, abs_sum: f64) -> f64 {
    (gamma(k, T::UNIT_ROUNDOFF) + gamma(k, U64)) * abs_sum
}

/// What the checks choose per GPU element type, beyond its unit roundoff u
/// (`Scalar::UNIT_ROUNDOFF`: 2^-24 for f32, 2^-53 for f64).
trait Precision: GpuScalar + SampleUniform {
    /// What the conv, pool and scatter-add checks add to their bounds for a subnormal result
    /// the device may flush to zero.
    const SUM_FLUSH: f64;
    /// The device's error bound for one division x / y, in units of u.
    const DIV_U: f64;
    /// Whether the binary check divides by the operand b itself (zero included) rather than by
    /// a nonzero divisor drawn for the purpose.
    const DIVIDES_BY_ZERO: bool;
    /// log_softmax's inputs are uniform in [-LOGIT_RANGE, LOGIT_RANGE].
    const LOGIT_RANGE: f64;
    /// A random input in the domain the unary `op` is checked on.
    fn unary_input(op: UnaryOp, rng: &mut ChaCha8Rng) -> Self;
    /// The kink, tie, NaN and range-end values the unary `op` is checked on.
    fn special_inputs(op: UnaryOp) -> Vec<Self>;
    /// Bound on |f_gpu(x) - f_cpu(x)| for the unary `op`, given the exact value y.
    fn unary_tol(op: UnaryOp, x: f64, y: f64) -> f64;
    /// Bound on |g_gpu(a, b) - g_cpu(a, b)| for the binary `op`, given the exact value y.
    fn binary_tol(op: BinaryOp, y: f64) -> f64;
    /// Bound on |y_gpu - y_cpu| for log_softmax at input x, output y, on its `lane`.
    fn log_softmax_tol(lane: &[f64], y: f64, x: f64) -> f64;
}

impl Precision for f32 {
    /// 2^-126: WGSL lets an f32 implementation flush subnormal results to zero.
    const SUM_FLUSH: f64 = FLUSH;
    /// WGSL: 2.5 ULP for |y| in [2^-126, 2^126], and one ULP <= 2 U32 |v|: 5.
    const DIV_U: f64 = 5.0;
    /// No: WGSL bounds the f32 x / y only for |y| in [2^-126, 2^126], so the divisor is drawn
    /// with magnitude in [1e-6, 10] (`binary_input` with `nonzero`).
    const DIVIDES_BY_ZERO: bool = false;
    /// 20: then |t_k| = |x_k - m| <= 40, so exp's 3 + 2|t| ULP (in `log_softmax_tol`) stays
    /// at most 83 ULP.
    const LOGIT_RANGE: f64 = 20.0;
    fn unary_input(op: UnaryOp, rng: &mut ChaCha8Rng) -> f32 {
        unary_input(op, rng)
    }
    fn special_inputs(op: UnaryOp) -> Vec<f32> {
        special_inputs(op)
    }
    fn unary_tol(op: UnaryOp, x: f64, y: f64) -> f64 {
        unary_tol(op, x, y)
    }
    fn binary_tol(op: BinaryOp, y: f64) -> f64 {
        binary_tol(op, y)
    }
    fn log_softmax_tol(lane: &[f64], y: f64, x: f64) -> f64 {
        log_softmax_tol(lane, y, x)
    }
}

/// The relative sensitivity of sigmoid(x) to the e its kernels compute: sigmoid = 1 / (1 + e)
/// with e = exp(-x) for x >= 0, e / (1 + e) with e = exp(x) for x < 0, so a relative error r
/// in e moves sigmoid by r e / (1 + e) and r / (1 + e) relative, respectively.
fn sigmoid_sensitivity(x: f64) -> f64 {
    let e = (-x.abs()).exp();
    if x >= 0.0 {
        e / (1.0 + e)
    } else {
        1.0 / (1.0 + e)
    }
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
        UnaryOp::Sigmoid => (sigmoid_sensitivity(x) * exp_rel(x) + 6.0 * U32) * y.abs(),
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
impl Precision for f64 {
    /// 0: the inputs of the f64 conv, pool and scatter-add checks are 0 or at least 2^-53 in
    /// magnitude, so no product, sum of products or quotient by a window count of them comes
    /// near the subnormal range (below 2^-1022).
    const SUM_FLUSH: f64 = 0.0;
    /// Correctly rounded on both sides: 1.
    const DIV_U: f64 = 1.0;
    /// Yes: both sides divide correctly rounded, so ±0, ±inf and NaN quotients must agree
    /// exactly too.
    const DIVIDES_BY_ZERO: bool = true;
    /// 40: the prelude's exp bound (probe::EXP_U u) does not grow with |t_k|.
    const LOGIT_RANGE: f64 = 40.0;
    fn unary_input(op: UnaryOp, rng: &mut ChaCha8Rng) -> f64 {
        unary_input64(op, rng)
    }
    fn special_inputs(_: UnaryOp) -> Vec<f64> {
        SPECIALS64.to_vec()
    }
    fn unary_tol(op: UnaryOp, x: f64, y: f64) -> f64 {
        unary_tol64(op, x, y)
    }
    /// Every binary op is one correctly rounded operation or exact: 0 (division by zero, NaN
    /// and ties included).
    fn binary_tol(_: BinaryOp, _: f64) -> f64 {
        0.0
    }
    fn log_softmax_tol(lane: &[f64], y: f64, _: f64) -> f64 {
        log_softmax_tol64(lane, y)
    }
}

/// Smallest normal f64, 2^-1022: the most a flushed subnormal result is off by.
const FLUSH64: f64 = f64::MIN_POSITIVE;

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
        UnaryOp::Sigmoid => (sigmoid_sensitivity(x) * exp_rel + 4.0 * U64) * y.abs(),
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

/// Runs `check` with the executor on `count` cases that `runner(count)` draws from
/// `strategy`; a failing case (shrunk) panics with its message.
fn run_cases<T: GpuScalar, S: Strategy>(
    gpu: GpuExecutor<T>,
    count: u32,
    strategy: S,
    check: impl Fn(&mut GpuExecutor<T>, S::Value) -> Result<(), TestCaseError>,
) {
    let gpu = RefCell::new(gpu);
    runner(count)
        .run(&strategy, |case| check(&mut gpu.borrow_mut(), case))
        .unwrap_or_else(|e| panic!("{e}"));
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

/// The GPU (f32 or f64) and CPU (f64) values of the same outputs.
type GpuAndCpu<T = f32> = (Vec<ArrayD<T>>, Vec<ArrayD<f64>>);

fn run_both<T: GpuScalar>(
    gpu: &mut GpuExecutor<T>,
    g: &Graph,
    feeds: &Feeds<T>,
    outs: &[NodeId],
) -> Result<GpuAndCpu<T>, TestCaseError> {
    // The single-op kernels (fusion off), the values the per-primitive tolerances speak about.
    gpu.set_fusion(false);
    let got = gpu.run(g, feeds, outs);
    gpu.set_fusion(true);
    let got = got.map_err(|e| TestCaseError::fail(format!("gpu run failed: {e}")))?;
    // The fused kernels (the default path). Where fusion merged no two nodes, each fused
    // kernel evaluates one op with the same WGSL function as its single-op kernel, so the
    // values agree bit for bit; chains of ops are checked against their own error bound in
    // tests/gpu_fusion.rs.
    let fused = gpu
        .run(g, feeds, outs)
        .map_err(|e| TestCaseError::fail(format!("gpu run (fused kernels) failed: {e}")))?;
    if gpu.run_timing().fused_away == 0 {
        for (k, (a, b)) in got.iter().zip(&fused).enumerate() {
            if let Some((i, (x, y))) = a
                .iter()
                .zip(b.iter())
                .enumerate()
                .find(|(_, (x, y))| x.as_f64().to_bits() != y.as_f64().to_bits())
            {
                return Err(TestCaseError::fail(format!(
                    "output {k} element {i}: single-op kernel {x:e}, fused kernel {y:e}"
                )));
            }
        }
    }
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

/// Split every reduction of at most `REDUCE_SPLIT_MAX_OUT` outputs (`on`), or none: the
/// split kernels (`*_split` then `*_finish`) or the one-dispatch ones, whatever the adapter's
/// default. The drawn reduction cases split when their seed is even.
fn set_split<T: GpuScalar>(gpu: &mut GpuExecutor<T>, on: bool) {
    gpu.set_split_min(if on { 1 } else { u32::MAX });
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
fn abs_run<T: Scalar>(
    g: &Graph,
    feeds: &Feeds<T>,
    names: &[&str],
    outs: &[NodeId],
) -> Result<Vec<ArrayD<f64>>, TestCaseError> {
    let mut f = Feeds::<f64>::new();
    for n in names {
        f.insert(*n, feeds.get(n).expect("fed").mapv(|v| v.as_f64().abs()));
    }
    CpuExecutor::<f64>::new()
        .run(g, &f, outs)
        .map_err(|e| TestCaseError::fail(format!("cpu run on |feeds| failed: {e}")))
}

/// Every unary op on its special values (`Precision::special_inputs`: kinks, ties, NaN), then
/// on 24 random shapes with inputs from `Precision::unary_input`, each output within
/// `Precision::unary_tol`.
fn unary_matches_cpu<T: Precision>(mut gpu: GpuExecutor<T>) {
    let specials: Vec<(Vec<usize>, Vec<T>)> = UNARY_OPS
        .iter()
        .map(|&op| {
            let v = T::special_inputs(op);
            (vec![v.len()], v)
        })
        .collect();
    check_unary(&mut gpu, "special values", &specials).unwrap_or_else(|e| panic!("{e}"));
    run_cases(
        gpu,
        24,
        (shape_strategy(3, 24), any::<u64>(), any::<bool>()),
        |gpu, (shape, seed, two_d)| {
            set_dispatch(gpu, two_d);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let n: usize = shape.iter().product();
            let inputs: Vec<(Vec<usize>, Vec<T>)> = UNARY_OPS
                .iter()
                .map(|&op| {
                    let vals = (0..n).map(|_| T::unary_input(op, &mut rng)).collect();
                    (shape.clone(), vals)
                })
                .collect();
            check_unary(gpu, &format!("{shape:?}"), &inputs)
        },
    );
}

/// Every unary op in one graph, `UNARY_OPS[k]` on `inputs[k]` (shape, values).
fn check_unary<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    what: &str,
    inputs: &[(Vec<usize>, Vec<T>)],
) -> Result<(), TestCaseError> {
    let mut g = Graph::new();
    let mut feeds = Feeds::<T>::new();
    let mut outs = Vec::new();
    for (op, (shape, vals)) in UNARY_OPS.iter().zip(inputs) {
        let name = format!("{op:?}");
        let x = g.input(name.clone(), shape.clone()).expect("input");
        feeds.insert(name, array(shape, vals.clone()));
        outs.push(g.unary(*op, x).expect("unary"));
    }
    let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
    for (k, (op, (_, xs))) in UNARY_OPS.iter().zip(inputs).enumerate() {
        let w: Vec<f64> = want[k].iter().copied().collect();
        compare(
            &format!("{op:?} ({}) on {what}", T::NAME),
            &got[k],
            &want[k],
            |i| format!("x = {:e}", xs[i]),
            |i| T::unary_tol(*op, xs[i].as_f64(), w[i]),
        )?;
    }
    Ok(())
}

#[test]
fn gpu_unary_matches_cpu() {
    if let Some(gpu) = common::gpu_executor("gpu_unary_matches_cpu") {
        unary_matches_cpu(gpu);
    }
}

#[test]
fn gpu_f64_unary_matches_cpu() {
    if let Some(gpu) = common::gpu_f64_executor("gpu_f64_unary_matches_cpu") {
        unary_matches_cpu(gpu);
    }
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
/// pairs (and, where the check divides by b, division by zero) are common, NaN with
/// probability 0.02, otherwise `mixed` in [-10, 10]. With `nonzero`, magnitudes stay in
/// [1e-6, 10] (a divisor WGSL's 2.5 ULP bound covers).
fn binary_input<T: Scalar + SampleUniform>(rng: &mut ChaCha8Rng, nonzero: bool) -> T {
    if rng.random_bool(0.02) {
        return T::nan();
    }
    if nonzero {
        let m = log_uniform(rng, T::of(1e-6), T::of(10.0));
        return if rng.random_bool(0.5) { m } else { -m };
    }
    if rng.random_bool(0.3) {
        return T::of([-1.0, -0.0, 0.0, 1.0, 2.0][rng.random_range(0..5)]);
    }
    mixed(rng, T::of(10.0))
}

/// Every binary op on operands broadcast from random shapes (32 cases), each output within
/// `Precision::binary_tol`; the division's divisor is b itself or a nonzero draw
/// (`Precision::DIVIDES_BY_ZERO`).
fn binary_broadcast_matches_cpu<T: Precision>(gpu: GpuExecutor<T>) {
    run_cases(
        gpu,
        32,
        (shape_strategy(4, 9), any::<u64>(), any::<bool>()),
        |gpu, (out_shape, seed, two_d)| {
            set_dispatch(gpu, two_d);
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
                array(s, (0..n).map(|_| binary_input::<T>(rng, nz)).collect())
            };
            let va = draw(&sa, false, &mut rng);
            let vb = draw(&sb, false, &mut rng);
            let mut g = Graph::new();
            let a = g.input("a", sa.clone()).expect("input");
            let b = g.input("b", sb.clone()).expect("input");
            let mut feeds = Feeds::<T>::new();
            feeds.insert("a", va.clone());
            feeds.insert("b", vb.clone());
            let (d, vd) = if T::DIVIDES_BY_ZERO {
                (b, vb.clone())
            } else {
                let vd = draw(&sb, true, &mut rng);
                feeds.insert("d", vd.clone());
                (g.input("d", sb.clone()).expect("input"), vd)
            };
            let outs: Vec<NodeId> = BINARY_OPS
                .iter()
                .map(|&op| {
                    let rhs = if op == BinaryOp::Div { d } else { b };
                    g.binary(op, a, rhs).expect("broadcastable")
                })
                .collect();
            let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
            let flat = |v: &ArrayD<T>, what: &str| -> Vec<f64> {
                let bv = v.broadcast(IxDyn(&out_shape)).expect(what);
                bv.iter().map(|x| x.as_f64()).collect()
            };
            let (fa, fb, fd) = (flat(&va, "a"), flat(&vb, "b"), flat(&vd, "d"));
            for (k, &op) in BINARY_OPS.iter().enumerate() {
                let w_flat: Vec<f64> = want[k].iter().copied().collect();
                let rhs = if op == BinaryOp::Div { &fd } else { &fb };
                compare(
                    &format!("{op:?} ({}): {sa:?} with {sb:?}", T::NAME),
                    &got[k],
                    &want[k],
                    |i| format!("a = {:e}, b = {:e}", fa[i], rhs[i]),
                    |i| T::binary_tol(op, w_flat[i]),
                )?;
            }
            Ok(())
        },
    );
}

#[test]
fn gpu_binary_broadcast_matches_cpu() {
    if let Some(gpu) = common::gpu_executor("gpu_binary_broadcast_matches_cpu") {
        binary_broadcast_matches_cpu(gpu);
    }
}

#[test]
fn gpu_f64_binary_broadcast_matches_cpu() {
    if let Some(gpu) = common::gpu_f64_executor("gpu_f64_binary_broadcast_matches_cpu") {
        binary_broadcast_matches_cpu(gpu);
    }
}

/// A reduction case: a shape of rank 0-4 with extents 1..=max_extent, the axes to reduce
/// (each with probability 1/2), a seed and the 2-D dispatch flag.
fn reduce_cases(max_extent: usize) -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64, bool)> {
    shape_strategy(4, max_extent)
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
        })
}

/// `fixed`, then `count` cases drawn from `strategy` by `runner(count)`.
fn fixed_then_drawn<S: Strategy>(strategy: S, fixed: Vec<S::Value>, count: u32) -> Vec<S::Value> {
    let mut cases = fixed;
    let mut runner = runner(count);
    for _ in 0..count {
        cases.push(strategy.new_tree(&mut runner).expect("case").current());
    }
    cases
}

/// Runs reduce_sum(x, axes) on both sides and checks each output against
/// sum_tol(K, sum |x|) over its K = prod(reduced extents) terms; sum |x| comes from the CPU
/// running the same graph on |x|.
fn check_reduce<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    shape: &[usize],
    axes: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let xi = g.input("x", shape.to_vec()).expect("input");
    let s = g.reduce_sum(xi, axes).expect("reduce_sum");
    let mut feeds = Feeds::<T>::new();
    feeds.insert("x", draw::<T>(&mut rng, shape, 0));
    let (got, want) = run_both(gpu, &g, &feeds, &[s])?;
    let abs_sum = abs_run(&g, &feeds, &["x"], &[s])?;
    let k: usize = axes.iter().map(|&a| shape[a]).product();
    let abs_flat: Vec<f64> = abs_sum[0].iter().copied().collect();
    compare(
        &format!("reduce_sum{axes:?} of {shape:?} ({})", T::NAME),
        &got[0],
        &want[0],
        |i| format!("sum |x| = {:e}, K = {k}", abs_flat[i]),
        |i| sum_tol::<T>(k, abs_flat[i]),
    )
}

/// Select and ReduceMax pick one of their inputs (NaN included), so the tolerance is 0:
/// the GPU result must equal the input the CPU picked, exactly. select(c, a, b) with c from
/// {0, -0, 1, -2.5, NaN}; reduce_max(a, axes) with a NaN in about one of 50 elements of a for
/// one seed in 3.
fn check_select_and_reduce_max<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    shape: &[usize],
    axes: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let c = g.input("c", shape.to_vec()).expect("input");
    let a = g.input("a", shape.to_vec()).expect("input");
    let b = g.input("b", shape.to_vec()).expect("input");
    let sel = g.select(c, a, b).expect("select");
    let m = g.reduce_max(a, axes).expect("reduce_max");
    let mut feeds = Feeds::<T>::new();
    let n: usize = shape.iter().product();
    let cv: Vec<T> = (0..n)
        .map(|_| T::of([0.0, -0.0, 1.0, -2.5, f64::NAN][rng.random_range(0..5)]))
        .collect();
    feeds.insert("c", array(shape, cv));
    feeds.insert(
        "a",
        draw(&mut rng, shape, if seed % 3 == 0 { 50 } else { 0 }),
    );
    feeds.insert("b", draw(&mut rng, shape, 0));
    let (got, want) = run_both(gpu, &g, &feeds, &[sel, m])?;
    let desc = format!("{axes:?} of {shape:?} ({})", T::NAME);
    compare(
        &format!("select {desc}"),
        &got[0],
        &want[0],
        |i| format!("{i}"),
        |_| 0.0,
    )?;
    compare(
        &format!("reduce_max{desc}"),
        &got[1],
        &want[1],
        |i| format!("{i}"),
        |_| 0.0,
    )
}

#[test]
fn gpu_reduce_sum_matches_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_reduce_sum_matches_cpu") else {
        return;
    };
    // Reductions long enough for the workgroup kernel (K >= 512), contiguous and strided,
    // and with 2-D dispatch, each in one dispatch and split (K = 2000 over 256 chunks of 8,
    // K = 70,000 over 256 chunks of 274, the last one short).
    for (shape, axes, two_d) in [
        (vec![3, 2000], vec![1], false),
        (vec![2000, 3], vec![0], true),
        (vec![4, 700], vec![0, 1], false),
        (vec![5, 40, 3, 20], vec![1, 3], true),
        (vec![2, 70_000], vec![1], true),
        // Three reduced axes after merging (the kernels' fallback to a division per term),
        // and two with an outer extent (the carried coordinates).
        (vec![3, 2, 40, 3, 5], vec![0, 2, 4], false),
        (vec![7, 3, 300], vec![0, 2], false),
    ] {
        for split in [false, true] {
            set_dispatch(&mut gpu, two_d);
            set_split(&mut gpu, split);
            check_reduce(&mut gpu, &shape, &axes, 7).unwrap_or_else(|e| panic!("{e}"));
            // The split ran (a chunk pass and a finishing pass) where its grid fits.
            let want = if split && (!two_d || shape.len() == axes.len()) {
                2
            } else {
                1
            };
            assert_eq!(gpu.run_timing().dispatches, want, "{shape:?} {axes:?}");
        }
    }
    run_cases(
        gpu,
        32,
        reduce_cases(12),
        |gpu, (shape, axes, seed, two_d)| {
            set_dispatch(gpu, two_d);
            set_split(gpu, seed % 2 == 0);
            check_reduce(gpu, &shape, &axes, seed)
        },
    );
}

#[test]
fn gpu_select_and_reduce_max_match_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_select_and_reduce_max_match_cpu") else {
        return;
    };
    let fixed = vec![
        (vec![3, 1500], vec![1], 5, false),
        (vec![700, 2], vec![0], 6, true),
        (vec![3, 1500], vec![1], 12, false),
        (vec![700, 2], vec![0], 9, true),
        (vec![3, 2, 40, 3, 5], vec![0, 2, 4], 3, false),
        (vec![3, 2, 40, 3, 5], vec![0, 2, 4], 4, false),
        (vec![7, 3, 300], vec![0, 2], 15, false),
    ];
    for (shape, axes, seed, two_d) in fixed_then_drawn(reduce_cases(9), fixed, 24) {
        set_dispatch(&mut gpu, two_d);
        set_split(&mut gpu, seed % 2 == 0);
        check_select_and_reduce_max(&mut gpu, &shape, &axes, seed)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// reduce_sum (each output within sum_tol(K, sum |x|)), reduce_max and select (exact), on
/// random shapes and axes, and on reductions long enough for the workgroup kernels.
#[test]
fn gpu_f64_reductions_and_select_match_cpu() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_reductions_and_select_match_cpu") else {
        return;
    };
    let fixed = vec![
        (vec![3, 2000], vec![1], 7, false),
        (vec![2000, 3], vec![0], 8, true),
        (vec![5, 40, 3, 20], vec![1, 3], 9, true),
        (vec![5, 40, 3, 20], vec![1, 3], 10, true),
    ];
    for (shape, axes, seed, two_d) in fixed_then_drawn(reduce_cases(12), fixed, 32) {
        set_dispatch(&mut gpu, two_d);
        set_split(&mut gpu, seed % 2 == 0);
        check_reduce(&mut gpu, &shape, &axes, seed)
            .and_then(|()| check_select_and_reduce_max(&mut gpu, &shape, &axes, seed))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// a [m, k] @ b [k, n] on both sides, each entry within sum_tol(k, (|a| |b|)[i, j]);
/// |a| |b| comes from the CPU in f64. (In f64 the products of full-mantissa inputs round on
/// both sides, unlike products of f32 values in the f64 reference.)
fn check_matmul<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    m: usize,
    k: usize,
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let a = g.input("a", [m, k]).expect("input");
    let b = g.input("b", [k, n]).expect("input");
    let c = g.matmul(a, b).expect("matmul");
    let mut feeds = Feeds::<T>::new();
    feeds.insert("a", draw::<T>(&mut rng, &[m, k], 0));
    feeds.insert("b", draw::<T>(&mut rng, &[k, n], 0));
    let (got, want) = run_both(gpu, &g, &feeds, &[c])?;
    let abs_prod = abs_run(&g, &feeds, &["a", "b"], &[c])?;
    let abs_flat: Vec<f64> = abs_prod[0].iter().copied().collect();
    compare(
        &format!("matmul ({}) [{m}, {k}] x [{k}, {n}]", T::NAME),
        &got[0],
        &want[0],
        |i| format!("row {}, col {}", i / n, i % n),
        |i| sum_tol::<T>(k, abs_flat[i]),
    )
}

/// `check_matmul` on several 16 x 16 tiles with a ragged tail in every dimension (1-D and 2-D
/// dispatch), then on 24 random sizes up to 70.
fn matmul_matches_cpu<T: Precision>(mut gpu: GpuExecutor<T>) {
    for two_d in [false, true] {
        set_dispatch(&mut gpu, two_d);
        check_matmul(&mut gpu, 33, 47, 65, 11).unwrap_or_else(|e| panic!("{e}"));
    }
    run_cases(
        gpu,
        24,
        (
            1usize..=70,
            1usize..=70,
            1usize..=70,
            any::<u64>(),
            any::<bool>(),
        ),
        |gpu, (m, k, n, seed, two_d)| {
            set_dispatch(gpu, two_d);
            check_matmul(gpu, m, k, n, seed)
        },
    );
}

#[test]
fn gpu_matmul_matches_cpu() {
    if let Some(gpu) = common::gpu_executor("gpu_matmul_matches_cpu") {
        matmul_matches_cpu(gpu);
    }
}

#[test]
fn gpu_f64_matmul_matches_cpu() {
    if let Some(gpu) = common::gpu_f64_executor("gpu_f64_matmul_matches_cpu") {
        matmul_matches_cpu(gpu);
    }
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
    run_cases(
        gpu,
        16,
        (
            1usize..=40,
            1usize..=40,
            1usize..=40,
            any::<u64>(),
            any::<bool>(),
        ),
        |gpu, (m, k, n, seed, two_d)| {
            set_dispatch(gpu, two_d);
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
            let (got, want) = run_both(gpu, &g, &feeds, &[r, s, z, t])?;
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
    );
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

/// Permute, Slice, Pad and Concat of x (shape `shape`) copy values or write zeros: tolerance
/// 0. Slice takes a random axis, range and step 1-3; pad 0-2 before, after and between.
fn check_movement<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    shape: &[usize],
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let r = shape.len();
    let mut g = Graph::new();
    let x = g.input("x", shape.to_vec()).expect("input");
    let mut feeds = Feeds::<T>::new();
    feeds.insert("x", draw(&mut rng, shape, 0));
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
        let mut other = shape.to_vec();
        other[axis] = rng.random_range(1..=4);
        let y = g.input("y", other.clone()).expect("input");
        feeds.insert("y", draw(&mut rng, &other, 0));
        outs.push(g.concat(&[x, y, x], axis).expect("concat"));
        what.push(format!("concat(x, y {other:?}, x; axis {axis})"));
    }
    let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
    for k in 0..outs.len() {
        compare(
            &format!("{} of {shape:?} ({})", what[k], T::NAME),
            &got[k],
            &want[k],
            |i| format!("{i}"),
            |_| 0.0,
        )?;
    }
    Ok(())
}

/// Gather of n rows of a [rows, tail..] table copies rows (tolerance 0); ScatterAdd sums at
/// most n source rows per output row: sum_tol(n, scatter_add(idx, |src|)) + SUM_FLUSH.
/// Out-of-range and non-integer indices fed as an Input are refused before any work with
/// IndexOutOfRange naming the node.
fn check_gather_scatter<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    rows: usize,
    tail: &[usize],
    n: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ts = vec![rows];
    ts.extend(tail);
    let mut ss = vec![n];
    ss.extend(tail);
    let mut g = Graph::new();
    let table = g.input("table", ts.clone()).expect("input");
    let idx = g.input("idx", [n]).expect("input");
    let src = g.input("src", ss.clone()).expect("input");
    let ga = g.scoped("emb", |g| g.gather(table, idx)).expect("gather");
    let sc = g
        .scoped("emb_t", |g| g.add(Op::ScatterAdd { rows }, &[idx, src]))
        .expect("scatter_add");
    let iv: Vec<T> = (0..n)
        .map(|_| T::of(rng.random_range(0..rows) as f64))
        .collect();
    let mut feeds = Feeds::<T>::new();
    feeds.insert("table", draw(&mut rng, &ts, 0));
    feeds.insert("idx", array(&[n], iv.clone()));
    feeds.insert("src", draw(&mut rng, &ss, 0));
    let (got, want) = run_both(gpu, &g, &feeds, &[ga, sc])?;
    compare(
        &format!("gather ({})", T::NAME),
        &got[0],
        &want[0],
        |i| format!("{i}"),
        |_| 0.0,
    )?;
    // The indices are nonnegative: |idx| = idx.
    let abs = abs_run(&g, &feeds, &["idx", "src"], &[sc])?;
    let a: Vec<f64> = abs[0].iter().copied().collect();
    compare(
        &format!("scatter_add ({}) rows {rows}, src {ss:?}", T::NAME),
        &got[1],
        &want[1],
        |i| format!("sum |src| = {:e}", a[i]),
        |i| sum_tol::<T>(n, a[i]) + T::SUM_FLUSH,
    )?;
    // An index equal to `rows`, or not an integer, is refused before any work.
    for bad in [rows as f64, 0.5, -1.0] {
        let mut bv = iv.clone();
        bv[n - 1] = T::of(bad);
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
}

#[test]
fn gpu_movement_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_movement_matches_cpu") else {
        return;
    };
    run_cases(
        gpu,
        32,
        (shape_strategy(4, 7), any::<u64>(), any::<bool>()),
        |gpu, (shape, seed, two_d)| {
            set_dispatch(gpu, two_d);
            check_movement(gpu, &shape, seed)
        },
    );
}

#[test]
fn gpu_gather_scatter_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_gather_scatter_matches_cpu") else {
        return;
    };
    run_cases(
        gpu,
        24,
        (
            1usize..=9,
            shape_strategy(2, 5),
            1usize..=12,
            any::<u64>(),
            any::<bool>(),
        ),
        |gpu, (rows, tail, n, seed, two_d)| {
            set_dispatch(gpu, two_d);
            check_gather_scatter(gpu, rows, &tail, n, seed)
        },
    );
}

/// `check_movement` and `check_gather_scatter` (over a [rows, 3] table) on each case.
#[test]
fn gpu_f64_movement_and_gather_match_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_movement_and_gather_match_cpu") else {
        return;
    };
    run_cases(
        gpu,
        32,
        (
            shape_strategy(4, 7),
            1usize..=9,
            1usize..=12,
            any::<u64>(),
            any::<bool>(),
        ),
        |gpu, (shape, rows, n, seed, two_d)| {
            set_dispatch(gpu, two_d);
            check_movement(gpu, &shape, seed)?;
            check_gather_scatter(gpu, rows, &[3], n, seed)
        },
    );
}

/// A convolution case: batch n, channels c, the group choice (1, 2 or c), output channels per
/// group, the square kernel size, (stride, padding, dilation), (h, w), (seed, 2-D dispatch).
type ConvCase = (
    usize,
    usize,
    usize,
    usize,
    usize,
    (usize, usize, usize),
    (usize, usize),
    (u64, bool),
);

/// Convolution cases: n 1-2, c in {2, 4}, kernel size from `kernels`, stride 1-2, padding
/// 0..=max_pad, dilation 1-2, h and w in 3..=max_hw.
fn conv_cases(
    kernels: Vec<usize>,
    max_pad: usize,
    max_hw: usize,
) -> impl Strategy<Value = ConvCase> {
    (
        1usize..=2,
        prop::sample::select(vec![2usize, 4]),
        0usize..3,
        1usize..=2,
        prop::sample::select(kernels),
        (1usize..=2, 0usize..=max_pad, 1usize..=2),
        (3usize..=max_hw, 3usize..=max_hw),
        (any::<u64>(), any::<bool>()),
    )
}

/// Conv2d (K = (C/groups) kh kw terms per output), Conv2dInputGrad (at most (O/groups) kh kw
/// terms) and Conv2dWeightGrad (N oh ow terms): each output within sum_tol(K, sum |terms|)
/// + SUM_FLUSH, sum |terms| from the CPU running the same (bilinear) graph on |x|, |w|, |gy|.
fn check_conv<T: Precision>(gpu: &mut GpuExecutor<T>, case: ConvCase) -> Result<(), TestCaseError> {
    let (n, c, gsel, omul, k, (stride, pad, dil), (h, w), (seed, two_d)) = case;
    let groups = [1, 2, c][gsel];
    let o = groups * omul;
    let p = ConvParams::new(stride, pad, dil, groups);
    let (Some(oh), Some(ow)) = (p.out_len(0, h, k), p.out_len(1, w, k)) else {
        return Ok(());
    };
    set_dispatch(gpu, two_d);
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
    let mut feeds = Feeds::<T>::new();
    for (name, s) in [("x", &xs), ("w", &ws), ("gy", &ys)] {
        feeds.insert(name, draw(&mut rng, s, 0));
    }
    let outs = [y, gx, gw];
    let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
    let abs = abs_run(&g, &feeds, &["x", "w", "gy"], &outs)?;
    let ks = [(c / groups) * k * k, (o / groups) * k * k, n * oh * ow];
    let desc = format!(
        "x {xs:?} w {ws:?} stride {stride} pad {pad} dil {dil} groups {groups} ({})",
        T::NAME
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
            |i| sum_tol::<T>(ks[j], a[i]) + T::SUM_FLUSH,
        )?;
    }
    Ok(())
}

/// Pooling, 3 x 3 windows, stride 1-2, padding 0-1; K_w = count(p, q) <= 9 terms per window,
/// at most K_c = ceil(3 / s)^2 <= 9 windows per input pixel; u the device's unit roundoff,
/// DIV_U u its division's error (f32: 2.5 ULP = 5 U32; f64: U64), and the f64 reference's
/// division correctly rounded (U64):
/// * avg_pool y = (sum of K_w terms) / K_w on x drawn by `draw`: the sums add
///   (gamma_9(u) + gamma_9(U64)) avg(|x|) (divided by K_w exactly in the bound), the divisions
///   (DIV_U u + U64) |y|.
/// * avg_pool_grad: each share gy / K_w carries DIV_U u (U64 on the CPU) relative error, then a
///   sum of at most 9 shares: (gamma_9(u) + DIV_U u + gamma_9(U64) + U64) * avg_pool_grad(|gy|).
/// * max_pool and max_pool_gather (of x at the argmax of xp) pick one input: 0 (the same first
///   argmax, NaN included; xp is drawn from a few levels with -inf, and NaN for one seed in 4,
///   so ties and NaN windows are common).
/// * max_pool_grad: a sum of at most 9 cotangents: sum_tol(9, max_pool_grad(xp, |gy|)).
///
/// Each bound but the exact ones adds SUM_FLUSH.
fn check_pool<T: Precision>(
    gpu: &mut GpuExecutor<T>,
    (n, c, h, w): (usize, usize, usize, usize),
    stride: usize,
    pad: usize,
    seed: u64,
    two_d: bool,
) -> Result<(), TestCaseError> {
    let p = PoolParams::new(3, stride, pad);
    let (Some(oh), Some(ow)) = (p.out_len(0, h), p.out_len(1, w)) else {
        return Ok(());
    };
    set_dispatch(gpu, two_d);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (xs, ys) = (vec![n, c, h, w], vec![n, c, oh, ow]);
    let mut g = Graph::new();
    let x = g.input("x", xs.clone()).expect("input");
    let xp = g.input("xp", xs.clone()).expect("input");
    let gy = g.input("gy", ys.clone()).expect("input");
    let avg = g.avg_pool2d(x, p).expect("avg_pool");
    let avg_g = g
        .add(Op::AvgPool2dGrad { p, in_hw: [h, w] }, &[gy])
        .expect("avg grad");
    let mx = g.max_pool2d(xp, p).expect("max_pool");
    let mx_g = g.add(Op::MaxPool2dGrad(p), &[xp, gy]).expect("max grad");
    let mx_c = g.add(Op::MaxPool2dGather(p), &[xp, x]).expect("gather");
    let mut feeds = Feeds::<T>::new();
    feeds.insert("x", draw(&mut rng, &xs, 0));
    feeds.insert("gy", draw(&mut rng, &ys, 0));
    let levels = [-1.0, 0.0, 0.5, 2.0, f64::NEG_INFINITY];
    let with_nan = seed % 4 == 0;
    let xpv: Vec<T> = (0..n * c * h * w)
        .map(|_| {
            if with_nan && rng.random_range(0..20) == 0 {
                T::nan()
            } else {
                T::of(levels[rng.random_range(0..levels.len())])
            }
        })
        .collect();
    feeds.insert("xp", array(&xs, xpv));
    let outs = [avg, avg_g, mx, mx_g, mx_c];
    let (got, want) = run_both(gpu, &g, &feeds, &outs)?;
    // avg_pool and its gradient on |x| and |gy|; max_pool_grad on |gy| at the argmax of the
    // real xp.
    let mut abs_feeds = Feeds::<f64>::new();
    abs_feeds.insert("xp", feeds.get("xp").expect("xp").mapv(|v| v.as_f64()));
    for name in ["x", "gy"] {
        let v = feeds.get(name).expect("fed").mapv(|v| v.as_f64().abs());
        abs_feeds.insert(name, v);
    }
    let abs = CpuExecutor::<f64>::new()
        .run(&g, &abs_feeds, &[avg, avg_g, mx_g])
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let flat = |a: &ArrayD<f64>| -> Vec<f64> { a.iter().copied().collect() };
    let (aa, ag, am, yv) = (flat(&abs[0]), flat(&abs[1]), flat(&abs[2]), flat(&want[0]));
    let u = T::UNIT_ROUNDOFF;
    let desc = format!("x {xs:?}, {p:?} ({})", T::NAME);
    compare(
        &format!("avg_pool {desc}"),
        &got[0],
        &want[0],
        |i| format!("avg |x| = {:e}", aa[i]),
        |i| {
            (gamma(9, u) + gamma(9, U64)) * aa[i]
                + (T::DIV_U * u + U64) * yv[i].abs()
                + T::SUM_FLUSH
        },
    )?;
    compare(
        &format!("avg_pool_grad {desc}"),
        &got[1],
        &want[1],
        |i| format!("sum |gy / count| = {:e}", ag[i]),
        |i| ((gamma(9, u) + T::DIV_U * u) + (gamma(9, U64) + U64)) * ag[i] + T::SUM_FLUSH,
    )?;
    compare(
        &format!("max_pool {desc}"),
        &got[2],
        &want[2],
        |i| format!("{i}"),
        |_| 0.0,
    )?;
    compare(
        &format!("max_pool_grad {desc}"),
        &got[3],
        &want[3],
        |i| format!("sum |gy| = {:e}", am[i]),
        |i| sum_tol::<T>(9, am[i]) + T::SUM_FLUSH,
    )?;
    compare(
        &format!("max_pool_gather {desc}"),
        &got[4],
        &want[4],
        |i| format!("{i}"),
        |_| 0.0,
    )
}

#[test]
fn gpu_conv2d_and_transposes_match_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_conv2d_and_transposes_match_cpu") else {
        return;
    };
    run_cases(gpu, 32, conv_cases(vec![1, 3, 5], 2, 9), |gpu, case| {
        check_conv(gpu, case)
    });
}

#[test]
fn gpu_pooling_matches_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_pooling_matches_cpu") else {
        return;
    };
    run_cases(
        gpu,
        32,
        (
            (1usize..=2, 1usize..=3, 2usize..=9, 2usize..=9),
            1usize..=2,
            0usize..=1,
            any::<u64>(),
            any::<bool>(),
        ),
        |gpu, (nchw, stride, pad, seed, two_d)| check_pool(gpu, nchw, stride, pad, seed, two_d),
    );
}

/// `check_conv` on each case, and `check_pool` on the same batch, channels, image size,
/// stride and padding.
#[test]
fn gpu_f64_conv_and_pool_match_cpu() {
    let Some(gpu) = common::gpu_f64_executor("gpu_f64_conv_and_pool_match_cpu") else {
        return;
    };
    run_cases(gpu, 24, conv_cases(vec![1, 3], 1, 8), |gpu, case| {
        check_conv(gpu, case)?;
        let (n, c, _, _, _, (stride, pad, _), (h, w), (seed, two_d)) = case;
        check_pool(gpu, (n, c, h, w), stride, pad, seed, two_d)
    });
}

/// log_softmax along a random axis of a random shape (32 cases), inputs uniform in
/// [-LOGIT_RANGE, LOGIT_RANGE], each output within `Precision::log_softmax_tol`.
fn log_softmax_matches_cpu<T: Precision>(gpu: GpuExecutor<T>) {
    let case = shape_strategy(3, 12)
        .prop_filter("rank >= 1", |s| !s.is_empty())
        .prop_flat_map(|s| {
            let r = s.len();
            (Just(s), 0..r, any::<u64>(), any::<bool>())
        });
    run_cases(gpu, 32, case, |gpu, (shape, axis, seed, two_d)| {
        set_dispatch(gpu, two_d);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut g = Graph::new();
        let x = g.input("x", shape.clone()).expect("input");
        let y = g.log_softmax(x, axis).expect("log_softmax");
        let range = T::of(T::LOGIT_RANGE);
        let xv: Vec<T> = (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-range..=range))
            .collect();
        let xf: Vec<f64> = xv.iter().map(|v| v.as_f64()).collect();
        let mut feeds = Feeds::<T>::new();
        feeds.insert("x", array(&shape, xv));
        let (got, want) = run_both(gpu, &g, &feeds, &[y])?;
        let inner: usize = shape[axis + 1..].iter().product();
        let n = shape[axis];
        let lane = |i: usize| -> Vec<f64> {
            let base = (i / (n * inner)) * n * inner + i % inner;
            (0..n).map(|j| xf[base + j * inner]).collect()
        };
        let wv: Vec<f64> = want[0].iter().copied().collect();
        compare(
            &format!("log_softmax(axis {axis}) of {shape:?} ({})", T::NAME),
            &got[0],
            &want[0],
            |i| format!("x = {:e}", xf[i]),
            |i| T::log_softmax_tol(&lane(i), wv[i], xf[i]),
        )
    });
}

#[test]
fn gpu_log_softmax_matches_cpu() {
    if let Some(gpu) = common::gpu_executor("gpu_log_softmax_matches_cpu") {
        log_softmax_matches_cpu(gpu);
    }
}

#[test]
fn gpu_f64_log_softmax_matches_cpu() {
    if let Some(gpu) = common::gpu_f64_executor("gpu_f64_log_softmax_matches_cpu") {
        log_softmax_matches_cpu(gpu);
    }
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

/// A whole DARTS search network (C = 2, 3 layers, batch 2, 8 x 8 images, 10 classes; state
/// from `state_seed`, batch from `batch_seed`) on the GPU (element type T) against the CPU
/// (f64), fed the same T values: with `grads`, loss, grad_alpha and grad_w; with `hvp`, the
/// exact mixed Hessian-vector product d2 L / (dalpha dw) . v (autodiff of autodiff). Prints
/// and returns the worst |gpu - cpu| / tol.
///
/// Tolerance, the approach of `darts::check::tolerance::evaluation_bound`: every node adds at
/// most one rounding per accumulated term, so an output whose longest path has `depth` nodes,
/// in a graph whose largest single accumulation has K terms (`term_count`, the max over the
/// nodes the outputs need), is within gamma_{K depth}(u) * M of its exact value, M the largest
/// |value| of any node upstream of it (the scale round-off is relative to; condition
/// amplification inside the graph is what `depth` stands in for). Both sides err: the bound is
/// evaluation_bound(K, depth, M, u) + evaluation_bound(K, depth, M, 2^-53), u = 2^-24 in f32
/// and 2^-53 in f64 (`assert_gpu_matches_cpu`). The inputs are fed to both sides unchanged.
/// Every kernel's f32 builtin error (exp, log, division) is a few ULP, and the f64 prelude's
/// exp/log/tanh errors a few u, covered by the one rounding per node and term the bound
/// already allows.
fn search_network_matches_cpu<T: GpuScalar>(
    gpu: &mut GpuExecutor<T>,
    smooth: bool,
    (state_seed, batch_seed): (u64, u64),
    grads: bool,
    hvp: bool,
) -> f64 {
    use darts::check::oracle::architect::NetGraph;
    use darts::darts::network::SearchConfig;
    let cfg = SearchConfig {
        c: 2,
        layers: 3,
        smooth,
        ..SearchConfig::paper()
    };
    let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).expect("search network");
    let st = common::state(&cfg, state_seed);
    let point = common::point(&cfg, &st);
    let batch = common::batch(2, 8, cfg.num_classes, batch_seed);
    let mut feeds = Feeds::<T>::new();
    for (i, (n, a)) in point.weights.iter().enumerate() {
        feeds.insert(n.clone(), a.mapv(T::of));
        feeds.insert(
            format!("v/{n}"),
            a.mapv(|v| T::of((v * 1e3 + i as f64).sin())),
        );
    }
    feeds.insert("alpha/normal", point.alpha[0].mapv(T::of));
    feeds.insert("alpha/reduce", point.alpha[1].mapv(T::of));
    feeds.insert("x", batch.x.mapv(T::of));
    feeds.insert("onehot", batch.onehot.mapv(T::of));
    let (mut outs, mut names) = (Vec::new(), Vec::new());
    if grads {
        outs.extend([net.loss, net.grad_alpha[0], net.grad_alpha[1]]);
        outs.extend(&net.grad_w);
        names.extend([
            "loss".to_string(),
            "grad_alpha/normal".into(),
            "grad_alpha/reduce".into(),
        ]);
        names.extend(point.weights.iter().map(|(n, _)| format!("grad_w/{n}")));
    }
    if hvp {
        outs.extend(net.hvp_alpha);
        names.extend(["hvp/normal".to_string(), "hvp/reduce".to_string()]);
    }
    let worst = assert_gpu_matches_cpu(gpu, &net.graph, &feeds, &outs, &names);
    println!(
        "search network in {} (smooth {smooth}): {} outputs, worst |gpu - cpu| / tol = \
         {worst:.3e}",
        T::NAME,
        outs.len()
    );
    worst
}

/// The search network's loss, grad_w and grad_alpha in f32 (`search_network_matches_cpu`).
#[test]
fn gpu_search_network_gradients_match_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_search_network_gradients_match_cpu") else {
        return;
    };
    search_network_matches_cpu(&mut gpu, false, (3, 4), true, false);
}

/// Run `outs` of `g` on the GPU (element type T, unit roundoff u_T; with fused kernels and
/// with single-op kernels) and the CPU (f64, same inputs) and assert each output agrees within
/// evaluation_bound(K, depth, M, u_T) + evaluation_bound(K, depth, M, 2^-53) (see
/// `search_network_matches_cpu`; fusion keeps one rounding per node, or fewer where a driver
/// contracts a multiply-add, so the bound holds for both). Returns the worst error/bound ratio.
fn assert_gpu_matches_cpu<T: GpuScalar>(
    gpu: &mut GpuExecutor<T>,
    g: &Graph,
    feeds: &Feeds<T>,
    outs: &[NodeId],
    names: &[String],
) -> f64 {
    use darts::check::tolerance::evaluation_bound;
    let mut runs = Vec::new();
    for fusion in [true, false] {
        gpu.set_fusion(fusion);
        runs.push((fusion, gpu.run(g, feeds, outs)));
    }
    gpu.set_fusion(true);
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
        for (fusion, got) in &runs {
            let got = got.as_ref().expect("gpu run");
            let name = format!("{} (fused kernels: {fusion})", names[j]);
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
    }
    worst
}

/// The exact mixed Hessian-vector product of the smooth search network in f32
/// (`search_network_matches_cpu`). The smooth variant keeps f32 rounding from flipping a ReLU
/// or max-pool decision, which would change the (almost-everywhere) derivative itself rather
/// than its rounding.
#[test]
fn gpu_exact_hvp_matches_cpu() {
    let Some(mut gpu) = common::gpu_executor("gpu_exact_hvp_matches_cpu") else {
        return;
    };
    search_network_matches_cpu(&mut gpu, true, (5, 6), false, true);
}

/// The search network in f64 on both sides (`search_network_matches_cpu`): loss, grad_w and
/// grad_alpha of the ReLU and the smooth network, and the smooth network's exact H v.
#[test]
fn gpu_f64_search_network_gradients_match_cpu() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_search_network_gradients_match_cpu")
    else {
        return;
    };
    for smooth in [false, true] {
        search_network_matches_cpu(&mut gpu, smooth, (3, 4), true, smooth);
    }
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
