// conv.wgsl: Conv2d and its two transposes (graph::Op::Conv2d, Conv2dInputGrad, Conv2dWeightGrad),
// NCHW input, OIHW weights, by direct convolution: one invocation per output element, no atomics
// (every output element sums its own contributions in a fixed order, so runs repeat exactly).
// Element type S: f32, or f64 where the adapter offers SHADER_F64. The scalar prelude
// (scalar_f32.wgsl or scalar_f64.wgsl) is prepended and defines S.
//
// With Cg = c / groups input channels and Og = o / groups output channels per group, group of
// output channel oc g(oc) = oc / Og, and the input pixel read by output pixel (y, x) at tap (i, j)
//   iy = y * stride_h - pad_h + i * dil_h,   ix = x * stride_w - pad_w + j * dil_w
// (signed; taps outside [0, h) x [0, w) read the zero padding and are skipped):
//   conv2d:       out[n, oc, y, x] = sum_{ci < Cg, i < kh, j < kw} a[n, g Cg + ci, iy, ix] b[oc, ci, i, j]
//                 (a = x [n, c, h, w], b = weight [o, Cg, kh, kw]; K = Cg kh kw terms)
//   input_grad:   out[n, cc, iy, ix] = sum_{i, j : y, x integer in range; oc in group g(cc)}
//                                          a[n, oc, y, x] b[oc, cc - g Cg, i, j]
//                 with y = (iy + pad_h - i dil_h) / stride_h when that is a non-negative
//                 multiple below oh (the same for x); a = gy [n, o, oh, ow], b = weight,
//                 g = cc / Cg; at most K = Og kh kw terms. The transpose of conv2d in x.
//   weight_grad:  out[oc, ci, i, j] = sum_{n, y < oh, x < ow} a[n, g(oc) Cg + ci, iy, ix] b[n, oc, y, x]
//                 (a = x, b = gy; K = n oh ow terms). The transpose of conv2d in the weight.
// Terms are summed in the order of the nested loops as written (outermost first), except by
// conv2d_weight_grad_workgroup (below).
//
// conv2d_weight_grad_workgroup computes the same weight_grad for long sums (K = n oh ow terms
// against only o Cg kh kw outputs: a few hundred outputs of 65536 terms each at the search
// network's first cells, too few invocations to fill a GPU when each sums serially). One
// workgroup per output element; with the terms numbered in the serial loop order,
//   r = (nb * oh + y) * ow + x,   nb = r / (oh ow),  y = (r / ow) % oh,  x = r % ow,
// invocation t sums r = t, t + WORKGROUP_SIZE, t + 2 WORKGROUP_SIZE, ... (consecutive
// invocations read consecutive x: coalesced), then a binary tree over workgroup memory adds the
// WORKGROUP_SIZE partial sums (workgroup_sum of workgroup_tree.wgsl, appended to this file).
// Still a fixed order (runs repeat exactly), and still a summation
// tree of the same K products, so the error bound gamma_K(u) sum |a b| holds unchanged
// (Higham, ch. 4; the tree is in fact shallower: depth K / WORKGROUP_SIZE + log2 WORKGROUP_SIZE).
//
// Bindings (group 0), every entry point:
//   0 params: uniform, ConvParams
//   1 a:      storage, read,       array<S>, first operand (see above), row-major
//   2 b:      storage, read,       array<S>, second operand, row-major
//   3 out:    storage, read_write, array<S>, the output, row-major, `total` elements
//
// ConvParams (80 bytes; mirrored field for field by `ConvParams` in src/exec/gpu/kernels/params.rs):
//   total:  u32    number of output elements of the entry point
//   n, c, h, w:    u32  batch, input channels, input height and width
//   o, oh, ow:     u32  output channels, output height and width
//   kh, kw:        u32  kernel height and width
//   groups:        u32  channel groups (c and o multiples of it; groups = c is depthwise)
//   stride_h, stride_w, pad_h, pad_w, dil_h, dil_w: u32
//   chunks:        u32  chunks per weight element (conv2d_weight_grad_split and _finish only)
//   relu_a:        u32  1: a is the input of a ReLU that the kernel applies as it loads a
//                       (conv2d and the weight gradients: a = x; src/exec/gpu/fusion/mod.rs, rule 6)
//   _pad2: u32
//
// Invocation id -> output coordinate: the host dispatches (min(G, L), ceil(G / L), 1)
// workgroups, G = ceil(total / WORKGROUP_SIZE), L = max workgroups per dimension, and
//   i = (workgroup_id.y * num_workgroups.x + workgroup_id.x) * WORKGROUP_SIZE + local_invocation_index,
// the row-major flat index of the output ([n, o, oh, ow], [n, c, h, w] or [o, Cg, kh, kw]).
// Invocations with i >= total return at once.
// conv2d_weight_grad_workgroup: G = total, and i = workgroup_id.y * num_workgroups.x +
// workgroup_id.x is the output index; a workgroup with i >= total returns at once (i is
// uniform over the workgroup, so no invocation skips a barrier another one reaches).

const WORKGROUP_SIZE: u32 = 256u;

struct ConvParams {
    total: u32,
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    groups: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    chunks: u32,
    relu_a: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: ConvParams;
@group(0) @binding(1) var<storage, read> a: array<S>;
@group(0) @binding(2) var<storage, read> b: array<S>;
@group(0) @binding(3) var<storage, read_write> out: array<S>;

// Element k of the first operand: a[k], or relu(a[k]) when relu_a is set, computed as
// elementwise_ops.wgsl's unary_op computes ReLU (NaN stays NaN; -0 and negatives give +0), so a
// convolution of a ReLU's output equals, bit for bit, this kernel with the ReLU applied on load.
fn load_a(k: u32) -> S {
    let v = a[k];
    if params.relu_a == 0u || is_nan(v) {
        return v;
    }
    return select(S(0.0), v, v > S(0.0));
}

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
}

// Signed input row of output row y at tap i (may lie in the padding).
fn in_row(y: u32, i: u32) -> i32 {
    return i32(y * params.stride_h + i * params.dil_h) - i32(params.pad_h);
}

fn in_col(x: u32, j: u32) -> i32 {
    return i32(x * params.stride_w + j * params.dil_w) - i32(params.pad_w);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= params.total {
        return;
    }
    let x = idx % params.ow;
    var r = idx / params.ow;
    let y = r % params.oh;
    r = r / params.oh;
    let oc = r % params.o;
    let nb = r / params.o;
    let cg = params.c / params.groups;
    let og = params.o / params.groups;
    let c0 = (oc / og) * cg;
    var acc: S = 0.0;
    for (var ci = 0u; ci < cg; ci++) {
        for (var i = 0u; i < params.kh; i++) {
            let iy = in_row(y, i);
            if iy < 0 || iy >= i32(params.h) {
                continue;
            }
            for (var j = 0u; j < params.kw; j++) {
                let ix = in_col(x, j);
                if ix < 0 || ix >= i32(params.w) {
                    continue;
                }
                let xv = load_a(((nb * params.c + c0 + ci) * params.h + u32(iy)) * params.w + u32(ix));
                let wv = b[((oc * cg + ci) * params.kh + i) * params.kw + j];
                acc += xv * wv;
            }
        }
    }
    out[idx] = acc;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d_input_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= params.total {
        return;
    }
    let ix = idx % params.w;
    var r = idx / params.w;
    let iy = r % params.h;
    r = r / params.h;
    let cc = r % params.c;
    let nb = r / params.c;
    let cg = params.c / params.groups;
    let og = params.o / params.groups;
    let g = cc / cg;
    let cl = cc - g * cg;
    var acc: S = 0.0;
    // Taps outermost: each tap's output pixel (integer divisions) is found once, not once per
    // output channel.
    let plane = params.oh * params.ow;
    // (Stride 1, most convolutions, needs no division: the test and quotient are t >= 0, t.)
    for (var i = 0u; i < params.kh; i++) {
        let ty = i32(iy + params.pad_h) - i32(i * params.dil_h);
        if ty < 0 || (params.stride_h != 1u && ty % i32(params.stride_h) != 0) {
            continue;
        }
        var y = u32(ty);
        if params.stride_h != 1u {
            y = y / params.stride_h;
        }
        if y >= params.oh {
            continue;
        }
        for (var j = 0u; j < params.kw; j++) {
            let tx = i32(ix + params.pad_w) - i32(j * params.dil_w);
            if tx < 0 || (params.stride_w != 1u && tx % i32(params.stride_w) != 0) {
                continue;
            }
            var x = u32(tx);
            if params.stride_w != 1u {
                x = x / params.stride_w;
            }
            if x >= params.ow {
                continue;
            }
            let tap = i * params.kw + j;
            let taps = params.kh * params.kw;
            for (var oc = g * og; oc < (g + 1u) * og; oc++) {
                let gv = a[(nb * params.o + oc) * plane + y * params.ow + x];
                let wv = b[(oc * cg + cl) * taps + tap];
                acc += gv * wv;
            }
        }
    }
    out[idx] = acc;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d_weight_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wid, nwg, lid);
    if idx >= params.total {
        return;
    }
    let tap = weight_tap(idx);
    let i = tap.y;
    let j = tap.z;
    let oc = tap.x;
    let cin = tap.w;
    var acc: S = 0.0;
    for (var nb = 0u; nb < params.n; nb++) {
        for (var y = 0u; y < params.oh; y++) {
            let iy = in_row(y, i);
            if iy < 0 || iy >= i32(params.h) {
                continue;
            }
            for (var x = 0u; x < params.ow; x++) {
                let ix = in_col(x, j);
                if ix < 0 || ix >= i32(params.w) {
                    continue;
                }
                let xv = load_a(((nb * params.c + cin) * params.h + u32(iy)) * params.w + u32(ix));
                let gv = b[((nb * params.o + oc) * params.oh + y) * params.ow + x];
                acc += xv * gv;
            }
        }
    }
    out[idx] = acc;
}

// The weight element idx = ((oc Cg + ci) kh + i) kw + j as (oc, i, j, input channel g(oc) Cg + ci).
fn weight_tap(idx: u32) -> vec4<u32> {
    let cg = params.c / params.groups;
    let og = params.o / params.groups;
    let j = idx % params.kw;
    var r = idx / params.kw;
    let i = r % params.kh;
    r = r / params.kh;
    let ci = r % cg;
    let oc = r / cg;
    return vec4<u32>(oc, i, j, (oc / og) * cg + ci);
}

// Invocation lid's share of the terms r in [start, end) of weight element tap (weight_tap of
// its index): r = start + lid, start + lid + WORKGROUP_SIZE, ... (r = (nb oh + y) ow + x).
fn weight_grad_terms(tap: vec4<u32>, start: u32, end: u32, lid: u32) -> S {
    let oc = tap.x;
    let cin = tap.w;
    let plane = params.oh * params.ow;
    var acc: S = 0.0;
    // r advances by WORKGROUP_SIZE = (dn oh + dy) ow + dx (dx < ow, dy < oh): (nb, y, x) is
    // carried forward with additions instead of being divided out of r for every term (the
    // same terms in the same order).
    let dx = WORKGROUP_SIZE % params.ow;
    let dy = (WORKGROUP_SIZE / params.ow) % params.oh;
    let dn = WORKGROUP_SIZE / plane;
    let r0 = start + lid;
    var x = r0 % params.ow;
    var y = (r0 / params.ow) % params.oh;
    var nb = r0 / plane;
    for (var r = r0; r < end; r += WORKGROUP_SIZE) {
        let iy = in_row(y, tap.y);
        let ix = in_col(x, tap.z);
        if iy >= 0 && iy < i32(params.h) && ix >= 0 && ix < i32(params.w) {
            let xv = load_a(((nb * params.c + cin) * params.h + u32(iy)) * params.w + u32(ix));
            let gv = b[((nb * params.o + oc) * params.oh + y) * params.ow + x];
            acc += xv * gv;
        }
        x += dx;
        y += dy;
        if x >= params.ow {
            x -= params.ow;
            y += 1u;
        }
        nb += dn;
        if y >= params.oh {
            y -= params.oh;
            nb += 1u;
        }
    }
    return acc;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d_weight_grad_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let idx = wid.y * nwg.x + wid.x;
    if idx >= params.total {
        return;
    }
    let terms = params.n * params.oh * params.ow;
    let total = workgroup_sum(lid, weight_grad_terms(weight_tap(idx), 0u, terms, lid));
    if lid == 0u {
        out[idx] = total;
    }
}

// The split weight gradient (two dispatches; `out` has total * (1 + chunks) elements):
// conv2d_weight_grad_split: workgroup w of G = total * chunks takes element idx = w / chunks
// and chunk g = w % chunks, the terms r in [g c, min((g + 1) c, K)), c = ceil(K / chunks), as
// the workgroup kernel takes all K, and stores its raw sum at out[total + w];
// conv2d_weight_grad_finish: one workgroup per element (G = total) adds its `chunks` (at most
// WORKGROUP_SIZE) partial sums by the tree and stores the result at out[idx]. A summation tree
// of the same K products (the bound above holds), in a fixed order; on a GPU it runs on
// `chunks` times more workgroups (proofs/gpu-kernel-choices.md, claim 10).
@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d_weight_grad_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    let idx = w / params.chunks;
    if idx >= params.total {
        return;
    }
    let terms = params.n * params.oh * params.ow;
    let c = (terms + params.chunks - 1u) / params.chunks;
    let start = min((w % params.chunks) * c, terms);
    let end = min(start + c, terms);
    let total = workgroup_sum(lid, weight_grad_terms(weight_tap(idx), start, end, lid));
    if lid == 0u {
        out[params.total + w] = total;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn conv2d_weight_grad_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let idx = wid.y * nwg.x + wid.x;
    if idx >= params.total {
        return;
    }
    var v: S = 0.0;
    if lid < params.chunks {
        v = out[params.total + idx * params.chunks + lid];
    }
    let total = workgroup_sum(lid, v);
    if lid == 0u {
        out[idx] = total;
    }
}
