//! Gather and ScatterAdd: the kernels of shaders/gather.wgsl (ScatterAdd as a gather over
//! the index list, no atomics), and the host check of their indices before a run.

use super::Recording;
use crate::exec::gpu::kernels::{self, GatherParams};
use crate::exec::gpu::{GpuExecutor, GpuScalar};
use crate::exec::{check_feed, row_index, ExecError, Feeds, Scalar};
use crate::graph::{Graph, Op};
use std::collections::HashMap;
use std::rc::Rc;

/// Which of the two row-indexing primitives a node is.
pub(super) enum GatherKind {
    /// Gather: (table [rows, D...], idx [n]) -> [n, D...].
    Gather,
    /// ScatterAdd: (idx [n], src [n, D...]) -> [rows, D...].
    ScatterAdd,
}

/// Checks on the host, before any work, the indices of every Gather and ScatterAdd whose
/// index tensor is a fed graph Input (its fed values) or Const (its fill value). Indices
/// computed on the device or held in a device variable are not checked: shaders/gather.wgsl documents what the kernels do with them.
pub(in crate::exec::gpu) fn check_indices<T: Scalar, V>(
    graph: &Graph,
    feeds: &Feeds<T>,
    vars: &HashMap<String, V>,
    needed: &[bool],
) -> Result<(), ExecError> {
    for (i, node) in graph.nodes().iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let (idx, rows) = match &node.op {
            Op::Gather => (node.inputs[1], graph.shape(node.inputs[0]).dims()[0]),
            Op::ScatterAdd { rows } => (node.inputs[0], *rows),
            _ => continue,
        };
        match &graph.node(idx).op {
            Op::Input { name, .. } if feeds.get(name).is_none() && vars.contains_key(name) => {}
            Op::Input { name, shape } => {
                let v = check_feed(name, shape, feeds)?;
                for &x in v.iter() {
                    row_index(x, rows, node)?;
                }
            }
            Op::Const { value, shape } if shape.numel() > 0 => {
                row_index(T::of(*value), rows, node)?;
            }
            _ => {}
        }
    }
    Ok(())
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Records the row-indexing primitive `kind` for the node of `r`.
    pub(super) fn record_gather(
        &mut self,
        r: &Recording,
        kind: GatherKind,
    ) -> Result<Rc<wgpu::Buffer>, ExecError> {
        let (a, b) = (r.input(0)?, r.input(1)?);
        let out = self.alloc(r.numel, &r.label);
        let (spec, rows, n) = match kind {
            GatherKind::Gather => (
                &kernels::GATHER,
                r.input_shape(0)[0],
                r.graph.shape(r.node.inputs[1]).numel(),
            ),
            GatherKind::ScatterAdd => (
                &kernels::SCATTER_ADD,
                r.shape[0],
                r.graph.shape(r.node.inputs[0]).numel(),
            ),
        };
        let d: usize = r.shape[1..].iter().product();
        let p = GatherParams {
            total: r.numel as u32,
            rows: rows as u32,
            n: n as u32,
            d: d.max(1) as u32,
        };
        self.dispatch(
            spec,
            bytemuck::bytes_of(&p),
            &[&a, &b],
            &out,
            r.ew_groups(),
            &r.at,
        )?;
        Ok(out)
    }
}
