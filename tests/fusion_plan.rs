//! The fusion plan of the GPU executor (src/exec/gpu/fusion/), without a GPU: which nodes
//! share a kernel, what each kernel reads, and when buffers die (proofs/gpu-kernel-choices.md,
//! claim 1).

mod common;

use darts::exec::gpu::fusion::{literal, plan, schedule, MAX_LEAVES};
use darts::graph::{ConvParams, Graph, Op, UnaryOp};

fn f32_round(v: f64) -> f64 {
    v as f32 as f64
}

#[test]
fn literals_are_exact_hex_floats() {
    for v in [
        0.0,
        -0.0,
        1.0,
        -2.5,
        0.1f32 as f64,
        1e-8,
        f64::MAX,
        f64::MIN_POSITIVE / 8.0,
        3.0e38,
    ] {
        let l = literal(v);
        let inner = l.trim_start_matches("S(").trim_end_matches(')');
        let (neg, hex) = match inner.strip_prefix('-') {
            Some(h) => (true, h),
            None => (false, inner),
        };
        let hex = hex.trim_start_matches("0x");
        let (mant, exp) = hex.split_once('p').expect("exponent");
        let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
        let mut m = i64::from_str_radix(int, 16).unwrap() as f64;
        for (k, ch) in frac.chars().enumerate() {
            m += ch.to_digit(16).unwrap() as f64 * 16f64.powi(-(k as i32 + 1));
        }
        let e: i32 = exp.parse().unwrap();
        let back = m * 2f64.powi(e.max(-1000)) * 2f64.powi((e + 1000).min(0));
        let back = if neg { -back } else { back };
        assert_eq!(back.to_bits(), v.to_bits(), "{v:e} -> {l}");
    }
    assert_eq!(literal(f64::NAN), "nan_s()");
    assert_eq!(literal(f64::NEG_INFINITY), "neg_inf_s()");
}

/// relu(x * w + b) with a constant: one kernel, the constant a literal, x, w and b leaves.
#[test]
fn a_chain_becomes_one_kernel() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3]).unwrap();
    let w = g.input("w", [3]).unwrap();
    let b = g.input("b", [2, 3]).unwrap();
    let two = g.constant(2.0, [2, 3]).unwrap();
    let xw = g.mul(x, w).unwrap();
    let s = g.add2(xw, b).unwrap();
    let s2 = g.mul(s, two).unwrap();
    let y = g.relu(s2).unwrap();
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[y], f32_round, MAX_LEAVES, true);
    assert_eq!(p.fused.len(), 1);
    let f = &p.fused[&y.0];
    assert_eq!(f.leaves, vec![x, w, b]);
    assert_eq!(f.strided, vec![1], "only w is broadcast: stride slot 0");
    assert_eq!(f.ops, 4);
    assert!(f.source.contains("S(0x1.0000000000000p1)"), "{}", f.source);
    assert!(f.source.contains("in1[vo0]"), "{}", f.source);
    assert!(f.source.contains("in0[i]"), "{}", f.source);
    // Only the coordinate slot 0 needs (w is broadcast over axis 0: stride 0 there, so no
    // term and no c0), then the slot's offset from it.
    assert!(
        f.source.contains("let c1 = i % params.shape[0][1];"),
        "{}",
        f.source
    );
    assert!(!f.source.contains("let c0"), "{}", f.source);
    assert!(
        f.source
            .contains("let vo0 = view_word(0u) + c1 * view_word(0u + 2u);"),
        "{}",
        f.source
    );
    assert_eq!(p.saved(), 4, "the constant and three absorbed nodes");
    for k in [x, w, b] {
        assert_eq!(p.last_use[k.0], y.0);
    }
    let off = plan(&g, &needed, &[y], f32_round, MAX_LEAVES, false);
    assert!(off.fused.is_empty() && off.saved() == 0);
    assert_eq!(off.last_use[x.0], xw.0);
}

/// Outputs stay materialised; a cheap value whose uses are all elementwise is recomputed by
/// each kernel (even at a larger shape), an expensive one (exp) is not; a value a
/// non-fusable node (here a reshape) reads is materialised.
#[test]
fn kept_values_stay_and_shared_values_are_recomputed() {
    let mut g = Graph::new();
    let x = g.input("x", [4]).unwrap();
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let a = g.mul(e, e).unwrap(); // e used twice, a used twice
    let small = g.unary(UnaryOp::Neg, x).unwrap();
    let m = g.input("m", [3, 4]).unwrap();
    let big = g.add2(m, small).unwrap(); // small recomputed per element of big
    let kept = g.unary(UnaryOp::Relu, a).unwrap();
    let out = g.add2(kept, a).unwrap();
    let sq = g.unary(UnaryOp::Square, x).unwrap();
    let rs = g.reshape(sq, [2, 2]).unwrap(); // a non-fusable use
    let z = g.add2(sq, x).unwrap();
    let needed = vec![true; g.len()];
    let p = plan(
        &g,
        &needed,
        &[out, kept, big, rs, z],
        f32_round,
        MAX_LEAVES,
        true,
    );
    let roots: Vec<usize> = p.fused.keys().copied().collect();
    assert_eq!(roots, vec![e.0, big.0, kept.0, out.0, sq.0, z.0]);
    assert_eq!(
        p.fused[&out.0].leaves,
        vec![kept, e],
        "a = e * e recomputed"
    );
    assert_eq!(p.fused[&out.0].ops, 2, "add, mul");
    assert_eq!(p.fused[&kept.0].leaves, vec![e]);
    assert_eq!(p.fused[&big.0].leaves, vec![m, x]);
    assert!(p.fused[&big.0].source.contains("in1[vo0]"));
    assert_eq!(
        p.fused[&z.0].leaves,
        vec![sq, x],
        "sq is a buffer: the reshape reads it"
    );
    assert_eq!(p.saved(), 2, "a and small");
    assert_eq!(p.last_use[x.0], z.0);
    // The reshape is an alias: the executor keeps the buffer alive while the kept reshape
    // holds it; as a read, sq's last one is z's kernel.
    assert_eq!(p.last_use[sq.0], z.0);
    assert_eq!(p.last_use[rs.0], usize::MAX);
    assert!(p.fused.values().all(|f| f.reduce.is_none()));
}

/// A reduction absorbs its input expression (sum((x - mean)^2) with mean per row: one kernel
/// reading x and mean), also a literal constant and a cheap shared input, but not an
/// expensive shared one; a max reduction is marked as such.
#[test]
fn reductions_absorb_their_input() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 4]).unwrap();
    let mean = g.input("mean", [3, 1]).unwrap();
    let d = g.sub(x, mean).unwrap();
    let d2 = g.unary(UnaryOp::Square, d).unwrap();
    let var = g.reduce_sum(d2, &[1]).unwrap();
    let c = g.constant(2.0, [3, 4]).unwrap();
    let cs = g.reduce_sum(c, &[0, 1]).unwrap();
    let e = g.unary(UnaryOp::Exp, x).unwrap();
    let em = g.reduce_max(e, &[0]).unwrap();
    let e2 = g.add2(e, x).unwrap(); // e has two uses: materialised
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[var, cs, em, e2], f32_round, MAX_LEAVES, true);
    let v = &p.fused[&var.0];
    assert_eq!(v.leaves, vec![x, mean]);
    assert_eq!(v.ops, 3, "reduce, square, sub");
    let r = v.reduce.expect("a fused reduction");
    assert!(!r.max);
    assert_eq!(r.input, d2);
    assert!(
        v.source.contains("fn reduce_input(i: u32) -> S"),
        "{}",
        v.source
    );
    assert!(v.source.contains("in1[vo0]"), "{}", v.source);
    let k = &p.fused[&cs.0];
    assert!(k.leaves.is_empty() && k.source.contains("S(0x1.0000000000000p1)"));
    assert!(
        !p.fused.contains_key(&em.0),
        "exp is shared: em reads its buffer"
    );
    assert!(p.fused.contains_key(&e.0));
    assert!(p.skipped[d.0] && p.skipped[d2.0] && p.skipped[c.0]);
    assert!(!p.skipped[e.0]);
    // Running only em, e has one use.
    let (only_em, _) = darts::exec::liveness(&g, &[em]).unwrap();
    let m = plan(&g, &only_em, &[em], f32_round, MAX_LEAVES, true);
    assert!(m.fused[&em.0].reduce.expect("fused").max, "e used once now");
}

/// A long sum of inputs splits at the leaf cap; the pieces are roots of their own.
#[test]
fn leaf_cap_splits_kernels() {
    let mut g = Graph::new();
    let xs: Vec<_> = (0..10)
        .map(|k| g.input(format!("x{k}"), [5]).unwrap())
        .collect();
    let mut acc = xs[0];
    for &x in &xs[1..] {
        acc = g.add2(acc, x).unwrap();
    }
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[acc], f32_round, 4, true);
    assert!(p.fused.values().all(|f| f.leaves.len() <= 4));
    assert!(p.fused.len() >= 3, "{} kernels", p.fused.len());
    let computed: usize = p.fused.values().map(|f| f.ops).sum();
    assert_eq!(computed, 9, "every add computed exactly once");
}

/// `Graph::version`, the key the GPU executor caches plans under: the same while nothing is
/// appended, one longer per node, and a clone has its own identity.
#[test]
fn graph_version_names_the_node_list() {
    let mut g = Graph::new();
    let x = g.input("x", [2]).unwrap();
    let v = g.version();
    assert_eq!(g.version(), v);
    g.unary(UnaryOp::Neg, x).unwrap();
    assert_eq!(g.version(), (v.0, v.1 + 1));
    let h = g.clone();
    assert_ne!(h.version().0, g.version().0);
    assert_eq!(h.version().1, g.version().1);
    assert_ne!(Graph::new().version().0, Graph::new().version().0);
}

/// Leaves of one broadcast shape share a stride slot (their strides are equal), so a kernel
/// reads up to MAX_LEAVES buffers even when all of them are broadcast from a few shapes.
#[test]
fn broadcast_leaves_of_one_shape_share_a_stride_slot() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3]).unwrap();
    let mut acc = x;
    let mut per_row = Vec::new();
    for k in 0..8 {
        let shape: &[usize] = if k % 2 == 0 { &[3] } else { &[2, 1] };
        let v = g.input(format!("v{k}"), shape.to_vec()).unwrap();
        per_row.push(v);
        acc = g.add2(acc, v).unwrap();
    }
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[acc], f32_round, MAX_LEAVES, true);
    let f = &p.fused[&acc.0];
    assert_eq!(p.fused.len(), 1, "one kernel: 9 leaves, 2 stride slots");
    assert_eq!(f.leaves.len(), 9);
    assert_eq!(f.strided.len(), 2);
    assert!(f.source.contains("[vo0]") && f.source.contains("[vo1]"));
    assert!(!f.source.contains("vo2"), "{}", f.source);
    // Two slots, each coordinate computed once.
    for d in 0..g.shape(acc).rank() {
        assert!(
            f.source.matches(&format!("let c{d} = ")).count() <= 1,
            "{}",
            f.source
        );
    }
}

/// The mixed-op weight of DARTS: `exp(alpha)[e, k]` by two slices and a reshape, broadcast onto
/// a feature map and multiplied: one kernel reading exp's buffer through one view (offset
/// e * 8 + k, strides 0), the slices and the reshape never dispatched. Another (e, k) gives the
/// same kernel text (the offset is a parameter). Claim 8.
#[test]
fn slices_reshape_and_broadcast_read_through_one_view() {
    let mut g = Graph::new();
    let alpha = g.input("alpha", [14, 8]).unwrap();
    let h = g.input("h", [2, 3, 4, 4]).unwrap();
    let w = g.unary(UnaryOp::Exp, alpha).unwrap();
    let mut outs = Vec::new();
    let mut views = Vec::new();
    for (e, k) in [(3, 5), (13, 0)] {
        let s0 = g.slice(w, 0, e, e + 1, 1).unwrap();
        let s1 = g.slice(s0, 1, k, k + 1, 1).unwrap();
        let r = g.reshape(s1, Vec::<usize>::new()).unwrap();
        let b = g.broadcast_to(r, [2, 3, 4, 4]).unwrap();
        let y = g.mul(b, h).unwrap();
        outs.push(y);
        views.push((s0, s1, r, b, e * 8 + k));
    }
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &outs, f32_round, MAX_LEAVES, true);
    for (&y, &(s0, s1, r, b, offset)) in outs.iter().zip(&views) {
        let f = &p.fused[&y.0];
        assert_eq!(f.leaves, vec![w, h], "{}", f.source);
        assert_eq!(f.ops, 2, "mul and the absorbed broadcast");
        assert_eq!(f.views.len(), 1);
        assert!(f.bounded.is_empty());
        assert_eq!(f.views[0].offset, offset as i64);
        assert_eq!(f.views[0].strides, vec![0, 0, 0, 0]);
        assert_eq!(f.views[0].bounds, None);
        assert!(f.source.contains("in0[vo0]"), "{}", f.source);
        assert!(f.source.contains("in1[i]"), "{}", f.source);
        // A scalar read: its offset is a parameter, no coordinate is computed.
        assert!(
            f.source.contains("let vo0 = view_word(0u);"),
            "{}",
            f.source
        );
        assert!(!f.source.contains("let c"), "{}", f.source);
        for v in [s0, s1, r, b] {
            assert!(p.skipped[v.0], "{v:?} read through, not dispatched");
        }
        assert_eq!(p.last_use[w.0], outs[1].0);
        // Words: offset, then the four strides.
        assert_eq!(f.words(4)[..5], [offset as u32, 0, 0, 0, 0]);
    }
    assert_eq!(p.fused[&outs[0].0].source, p.fused[&outs[1].0].source);
    assert!(!p.skipped[w.0], "exp is a buffer: a view reads it");
    assert_eq!(
        p.saved(),
        6,
        "two slices and a broadcast per weight (reshapes are aliases)"
    );
}

/// The gradient of those weights: `pad(pad(reshape(g_k)))` placed at (e, k) of a [14, 8] grid
/// and summed: one kernel whose leaves are the g_k, each read through a bounded view that is
/// g_k's element inside its cell and 0 elsewhere; the pads and reshapes never dispatched.
#[test]
fn pads_of_an_add_chain_fuse_into_one_kernel() {
    let mut g = Graph::new();
    let mut acc = None;
    let mut gs = Vec::new();
    let cells = [(0, 0), (0, 7), (5, 3), (13, 7), (13, 0), (7, 1)];
    let mut pads = Vec::new();
    for (n, &(e, k)) in cells.iter().enumerate() {
        let gk = g.input(format!("g{n}"), [1, 1, 1, 1]).unwrap();
        gs.push(gk);
        let r = g.reshape(gk, [1, 1]).unwrap();
        let p1 = g.pad(r, 1, k, 7 - k, 0).unwrap();
        let p0 = g.pad(p1, 0, e, 13 - e, 0).unwrap();
        pads.extend([r, p1, p0]);
        acc = Some(match acc {
            None => p0,
            Some(a) => g.add2(a, p0).unwrap(),
        });
    }
    let y = acc.unwrap();
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[y], f32_round, MAX_LEAVES, true);
    assert_eq!(p.fused.len(), 1, "{:?}", p.fused.keys());
    let f = &p.fused[&y.0];
    assert_eq!(f.leaves, gs);
    assert_eq!(f.ops, 5, "the five adds");
    assert!(f.views.is_empty());
    assert_eq!(f.bounded.len(), cells.len());
    for (v, &(e, k)) in f.bounded.iter().zip(&cells) {
        assert_eq!(v.bounds, Some(vec![(e, e + 1), (k, k + 1)]));
        // Row-major strides of [1, 1] are (1, 1): element 0 at (e, k).
        assert_eq!(v.strides, vec![1, 1]);
        assert_eq!(v.offset, -((e + k) as i64));
    }
    // Bounded slot 5's words follow the plain slots' and the five bounded slots before it
    // (rank 2: 7 words each).
    assert!(
        f.source.contains("let wb5 = 3u * params.views + 35u;"),
        "{}",
        f.source
    );
    assert!(
        f.source
            .contains("let bo0 = select(0u, view_word(wb0) + c0 * view_word(wb0 + 1u)"),
        "{}",
        f.source
    );
    assert!(
        f.source.contains("select(S(0.0), in0[bo0], bi0)"),
        "{}",
        f.source
    );
    for v in pads {
        assert!(p.skipped[v.0]);
    }
    // Words: slot b at 7 b: offset (mod 2^32), strides, lo, hi.
    let words = f.words(2);
    let (e, k) = cells[2];
    assert_eq!(
        words[14..21],
        [
            (-((e + k) as i64)) as u32,
            1,
            1,
            e as u32,
            k as u32,
            e as u32 + 1,
            k as u32 + 1
        ]
    );
}

/// What a kernel cannot read through stays a buffer: a pad with interior zeros, a reshape
/// whose strides do not merge (a column slice flattened) or of a padded value, and a view
/// that is kept. Through a slice with a step and a pad, a reduction reads its input.
#[test]
fn interior_pads_and_non_affine_reshapes_are_buffers() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 10]).unwrap();
    let z = g.input("z", [3, 7]).unwrap();
    // Interior pad: [3, 4] -> [3, 7] with a zero between neighbours.
    let s = g.slice(x, 1, 1, 5, 1).unwrap();
    let ip = g.pad(s, 1, 0, 0, 1).unwrap();
    let a = g.add2(ip, z).unwrap();
    // Every other column of rows of 10, flattened: not one stride.
    let cols = g.slice(x, 1, 0, 8, 2).unwrap();
    let flat = g.reshape(cols, [12]).unwrap();
    let m = g.input("m", [12]).unwrap();
    let b = g.mul(flat, m).unwrap();
    // A padded value reshaped: the bounds would not survive the reshape.
    let px = g.pad(x, 0, 1, 0, 0).unwrap();
    let pr = g.reshape(px, [40]).unwrap();
    let q = g.input("q", [40]).unwrap();
    let c = g.add2(pr, q).unwrap();
    // A reduction through a strided slice and a pad.
    let st = g.slice(x, 1, 1, 10, 3).unwrap(); // columns 1, 4, 7
    let sp = g.pad(st, 0, 2, 1, 0).unwrap(); // [6, 3]
    let red = g.reduce_sum(sp, &[0]).unwrap();
    let outs = [a, b, c, red];
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &outs, f32_round, MAX_LEAVES, true);
    assert!(
        !p.skipped[ip.0] && !p.fused.contains_key(&ip.0),
        "interior pad dispatched"
    );
    assert!(!p.skipped[s.0], "the interior pad reads the slice's buffer");
    assert_eq!(p.fused[&a.0].leaves, vec![ip, z]);
    assert!(!p.skipped[flat.0] && !p.skipped[cols.0]);
    assert_eq!(p.fused[&b.0].leaves, vec![flat, m]);
    assert!(!p.skipped[pr.0] && !p.skipped[px.0]);
    assert_eq!(p.fused[&c.0].leaves, vec![pr, q]);
    let r = &p.fused[&red.0];
    assert_eq!(r.reduce.map(|f| f.input), Some(sp));
    assert_eq!(r.leaves, vec![x]);
    assert_eq!(r.bounded.len(), 1);
    let v = &r.bounded[0];
    assert_eq!(v.strides, vec![10, 3]);
    assert_eq!(v.offset, 1 - 2 * 10);
    assert_eq!(v.bounds, Some(vec![(2, 5), (0, 3)]));
    assert!(p.skipped[st.0] && p.skipped[sp.0]);
    // Kept views are dispatched, and their own reads stay.
    let p2 = plan(
        &g,
        &needed,
        &[a, b, c, red, sp],
        f32_round,
        MAX_LEAVES,
        true,
    );
    assert!(!p2.skipped[sp.0] && !p2.skipped[st.0]);
}

/// Batch-norm statistics: `mul(reduce_sum(x), 1/n)` whose value a reshape also reads (so it is
/// stored) runs as one reduction kernel with the multiply as its epilogue, the sum never
/// stored; `sub(reduce_max(x), b)` with `b` of the output's shape reads `b` at the output's
/// index. No epilogue where the reduction has another use, is kept, or the other operand is
/// broadcast. Claim 9.
#[test]
fn reductions_take_an_elementwise_epilogue() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 6]).unwrap();
    let s = g.reduce_sum(x, &[1]).unwrap();
    let inv = g.constant(1.0 / 6.0, [4, 1]).unwrap();
    let mean = g.mul(s, inv).unwrap();
    let flat = g.reshape(mean, [4]).unwrap();
    let centred = g.sub(x, mean).unwrap();
    let b = g.input("b", [4, 1]).unwrap();
    let mx = g.reduce_max(x, &[1]).unwrap();
    let top = g.sub(mx, b).unwrap();
    // Not epilogues: a reduction used twice, a kept one, a broadcast operand.
    let s2 = g.reduce_sum(x, &[0]).unwrap();
    let twice = g.add2(s2, s2).unwrap();
    let s3 = g.reduce_sum(x, &[0]).unwrap();
    let kept = g.unary(UnaryOp::Neg, s3).unwrap();
    let s4 = g.reduce_sum(x, &[1]).unwrap();
    let c = g.input("c", [1]).unwrap();
    let bc = g.add2(s4, c).unwrap();
    let outs = [flat, centred, top, twice, kept, s3, bc];
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &outs, f32_round, MAX_LEAVES, true);
    let f = &p.fused[&mean.0];
    let r = f.reduce.expect("a fused reduction");
    assert_eq!((r.node, r.input, r.max), (s, x, false));
    assert_eq!(f.leaves, vec![x]);
    assert_eq!(f.ops, 2, "the sum and the multiply");
    assert!(p.skipped[s.0], "the sum is never stored");
    assert!(
        f.source
            .contains("fn reduce_output(o: u32, v: S) -> S {\n    return binary_op("),
        "{}",
        f.source
    );
    assert!(
        f.source.contains(", v, S(0x1.5555560000000p-3))"),
        "{}",
        f.source
    );
    let t = &p.fused[&top.0];
    assert_eq!(t.reduce.map(|r| (r.node, r.max)), Some((mx, true)));
    assert_eq!(t.leaves, vec![b, x], "the epilogue's leaf first");
    assert!(t.source.contains(", v, in0[o])"), "{}", t.source);
    assert!(t.source.contains("return in1[i];"), "{}", t.source);
    assert!(p.skipped[mx.0]);
    for (red, root) in [(s2, twice), (s3, kept), (s4, bc)] {
        assert!(!p.skipped[red.0], "{red:?} stored");
        assert!(p.fused[&root.0].reduce.is_none());
    }
    assert!(
        !p.fused.contains_key(&s3.0),
        "a plain reduction keeps reduce.wgsl"
    );
    // Without an epilogue the output function is the identity.
    let mut h = Graph::new();
    let y = h.input("y", [3, 5]).unwrap();
    let sq = h.unary(UnaryOp::Square, y).unwrap();
    let ss = h.reduce_sum(sq, &[0]).unwrap();
    let q = plan(&h, &vec![true; h.len()], &[ss], f32_round, MAX_LEAVES, true);
    assert!(q.fused[&ss.0].source.contains("S {\n    return v;\n}"));
}

/// Rule 6: relu(x) read only as the input of a convolution and of a weight gradient is not a
/// dispatch; both read x and apply ReLU on load. A ReLU also read by an elementwise node, or
/// whose input its own kernel would compute, stays a kernel.
#[test]
fn relu_feeding_convolutions_is_applied_on_load() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 6, 6]).unwrap();
    let w = g.input("w", [4, 3, 3, 3]).unwrap();
    let gy = g.input("gy", [2, 4, 6, 6]).unwrap();
    let p = ConvParams::new(1, 1, 1, 1);
    let r = g.relu(x).unwrap();
    let y = g.conv2d(r, w, p).unwrap();
    let gw = g
        .add(Op::Conv2dWeightGrad { p, kernel: [3, 3] }, &[r, gy])
        .unwrap();
    // Read by a conv and by an add: stays.
    let x2 = g.input("x2", [2, 3, 6, 6]).unwrap();
    let r2 = g.relu(x2).unwrap();
    let y2 = g.conv2d(r2, w, p).unwrap();
    let s2 = g.add2(r2, x2).unwrap();
    // Its input is an add the ReLU's kernel absorbs: stays (one kernel, relu(x + x2)).
    let sum = g.add2(x, x2).unwrap();
    let r3 = g.relu(sum).unwrap();
    let y3 = g.conv2d(r3, w, p).unwrap();
    let keep = [y, gw, y2, s2, y3];
    let needed = vec![true; g.len()];
    let pl = plan(&g, &needed, &keep, f32_round, MAX_LEAVES, true);
    assert!(pl.skipped[r.0], "relu(x) applied by its readers");
    assert_eq!(pl.relu_prologue[&y.0], [x, w]);
    assert_eq!(pl.relu_prologue[&gw.0], [x, gy]);
    assert_eq!(pl.reads(&g, y.0), &[x, w]);
    assert_eq!(
        pl.last_use[x.0], r3.0,
        "x is read last by the kernel of relu(x + x2)"
    );
    assert_eq!(pl.last_use[gy.0], gw.0);
    for (relu, conv) in [(r2, y2), (r3, y3)] {
        assert!(!pl.skipped[relu.0], "{relu:?}");
        assert!(!pl.relu_prologue.contains_key(&conv.0));
        assert_eq!(pl.reads(&g, conv.0), &[relu, w]);
    }
    assert_eq!(pl.fused[&r3.0].ops, 2, "relu(x + x2) is one kernel");
    let off = plan(&g, &needed, &keep, f32_round, MAX_LEAVES, false);
    assert!(off.relu_prologue.is_empty() && !off.skipped[r.0]);
}

/// Batch norm's shape of recomputation: `inv = rsqrt(var + eps)` and `q = g / var` of shape
/// [C] read by two maps of [N, C] are computed inside both (no dispatch of their own), while
/// `exp(a)` read twice is stored once.
#[test]
fn rsqrt_and_division_are_recomputed_exp_is_not() {
    let mut g = Graph::new();
    let x = g.input("x", [5, 3]).unwrap();
    let var = g.input("var", [3]).unwrap();
    let gr = g.input("g", [3]).unwrap();
    let eps = g.scalar(1e-5).unwrap();
    let ve = g.add2(var, eps).unwrap();
    let inv = g.unary(UnaryOp::Rsqrt, ve).unwrap();
    let q = g.div(gr, var).unwrap();
    let e = g.unary(UnaryOp::Exp, var).unwrap();
    let y1 = g.mul(x, inv).unwrap();
    let y1 = g.mul(y1, e).unwrap();
    let y2 = g.sub(x, inv).unwrap();
    let y2 = g.add2(y2, q).unwrap();
    let y2 = g.mul(y2, q).unwrap();
    let y2 = g.mul(y2, e).unwrap();
    let needed = vec![true; g.len()];
    let p = plan(&g, &needed, &[y1, y2], f32_round, MAX_LEAVES, true);
    for n in [ve, inv, q] {
        assert!(p.skipped[n.0], "{n:?} recomputed by both maps");
    }
    assert!(p.fused.contains_key(&e.0), "exp is stored once");
    let roots: Vec<usize> = p.fused.keys().copied().collect();
    assert_eq!(roots, vec![e.0, y1.0, y2.0]);
    assert_eq!(p.fused[&y1.0].leaves, vec![x, var, e]);
    assert_eq!(p.fused[&y2.0].leaves, vec![x, var, gr, e]);
}

/// The schedule (src/exec/gpu/fusion/plan.rs, `schedule`): every recorded node once; a batch's
/// members share a fused text and none reads a buffer written in its own or a later batch;
/// `last_batch` is the last batch reading each buffer; without batching, graph order.
#[test]
fn schedule_batches_independent_kernels_of_one_text() {
    let (g, outs, _) = common::parallel_branches(11);
    let (needed, _) = darts::exec::liveness(&g, &outs).unwrap();
    let p = plan(&g, &needed, &outs, |v| v, MAX_LEAVES, true);
    let nodes = g.nodes();
    let recorded: Vec<usize> = (0..g.len())
        .filter(|&i| needed[i] && !p.skipped[i] && !matches!(nodes[i].op, Op::Input { .. }))
        .collect();
    let s = schedule(&g, &needed, &p, true);
    let mut at = vec![usize::MAX; g.len()];
    for (b, members) in s.batches.iter().enumerate() {
        for &m in members {
            assert_eq!(at[m], usize::MAX, "node {m} scheduled twice");
            at[m] = b;
        }
        if members.len() > 1 {
            let f = &p.fused[&members[0]];
            for m in members {
                assert_eq!(p.fused[m].source, f.source, "batch {b} mixes kernel texts");
            }
        }
    }
    let mut got: Vec<usize> = at
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != usize::MAX)
        .map(|(i, _)| i)
        .collect();
    got.sort();
    assert_eq!(got, recorded, "every recorded node exactly once");
    for &i in &recorded {
        for r in p.reads(&g, i) {
            if !matches!(nodes[r.0].op, Op::Input { .. }) {
                assert!(
                    at[r.0] < at[i],
                    "node {i} (batch {}) reads %{} (batch {})",
                    at[i],
                    r.0,
                    at[r.0]
                );
            }
            let last = s.last_batch[r.0];
            assert!(
                last == usize::MAX || last >= at[i],
                "%{} released before node {i} reads it",
                r.0
            );
        }
    }
    // 11 branches of 4 fused kernels each (map, sum, max, mean), and their batches.
    let fused = recorded.iter().filter(|i| p.fused.contains_key(i)).count();
    assert_eq!(fused, 44, "{fused} fused kernels");
    // Every kernel reads only inputs (one level); the means' literals 1/n take three values.
    let texts: std::collections::BTreeSet<&str> = recorded
        .iter()
        .filter_map(|i| p.fused.get(i).map(|f| &*f.source))
        .collect();
    assert_eq!(texts.len(), 6, "map, sum, max and three means");
    assert_eq!(
        s.batches.len(),
        texts.len(),
        "one batch per kernel text: {:?}",
        s.batches
    );
    // Unfused, single-op kernels batch by op (and level): 11 branches of 9 ops each.
    let unfused = plan(&g, &needed, &outs, |v| v, MAX_LEAVES, false);
    let s = schedule(&g, &needed, &unfused, true);
    for members in &s.batches {
        let op = std::mem::discriminant(&nodes[members[0]].op);
        assert!(members
            .iter()
            .all(|&m| std::mem::discriminant(&nodes[m].op) == op));
    }
    let ops = s.batches.iter().map(Vec::len).sum::<usize>();
    assert!(
        s.batches.len() * 4 < ops,
        "{} batches of {ops} ops",
        s.batches.len()
    );
    let flat = schedule(&g, &needed, &p, false);
    assert_eq!(
        flat.batches,
        recorded.iter().map(|&i| vec![i]).collect::<Vec<_>>()
    );
    for &o in &outs {
        assert_eq!(flat.last_batch[o.0], usize::MAX, "outputs are kept");
    }
}
