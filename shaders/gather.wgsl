// gather.wgsl: Gather and ScatterAdd (graph::Op::Gather, graph::Op::ScatterAdd), in the element
// type S (f32, or f64 where the adapter offers SHADER_F64). Indices are exact integers stored as S
// (exact up to 2^24 in f32, 2^53 in f64). The scalar prelude (scalar_f32.wgsl or scalar_f64.wgsl)
// is prepended and defines S and nan_s.
//
//   gather:      out[r, j] = a[idx[r], j]         (a = table [rows, d], b = idx [n]; out [n, d])
//                An index that is not an integer in [0, rows) gives NaN for that row.
//   scatter_add: out[k, j] = sum_{r = 0}^{n - 1, idx[r] == k} b[r, j]   (a = idx [n], b = src [n, d];
//                out [rows, d]) as a gather over the source rows, r ascending: no atomics, so
//                runs repeat exactly. An index that is not an integer in [0, rows) matches no
//                output row and its source row is dropped.
// The executor checks indices on the host when they are a graph Input or Const and returns
// ExecError::IndexOutOfRange naming the node (as the CPU executor); indices computed on the
// device get the behaviour above.
//
// Bindings (group 0), both entry points:
//   0 params: uniform, GatherParams
//   1 a:      storage, read,       array<S>, first operand (see above), row-major
//   2 b:      storage, read,       array<S>, second operand, row-major
//   3 out:    storage, read_write, array<S>, the output, row-major, `total` elements
//
// GatherParams (16 bytes; mirrored field for field by `GatherParams` in src/exec/gpu/kernels/params.rs):
//   total: u32   number of output elements
//   rows:  u32   rows of the table (gather) or of the output (scatter_add)
//   n:     u32   number of indices
//   d:     u32   elements per row (product of the trailing extents)
//
// Invocation id -> output coordinate: the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index,
// row i / d, column i % d. Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;

struct GatherParams {
    total: u32,
    rows: u32,
    n: u32,
    d: u32,
}

@group(0) @binding(0) var<uniform> params: GatherParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
}

// Whether v is an integer in [0, rows) (false for NaN and infinities; u32(v) truncates, so
// S(u32(v)) == v exactly when v is an integer).
fn valid_row(v: S, rows: u32) -> bool {
    return v >= 0.0 && v < S(rows) && S(u32(v)) == v;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let v = b[i / params.d];
    if valid_row(v, params.rows) {
        out[i] = a[u32(v) * params.d + i % params.d];
    } else {
        out[i] = nan_s();
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let k = S(i / params.d);
    let j = i % params.d;
    var s: S = 0.0;
    for (var r = 0u; r < params.n; r++) {
        let v = a[r];
        if valid_row(v, params.rows) && v == k {
            s += b[r * params.d + j];
        }
    }
    out[i] = s;
}
