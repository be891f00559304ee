// workgroup_tree.wgsl: the fixed binary tree over workgroup memory with which the workgroup
// reductions finish (reduce_core.wgsl's *_workgroup entry points, conv.wgsl's
// conv2d_weight_grad_workgroup): each of the WORKGROUP_SIZE invocations holds a partial result,
// and level s = WORKGROUP_SIZE / 2, ..., 1 combines invocation t < s with t + s. The order is
// fixed, so a run repeats exactly; a sum stays a summation tree of the same terms (the
// gamma_K bound of the callers holds); a max combines by max_nan (reduce.wgsl's header), exact
// in any order. Appended to the files that call it, which define S and WORKGROUP_SIZE. Call
// from uniform control flow (it has barriers); the result is valid in invocation 0.

var<workgroup> partial: array<S, WORKGROUP_SIZE>;

fn workgroup_sum(lid: u32, v: S) -> S {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            partial[lid] += partial[lid + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

fn max_nan(m: S, v: S) -> S {
    if is_nan(v) || v > m {
        return v;
    }
    return m;
}

fn workgroup_max(lid: u32, v: S) -> S {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WORKGROUP_SIZE / 2u; s > 0u; s = s / 2u) {
        if lid < s {
            partial[lid] = max_nan(partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    return partial[0];
}
