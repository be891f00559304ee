//! The fused kernels of [`crate::exec::gpu::fusion`]: a generated map (shaders/fused.wgsl,
//! fused_map.wgsl) or a reduction of a generated expression (fused_reduce.wgsl with the entry
//! points of reduce_core.wgsl), recorded a batch of the schedule at a time.

use super::put;
use super::reduce::reduce_params;
use crate::exec::gpu::dispatch::{BufferLabel, Kernel, Part, Pending, Site};
use crate::exec::gpu::kernels::{self, WORKGROUP_SIZE};
use crate::exec::gpu::{fusion, GpuExecutor, GpuScalar};
use crate::exec::ExecError;
use crate::graph::{Graph, Op};
use std::rc::Rc;

/// What a fused kernel's dispatch needs: its parameters (`FusedParams` or
/// `FusedReduceParams`), its stages (entry point and workgroups: one, or the two of a split
/// reduction) and the elements of its output buffer (partial results included).
struct FusedSetup {
    params: Vec<u8>,
    stages: Vec<(&'static str, u32)>,
    out_numel: usize,
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// The parameters, stages and output size of the fused kernel `f` whose root is node `i`.
    fn fused_setup(
        &self,
        graph: &Graph,
        i: usize,
        f: &fusion::Fused,
        at: &Site,
    ) -> Result<FusedSetup, ExecError> {
        let node = &graph.nodes()[i];
        let numel = node.shape.numel();
        // The expression's shape: the map's output, or the reduction's input.
        let expr_shape = match &f.reduce {
            None => node.shape.dims(),
            Some(r) => graph.shape(r.input).dims(),
        };
        let mut map = kernels::FusedParams {
            total: expr_shape.iter().product::<usize>() as u32,
            rank: expr_shape.len() as u32,
            ..Default::default()
        };
        put(&mut map.shape, expr_shape);
        map.views = f.views.len() as u32;
        map.words = f.words(expr_shape.len());
        // A fused reduction's axes are its reduction node's (the root, or below an epilogue).
        let reduce_op = f.reduce.as_ref().map(|r| &graph.nodes()[r.node.0].op);
        match (&f.reduce, reduce_op) {
            (None, _) => Ok(FusedSetup {
                params: bytemuck::bytes_of(&map).to_vec(),
                stages: vec![("fused", (numel as u32).div_ceil(WORKGROUP_SIZE))],
                out_numel: numel,
            }),
            (Some(r), Some(Op::ReduceSum { axes } | Op::ReduceMax { axes })) => {
                // One dispatch, or the two of a split reduction, whose partial results follow
                // the output in its buffer.
                let p = reduce_params(expr_shape, axes, numel);
                let (specs, out_numel) = self.reduce_stages(&p, r.max);
                let params = kernels::FusedReduceParams { reduce: p, map };
                Ok(FusedSetup {
                    params: bytemuck::bytes_of(&params).to_vec(),
                    stages: specs.iter().map(|(k, g)| (k.entry, *g)).collect(),
                    out_numel,
                })
            }
            (Some(_), op) => Err(ExecError::Gpu(format!(
                "{at}: a fused reduction's node is {}, not a reduction",
                op.map_or("none".into(), |op| op.name())
            ))),
        }
    }

    /// Records the fused kernels rooted at `members` (one batch of the schedule: the same
    /// kernel text, none reading another's value) and returns their output buffers in order;
    /// [`Self::flush_pending`] batches their dispatches.
    pub(in crate::exec::gpu) fn record_fused(
        &mut self,
        graph: &Graph,
        members: &[usize],
        plan: &fusion::FusionPlan,
        vals: &[Option<Rc<wgpu::Buffer>>],
    ) -> Result<Vec<Rc<wgpu::Buffer>>, ExecError> {
        let nodes = graph.nodes();
        let mut outs = Vec::with_capacity(members.len());
        let mut held = Vec::new();
        for (m, &i) in members.iter().enumerate() {
            // Each member's own kernel: the text of the batch, its own leaves and views.
            let f = &plan.fused[&i];
            let at = Site {
                kernel: "fused",
                fused_ops: Some(f.ops),
                id: i,
                node: &nodes[i],
                part: Part::Whole,
            };
            let setup = self.fused_setup(graph, i, f, &at)?;
            let mut reads = Vec::with_capacity(f.leaves.len());
            for &leaf in &f.leaves {
                let buf = vals[leaf.0]
                    .as_deref()
                    .ok_or(ExecError::UnknownNode(leaf))?;
                reads.push(buf.clone());
            }
            let out = self.alloc(
                setup.out_numel,
                &BufferLabel {
                    id: i,
                    node: &nodes[i],
                },
            );
            for (entry, groups) in setup.stages {
                held.push(Pending {
                    member: m,
                    kernel: Kernel::Fused {
                        source: f.source.clone(),
                        hash: f.hash,
                        leaves: f.leaves.len(),
                        reduce: f.reduce.is_some(),
                        entry,
                    },
                    params: setup.params.clone(),
                    reads: reads.clone(),
                    write: (*out).clone(),
                    groups,
                    at: at.held(),
                });
            }
            outs.push(out);
        }
        self.flush_pending(graph, members.len(), held)?;
        Ok(outs)
    }
}
