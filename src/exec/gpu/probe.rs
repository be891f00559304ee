//! The f64 probe: each f64 operation the f64 kernels use, run alone on the device
//! (shaders/probe_f64.wgsl) and checked against the host's IEEE 754 f64.
//!
//! SPIR-V's GLSL.std.450 defines Exp, Log, Tanh, Pow, Sin, ... for 16- and 32-bit floats only,
//! Vulkan only promises f64 operations "at least the precision of single precision", and some
//! drivers return garbage for f64 exp or sin. So the f64 kernels call no f64 transcendental
//! builtin (shaders/scalar_f64.wgsl builds exp, expm1, log1p, log and tanh from + - * /), and
//! every f64 operation they do use is a [`Probe`] here, with the bound it must meet:
//! * `+ - * /`, sqrt, abs, comparisons, conversions, `pow2`, `split`: exact (IEEE 754 requires
//!   `+ - * /` and sqrt correctly rounded, so the device must give the host's bits).
//!   `1 / sqrt` is two such operations, the same two as the CPU executor: exact as well.
//! * exp, expm1, log1p, log, tanh: the bounds of proofs/gpu-f64-math.md ([`EXP_U`], ...),
//!   plus the error of the host's libm that serves as the reference ([`LIBM_U`],
//!   [`LIBM_TANH_U`]).
//!
//! Subnormals: Vulkan lets a device flush f64 subnormals (inputs or results) to zero unless it
//! reports denorm preservation, so a probe also passes when the device's result equals the
//! reference computed with every subnormal input and result replaced by a zero of its sign.
//!
//! [`super::GpuExecutor::new_f64`] runs every probe on [`Probe::inputs`] with a few hundred
//! random values before it returns, and refuses an adapter that fails; tests/gpu_f64_math.rs
//! runs them on many more.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Unit roundoff of f64, 2^-53.
pub const U: f64 = 1.1102230246251565e-16;

/// exp_s: |err| <= EXP_U u e^x for a normal result (proofs/gpu-f64-math.md, Claim 3).
pub const EXP_U: f64 = 4.0;
/// expm1_neg: |err| <= EXPM1_U u |e^y - 1| (Claim 4).
pub const EXPM1_U: f64 = 11.0;
/// log1p_unit: |err| <= LOG1P_U u |log(1 + t)| (Claim 5).
pub const LOG1P_U: f64 = 4.5;
/// log_s: |err| <= LOG_U u |log x| (Claim 6).
pub const LOG_U: f64 = 6.5;
/// tanh_s: |err| <= TANH_U u |tanh x| (Claim 7).
pub const TANH_U: f64 = 15.0;
/// The host reference (Rust's f64 exp, exp_m1, ln_1p, ln: the platform libm) is allowed
/// 2 ulp = 4 u relative: glibc documents at most 1 ulp for these on x86_64 and aims for less;
/// the factor 2 keeps the bound from resting on that figure.
pub const LIBM_U: f64 = 4.0;
/// The same for tanh, documented by glibc at 2 ulp: allowed 3 ulp = 6 u.
pub const LIBM_TANH_U: f64 = 6.0;

/// Test-only: names a probe whose first device result [`super::GpuExecutor::check_probes`]
/// replaces by a wrong value, so that the f64 executor is refused on an adapter that passes
/// (tests/gpu_f64_policy.rs). `1` forces [`Probe::Add`] (the first probe checked, so it is the
/// one reported whatever else this adapter fails); a probe's name (`ToI32`, `Exp`, ...) forces
/// that one. Unset or empty: no effect. Never set it outside tests.
pub const FORCE_REFUSE_VAR: &str = "DARTS_GPU_F64_FORCE_REFUSE";

/// The probe [`FORCE_REFUSE_VAR`] forces to fail, if any; an error naming the variable and
/// the allowed values when it holds anything else.
pub fn forced_refusal() -> Result<Option<Probe>, crate::exec::ExecError> {
    let v = match std::env::var(FORCE_REFUSE_VAR) {
        Ok(v) => v,
        Err(std::env::VarError::NotPresent) => return Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => String::from("(not UTF-8)"),
    };
    let v = v.trim();
    if v.is_empty() || v == "0" {
        return Ok(None);
    }
    if v == "1" {
        return Ok(Some(Probe::Add));
    }
    Probe::ALL
        .into_iter()
        .find(|p| format!("{p:?}") == v)
        .map(Some)
        .ok_or_else(|| {
            let names: Vec<String> = Probe::ALL.iter().map(|p| format!("{p:?}")).collect();
            crate::exec::ExecError::Gpu(format!(
                "{FORCE_REFUSE_VAR}={v:?} is not 0, 1 or a probe name ({})",
                names.join(", ")
            ))
        })
}

/// Smallest positive normal f64, 2^-1022.
const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
/// Absolute slack of the inexact probes, for results in the subnormal range where relative
/// bounds do not hold: 2^-1072, eight roundings of a subnormal (2^-1075 each), more than any
/// of the algorithms performs there (the device's and the host's together).
const SUBNORMAL_SLACK: f64 = 4.0 * 5e-324;

/// One f64 operation of the f64 kernels, by its code in shaders/probe_f64.wgsl (the
/// declaration order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Add,
    Sub,
    Mul,
    Div,
    Sqrt,
    Abs,
    ToI32,
    ToU32,
    ToF32,
    IsNan,
    Greater,
    Less,
    GreaterEq,
    Equal,
    Pow2,
    SplitMantissa,
    SplitExponent,
    Exp,
    Expm1Neg,
    Log1pUnit,
    Log,
    Tanh,
    Nan,
    NegInf,
    Rsqrt,
}

impl Probe {
    pub const ALL: [Probe; 25] = [
        Probe::Add,
        Probe::Sub,
        Probe::Mul,
        Probe::Div,
        Probe::Sqrt,
        Probe::Abs,
        Probe::ToI32,
        Probe::ToU32,
        Probe::ToF32,
        Probe::IsNan,
        Probe::Greater,
        Probe::Less,
        Probe::GreaterEq,
        Probe::Equal,
        Probe::Pow2,
        Probe::SplitMantissa,
        Probe::SplitExponent,
        Probe::Exp,
        Probe::Expm1Neg,
        Probe::Log1pUnit,
        Probe::Log,
        Probe::Tanh,
        Probe::Nan,
        Probe::NegInf,
        Probe::Rsqrt,
    ];

    /// The op code in shaders/probe_f64.wgsl.
    pub fn code(self) -> u32 {
        Probe::ALL
            .iter()
            .position(|&p| p == self)
            .expect("every probe is in ALL") as u32
    }

    /// What the probe computes, as shaders/probe_f64.wgsl lists it.
    pub fn wgsl(self) -> &'static str {
        match self {
            Probe::Add => "add a + b",
            Probe::Sub => "sub a - b",
            Probe::Mul => "mul a * b",
            Probe::Div => "div a / b",
            Probe::Sqrt => "sqrt(a)",
            Probe::Abs => "abs(a)",
            Probe::ToI32 => "f64(i32(a))",
            Probe::ToU32 => "f64(u32(a))",
            Probe::ToF32 => "f64(f32(a))",
            Probe::IsNan => "is_nan(a)",
            Probe::Greater => "a > b",
            Probe::Less => "a < b",
            Probe::GreaterEq => "a >= b",
            Probe::Equal => "a == b",
            Probe::Pow2 => "pow2(i32(a))",
            Probe::SplitMantissa => "split(a).m",
            Probe::SplitExponent => "split(a).e",
            Probe::Exp => "exp_s(a)",
            Probe::Expm1Neg => "expm1_neg(a)",
            Probe::Log1pUnit => "log1p_unit(a)",
            Probe::Log => "log_s(a)",
            Probe::Tanh => "tanh_s(a)",
            Probe::Nan => "nan_s()",
            Probe::NegInf => "neg_inf_s()",
            Probe::Rsqrt => "rsqrt_s(a)",
        }
    }

    /// The exact result by the host's f64 (correctly rounded where IEEE 754 says so; the
    /// platform libm for exp, expm1, log1p, log and tanh).
    pub fn reference(self, a: f64, b: f64) -> f64 {
        let truth = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            Probe::Add => a + b,
            Probe::Sub => a - b,
            Probe::Mul => a * b,
            Probe::Div => a / b,
            Probe::Sqrt => a.sqrt(),
            Probe::Abs => a.abs(),
            Probe::ToI32 => (a as i32) as f64,
            Probe::ToU32 => (a as u32) as f64,
            Probe::ToF32 => (a as f32) as f64,
            Probe::IsNan => truth(a.is_nan()),
            Probe::Greater => truth(a > b),
            Probe::Less => truth(a < b),
            Probe::GreaterEq => truth(a >= b),
            Probe::Equal => truth(a == b),
            Probe::Pow2 => 2f64.powi(a as i32),
            Probe::SplitMantissa => split(a).0,
            Probe::SplitExponent => split(a).1 as f64,
            Probe::Exp => a.exp(),
            Probe::Expm1Neg => a.exp_m1(),
            Probe::Log1pUnit => a.ln_1p(),
            Probe::Log => a.ln(),
            Probe::Tanh => a.tanh(),
            Probe::Nan => f64::NAN,
            Probe::NegInf => f64::NEG_INFINITY,
            Probe::Rsqrt => 1.0 / a.sqrt(),
        }
    }

    /// The largest |device - reference| allowed for a finite reference `want`; 0 means the
    /// device must give `want` exactly (a zero of either sign matching a zero).
    pub fn bound(self, want: f64) -> f64 {
        let rel = |ours: f64, libm: f64| (ours + libm) * U * want.abs() + SUBNORMAL_SLACK;
        match self {
            Probe::Exp => rel(EXP_U, LIBM_U),
            Probe::Expm1Neg => rel(EXPM1_U, LIBM_U),
            Probe::Log1pUnit => rel(LOG1P_U, LIBM_U),
            Probe::Log => rel(LOG_U, LIBM_U),
            Probe::Tanh => rel(TANH_U, LIBM_TANH_U),
            // WGSL lets f32 results that are subnormal flush to zero.
            Probe::ToF32 if want != 0.0 && want.abs() < f32::MIN_POSITIVE as f64 => {
                f32::MIN_POSITIVE as f64
            }
            _ => 0.0,
        }
    }

    /// The domain the kernels call the probe on, in words (inputs are drawn from it).
    pub fn domain(self) -> &'static str {
        match self {
            Probe::Add | Probe::Sub | Probe::Mul | Probe::Div => "any a, b",
            Probe::Sqrt | Probe::Abs | Probe::ToF32 | Probe::IsNan => "any a",
            Probe::Greater | Probe::Less | Probe::GreaterEq | Probe::Equal => "any a, b",
            Probe::ToI32 => "a in (-2^31, 2^31)",
            Probe::ToU32 => "a in [0, 2^32)",
            Probe::Pow2 => "integer a in [-1022, 1023]",
            Probe::SplitMantissa | Probe::SplitExponent => "finite a > 0",
            Probe::Exp | Probe::Tanh => "any a",
            Probe::Expm1Neg => "a <= 0",
            Probe::Log1pUnit => "a in [sqrt(1/2) - 1, 1]",
            Probe::Log | Probe::Rsqrt => "any a",
            Probe::Nan | Probe::NegInf => "no input",
        }
    }

    /// |device - reference| / bound for one input, accepting a device that flushes
    /// subnormals (see the module documentation): 0 for an exact match, infinite when NaN-ness
    /// or an infinity differs, or when an exact probe differs at all.
    pub fn error_ratio(self, a: f64, b: f64, got: f64) -> f64 {
        let want = self.reference(a, b);
        let r = ratio(got, want, self.bound(want));
        if r <= 1.0 {
            return r;
        }
        let flushed = flush(self.reference(flush(a), flush(b)));
        r.min(ratio(got, flushed, self.bound(flushed)))
    }

    /// Inputs (a, b) in the probe's domain: the edge cases (zeros of both signs, the extremes
    /// of the range, subnormals, infinities, NaN, the switch points of the algorithms) and
    /// `n` values drawn from a seeded generator.
    pub fn inputs(self, n: usize, seed: u64) -> Vec<(f64, f64)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((self.code() as u64) << 32));
        let rng = &mut rng;
        match self {
            Probe::Add
            | Probe::Sub
            | Probe::Mul
            | Probe::Div
            | Probe::Greater
            | Probe::Less
            | Probe::GreaterEq
            | Probe::Equal => binary_inputs(n, rng),
            Probe::Sqrt | Probe::Abs | Probe::IsNan | Probe::Rsqrt => any_unary_inputs(n, rng),
            Probe::ToF32 => to_f32_inputs(n, rng),
            Probe::ToI32 => to_i32_inputs(n, rng),
            Probe::ToU32 => to_u32_inputs(n, rng),
            // Up to 1023: exp_s takes 2^1023 at the top of its range.
            Probe::Pow2 => (-1022..=1023).map(|k| (k as f64, 0.0)).collect(),
            Probe::SplitMantissa | Probe::SplitExponent => split_inputs(n, rng),
            Probe::Exp => exp_inputs(n, rng),
            Probe::Expm1Neg => expm1_neg_inputs(n, rng),
            Probe::Log1pUnit => log1p_unit_inputs(n, rng),
            Probe::Log => log_inputs(n, rng),
            Probe::Tanh => tanh_inputs(n, rng),
            Probe::Nan | Probe::NegInf => vec![(0.0, 0.0)],
        }
    }
}

/// The edge cases every probe on "any a" (and both operands of the binary probes) is
/// checked on.
const SPECIALS: [f64; 27] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.0,
    3.0,
    0.1,
    -0.1,
    1.0 / 3.0,
    std::f64::consts::PI,
    1.0 + f64::EPSILON,
    1.0 - f64::EPSILON / 2.0,
    1e300,
    -1e300,
    1e-300,
    f64::MAX,
    f64::MIN,
    MIN_NORMAL,
    MIN_NORMAL * (1.0 + f64::EPSILON),
    5e-324,
    -5e-324,
    1e-310,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    -f64::NAN,
];

/// `+ - * /` and the comparisons: every pair of [`SPECIALS`], the overflow threshold of
/// exp_s, and `n` random pairs.
fn binary_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    for &a in &SPECIALS {
        for &b in &SPECIALS {
            v.push((a, b));
        }
    }
    // The last product of exp_s near the overflow threshold: a significand just
    // below 2 times 2^1023, finite (the largest f64 and the value of
    // e^709.782712893384), and 2 * 2^1023, which overflows.
    let top = 2f64.powi(1023);
    for m in [2.0 - f64::EPSILON, 1.999_999_999_999_952, 2.0] {
        v.push((m, top));
        v.push((top, m));
    }
    for _ in 0..n {
        let a = any_f64(rng, -300, 300);
        // Equal operands now and then, for the comparisons.
        let b = if rng.random_bool(0.1) {
            a
        } else {
            any_f64(rng, -300, 300)
        };
        v.push((a, b));
    }
    v
}

/// sqrt, abs, is_nan and 1 / sqrt.
fn any_unary_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    v.extend(SPECIALS.iter().map(|&a| (a, 0.0)));
    // NaNs whose payload has no bit f32 keeps, signalling and quiet, both signs.
    v.extend(
        [
            0x7ff0_0000_0000_0001u64,
            0xfff0_0000_0000_0001,
            0x7ff8_0000_0000_0000,
            0x7ff0_0000_1000_0000,
        ]
        .map(|b| (f64::from_bits(b), 0.0)),
    );
    v.extend((0..n).map(|_| (any_f64(rng, -1074, 1023), 0.0)));
    v
}

fn to_f32_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    v.extend(SPECIALS.iter().map(|&a| (a, 0.0)));
    // Around the f32 range: overflow to infinity, f32 subnormals, underflow.
    v.extend([
        (f32::MAX as f64, 0.0),
        (f32::MAX as f64 * (1.0 + f64::EPSILON), 0.0),
        (3.5e38, 0.0),
        (1e-40, 0.0),
        (1e-46, 0.0),
    ]);
    v.extend((0..n).map(|_| (any_f64(rng, -160, 140), 0.0)));
    v
}

fn to_i32_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [0.0, -0.0, 0.5, -0.5, 0.999, -0.999, 1.0, -1.0, 2147483647.0];
    v.extend(edge.iter().map(|&a| (a, 0.0)));
    v.extend([(-2147483647.0, 0.0), (2147483646.5, 0.0)]);
    v.extend((0..n).map(|_| {
        let a: f64 = if rng.random_bool(0.5) {
            rng.random_range(-1100.0..1100.0)
        } else {
            rng.random_range(-2147483647.0..2147483647.0)
        };
        (a, 0.0)
    }));
    v
}

fn to_u32_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [0.0, -0.0, 0.5, 0.999, 1.0, 4294967295.0, 4294967294.5];
    v.extend(edge.iter().map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = if rng.random_bool(0.5) {
            rng.random_range(0.0..4096.0)
        } else {
            rng.random_range(0.0..4294967295.0)
        };
        (a, 0.0)
    }));
    v
}

/// split(a).m and split(a).e.
fn split_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [
        1.0,
        2.0,
        0.5,
        1.0 - f64::EPSILON / 2.0,
        f64::MAX,
        MIN_NORMAL,
        5e-324,
        1e-310,
        3.0,
    ];
    v.extend(edge.iter().map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| (any_f64(rng, -1074, 1023).abs(), 0.0)));
    v
}

fn exp_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [
        709.782712893384,
        709.79,
        -745.1332191019411,
        -745.14,
        -708.39,
        -709.1,
        0.34657359027997264,
        -0.34657359027997264,
        1e-20,
        -1e-20,
        710.0,
        -746.0,
        800.0,
        -800.0,
    ];
    v.extend(SPECIALS.iter().chain(&edge).map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = match rng.random_range(0..3) {
            0 => rng.random_range(-750.0..712.0),
            1 => rng.random_range(-1.0..1.0),
            _ => any_f64(rng, -60, 4),
        };
        (a, 0.0)
    }));
    v
}

fn expm1_neg_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [
        0.0,
        -0.0,
        -0.34657359027997264,
        -0.3465735902799727,
        -1e-300,
        -5e-324,
        -1.0,
        -40.0,
        -800.0,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    v.extend(edge.iter().map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = match rng.random_range(0..3) {
            0 => rng.random_range(-40.0..0.0),
            1 => rng.random_range(-0.5..0.0),
            _ => -any_f64(rng, -60, 2).abs(),
        };
        (a, 0.0)
    }));
    v
}

fn log1p_unit_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let lo = std::f64::consts::FRAC_1_SQRT_2 - 1.0;
    let edge = [0.0, -0.0, 1.0, lo, 1e-300, 5e-324, 1e-10, -1e-10, 0.5];
    v.extend(edge.iter().map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = if rng.random_bool(0.5) {
            rng.random_range(lo..=1.0)
        } else {
            any_f64(rng, -60, 0).abs().min(1.0)
        };
        (a, 0.0)
    }));
    v
}

fn log_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [
        std::f64::consts::SQRT_2,
        std::f64::consts::FRAC_1_SQRT_2,
        std::f64::consts::SQRT_2 * (1.0 + f64::EPSILON),
    ];
    v.extend(SPECIALS.iter().chain(&edge).map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = match rng.random_range(0..3) {
            0 => any_f64(rng, -1074, 1023).abs(),
            1 => rng.random_range(0.5..2.0),
            _ => 1.0 + rng.random_range(-1e-6..1e-6),
        };
        (a, 0.0)
    }));
    v
}

fn tanh_inputs(n: usize, rng: &mut ChaCha8Rng) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    let edge = [22.0, -22.0, 22.000000000000004, 0.17328679513998632, 1e-300];
    v.extend(SPECIALS.iter().chain(&edge).map(|&a| (a, 0.0)));
    v.extend((0..n).map(|_| {
        let a: f64 = match rng.random_range(0..3) {
            0 => rng.random_range(-25.0..25.0),
            1 => rng.random_range(-0.6..0.6),
            _ => any_f64(rng, -60, 1),
        };
        (a, 0.0)
    }));
    v
}

/// x = m 2^e with m in [1, 2), for finite x > 0, from the bit pattern.
pub fn split(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 {
        let (m, e) = split(x * 2f64.powi(54));
        return (m, e - 54);
    }
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    (m, biased - 1023)
}

/// A subnormal replaced by a zero of its sign; every other value unchanged.
fn flush(v: f64) -> f64 {
    if v != 0.0 && v.abs() < MIN_NORMAL {
        0.0f64.copysign(v)
    } else {
        v
    }
}

/// |got - want| / bound with the conventions of [`Probe::error_ratio`].
fn ratio(got: f64, want: f64, bound: f64) -> f64 {
    if want.is_nan() || got.is_nan() {
        return if want.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if got == want {
        return 0.0;
    }
    if want.is_infinite() || got.is_infinite() || bound == 0.0 {
        return f64::INFINITY;
    }
    (got - want).abs() / bound
}

/// A random f64 of either sign with a uniform binary exponent in [lo, hi] (subnormal below
/// -1022) and uniform mantissa bits.
fn any_f64(rng: &mut ChaCha8Rng, lo: i32, hi: i32) -> f64 {
    let e = rng.random_range(lo..=hi);
    let m = 1.0 + rng.random_range(0u64..(1u64 << 52)) as f64 * f64::EPSILON;
    let v = if e < -1022 {
        // 2^e as a product of two normal powers of two; m 2^e rounds to a subnormal.
        m * 2f64.powi(-1022) * 2f64.powi(e + 1022)
    } else {
        m * 2f64.powi(e)
    };
    if rng.random_bool(0.5) {
        v
    } else {
        -v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The op codes are the ones listed in the header of shaders/probe_f64.wgsl.
    #[test]
    fn probe_codes_match_shader_header() {
        let src = super::super::kernels::PROBE_F64_WGSL;
        for p in Probe::ALL {
            let tag = format!("{} {}", p.code(), p.wgsl());
            assert!(src.contains(&tag), "{tag}");
            let case = format!("case {}u: {{ return ", p.code());
            assert!(src.contains(&case), "{case}");
        }
    }

    #[test]
    fn host_split_is_exact() {
        for x in [1.0, 3.0, 0.75, f64::MAX, 5e-324, 1e-310, MIN_NORMAL] {
            let (m, e) = split(x);
            assert!((1.0..2.0).contains(&m), "{x}: m = {m}");
            // m 2^e in two exact steps (2^e alone may be subnormal or overflow).
            assert_eq!(m * 2f64.powi(e / 2) * 2f64.powi(e - e / 2), x, "{x}");
        }
    }

    /// The ratio conventions: NaN meets NaN, an exact probe tolerates nothing, a flushed
    /// subnormal passes, exp allows (EXP_U + LIBM_U) u = 8 u relative (1 + 6 u and 1 + 10 u
    /// are exact f64, three and five ulps above 1; the product with e rounds by at most u).
    #[test]
    fn error_ratio_conventions() {
        assert_eq!(Probe::Add.error_ratio(f64::NAN, 1.0, f64::NAN), 0.0);
        assert_eq!(Probe::Add.error_ratio(1.0, 1.0, 2.0), 0.0);
        assert!(Probe::Add
            .error_ratio(1.0, 1.0, 2.0 + 2.0 * f64::EPSILON)
            .is_infinite());
        assert!(Probe::Log.error_ratio(-1.0, 0.0, 0.0).is_infinite());
        assert_eq!(Probe::Mul.error_ratio(1e-310, 1.0, 0.0), 0.0);
        assert!(Probe::Mul.error_ratio(1e-300, 1.0, 0.0).is_infinite());
        let e = 1f64.exp();
        assert!(Probe::Exp.error_ratio(1.0, 0.0, e * (1.0 + 6.0 * U)) <= 1.0);
        assert!(Probe::Exp.error_ratio(1.0, 0.0, e * (1.0 + 10.0 * U)) > 1.0);
    }
}
