// matmul.wgsl: MatMul (graph::Op::MatMul), 2-D, tiled through workgroup memory, in the element type
// S (f32, or f64 where the adapter offers SHADER_F64). The scalar prelude (scalar_f32.wgsl or
// scalar_f64.wgsl) is prepended and defines S.
//
// Equation: out[i, j] = sum_{p = 0}^{k - 1} a[i, p] * b[p, j], a [m, k], b [k, n], out [m, n].
// Each invocation accumulates its sum in order p = 0, 1, ..., k - 1, so the error is at most
// gamma_k(u) * sum_p |a[i, p] b[p, j]| (Higham, ch. 3), u the unit roundoff of S.
//
// Bindings (group 0):
//   0 params: uniform, MatmulParams
//   1 a:      storage, read,       array<S>, [m, k] row-major: a[i, p] = a[i * k + p]
//   2 b:      storage, read,       array<S>, [k, n] row-major: b[p, j] = b[p * n + j]
//   3 out:    storage, read_write, array<S>, [m, n] row-major: out[i, j] = out[i * n + j]
//
// MatmulParams (16 bytes; mirrored field for field by `MatmulParams` in src/exec/gpu/kernels/params.rs):
//   m:       u32   rows of a and out
//   k:       u32   columns of a, rows of b
//   n:       u32   columns of b and out
//   tiles_n: u32   ceil(n / TILE), the number of output tiles per tile row
//
// Invocation id -> output coordinate: one workgroup of TILE x TILE invocations per TILE x TILE
// output tile; the host dispatches (min(G, L), ceil(G / L), 1) workgroups for
// G = ceil(m / TILE) * tiles_n, L = max workgroups per dimension (65535), and
//   tile = workgroup_id.y * num_workgroups.x + workgroup_id.x,
//   i = (tile / tiles_n) * TILE + local_invocation_id.y,
//   j = (tile % tiles_n) * TILE + local_invocation_id.x.
// A workgroup with tile >= G returns at once (tile is uniform over the workgroup). Inside a
// tile, invocations with i >= m or j >= n cannot return early, since every invocation must
// reach each barrier: they load zeros into the shared tiles and skip the store instead.

const TILE: u32 = 16u;

struct MatmulParams {
    m: u32,
    k: u32,
    n: u32,
    tiles_n: u32,
}

@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;

var<workgroup> a_tile: array<array<S, TILE>, TILE>;
var<workgroup> b_tile: array<array<S, TILE>, TILE>;

@compute @workgroup_size(TILE, TILE)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = wid.y * nwg.x + wid.x;
    let tiles_m = (params.m + TILE - 1u) / TILE;
    if tile >= tiles_m * params.tiles_n {
        return;
    }
    let i = (tile / params.tiles_n) * TILE + lid.y;
    let j = (tile % params.tiles_n) * TILE + lid.x;
    var acc: S = 0.0;
    let steps = (params.k + TILE - 1u) / TILE;
    for (var s = 0u; s < steps; s++) {
        let pa = s * TILE + lid.x;
        let pb = s * TILE + lid.y;
        var va: S = 0.0;
        if i < params.m && pa < params.k {
            va = a[i * params.k + pa];
        }
        var vb: S = 0.0;
        if pb < params.k && j < params.n {
            vb = b[pb * params.n + j];
        }
        a_tile[lid.y][lid.x] = va;
        b_tile[lid.y][lid.x] = vb;
        workgroupBarrier();
        let len = min(TILE, params.k - s * TILE);
        for (var p = 0u; p < len; p++) {
            acc += a_tile[lid.y][p] * b_tile[p][lid.x];
        }
        workgroupBarrier();
    }
    if i < params.m && j < params.n {
        out[i * params.n + j] = acc;
    }
}
