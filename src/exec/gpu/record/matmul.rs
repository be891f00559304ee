//! MatMul: the tiled kernel of shaders/matmul.wgsl, one workgroup per output tile.

use super::Recording;
use crate::exec::gpu::dispatch::Site;
use crate::exec::gpu::kernels::{self, MatmulParams, MATMUL_TILE};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use std::rc::Rc;

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records `a [m, k] b [k, n]` for the node of `r`; an error names the kernel when the
    /// output tiles do not fit a dispatch.
    pub(super) fn record_matmul(&mut self, r: &Recording) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let (a, b) = (r.input(0)?, r.input(1)?);
        let out = self.alloc(r.numel, &r.label);
        let (m, k) = (r.input_shape(0)[0], r.input_shape(0)[1]);
        let n = r.shape[1];
        let tiles_n = (n as u32).div_ceil(MATMUL_TILE);
        let p = MatmulParams {
            m: m as u32,
            k: k as u32,
            n: n as u32,
            tiles_n,
        };
        let groups = (m as u32)
            .div_ceil(MATMUL_TILE)
            .checked_mul(tiles_n)
            .ok_or_else(|| {
                ExecError::Gpu(format!(
                    "{}: too many output tiles",
                    Site {
                        kernel: kernels::MATMUL.name,
                        ..r.at
                    }
                ))
            })?;
        self.dispatch(
            &kernels::MATMUL,
            bytemuck::bytes_of(&p),
            &[&a, &b],
            &out,
            groups,
            &r.at,
        )?;
        Ok(out)
    }
}
