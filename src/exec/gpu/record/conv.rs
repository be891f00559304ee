//! Conv2d and its two transposes, Conv2dInputGrad and Conv2dWeightGrad: the kernels of
//! shaders/conv.wgsl. A weight gradient's long sums get a workgroup per element, or run
//! split (several workgroups per element, then a dispatch that adds their partial sums).

use super::Recording;
use crate::exec::gpu::kernels::{self, KernelSpec};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use crate::graph::{ConvParams, NodeId};
use std::rc::Rc;

/// Which of the three convolution primitives a node is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ConvKind {
    /// Conv2d: (x, w) -> y.
    Forward,
    /// Conv2dInputGrad: (y_bar, w) -> x_bar.
    InputGrad,
    /// Conv2dWeightGrad: (x, y_bar) -> w_bar.
    WeightGrad,
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the convolution primitive `kind` with parameters `cp` for the node of `r`. With
    /// a ReLU `prologue` (fusion rule 6) the kernel reads the ReLU's input as `a` and applies
    /// the ReLU as it loads it.
    pub(super) fn record_conv(
        &mut self,
        r: &Recording,
        kind: ConvKind,
        cp: &ConvParams,
        prologue: Option<&[NodeId; 2]>,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let a = match prologue {
            Some(p) => r.vals[p[0].0].clone().ok_or(ExecError::UnknownNode(p[0]))?,
            None => r.input(0)?,
        };
        let b = r.input(1)?;
        let (shape, numel) = (r.shape, r.numel);
        let (s0, s1) = (r.input_shape(0), r.input_shape(1));
        // (x shape, weight shape, y shape) of the forward convolution.
        let (xs, ws, ys, spec) = match kind {
            ConvKind::Forward => (s0, s1, shape, &kernels::CONV2D),
            ConvKind::InputGrad => (shape, s1, s0, &kernels::CONV2D_INPUT_GRAD),
            ConvKind::WeightGrad => (s0, shape, s1, &kernels::CONV2D_WEIGHT_GRAD),
        };
        let (stages, chunks) = self.conv_stages(kind, spec, numel, ys, r.ew_groups());
        // A split one's partial sums follow the output in its buffer.
        let extra = if chunks > 1 { chunks as usize } else { 0 };
        let out = self.alloc(numel * (1 + extra), &r.label);
        let p = kernels::ConvParams {
            total: numel as u32,
            n: xs[0] as u32,
            c: xs[1] as u32,
            h: xs[2] as u32,
            w: xs[3] as u32,
            o: ws[0] as u32,
            oh: ys[2] as u32,
            ow: ys[3] as u32,
            kh: ws[2] as u32,
            kw: ws[3] as u32,
            groups: cp.groups as u32,
            stride_h: cp.stride[0] as u32,
            stride_w: cp.stride[1] as u32,
            pad_h: cp.padding[0] as u32,
            pad_w: cp.padding[1] as u32,
            dil_h: cp.dilation[0] as u32,
            dil_w: cp.dilation[1] as u32,
            chunks,
            relu_a: u32::from(prologue.is_some()),
            ..Default::default()
        };
        for (spec, groups) in stages {
            self.dispatch(spec, bytemuck::bytes_of(&p), &[&a, &b], &out, groups, &r.at)?;
        }
        Ok(out)
    }

    /// The dispatches (kernel and workgroups) of a convolution primitive of `numel` output
    /// elements whose forward output has shape `ys`, and the chunks per element of a split
    /// weight gradient (1 otherwise). A weight gradient sums n oh ow terms per element: a long
    /// sum gets a workgroup per element, or (split) several per element and a second dispatch
    /// that adds their partial sums (see shaders/conv.wgsl); everything else, and a short
    /// weight gradient, is `spec` with one invocation per element (`ew_groups` workgroups).
    fn conv_stages(
        &self,
        kind: ConvKind,
        spec: &'static KernelSpec,
        numel: usize,
        ys: &[usize],
        ew_groups: u32,
    ) -> (Vec<(&'static KernelSpec, u32)>, u32) {
        let terms = ys[0] * ys[2] * ys[3];
        let weight_grad = kind == ConvKind::WeightGrad;
        let chunks = if weight_grad {
            self.weight_grad_chunks(numel, terms)
        } else {
            1
        };
        let mut stages = vec![if chunks > 1 {
            (&kernels::CONV2D_WEIGHT_GRAD_SPLIT, numel as u32 * chunks)
        } else if weight_grad && terms >= self.workgroup_min as usize {
            (&kernels::CONV2D_WEIGHT_GRAD_WORKGROUP, numel as u32)
        } else {
            (spec, ew_groups)
        }];
        if chunks > 1 {
            stages.push((&kernels::CONV2D_WEIGHT_GRAD_FINISH, numel as u32));
        }
        (stages, chunks)
    }

    /// Chunks per element of a weight gradient of `total` elements with `terms` terms each:
    /// more than 1 when it runs split (see [`Self::set_split_min`]): enough chunks of at least
    /// `WORKGROUP_SIZE` terms to bring the workgroups to about
    /// [`WEIGHT_GRAD_SPLIT_WORKGROUPS`](kernels::WEIGHT_GRAD_SPLIT_WORKGROUPS), at most `WORKGROUP_SIZE`, within the grid.
    pub(in crate::exec::gpu) fn weight_grad_chunks(&self, total: usize, terms: usize) -> u32 {
        kernels::weight_grad_chunks(total, terms, self.split_min, self.max_workgroups_per_dim)
    }
}
