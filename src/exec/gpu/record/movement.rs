//! Permute, Slice, Pad and Concat: the `copy` kernel of shaders/movement.wgsl, which reads
//! each output element at an affine offset of the input (or writes a padding zero).

use super::{put, Recording};
use crate::exec::gpu::dispatch::{Part, Site};
use crate::exec::gpu::kernels::{self, MoveParams, MAX_RANK};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use std::rc::Rc;

/// The movement primitives, with what their copies need of the op.
pub(super) enum Movement<'a> {
    /// Output axis d is input axis `perm[d]`.
    Permute(&'a [usize]),
    Slice {
        axis: usize,
        start: usize,
        step: usize,
    },
    Pad {
        axis: usize,
        before: usize,
        interior: usize,
    },
    /// Concatenation along the axis: one copy per input into its place.
    Concat(usize),
}

/// `MoveParams` (shaders/movement.wgsl) of a plain copy onto an output of shape `shape`:
/// lo = 0, div = 1, extent = shape, write 0 outside; the caller sets the input strides and
/// the primitive's axis.
pub(in crate::exec::gpu) fn copy_params(shape: &[usize]) -> MoveParams {
    let mut p = MoveParams {
        total: shape.iter().product::<usize>() as u32,
        rank: shape.len() as u32,
        ..Default::default()
    };
    put(&mut p.shape, shape);
    put(&mut p.extent, shape);
    p.div = [1; MAX_RANK];
    p
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the copies of movement primitive `op` for the node of `r`.
    pub(super) fn record_movement(
        &mut self,
        r: &Recording,
        op: Movement,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        // Element strides of the input (a concatenation has several inputs).
        let strides = || r.graph.shape(r.node.inputs[0]).strides();
        let mut p = copy_params(r.shape);
        match op {
            Movement::Concat(axis) => return self.record_concat(r, axis),
            Movement::Permute(perm) => {
                let strides = strides();
                for (d, &a) in perm.iter().enumerate() {
                    p.in_strides[d] = strides[a] as u32;
                }
            }
            Movement::Slice { axis, start, step } => {
                let strides = strides();
                put(&mut p.in_strides, &strides);
                p.in_strides[axis] = (strides[axis] * step) as u32;
                p.base = (start * strides[axis]) as u32;
            }
            Movement::Pad {
                axis,
                before,
                interior,
            } => {
                put(&mut p.in_strides, &strides());
                p.lo[axis] = before as u32;
                p.div[axis] = (interior + 1) as u32;
                p.extent[axis] = r.input_shape(0)[axis] as u32;
            }
        }
        let x = r.input(0)?;
        let out = self.alloc(r.numel, &r.label);
        let groups = r.ew_groups();
        self.dispatch(
            &kernels::COPY,
            bytemuck::bytes_of(&p),
            &[&x],
            &out,
            groups,
            &r.at,
        )?;
        Ok(out)
    }

    /// Records a concatenation along `axis`: input k copied into its place, skipping the
    /// elements outside it.
    fn record_concat(&mut self, r: &Recording, axis: usize) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let out = self.alloc(r.numel, &r.label);
        let mut off = 0;
        for k in 0..r.node.inputs.len() {
            let x = r.input(k)?;
            let in_shape = r.graph.shape(r.node.inputs[k]);
            let mut p = copy_params(r.shape);
            put(&mut p.in_strides, &in_shape.strides());
            p.skip_outside = 1;
            p.lo[axis] = off as u32;
            p.extent[axis] = in_shape.dims()[axis] as u32;
            off += in_shape.dims()[axis];
            self.dispatch(
                &kernels::COPY,
                bytemuck::bytes_of(&p),
                &[&x],
                &out,
                r.ew_groups(),
                &Site {
                    part: Part::ConcatInput(k),
                    ..r.at
                },
            )?;
        }
        Ok(out)
    }
}
