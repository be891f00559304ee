//! What each op of the graph records: the kernel (or kernels: split reductions, chunked
//! weight gradients, concatenations) for one node, with its parameter block, and the fused
//! kernels of [`super::fusion`]. The parameter blocks follow the structs of
//! [`super::kernels`], which mirror the WGSL headers in shaders/.

use super::dispatch::{BufferLabel, Kernel, Part, Pending, Site};
use super::kernels::{
    self, EwParams, GatherParams, KernelSpec, MatmulParams, MoveParams, ReduceParams,
    SoftmaxParams, MATMUL_TILE, MAX_RANK, REDUCE_SPLIT_MAX_OUT, WORKGROUP_SIZE,
};
use super::{fusion, GpuExecutor, GpuScalar};
use crate::exec::{check_feed, row_index, ExecError, Feeds, Scalar};
use crate::graph::{BinaryOp, Graph, NodeId, Op, UnaryOp};
use std::collections::HashMap;
use std::rc::Rc;

/// What a fused kernel's dispatch needs: its parameters (`FusedParams` or
/// `FusedReduceParams`), its stages (entry point and workgroups: one, or the two of a split
/// reduction) and the elements of its output buffer (partial results included).
struct FusedSetup {
    pub(super) params: Vec<u8>,
    pub(super) stages: Vec<(&'static str, u32)>,
    pub(super) out_numel: usize,
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

/// The `ReduceParams` of a reduction of an input of shape `in_shape` over `axes` into
/// `numel` outputs (shaders/reduce.wgsl).
fn reduce_params(in_shape: &[usize], axes: &[usize], numel: usize) -> ReduceParams {
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

/// `MoveParams` (shaders/movement.wgsl) of a plain copy onto an output of shape `shape`:
/// lo = 0, div = 1, extent = shape, write 0 outside; the caller sets the input strides and
/// the primitive's axis.
pub(super) fn copy_params(shape: &[usize]) -> MoveParams {
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

/// Checks on the host, before any work, the indices of every Gather and ScatterAdd whose
/// index tensor is a fed graph Input (its fed values) or Const (its fill value). Indices
/// computed on the device or held in a device variable are not checked: shaders/gather.wgsl documents what the kernels do with them.
pub(super) fn check_indices<T: Scalar, V>(
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

pub(super) fn put(dst: &mut [u32; MAX_RANK], src: &[usize]) {
    for (d, &v) in src.iter().enumerate() {
        dst[d] = v as u32;
    }
}

impl<T: GpuScalar> GpuExecutor<T> {
    /// Whether a reduction with `p`'s extents runs split (see [`Self::set_split_min`]): long
    /// enough, few enough outputs, and its `total_out * SPLIT` workgroups fit the grid.
    pub(super) fn split(&self, p: &ReduceParams) -> bool {
        self.splits(p.total_out as usize, p.n_red as usize)
    }

    /// The dispatches of a reduction with `p`'s extents (a maximum if `max`), as the kernels of
    /// shaders/reduce_core.wgsl (plain or fused): one invocation or one workgroup per output,
    /// or split (a chunk pass, then a finishing pass, whose partial sums follow the outputs in
    /// the output's buffer). Returns each dispatch's kernel and workgroups, and the elements
    /// of the output's buffer.
    fn reduce_stages(
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
    pub(super) fn splits(&self, total_out: usize, n_red: usize) -> bool {
        let l = self.max_workgroups_per_dim as usize;
        n_red >= self.split_min as usize
            && total_out <= REDUCE_SPLIT_MAX_OUT as usize
            && total_out > 0
            && total_out * WORKGROUP_SIZE as usize <= l * l
    }

    /// Chunks per element of a weight gradient of `total` elements with `terms` terms each:
    /// more than 1 when it runs split (see [`Self::set_split_min`]): enough chunks of at least
    /// `WORKGROUP_SIZE` terms to bring the workgroups to about
    /// [`WEIGHT_GRAD_SPLIT_WORKGROUPS`](kernels::WEIGHT_GRAD_SPLIT_WORKGROUPS), at most `WORKGROUP_SIZE`, within the grid.
    pub(super) fn weight_grad_chunks(&self, total: usize, terms: usize) -> u32 {
        kernels::weight_grad_chunks(total, terms, self.split_min, self.max_workgroups_per_dim)
    }

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
    pub(super) fn record_fused(
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
        let input = |k: usize| -> Result<Rc<wgpu::Buffer>, ExecError> {
            vals[node.inputs[k].0]
                .clone()
                .ok_or(ExecError::UnknownNode(node.inputs[k]))
        };
        let shape = node.shape.dims();
        let numel = node.shape.numel();
        let label = BufferLabel { id: i, node };
        // Where this node's dispatches come from (each dispatch names its own kernel).
        let at = Site::node(i, node);
        let ew_groups = (numel as u32).div_ceil(WORKGROUP_SIZE);
        let out = match &node.op {
            Op::Reshape { .. } => return input(0),
            Op::Const { value, .. } => {
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                p.set_value(T::of(*value));
                self.dispatch(
                    &kernels::FILL,
                    bytemuck::bytes_of(&p),
                    &[],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Unary(u) => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let p = EwParams {
                    total: numel as u32,
                    op: unary_code(*u),
                    ..Default::default()
                };
                self.dispatch(
                    &kernels::UNARY,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Binary(b) => {
                let (x, y) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    op: binary_code(*b),
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(graph.shape(node.inputs[0]).dims(), shape),
                );
                put(
                    &mut p.b_strides,
                    &broadcast_strides(graph.shape(node.inputs[1]).dims(), shape),
                );
                self.dispatch(
                    &kernels::BINARY,
                    bytemuck::bytes_of(&p),
                    &[&x, &y],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Broadcast { .. } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let mut p = EwParams {
                    total: numel as u32,
                    rank: shape.len() as u32,
                    ..Default::default()
                };
                put(&mut p.shape, shape);
                put(
                    &mut p.a_strides,
                    &broadcast_strides(graph.shape(node.inputs[0]).dims(), shape),
                );
                self.dispatch(
                    &kernels::BROADCAST,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
                let x = input(0)?;
                let p = reduce_params(graph.shape(node.inputs[0]).dims(), axes, numel);
                let max = matches!(node.op, Op::ReduceMax { .. });
                let (stages, out_numel) = self.reduce_stages(&p, max);
                let out = self.alloc(out_numel, &label);
                for (spec, groups) in stages {
                    self.dispatch(spec, bytemuck::bytes_of(&p), &[&x], &out, groups, &at)?;
                }
                out
            }
            Op::MatMul => {
                let (a, b) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let (m, k) = (
                    graph.shape(node.inputs[0]).dims()[0],
                    graph.shape(node.inputs[0]).dims()[1],
                );
                let n = shape[1];
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
                                ..at
                            }
                        ))
                    })?;
                self.dispatch(
                    &kernels::MATMUL,
                    bytemuck::bytes_of(&p),
                    &[&a, &b],
                    &out,
                    groups,
                    &at,
                )?;
                out
            }
            Op::Input { name, shape } => {
                return Err(ExecError::MissingFeed {
                    name: name.clone(),
                    shape: shape.clone(),
                })
            }
            Op::Select => {
                let (c, a, b) = (input(0)?, input(1)?, input(2)?);
                let out = self.alloc(numel, &label);
                let p = EwParams {
                    total: numel as u32,
                    ..Default::default()
                };
                self.dispatch(
                    &kernels::SELECT,
                    bytemuck::bytes_of(&p),
                    &[&c, &a, &b],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Permute { .. } | Op::Slice { .. } | Op::Pad { .. } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let in_shape = graph.shape(node.inputs[0]);
                let strides = in_shape.strides();
                let mut p = copy_params(shape);
                match &node.op {
                    Op::Permute { perm } => {
                        for (d, &a) in perm.iter().enumerate() {
                            p.in_strides[d] = strides[a] as u32;
                        }
                    }
                    Op::Slice {
                        axis, start, step, ..
                    } => {
                        put(&mut p.in_strides, &strides);
                        p.in_strides[*axis] = (strides[*axis] * step) as u32;
                        p.base = (start * strides[*axis]) as u32;
                    }
                    Op::Pad {
                        axis,
                        before,
                        interior,
                        ..
                    } => {
                        put(&mut p.in_strides, &strides);
                        p.lo[*axis] = *before as u32;
                        p.div[*axis] = (interior + 1) as u32;
                        p.extent[*axis] = in_shape.dims()[*axis] as u32;
                    }
                    _ => {}
                }
                self.dispatch(
                    &kernels::COPY,
                    bytemuck::bytes_of(&p),
                    &[&x],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::Concat { axis } => {
                let out = self.alloc(numel, &label);
                let mut off = 0;
                for k in 0..node.inputs.len() {
                    let x = input(k)?;
                    let in_shape = graph.shape(node.inputs[k]);
                    let mut p = copy_params(shape);
                    put(&mut p.in_strides, &in_shape.strides());
                    p.skip_outside = 1;
                    p.lo[*axis] = off as u32;
                    p.extent[*axis] = in_shape.dims()[*axis] as u32;
                    off += in_shape.dims()[*axis];
                    self.dispatch(
                        &kernels::COPY,
                        bytemuck::bytes_of(&p),
                        &[&x],
                        &out,
                        ew_groups,
                        &Site {
                            part: Part::ConcatInput(k),
                            ..at
                        },
                    )?;
                }
                out
            }
            Op::Conv2d(cp)
            | Op::Conv2dInputGrad { p: cp, .. }
            | Op::Conv2dWeightGrad { p: cp, .. } => {
                let a = match prologue {
                    Some(p) => vals[p[0].0].clone().ok_or(ExecError::UnknownNode(p[0]))?,
                    None => input(0)?,
                };
                let b = input(1)?;
                let s0 = graph.shape(node.inputs[0]).dims();
                let s1 = graph.shape(node.inputs[1]).dims();
                // (x shape, weight shape, y shape) of the forward convolution.
                let (xs, ws, ys, spec) = match &node.op {
                    Op::Conv2d(_) => (s0, s1, shape, &kernels::CONV2D),
                    Op::Conv2dInputGrad { .. } => (shape, s1, s0, &kernels::CONV2D_INPUT_GRAD),
                    _ => (s0, shape, s1, &kernels::CONV2D_WEIGHT_GRAD),
                };
                // A weight gradient sums n oh ow terms per element: a long sum gets a
                // workgroup per element, or (split) several per element and a second
                // dispatch that adds their partial sums (see shaders/conv.wgsl).
                let terms = ys[0] * ys[2] * ys[3];
                let weight_grad = matches!(node.op, Op::Conv2dWeightGrad { .. });
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
                // A split one's partial sums follow the output in its buffer.
                let extra = if chunks > 1 { chunks as usize } else { 0 };
                let out = self.alloc(numel * (1 + extra), &label);
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
                    self.dispatch(spec, bytemuck::bytes_of(&p), &[&a, &b], &out, groups, &at)?;
                }
                out
            }
            Op::AvgPool2d(pp)
            | Op::AvgPool2dGrad { p: pp, .. }
            | Op::MaxPool2d(pp)
            | Op::MaxPool2dGrad(pp)
            | Op::MaxPool2dGather(pp) => {
                let s0 = graph.shape(node.inputs[0]).dims();
                // (x shape, y shape) of the forward pooling, the kernel and its reads.
                let (xs, ys, spec, reads) = match &node.op {
                    Op::AvgPool2d(_) => (s0, shape, &kernels::AVG_POOL, vec![input(0)?]),
                    Op::AvgPool2dGrad { .. } => {
                        (shape, s0, &kernels::AVG_POOL_GRAD, vec![input(0)?])
                    }
                    Op::MaxPool2d(_) => (
                        s0,
                        shape,
                        &kernels::MAX_POOL_GATHER,
                        vec![input(0)?, input(0)?],
                    ),
                    Op::MaxPool2dGrad(_) => (
                        s0,
                        graph.shape(node.inputs[1]).dims(),
                        &kernels::MAX_POOL_GRAD,
                        vec![input(0)?, input(1)?],
                    ),
                    _ => (
                        s0,
                        shape,
                        &kernels::MAX_POOL_GATHER,
                        vec![input(0)?, input(1)?],
                    ),
                };
                let out = self.alloc(numel, &label);
                let p = kernels::PoolParams {
                    total: numel as u32,
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
                self.dispatch(spec, bytemuck::bytes_of(&p), &refs, &out, ew_groups, &at)?;
                out
            }
            Op::Gather | Op::ScatterAdd { .. } => {
                let (a, b) = (input(0)?, input(1)?);
                let out = self.alloc(numel, &label);
                let (spec, rows, n) = match &node.op {
                    Op::Gather => (
                        &kernels::GATHER,
                        graph.shape(node.inputs[0]).dims()[0],
                        graph.shape(node.inputs[1]).numel(),
                    ),
                    _ => (
                        &kernels::SCATTER_ADD,
                        shape[0],
                        graph.shape(node.inputs[0]).numel(),
                    ),
                };
                let d: usize = shape[1..].iter().product();
                let p = GatherParams {
                    total: numel as u32,
                    rows: rows as u32,
                    n: n as u32,
                    d: d.max(1) as u32,
                };
                self.dispatch(
                    spec,
                    bytemuck::bytes_of(&p),
                    &[&a, &b],
                    &out,
                    ew_groups,
                    &at,
                )?;
                out
            }
            Op::LogSoftmax { axis } => {
                let x = input(0)?;
                let out = self.alloc(numel, &label);
                let n = shape[*axis];
                let inner: usize = shape[axis + 1..].iter().product();
                let lanes = numel.checked_div(n).unwrap_or(0);
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
                    &at,
                )?;
                out
            }
        };
        Ok(out)
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
