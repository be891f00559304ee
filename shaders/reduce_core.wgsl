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
