//! Op census of one resident search step graph: per op kind, the node count and the output
//! elements, for finding where a GPU step's dispatches and work go.
//!
//! `cargo run --release --example op_census -- <first|second|exact> [C] [layers] [batch]`
//! (defaults: 16 8 64, the paper configuration).

use darts::darts::network::SearchConfig;
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
        let kind = match &n.op {
            Op::Unary(u) => format!("unary {u:?}"),
            Op::Binary(b) => format!("binary {b:?}"),
            op => op
                .name()
                .split(['(', '[', ' '])
                .next()
                .unwrap_or("?")
                .to_string(),
        };
        let e = by.entry(kind).or_default();
        e.0 += 1;
        e.1 += n.shape.numel() as u64;
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
