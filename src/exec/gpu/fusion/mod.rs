//! Elementwise fusion: chains of elementwise nodes run as one generated kernel.
//!
//! A DARTS search step is mostly small elementwise nodes (`cargo run --release --example
//! op_census -- second` counts them; benches/results/gpu-design-measurements.md). On a
//! real GPU each dispatch costs a fixed overhead whatever its size (a pipeline barrier and a
//! launch; the README gives the cost measured per dispatch), which makes that overhead, not
//! arithmetic, the larger part of an unfused step. This module plans which nodes share a
//! kernel and writes that kernel's WGSL.
//!
//! The planning is in `plan.rs` (rules 1 to 6 below, the roots, buffer lifetimes and the
//! schedule of batches), the view algebra of rule 4 in `view.rs`, and the code generation of
//! the kernel in `codegen.rs`.
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

mod codegen;
mod plan;
mod view;

pub use codegen::literal;
pub use plan::{plan, schedule, Schedule};
pub use view::Affine;

use crate::graph::{Graph, NodeId};
use std::collections::BTreeMap;
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
