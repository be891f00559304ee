// fused.wgsl: the shared part of the fused kernels (src/exec/gpu/fusion.rs). The executor composes
// each kernel as: scalar prelude (S), elementwise_ops.wgsl (unary_op, binary_op), this file, then
//   an elementwise map: fused_map.wgsl (FusedParams, `params`), then the generated part: the
//     bindings of its L leaves (bindings 1 ..= L, read) and of its output (binding L + 1,
//     read_write), and the entry point `fused`,
//       out[i] = e(in_0[off_0(i)], ..., in_{L-1}[off_{L-1}(i)]);
//   a reduction of a map: fused_reduce.wgsl (FusedReduceParams, `params`), reduce_core.wgsl
//     (the entry points of reduce.wgsl), then the generated bindings as above and
//       fn reduce_input(i) = e(in_0[off_0(i)], ..., in_{L-1}[off_{L-1}(i)]),
//     so the reduction sums (or maxes) e over the reduced elements without storing it;
// where e is a tree of unary_op / binary_op / select calls and exact literals, every
// intermediate a `let` of type S (rounded once per operation, as the single-op kernels), and i
// the flat index in the shape of e (the map's output, or the reduction's input).
//
// Equation of the offsets (NumPy broadcasting, as elementwise.wgsl): with (c_0, ..., c_{rank-1})
// the row-major coordinate of flat output index i in `shape`,
//   off_l(i) = sum_d c_d * strides_l[d],
// strides_l[d] = 0 on every axis that leaf l lacks or has extent 1. A leaf of the output's
// shape reads in_l[i] directly (the generated code then never calls leaf_offset for it).
//
// The parameters of e (fields of FusedParams, fused_map.wgsl, and of FusedReduceParams,
// fused_reduce.wgsl, by the same names):
//   total:   u32                       number of elements of e's shape
//   rank:    u32                       number of axes used in shape/strides (<= MAX_RANK)
//   shape:   array<vec4<u32>, 2>       e's extents, axis d at [d / 4][d % 4]
//   strides: array<vec4<u32>, 12>      strides of the s-th strided leaf, axis d at
//                                      [2 s + d / 4][d % 4] (MAX_STRIDED = 6; a leaf of e's shape
//                                      needs none)

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

// off(i) for the s-th strided leaf.
fn leaf_offset(s: u32, i: u32) -> u32 {
    var rem = i;
    var off = 0u;
    let rank = min(params.rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = params.shape[d / 4u][d % 4u];
        off += (rem % n) * params.strides[2u * s + d / 4u][d % 4u];
        rem = rem / n;
    }
    return off;
}
