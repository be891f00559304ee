// pool.wgsl: 2-D pooling over NCHW planes and its backward primitives (graph::Op::AvgPool2d,
// AvgPool2dGrad, MaxPool2d, MaxPool2dGrad, MaxPool2dGather), in the element type S (f32, or f64
// where the adapter offers SHADER_F64). No atomics: every output element gathers its own
// contributions in a fixed order, so runs repeat exactly. The scalar prelude (scalar_f32.wgsl or
// scalar_f64.wgsl) is prepended and defines S, is_nan and neg_inf_s.
//
// Window (p, q) of a plane covers the signed padded rows y0 = p * stride_h - pad_h,
// ..., y0 + kh - 1 and columns x0 = q * stride_w - pad_w, ..., x0 + kw - 1; its in-bounds part is
// rows [max(y0, 0), min(y0 + kh, h)) and columns [max(x0, 0), min(x0 + kw, w)), count(p, q)
// pixels. Padding never counts (count_include_pad = False) and acts as -inf for max.
//   avg_pool:        out[p, q] = (sum over the in-bounds window of a) / count(p, q)
//                    (a = x; K = count terms, row-major order)
//   avg_pool_grad:   out[y, x] = sum over windows (p, q) containing (y, x) of a[p, q] / count(p, q)
//                    (a = gy; p, q ascending: the CPU kernel's scatter order per pixel)
//   argmax(p, q):    the first maximum of a over the in-bounds window in row-major scan:
//                    best = -inf; a value v replaces it when v > best or v is NaN, and the first
//                    NaN ends the scan (NaN wins), as the CPU kernel. An all -inf window gives its
//                    first in-bounds pixel.
//   max_pool_gather: out[p, q] = b[argmax(p, q)]   (a = x, b = c; MaxPool2d binds x as both)
//   max_pool_grad:   out[y, x] = sum over windows (p, q) containing (y, x) with
//                    argmax(p, q) = (y, x) of b[p, q]   (a = x, b = gy; p, q ascending)
// The windows containing row y are p with p * stride_h - pad_h <= y < p * stride_h - pad_h + kh:
//   ceil((y + pad_h - kh + 1) / stride_h) <= p <= floor((y + pad_h) / stride_h), clipped to [0, oh).
//
// Bindings (group 0); each entry point uses the subset listed:
//   0 params: uniform, PoolParams                           (all)
//   1 a:      storage, read,       array<S>, row-major     (all)
//   2 b:      storage, read,       array<S>, row-major     (max_pool_gather, max_pool_grad)
//   3 out:    storage, read_write, array<S>, row-major output of `total` elements (all)
//
// PoolParams (48 bytes; mirrored field for field by `PoolParams` in src/exec/gpu/kernels/params.rs):
//   total:  u32   number of output elements of the entry point
//   planes: u32   n * c
//   h, w:   u32   input height and width
//   oh, ow: u32   pooled height and width
//   kh, kw, stride_h, stride_w, pad_h, pad_w: u32
//
// Invocation id -> output coordinate: the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index,
// the row-major flat index of the output ([planes, oh, ow] for avg_pool and max_pool_gather,
// [planes, h, w] for the two grads). Invocations with i >= total return at once.

const WORKGROUP_SIZE: u32 = 256u;

struct PoolParams {
    total: u32,
    planes: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
}

@group(0) @binding(0) var<uniform> params: PoolParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
}

// In-bounds rows [r.x, r.y) and columns [r.z, r.w) of window (p, q).
fn window(p: u32, q: u32) -> vec4<u32> {
    let y0 = i32(p * params.stride_h) - i32(params.pad_h);
    let x0 = i32(q * params.stride_w) - i32(params.pad_w);
    let y1 = min(y0 + i32(params.kh), i32(params.h));
    let x1 = min(x0 + i32(params.kw), i32(params.w));
    return vec4<u32>(u32(max(y0, 0)), u32(y1), u32(max(x0, 0)), u32(x1));
}

// Windows containing pixel row y (or column): [lo, hi) in output rows.
fn covering(y: u32, k: u32, s: u32, pad: u32, n_out: u32) -> vec2<u32> {
    let num = i32(y + pad) - i32(k) + 1;
    var lo = 0u;
    if num > 0 {
        lo = (u32(num) + s - 1u) / s;
    }
    let hi = min((y + pad) / s + 1u, n_out);
    return vec2<u32>(lo, max(lo, hi));
}

// In-plane flat index of the first maximum of a over window (p, q) of the plane at `off`.
fn argmax(off: u32, p: u32, q: u32) -> u32 {
    let r = window(p, q);
    var best = neg_inf_s();
    var at = r.x * params.w + r.z;
    for (var yy = r.x; yy < r.y; yy++) {
        for (var xx = r.z; xx < r.w; xx++) {
            let v = a[off + yy * params.w + xx];
            if v > best || is_nan(v) {
                best = v;
                at = yy * params.w + xx;
                if is_nan(v) {
                    return at;
                }
            }
        }
    }
    return at;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn avg_pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let q = i % params.ow;
    let p = (i / params.ow) % params.oh;
    let off = (i / (params.ow * params.oh)) * params.h * params.w;
    let r = window(p, q);
    var s: S = 0.0;
    for (var yy = r.x; yy < r.y; yy++) {
        for (var xx = r.z; xx < r.w; xx++) {
            s += a[off + yy * params.w + xx];
        }
    }
    out[i] = s / S((r.y - r.x) * (r.w - r.z));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn avg_pool_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let x = i % params.w;
    let y = (i / params.w) % params.h;
    let goff = (i / (params.w * params.h)) * params.oh * params.ow;
    let rp = covering(y, params.kh, params.stride_h, params.pad_h, params.oh);
    let rq = covering(x, params.kw, params.stride_w, params.pad_w, params.ow);
    var s: S = 0.0;
    for (var p = rp.x; p < rp.y; p++) {
        for (var q = rq.x; q < rq.y; q++) {
            let r = window(p, q);
            s += a[goff + p * params.ow + q] / S((r.y - r.x) * (r.w - r.z));
        }
    }
    out[i] = s;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn max_pool_gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let q = i % params.ow;
    let p = (i / params.ow) % params.oh;
    let off = (i / (params.ow * params.oh)) * params.h * params.w;
    out[i] = b[off + argmax(off, p, q)];
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn max_pool_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wid, nwg, lid);
    if i >= params.total {
        return;
    }
    let x = i % params.w;
    let y = (i / params.w) % params.h;
    let plane = i / (params.w * params.h);
    let off = plane * params.h * params.w;
    let goff = plane * params.oh * params.ow;
    let me = y * params.w + x;
    let rp = covering(y, params.kh, params.stride_h, params.pad_h, params.oh);
    let rq = covering(x, params.kw, params.stride_w, params.pad_w, params.ow);
    var s: S = 0.0;
    for (var p = rp.x; p < rp.y; p++) {
        for (var q = rq.x; q < rq.y; q++) {
            if argmax(off, p, q) == me {
                s += b[goff + p * params.ow + q];
            }
        }
    }
    out[i] = s;
}
