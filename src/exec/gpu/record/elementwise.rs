//! Const, Unary, Binary, Broadcast and Select: the kernels of shaders/elementwise.wgsl, one
//! invocation per output element.

use super::{put, Recording};
use crate::exec::gpu::kernels::{self, EwParams};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use crate::graph::{BinaryOp, UnaryOp};
use std::rc::Rc;

/// The elementwise primitives, with what their kernels need of the op.
pub(super) enum Elementwise {
    /// Const: every element `value`.
    Fill(f64),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Broadcast,
    Select,
}

/// The `op` code of a unary primitive in shaders/elementwise.wgsl (graph::UnaryOp order).
pub fn unary_code(op: UnaryOp) -> u32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Exp => 1,
        UnaryOp::Log => 2,
        UnaryOp::Sqrt => 3,
        UnaryOp::Rsqrt => 4,
        UnaryOp::Recip => 5,
        UnaryOp::Square => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Sigmoid => 8,
        UnaryOp::Relu => 9,
        UnaryOp::Softplus => 10,
        UnaryOp::Step => 11,
    }
}

/// The `op` code of a binary primitive in shaders/elementwise.wgsl (graph::BinaryOp order).
pub fn binary_code(op: BinaryOp) -> u32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Max => 4,
        BinaryOp::Greater => 5,
        BinaryOp::Equal => 6,
    }
}

/// Element strides of an input of shape `input` read at each axis of `out` under NumPy
/// broadcasting: 0 where the input lacks the axis or has extent 1, its row-major stride
/// otherwise.
pub fn broadcast_strides(input: &[usize], out: &[usize]) -> Vec<usize> {
    let lead = out.len() - input.len();
    let mut s = vec![0; out.len()];
    let mut m = 1;
    for d in (0..input.len()).rev() {
        s[lead + d] = if input[d] == 1 { 0 } else { m };
        m *= input[d];
    }
    s
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the elementwise kernel `op` for the node of `r`: its inputs read with
    /// broadcast strides where the kernel takes them (Binary, Broadcast).
    pub(super) fn record_elementwise(
        &mut self,
        r: &Recording,
        op: Elementwise,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let (numel, shape) = (r.numel, r.shape);
        let groups = r.ew_groups();
        let out = match op {
            Elementwise::Fill(value) => {
                let out = self.alloc(numel, &r.label);
                let mut p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                p.set_value(T::of(value));
                let params = bytemuck::bytes_of(&p);
                self.dispatch(&kernels::FILL, params, &[], &out, groups, &r.at)?;
                out
            }
            Elementwise::Unary(u) => {
                let x = r.input(0)?;
                let out = self.alloc(numel, &r.label);
                let p = EwParams {
                    total: numel as u32,
                    op: unary_code(u),
                    ..Default::default()
                };
                let params = bytemuck::bytes_of(&p);
                self.dispatch(&kernels::UNARY, params, &[&x], &out, groups, &r.at)?;
                out
            }
            Elementwise::Binary(b) => {
                let (x, y) = (r.input(0)?, r.input(1)?);
                let out = self.alloc(numel, &r.label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    op: binary_code(b),
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(r.input_shape(0), shape),
                );
                put(
                    &mut p.b_strides,
                    &broadcast_strides(r.input_shape(1), shape),
                );
                let params = bytemuck::bytes_of(&p);
                self.dispatch(&kernels::BINARY, params, &[&x, &y], &out, groups, &r.at)?;
                out
            }
            Elementwise::Broadcast => {
                let x = r.input(0)?;
                let out = self.alloc(numel, &r.label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(r.input_shape(0), shape),
                );
                let params = bytemuck::bytes_of(&p);
                self.dispatch(&kernels::BROADCAST, params, &[&x], &out, groups, &r.at)?;
                out
            }
            Elementwise::Select => {
                let (c, a, b) = (r.input(0)?, r.input(1)?, r.input(2)?);
                let out = self.alloc(numel, &r.label);
                let p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                let params = bytemuck::bytes_of(&p);
                self.dispatch(&kernels::SELECT, params, &[&c, &a, &b], &out, groups, &r.at)?;
                out
            }
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_follow_numpy() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), vec![0]);
        assert_eq!(broadcast_strides(&[4], &[2, 4]), vec![0, 1]);
    }

    /// The op codes are the ones listed in the header of shaders/elementwise.wgsl.
    #[test]
    fn op_codes_match_shader_header() {
        // UnaryOp::ALL holds every op once: its codes are 0, 1, ..., 11 in order.
        let codes: Vec<u32> = UnaryOp::ALL.iter().map(|&u| unary_code(u)).collect();
        assert_eq!(codes, (0..UnaryOp::ALL.len() as u32).collect::<Vec<_>>());
        for u in UnaryOp::ALL {
            let tag = format!("{} {}", unary_code(u), format!("{u:?}").to_lowercase());
            assert!(kernels::ELEMENTWISE_WGSL.contains(&tag), "{tag}");
        }
        use BinaryOp::*;
        for b in [Add, Sub, Mul, Div, Max, Greater, Equal] {
            let tag = format!("{} {}", binary_code(b), format!("{b:?}").to_lowercase());
            assert!(kernels::ELEMENTWISE_WGSL.contains(&tag), "{tag}");
        }
    }
}
