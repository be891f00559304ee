// fused_map.wgsl: the parameters of a fused elementwise kernel (see fused.wgsl for the
// composition and the equation).
//
// FusedParams (368 bytes; mirrored field for field by `FusedParams` in src/exec/gpu/kernels/params.rs):
//   total, rank, views: u32, then one u32 of padding, shape, words: as in fused.wgsl's header.
//
// Invocation id -> output index: the host dispatches (min(G, L), ceil(G / L), 1) workgroups,
// G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index.
// Invocations with i >= total return at once.

struct FusedParams {
    total: u32,
    rank: u32,
    views: u32,
    _pad0: u32,
    shape: array<vec4<u32>, 2>,
    words: array<vec4<u32>, 20>,
}

@group(0) @binding(0) var<uniform> params: FusedParams;

