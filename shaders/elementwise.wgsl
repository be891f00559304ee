// elementwise.wgsl: the elementwise primitives of darts, in the element type S: f32, or f64
// where the adapter offers SHADER_F64. A scalar prelude (scalar_f32.wgsl or scalar_f64.wgsl)
// is prepended and defines S and the functions *_s, is_nan, nonzero and log1p_unit used here;
// then elementwise_ops.wgsl, which defines f_op (unary_op) and g_op (binary_op) below (shared
// with the fused kernels of fused.wgsl).
//
// Primitives and equations (graph::Op; every tensor is dense and row-major):
//   unary     (Op::Unary):     out[i] = f_op(a[i])
//   binary    (Op::Binary):    out[i] = g_op(a[off_a(i)], b[off_b(i)])   (NumPy broadcasting)
//   broadcast (Op::Broadcast): out[i] = a[off_a(i)]
//   fill      (Op::Const):     out[i] = value
//   select_ab (Op::Select):    out[i] = cond[i] != 0 ? a[i] : b[i]   (all of `total` elements;
//                              NaN != 0 picks a, -0 == 0 picks b, as the CPU kernel: nonzero)
// With (c_0, ..., c_{rank-1}) the row-major coordinate of flat index i in `shape`,
//   off_a(i) = sum_d c_d * a_strides[d],   off_b(i) = sum_d c_d * b_strides[d],
// where a stride is 0 on every axis that the input lacks or has extent 1 (so one pipeline
// serves every pair of broadcastable shapes).
//
// f_op (EwParams.op codes, the order of graph::UnaryOp): 0 neg, 1 exp = exp_s, 2 log = log_s,
//   3 sqrt = sqrt_s, 4 rsqrt = 1/sqrt(x) = rsqrt_s, 5 recip = 1/x, 6 square = x*x,
//   7 tanh = tanh_s,
//   8 sigmoid = 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) for x < 0 (no overflow),
//   9 relu = x for x > 0, else 0 (relu(0) = 0; its derivative step(0) = 0),
//   10 softplus = max(x, 0) + log1p_unit(exp(-|x|)),
//   11 step = 1 for x > 0, else 0 (step(0) = 0, step(NaN) = 0).
// g_op (graph::BinaryOp order): 0 add, 1 sub, 2 mul, 3 div,
//   4 max = NaN if either is NaN, a if a >= b, else b (a tie gives a),
//   5 greater = 1 if a > b else 0, 6 equal = 1 if a == b else 0 (both 0 when either is NaN).
// exp, log and their kin are the prelude's: WGSL builtins in f32, polynomials in f64 (see
// scalar_f64.wgsl for why and for their bounds).
// NaN: every f_op except step, and add/sub/mul/div/max, return NaN for a NaN input. WGSL lets an
// implementation assume NaN never occurs, so NaN is detected by the prelude's is_nan (never
// with x != x) and propagated explicitly.
//
// Bindings (group 0); each entry point uses the subset listed:
//   0 params: uniform, EwParams                               (unary, binary, broadcast, fill)
//   1 a:      storage, read,       array<S>, row-major input (unary, binary, broadcast, select)
//   2 b:      storage, read,       array<S>, row-major input (binary, select)
//   3 out:    storage, read_write, array<S>, row-major output of `total` elements (all)
//   4 cond:   storage, read,       array<S>, row-major condition (select)
//
// EwParams (128 bytes for S = f32 and f64; mirrored field for field by `EwParams` in
// src/exec/gpu/kernels/params.rs, which holds `value` as raw bytes):
//   total:     u32                      number of output elements
//   rank:      u32                      number of axes used in shape/strides (<= MAX_RANK)
//   op:        u32                      f_op or g_op code above
//   _pad:      u32
//   shape:     array<vec4<u32>, 2>      output extents, axis d at [d / 4][d % 4]
//   a_strides: array<vec4<u32>, 2>      element strides of a per output axis (0 = broadcast)
//   b_strides: array<vec4<u32>, 2>      element strides of b per output axis (0 = broadcast)
//   value:     S                        fill value (fill only), at byte 112, then padding to 128
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
    _pad: u32,
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
    value: S,
}

@group(0) @binding(0) var<uniform> params: EwParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;
@group(0) @binding(4) var<storage, read> cond: array<S>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
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
    out[i] = select(b[i], a[i], nonzero(cond[i]));
}
