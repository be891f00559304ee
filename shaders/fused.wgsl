// fused.wgsl: the shared header of the fused elementwise kernels (src/exec/gpu/fusion.rs). The
// executor composes each kernel as: scalar prelude (S), elementwise_ops.wgsl (unary_op,
// binary_op), this file, then the generated part: the bindings of its L leaves (bindings
// 1 ..= L, read) and of its output (binding L + 1, read_write), and the entry point `fused`,
//   out[i] = e(in_0[off_0(i)], ..., in_{L-1}[off_{L-1}(i)]),
// where e is a tree of unary_op / binary_op / select calls and exact literals, every
// intermediate a `let` of type S (rounded once per operation, as the single-op kernels).
//
// Equation of the offsets (NumPy broadcasting, as elementwise.wgsl): with (c_0, ..., c_{rank-1})
// the row-major coordinate of flat output index i in `shape`,
//   off_l(i) = sum_d c_d * strides_l[d],
// strides_l[d] = 0 on every axis that leaf l lacks or has extent 1. A leaf of the output's
// shape reads in_l[i] directly (the generated code then never calls leaf_offset for it).
//
// FusedParams (240 bytes; mirrored field for field by `FusedParams` in src/exec/gpu/kernels.rs):
//   total:   u32                       number of output elements
//   rank:    u32                       number of axes used in shape/strides (<= MAX_RANK)
//   _pad0, _pad1: u32
//   shape:   array<vec4<u32>, 2>       output extents, axis d at [d / 4][d % 4]
//   strides: array<vec4<u32>, 12>      strides of leaf l, axis d at [2 l + d / 4][d % 4]
//                                      (MAX_LEAVES = 6 leaves)
//
// Invocation id -> output index: the host dispatches (min(G, L), ceil(G / L), 1) workgroups,
// G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index.
// Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

struct FusedParams {
    total: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    shape: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 12>,
}

@group(0) @binding(0) var<uniform> params: FusedParams;

// off_l(i) for leaf l.
fn leaf_offset(l: u32, i: u32) -> u32 {
    var rem = i;
    var off = 0u;
    let rank = min(params.rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = params.shape[d / 4u][d % 4u];
        off += (rem % n) * params.strides[2u * l + d / 4u][d % 4u];
        rem = rem / n;
    }
    return off;
}
