// elementwise.wgsl: the elementwise primitives of darts, in f32.
//
// Primitives and equations (graph::Op; every tensor is dense and row-major):
//   unary     (Op::Unary):     out[i] = f_op(a[i])
//   binary    (Op::Binary):    out[i] = g_op(a[off_a(i)], b[off_b(i)])   (NumPy broadcasting)
//   broadcast (Op::Broadcast): out[i] = a[off_a(i)]
//   fill      (Op::Const):     out[i] = value
//   select_ab (Op::Select):    out[i] = cond[i] != 0 ? a[i] : b[i]   (all of `total` elements;
//                              NaN != 0 picks a, -0 == 0 picks b, as the CPU kernel; tested on
//                              the bit pattern, so exact)
// With (c_0, ..., c_{rank-1}) the row-major coordinate of flat index i in `shape`,
//   off_a(i) = sum_d c_d * a_strides[d],   off_b(i) = sum_d c_d * b_strides[d],
// where a stride is 0 on every axis that the input lacks or has extent 1 (so one pipeline
// serves every pair of broadcastable shapes).
//
// f_op (UnaryParams.op codes, the order of graph::UnaryOp): 0 neg, 1 exp, 2 log, 3 sqrt,
//   4 rsqrt = 1/sqrt(x), 5 recip = 1/x, 6 square = x*x,
//   7 tanh = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|),
//   8 sigmoid = 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) for x < 0 (no overflow),
//   9 relu = x for x > 0, else 0 (relu(0) = 0; its derivative step(0) = 0),
//   10 softplus = max(x, 0) + log1p(exp(-|x|)),
//   11 step = 1 for x > 0, else 0 (step(0) = 0, step(NaN) = 0).
// g_op (graph::BinaryOp order): 0 add, 1 sub, 2 mul, 3 div,
//   4 max = NaN if either is NaN, a if a >= b, else b (a tie gives a),
//   5 greater = 1 if a > b else 0, 6 equal = 1 if a == b else 0 (both 0 when either is NaN).
// NaN: every f_op except step, and add/sub/mul/div/max, return NaN for a NaN input. WGSL lets an
// implementation assume NaN never occurs, so NaN is detected from the bit pattern (is_nan), never
// with x != x, and propagated explicitly.
//
// Bindings (group 0); each entry point uses the subset listed:
//   0 params: uniform, EwParams                               (unary, binary, broadcast, fill)
//   1 a:      storage, read,       array<f32>, row-major input (unary, binary, broadcast, select)
//   2 b:      storage, read,       array<f32>, row-major input (binary, select)
//   3 out:    storage, read_write, array<f32>, row-major output of `total` elements (all)
//   4 cond:   storage, read,       array<f32>, row-major condition (select)
//
// EwParams (112 bytes; mirrored field for field by `EwParams` in src/exec/gpu/kernels.rs):
//   total:     u32                      number of output elements
//   rank:      u32                      number of axes used in shape/strides (<= MAX_RANK)
//   op:        u32                      f_op or g_op code above
//   value:     f32                      fill value (fill only)
//   shape:     array<vec4<u32>, 2>      output extents, axis d at [d / 4][d % 4]
//   a_strides: array<vec4<u32>, 2>      element strides of a per output axis (0 = broadcast)
//   b_strides: array<vec4<u32>, 2>      element strides of b per output axis (0 = broadcast)
//
// Invocation id -> output coordinate: the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension (65535), and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index,
// then c_d = (i / prod_{e > d} shape[e]) % shape[d]. Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

struct EwParams {
    total: u32,
    rank: u32,
    op: u32,
    value: f32,
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: EwParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> cond: array<f32>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
}

fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn nan() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}

// log(1 + t) for t in [0, 1]: the series t - t^2/2 + t^3/3 - t^4/4 + t^5/5 below 1/32 (its
// truncation error t^6/6 is under 2^-24 t there), log(1 + t) above.
fn log1p_unit(t: f32) -> f32 {
    if t < 0.03125 {
        return t * (1.0 + t * (-0.5 + t * (1.0 / 3.0 + t * (-0.25 + t * 0.2))));
    }
    return log(1.0 + t);
}

fn unary_op(op: u32, x: f32) -> f32 {
    if op == 11u {
        return select(0.0, 1.0, !is_nan(x) && x > 0.0);
    }
    if is_nan(x) {
        return x;
    }
    switch op {
        case 0u: { return -x; }
        case 1u: { return exp(x); }
        case 2u: { return log(x); }
        case 3u: { return sqrt(x); }
        case 4u: { return inverseSqrt(x); }
        case 5u: { return 1.0 / x; }
        case 6u: { return x * x; }
        case 7u: {
            let e = exp(-2.0 * abs(x));
            let t = (1.0 - e) / (1.0 + e);
            return select(t, -t, x < 0.0);
        }
        case 8u: {
            if x >= 0.0 {
                return 1.0 / (1.0 + exp(-x));
            }
            let e = exp(x);
            return e / (1.0 + e);
        }
        case 9u: { return select(0.0, x, x > 0.0); }
        case 10u: { return max(x, 0.0) + log1p_unit(exp(-abs(x))); }
        default: { return nan(); }
    }
}

fn binary_op(op: u32, x: f32, y: f32) -> f32 {
    let either_nan = is_nan(x) || is_nan(y);
    switch op {
        case 5u: { return select(0.0, 1.0, !either_nan && x > y); }
        case 6u: { return select(0.0, 1.0, !either_nan && x == y); }
        default: {}
    }
    if either_nan {
        return nan();
    }
    switch op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return select(y, x, x >= y); }
        default: { return nan(); }
    }
}

fn extent(d: u32) -> u32 {
    return params.shape[d / 4u][d % 4u];
}

// Offsets of output element i in a and b: (off_a(i), off_b(i)).
fn offsets(i: u32) -> vec2<u32> {
    var rem = i;
    var off = vec2<u32>(0u, 0u);
    let rank = min(params.rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = extent(d);
        let c = rem % n;
        rem = rem / n;
        off += c * vec2<u32>(params.a_strides[d / 4u][d % 4u], params.b_strides[d / 4u][d % 4u]);
    }
    return off;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    out[i] = unary_op(params.op, a[i]);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let off = offsets(i);
    out[i] = binary_op(params.op, a[off.x], b[off.y]);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn broadcast(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    out[i] = a[offsets(i).x];
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    out[i] = params.value;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn select_ab(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let nonzero = (bitcast<u32>(cond[i]) & 0x7fffffffu) != 0u;
    out[i] = select(b[i], a[i], nonzero);
}
