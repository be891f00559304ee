// scalar_f64.wgsl: the f64 scalar prelude, prepended to every kernel file of the f64 executor
// (needs wgpu::Features::SHADER_F64; kernels/mod.rs, `compose`). Same names as scalar_f32.wgsl.
//
// SPIR-V's GLSL.std.450 defines Exp, Log, Tanh, Pow, Sin, ... for 16- and 32-bit floats only, and
// drivers return garbage for them in f64 (Mesa lavapipe 22.3.6: f64 exp, exp2, log, log2, sin, cos,
// sinh and tanh are garbage, atan has f32 accuracy, fma rounds twice; naga rejects frexp on f64),
// so this file calls no f64 transcendental builtin. The only f64 operations the f64 kernels use are
// + - * / and sqrt (which IEEE 754 requires correctly rounded), comparisons, abs, and the
// conversions f64 <-> i32, f64 <-> u32 and f64 -> f32; every one of them is checked against the
// host on each adapter (src/exec/gpu/probe.rs: at construction and in tests/gpu_f64_math.rs). exp,
// expm1, log, log1p and tanh below are built from those alone; their error bounds are derived in
// proofs/gpu-f64-math.md (u = 2^-53; Claims 3 to 7):
//   exp_s(x)       |err| <= 4 u e^x (plus the rounding of a subnormal result)
//   expm1_neg(y)   y <= 0: |err| <= 11 u |e^y - 1|
//   log1p_unit(t)  t in [sqrt(1/2) - 1, 1]: |err| <= 4.5 u |log(1 + t)|
//   log_s(x)       |err| <= 6.5 u |log x|
//   tanh_s(x)      |err| <= 15 u |tanh x|
//   sqrt_s = sqrt (correctly rounded), rsqrt_s(x) = 1 / sqrt(x) (<= 2 u relative)
// NaN: WGSL has no f64 bitcast without 64-bit integers, so is_nan converts to f32 (a NaN stays
// a NaN, every other f64 becomes a number or an infinity) and tests the f32 bit pattern; nan_s
// and neg_inf_s convert the f32 patterns back.

alias S = f64;

fn is_nan(x: S) -> bool {
    return (bitcast<u32>(f32(x)) & 0x7fffffffu) > 0x7f800000u;
}

fn nonzero(x: S) -> bool {
    return is_nan(x) || x != 0.0;
}

fn nan_s() -> S {
    return S(bitcast<f32>(0x7fc00000u));
}

fn neg_inf_s() -> S {
    return S(bitcast<f32>(0xff800000u));
}

fn sqrt_s(x: S) -> S {
    return sqrt(x);
}

fn rsqrt_s(x: S) -> S {
    return 1.0 / sqrt(x);
}

// ln 2 = LN2_HI + LN2_LO to 2^-86 (fdlibm's split): LN2_HI has 32 significant bits, so
// k * LN2_HI is exact for |k| < 2^21.
const LN2_HI: S = 0x1.62e42feep-1;
const LN2_LO: S = 0x1.a39ef35793c76p-33;
const INV_LN2: S = 0x1.71547652b82fep0;
const SQRT2: S = 0x1.6a09e667f3bcdp0;
const F64_MAX: S = 0x1.fffffffffffffp1023;

// 1 / i! for i = 0, ..., 14 (each the f64 nearest the exact value; 14! < 2^53 is exact).
const INV_FACT = array<S, 15>(1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0,
    1.0 / 5040.0, 1.0 / 40320.0, 1.0 / 362880.0, 1.0 / 3628800.0, 1.0 / 39916800.0,
    1.0 / 479001600.0, 1.0 / 6227020800.0, 1.0 / 87178291200.0);

// 2^k for -1022 <= k <= 1023, exact: binary powering of 2 (or 1/2), every partial product a
// power of two in the normal range (exp_s uses k = 1023 at the top of its range).
fn pow2(k: i32) -> S {
    var n = u32(select(k, -k, k < 0));
    var b: S = select(S(2.0), S(0.5), k < 0);
    var r: S = 1.0;
    while n != 0u {
        if (n & 1u) != 0u {
            r = r * b;
        }
        b = b * b;
        n = n >> 1u;
    }
    return r;
}

// e^x: k = round(x / ln 2), r = (x - k LN2_HI) - k LN2_LO with |r| <= ln 2 / 2 (the first
// subtraction is exact), e^r by its Taylor polynomial of degree 13 (Horner), then
// e^x = e^r 2^k for k >= 0 (one product), and (e^r 2^k1) 2^(k - k1), k1 = k / 2, for k < 0, so
// each factor is a normal power of two and only the last product can round (when the result
// is subnormal). x is clamped to [-746, 710] first:
// e^x rounds to 0 below -745.2 and overflows above 709.8, so the clamp changes no result and
// keeps k in i32.
fn exp_s(x: S) -> S {
    if is_nan(x) {
        return x;
    }
    var xc = x;
    if xc > 710.0 {
        xc = 710.0;
    }
    if xc < -746.0 {
        xc = -746.0;
    }
    let t = xc * INV_LN2;
    let k = i32(t + select(S(-0.5), S(0.5), t >= 0.0));
    let kf = S(k);
    let r = (xc - kf * LN2_HI) - kf * LN2_LO;
    var p = INV_FACT[13];
    for (var i = 12; i >= 0; i--) {
        p = INV_FACT[i] + r * p;
    }
    if k >= 0 {
        // One product of two finite factors. At the top (k = 1024, x within ln 2 / 2 of the
        // overflow threshold) fold one 2 into p (exact), so 2^k stays finite; the product
        // overflows only when e^x does. (An NVIDIA H200 still returns inf at x = 709.78 for
        // a finite e^x, with this form as with the split one: proofs/gpu-f64-math.md.)
        var kk = k;
        var pp = p;
        if kk > 1023 {
            pp = pp * 2.0;
            kk = kk - 1;
        }
        return pp * pow2(kk);
    }
    let k1 = k / 2;
    return (p * pow2(k1)) * pow2(k - k1);
}

// e^y - 1 for y <= 0 (what tanh needs): for y >= -LN2_HI / 2, y times the Taylor polynomial
// sum_{i = 1}^{14} y^(i - 1) / i! (no cancellation); below, exp_s(y) - 1, where
// |e^y - 1| >= 0.29.
fn expm1_neg(y: S) -> S {
    if y >= -0.5 * LN2_HI {
        var p = INV_FACT[14];
        for (var i = 13; i >= 1; i--) {
            p = INV_FACT[i] + y * p;
        }
        return y * p;
    }
    return exp_s(y) - 1.0;
}

// 1 / (2j + 1) for j = 0, ..., 16.
const INV_ODD = array<S, 17>(1.0, 1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0,
    1.0 / 13.0, 1.0 / 15.0, 1.0 / 17.0, 1.0 / 19.0, 1.0 / 21.0, 1.0 / 23.0, 1.0 / 25.0,
    1.0 / 27.0, 1.0 / 29.0, 1.0 / 31.0, 1.0 / 33.0);

// log(1 + t) = 2 atanh(s), s = t / (2 + t), for t in [sqrt(1/2) - 1, 1] (so |s| <= 1/3):
// 2 s sum_{j = 0}^{16} s^(2j) / (2j + 1) (Horner in s^2). No cancellation anywhere.
fn log1p_unit(t: S) -> S {
    let s = t / (2.0 + t);
    let w = s * s;
    var q = INV_ODD[16];
    for (var j = 15; j >= 0; j--) {
        q = INV_ODD[j] + w * q;
    }
    return (2.0 * s) * q;
}

// x = m 2^e exactly, m in [1, 2), for finite x > 0: a subnormal x is first scaled by 2^54,
// then e is found bit by bit (m >= 2^s: divide by 2^s; m 2^s < 2: multiply by 2^s, for
// s = 512, 256, ..., 1). Every scaling is by a power of two in the normal range: exact.
struct Split {
    m: S,
    e: i32,
}

const POW2_UP = array<S, 10>(0x1p512, 0x1p256, 0x1p128, 0x1p64, 0x1p32, 0x1p16, 0x1p8, 0x1p4,
    0x1p2, 0x1p1);
const POW2_DOWN = array<S, 10>(0x1p-512, 0x1p-256, 0x1p-128, 0x1p-64, 0x1p-32, 0x1p-16,
    0x1p-8, 0x1p-4, 0x1p-2, 0x1p-1);

fn split(x: S) -> Split {
    var m = x;
    var e = 0;
    if m < 0x1p-1022 {
        m = m * 0x1p54;
        e = -54;
    }
    for (var i = 0u; i < 10u; i++) {
        if m >= POW2_UP[i] {
            m = m * POW2_DOWN[i];
            e += 512 >> i;
        }
    }
    for (var i = 0u; i < 10u; i++) {
        if m * POW2_UP[i] < 2.0 {
            m = m * POW2_UP[i];
            e -= 512 >> i;
        }
    }
    return Split(m, e);
}

// log x = e ln 2 + log1p(m - 1) with x = m 2^e, m in [sqrt(1/2), sqrt(2)] (m - 1 is exact):
// e LN2_HI is exact and added last. log(+inf) = +inf, log(0) = -inf, log(x < 0) = NaN.
fn log_s(x: S) -> S {
    if is_nan(x) || x < 0.0 {
        return nan_s();
    }
    if x == 0.0 {
        return neg_inf_s();
    }
    if x > F64_MAX {
        return x;
    }
    let sp = split(x);
    var m = sp.m;
    var e = sp.e;
    if m > SQRT2 {
        m = 0.5 * m;
        e += 1;
    }
    let ef = S(e);
    return ef * LN2_HI + (ef * LN2_LO + log1p_unit(m - 1.0));
}

// tanh x = sign(x) (-em) / (2 + em), em = expm1(-2|x|) in (-1, 0]; |x| > 22 gives +-1
// (1 - tanh 22 < 2^-62 rounds away).
fn tanh_s(x: S) -> S {
    let a = abs(x);
    if a > 22.0 {
        return select(S(1.0), S(-1.0), x < 0.0);
    }
    let em = expm1_neg(-2.0 * a);
    let t = -em / (2.0 + em);
    return select(t, -t, x < 0.0);
}
