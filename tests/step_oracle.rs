//! The one search step (src/search/step_graph.rs, run by src/search/stepper.rs: every update a
//! graph node, all state in executor variables) against the independent host oracle
//! (src/check/oracle/: every update formula written again as f64 ndarray arithmetic around
//! per-network gradient graphs), in f64 on the CPU, for every order, over 5 iterations with
//! SGD momentum, weight decay, Adam's decay and gradient clipping all active.
//!
//! Each iteration starts both from the same state (the oracle's, copied into the stepper), so
//! the comparison is of one step at a time and round-off does not compound across steps.
//!
//! Tolerance ([`step_bound`]). Both compute the networks' forward and backward passes with the
//! same graph builder and the same executor, so those agree bit for bit given equal inputs.
//! They differ only where the oracle sums in another order: the total norms (||v|| for the FD
//! radius R, and the clip norm), sums of N = (number of weight elements) terms, each within
//! gamma_N = N u / (1 - N u) relative of the other (Higham, ch. 3; u = 2^-53). A relative
//! change d of R moves w+- by d R v, hence g+- by about H d R v, and the quotient
//! (g+ - g-) / 2R by d |H v| / 2 in the first order of d (the O(R) truncation term moves by
//! O(d R^2) only): relative d. A relative change d of the clip factor scales the update by
//! (1 + d). Adam's update g / (sqrt(v) + eps) changes by at most relative 2 d for a relative
//! change d of g. Each further elementwise operation after those (at most 16 in sequence in
//! any update: decay, momentum, learning rate, Adam's moments, bias corrections, the BN
//! averages) adds at most u. So every output tensor agrees to
//! 2 gamma_N + 16 u of its largest magnitude (a BN running mean: of its inputs' magnitude,
//! see below); a missing term or a wrong constant moves
//! the step by at least 1e-6 of it here (the negative control shows one).

mod common;

use common::{batch, state, tiny};
use darts::check::oracle::step::OracleSearch;
use darts::darts::names;
use darts::darts::network::SearchConfig;
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
use darts::exec::Scalar;
use darts::search::architect::Order;
use darts::search::step_graph::StepHyper;
use darts::search::stepper::Stepper;
use ndarray::ArrayD;

const STEPS: usize = 5;
const LR: f64 = 0.05;

/// 2 gamma_N + 16 u for sums of `n` terms in f64 (see the module documentation).
fn step_bound(n: usize) -> f64 {
    let u = f64::UNIT_ROUNDOFF;
    let nu = n as f64 * u;
    2.0 * nu / (1.0 - nu) + 16.0 * u
}

fn hyper() -> StepHyper {
    let mut h = StepHyper::reference();
    // Large enough that the alphas move visibly; clip small enough to be active.
    h.adam.lr = 3e-2;
    h.sgd.grad_clip = 0.5;
    h
}

/// max |a - b| / max |b|.
fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b.iter())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Every tensor the step changes, by name: weights and BN buffers, alphas, SGD buffers, Adam
/// moments.
fn tensors(
    st: &darts::darts::params::State,
    opt: &darts::search::step_graph::OptimState,
    cfg: &SearchConfig,
) -> Vec<(String, ArrayD<f64>)> {
    let mut out: Vec<(String, ArrayD<f64>)> = st
        .tensors
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.push((names::ALPHA[0].into(), st.alpha_normal.clone()));
    out.push((names::ALPHA[1].into(), st.alpha_reduce.clone()));
    let layout = cfg.layout().unwrap();
    for ((n, _, _), b) in layout.weights().zip(opt.sgd_buf.iter().flatten()) {
        out.push((names::sgd_buf(n), b.clone()));
    }
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        if let (Some(m), Some(v)) = (&opt.adam_m[c], &opt.adam_v[c]) {
            out.push((names::adam_m(cell), m.clone()));
            out.push((names::adam_v(cell), v.clone()));
        }
    }
    out
}

fn batches(seed: u64) -> (Batch, Batch) {
    (batch(4, 8, 10, seed), batch(4, 8, 10, seed + 100))
}

/// Runs STEPS iterations of `order`, each from the oracle's state, and returns the worst
/// relative difference over all tensors and iterations, with the bound. `oracle_hyper` lets
/// the negative control give the oracle other constants.
fn compare(cfg: &SearchConfig, order: Order, oracle_hyper: &StepHyper) -> (f64, String, f64) {
    let st = state(cfg, 7);
    let (train, valid) = batches(11);
    let shapes = (train.x.shape(), valid.x.shape());
    let mut oracle = OracleSearch::new(cfg, order, oracle_hyper, st.clone(), shapes).unwrap();
    let mut stepper = Stepper::new(
        *cfg,
        order,
        hyper(),
        Box::new(CpuExecutor::<f64>::new()),
        st,
        Default::default(),
    )
    .unwrap();
    let n_weights: usize = cfg
        .layout()
        .unwrap()
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    let bound = step_bound(n_weights);
    let mut oracle_exec = CpuExecutor::<f64>::new();
    let mut worst = (0f64, String::new());
    for k in 0..STEPS {
        stepper.state = oracle.state.clone();
        stepper.opt = oracle.optim_state();
        stepper.host_changed();
        let (train, valid) = batches(20 + k as u64);
        let before = tensors(&oracle.state, &oracle.optim_state(), cfg);
        let ours = stepper.step(&train, &valid, LR).unwrap();
        stepper.sync_host().unwrap();
        let theirs = oracle.step(&mut oracle_exec, &train, &valid, LR).unwrap();
        for (what, a, b) in [
            ("loss_train", ours.loss_train, theirs.loss_train),
            ("loss_valid", ours.loss_valid, theirs.loss_valid),
            ("grad_norm", ours.grad_norm, theirs.grad_norm),
        ] {
            let r = (a - b).abs() / b.abs();
            if r > worst.0 {
                worst = (r, format!("iteration {k} {what}"));
            }
        }
        let a = tensors(&stepper.state, &stepper.opt, cfg);
        let b = tensors(&oracle.state, &oracle.optim_state(), cfg);
        assert_eq!(
            a.iter().map(|x| &x.0).collect::<Vec<_>>(),
            b.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{order:?} iteration {k}: the same tensors"
        );
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            let r = match name.strip_suffix(".running_mean") {
                // A running mean is an average of batch means of its BN's inputs, each
                // computed to within gamma_n of the inputs' magnitude, not of the mean's
                // (which is 0 in real arithmetic behind some layers: 1e-17 here): its scale
                // is |mean| + std of the inputs, sqrt of the running variance.
                Some(prefix) => {
                    let var = &b
                        .iter()
                        .find(|(n, _)| *n == format!("{prefix}.running_var"))
                        .unwrap()
                        .1;
                    let std = var.iter().fold(0f64, |m, v| m.max(v.abs().sqrt()));
                    let scale = y.iter().fold(0f64, |m, v| m.max(v.abs())) + std;
                    let diff = x
                        .iter()
                        .zip(y.iter())
                        .fold(0f64, |m, (p, q)| m.max((p - q).abs()));
                    diff / scale
                }
                None => rel(x, y),
            };
            if std::env::var("DEBUG_ORACLE").is_ok() && r > 1e-10 {
                println!(
                    "{order:?} it {k} {name}: {r:e} scale {:e}",
                    y.iter().fold(0f64, |m, v| m.max(v.abs()))
                );
            }
            if r > worst.0 {
                worst = (r, format!("iteration {k} {name}"));
            }
            // The bound is small against what it guards: the change the step made.
            if let Some((_, old)) = before.iter().find(|(n, _)| n == name) {
                let change = rel(y, old);
                if change > 0.0 && !name.ends_with("num_batches_tracked") {
                    assert!(
                        bound <= 1e-2 * change,
                        "{order:?} {name}: bound {bound:e} not small against the step's change {change:e}"
                    );
                }
            }
        }
    }
    (worst.0, worst.1, bound)
}

#[test]
fn step_graph_equals_oracle_every_order_f64() {
    let cfg = tiny(false);
    for order in [Order::First, Order::Second, Order::Exact] {
        let (worst, at, bound) = compare(&cfg, order, &hyper());
        println!("{order:?}: worst relative difference {worst:.2e} at {at} (bound {bound:.2e})");
        assert!(
            worst <= bound,
            "{order:?}: {worst:e} at {at} exceeds {bound:e}"
        );
    }
}

/// Negative control: an oracle whose SGD momentum is 0.89 instead of 0.9 (a wrong constant
/// in one term of the update) is told apart by the same comparison.
#[test]
fn step_comparison_rejects_a_wrong_momentum() {
    let cfg = tiny(false);
    let mut wrong = hyper();
    wrong.sgd.momentum = 0.89;
    let (worst, at, bound) = compare(&cfg, Order::Second, &wrong);
    assert!(
        worst > 1e3 * bound,
        "a wrong momentum passed: {worst:e} at {at} (bound {bound:e})"
    );
}

/// With 1 or 2 layers every cell reduces, so alphas_normal takes no part in the loss: PyTorch
/// leaves its .grad None and Adam skips it (no decay, no moments), while alphas_reduce moves;
/// the step graph and the oracle agree on all of it.
#[test]
fn reduction_only_networks_leave_alphas_normal_as_they_are() {
    for (layers, order) in [(1, Order::First), (2, Order::Second)] {
        let cfg = SearchConfig {
            layers,
            ..tiny(false)
        };
        let st = state(&cfg, 3);
        let mut stepper = Stepper::new(
            cfg,
            order,
            hyper(),
            Box::new(CpuExecutor::<f64>::new()),
            st.clone(),
            Default::default(),
        )
        .unwrap();
        for k in 0..2 {
            let (train, valid) = batches(40 + k);
            stepper.step(&train, &valid, LR).unwrap();
        }
        stepper.sync_host().unwrap();
        assert_eq!(
            stepper.state.alpha_normal, st.alpha_normal,
            "layers {layers}"
        );
        assert!(rel(&stepper.state.alpha_reduce, &st.alpha_reduce) > 1e-6);
        assert!(stepper.opt.adam_m[0].is_none() && stepper.opt.adam_t[0] == 0);
        assert_eq!(stepper.opt.adam_t[1], 2);
        let (worst, at, bound) = compare(&cfg, order, &hyper());
        assert!(
            worst <= bound,
            "layers {layers}: {worst:e} at {at} exceeds {bound:e}"
        );
    }
}

/// A non-finite alpha stops the step with an error naming the tensor.
#[test]
fn step_reports_non_finite_values() {
    let cfg = tiny(false);
    let mut st = state(&cfg, 5);
    st.alpha_normal[[0, 1]] = f64::NAN;
    let mut stepper = Stepper::new(
        cfg,
        Order::First,
        hyper(),
        Box::new(CpuExecutor::<f64>::new()),
        st,
        Default::default(),
    )
    .unwrap();
    let (train, valid) = batches(1);
    let e = stepper.step(&train, &valid, LR).unwrap_err().to_string();
    assert!(e.contains("alpha"), "{e}");
}
