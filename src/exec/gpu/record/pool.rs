//! AvgPool2d, MaxPool2d and their transposes (AvgPool2dGrad, MaxPool2dGrad, MaxPool2dGather):
//! the kernels of shaders/pool.wgsl, one invocation per output element, backward kernels as
//! gathers.

use super::Recording;
use crate::exec::gpu::kernels::{self, KernelSpec};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use crate::graph::PoolParams;
use std::rc::Rc;

/// Which of the five pooling primitives a node is.
pub(super) enum PoolKind {
    /// AvgPool2d: (x) -> y.
    Avg,
    /// AvgPool2dGrad: (y_bar) -> x_bar.
    AvgGrad,
    /// MaxPool2d: (x) -> y, the gather of x at its own argmax.
    Max,
    /// MaxPool2dGrad: (x, y_bar) -> x_bar.
    MaxGrad,
    /// MaxPool2dGather: (x, c) -> c at the argmax of x.
    MaxGather,
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the pooling primitive `kind` with parameters `pp` for the node of `r`.
    pub(super) fn record_pool(
        &mut self,
        r: &Recording,
        kind: PoolKind,
        pp: &PoolParams,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let (shape, s0) = (r.shape, r.input_shape(0));
        // (x shape, y shape) of the forward pooling, the kernel and its reads.
        let (xs, ys, spec, reads): (_, _, &'static KernelSpec, _) = match kind {
            PoolKind::Avg => (s0, shape, &kernels::AVG_POOL, vec![r.input(0)?]),
            PoolKind::AvgGrad => (shape, s0, &kernels::AVG_POOL_GRAD, vec![r.input(0)?]),
            PoolKind::Max => (
                s0,
                shape,
                &kernels::MAX_POOL_GATHER,
                vec![r.input(0)?, r.input(0)?],
            ),
            PoolKind::MaxGrad => (
                s0,
                r.input_shape(1),
                &kernels::MAX_POOL_GRAD,
                vec![r.input(0)?, r.input(1)?],
            ),
            PoolKind::MaxGather => (
                s0,
                shape,
                &kernels::MAX_POOL_GATHER,
                vec![r.input(0)?, r.input(1)?],
            ),
        };
        let out = self.alloc(r.numel, &r.label);
        let p = kernels::PoolParams {
            total: r.numel as u32,
            planes: (xs[0] * xs[1]) as u32,
            h: xs[2] as u32,
            w: xs[3] as u32,
            oh: ys[2] as u32,
            ow: ys[3] as u32,
            kh: pp.kernel[0] as u32,
            kw: pp.kernel[1] as u32,
            stride_h: pp.stride[0] as u32,
            stride_w: pp.stride[1] as u32,
            pad_h: pp.padding[0] as u32,
            pad_w: pp.padding[1] as u32,
        };
        let refs: Vec<&wgpu::Buffer> = reads.iter().map(|b| b.as_ref()).collect();
        self.dispatch(
            spec,
            bytemuck::bytes_of(&p),
            &refs,
            &out,
            r.ew_groups(),
            &r.at,
        )?;
        Ok(out)
    }
}
