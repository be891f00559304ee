// scalar_f32.wgsl: the f32 scalar prelude. The executor prepends it to every kernel file of the
// f32 executor (kernels/mod.rs, `compose`), so each kernel is written once, in the element type S.
//
// It defines S = f32 and the scalar functions the kernels call; here they are the WGSL builtins
// (accuracy: WGSL §15.7.4.1, "Floating point accuracy") and bit-pattern tests:
//   is_nan(x)      x is a NaN, from the bit pattern (WGSL lets an implementation assume NaN never
//                  occurs, so never x != x)
//   nonzero(x)     x != 0 with NaN nonzero and -0 zero, from the bit pattern (exact)
//   nan_s()        a quiet NaN;  neg_inf_s(): -inf
//   exp_s, log_s, sqrt_s: exp, log, sqrt;  rsqrt_s(x) = inverseSqrt(x)
//   log1p_unit(t)  log(1 + t) for t in [0, 1]: the series t - t^2/2 + t^3/3 - t^4/4 + t^5/5
//                  below 1/32 (its truncation error t^6/6 is under 2^-24 t there), log(1 + t)
//                  above
//   tanh_s(x)      sign(x) (1 - e) / (1 + e) with e = exp(-2|x|)
// The f64 executor prepends scalar_f64.wgsl instead, with the same names.

alias S = f32;

fn is_nan(x: S) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn nonzero(x: S) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) != 0u;
}

fn nan_s() -> S {
    return bitcast<f32>(0x7fc00000u);
}

fn neg_inf_s() -> S {
    return bitcast<f32>(0xff800000u);
}

fn exp_s(x: S) -> S {
    return exp(x);
}

fn log_s(x: S) -> S {
    return log(x);
}

fn sqrt_s(x: S) -> S {
    return sqrt(x);
}

fn rsqrt_s(x: S) -> S {
    return inverseSqrt(x);
}

fn log1p_unit(t: S) -> S {
    if t < 0.03125 {
        return t * (1.0 + t * (-0.5 + t * (1.0 / 3.0 + t * (-0.25 + t * 0.2))));
    }
    return log(1.0 + t);
}

fn tanh_s(x: S) -> S {
    let e = exp(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, x < 0.0);
}
