// movement.wgsl: the data-movement primitives of darts, in the element type S (f32, or f64 where
// the adapter offers SHADER_F64; exact: every output element is one input element or 0). The scalar
// prelude (scalar_f32.wgsl or scalar_f64.wgsl) is prepended and defines S.
//
// One entry point, `copy`, serves Permute, Slice (with step), Pad (before/after/interior zeros)
// and Concat (graph::Op). With (c_0, ..., c_{rank-1}) the row-major coordinate of output flat
// index i in `shape`, and for every output axis d the signed padded coordinate
//   t_d = c_d - lo[d],
// output element i reads
//   out[i] = x[base + sum_d (t_d / div[d]) * in_strides[d]]
//            if for every d: t_d >= 0, t_d % div[d] == 0 and t_d / div[d] < extent[d];
// otherwise it is outside the input: out[i] = 0 when skip_outside == 0, left unwritten when
// skip_outside == 1. The host sets, per primitive (strides are the input's row-major strides):
//   permute (out axis d is input axis perm[d]): in_strides[d] = stride[perm[d]], lo = 0, div = 1,
//            extent[d] = shape[d], base = 0.
//   slice(axis a, start, end, step): in_strides[a] = stride[a] * step, base = start * stride[a];
//            other axes copy (lo = 0, div = 1, extent = shape).
//   pad(axis a, before, after, interior): lo[a] = before, div[a] = interior + 1,
//            extent[a] = input extent, skip_outside = 0 (the zeros).
//   concat(axis a): one dispatch per input k over the whole output, lo[a] = sum of the earlier
//            inputs' extents along a, extent[a] = input k's extent, skip_outside = 1; the
//            dispatches write disjoint elements and together cover the output.
//
// Bindings (group 0):
//   0 params: uniform, MoveParams
//   1 x:      storage, read,       array<S>, the input, row-major
//   2 out:    storage, read_write, array<S>, the output, row-major, `total` elements
//
// MoveParams (176 bytes; mirrored field for field by `MoveParams` in src/exec/gpu/kernels/params.rs):
//   total:        u32                  number of output elements
//   rank:         u32                  number of axes (<= MAX_RANK)
//   base:         u32                  input element offset of the first copied element
//   skip_outside: u32                  0: write 0 outside the input; 1: leave those elements
//   shape:        array<vec4<u32>, 2>  output extents, axis d at [d / 4][d % 4]
//   in_strides:   array<vec4<u32>, 2>  input element step per unit of t_d / div[d]
//   lo:           array<vec4<u32>, 2>  leading offset (padding before) per output axis
//   div:          array<vec4<u32>, 2>  spacing of the input elements per output axis (>= 1)
//   extent:       array<vec4<u32>, 2>  number of input positions per output axis
//
// Invocation id -> output coordinate: the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index.
// Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;
const MAX_RANK: u32 = 8u;

struct MoveParams {
    total: u32,
    rank: u32,
    base: u32,
    skip_outside: u32,
    shape: array<vec4<u32>, 2>,
    in_strides: array<vec4<u32>, 2>,
    lo: array<vec4<u32>, 2>,
    div: array<vec4<u32>, 2>,
    extent: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: MoveParams;
@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> out: array<S>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if i >= params.total {
        return;
    }
    var rem = i;
    var off = params.base;
    var inside = true;
    let rank = min(params.rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = params.shape[d / 4u][d % 4u];
        let c = rem % n;
        rem = rem / n;
        let t = i32(c) - i32(params.lo[d / 4u][d % 4u]);
        let dv = i32(params.div[d / 4u][d % 4u]);
        if t < 0 || t % dv != 0 || t / dv >= i32(params.extent[d / 4u][d % 4u]) {
            inside = false;
        } else {
            off += u32(t / dv) * params.in_strides[d / 4u][d % 4u];
        }
    }
    if inside {
        out[i] = x[off];
    } else if params.skip_outside == 0u {
        out[i] = 0.0;
    }
}
