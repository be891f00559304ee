//! What each op of the graph records: the kernel (or kernels: split reductions, chunked
//! weight gradients, concatenations) for one node, with its parameter block, and the fused
//! kernels of [`super::fusion`]. The parameter blocks follow the structs of
//! [`super::kernels`], which mirror the WGSL headers in shaders/.
//!
//! One file per op family, named as the CPU executor's files and the shaders they dispatch:
//! `elementwise.rs` (Const, Unary, Binary, Broadcast, Select: shaders/elementwise.wgsl),
//! `reduce.rs` (ReduceSum, ReduceMax: reduce.wgsl), `movement.rs` (Permute, Slice, Pad,
//! Concat: movement.wgsl), `matmul.rs`, `conv.rs` (Conv2d and its two transposes), `pool.rs`,
//! `gather.rs` (Gather, ScatterAdd), `softmax.rs` (LogSoftmax), and `fused.rs` (the generated
//! kernels of [`super::fusion`]: shaders/fused*.wgsl). [`GpuExecutor::record`] below is the
//! one match over [`Op`]; each arm hands the op's parameters to its family's function.

mod conv;
mod elementwise;
mod fused;
mod gather;
mod matmul;
mod movement;
mod pool;
mod reduce;
mod softmax;

pub use elementwise::{binary_code, broadcast_strides, unary_code};
pub(super) use gather::check_indices;
pub(super) use movement::copy_params;

use super::dispatch::{BufferLabel, Site};
use super::kernels::{MAX_RANK, WORKGROUP_SIZE};
use super::{GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use crate::graph::{Graph, Node, NodeId, Op};
use conv::ConvKind;
use elementwise::Elementwise;
use gather::GatherKind;
use movement::Movement;
use pool::PoolKind;
use std::rc::Rc;

/// The node being recorded: its graph, its inputs' buffers, its output's shape, and the label
/// and site its buffer and dispatches carry.
struct Recording<'a> {
    graph: &'a Graph,
    node: &'a Node,
    vals: &'a [Option<Rc<wgpu::Buffer>>],
    /// The output's shape and elements.
    shape: &'a [usize],
    numel: usize,
    label: BufferLabel<'a>,
    /// Where this node's dispatches come from (each dispatch names its own kernel).
    at: Site<'a>,
}

impl Recording<'_> {
    /// The buffer of input `k`.
    fn input(&self, k: usize) -> Result<Rc<wgpu::Buffer>, ExecError> {
        self.vals[self.node.inputs[k].0]
            .clone()
            .ok_or(ExecError::UnknownNode(self.node.inputs[k]))
    }

    /// The shape of input `k`.
    fn input_shape(&self, k: usize) -> &[usize] {
        self.graph.shape(self.node.inputs[k]).dims()
    }

    /// Workgroups of one invocation per output element.
    fn ew_groups(&self) -> u32 {
        (self.numel as u32).div_ceil(WORKGROUP_SIZE)
    }
}

pub(super) fn put(dst: &mut [u32; MAX_RANK], src: &[usize]) {
    for (d, &v) in src.iter().enumerate() {
        dst[d] = v as u32;
    }
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the kernel for node `i` and returns its output buffer. A convolution with a
    /// ReLU `prologue` (fusion rule 6) reads the ReLU's input and applies it on load.
    pub(super) fn record(
        &mut self,
        graph: &Graph,
        i: usize,
        vals: &[Option<Rc<wgpu::Buffer>>],
        prologue: Option<&[NodeId; 2]>,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let node = &graph.nodes()[i];
        let r = Recording {
            graph,
            node,
            vals,
            shape: node.shape.dims(),
            numel: node.shape.numel(),
            label: BufferLabel { id: i, node },
            at: Site::node(i, node),
        };
        match &node.op {
            Op::Input { name, shape } => Err(ExecError::MissingFeed {
                name: name.clone(),
                shape: shape.clone(),
            }),
            Op::Reshape { .. } => r.input(0),
            Op::Const { value, .. } => self.record_elementwise(&r, Elementwise::Fill(*value)),
            Op::Unary(u) => self.record_elementwise(&r, Elementwise::Unary(*u)),
            Op::Binary(b) => self.record_elementwise(&r, Elementwise::Binary(*b)),
            Op::Broadcast { .. } => self.record_elementwise(&r, Elementwise::Broadcast),
            Op::Select => self.record_elementwise(&r, Elementwise::Select),
            Op::ReduceSum { axes } => self.record_reduce(&r, axes, false),
            Op::ReduceMax { axes } => self.record_reduce(&r, axes, true),
            Op::Permute { perm } => self.record_movement(&r, Movement::Permute(perm)),
            Op::Slice {
                axis, start, step, ..
            } => self.record_movement(
                &r,
                Movement::Slice {
                    axis: *axis,
                    start: *start,
                    step: *step,
                },
            ),
            Op::Pad {
                axis,
                before,
                interior,
                ..
            } => self.record_movement(
                &r,
                Movement::Pad {
                    axis: *axis,
                    before: *before,
                    interior: *interior,
                },
            ),
            Op::Concat { axis } => self.record_movement(&r, Movement::Concat(*axis)),
            Op::MatMul => self.record_matmul(&r),
            Op::Conv2d(p) => self.record_conv(&r, ConvKind::Forward, p, prologue),
            Op::Conv2dInputGrad { p, .. } => self.record_conv(&r, ConvKind::InputGrad, p, prologue),
            Op::Conv2dWeightGrad { p, .. } => {
                self.record_conv(&r, ConvKind::WeightGrad, p, prologue)
            }
            Op::AvgPool2d(p) => self.record_pool(&r, PoolKind::Avg, p),
            Op::AvgPool2dGrad { p, .. } => self.record_pool(&r, PoolKind::AvgGrad, p),
            Op::MaxPool2d(p) => self.record_pool(&r, PoolKind::Max, p),
            Op::MaxPool2dGrad(p) => self.record_pool(&r, PoolKind::MaxGrad, p),
            Op::MaxPool2dGather(p) => self.record_pool(&r, PoolKind::MaxGather, p),
            Op::Gather => self.record_gather(&r, GatherKind::Gather),
            Op::ScatterAdd { .. } => self.record_gather(&r, GatherKind::ScatterAdd),
            Op::LogSoftmax { axis } => self.record_log_softmax(&r, *axis),
        }
    }
}
