//! Planning: which nodes a kernel absorbs, reads through or turns into literals (rules 1 to 6
//! of the module documentation), which nodes are roots of fused kernels, when each buffer is
//! last read, and the schedule of batches a run records.

use super::codegen::write_kernel;
use super::view::Affine;
use super::{Fused, FusedReduce, FusionPlan};
use crate::graph::{Graph, NodeId, Op};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

pub(super) fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Broadcast { .. }
    )
}

fn reduction(op: &Op) -> bool {
    matches!(op, Op::ReduceSum { .. } | Op::ReduceMax { .. })
}

/// Movement ops a kernel can read through (rule 4): each output element is one input element
/// at an affine offset, or a padding zero.
pub(super) fn view_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Slice { .. } | Op::Pad { interior: 0, .. } | Op::Reshape { .. }
    )
}

/// Ops cheap enough to recompute (rule 1's recomputation): arithmetic, comparisons, division,
/// square root and reciprocal square root (an instruction or a few on a GPU; in the DARTS
/// graphs they are mostly batch norm's per-channel `rsqrt(var + eps)` and its backward
/// quotients, which every element of a map reads: recomputing them saves their dispatches
/// and costs little, benches/results/gpu-design-measurements.md); no exp, log, tanh, sigmoid or softplus (the f64 prelude computes
/// them by polynomials; exp of the alphas would be recomputed for every element of a mixed op).
fn cheap(op: &Op) -> bool {
    use crate::graph::{BinaryOp as B, UnaryOp as U};
    match op {
        Op::Unary(u) => matches!(
            u,
            U::Neg | U::Square | U::Relu | U::Step | U::Rsqrt | U::Sqrt
        ),
        Op::Binary(b) => matches!(
            b,
            B::Add | B::Sub | B::Mul | B::Max | B::Greater | B::Equal | B::Div
        ),
        Op::Select | Op::Broadcast { .. } => true,
        _ => false,
    }
}

/// What the planner knows of every node: which may be absorbed, read through, or a literal.
pub(super) struct Rules<'g> {
    pub(super) graph: &'g Graph,
    needed: &'g [bool],
    /// Outputs and assigned nodes, never absorbed.
    external: Vec<bool>,
    /// Uses of each node by needed nodes.
    uses: Vec<usize>,
    /// Every use by an elementwise node or a reduction.
    all_fusable: Vec<bool>,
    /// Every use by an elementwise node, a reduction or a view op.
    all_viewable: Vec<bool>,
    /// Rounds a constant to the element type.
    pub(super) round: &'g dyn Fn(f64) -> f64,
}

impl<'g> Rules<'g> {
    /// The rules for the `needed` nodes of `graph`, `keep` the outputs and assigned nodes.
    fn new(
        graph: &'g Graph,
        needed: &'g [bool],
        keep: &[NodeId],
        round: &'g dyn Fn(f64) -> f64,
    ) -> Self {
        let nodes = graph.nodes();
        let n = nodes.len();
        let mut uses = vec![0usize; n];
        let mut all_fusable = vec![true; n];
        let mut all_viewable = vec![true; n];
        for (i, node) in nodes.iter().enumerate() {
            if !needed[i] {
                continue;
            }
            for j in &node.inputs {
                uses[j.0] += 1;
                let inline = elementwise(&node.op) || reduction(&node.op);
                all_fusable[j.0] &= inline;
                all_viewable[j.0] &= inline || view_op(&node.op);
            }
        }
        let mut external = vec![false; n];
        for k in keep {
            external[k.0] = true;
        }
        Rules {
            graph,
            needed,
            external,
            uses,
            all_fusable,
            all_viewable,
            round,
        }
    }

    /// Constants read only by elementwise nodes and reductions become literals.
    pub(super) fn literal_const(&self, j: usize) -> bool {
        matches!(self.graph.nodes()[j].op, Op::Const { .. })
            && self.needed[j]
            && !self.external[j]
            && self.uses[j] > 0
            && self.all_fusable[j]
    }

    /// Whether consumer `c` may compute `j` inside its kernel (rules 1 and 2 of the module
    /// documentation; rule 3 is the builder's `room_for`). Without recomputation: `j`'s only
    /// use, at `c`'s shape, or by a reduction (which reads each element once, whatever its own
    /// shape); with it, any cheap op.
    pub(super) fn absorbable(&self, j: usize, c: usize) -> bool {
        let nodes = self.graph.nodes();
        let once =
            self.uses[j] == 1 && (nodes[j].shape == nodes[c].shape || reduction(&nodes[c].op));
        elementwise(&nodes[j].op)
            && self.needed[j]
            && !self.external[j]
            && self.all_fusable[j]
            && (once || cheap(&nodes[j].op))
    }

    /// Whether a kernel may read through node `v` (rule 4): a view op (or a broadcast under
    /// one) of a non-empty input, not kept, every use of which can read through it.
    pub(super) fn viewable(&self, v: usize) -> bool {
        let node = &self.graph.nodes()[v];
        (view_op(&node.op) || matches!(node.op, Op::Broadcast { .. }))
            && self.needed[v]
            && !self.external[v]
            && self.all_viewable[v]
            && node.shape.numel() > 0
            && self.graph.shape(node.inputs[0]).numel() > 0
    }

    /// The reduction whose value elementwise node `r` may compute inside the reduction's kernel
    /// (rule 5): `r` is unary or binary; one input is a reduction of `r`'s shape used only by
    /// `r` (and not kept); every other input is a literal or a buffer of `r`'s shape that `r`
    /// would not absorb anyway (read at the output's index).
    fn epilogue(&self, r: usize) -> Option<usize> {
        let nodes = self.graph.nodes();
        let node = &nodes[r];
        if !matches!(node.op, Op::Unary(_) | Op::Binary(_)) {
            return None;
        }
        let j = node.inputs.iter().map(|q| q.0).find(|&q| {
            reduction(&nodes[q].op)
                && self.needed[q]
                && !self.external[q]
                && self.uses[q] == 1
                && nodes[q].shape == node.shape
        })?;
        node.inputs
            .iter()
            .all(|q| {
                q.0 == j
                    || self.literal_const(q.0)
                    || (nodes[q.0].shape == node.shape
                        && !self.absorbable(q.0, r)
                        && !(view_op(&nodes[q.0].op) && self.viewable(q.0)))
            })
            .then_some(j)
    }

    /// The buffer a read of view node `k` reads, the view nodes composed (top down) and the
    /// composed read: the longest chain of viewable nodes below `k` whose composition is affine.
    pub(super) fn view_chain(&self, k: usize) -> (usize, Vec<usize>, Affine) {
        let nodes = self.graph.nodes();
        let mut chain = vec![k];
        let mut v = nodes[k].inputs[0].0;
        while self.viewable(v) {
            chain.push(v);
            v = nodes[v].inputs[0].0;
        }
        // Compose from the buffer up; where an op is not affine, the buffer is that op's node.
        let mut buffer = v;
        'retry: loop {
            let mut map = Affine::identity(nodes[buffer].shape.dims());
            for (p, &u) in chain.iter().enumerate().rev() {
                match map.apply(&nodes[u].op, nodes[u].shape.dims()) {
                    Some(m) => map = m,
                    None => {
                        buffer = u;
                        chain.truncate(p);
                        continue 'retry;
                    }
                }
            }
            return (buffer, chain, map);
        }
    }
}

/// Plans fusion for the `needed` nodes of `graph`; `keep` are the outputs and assigned nodes
/// (never absorbed), `round` rounds a constant to the element type, `max_leaves` caps the
/// buffers a kernel reads. With `enabled` false the plan fuses nothing (one dispatch per
/// node, the single-op kernels).
pub fn plan(
    graph: &Graph,
    needed: &[bool],
    keep: &[NodeId],
    round: impl Fn(f64) -> f64,
    max_leaves: usize,
    enabled: bool,
) -> FusionPlan {
    let nodes = graph.nodes();
    let n = nodes.len();
    let rules = Rules::new(graph, needed, keep, &round);
    let mut skipped = vec![false; n];
    let mut fused = BTreeMap::new();
    let mut relu_prologue = BTreeMap::new();
    if enabled {
        for (j, s) in skipped.iter_mut().enumerate() {
            *s = rules.literal_const(j);
        }
        relu_prologue = relu_prologues(&rules, &mut skipped);
        fused = fuse_roots(&rules, &mut skipped, &relu_prologue, max_leaves);
    }
    let dispatches_saved = (0..n)
        .filter(|&i| skipped[i] && !matches!(nodes[i].op, Op::Reshape { .. }))
        .count();
    let plan = FusionPlan {
        skipped,
        fused,
        last_use: Vec::new(),
        dispatches_saved,
        relu_prologue,
    };
    let last_use = last_uses(graph, needed, keep, &plan);
    FusionPlan { last_use, ..plan }
}

/// Rule 6: a ReLU read only as the input x of convolutions and weight gradients, whose own
/// input its kernel would read as a buffer anyway, is applied by those kernels as they load
/// x. Marks those ReLUs skipped and returns, for each such convolution, the buffers it reads
/// instead: the ReLU's input and its second operand.
fn relu_prologues(rules: &Rules, skipped: &mut [bool]) -> BTreeMap<usize, [NodeId; 2]> {
    let (nodes, needed) = (rules.graph.nodes(), rules.needed);
    let n = nodes.len();
    let conv = |c: usize| {
        let node = &nodes[c];
        needed[c]
            && matches!(node.op, Op::Conv2d(_) | Op::Conv2dWeightGrad { .. })
            && node.inputs[0] != node.inputs[1]
    };
    // Uses of each node as the x of a convolution (and not also as its other operand).
    let mut conv_x = vec![0usize; n];
    for c in (0..n).filter(|&c| conv(c)) {
        conv_x[nodes[c].inputs[0].0] += 1;
    }
    let prologue = |j: usize| {
        let node = &nodes[j];
        if !(matches!(node.op, Op::Unary(crate::graph::UnaryOp::Relu)) && needed[j]) {
            return false;
        }
        let k = node.inputs[0].0;
        // Its input is read as a buffer: not computed inside the ReLU's kernel.
        let inside = rules.literal_const(k)
            || rules.absorbable(k, j)
            || (view_op(&nodes[k].op) && rules.viewable(k));
        !rules.external[j] && rules.uses[j] > 0 && conv_x[j] == rules.uses[j] && !inside
    };
    let mut relu_prologue = BTreeMap::new();
    for c in (0..n).filter(|&c| conv(c)) {
        let j = nodes[c].inputs[0].0;
        if prologue(j) {
            skipped[j] = true;
            relu_prologue.insert(c, [nodes[j].inputs[0], nodes[c].inputs[1]]);
        }
    }
    relu_prologue
}

/// What the walk over the nodes, last first, does with a needed node not yet skipped.
enum Root {
    /// Computed inside every kernel that reads it (or read through by all of them): skipped.
    Skip,
    /// A dispatch of its own, not a fused kernel: it reads its inputs' buffers (or its ReLU
    /// prologue's).
    Dispatch,
    /// The root of a fused kernel: a map, or a reduction of an expression, with an epilogue
    /// when the root is an elementwise node of a reduction (rule 5).
    Kernel {
        reduce: Option<FusedReduce>,
        epilogue: Option<usize>,
    },
}

/// The fused kernels of the plan, roots taken from the last node backwards (so every kernel
/// that reads a node is written before the node's turn comes); nodes found computed inside
/// kernels and never read as a buffer are marked skipped.
fn fuse_roots(
    rules: &Rules,
    skipped: &mut [bool],
    relu_prologue: &BTreeMap<usize, [NodeId; 2]>,
    max_leaves: usize,
) -> BTreeMap<usize, Fused> {
    let nodes = rules.graph.nodes();
    let n = nodes.len();
    let mut fused = BTreeMap::new();
    // Each distinct kernel text once, with its hash.
    let mut texts: HashMap<String, (Rc<str>, u64)> = HashMap::new();
    // How often each node was bound as a leaf or read by a dispatch of its own, and
    // whether some kernel computed it inline (or read through it).
    let mut leaf_reads = vec![0usize; n];
    let mut inlined = vec![false; n];
    for r in (0..n).rev() {
        if !rules.needed[r] || skipped[r] {
            continue;
        }
        // Every kernel that reads r has been written (readers come later in the graph).
        let unread = inlined[r] && leaf_reads[r] == 0;
        let (reduce, epilogue) = match root(rules, r, unread, max_leaves) {
            Root::Skip => {
                skipped[r] = true;
                continue;
            }
            Root::Dispatch => {
                // A dispatch of its own reads its inputs' buffers (or its prologue's; a plain
                // reduction, its input's).
                let reads = relu_prologue
                    .get(&r)
                    .map_or(&nodes[r].inputs[..], |p: &[NodeId; 2]| &p[..]);
                for k in reads {
                    leaf_reads[k.0] += 1;
                }
                continue;
            }
            Root::Kernel { reduce, epilogue } => (reduce, epilogue),
        };
        let kernel = write_kernel(rules, r, reduce, epilogue, max_leaves);
        for &j in &kernel.absorbed {
            inlined[j] = true;
        }
        for l in &kernel.leaves {
            leaf_reads[l.0] += 1;
        }
        let (source, hash) = texts
            .entry(kernel.source)
            .or_insert_with_key(|text| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                text.hash(&mut h);
                (Rc::from(text.as_str()), h.finish())
            })
            .clone();
        fused.insert(
            r,
            Fused {
                leaves: kernel.leaves,
                strided: kernel.views.iter().map(|v| v.leaf).collect(),
                views: kernel.views,
                bounded: kernel.bounded,
                source,
                hash,
                ops: kernel.ops,
                reduce,
            },
        );
    }
    fused
}

/// What node `r` is in the walk ([`Root`]), `unread` when some kernel computed it and none
/// read it as a buffer. A reduction fuses its input when that is a literal, can be absorbed,
/// or is a slice or pad it can read through; it is then a root whose expression has the
/// input's shape.
fn root(rules: &Rules, r: usize, unread: bool, max_leaves: usize) -> Root {
    let nodes = rules.graph.nodes();
    // An epilogue binds at most one leaf before the reduction's input expression (which
    // the builder's invariant allows 3).
    let epilogue = rules.epilogue(r).filter(|_| max_leaves >= 4);
    match &nodes[r].op {
        op if (reduction(op) || elementwise(op)) && unread => Root::Skip,
        _ if epilogue.is_some() => {
            let j = epilogue.unwrap_or(r);
            Root::Kernel {
                reduce: Some(FusedReduce {
                    max: matches!(nodes[j].op, Op::ReduceMax { .. }),
                    input: nodes[j].inputs[0],
                    node: NodeId(j),
                }),
                epilogue,
            }
        }
        op if reduction(op) => {
            let j = nodes[r].inputs[0].0;
            let through =
                matches!(nodes[j].op, Op::Slice { .. } | Op::Pad { .. }) && rules.viewable(j);
            if !(rules.literal_const(j) || rules.absorbable(j, r) || through) {
                // A plain reduction reads j's buffer.
                return Root::Dispatch;
            }
            Root::Kernel {
                reduce: Some(FusedReduce {
                    max: matches!(op, Op::ReduceMax { .. }),
                    input: NodeId(j),
                    node: NodeId(r),
                }),
                epilogue: None,
            }
        }
        op if elementwise(op) => Root::Kernel {
            reduce: None,
            epilogue: None,
        },
        op if view_op(op) && unread => Root::Skip,
        _ => Root::Dispatch,
    }
}

/// For each node, the index of the last dispatch of `plan` that reads its buffer
/// (`usize::MAX` for the `keep` nodes): a buffer lives until then.
fn last_uses(graph: &Graph, needed: &[bool], keep: &[NodeId], plan: &FusionPlan) -> Vec<usize> {
    let mut last_use = vec![0usize; graph.len()];
    for (i, &need) in needed.iter().enumerate() {
        if need && !plan.skipped[i] {
            for j in plan.reads(graph, i) {
                last_use[j.0] = i;
            }
        }
    }
    for k in keep {
        last_use[k.0] = usize::MAX;
    }
    last_use
}

/// The order in which a run records its dispatches, as batches (src/exec/gpu/batch.rs).
#[derive(Clone, Debug, Default)]
pub struct Schedule {
    /// Groups of nodes recorded together, in order: the members of a batch share a dependency
    /// level (none reads another's value, directly or not) and either a fused kernel's text
    /// or an op (the same variant of [`Op`]), so their kernels may run as batched dispatches;
    /// a reshape (an alias, never a dispatch) is a batch of its own.
    pub batches: Vec<Vec<usize>>,
    /// For each node, the last batch that reads its buffer (`usize::MAX` for outputs, assigned
    /// nodes and nodes never read as a buffer).
    pub last_batch: Vec<usize>,
}

/// The dispatches of `plan` level by level: a node's level is one more than the deepest
/// dispatch whose buffer it reads (reshapes, aliases, take their input's level), so every
/// buffer is written at a lower level than any that reads it. Within a level, fused kernels
/// with the same text form one batch, and so do nodes of the same op (not fused), placed at
/// their first member; batches keep graph order within a level. With `batch` false, graph
/// order, one node per batch (the order of [`FusionPlan::last_use`]).
///
/// A search step has far fewer levels than dispatches, so batching removes most dispatches;
/// recording level by level keeps values alive longer, so the peak of live buffers grows (the
/// README gives both at the paper configuration; `op_census` counts the dispatches).
pub fn schedule(graph: &Graph, needed: &[bool], plan: &FusionPlan, batch: bool) -> Schedule {
    let nodes = graph.nodes();
    let n = nodes.len();
    let recorded =
        |i: usize| needed[i] && !plan.skipped[i] && !matches!(nodes[i].op, Op::Input { .. });
    let mut batches: Vec<Vec<usize>> = Vec::new();
    if batch {
        let mut level = vec![0usize; n];
        for i in (0..n).filter(|&i| recorded(i)) {
            let deepest = plan
                .reads(graph, i)
                .iter()
                .map(|r| level[r.0])
                .max()
                .unwrap_or(0);
            level[i] = deepest + usize::from(!matches!(nodes[i].op, Op::Reshape { .. }));
        }
        let mut order: Vec<usize> = (0..n).filter(|&i| recorded(i)).collect();
        order.sort_by_key(|&i| level[i]);
        // Per level, the open batch of each fused text and of each other op.
        let mut open_fused: HashMap<(usize, u64), usize> = HashMap::new();
        let mut open_op: HashMap<(usize, std::mem::Discriminant<Op>), usize> = HashMap::new();
        for i in order {
            let open = match (plan.fused.get(&i), &nodes[i].op) {
                (_, Op::Reshape { .. }) => None,
                (Some(f), _) => match open_fused.get(&(level[i], f.hash)) {
                    Some(&b) if plan.fused[&batches[b][0]].source == f.source => Some(b),
                    Some(_) => None,
                    None => {
                        open_fused.insert((level[i], f.hash), batches.len());
                        None
                    }
                },
                (None, op) => {
                    let key = (level[i], std::mem::discriminant(op));
                    let b = open_op.get(&key).copied();
                    if b.is_none() {
                        open_op.insert(key, batches.len());
                    }
                    b
                }
            };
            match open {
                Some(b) => batches[b].push(i),
                None => batches.push(vec![i]),
            }
        }
    } else {
        batches = (0..n).filter(|&i| recorded(i)).map(|i| vec![i]).collect();
    }
    let mut last_batch = vec![usize::MAX; n];
    let mut read = vec![false; n];
    for (b, members) in batches.iter().enumerate() {
        for &i in members {
            for j in plan.reads(graph, i) {
                last_batch[j.0] = b;
                read[j.0] = true;
            }
        }
    }
    for (j, last) in last_batch.iter_mut().enumerate() {
        if plan.last_use[j] == usize::MAX || !read[j] {
            *last = usize::MAX;
        }
    }
    Schedule {
        batches,
        last_batch,
    }
}
