// reduce.wgsl: ReduceSum (graph::Op::ReduceSum) and ReduceMax (graph::Op::ReduceMax) over any set
// of axes, reduced axes kept as 1, in the element type S (f32, or f64 where the adapter offers
// SHADER_F64). The scalar prelude (scalar_f32.wgsl or scalar_f64.wgsl) is prepended and defines S,
// is_nan and neg_inf_s. This file holds the parameters and bindings; the entry points are in
// reduce_core.wgsl, appended after it, and read the input through reduce_input (below), which a
// fused reduction (fused_reduce.wgsl) replaces by an elementwise expression.
//
// Equation: with the input's axes split into kept axes K and reduced axes R,
//   out[o] = sum_{r = 0}^{n_red - 1} x[base(o) + roff(r)]
//   base(o) = sum_{d in K} c_d(o) * kept_strides[d],  c(o) = row-major coordinate of o in kept_shape
//   roff(r) = sum_{d in R} e_d(r) * red_strides[d],   e(r) = row-major coordinate of r in red_shape
// The output's row-major order over its full shape (reduced axes of extent 1) equals the
// row-major order over kept_shape, so o is also the output's flat index. An empty R (n_red = 1)
// copies; n_red = 0 (an empty reduced axis) writes 0.
// ReduceMax replaces the sum by out[o] = max_nan over the same elements, starting from -inf:
//   max_nan(m, v) = v if v is NaN or v > m, else m,
// so a NaN anywhere gives NaN (NaN propagates) and the result is exact (one of the inputs),
// independent of the order, as the CPU kernel's fold.
//
// Entry points, the same bindings and params (reduce_max_* as reduce_sum_*):
//   reduce_sum_serial:    one invocation per output element, summing r = 0, 1, ... in order.
//   reduce_sum_workgroup: one workgroup per output element; invocation t sums
//                         r = t, t + WORKGROUP_SIZE, ..., then a tree over workgroup memory.
//   reduce_sum_split, reduce_sum_finish: the same sum split into SPLIT chunks of r, one
//                         workgroup each, then a workgroup per output adding the chunks'
//                         partial sums (two dispatches; reduce_core.wgsl gives the details).
// Both orders are a summation tree of depth <= n_red, so the error is at most
// gamma_{n_red}(u) * sum |x| (Higham, ch. 4), u the unit roundoff of S.
//
// Bindings (group 0):
//   0 params: uniform, ReduceParams
//   1 x:      storage, read,       array<S>, the input, row-major
//   2 out:    storage, read_write, array<S>, the output, row-major, total_out elements
//
// ReduceParams (144 bytes; mirrored field for field by `ReduceParams` in src/exec/gpu/kernels/params.rs):
//   total_out:    u32                  number of output elements (product of kept extents)
//   n_red:        u32                  number of summed elements per output (product of reduced extents)
//   kept_rank:    u32                  number of kept axes (<= MAX_RANK)
//   red_rank:     u32                  number of reduced axes (<= MAX_RANK)
//   kept_shape:   array<vec4<u32>, 2>  extents of the kept axes, in input order; axis d at [d / 4][d % 4]
//   kept_strides: array<vec4<u32>, 2>  input element strides of the kept axes
//   red_shape:    array<vec4<u32>, 2>  extents of the reduced axes, in input order
//   red_strides:  array<vec4<u32>, 2>  input element strides of the reduced axes
//
// Invocation id -> output coordinate (the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, L = max workgroups per dimension (65535)):
//   serial:    o = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE
//                  + local_invocation_index,  G = ceil(total_out / WORKGROUP_SIZE);
//              invocations with o >= total_out return at once.
//   workgroup: o = workgroup_id.y * num_workgroups.x + workgroup_id.x, G = total_out;
//              t = local_invocation_index. A workgroup with o >= total_out returns at once (o is
//              uniform over the workgroup, so no invocation skips a barrier another one reaches).

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

struct ReduceParams {
    total_out: u32,
    n_red: u32,
    kept_rank: u32,
    red_rank: u32,
    kept_shape: array<vec4<u32>, 2>,
    kept_strides: array<vec4<u32>, 2>,
    red_shape: array<vec4<u32>, 2>,
    red_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: ReduceParams;
@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> out: array<S>;

// The value of input element i: here the input buffer itself; a fused reduction
// (src/exec/gpu/fusion/mod.rs, fused_reduce.wgsl) computes it from its leaves instead.
fn reduce_input(i: u32) -> S {
    return x[i];
}

// The value stored at output o whose sum (or max) is v: v itself; a fused reduction may apply
// an epilogue instead.
fn reduce_output(o: u32, v: S) -> S {
    return v;
}
