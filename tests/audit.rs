//! The audit of the architecture gradient (issue 18, item 1; proofs/audit.md, sections 5-7):
//! its routes to the exact gradient agree within derived bounds, its Neumann hypergradient
//! matches finite differences of gradients at the expected rate, its kink counts equal a host
//! count, its eps sweep converges at O(r^2) on a smooth network and is dominated by kinks on a
//! ReLU one, and `search --audit-every` logs every audit without changing the run.

mod common;

use darts::check::bounds::GraphBounds;
use darts::check::oracle::architect::{evaluate, NetGraph, Point};
use darts::darts::network::SearchConfig;
use darts::exec::cpu::CpuExecutor;
use darts::exec::Executor;
use darts::graph::{NodeId, Op, UnaryOp};
use darts::search::architect::Order;
use darts::search::audit::{AuditGraph, Auditor};
use darts::search::gradients::GradientsGraph;
use darts::search::run::{Dtype, Finish, Search, SearchOptions};
use darts::search::step_graph::{upload_state, OptimState};
use ndarray::ArrayD;
use std::sync::atomic::AtomicBool;

const ETA: f64 = 0.025;
const MOMENTUM: f64 = 0.9;
const WEIGHT_DECAY: f64 = 3e-4;
const U64: f64 = f64::EPSILON / 2.0;

struct Case {
    cfg: SearchConfig,
    state: darts::darts::params::State,
    train: darts::data::Batch,
    valid: darts::data::Batch,
}

fn case(smooth: bool) -> Case {
    let cfg = common::tiny(smooth);
    let state = common::state(&cfg, 8);
    let t = common::batch(2, 8, 10, 1);
    let v = common::batch(3, 8, 10, 2);
    Case {
        cfg,
        state,
        train: darts::data::Batch {
            x: t.x,
            onehot: t.onehot,
        },
        valid: darts::data::Batch {
            x: v.x,
            onehot: v.onehot,
        },
    }
}

/// The exact unrolled gradient by autodiff through the step and the paper's formula with the
/// exact HVP, partial - xi H v, are the same derivative (eq. 7: dw'/dalpha = -xi d2 L_train /
/// dw dalpha): they agree within both routes' evaluation bounds. On the smooth network the
/// eps sweep's error falls as r^2 (truncation) between r = 1e-2 and 10^-2.5, and no kink
/// exists; the first-order gradient is the farthest of the approximations.
#[test]
fn audit_routes_agree_and_the_smooth_sweep_converges() {
    let c = case(true);
    let opt = OptimState::default();
    let ag = AuditGraph::build(
        &c.cfg,
        c.train.x.shape(),
        c.valid.x.shape(),
        (MOMENTUM, WEIGHT_DECAY),
        5,
    )
    .unwrap();
    let mut ex = CpuExecutor::<f64>::new();
    upload_state(&mut ex, &c.cfg.layout().unwrap(), &c.state, &opt).unwrap();
    let feeds = GradientsGraph::feeds::<f64>(&c.train, &c.valid, ETA);
    let second_exact = ag
        .methods
        .iter()
        .find(|m| m.0 == "second_exact_hvp")
        .unwrap()
        .1;
    let outs = [ag.exact[0], ag.exact[1], second_exact[0], second_exact[1]];
    let b = GraphBounds::of_on(&mut ex, &ag.gradients.graph, &feeds, &outs).unwrap();
    for i in 0..2 {
        let bound = b.bound(i, &[U64]) + b.bound(i + 2, &[U64]);
        let diff = (&b.values[i] - &b.values[i + 2])
            .iter()
            .fold(0f64, |m, x| m.max(x.abs()));
        let scale = b.values[i].iter().fold(0f64, |m, x| m.max(x.abs()));
        println!("exact vs formula with exact HVP: {diff:.3e} <= {bound:.3e} (scale {scale:.3e})");
        assert!(diff <= bound, "{diff} > {bound}");
        assert!(bound < 1e-2 * scale, "vacuous bound {bound} for {scale}");
    }

    let mut auditor = Auditor::new(MOMENTUM, WEIGHT_DECAY, 5).unwrap();
    let a = auditor
        .audit(&c.cfg, &c.state, &opt, &c.train, &c.valid, ETA)
        .unwrap();
    assert_eq!((a.relu_total, a.maxpool_total), (0, 0));
    let err = |r: f64| {
        a.sweep
            .iter()
            .find(|p| (p.r / r - 1.0).abs() < 1e-9)
            .unwrap()
            .hvp_rel_err
    };
    for p in &a.sweep {
        println!(
            "r {:.2e}  R {:.2e}  |fd - exact|/|exact| {:.3e}",
            p.r, p.big_r, p.hvp_rel_err
        );
    }
    // Truncation C r^2 (+ O(r^4)): a step of 10^-0.5 in r divides the error by 10, within a
    // factor 2 for the O(r^4) term and round-off (which at these r is below 1e-9 relative).
    let ratio = err(1e-2) / err(10f64.powf(-2.5));
    assert!((5.0..20.0).contains(&ratio), "truncation ratio {ratio}");
    let m = |name: &str| a.methods.iter().find(|m| m.method == name).unwrap();
    assert!(m("second_fd").rel_err < m("first").rel_err);
    assert!(m("second_exact_hvp").rel_err < 1e-12, "{:?}", a.methods);
}

fn norm(x: &[ArrayD<f64>]) -> f64 {
    x.iter()
        .flat_map(|a| a.iter())
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
}

/// H x by central differences of the training gradient along x / ||x|| with step h (so h is
/// a distance in weight space), plus the coupled decay lambda x.
fn fd_hvp(
    ex: &mut CpuExecutor<f64>,
    net: &NetGraph,
    p: &Point,
    b: &darts::check::oracle::architect::Batch,
    x: &[ArrayD<f64>],
    h: f64,
) -> Vec<ArrayD<f64>> {
    let s = h / norm(x);
    let gp = evaluate(ex, net, &p.moved(x, s), b, "w + h x")
        .unwrap()
        .grad_w;
    let gm = evaluate(ex, net, &p.moved(x, -s), b, "w - h x")
        .unwrap()
        .grad_w;
    gp.iter()
        .zip(&gm)
        .zip(x)
        .map(|((a, b), xi)| (a - b) / (2.0 * s) + xi * WEIGHT_DECAY)
        .collect()
}

/// The Neumann hypergradient grad_alpha L_val - (d2 L_train / dalpha dw) p with
/// p = eta sum_{j<K} (I - eta (H + lambda I))^j grad_w L_val, every Hessian product by central
/// differences of gradients with step h (host-side, the oracle's network graphs).
fn neumann_oracle(c: &Case, terms: usize, h: f64) -> Vec<f64> {
    let mut ex = CpuExecutor::<f64>::new();
    let net_t = NetGraph::build(&c.cfg, c.train.x.shape()).unwrap();
    let net_v = NetGraph::build(&c.cfg, c.valid.x.shape()).unwrap();
    let p = common::point(&c.cfg, &c.state);
    let bt = darts::check::oracle::architect::Batch {
        x: c.train.x.clone(),
        onehot: c.train.onehot.clone(),
    };
    let bv = darts::check::oracle::architect::Batch {
        x: c.valid.x.clone(),
        onehot: c.valid.onehot.clone(),
    };
    let ev = evaluate(&mut ex, &net_v, &p, &bv, "valid").unwrap();
    let mut term = ev.grad_w.clone();
    let mut sum = term.clone();
    for _ in 1..terms {
        let hx = fd_hvp(&mut ex, &net_t, &p, &bt, &term, h);
        term = term.iter().zip(&hx).map(|(t, x)| t - &(x * ETA)).collect();
        sum = sum.iter().zip(&term).map(|(s, t)| s + t).collect();
    }
    let pvec: Vec<ArrayD<f64>> = sum.iter().map(|s| s * ETA).collect();
    let s = h / norm(&pvec);
    let gp = evaluate(&mut ex, &net_t, &p.moved(&pvec, s), &bt, "+").unwrap();
    let gm = evaluate(&mut ex, &net_t, &p.moved(&pvec, -s), &bt, "-").unwrap();
    (0..2)
        .flat_map(|c| {
            let mixed = (&gp.grad_alpha[c] - &gm.grad_alpha[c]) / (2.0 * s);
            (&ev.grad_alpha[c] - &mixed)
                .iter()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// The audit's Neumann hypergradient (autodiff HVPs in one graph) against the same series
/// built from central differences of gradients: the distance falls as h^2 (by about 4 per
/// halving of h: every difference is central, so its truncation is O(h^2)), which holds only
/// if both compute the same series. The negative control: the oracle with one term fewer
/// does not converge to it.
#[test]
fn neumann_hypergradient_matches_finite_differences() {
    let c = case(true);
    let terms = 3;
    let ag = AuditGraph::build(
        &c.cfg,
        c.train.x.shape(),
        c.valid.x.shape(),
        (MOMENTUM, WEIGHT_DECAY),
        terms,
    )
    .unwrap();
    let mut ex = CpuExecutor::<f64>::new();
    let opt = OptimState::default();
    upload_state(&mut ex, &c.cfg.layout().unwrap(), &c.state, &opt).unwrap();
    let feeds = GradientsGraph::feeds::<f64>(&c.train, &c.valid, ETA);
    let n = ag.methods.iter().find(|m| m.0 == "neumann").unwrap().1;
    let vals = ex.run(&ag.gradients.graph, &feeds, &n).unwrap();
    let ours: Vec<f64> = vals.iter().flat_map(|a| a.iter().copied()).collect();
    let hs = [4e-2, 2e-2, 1e-2];
    let errs: Vec<f64> = hs
        .iter()
        .map(|&h| dist(&ours, &neumann_oracle(&c, terms, h)))
        .collect();
    println!("|ours - oracle(h)| for h = {hs:?}: {errs:?}");
    for w in errs.windows(2) {
        let r = w[0] / w[1];
        assert!((2.5..6.5).contains(&r), "ratio {r} (errors {errs:?})");
    }
    let short = dist(&ours, &neumann_oracle(&c, terms - 1, 1e-2));
    assert!(short > 100.0 * errs[2], "{short} vs {}", errs[2]);
}

/// The audit's kink counts against a host count: the ReLU inputs of the oracle's network at
/// w + R v and at (w + R v) - 2R v (the difference's two points, rounded as the graph rounds
/// them), compared sign by sign. On the ReLU network the step of the paper's scale crosses
/// kinks, and the smallest scale crosses no more than the largest.
#[test]
fn audit_kink_counts_equal_a_host_count() {
    let c = case(false);
    let opt = OptimState::default();
    let mut auditor = Auditor::new(MOMENTUM, WEIGHT_DECAY, 1).unwrap();
    let a = auditor
        .audit(&c.cfg, &c.state, &opt, &c.train, &c.valid, ETA)
        .unwrap();
    assert!(a.relu_total > 0 && a.maxpool_total > 0);
    let first = &a.sweep[0];
    let last = a.sweep.last().unwrap();
    assert!(first.relu_flips > 0.0, "no kink crossed at r = 0.1");
    assert!(first.relu_flips >= last.relu_flips);
    // v and R from the gradients graph, then the host count.
    let gg = GradientsGraph::build(
        &c.cfg,
        c.train.x.shape(),
        c.valid.x.shape(),
        MOMENTUM,
        WEIGHT_DECAY,
    )
    .unwrap();
    let mut ex = CpuExecutor::<f64>::new();
    let e = gg
        .evaluate(&mut ex, &c.cfg, &c.state, &opt, &c.train, &c.valid, ETA)
        .unwrap();
    let p = common::point(&c.cfg, &c.state);
    let v: Vec<ArrayD<f64>> = p
        .weights
        .iter()
        .map(|(n, _)| e.arrays[&format!("v/{n}")].clone())
        .collect();
    let r = e.r_paper;
    let plus = p.moved(&v, r);
    let minus = plus.moved(&v, -2.0 * r);
    let net = NetGraph::build(&c.cfg, c.train.x.shape()).unwrap();
    let relu_inputs: Vec<NodeId> = net
        .graph
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::Unary(UnaryOp::Relu)))
        .map(|n| n.inputs[0])
        .collect();
    let run = |ex: &mut CpuExecutor<f64>, at: &Point| {
        let mut f = darts::exec::Feeds::<f64>::new();
        for (n, w) in &at.weights {
            f.insert(n.clone(), w.clone());
        }
        f.insert(darts::darts::names::ALPHA[0], at.alpha[0].clone());
        f.insert(darts::darts::names::ALPHA[1], at.alpha[1].clone());
        f.insert(darts::darts::names::X, c.train.x.clone());
        f.insert(darts::darts::names::ONEHOT, c.train.onehot.clone());
        ex.run(&net.graph, &f, &relu_inputs).unwrap()
    };
    let (xp, xm) = (run(&mut ex, &plus), run(&mut ex, &minus));
    let host: usize = xp
        .iter()
        .zip(&xm)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .filter(|(x, y)| (**x > 0.0) != (**y > 0.0))
                .count()
        })
        .sum();
    println!(
        "ReLU inputs {} | flips at the paper's R: audit {} host {host} | max-pool switches {}",
        a.relu_total, a.paper.relu_flips, a.paper.maxpool_switches
    );
    assert_eq!(a.paper.relu_flips, host as f64);
    assert_eq!(
        a.relu_total,
        xp.iter().map(|x| x.len()).sum::<usize>(),
        "every ReLU counted"
    );
}

fn tiny_search(audit_every: Option<usize>) -> SearchOptions {
    SearchOptions {
        init_channels: 2,
        layers: 3,
        epochs: 1,
        batch_size: 4,
        max_images: Some(16),
        order: Order::Second,
        dtype: Dtype::F64,
        audit_every,
        ..SearchOptions::paper()
    }
}

/// `--audit-every 1` logs one audit per step (five methods, fifteen sweep points, finite) and
/// leaves the run's numbers as they are: the alphas end bit-identical to a run without it.
#[test]
fn search_audit_logs_every_step_and_leaves_the_run_unchanged() {
    let base = std::env::temp_dir().join(format!("darts-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut alphas = Vec::new();
    for audit in [None, Some(1)] {
        let d = base.join(format!("{audit:?}"));
        let mut s =
            Search::<f64>::new(tiny_search(audit), &d, Box::new(CpuExecutor::new())).unwrap();
        let done = s
            .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
            .unwrap();
        assert!(matches!(done, Finish::Done { .. }));
        let st = s.state().unwrap();
        alphas.push((st.alpha_normal.clone(), st.alpha_reduce.clone()));
        let log = std::fs::read_to_string(d.join("log.jsonl")).unwrap();
        let audits: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("audit").is_some())
            .collect();
        let steps = s.progress.global_step;
        assert_eq!(audits.len(), if audit.is_some() { steps } else { 0 });
        for (i, v) in audits.iter().enumerate() {
            assert_eq!(v["step"], i);
            let a = &v["audit"];
            assert_eq!(a["methods"].as_array().unwrap().len(), 5);
            assert_eq!(a["sweep"].as_array().unwrap().len(), 15);
            for m in a["methods"].as_array().unwrap() {
                assert!(m["rel_err"].as_f64().unwrap().is_finite(), "{m}");
                assert!(m["cosine"].as_f64().unwrap().abs() <= 1.0 + 1e-12, "{m}");
            }
        }
    }
    assert_eq!(alphas[0], alphas[1], "the audit changed the run");
    std::fs::remove_dir_all(&base).ok();
}

/// `darts audit --run` on a run made without the audit: the replay reproduces the run (its
/// alphas equal the checkpoint's) and writes one audit per K steps; a checkpoint whose alphas
/// were altered is refused, since its replay no longer describes it.
#[test]
fn audit_command_replays_a_run_and_refuses_one_it_cannot_reproduce() {
    let d = std::env::temp_dir().join(format!("darts-audit-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let darts = || std::process::Command::new(env!("CARGO_BIN_EXE_darts"));
    let out = darts()
        .args([
            "search",
            "--epochs",
            "1",
            "--max-images",
            "24",
            "--batch-size",
            "4",
        ])
        .args([
            "--init-channels",
            "2",
            "--layers",
            "3",
            "--dtype",
            "f64",
            "--run-dir",
        ])
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = darts()
        .args(["audit", "--every", "2", "--run"])
        .arg(&d)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    let steps: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![0, 2], "{lines}");
    assert!(!d.join(".audit-replay").exists());

    let ck = d.join("checkpoint.npz");
    let (mut arrays, meta) = darts::search::checkpoint::read(&ck).unwrap();
    arrays.get_mut("alpha/normal").unwrap()[[0, 0]] += 1e-9;
    darts::search::checkpoint::write(&ck, &arrays, &meta).unwrap();
    let out = darts()
        .args(["audit", "--every", "2", "--run"])
        .arg(&d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not reproduced"),
        "{err}"
    );
    std::fs::remove_dir_all(&d).ok();
}
