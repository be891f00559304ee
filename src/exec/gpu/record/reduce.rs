//! ReduceSum and ReduceMax: the kernels of shaders/reduce.wgsl (and reduce_core.wgsl, whose
//! entry points the fused reductions share): one invocation or one workgroup per output, or
//! split over several workgroups per output and finished by a second dispatch.

use super::Recording;
use crate::exec::gpu::kernels::{
    self, KernelSpec, ReduceParams, REDUCE_SPLIT_MAX_OUT, WORKGROUP_SIZE,
};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use std::rc::Rc;

/// The `ReduceParams` of a reduction of an input of shape `in_shape` over `axes` into
/// `numel` outputs (shaders/reduce.wgsl).
pub(super) fn reduce_params(in_shape: &[usize], axes: &[usize], numel: usize) -> ReduceParams {
    let mut strides = vec![1usize; in_shape.len()];
    for d in (0..in_shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * in_shape[d + 1];
    }
    // (extent, stride) of the kept and of the reduced axes.
    let mut kept: Vec<(u32, u32)> = Vec::new();
    let mut red: Vec<(u32, u32)> = Vec::new();
    for (d, &n) in in_shape.iter().enumerate() {
        let v = if axes.contains(&d) {
            &mut red
        } else {
            &mut kept
        };
        // Axes of extent 1 add nothing to any offset; an axis whose stride is the next
        // one's stride times its extent enumerates, with it, one run of offsets: merged,
        // they list the same offsets in the same order with one division less per axis.
        if n == 1 {
            continue;
        }
        match v.last_mut() {
            Some(last) if last.1 as usize == strides[d] * n => {
                *last = (last.0 * n as u32, strides[d] as u32);
            }
            _ => v.push((n as u32, strides[d] as u32)),
        }
    }
    let n_red: usize = red.iter().map(|&(n, _)| n as usize).product();
    let mut p = ReduceParams {
        total_out: numel as u32,
        n_red: n_red as u32,
        kept_rank: kept.len() as u32,
        red_rank: red.len() as u32,
        ..Default::default()
    };
    for (d, &(n, s)) in kept.iter().enumerate() {
        p.kept_shape[d] = n;
        p.kept_strides[d] = s;
    }
    for (d, &(n, s)) in red.iter().enumerate() {
        p.red_shape[d] = n;
        p.red_strides[d] = s;
    }
    p
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the reduction over `axes` (a maximum if `max`) for the node of `r`.
    pub(super) fn record_reduce(
        &mut self,
        r: &Recording,
        axes: &[usize],
        max: bool,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let x = r.input(0)?;
        let p = reduce_params(r.input_shape(0), axes, r.numel);
        let (stages, out_numel) = self.reduce_stages(&p, max);
        let out = self.alloc(out_numel, &r.label);
        for (spec, groups) in stages {
            self.dispatch(spec, bytemuck::bytes_of(&p), &[&x], &out, groups, &r.at)?;
        }
        Ok(out)
    }

    /// Whether a reduction with `p`'s extents runs split (see [`Self::set_split_min`]): long
    /// enough, few enough outputs, and its `total_out * SPLIT` workgroups fit the grid.
    pub(in crate::exec::gpu) fn split(&self, p: &ReduceParams) -> bool {
        self.splits(p.total_out as usize, p.n_red as usize)
    }

    /// The dispatches of a reduction with `p`'s extents (a maximum if `max`), as the kernels of
    /// shaders/reduce_core.wgsl (plain or fused): one invocation or one workgroup per output,
    /// or split (a chunk pass, then a finishing pass, whose partial sums follow the outputs in
    /// the output's buffer). Returns each dispatch's kernel and workgroups, and the elements
    /// of the output's buffer.
    pub(super) fn reduce_stages(
        &self,
        p: &ReduceParams,
        max: bool,
    ) -> (Vec<(&'static KernelSpec, u32)>, usize) {
        use kernels::{
            REDUCE_MAX_FINISH, REDUCE_MAX_SERIAL, REDUCE_MAX_SPLIT, REDUCE_MAX_WORKGROUP,
            REDUCE_SUM_FINISH, REDUCE_SUM_SERIAL, REDUCE_SUM_SPLIT, REDUCE_SUM_WORKGROUP,
        };
        let pick = |sum, maximum| if max { maximum } else { sum };
        let out = p.total_out as usize;
        if self.split(p) {
            let stages = vec![
                (
                    pick(&REDUCE_SUM_SPLIT, &REDUCE_MAX_SPLIT),
                    p.total_out * WORKGROUP_SIZE,
                ),
                (pick(&REDUCE_SUM_FINISH, &REDUCE_MAX_FINISH), p.total_out),
            ];
            (stages, out * (1 + WORKGROUP_SIZE as usize))
        } else if p.n_red >= self.workgroup_min {
            let spec = pick(&REDUCE_SUM_WORKGROUP, &REDUCE_MAX_WORKGROUP);
            (vec![(spec, p.total_out)], out)
        } else {
            let spec = pick(&REDUCE_SUM_SERIAL, &REDUCE_MAX_SERIAL);
            (vec![(spec, p.total_out.div_ceil(WORKGROUP_SIZE))], out)
        }
    }

    /// Whether a reduction of `n_red` terms to each of `total_out` outputs runs split.
    pub(in crate::exec::gpu) fn splits(&self, total_out: usize, n_red: usize) -> bool {
        let l = self.max_workgroups_per_dim as usize;
        n_red >= self.split_min as usize
            && total_out <= REDUCE_SPLIT_MAX_OUT as usize
            && total_out > 0
            && total_out * WORKGROUP_SIZE as usize <= l * l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets reduce.wgsl computes from `ReduceParams` (base_offset, red_offset).
    fn offsets(p: &ReduceParams, o: u32, r: u32) -> u32 {
        let walk = |mut rem: u32, rank: u32, shape: &[u32], strides: &[u32]| {
            let mut off = 0;
            for d in (0..rank as usize).rev() {
                off += (rem % shape[d]) * strides[d];
                rem /= shape[d];
            }
            off
        };
        walk(o, p.kept_rank, &p.kept_shape, &p.kept_strides)
            + walk(r, p.red_rank, &p.red_shape, &p.red_strides)
    }

    /// Merged axes (extent-1 axes dropped, contiguous runs of kept or of reduced axes joined)
    /// enumerate exactly the offsets of the plain row-major definition, in the same order, for
    /// every subset of axes of a few shapes with extent-1 and contiguous axes.
    #[test]
    fn reduce_params_enumerate_the_same_offsets() {
        for shape in [
            vec![2usize, 3, 4, 5],
            vec![3, 1, 4, 1],
            vec![1, 2, 1, 3, 2],
            vec![4, 4],
            vec![5],
        ] {
            let rank = shape.len();
            for mask in 0u32..(1 << rank) {
                let axes: Vec<usize> = (0..rank).filter(|d| mask >> d & 1 == 1).collect();
                let kept: Vec<usize> = (0..rank).filter(|d| !axes.contains(d)).collect();
                let numel: usize = kept.iter().map(|&d| shape[d]).product();
                let p = reduce_params(&shape, &axes, numel);
                let n_red: usize = axes.iter().map(|&d| shape[d]).product();
                assert_eq!(p.n_red as usize, n_red, "{shape:?} {axes:?}");
                let strides: Vec<usize> =
                    (0..rank).map(|d| shape[d + 1..].iter().product()).collect();
                // Row-major coordinates of o over the kept axes and r over the reduced ones.
                let coords = |mut i: usize, over: &[usize]| {
                    let mut c = vec![0usize; over.len()];
                    for (k, &d) in over.iter().enumerate().rev() {
                        c[k] = i % shape[d];
                        i /= shape[d];
                    }
                    c
                };
                for o in 0..numel {
                    for r in 0..n_red {
                        let want: usize = coords(o, &kept)
                            .iter()
                            .zip(&kept)
                            .chain(coords(r, &axes).iter().zip(&axes))
                            .map(|(c, &d)| c * strides[d])
                            .sum();
                        assert_eq!(
                            offsets(&p, o as u32, r as u32) as usize,
                            want,
                            "{shape:?} axes {axes:?}, o {o}, r {r}"
                        );
                    }
                }
            }
        }
    }
}
