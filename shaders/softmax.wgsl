// softmax.wgsl: LogSoftmax (graph::Op::LogSoftmax) along one axis, max-shifted, in the element type
// S (f32, or f64 where the adapter offers SHADER_F64). The scalar prelude (scalar_f32.wgsl or
// scalar_f64.wgsl) is prepended and defines S, exp_s, log_s and neg_inf_s (exp and log below).
//
// Equation: for each lane (the elements that differ only in the softmax axis, n of them),
//   m   = max_j x_j                      (v > m comparisons from -inf, as the CPU kernel)
//   s   = sum_{j = 0}^{n - 1} exp(x_j - m)   (in order j = 0, 1, ...)
//   out_j = x_j - (m + log(s)).
// With the input viewed as [outer, n, inner] (inner = product of the extents after the axis),
// lane l = (a, b), a = l / inner, b = l % inner, holds the elements a * n * inner + j * inner + b.
// A NaN in a lane makes s and every output of that lane NaN (as the CPU kernel).
//
// Bindings (group 0):
//   0 params: uniform, SoftmaxParams
//   1 x:      storage, read,       array<S>, the input, row-major
//   2 out:    storage, read_write, array<S>, the output, row-major, the input's shape
//
// SoftmaxParams (16 bytes; mirrored field for field by `SoftmaxParams` in src/exec/gpu/kernels/params.rs):
//   lanes: u32   number of lanes (outer * inner)
//   n:     u32   extent of the softmax axis
//   inner: u32   product of the extents after the axis
//   _pad:  u32
//
// Invocation id -> lane: the host dispatches (min(G, L), ceil(G / L), 1) workgroups,
// G = ceil(lanes / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   l = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index;
// invocation l writes the n outputs of lane l. Invocations with l >= lanes return at once.

const WORKGROUP_SIZE: u32 = 256u;

struct SoftmaxParams {
    lanes: u32,
    n: u32,
    inner: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: SoftmaxParams;
@group(0) @binding(1) var<storage, read> x: array<S>;
@group(0) @binding(2) var<storage, read_write> out: array<S>;

@compute @workgroup_size(WORKGROUP_SIZE)
fn log_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let l = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if l >= params.lanes {
        return;
    }
    let base = (l / params.inner) * params.n * params.inner + l % params.inner;
    var m = neg_inf_s();
    for (var j = 0u; j < params.n; j++) {
        let v = x[base + j * params.inner];
        if v > m {
            m = v;
        }
    }
    var s: S = 0.0;
    for (var j = 0u; j < params.n; j++) {
        s += exp_s(x[base + j * params.inner] - m);
    }
    let lse = m + log_s(s);
    for (var j = 0u; j < params.n; j++) {
        let at = base + j * params.inner;
        out[at] = x[at] - lse;
    }
}
