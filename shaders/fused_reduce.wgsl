// fused_reduce.wgsl: the parameters of a fused reduction: ReduceSum or ReduceMax (reduce.wgsl's
// equations and dispatch, entry points in reduce_core.wgsl) of an elementwise expression e
// (fused.wgsl), computed element by element as the reduction reads it.
//
// FusedReduceParams (512 bytes; mirrored by `FusedReduceParams` in src/exec/gpu/kernels/params.rs as a
// ReduceParams followed by a FusedParams): the ReduceParams fields of reduce.wgsl (over the
// shape of e, which is the reduction's input), then the fields of e (fused.wgsl's header).

struct FusedReduceParams {
    total_out: u32,
    n_red: u32,
    kept_rank: u32,
    red_rank: u32,
    kept_shape: array<vec4<u32>, 2>,
    kept_strides: array<vec4<u32>, 2>,
    red_shape: array<vec4<u32>, 2>,
    red_strides: array<vec4<u32>, 2>,
    total: u32,
    rank: u32,
    views: u32,
    _pad0: u32,
    shape: array<vec4<u32>, 2>,
    words: array<vec4<u32>, 20>,
}

@group(0) @binding(0) var<uniform> params: FusedReduceParams;
