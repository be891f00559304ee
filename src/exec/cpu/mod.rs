//! The CPU reference executor: runs any graph in f64 or f32 with ndarray.
//!
//! Nodes run in index order (a topological order). Only nodes the requested outputs need are
//! computed, and a node's buffer goes back to a size-keyed pool right after its last reader,
//! so later nodes reuse it instead of allocating.

mod conv;
mod elementwise;
mod pool;
mod tensor;

use super::{check_assign, check_feed, liveness, ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, NodeId, Op};
use ndarray::{ArrayD, IxDyn};
use std::borrow::Cow;
use std::collections::HashMap;

/// The most elements the buffer pool keeps (2^28: 1 GiB in f32, 2 GiB in f64).
pub const MAX_POOLED_ELEMENTS: usize = 1 << 28;

/// Size-keyed pool of dead buffers, holding at most [`MAX_POOLED_ELEMENTS`] elements in all
/// (graphs of many shapes, such as the recurrent model's variable sequence lengths, would
/// otherwise keep up to 8 buffers of every size they ever used).
#[derive(Default)]
pub struct BufferPool<T> {
    free: HashMap<usize, Vec<Vec<T>>>,
    /// Elements held in `free`.
    pooled: usize,
    /// Allocations served from the pool / fresh, for the executor's statistics.
    pub reused: usize,
    pub fresh: usize,
}

impl<T: Scalar> BufferPool<T> {
    /// A buffer of the given shape with unspecified contents (the kernel overwrites it all).
    pub fn alloc(&mut self, shape: &[usize]) -> ArrayD<T> {
        let n: usize = shape.iter().product();
        let v = match self.free.get_mut(&n).and_then(|l| l.pop()) {
            Some(v) => {
                self.reused += 1;
                self.pooled -= v.len();
                v
            }
            None => {
                self.fresh += 1;
                vec![T::zero(); n]
            }
        };
        ArrayD::from_shape_vec(IxDyn(shape), v).expect("length matches shape")
    }

    pub fn zeros(&mut self, shape: &[usize]) -> ArrayD<T> {
        let mut a = self.alloc(shape);
        a.fill(T::zero());
        a
    }

    /// Return a dead buffer to the pool.
    pub fn recycle(&mut self, a: ArrayD<T>) {
        if a.is_standard_layout() {
            let (v, off) = a.into_raw_vec_and_offset();
            if off.unwrap_or(0) == 0
                && !v.is_empty()
                && self.pooled + v.len() <= MAX_POOLED_ELEMENTS
            {
                let list = self.free.entry(v.len()).or_default();
                if list.len() < 8 {
                    self.pooled += v.len();
                    list.push(v);
                }
            }
        }
    }
}

/// The CPU reference executor for element type `T` (f64 for verification, f32 for speed).
#[derive(Default)]
pub struct CpuExecutor<T> {
    pool: BufferPool<T>,
    /// Seconds and calls per op family, when profiling is on.
    profile: Option<std::collections::BTreeMap<String, (f64, usize)>>,
    /// Variables kept between runs (see [`Executor`]).
    vars: HashMap<String, ArrayD<T>>,
}

impl<T: Scalar> CpuExecutor<T> {
    pub fn new() -> Self {
        CpuExecutor {
            pool: BufferPool {
                free: HashMap::new(),
                pooled: 0,
                reused: 0,
                fresh: 0,
            },
            profile: None,
            vars: HashMap::new(),
        }
    }

    /// Start recording time per op family (see [`CpuExecutor::profile`]).
    pub fn enable_profile(&mut self) {
        self.profile = Some(Default::default());
    }

    /// (op family, seconds, calls), slowest first.
    pub fn profile(&self) -> Vec<(String, f64, usize)> {
        let mut v: Vec<(String, f64, usize)> = self
            .profile
            .iter()
            .flatten()
            .map(|(k, &(s, n))| (k.clone(), s, n))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    /// (buffers served from the pool, buffers freshly allocated) since creation.
    pub fn pool_stats(&self) -> (usize, usize) {
        (self.pool.reused, self.pool.fresh)
    }
}

impl<T: Scalar> Executor<T> for CpuExecutor<T> {
    fn name(&self) -> String {
        format!("cpu-{}", T::NAME)
    }

    fn run_assign(
        &mut self,
        graph: &Graph,
        feeds: &Feeds<T>,
        outputs: &[NodeId],
        assign: &[(NodeId, String)],
    ) -> Result<Vec<ArrayD<T>>, ExecError> {
        check_assign(graph, assign, |n| self.var_shape(n))?;
        let mut keep = outputs.to_vec();
        keep.extend(assign.iter().map(|(n, _)| *n));
        let (needed, last_use) = liveness(graph, &keep)?;
        // The variables leave the executor for the run so inputs can borrow them.
        let vars = std::mem::take(&mut self.vars);
        let result = self.run_inner(graph, feeds, &vars, outputs, assign, &needed, &last_use);
        self.vars = vars;
        let (result, assigned) = result?;
        for ((_, name), v) in assign.iter().zip(assigned) {
            self.vars.insert(name.clone(), v);
        }
        Ok(result)
    }

    fn set_var(&mut self, name: &str, value: &ArrayD<T>) -> Result<(), ExecError> {
        self.vars
            .insert(name.to_string(), value.as_standard_layout().into_owned());
        Ok(())
    }

    fn var(&mut self, name: &str) -> Result<ArrayD<T>, ExecError> {
        self.vars
            .get(name)
            .cloned()
            .ok_or_else(|| ExecError::NoVar(name.to_string()))
    }

    fn var_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.vars.get(name).map(|v| v.shape().to_vec())
    }

    fn clear_vars(&mut self) {
        self.vars.clear();
    }
}

/// Outputs, then the values to assign (in `assign` order).
type RunResult<T> = (Vec<ArrayD<T>>, Vec<ArrayD<T>>);

impl<T: Scalar> CpuExecutor<T> {
    #[allow(clippy::too_many_arguments)]
    fn run_inner(
        &mut self,
        graph: &Graph,
        feeds: &Feeds<T>,
        vars: &HashMap<String, ArrayD<T>>,
        outputs: &[NodeId],
        assign: &[(NodeId, String)],
        needed: &[bool],
        last_use: &[usize],
    ) -> Result<RunResult<T>, ExecError> {
        let mut vals = feed_inputs(graph, feeds, vars, needed)?;
        for (i, node) in graph.nodes().iter().enumerate() {
            if !needed[i] || matches!(node.op, Op::Input { .. }) {
                continue;
            }
            let ins: Vec<&ArrayD<T>> = node
                .inputs
                .iter()
                .map(|j| {
                    vals[j.0]
                        .as_deref()
                        .expect("inputs run before their consumers")
                })
                .collect();
            let t = self.profile.as_ref().map(|_| std::time::Instant::now());
            let out = eval(&mut self.pool, node, &ins)?;
            if let (Some(p), Some(t)) = (self.profile.as_mut(), t) {
                let key = node.op.name();
                let key = key.split(['(', '[']).next().unwrap_or("?").to_string();
                let e = p.entry(key).or_insert((0.0, 0));
                e.0 += t.elapsed().as_secs_f64();
                e.1 += 1;
            }
            debug_assert_eq!(out.shape(), node.shape.dims(), "{}", node.op.name());
            vals[i] = Some(Cow::Owned(out));
            for j in &node.inputs {
                if last_use[j.0] == i {
                    // Fed values and variables are borrowed; only our own buffers recycle.
                    if let Some(Cow::Owned(v)) = vals[j.0].take() {
                        self.pool.recycle(v);
                    }
                }
            }
        }
        // Move each output out (clone only a value that is needed again later).
        let mut keep: Vec<NodeId> = outputs.to_vec();
        keep.extend(assign.iter().map(|(n, _)| *n));
        let mut taken = Vec::with_capacity(keep.len());
        for (k, o) in keep.iter().enumerate() {
            let v = if keep[k + 1..].contains(o) {
                vals[o.0].clone()
            } else {
                vals[o.0].take()
            };
            taken.push(v.expect("outputs are kept to the end").into_owned());
        }
        let assigned = taken.split_off(outputs.len());
        Ok((taken, assigned))
    }
}

/// Evaluate one node given its input values.
fn eval<T: Scalar>(
    pool: &mut BufferPool<T>,
    node: &crate::graph::Node,
    x: &[&ArrayD<T>],
) -> Result<ArrayD<T>, ExecError> {
    let shape = node.shape.dims();
    Ok(match &node.op {
        Op::Input { name, shape } => {
            // Feeds are checked here so a run names the missing or mis-shaped input.
            return Err(ExecError::MissingFeed {
                name: name.clone(),
                shape: shape.clone(),
            });
        }
        Op::Const { value, .. } => {
            let mut a = pool.alloc(shape);
            a.fill(T::of(*value));
            a
        }
        Op::Unary(u) => elementwise::unary(pool, *u, x[0]),
        Op::Binary(b) => elementwise::binary(pool, *b, x[0], x[1], shape),
        Op::Select => elementwise::select(pool, x[0], x[1], x[2]),
        Op::ReduceSum { axes } => tensor::reduce_sum(pool, x[0], axes, shape),
        Op::ReduceMax { axes } => tensor::reduce_max(x[0], axes),
        Op::Broadcast { shape: s } => tensor::broadcast(pool, x[0], s.dims()),
        Op::Reshape { shape: s } => tensor::reshape(pool, x[0], s.dims()),
        Op::Permute { perm } => tensor::permute(pool, x[0], perm),
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => tensor::slice(pool, x[0], *axis, *start, *end, *step),
        Op::Pad {
            axis,
            before,
            interior,
            ..
        } => tensor::pad(pool, x[0], *axis, *before, *interior, shape),
        Op::Concat { axis } => tensor::concat(pool, x, *axis, shape),
        Op::MatMul => tensor::matmul(pool, x[0], x[1]),
        Op::Conv2d(p) => conv::conv2d(pool, x[0], x[1], p, shape),
        Op::Conv2dInputGrad { p, .. } => conv::conv2d_input_grad(pool, x[0], x[1], p, shape),
        Op::Conv2dWeightGrad { p, .. } => conv::conv2d_weight_grad(pool, x[0], x[1], p, shape),
        Op::AvgPool2d(p) => pool::avg_pool(pool, x[0], p, shape),
        Op::AvgPool2dGrad { p, .. } => pool::avg_pool_grad(pool, x[0], p, shape),
        Op::MaxPool2d(p) => pool::max_pool_gather(pool, x[0], x[0], p, shape),
        Op::MaxPool2dGrad(p) => pool::max_pool_grad(pool, x[0], x[1], p),
        Op::MaxPool2dGather(p) => pool::max_pool_gather(pool, x[0], x[1], p, shape),
        Op::Gather => tensor::gather(pool, x[0], x[1], shape, node)?,
        Op::ScatterAdd { .. } => tensor::scatter_add(pool, x[0], x[1], shape, node)?,
        Op::LogSoftmax { axis } => tensor::log_softmax(pool, x[0], *axis),
    })
}

/// The value of every needed input: its feed, else the variable of its name, checked against
/// the input's shape (missing and mis-shaped inputs are named). Values in standard layout are
/// borrowed, not copied.
pub(crate) fn feed_inputs<'a, T: Scalar>(
    graph: &Graph,
    feeds: &'a Feeds<T>,
    vars: &'a HashMap<String, ArrayD<T>>,
    needed: &[bool],
) -> Result<Vec<Option<Cow<'a, ArrayD<T>>>>, ExecError> {
    let mut vals = vec![None; graph.len()];
    for (i, node) in graph.nodes().iter().enumerate() {
        if let (true, Op::Input { name, shape }) = (needed[i], &node.op) {
            let v = feeds.get(name).or_else(|| vars.get(name));
            vals[i] = Some(match v {
                Some(a) if a.shape() == shape.dims() && a.is_standard_layout() => Cow::Borrowed(a),
                Some(a) if a.shape() == shape.dims() => {
                    Cow::Owned(a.as_standard_layout().into_owned())
                }
                _ if feeds.get(name).is_none() && v.is_some() => {
                    return Err(super::ExecError::FeedShape {
                        name: format!("{name} (variable)"),
                        expected: shape.clone(),
                        got: crate::graph::Shape::from(v.expect("some").shape()),
                    })
                }
                _ => Cow::Owned(check_feed(name, shape, feeds)?),
            });
        }
    }
    Ok(vals)
}
