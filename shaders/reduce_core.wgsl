// reduce_core.wgsl: the entry points of the reductions (the equations, dispatch and bounds are in
// the header of reduce.wgsl). Appended to reduce.wgsl (input from a buffer) or to
// fused_reduce.wgsl (input computed by a generated reduce_input); either defines WORKGROUP_SIZE,
// MAX_RANK, `params` with the ReduceParams fields, `out`, reduce_input(i), the value of the
// input's element of flat index i, and reduce_output(o, v), the value stored at output o whose
// sum (or max) is v: v itself for a reduction, an elementwise epilogue of v for a fused
// reduction whose root is an elementwise node of the reduction (src/exec/gpu/fusion.rs, rule
// 5); workgroup_tree.wgsl (workgroup_sum, workgroup_max) comes with it.

fn base_offset(o: u32) -> u32 {
    var rem = o;
    var off = 0u;
    let rank = min(params.kept_rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = params.kept_shape[d / 4u][d % 4u];
        off += (rem % n) * params.kept_strides[d / 4u][d % 4u];
        rem = rem / n;
    }
    return off;
}

fn red_offset(r: u32) -> u32 {
    var rem = r;
    var off = 0u;
    let rank = min(params.red_rank, MAX_RANK);
    for (var k = 0u; k < rank; k++) {
        let d = rank - 1u - k;
        let n = params.red_shape[d / 4u][d % 4u];
        off += (rem % n) * params.red_strides[d / 4u][d % 4u];
        rem = rem / n;
    }
    return off;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    var acc: S = 0.0;
    for (var r = 0u; r < params.n_red; r++) {
        acc += reduce_input(base + red_offset(r));
    }
    out[o] = reduce_output(o, acc);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    var acc: S = 0.0;
    for (var r = lid; r < params.n_red; r += WORKGROUP_SIZE) {
        acc += reduce_input(base + red_offset(r));
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        out[o] = reduce_output(o, total);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_max_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    var m = neg_inf_s();
    for (var r = 0u; r < params.n_red; r++) {
        m = max_nan(m, reduce_input(base + red_offset(r)));
    }
    out[o] = reduce_output(o, m);
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_max_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    var m = neg_inf_s();
    for (var r = lid; r < params.n_red; r += WORKGROUP_SIZE) {
        m = max_nan(m, reduce_input(base + red_offset(r)));
    }
    let top = workgroup_max(lid, m);
    if lid == 0u {
        out[o] = reduce_output(o, top);
    }
}

// Split reductions (two dispatches; the host allocates `out` with total_out * (1 + SPLIT)
// elements and readers see only the first total_out):
//   *_split:  workgroup w of G = total_out * SPLIT (flattened as above) takes output
//             o = w / SPLIT and chunk g = w % SPLIT, the terms
//             r in [g * chunk, min((g + 1) * chunk, n_red)), chunk = ceil(n_red / SPLIT);
//             invocation t sums r = g * chunk + t, + WORKGROUP_SIZE, ... within the chunk, the
//             workgroup tree combines them, and invocation 0 stores the raw partial result at
//             out[total_out + w] (an empty chunk stores 0, or -inf for a max).
//   *_finish: one workgroup per output o (G = total_out): invocation t reads partial
//             out[total_out + o * SPLIT + t] (SPLIT == WORKGROUP_SIZE), the tree combines them,
//             and out[o] = reduce_output(o, total).
// Each output is still a fixed summation tree of its n_red terms (depth at most
// ceil(chunk / WORKGROUP_SIZE) + 2 log2(WORKGROUP_SIZE)), so the gamma_{n_red} bound holds and
// a run repeats exactly; a max is exact in any order. What it buys is parallelism on a real
// GPU: a sum to a scalar of 2^20 terms runs on SPLIT workgroups instead of one
// (proofs/gpu-kernel-choices.md, claim 10).

const SPLIT: u32 = WORKGROUP_SIZE;

// The chunk [start, end) of the reduced index that split workgroup w sums.
fn split_chunk(w: u32) -> vec2<u32> {
    let chunk = (params.n_red + SPLIT - 1u) / SPLIT;
    let start = min((w % SPLIT) * chunk, params.n_red);
    return vec2<u32>(start, min(start + chunk, params.n_red));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    let o = w / SPLIT;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    let range = split_chunk(w);
    var acc: S = 0.0;
    for (var r = range.x + lid; r < range.y; r += WORKGROUP_SIZE) {
        acc += reduce_input(base + red_offset(r));
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        out[params.total_out + w] = total;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let total = workgroup_sum(lid, out[params.total_out + o * SPLIT + lid]);
    if lid == 0u {
        out[o] = reduce_output(o, total);
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_max_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    let o = w / SPLIT;
    if o >= params.total_out {
        return;
    }
    let base = base_offset(o);
    let range = split_chunk(w);
    var m = neg_inf_s();
    for (var r = range.x + lid; r < range.y; r += WORKGROUP_SIZE) {
        m = max_nan(m, reduce_input(base + red_offset(r)));
    }
    let top = workgroup_max(lid, m);
    if lid == 0u {
        out[params.total_out + w] = top;
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_max_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let top = workgroup_max(lid, out[params.total_out + o * SPLIT + lid]);
    if lid == 0u {
        out[o] = reduce_output(o, top);
    }
}
