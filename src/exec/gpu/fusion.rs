//! Elementwise fusion: chains of elementwise nodes run as one generated kernel.
//!
//! A DARTS search step is mostly small elementwise nodes (at the paper configuration the
//! second-order step has 312,502 nodes, of which about 185,000 are unary, binary, select or
//! broadcast and 27,000 constants; `cargo run --release --example op_census -- second`). On a
//! real GPU each dispatch costs a fixed overhead (a pipeline barrier and a launch: about 20 us
//! per dispatch measured on an NVIDIA H200, see benches/results/), which made that overhead,
//! not arithmetic, the larger part of a step. This module plans which nodes share a kernel and
//! writes that kernel's WGSL.
//!
//! # The plan
//!
//! Elementwise nodes are `Unary`, `Binary`, `Select` and `Broadcast` (an identity that reads
//! its input with broadcast strides). A node `j` may be *absorbed*, that is computed inside the
//! kernel of a consumer, when
//! 1. `j` is elementwise and every use of `j` is by an elementwise node or a reduction
//!    (`ReduceSum`, `ReduceMax`),
//! 2. `j` is not an output or an assigned node of the run, and
//! 3. the kernel stays within [`MAX_LEAVES`] buffers read (at most [`MAX_STRIDED`] of them
//!    broadcast) and [`MAX_OPS`] operations.
//!
//! Any elementwise node with a single use of its own shape (or by a reduction) may be absorbed.
//! A value with several uses is recomputed by each kernel that absorbs it, and a value of a
//! smaller shape than its consumer (a per-channel statistic, say) is recomputed per element,
//! but only for cheap ops (`+ - *`, max, comparisons, negation, square, relu, step, select,
//! broadcast): a few arithmetic operations cost less on a GPU than a dispatch and a round trip
//! through memory.
//!
//! Each kernel is a tree written depth first from its *root*, the node whose value it stores:
//! an elementwise node (a *map*), or a reduction whose input is absorbed (the reduction then
//! reads its input's elements from the expression, never stored: `sum((x - mean)^2)` is one
//! kernel). The tree's other inputs (the *leaves*) are buffers of any shape broadcastable to
//! the expression's (the map's output, the reduction's input). A constant whose every use is
//! elementwise or a reduction is never materialised: it becomes a literal (a hexadecimal float
//! of the value already rounded to the element type, so exact). Roots are taken from the last
//! node backwards, so every kernel that reads a node is written before the node's turn comes:
//! the node is then skipped if some kernel computed it and none read it as a buffer (rule 3, or
//! a reduction that could not absorb it, can force that), and is a root of its own otherwise.
//!
//! # The kernel
//!
//! A map stores `out[i] = e(leaf_0[off_0(i)], ..., leaf_{L-1}[off_{L-1}(i)])`; a reduction
//! sums (or maxes) `e` at the flat indices of reduce.wgsl, in the same order as the single-op
//! reduction would read a stored `e`. `off_l(i)` is the NumPy broadcast offset of
//! shaders/elementwise.wgsl (`i` itself for a leaf of the expression's shape) and
//! `e` the tree, each node evaluated by the same `unary_op` / `binary_op` functions as the
//! single-op kernels (shaders/elementwise_ops.wgsl), so NaN handling and every special case
//! are those of the unfused kernels. Each operation still rounds once to the element type (the
//! intermediate values are WGSL `let`s of type `S`), so the error bounds of the unfused kernels
//! hold per operation; a driver may contract a multiply and an add into a fused multiply-add,
//! which rounds once instead of twice (never a larger error), so fused and unfused runs agree
//! within those bounds but not necessarily bit for bit. The generated source (without its
//! parameters) is the pipeline cache key: the network repeats a few hundred tree shapes.

use crate::graph::{Graph, NodeId, Op, Shape};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::rc::Rc;

/// Most buffers one fused kernel reads (plus one it writes), where the adapter allows
/// (WebGPU guarantees 8 storage buffers per shader stage, so 7 there; lavapipe offers 32).
pub const MAX_LEAVES: usize = 12;

/// Most leaves of a kernel read with broadcast strides (the rest have the expression's shape
/// and are read at the element's own index): the stride slots of `FusedParams`.
pub const MAX_STRIDED: usize = 6;

/// Most operations (absorbed nodes and the root) in one fused kernel.
pub const MAX_OPS: usize = 48;

/// A fused reduction: the root is a ReduceSum or ReduceMax whose input is computed inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedReduce {
    /// ReduceMax (else ReduceSum).
    pub max: bool,
    /// The reduction's input node: the expression has its shape, and the leaves broadcast to it.
    pub input: NodeId,
}

/// One fused kernel: the root node computes `source`'s expression over `leaves`.
#[derive(Clone, Debug)]
pub struct Fused {
    /// Buffers read, in binding order (bindings 1 ..= L; the output is binding L + 1).
    pub leaves: Vec<NodeId>,
    /// One leaf (an index into `leaves`) per stride slot, in slot order: every leaf of that
    /// leaf's shape reads with that slot's broadcast strides.
    pub strided: Vec<usize>,
    /// The generated WGSL (bindings and entry point `fused`; the element prelude, the shared
    /// header and the elementwise ops are prepended by the pipeline cache), shared by every
    /// kernel of the plan with the same text (a step graph has ~10^5 kernels, ~10^2 texts).
    pub source: Rc<str>,
    /// A hash of `source` (the pipeline cache's key, computed once per distinct text).
    pub hash: u64,
    /// Graph nodes computed by this kernel (the root and the absorbed nodes).
    pub ops: usize,
    /// Set when the root is a reduction of the expression (else an elementwise map).
    pub reduce: Option<FusedReduce>,
}

/// Which nodes run as fused kernels, and when each buffer is last read.
#[derive(Clone, Debug, Default)]
pub struct FusionPlan {
    /// Nodes computed inside another node's kernel, or never (literal constants).
    pub skipped: Vec<bool>,
    /// The fused kernel of each root, by node index.
    pub fused: BTreeMap<usize, Fused>,
    /// For each node, the index of the last dispatch that reads its buffer (`usize::MAX` for
    /// outputs and assigned nodes).
    pub last_use: Vec<usize>,
}

impl FusionPlan {
    /// The buffers node `i`'s dispatch reads: the leaves of its fused kernel, else its inputs.
    pub fn reads<'a>(&'a self, graph: &'a Graph, i: usize) -> &'a [NodeId] {
        match self.fused.get(&i) {
            Some(f) => &f.leaves,
            None => &graph.nodes()[i].inputs,
        }
    }

    /// Dispatches saved against one per node: nodes skipped.
    pub fn saved(&self) -> usize {
        self.skipped.iter().filter(|&&s| s).count()
    }
}

fn elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_) | Op::Binary(_) | Op::Select | Op::Broadcast { .. }
    )
}

fn reduction(op: &Op) -> bool {
    matches!(op, Op::ReduceSum { .. } | Op::ReduceMax { .. })
}

/// Ops cheap enough to recompute (rule 1's recomputation): no transcendental function, no
/// division. A software adapter runs the kernels on the CPU, where recomputing exp or rsqrt per
/// element of a large tensor costs more than the dispatch it saves.
fn cheap(op: &Op) -> bool {
    use crate::graph::{BinaryOp as B, UnaryOp as U};
    match op {
        Op::Unary(u) => matches!(u, U::Neg | U::Square | U::Relu | U::Step),
        Op::Binary(b) => matches!(b, B::Add | B::Sub | B::Mul | B::Max | B::Greater | B::Equal),
        Op::Select | Op::Broadcast { .. } => true,
        _ => false,
    }
}

/// `v` (already rounded to the element type) as an exact WGSL abstract-float literal in
/// hexadecimal (`0x1.8p1` = 3), or a prelude call for NaN and the infinities.
pub fn literal(v: f64) -> String {
    if v.is_nan() {
        return "nan_s()".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "(-neg_inf_s())"
        } else {
            "neg_inf_s()"
        }
        .into();
    }
    let bits = v.to_bits();
    let sign = if bits >> 63 == 1 { "-" } else { "" };
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1u64 << 52) - 1);
    let body = if exp == 0 && frac == 0 {
        "0x0p0".to_string()
    } else if exp == 0 {
        format!("0x0.{frac:013x}p-1022")
    } else {
        format!("0x1.{frac:013x}p{}", exp - 1023)
    };
    format!("S({sign}{body})")
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
    let mut uses = vec![0usize; n];
    // Whether every use of a node is by a node that can compute it inline.
    let mut all_fusable = vec![true; n];
    for (i, node) in nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        for j in &node.inputs {
            uses[j.0] += 1;
            all_fusable[j.0] &= elementwise(&node.op) || reduction(&node.op);
        }
    }
    let mut external = vec![false; n];
    for k in keep {
        external[k.0] = true;
    }
    let mut skipped = vec![false; n];
    let mut fused = BTreeMap::new();
    if enabled {
        // Constants read only by elementwise nodes and reductions become literals.
        let literal_const = |j: usize| {
            matches!(nodes[j].op, Op::Const { .. })
                && needed[j]
                && !external[j]
                && uses[j] > 0
                && all_fusable[j]
        };
        for (j, s) in skipped.iter_mut().enumerate() {
            *s = literal_const(j);
        }
        // Whether consumer `c` may compute `j` inside its kernel (rules 1 and 2 of the module
        // documentation; rule 3 is the builder's `room_for`). Without recomputation: `j`'s
        // only use, at `c`'s shape, or by a reduction (which reads each element once, whatever
        // its own shape); with it, any cheap op.
        let absorbable = |j: usize, c: usize| {
            let once =
                uses[j] == 1 && (nodes[j].shape == nodes[c].shape || reduction(&nodes[c].op));
            elementwise(&nodes[j].op)
                && needed[j]
                && !external[j]
                && all_fusable[j]
                && (once || cheap(&nodes[j].op))
        };
        // Each distinct kernel text once, with its hash.
        let mut texts: HashMap<String, (Rc<str>, u64)> = HashMap::new();
        // How often each node was bound as a leaf, and whether some kernel computed it inline.
        let mut leaf_reads = vec![0usize; n];
        let mut inlined = vec![false; n];
        for r in (0..n).rev() {
            if !needed[r] || skipped[r] {
                continue;
            }
            // A reduction fuses its input when that is a literal or can be absorbed; it is
            // then a root whose expression has the input's shape.
            let reduce = match &nodes[r].op {
                op if reduction(op) => {
                    let j = nodes[r].inputs[0].0;
                    if !(literal_const(j) || absorbable(j, r)) {
                        leaf_reads[j] += 1; // a plain reduction reads j's buffer
                        continue;
                    }
                    Some(FusedReduce {
                        max: matches!(op, Op::ReduceMax { .. }),
                        input: NodeId(j),
                    })
                }
                op if elementwise(op) => None,
                _ => continue,
            };
            // Every kernel that reads r has been written (readers come later in the graph).
            if reduce.is_none() && inlined[r] && leaf_reads[r] == 0 {
                skipped[r] = true;
                continue;
            }
            let mut b = Builder {
                graph,
                shape_node: reduce.map_or(r, |f| f.input.0),
                leaves: Vec::new(),
                body: String::new(),
                temps: 0,
                ops: 1,
                max_leaves,
                strided: Vec::new(),
            };
            let mut absorbed = Vec::new();
            let value = match reduce {
                None => b.expr(
                    r,
                    (0, &[]),
                    &absorbable,
                    &literal_const,
                    &round,
                    &mut absorbed,
                ),
                Some(f) => match &nodes[f.input.0].op {
                    Op::Const { value, .. } if literal_const(f.input.0) => literal(round(*value)),
                    _ => {
                        b.ops += 1;
                        absorbed.push(f.input.0);
                        b.expr(
                            f.input.0,
                            (0, &[]),
                            &absorbable,
                            &literal_const,
                            &round,
                            &mut absorbed,
                        )
                    }
                },
            };
            for j in absorbed {
                inlined[j] = true;
            }
            for l in &b.leaves {
                leaf_reads[l.0] += 1;
            }
            let source = match reduce {
                None => b.source_map(&value),
                Some(_) => b.source_reduce(&value),
            };
            let (source, hash) = texts
                .entry(source)
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
                    leaves: b.leaves,
                    strided: b.strided,
                    source,
                    hash,
                    ops: b.ops,
                    reduce,
                },
            );
        }
    }
    // Liveness over dispatches: a buffer lives until the last dispatch that reads it.
    let mut last_use = vec![0usize; n];
    let plan = FusionPlan {
        skipped,
        fused,
        last_use: Vec::new(),
    };
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
    FusionPlan { last_use, ..plan }
}

/// Writes one fused kernel, depth first from its root.
struct Builder<'g> {
    graph: &'g Graph,
    /// The node whose shape the expression has: the root of a map, the input of a reduction.
    shape_node: usize,
    leaves: Vec<NodeId>,
    body: String,
    temps: usize,
    ops: usize,
    max_leaves: usize,
    /// One leaf (index into `leaves`) per stride slot: leaves of one shape share a slot.
    strided: Vec<usize>,
}

impl Builder<'_> {
    /// The WGSL value of node `j` (emitting the statements that compute it), absorbing what
    /// the rules allow; absorbed nodes are pushed to `absorbed`. `reserve` counts the inputs
    /// of the nodes above `j` still to be written that may need a new leaf, and lists the
    /// shapes among them that may need a new stride slot.
    ///
    /// Invariant: leaves bound + pending inputs that may need a new leaf <= max_leaves, and
    /// stride slots used + distinct shapes of pending inputs that may need a new slot (not the
    /// expression's shape nor a shape that has a slot) <= MAX_STRIDED. It holds at the root (at most 3
    /// inputs, max_leaves >= 3); writing an input as a literal or an already bound leaf takes
    /// nothing, as a new leaf at most what it was counted for; absorbing input `k` replaces
    /// one pending input by `k`'s inputs, which [`Self::room_for`] allows only while both sums
    /// stay within their caps.
    fn expr(
        &mut self,
        j: usize,
        reserve: (usize, &[Shape]),
        absorbable: &impl Fn(usize, usize) -> bool,
        literal_const: &impl Fn(usize) -> bool,
        round: &impl Fn(f64) -> f64,
        absorbed: &mut Vec<usize>,
    ) -> String {
        let node = &self.graph.nodes()[j];
        let mut args = Vec::with_capacity(node.inputs.len());
        for (p, k) in node.inputs.iter().enumerate() {
            let k = k.0;
            // Inputs still to be written after this one that may need a new leaf: not a
            // literal, not a buffer bound already (counted once if repeated).
            let mut pending: Vec<NodeId> = Vec::new();
            for q in &node.inputs[p + 1..] {
                if !literal_const(q.0) && !self.leaves.contains(q) && !pending.contains(q) {
                    pending.push(*q);
                }
            }
            let mut shapes = reserve.1.to_vec();
            self.new_slots(&pending, &mut shapes);
            let later = (reserve.0 + pending.len(), shapes.as_slice());
            let arg = if let (true, Op::Const { value, .. }) =
                (literal_const(k), &self.graph.nodes()[k].op)
            {
                literal(round(*value))
            } else if absorbable(k, j) && self.room_for(k, later) {
                self.ops += 1;
                absorbed.push(k);
                self.expr(k, later, absorbable, literal_const, round, absorbed)
            } else {
                self.leaf(NodeId(k))
            };
            args.push(arg);
        }
        let value = match &node.op {
            Op::Unary(u) => format!("unary_op({}u, {})", super::unary_code(*u), args[0]),
            Op::Binary(b) => format!(
                "binary_op({}u, {}, {})",
                super::binary_code(*b),
                args[0],
                args[1]
            ),
            Op::Select => format!("select({}, {}, nonzero({}))", args[2], args[1], args[0]),
            // Broadcast: its input already reads with broadcast strides.
            _ => return args.swap_remove(0),
        };
        let t = format!("t{}", self.temps);
        self.temps += 1;
        let _ = writeln!(self.body, "    let {t}: S = {value};");
        t
    }

    /// Whether absorbing node `k` keeps the kernel within its limits, counting each of `k`'s
    /// inputs and the `later` inputs still to be written as a new leaf, strided unless of the
    /// expression's shape (the worst case).
    fn room_for(&self, k: usize, later: (usize, &[Shape])) -> bool {
        let inputs = &self.graph.nodes()[k].inputs;
        let mut shapes = later.1.to_vec();
        self.new_slots(inputs, &mut shapes);
        self.ops < MAX_OPS
            && self.leaves.len() + inputs.len() + later.0 <= self.max_leaves
            && self.strided.len() + shapes.len() <= MAX_STRIDED
    }

    /// Adds to `shapes` the stride slots `nodes` could need: their shapes that are neither the
    /// expression's nor already given a slot (each shape once).
    fn new_slots(&self, nodes: &[NodeId], shapes: &mut Vec<Shape>) {
        for &q in nodes {
            let shape = self.graph.shape(q);
            if !self.full(q) && self.slot_of(q).is_none() && !shapes.contains(shape) {
                shapes.push(shape.clone());
            }
        }
    }

    /// The stride slot of `k`'s shape, if one exists.
    fn slot_of(&self, k: NodeId) -> Option<usize> {
        let shape = self.graph.shape(k);
        self.strided
            .iter()
            .position(|&l| self.graph.shape(self.leaves[l]) == shape)
    }

    /// Whether node `k` has the expression's shape (a leaf of it is read at index i).
    fn full(&self, k: NodeId) -> bool {
        self.graph.shape(k) == self.graph.shape(NodeId(self.shape_node))
    }

    /// The load of buffer `k` (bound once however often it is read).
    fn leaf(&mut self, k: NodeId) -> String {
        let slot = match self.leaves.iter().position(|&l| l == k) {
            Some(s) => s,
            None => {
                self.leaves.push(k);
                self.leaves.len() - 1
            }
        };
        if self.full(k) {
            return format!("in{slot}[i]");
        }
        let ordinal = match self.slot_of(k) {
            Some(o) => o,
            None => {
                self.strided.push(slot);
                self.strided.len() - 1
            }
        };
        format!("in{slot}[leaf_offset({ordinal}u, i)]")
    }

    /// The bindings of the leaves and the output.
    fn bindings(&self) -> String {
        let mut s = String::new();
        for l in 0..self.leaves.len() {
            let _ = writeln!(
                s,
                "@group(0) @binding({}) var<storage, read> in{l}: array<S>;",
                l + 1
            );
        }
        let _ = writeln!(
            s,
            "@group(0) @binding({}) var<storage, read_write> out: array<S>;\n",
            self.leaves.len() + 1
        );
        s
    }

    /// A map kernel: bindings and the entry point `fused` storing `value`, the root's value.
    fn source_map(&self, value: &str) -> String {
        let mut s = self.bindings();
        s.push_str(
            "@compute @workgroup_size(WORKGROUP_SIZE)\n\
             fn fused(@builtin(workgroup_id) wid: vec3<u32>, \
             @builtin(num_workgroups) nwg: vec3<u32>,\n         \
             @builtin(local_invocation_index) lid: u32) {\n    \
             let i = (wid.y * nwg.x + wid.x) * WORKGROUP_SIZE + lid;\n    \
             if i >= params.total {\n        return;\n    }\n",
        );
        s.push_str(&self.body);
        let _ = writeln!(s, "    out[i] = {value};\n}}");
        s
    }

    /// A reduction kernel: bindings and `reduce_input(i)`, the expression's element i, which
    /// the entry points of shaders/reduce_core.wgsl reduce.
    fn source_reduce(&self, value: &str) -> String {
        let mut s = self.bindings();
        s.push_str("fn reduce_input(i: u32) -> S {\n");
        s.push_str(&self.body);
        let _ = writeln!(s, "    return {value};\n}}");
        s
    }
}
