// probe_f64.wgsl: each f64 operation the f64 kernels rely on, alone, so that it can be checked
// against the host's IEEE 754 f64 (src/exec/gpu/probe.rs: at construction of the f64 executor
// and in tests/gpu_f64_math.rs). Composed with scalar_f64.wgsl only (it calls the prelude's
// pow2, split, expm1_neg, ...).
//
//   out[i] = f_op(a[i], b[i]), op codes (`Probe` in src/exec/gpu/probe.rs, same order):
//     0 add a + b        1 sub a - b       2 mul a * b       3 div a / b
//     4 sqrt(a)          5 abs(a)
//     6 f64(i32(a))      7 f64(u32(a))     8 f64(f32(a))     (conversions; i32 and u32 truncate)
//     9 is_nan(a)        10 a > b          11 a < b          12 a >= b         13 a == b
//                        (1 for true, 0 for false)
//     14 pow2(i32(a))    15 split(a).m     16 split(a).e
//     17 exp_s(a)        18 expm1_neg(a)   19 log1p_unit(a)  20 log_s(a)       21 tanh_s(a)
//     22 nan_s()         23 neg_inf_s()    24 rsqrt_s(a)
//
// Bindings (group 0):
//   0 params: uniform, ProbeParams
//   1 a:      storage, read,       array<S>, first operands
//   2 b:      storage, read,       array<S>, second operands (read by every op; ignored by unary ones)
//   3 out:    storage, read_write, array<S>, `total` results
//
// ProbeParams (16 bytes; mirrored field for field by `ProbeParams` in src/exec/gpu/kernels/params.rs):
//   total: u32, op: u32, _pad0: u32, _pad1: u32
//
// Invocation id -> element: the host dispatches (min(G, L), ceil(G / L), 1) workgroups,
// G = ceil(total / WORKGROUP_SIZE), and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index.
// Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;

struct ProbeParams {
    total: u32,
    op: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: ProbeParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;

fn truth(c: bool) -> S {
    return select(S(0.0), S(1.0), c);
}

fn probe_op(op: u32, x: S, y: S) -> S {
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return sqrt(x); }
        case 5u: { return abs(x); }
        case 6u: { return S(i32(x)); }
        case 7u: { return S(u32(x)); }
        case 8u: { return S(f32(x)); }
        case 9u: { return truth(is_nan(x)); }
        case 10u: { return truth(x > y); }
        case 11u: { return truth(x < y); }
        case 12u: { return truth(x >= y); }
        case 13u: { return truth(x == y); }
        case 14u: { return pow2(i32(x)); }
        case 15u: { return split(x).m; }
        case 16u: { return S(split(x).e); }
        case 17u: { return exp_s(x); }
        case 18u: { return expm1_neg(x); }
        case 19u: { return log1p_unit(x); }
        case 20u: { return log_s(x); }
        case 21u: { return tanh_s(x); }
        case 22u: { return nan_s(); }
        case 23u: { return neg_inf_s(); }
        case 24u: { return rsqrt_s(x); }
        default: { return nan_s(); }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn probe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if i >= params.total {
        return;
    }
    out[i] = probe_op(params.op, a[i], b[i]);
}
