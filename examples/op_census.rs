//! Op census of one resident search step graph: per op kind, the node count and the output
//! elements, for finding where a GPU step's dispatches and work go.
//!
//! `cargo run --release --example op_census -- <first|second|exact> [C] [layers] [batch]`
//! (defaults: 16 8 64, the paper configuration).

use darts::darts::network::SearchConfig;
use darts::exec::gpu::{fusion, kernels};
use darts::graph::Op;
use darts::search::architect::Order;
use darts::search::step_graph::{StepGraph, StepHyper};
use std::collections::BTreeMap;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let order = match args.first().map(String::as_str) {
        Some("second") => Order::Second,
        Some("exact") => Order::Exact,
        _ => Order::First,
    };
    let (c, layers, batch) = (num(1, 16), num(2, 8), num(3, 64));
    let cfg = SearchConfig {
        c,
        layers,
        ..SearchConfig::paper()
    };
    let shape = [batch, 3, 32, 32];
    let sg = StepGraph::build(&cfg, &shape, &shape, order, &StepHyper::reference()).unwrap();
    let mut by: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for n in sg.graph.nodes() {
        let e = by.entry(kind_of(&n.op)).or_default();
        e.0 += 1;
        e.1 += n.shape.numel() as u64;
    }
    // Dispatches the GPU executor records: one per node, less inputs, reshapes (aliases) and
    // the nodes fusion saves (src/exec/gpu/fusion/).
    let mut keep = vec![sg.loss_train];
    keep.extend(sg.assign.iter().map(|(n, _)| *n));
    let (needed, _) = darts::exec::liveness(&sg.graph, &keep).unwrap();
    let t = std::time::Instant::now();
    let plan = fusion::plan(
        &sg.graph,
        &needed,
        &keep,
        |v| v as f32 as f64,
        fusion::MAX_LEAVES,
        true,
    );
    let plan_seconds = t.elapsed().as_secs_f64();
    let free = |op: &Op| matches!(op, Op::Input { .. } | Op::Reshape { .. });
    let unfused = sg
        .graph
        .nodes()
        .iter()
        .zip(&needed)
        .filter(|(n, &k)| k && !free(&n.op))
        .count();
    let kernels: std::collections::BTreeSet<&str> =
        plan.fused.values().map(|f| &*f.source).collect();
    println!(
        "dispatches: {unfused} unfused, {} fused ({} distinct fused kernels, largest {} ops; \
         planned in {plan_seconds:.3} s)",
        unfused - plan.saved(),
        kernels.len(),
        plan.fused.values().map(|f| f.ops).max().unwrap_or(0)
    );
    // Reductions a GPU that is not a CPU splits into two dispatches (src/exec/gpu/device.rs,
    // `set_split_min`), and the terms per workgroup before and after.
    let nodes = sg.graph.nodes();
    let split = (0..nodes.len())
        .filter(|&i| needed[i] && !plan.skipped[i])
        .filter_map(|i| {
            let x = match (plan.fused.get(&i), &nodes[i].op) {
                (Some(f), _) => f.reduce.map(|r| r.input),
                (None, Op::ReduceSum { .. } | Op::ReduceMax { .. }) => Some(nodes[i].inputs[0]),
                _ => None,
            }?;
            let out = nodes[i].shape.numel();
            let n_red = sg.graph.shape(x).numel() / out.max(1);
            (out > 0
                && out <= kernels::REDUCE_SPLIT_MAX_OUT as usize
                && n_red >= kernels::REDUCE_SPLIT_MIN as usize)
                .then_some((out, n_red))
        })
        .collect::<Vec<_>>();
    let terms: usize = split.iter().map(|&(o, n)| o * n).sum();
    let workgroups: usize = split.iter().map(|&(o, _)| o).sum();
    println!(
        "on a GPU (not a CPU adapter): {} reductions split, {} dispatches more; they sum {:.0} M \
         terms on {} workgroups unsplit, {} split",
        split.len(),
        split.len(),
        terms as f64 / 1e6,
        workgroups,
        workgroups * kernels::WORKGROUP_SIZE as usize
    );
    let (mut wg_split, mut wg_before, mut wg_after) = (0, 0, 0);
    for (i, n) in nodes.iter().enumerate() {
        if needed[i] && matches!(n.op, Op::Conv2dWeightGrad { .. }) {
            let gy = sg.graph.shape(n.inputs[1]).dims();
            let total = n.shape.numel();
            let chunks = kernels::weight_grad_chunks(
                total,
                gy[0] * gy[2] * gy[3],
                kernels::REDUCE_SPLIT_MIN,
                65535,
            ) as usize;
            if chunks > 1 {
                wg_split += 1;
                wg_before += total;
                wg_after += total * chunks;
            }
        }
    }
    println!(
        "on a GPU (not a CPU adapter): {wg_split} weight gradients split, {wg_split} dispatches \
         more; {wg_before} workgroups unsplit, {wg_after} split"
    );
    // Batches (src/exec/gpu/batch.rs): the dispatches level by level, a level's fused kernels
    // of one text (and single-op kernels of one op) as batched dispatches of up to
    // MAX_INSTANCES instances in powers of two (on a device whose bindings allow it; a CPU
    // adapter takes 4), counting one per batch where an op's members record the same kernels.
    let sched = fusion::schedule(&sg.graph, &needed, &plan, true);
    let mut level = vec![0usize; nodes.len()];
    let mut levels = 0;
    for i in 0..nodes.len() {
        if needed[i] && !plan.skipped[i] && !matches!(nodes[i].op, Op::Input { .. }) {
            let deepest = plan.reads(&sg.graph, i).iter().map(|r| level[r.0]).max();
            let own = usize::from(!matches!(nodes[i].op, Op::Reshape { .. }));
            level[i] = deepest.unwrap_or(0) + own;
            levels = levels.max(level[i]);
        }
    }
    let batched: usize = sched
        .batches
        .iter()
        .filter(|b| !matches!(nodes[b[0]].op, Op::Reshape { .. }))
        .map(|b| {
            let (mut n, mut d) = (b.len(), 0);
            while n > 0 {
                n -= 1 << n.min(darts::exec::gpu::batch::MAX_INSTANCES).ilog2();
                d += 1;
            }
            d
        })
        .sum();
    println!(
        "batched: {levels} dependency levels; {} dispatches recorded level by level with a \
         level's kernels of one text batched (up to {} instances each)",
        batched,
        darts::exec::gpu::batch::MAX_INSTANCES
    );
    let mut remaining: BTreeMap<String, usize> = BTreeMap::new();
    for (i, n) in sg.graph.nodes().iter().enumerate() {
        if needed[i] && !free(&n.op) && !plan.skipped[i] {
            let kind = match plan.fused.get(&i) {
                Some(f) if f.ops > 1 => "fused (2 or more ops)".to_string(),
                Some(_) => "fused (1 op)".to_string(),
                None => kind_of(&n.op),
            };
            *remaining.entry(kind).or_default() += 1;
        }
    }
    let mut rem: Vec<_> = remaining.into_iter().collect();
    rem.sort_by_key(|r| std::cmp::Reverse(r.1));
    println!("dispatches by kind with fusion:");
    for (k, n) in rem {
        println!("  {k:30} {n:8}");
    }
    let mut rows: Vec<_> = by.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
    println!(
        "{order:?} C={c} layers={layers} batch={batch}: {} nodes",
        sg.graph.len()
    );
    for (k, (n, el)) in rows {
        println!("{k:32} {n:8} nodes {:10.1} M elements", el as f64 / 1e6);
    }
}

/// The op's kind without its parameters.
fn kind_of(op: &Op) -> String {
    match op {
        Op::Unary(u) => format!("unary {u:?}"),
        Op::Binary(b) => format!("binary {b:?}"),
        op => op
            .name()
            .split(['(', '[', ' '])
            .next()
            .unwrap_or("?")
            .to_string(),
    }
}
