//! Code generation: the WGSL of one fused kernel, written depth first from its root
//! (# The kernel, in the module documentation).

use super::plan::{elementwise, view_op, Rules};
use super::view::Affine;
use super::{FusedReduce, View, MAX_OPS, VIEW_WORDS};
use crate::graph::{NodeId, Op};
use std::fmt::Write;

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

/// A written fused kernel: its text, what it binds and reads, and the nodes it computes
/// inside (or reads through).
pub(super) struct Written {
    /// The generated WGSL (see [`super::Fused::source`]).
    pub(super) source: String,
    pub(super) leaves: Vec<NodeId>,
    pub(super) views: Vec<View>,
    pub(super) bounded: Vec<View>,
    /// Graph nodes computed by the kernel (see [`super::Fused::ops`]).
    pub(super) ops: usize,
    /// Nodes absorbed, and view nodes read through.
    pub(super) absorbed: Vec<usize>,
}

/// Writes the fused kernel rooted at node `r`: a map of `r`'s expression (`reduce` None), or
/// a reduction of the expression of `reduce.input`, with `r` computed on the reduced value
/// when `epilogue` is the reduction `r` applies its op to (rule 5). At most `max_leaves`
/// buffers are bound.
pub(super) fn write_kernel(
    rules: &Rules,
    r: usize,
    reduce: Option<FusedReduce>,
    epilogue: Option<usize>,
    max_leaves: usize,
) -> Written {
    let nodes = rules.graph.nodes();
    let shape_node = reduce.map_or(r, |f| f.input.0);
    let shape = nodes[shape_node].shape.dims().to_vec();
    let mut b = Builder {
        rules,
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
                Op::Const { value, .. } if rules.literal_const(j) => literal((rules.round)(*value)),
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
    let source = match reduce {
        None => b.source_map(&value),
        Some(_) => b.source_reduce(&value, &output),
    };
    Written {
        source,
        leaves: b.leaves,
        views: b.views,
        bounded: b.bounded,
        ops: b.ops,
        absorbed,
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
        Op::Unary(u) => format!(
            "unary_op({}u, {})",
            crate::exec::gpu::unary_code(*u),
            args[0]
        ),
        Op::Binary(b) => format!(
            "binary_op({}u, {}, {})",
            crate::exec::gpu::binary_code(*b),
            args[0],
            args[1]
        ),
        op => unreachable!("{} is not a unary or binary op", op.name()),
    }
}
