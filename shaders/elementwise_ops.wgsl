// elementwise_ops.wgsl: f_op and g_op of elementwise.wgsl (whose header gives their equations
// and NaN rules), as functions of the op code, shared by the single-op kernels of
// elementwise.wgsl and the generated kernels of fused.wgsl so both compute each op the same
// way. A scalar prelude (scalar_f32.wgsl or scalar_f64.wgsl) is prepended and defines S, is_nan,
// nan_s, exp_s, log_s, sqrt_s, rsqrt_s, tanh_s and log1p_unit.

fn unary_op(op: u32, x: S) -> S {
    if op == 11u {
        return select(S(0.0), S(1.0), !is_nan(x) && x > 0.0);
    }
    if is_nan(x) {
        return x;
    }
    switch op {
        case 0u: { return -x; }
        case 1u: { return exp_s(x); }
        case 2u: { return log_s(x); }
        case 3u: { return sqrt_s(x); }
        case 4u: { return rsqrt_s(x); }
        case 5u: { return 1.0 / x; }
        case 6u: { return x * x; }
        case 7u: { return tanh_s(x); }
        case 8u: {
            if x >= 0.0 {
                return 1.0 / (1.0 + exp_s(-x));
            }
            let e = exp_s(x);
            return e / (1.0 + e);
        }
        case 9u: { return select(0.0, x, x > 0.0); }
        case 10u: { return select(0.0, x, x > 0.0) + log1p_unit(exp_s(-abs(x))); }
        default: { return nan_s(); }
    }
}

fn binary_op(op: u32, x: S, y: S) -> S {
    let either_nan = is_nan(x) || is_nan(y);
    switch op {
        case 5u: { return select(S(0.0), S(1.0), !either_nan && x > y); }
        case 6u: { return select(S(0.0), S(1.0), !either_nan && x == y); }
        default: {}
    }
    if either_nan {
        return nan_s();
    }
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return select(y, x, x >= y); }
        default: { return nan_s(); }
    }
}
