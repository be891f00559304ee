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
//! 3. the kernel stays within [`MAX_LEAVES`] buffers read, [`VIEW_WORDS`] words of view
//!    parameters (see below) and [`MAX_OPS`] operations.
//!
//! A kernel may also read a leaf *through views* instead of reading a view node's buffer:
//! 4. a `Slice` (any start, end, step), a `Pad` without interior zeros, or a `Reshape` (and a
//!    `Broadcast` below one of them) is read through when it is not an output or an assigned
//!    node and every use of it is by an elementwise node, a reduction or another such view op.
//!    The chain of views down to a buffer composes into one affine read plus bounds,
//!    `value(c) = lo <= c < hi ? leaf[offset + sum_d c_d strides_d] : 0` (a [`View`]; claim 8 of
//!    proofs/gpu-kernel-choices.md), where a reshape composes only where the strides allow it
//!    (PyTorch's `computeStride`) and never after a pad (bounds do not survive merged axes);
//!    where a link does not compose, the chain stops there and that node is the buffer. A view
//!    node that every reader read through is never dispatched. A reduction reads through a
//!    slice or pad input the same way.
//!
//! And a reduction may take an *epilogue*:
//! 5. a unary or binary node `r` one of whose inputs is a reduction of `r`'s shape used only
//!    by `r` (and not kept), the others literals or buffers of `r`'s shape that `r` would not
//!    absorb anyway, is computed inside the reduction's kernel: the kernel reduces, applies
//!    `r`'s op to the reduced value (`reduce_output(o, v)`, the other operands read at output
//!    index `o`), and stores only `r` (`mean = sum(x) * (1/n)` is one dispatch even where a
//!    reshape reads the mean).
//!
//! And a convolution may take a *ReLU prologue*:
//! 6. a ReLU read only as the input `x` of `Conv2d` and `Conv2dWeightGrad` nodes (the
//!    ReLU -> conv of every DARTS conv op, read again by the weight gradient), not kept, whose
//!    own input is a buffer its kernel would not absorb, is not dispatched: those kernels read
//!    its input and apply ReLU as they load it (`relu_a` of shaders/conv.wgsl, the same
//!    function as the ReLU kernel's), so they compute the same values bit for bit
//!    ([`FusionPlan::relu_prologue`]).
//!
//! Any elementwise node with a single use of its own shape (or by a reduction) may be absorbed.
//! A value with several uses is recomputed by each kernel that absorbs it, and a value of a
//! smaller shape than its consumer (a per-channel statistic, say) is recomputed per element,
//! but only for cheap ops (`+ - * /`, max, comparisons, negation, square, sqrt, rsqrt, relu,
//! step, select, broadcast): a few arithmetic operations cost less on a GPU than a dispatch
//! and a round trip through memory.
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
//! reduction would read a stored `e`. `off_l(i)` is the leaf's view: the NumPy broadcast
//! offset of shaders/elementwise.wgsl for a plain leaf (`i` itself for a leaf of the
//! expression's shape), composed with the slices, pads and reshapes read through, and a read
//! outside a pad's bounds is 0 (shaders/fused.wgsl). Offsets, strides and bounds are
//! parameters ([`VIEW_WORDS`] words: `1 + rank` per plain view, `1 + 3 rank` per bounded one,
//! shared by reads with equal words), not kernel text, so kernels that differ only in where
//! they slice share a pipeline; and
//! `e` the tree, each node evaluated by the same `unary_op` / `binary_op` functions as the
//! single-op kernels (shaders/elementwise_ops.wgsl), so NaN handling and every special case
//! are those of the unfused kernels. Each operation still rounds once to the element type (the
//! intermediate values are WGSL `let`s of type `S`), so the error bounds of the unfused kernels
//! hold per operation; a driver may contract a multiply and an add into a fused multiply-add,
//! which rounds once instead of twice (never a larger error), so fused and unfused runs agree
//! within those bounds but not necessarily bit for bit. The generated source (without its
//! parameters) is the pipeline cache key: the network repeats a few hundred tree shapes.

use crate::graph::{Graph, NodeId, Op};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::rc::Rc;

/// Most buffers one fused kernel reads (plus one it writes), where the adapter allows
/// (WebGPU guarantees 8 storage buffers per shader stage, so 7 there; lavapipe offers 32).
pub const MAX_LEAVES: usize = 12;

/// The u32 words of a kernel's views (`words` of `FusedParams`): a plain view (a leaf read
/// with strides, not at the element's own index) takes `1 + rank` words (offset and strides),
/// a bounded view (a leaf read through a pad) `1 + 3 rank` (offset, strides, lower and upper
/// bounds), `rank` the expression's rank. Views with the same words share them.
pub const VIEW_WORDS: usize = 80;

/// Most operations (absorbed nodes and the root) in one fused kernel.
pub const MAX_OPS: usize = 48;

/// A fused reduction: a ReduceSum or ReduceMax whose input is computed inside it; the root is
/// the reduction, or an elementwise node of it computed on the reduced value (an epilogue,
/// rule 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedReduce {
    /// ReduceMax (else ReduceSum).
    pub max: bool,
    /// The reduction's input node: the expression has its shape, and the leaves broadcast to it.
    pub input: NodeId,
    /// The reduction node (the root, unless the kernel has an epilogue).
    pub node: NodeId,
}

/// How a kernel reads a leaf: at coordinate `c` of the expression's shape, element
/// `offset + sum_d c_d strides[d]` of the leaf's buffer when `lo[d] <= c_d < hi[d]` on every
/// axis (`bounds`, absent when every coordinate is inside), else 0 (proofs/gpu-kernel-choices.md,
/// claim 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The leaf read (an index into `Fused::leaves`).
    pub leaf: usize,
    /// Element offset (may be negative for a padded read: it is added modulo 2^32, and the
    /// sum is a valid index wherever the bounds hold).
    pub offset: i64,
    /// Element step per unit of each coordinate of the expression's shape.
    pub strides: Vec<usize>,
    /// `(lo, hi)` per axis, for a read through a pad.
    pub bounds: Option<Vec<(usize, usize)>>,
}

impl View {
    /// Whether `self` and `other` read at the same offsets (whatever their leaves).
    fn same_map(&self, other: &View) -> bool {
        self.offset == other.offset && self.strides == other.strides && self.bounds == other.bounds
    }
}

/// One fused kernel: the root node computes `source`'s expression over `leaves`.
#[derive(Clone, Debug)]
pub struct Fused {
    /// Buffers read, in binding order (bindings 1 ..= L; the output is binding L + 1).
    pub leaves: Vec<NodeId>,
    /// The leaf of each plain view slot, in slot order (`views[s].leaf`).
    pub strided: Vec<usize>,
    /// Plain view slots (read at `vo{s}`, the slot's offset, computed once per element), in
    /// slot order: every read with the same offset and strides shares a slot.
    pub views: Vec<View>,
    /// Bounded view slots (read at `bo{b}` where `bi{b}` holds: leaves read through a pad).
    pub bounded: Vec<View>,
    /// The generated WGSL (bindings and entry point `fused`; the element prelude, the shared
    /// header and the elementwise ops are prepended by the pipeline cache), shared by every
    /// kernel of the plan with the same text (a step graph has ~10^5 kernels, ~10^2 texts).
    pub source: Rc<str>,
    /// A hash of `source` (the pipeline cache's key, computed once per distinct text).
    pub hash: u64,
    /// Graph nodes computed by this kernel (the root and the absorbed arithmetic nodes; views
    /// composed into a leaf's read are not counted).
    pub ops: usize,
    /// Set when the root is a reduction of the expression (else an elementwise map).
    pub reduce: Option<FusedReduce>,
}

impl Fused {
    /// The `words` of `FusedParams` for an expression of rank `rank` (shaders/fused.wgsl):
    /// plain slot `s` at `(1 + rank) s`: offset, strides; bounded slot `b` at
    /// `(1 + rank) views + (1 + 3 rank) b`: offset, strides, lo, hi. Offsets modulo 2^32.
    pub fn words(&self, rank: usize) -> [u32; VIEW_WORDS] {
        let mut w = [0u32; VIEW_WORDS];
        let mut at = 0;
        let mut push = |v: u64| {
            w[at] = v as u32;
            at += 1;
        };
        for v in self.views.iter().chain(&self.bounded) {
            push(v.offset.rem_euclid(1 << 32) as u64);
            for &s in &v.strides {
                push(s as u64);
            }
            if let Some(b) = &v.bounds {
                for &(lo, _) in b {
                    push(lo as u64);
                }
                for &(_, hi) in b {
                    push(hi as u64);
                }
            }
        }
        debug_assert!(at == (1 + rank) * self.views.len() + (1 + 3 * rank) * self.bounded.len());
        w
    }
}

/// Which nodes run as fused kernels, and when each buffer is last read.
#[derive(Clone, Debug, Default)]
pub struct FusionPlan {
    /// Nodes computed inside another node's kernel, or never (literal constants, views read
    /// through by every reader).
    pub skipped: Vec<bool>,
    /// The fused kernel of each root, by node index.
    pub fused: BTreeMap<usize, Fused>,
    /// For each node, the index of the last dispatch that reads its buffer (`usize::MAX` for
    /// outputs and assigned nodes).
    pub last_use: Vec<usize>,
    /// Skipped nodes that would have been a dispatch (a skipped reshape is an alias anyway).
    pub dispatches_saved: usize,
    /// Convolutions (Conv2d, Conv2dWeightGrad) whose input `x` is a skipped ReLU (rule 6): the
    /// buffers they read instead, the ReLU's input (ReLU applied as it is loaded) and their
    /// second operand.
    pub relu_prologue: BTreeMap<usize, [NodeId; 2]>,
}

impl FusionPlan {
    /// The buffers node `i`'s dispatch reads: the leaves of its fused kernel, the buffers of
    /// its ReLU prologue, else its inputs.
    pub fn reads<'a>(&'a self, graph: &'a Graph, i: usize) -> &'a [NodeId] {
        match (self.fused.get(&i), self.relu_prologue.get(&i)) {
            (Some(f), _) => &f.leaves,
            (None, Some(p)) => p,
            (None, None) => &graph.nodes()[i].inputs,
        }
    }

    /// Dispatches saved against one per node: nodes skipped, less reshapes (never a dispatch).
    pub fn saved(&self) -> usize {
        self.dispatches_saved
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

/// Movement ops a kernel can read through (rule 4): each output element is one input element
/// at an affine offset, or a padding zero.
fn view_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Slice { .. } | Op::Pad { interior: 0, .. } | Op::Reshape { .. }
    )
}

/// Ops cheap enough to recompute (rule 1's recomputation): arithmetic, comparisons, division,
/// square root and reciprocal square root (an instruction or a few on a GPU; in the DARTS
/// graphs they are mostly batch norm's per-channel `rsqrt(var + eps)` and its backward
/// quotients, which every element of a map reads: recomputing them removes about 4,000
/// dispatches from the paper configuration's second-order step, and did not change the time
/// of the tiny lavapipe step); no exp, log, tanh, sigmoid or softplus (the f64 prelude computes
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

/// An affine read of a buffer through views: coordinate `c` of `shape` reads element
/// `offset + sum_d c_d strides[d]` when `lo[d] <= c_d < hi[d]` on every axis, else 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affine {
    pub shape: Vec<usize>,
    pub offset: i64,
    pub strides: Vec<usize>,
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

impl Affine {
    /// A buffer of `shape` read in row-major order.
    pub fn identity(shape: &[usize]) -> Affine {
        let mut strides = vec![0; shape.len()];
        let mut m = 1;
        for d in (0..shape.len()).rev() {
            strides[d] = m;
            m *= shape[d];
        }
        Affine {
            shape: shape.to_vec(),
            offset: 0,
            strides,
            lo: vec![0; shape.len()],
            hi: shape.to_vec(),
        }
    }

    /// Whether some coordinate of `shape` is outside the bounds.
    pub fn bounded(&self) -> bool {
        (0..self.shape.len()).any(|d| self.lo[d] != 0 || self.hi[d] != self.shape[d])
    }

    /// The read of `op`'s output (of shape `out`) when `self` is the read of its input, if
    /// affine: slice, pad without interior zeros, broadcast, and a reshape of an unbounded read
    /// whose strides allow it.
    pub fn apply(mut self, op: &Op, out: &[usize]) -> Option<Affine> {
        match op {
            Op::Slice {
                axis, start, step, ..
            } => {
                let (a, start, step) = (*axis, *start as i64, *step as i64);
                // Input coordinate start + step c'.
                self.offset += start * self.strides[a] as i64;
                self.strides[a] *= step as usize;
                let m = out[a] as i64;
                let lo = ceil_div(self.lo[a] as i64 - start, step).clamp(0, m);
                let hi = ceil_div(self.hi[a] as i64 - start, step).clamp(lo, m);
                self.lo[a] = lo as usize;
                self.hi[a] = hi as usize;
            }
            Op::Pad {
                axis,
                before,
                interior: 0,
                ..
            } => {
                // Input coordinate c' - before.
                let a = *axis;
                self.offset -= (*before * self.strides[a]) as i64;
                self.lo[a] += before;
                self.hi[a] += before;
            }
            Op::Reshape { .. } => {
                if self.bounded() {
                    return None;
                }
                self.strides = reshape_strides(&self.shape, &self.strides, out)?;
                self.lo = vec![0; out.len()];
                self.hi = out.to_vec();
            }
            Op::Broadcast { .. } => return self.broadcast(out),
            _ => return None,
        }
        self.shape = out.to_vec();
        Some(self)
    }

    /// The read of `self` broadcast (NumPy) to `out`; None if a stretched axis is bounded.
    pub fn broadcast(self, out: &[usize]) -> Option<Affine> {
        let lead = out.len().checked_sub(self.shape.len())?;
        let mut b = Affine {
            shape: out.to_vec(),
            offset: self.offset,
            strides: vec![0; out.len()],
            lo: vec![0; out.len()],
            hi: out.to_vec(),
        };
        for d in 0..self.shape.len() {
            let o = lead + d;
            if self.shape[d] == out[o] {
                b.strides[o] = self.strides[d];
                b.lo[o] = self.lo[d];
                b.hi[o] = self.hi[d];
            } else if self.shape[d] != 1 || self.lo[d] != 0 || self.hi[d] != 1 {
                return None;
            }
        }
        Some(b)
    }

    /// Stride 0 on axes of extent 1 (their coordinate is 0), so equal reads compare equal.
    fn canonical(mut self) -> Affine {
        for d in 0..self.shape.len() {
            if self.shape[d] == 1 {
                self.strides[d] = 0;
            }
        }
        self
    }
}

/// Strides of a read of `shape` with `strides` reshaped (row-major) to `new`, if a strided read
/// expresses it (PyTorch's `computeStride`): axes merge only where the strides are contiguous.
fn reshape_strides(shape: &[usize], strides: &[usize], new: &[usize]) -> Option<Vec<usize>> {
    let mut out = vec![0; new.len()];
    if shape.is_empty() {
        return new.iter().all(|&n| n == 1).then_some(out);
    }
    let mut view_d = new.len() as isize - 1;
    let mut base = *strides.last()?;
    let (mut numel, mut view_numel) = (1usize, 1usize);
    for d in (0..shape.len()).rev() {
        numel *= shape[d];
        if d == 0 || (shape[d - 1] != 1 && strides[d - 1] != numel * base) {
            while view_d >= 0 && (view_numel < numel || new[view_d as usize] == 1) {
                out[view_d as usize] = view_numel * base;
                view_numel *= new[view_d as usize];
                view_d -= 1;
            }
            if view_numel != numel {
                return None;
            }
            if d > 0 {
                base = strides[d - 1];
                numel = 1;
                view_numel = 1;
            }
        }
    }
    (view_d == -1).then_some(out)
}

/// What the planner knows of every node: which may be absorbed, read through, or a literal.
struct Rules<'g> {
    graph: &'g Graph,
    needed: &'g [bool],
    external: Vec<bool>,
    uses: Vec<usize>,
    /// Every use by an elementwise node or a reduction.
    all_fusable: Vec<bool>,
    /// Every use by an elementwise node, a reduction or a view op.
    all_viewable: Vec<bool>,
    round: &'g dyn Fn(f64) -> f64,
}

impl Rules<'_> {
    /// Constants read only by elementwise nodes and reductions become literals.
    fn literal_const(&self, j: usize) -> bool {
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
    fn absorbable(&self, j: usize, c: usize) -> bool {
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
    fn viewable(&self, v: usize) -> bool {
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
    fn view_chain(&self, k: usize) -> (usize, Vec<usize>, Affine) {
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
    let rules = Rules {
        graph,
        needed,
        external,
        uses,
        all_fusable,
        all_viewable,
        round: &round,
    };
    let mut skipped = vec![false; n];
    let mut fused = BTreeMap::new();
    let mut relu_prologue = BTreeMap::new();
    if enabled {
        for (j, s) in skipped.iter_mut().enumerate() {
            *s = rules.literal_const(j);
        }
        // Rule 6: a ReLU read only as the input x of convolutions and weight gradients, whose
        // own input its kernel would read as a buffer anyway, is applied by those kernels as
        // they load x.
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
        for c in (0..n).filter(|&c| conv(c)) {
            let j = nodes[c].inputs[0].0;
            if prologue(j) {
                skipped[j] = true;
                relu_prologue.insert(c, [nodes[j].inputs[0], nodes[c].inputs[1]]);
            }
        }
        // Each distinct kernel text once, with its hash.
        let mut texts: HashMap<String, (Rc<str>, u64)> = HashMap::new();
        // How often each node was bound as a leaf or read by a dispatch of its own, and
        // whether some kernel computed it inline (or read through it).
        let mut leaf_reads = vec![0usize; n];
        let mut inlined = vec![false; n];
        for r in (0..n).rev() {
            if !needed[r] || skipped[r] {
                continue;
            }
            // Every kernel that reads r has been written (readers come later in the graph).
            let unread = inlined[r] && leaf_reads[r] == 0;
            // A reduction fuses its input when that is a literal, can be absorbed, or is a
            // slice or pad it can read through; it is then a root whose expression has the
            // input's shape.
            // An epilogue binds at most one leaf before the reduction's input expression (which
            // the builder's invariant allows 3).
            let epilogue = rules.epilogue(r).filter(|_| max_leaves >= 4);
            let reduce = match &nodes[r].op {
                op if (reduction(op) || elementwise(op)) && unread => {
                    skipped[r] = true;
                    continue;
                }
                _ if epilogue.is_some() => {
                    let j = epilogue.unwrap_or(r);
                    Some(FusedReduce {
                        max: matches!(nodes[j].op, Op::ReduceMax { .. }),
                        input: nodes[j].inputs[0],
                        node: NodeId(j),
                    })
                }
                op if reduction(op) => {
                    let j = nodes[r].inputs[0].0;
                    let through = matches!(nodes[j].op, Op::Slice { .. } | Op::Pad { .. })
                        && rules.viewable(j);
                    if !(rules.literal_const(j) || rules.absorbable(j, r) || through) {
                        leaf_reads[j] += 1; // a plain reduction reads j's buffer
                        continue;
                    }
                    Some(FusedReduce {
                        max: matches!(op, Op::ReduceMax { .. }),
                        input: NodeId(j),
                        node: NodeId(r),
                    })
                }
                op if elementwise(op) => None,
                op if view_op(op) && unread => {
                    skipped[r] = true;
                    continue;
                }
                _ => {
                    // A dispatch of its own reads its inputs' buffers (or its prologue's).
                    let reads = relu_prologue
                        .get(&r)
                        .map_or(&nodes[r].inputs[..], |p: &[NodeId; 2]| &p[..]);
                    for k in reads {
                        leaf_reads[k.0] += 1;
                    }
                    continue;
                }
            };
            let shape_node = reduce.map_or(r, |f| f.input.0);
            let shape = nodes[shape_node].shape.dims().to_vec();
            let mut b = Builder {
                rules: &rules,
                full: Affine::identity(&shape).canonical().strides,
                shape,
                leaves: Vec::new(),
                body: String::new(),
                temps: 0,
                coords: Vec::new(),
                ops: 1,
                max_leaves,
                views: Vec::new(),
                bounded: Vec::new(),
            };
            let mut absorbed = Vec::new();
            // The epilogue first (its leaves have the output's shape, read at o).
            let output = match epilogue {
                Some(j) => {
                    b.ops += 1;
                    absorbed.push(j);
                    b.epilogue(r, j)
                }
                None => "v".to_string(),
            };
            let value = match reduce {
                None => b.expr(r, (0, 0), &mut absorbed),
                Some(f) => {
                    let (j, red) = (f.input.0, f.node.0);
                    match &nodes[j].op {
                        Op::Const { value, .. } if rules.literal_const(j) => literal(round(*value)),
                        op if elementwise(op) && rules.absorbable(j, red) => {
                            b.ops += 1;
                            absorbed.push(j);
                            b.expr(j, (0, 0), &mut absorbed)
                        }
                        op if view_op(op) && rules.viewable(j) => b.view_read(j, &mut absorbed),
                        // A plain reduction with an epilogue reads its input's buffer.
                        _ => b.read(NodeId(j), Affine::identity(nodes[j].shape.dims())),
                    }
                }
            };
            for j in absorbed {
                inlined[j] = true;
            }
            for l in &b.leaves {
                leaf_reads[l.0] += 1;
            }
            let source = match reduce {
                None => b.source_map(&value),
                Some(_) => b.source_reduce(&value, &output),
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
                    strided: b.views.iter().map(|v| v.leaf).collect(),
                    views: b.views,
                    bounded: b.bounded,
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
/// their first member; batches keep graph order within a level. With `batch` false, graph order, one node per batch (the order
/// of [`FusionPlan::last_use`]).
///
/// On the paper configuration's second-order step the 72,759 dispatches have 3,686 levels, and
/// batches of up to 16 instances leave about 13,800 dispatches (`op_census`); recording level
/// by level keeps values alive longer (the peak of live buffers grows from 6.2 to 7.9 GB
/// there).
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

/// Writes one fused kernel, depth first from its root.
struct Builder<'g> {
    rules: &'g Rules<'g>,
    /// The expression's shape: the root's (a map), the input's (a reduction).
    shape: Vec<usize>,
    /// Row-major strides of `shape` (0 on axes of extent 1): a read at the element's own index.
    full: Vec<usize>,
    leaves: Vec<NodeId>,
    body: String,
    temps: usize,
    /// Which coordinates `c_d` of `i` the body has computed so far.
    coords: Vec<bool>,
    ops: usize,
    max_leaves: usize,
    /// Plain and bounded view slots.
    views: Vec<View>,
    bounded: Vec<View>,
}

impl Builder<'_> {
    /// The WGSL value of node `j` (emitting the statements that compute it), absorbing what
    /// the rules allow; absorbed nodes (and view nodes read through) are pushed to `absorbed`.
    /// `reserve` is the worst-case (leaves, view words) that the inputs of the nodes above `j`
    /// still to be written may take ([`Self::cost`]).
    ///
    /// Invariant: leaves bound + reserved leaves <= max_leaves and view words used + reserved
    /// words <= VIEW_WORDS. It holds at the root (at most 3 inputs, each at most one leaf and
    /// 1 + 3 rank <= 25 words; max_leaves >= 3); writing an input as a literal, a buffer, or a
    /// read through views takes at most its cost; absorbing input `k` replaces one pending
    /// input by `k`'s inputs, which [`Self::room_for`] allows only while both sums stay within
    /// their caps.
    fn expr(&mut self, j: usize, reserve: (usize, usize), absorbed: &mut Vec<usize>) -> String {
        let rules = self.rules;
        let node = &rules.graph.nodes()[j];
        let mut args = Vec::with_capacity(node.inputs.len());
        for (p, k) in node.inputs.iter().enumerate() {
            let k = k.0;
            // Inputs still to be written after this one (counted once if repeated).
            let mut pending: Vec<usize> = Vec::new();
            for q in &node.inputs[p + 1..] {
                if !pending.contains(&q.0) {
                    pending.push(q.0);
                }
            }
            let (l, w) = self.costs(&pending);
            let later = (reserve.0 + l, reserve.1 + w);
            let arg = if let (true, Op::Const { value, .. }) =
                (rules.literal_const(k), &rules.graph.nodes()[k].op)
            {
                literal((rules.round)(*value))
            } else if rules.absorbable(k, j) && self.room_for(k, later) {
                self.ops += 1;
                absorbed.push(k);
                self.expr(k, later, absorbed)
            } else if view_op(&rules.graph.nodes()[k].op) && rules.viewable(k) {
                self.view_read(k, absorbed)
            } else {
                self.read(
                    NodeId(k),
                    Affine::identity(rules.graph.shape(NodeId(k)).dims()),
                )
            };
            args.push(arg);
        }
        let value = match &node.op {
            Op::Unary(_) | Op::Binary(_) => op_call(&node.op, &args),
            Op::Select => format!("select({}, {}, nonzero({}))", args[2], args[1], args[0]),
            // Broadcast: its input already reads with broadcast strides.
            _ => return args.swap_remove(0),
        };
        let t = format!("t{}", self.temps);
        self.temps += 1;
        let _ = writeln!(self.body, "    let {t}: S = {value};");
        t
    }

    /// The value of view node `k` read through: its buffer read through the composed views.
    fn view_read(&mut self, k: usize, absorbed: &mut Vec<usize>) -> String {
        let (buffer, chain, map) = self.rules.view_chain(k);
        absorbed.extend(chain);
        self.read(NodeId(buffer), map)
    }

    /// View words in use.
    fn words(&self) -> usize {
        let r = self.shape.len();
        (1 + r) * self.views.len() + (1 + 3 * r) * self.bounded.len()
    }

    /// The read of `k`'s buffer (of `k`'s shape) at the expression's coordinates (broadcast).
    fn plain(&self, k: usize) -> Option<View> {
        let map =
            Affine::identity(self.rules.graph.shape(NodeId(k)).dims()).broadcast(&self.shape)?;
        Some(self.view_of(0, map))
    }

    fn view_of(&self, leaf: usize, map: Affine) -> View {
        let map = map.canonical();
        let bounds = map
            .bounded()
            .then(|| map.lo.iter().copied().zip(map.hi.iter().copied()).collect());
        View {
            leaf,
            offset: map.offset,
            strides: map.strides,
            bounds,
        }
    }

    /// Whether `v` reads element i at coordinate i (the leaf then reads `in[i]`).
    fn is_full(&self, v: &View) -> bool {
        v.bounds.is_none() && v.offset == 0 && v.strides == self.full
    }

    /// Worst-case (leaves, view words) reading `q` may take: none for a literal; for a view node
    /// one leaf and a bounded slot; else a leaf unless bound, and a plain slot unless `q` is read
    /// at i or its read has a slot.
    fn cost(&self, q: usize) -> (usize, usize) {
        let r = self.shape.len();
        if self.rules.literal_const(q) {
            return (0, 0);
        }
        if view_op(&self.rules.graph.nodes()[q].op) && self.rules.viewable(q) {
            return (1, 1 + 3 * r);
        }
        let leaf = usize::from(!self.leaves.contains(&NodeId(q)));
        let words = match self.plain(q) {
            Some(v) if self.is_full(&v) || self.views.iter().any(|s| s.same_map(&v)) => 0,
            _ => 1 + r,
        };
        (leaf, words)
    }

    /// The summed cost of `nodes` (distinct).
    fn costs(&self, nodes: &[usize]) -> (usize, usize) {
        nodes.iter().fold((0, 0), |(l, w), &q| {
            let (a, b) = self.cost(q);
            (l + a, w + b)
        })
    }

    /// Whether absorbing node `k` keeps the kernel within its limits, counting the worst-case
    /// cost of each of `k`'s inputs and of the `later` inputs still to be written.
    fn room_for(&self, k: usize, later: (usize, usize)) -> bool {
        let mut inputs: Vec<usize> = Vec::new();
        for q in &self.rules.graph.nodes()[k].inputs {
            if !inputs.contains(&q.0) {
                inputs.push(q.0);
            }
        }
        let (l, w) = self.costs(&inputs);
        self.ops < MAX_OPS
            && self.leaves.len() + l + later.0 <= self.max_leaves
            && self.words() + w + later.1 <= VIEW_WORDS
    }

    /// The load of buffer `k` (bound once however often it is read) through `map` (a read of
    /// `k`'s value, or of views of it, at the coordinates of the view's shape), broadcast to
    /// the expression's shape.
    fn read(&mut self, k: NodeId, map: Affine) -> String {
        let slot = match self.leaves.iter().position(|&l| l == k) {
            Some(s) => s,
            None => {
                self.leaves.push(k);
                self.leaves.len() - 1
            }
        };
        let map = map
            .broadcast(&self.shape)
            .expect("an elementwise input broadcasts to the expression's shape");
        let view = self.view_of(slot, map);
        if self.is_full(&view) {
            return format!("in{slot}[i]");
        }
        let r = self.shape.len();
        if view.bounds.is_none() {
            let s = match self.views.iter().position(|s| s.same_map(&view)) {
                Some(s) => s,
                None => {
                    // Slot s's offset, once: its words start at (1 + rank) s.
                    let s = self.views.len();
                    let axes: Vec<bool> = view.strides.iter().map(|&st| st != 0).collect();
                    self.views.push(view);
                    let sum = self.dot(&format!("{}u", (1 + r) * s), &axes);
                    let _ = writeln!(self.body, "    let vo{s} = {sum};");
                    s
                }
            };
            return format!("in{slot}[vo{s}]");
        }
        let b = match self.bounded.iter().position(|s| s.same_map(&view)) {
            Some(b) => b,
            None => {
                // Slot b's offset and bounds test, once: its words start after the plain
                // slots' (whose number is a parameter: later reads may add plain slots).
                let b = self.bounded.len();
                self.bounded.push(view);
                let base = format!("wb{b}");
                let _ = writeln!(
                    self.body,
                    "    let {base} = {}u * params.views + {}u;",
                    1 + r,
                    (1 + 3 * r) * b
                );
                let sum = self.dot(&base, &vec![true; r]);
                let inside: Vec<String> = (0..r)
                    .map(|d| {
                        format!(
                            "c{d} >= view_word({base} + {}u) && c{d} < view_word({base} + {}u)",
                            1 + r + d,
                            1 + 2 * r + d
                        )
                    })
                    .collect();
                let inside = if inside.is_empty() {
                    "true".to_string()
                } else {
                    inside.join(" && ")
                };
                let _ = writeln!(self.body, "    let bi{b} = {inside};");
                // Outside the bounds the load reads element 0 and select drops it.
                let _ = writeln!(self.body, "    let bo{b} = select(0u, {sum}, bi{b});");
                b
            }
        };
        let t = self.temps;
        self.temps += 1;
        let _ = writeln!(
            self.body,
            "    let t{t}: S = select(S(0.0), in{slot}[bo{b}], bi{b});"
        );
        format!("t{t}")
    }

    /// `o + sum_d c_d st[d]` for the view whose words (`o`, then `st[0 .. rank]`) start at word
    /// `base` (a WGSL u32 expression), over the axes `d` with `axes[d]` set (the others have
    /// stride 0: a broadcast read), with the coordinates `c_d` of `i` (each emitted once,
    /// before the first offset that needs it: `c_d = (i / P_d) % n_d`, `P_d` the product of
    /// the extents after `d`, so at most one division and one remainder per axis and element,
    /// however many views read it; a per-channel read of `[N, C, H, W]` costs one of each).
    /// Which strides are 0 is thus part of the kernel text; their values are parameters.
    fn dot(&mut self, base: &str, axes: &[bool]) -> String {
        let r = self.shape.len();
        let mut sum = format!("view_word({base})");
        self.coords.resize(r, false);
        for d in (0..r).filter(|&d| axes[d]) {
            if !self.coords[d] {
                self.coords[d] = true;
                let extent = |e: usize| format!("params.shape[{}][{}]", e / 4, e % 4);
                let after: Vec<String> = (d + 1..r).map(extent).collect();
                // c_0 needs no remainder (i < total), c_{rank-1} no division.
                let quotient = if after.is_empty() {
                    "i".to_string()
                } else {
                    format!("(i / ({}))", after.join(" * "))
                };
                let c = if d == 0 {
                    quotient
                } else {
                    format!("{quotient} % {}", extent(d))
                };
                let _ = writeln!(self.body, "    let c{d} = {c};");
            }
            let _ = write!(sum, " + c{d} * view_word({base} + {}u)", 1 + d);
        }
        sum
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

    /// A reduction kernel: bindings, `reduce_input(i)`, the expression's element i, which
    /// the entry points of shaders/reduce_core.wgsl reduce, and `reduce_output(o, v)`, the
    /// value stored at output o whose reduction is v (`output`, an expression of v).
    fn source_reduce(&self, value: &str, output: &str) -> String {
        let mut s = self.bindings();
        s.push_str("fn reduce_input(i: u32) -> S {\n");
        s.push_str(&self.body);
        let _ = writeln!(s, "    return {value};\n}}\n");
        let _ = writeln!(
            s,
            "fn reduce_output(o: u32, v: S) -> S {{\n    return {output};\n}}"
        );
        s
    }

    /// The epilogue of root `r` applied to `v`, the reduction `j`'s value at output o: `r`'s op
    /// with `j` replaced by `v`, literals, and leaves of the output's shape read at o.
    fn epilogue(&mut self, r: usize, j: usize) -> String {
        let rules = self.rules;
        let node = &rules.graph.nodes()[r];
        let args: Vec<String> = node
            .inputs
            .iter()
            .map(|q| match &rules.graph.nodes()[q.0].op {
                _ if q.0 == j => "v".to_string(),
                Op::Const { value, .. } if rules.literal_const(q.0) => {
                    literal((rules.round)(*value))
                }
                _ => {
                    let slot = match self.leaves.iter().position(|l| l == q) {
                        Some(s) => s,
                        None => {
                            self.leaves.push(*q);
                            self.leaves.len() - 1
                        }
                    };
                    format!("in{slot}[o]")
                }
            })
            .collect();
        op_call(&node.op, &args)
    }
}

/// The WGSL call of a unary or binary op on `args` (the functions of
/// shaders/elementwise_ops.wgsl, shared with the single-op kernels).
fn op_call(op: &Op, args: &[String]) -> String {
    match op {
        Op::Unary(u) => format!("unary_op({}u, {})", super::unary_code(*u), args[0]),
        Op::Binary(b) => format!(
            "binary_op({}u, {}, {})",
            super::binary_code(*b),
            args[0],
            args[1]
        ),
        op => unreachable!("{} is not a unary or binary op", op.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_strides_follow_pytorch() {
        assert_eq!(reshape_strides(&[2, 3], &[3, 1], &[6]), Some(vec![1]));
        assert_eq!(reshape_strides(&[6], &[1], &[2, 3]), Some(vec![3, 1]));
        assert_eq!(reshape_strides(&[3, 4], &[0, 1], &[12]), None);
        assert_eq!(reshape_strides(&[1, 1], &[8, 1], &[]), Some(vec![]));
        assert_eq!(reshape_strides(&[], &[], &[1, 1]), Some(vec![0, 0]));
        // Every other column (2 per column) of rows of 8: contiguous at step 2.
        assert_eq!(reshape_strides(&[3, 4], &[8, 2], &[12]), Some(vec![2]));
        // A column slice of rows of 10: rows and columns stay apart.
        assert_eq!(reshape_strides(&[3, 4], &[10, 2], &[12]), None);
        assert_eq!(
            reshape_strides(&[3, 4], &[10, 2], &[3, 2, 2]),
            Some(vec![10, 4, 2])
        );
    }

    #[test]
    fn ceil_div_rounds_up_for_negatives() {
        assert_eq!(ceil_div(-3, 2), -1);
        assert_eq!(ceil_div(3, 2), 2);
        assert_eq!(ceil_div(4, 2), 2);
        assert_eq!(ceil_div(0, 3), 0);
    }
}
