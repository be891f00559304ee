// fused.wgsl: the shared part of the fused kernels (src/exec/gpu/fusion/mod.rs). The executor composes
// each kernel as: scalar prelude (S), elementwise_ops.wgsl (unary_op, binary_op), this file, then
//   an elementwise map: fused_map.wgsl (FusedParams, `params`), then the generated part: the
//     bindings of its L leaves (bindings 1 ..= L, read) and of its output (binding L + 1,
//     read_write), and the entry point `fused`,
//       out[i] = e(in_0[off_0(i)], ..., in_{L-1}[off_{L-1}(i)]);
//   a reduction of a map: fused_reduce.wgsl (FusedReduceParams, `params`), reduce_core.wgsl
//     (the entry points of reduce.wgsl), then the generated bindings as above and
//       fn reduce_input(i) = e(in_0[off_0(i)], ..., in_{L-1}[off_{L-1}(i)]),
//     so the reduction sums (or maxes) e over the reduced elements without storing it, and
//       fn reduce_output(o, v) = v, or f(v, in_l[o]) / f(v, literal) for an epilogue f (one
//     unary or binary op of the reduced value v of output o; fusion/mod.rs, rule 5);
// where e is a tree of unary_op / binary_op / select calls and exact literals, every
// intermediate a `let` of type S (rounded once per operation, as the single-op kernels), and i
// the flat index in the shape of e (the map's output, or the reduction's input).
//
// Equation of the offsets (views; proofs/gpu-kernel-choices.md, claims 1 and 8): with
// (c_0, ..., c_{rank-1}) the row-major coordinate of flat index i in `shape`, leaf l is read
// through a view (offset o_l, strides st_l, and for a read through a pad bounds lo_l, hi_l):
//   in_bounds_l(i) = for every d: lo_l[d] <= c_d < hi_l[d]
//   value_l(i)     = in_bounds_l(i) ? in_l[o_l + sum_d c_d * st_l[d]] : 0,
// the composition of the slices (start + step c), pads without interior zeros (c - before,
// bounded), reshapes and broadcasts (stride 0 on axes the leaf lacks or has extent 1) between
// the leaf's buffer and the expression. The sum is taken modulo 2^32 (u32 arithmetic wraps, so
// a negative o_l of a padded read is fine: the sum is a valid index wherever in_bounds holds).
// A leaf read at the element's own index (offset 0, row-major strides of `shape`) reads in_l[i]
// directly; any other unbounded view is a plain slot s, a bounded one a bounded slot b. The
// generated code computes each coordinate a slot needs once per element, before the first
// offset that needs it (rank and which strides are 0 are known when the kernel text is
// written; the stride values are parameters):
//   c_d = (i / (shape[d+1] * ... * shape[rank-1])) % shape[d]   (no % for d = 0: i < total),
// then once per slot its offset, vo_s = o_s + sum_{d: st_s[d] != 0} c_d * st_s[d], and for a
// bounded slot (every coordinate) its
// test bi_b = in_bounds_b and offset bo_b = select(0, o_b + sum_d c_d * st_b[d], bi_b) (the load
// then reads element 0 outside the bounds and select gives S(0.0) instead).
//
// The parameters of e (fields of FusedParams, fused_map.wgsl, and of FusedReduceParams,
// fused_reduce.wgsl, by the same names):
//   total:   u32                       number of elements of e's shape
//   rank:    u32                       number of axes used in shape/strides (<= MAX_RANK)
//   views:   u32                       number of plain slots
//   shape:   array<vec4<u32>, 2>       e's extents, axis d at [d / 4][d % 4]
//   words:   array<vec4<u32>, 20>      the views' words, word w at [w / 4][w % 4]
//                                      (VIEW_WORDS = 80): plain slot s at (1 + rank) s:
//                                      o, st[0..rank]; bounded slot b at
//                                      (1 + rank) views + (1 + 3 rank) b: o, st[0..rank],
//                                      lo[0..rank], hi[0..rank]

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

fn view_word(w: u32) -> u32 {
    return params.words[w / 4u][w % 4u];
}
