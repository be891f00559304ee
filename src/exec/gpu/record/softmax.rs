//! LogSoftmax: the kernel of shaders/softmax.wgsl, one invocation per lane along the axis.

use super::Recording;
use crate::exec::gpu::kernels::{self, SoftmaxParams, WORKGROUP_SIZE};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use std::rc::Rc;

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the log-softmax along `axis` for the node of `r`.
    pub(super) fn record_log_softmax(
        &mut self,
        r: &Recording,
        axis: usize,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let x = r.input(0)?;
        let out = self.alloc(r.numel, &r.label);
        let n = r.shape[axis];
        let inner: usize = r.shape[axis + 1..].iter().product();
        let lanes = r.numel.checked_div(n).unwrap_or(0);
        let p = SoftmaxParams {
            lanes: lanes as u32,
            n: n as u32,
            inner: inner.max(1) as u32,
            _pad: 0,
        };
        self.dispatch(
            &kernels::LOG_SOFTMAX,
            bytemuck::bytes_of(&p),
            &[&x],
            &out,
            (lanes as u32).div_ceil(WORKGROUP_SIZE),
            &r.at,
        )?;
        Ok(out)
    }
}
