// reduce_core.wgsl: the entry points of the reductions (the equations, dispatch and bounds are in
// the header of reduce.wgsl). Appended to reduce.wgsl (input from a buffer) or to
// fused_reduce.wgsl (input computed by a generated reduce_input); either defines WORKGROUP_SIZE,
// MAX_RANK, `params` with the ReduceParams fields, `out`, reduce_input(i), the value of the
// input's element of flat index i, and reduce_output(o, v), the value stored at output o whose
// sum (or max) is v: v itself for a reduction, an elementwise epilogue of v for a fused
// reduction whose root is an elementwise node of the reduction (src/exec/gpu/fusion/mod.rs, rule
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

// The terms r = r0, r0 + step, ... < end of the output at `base`, in that order (the order
// of the entry points' loops), combined by sum_terms (+) or max_terms (max_nan). With at most
// two reduced axes (every DARTS reduction once reduce_params has merged contiguous axes) the
// reduced coordinates (e0, e1) of r, r = e0 * n1 + e1, are carried from term to term by
// additions (Carry): no division per term. More axes fall back to red_offset(r).
struct Carry {
    e0: u32,
    e1: u32,
    d0: u32,
    d1: u32,
    n1: u32,
    st0: u32,
    st1: u32,
}

// The counter at term r0, advancing by `step` terms.
fn carry_start(r0: u32, step: u32) -> Carry {
    let rank = params.red_rank;
    let n1 = select(1u, params.red_shape[0][1], rank == 2u);
    let st0 = select(0u, params.red_strides[0][0], rank >= 1u);
    let st1 = select(0u, params.red_strides[0][1], rank == 2u);
    return Carry(r0 / n1, r0 % n1, step / n1, step % n1, n1, st0, st1);
}

// The input offset of term r (whose coordinates c carries) within its output.
fn carry_offset(c: Carry, r: u32) -> u32 {
    if params.red_rank > 2u {
        return red_offset(r);
    }
    return c.e0 * c.st0 + c.e1 * c.st1;
}

fn carry_next(c: Carry) -> Carry {
    var n = c;
    n.e0 += c.d0;
    n.e1 += c.d1;
    if n.e1 >= c.n1 {
        n.e1 -= c.n1;
        n.e0 += 1u;
    }
    return n;
}

fn sum_terms(base: u32, r0: u32, end: u32, step: u32) -> S {
    var acc: S = 0.0;
    var c = carry_start(r0, step);
    for (var r = r0; r < end; r += step) {
        acc += reduce_input(base + carry_offset(c, r));
        c = carry_next(c);
    }
    return acc;
}

fn max_terms(base: u32, r0: u32, end: u32, step: u32) -> S {
    var m = neg_inf_s();
    var c = carry_start(r0, step);
    for (var r = r0; r < end; r += step) {
        m = max_nan(m, reduce_input(base + carry_offset(c, r)));
        c = carry_next(c);
    }
    return m;
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_serial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;
    if o >= params.total_out {
        return;
    }
    out[o] = reduce_output(o, sum_terms(base_offset(o), 0u, params.n_red, 1u));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_sum_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let acc = sum_terms(base_offset(o), lid, params.n_red, WORKGROUP_SIZE);
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
    out[o] = reduce_output(o, max_terms(base_offset(o), 0u, params.n_red, 1u));
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn reduce_max_workgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;
    if o >= params.total_out {
        return;
    }
    let m = max_terms(base_offset(o), lid, params.n_red, WORKGROUP_SIZE);
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
    let range = split_chunk(w);
    let acc = sum_terms(base_offset(o), range.x + lid, range.y, WORKGROUP_SIZE);
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
    let range = split_chunk(w);
    let m = max_terms(base_offset(o), range.x + lid, range.y, WORKGROUP_SIZE);
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
