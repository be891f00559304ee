//! The evaluation network (NetworkCIFAR) against the reference: state_dict names and sizes,
//! forward in both modes, gradients against central differences, drop path, the auxiliary
//! head's in-place ReLU quirk, reduction strides, every known op, and configuration errors.
//! Facts: ../shared/reference/EVALUATION_NOTES.md sections 1-3.

use darts::autodiff;
use darts::check::tolerance::{central_difference_bound, evaluation_bound, gamma};
use darts::darts::eval_network::{
    build, count_parameters, DropPath, EvalConfig, EvalConfigError, EvalOut, AUX_WEIGHT,
};
use darts::darts::genotype::{named, CellGenes, Genotype, KNOWN_OPS};
use darts::darts::init::init_state;
use darts::darts::ops::{NetBuilder, ParamSource};
use darts::darts::params::{Kind, Layout};
use darts::exec::{cpu::CpuExecutor, Executor, Feeds};
use darts::graph::{Graph, NodeId, Op};
use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::BTreeMap;

fn cifar(name: &str, auxiliary: bool) -> EvalConfig {
    EvalConfig {
        auxiliary,
        ..EvalConfig::paper(named(name).unwrap())
    }
}

fn small(genotype: Genotype, layers: usize, auxiliary: bool) -> EvalConfig {
    EvalConfig {
        c: 8,
        layers,
        num_classes: 10,
        auxiliary,
        genotype,
    }
}

fn cell_genes(ops: &[(&str, usize)], concat: &[usize]) -> CellGenes {
    CellGenes {
        ops: ops.iter().map(|(o, j)| (o.to_string(), *j)).collect(),
        concat: concat.to_vec(),
    }
}

/// Every final-model op, a stride-2 skip_connect (FactorizedReduce), Identity skips, and a
/// reduce cell with multiplier 3.
fn mixed() -> Genotype {
    Genotype {
        normal: cell_genes(
            &[
                ("sep_conv_3x3", 0),
                ("dil_conv_3x3", 1),
                ("skip_connect", 0),
                ("avg_pool_3x3", 2),
                ("max_pool_3x3", 1),
                ("sep_conv_5x5", 3),
                ("dil_conv_5x5", 2),
                ("skip_connect", 4),
            ],
            &[2, 3, 4, 5],
        ),
        reduce: cell_genes(
            &[
                ("skip_connect", 0),
                ("max_pool_3x3", 1),
                ("sep_conv_3x3", 2),
                ("avg_pool_3x3", 0),
                ("skip_connect", 2),
                ("dil_conv_3x3", 1),
                ("sep_conv_5x5", 3),
                ("max_pool_3x3", 4),
            ],
            &[3, 4, 5],
        ),
    }
}

/// A built network: graph, outputs, and the layout recorded while building.
struct Net {
    g: Graph,
    out: EvalOut,
    layout: Layout,
}

fn net(cfg: &EvalConfig, n: usize, hw: usize, train: bool, drop: Option<DropPath>) -> Net {
    let mut layout = Layout::default();
    let mut g = Graph::new();
    let x = g.input("x", [n, 3, hw, hw]).unwrap();
    let t = g.input("onehot", [n, cfg.num_classes]).unwrap();
    let mut nb = NetBuilder {
        g: &mut g,
        source: ParamSource::Inputs,
        layout: Some(&mut layout),
        bn: Vec::new(),
        smooth: false,
        affine: false,
        train_mode: train,
    };
    let out = build(&mut nb, cfg, x, t, drop, AUX_WEIGHT).unwrap();
    Net { g, out, layout }
}

/// A seeded state: PyTorch-default weights, then BN affine parameters and running statistics
/// moved away from (1, 0) so every path is exercised.
fn state(layout: &Layout, seed: u64) -> BTreeMap<String, ArrayD<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut st = init_state(layout, 1, &mut rng).tensors;
    for (name, _, kind) in &layout.entries {
        let a = st.get_mut(name).unwrap();
        match kind {
            Kind::BnWeight => a.mapv_inplace(|_| 1.0 + 0.2 * rng.sample::<f64, _>(StandardNormal)),
            Kind::BnBias | Kind::RunningMean => {
                a.mapv_inplace(|_| 0.1 * rng.sample::<f64, _>(StandardNormal))
            }
            Kind::RunningVar => a.mapv_inplace(|_| rng.random_range(0.5..1.5)),
            _ => {}
        }
    }
    st
}

fn images(n: usize, hw: usize, classes: usize, seed: u64) -> (ArrayD<f64>, ArrayD<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let x = ArrayD::from_shape_simple_fn(IxDyn(&[n, 3, hw, hw]), || {
        rng.sample::<f64, _>(StandardNormal)
    });
    let mut onehot = ArrayD::zeros(IxDyn(&[n, classes]));
    for r in 0..n {
        onehot[[r, rng.random_range(0..classes)]] = 1.0;
    }
    (x, onehot)
}

/// Feeds for every input of `g`: state tensors by name, images, targets, and drop-path masks
/// (all 1) and keep (1) unless overridden later.
fn feeds(
    g: &Graph,
    st: &BTreeMap<String, ArrayD<f64>>,
    x: &ArrayD<f64>,
    t: &ArrayD<f64>,
) -> Feeds<f64> {
    let mut f = Feeds::new();
    for node in g.nodes() {
        if let Op::Input { name, shape } = &node.op {
            let v = match name.as_str() {
                "x" => x.clone(),
                "onehot" => t.clone(),
                n if n.starts_with("drop_path/") => ArrayD::ones(IxDyn(shape.dims())),
                n => st
                    .get(n)
                    .unwrap_or_else(|| panic!("no state tensor for input '{n}'"))
                    .clone(),
            };
            f.insert(name.clone(), v);
        }
    }
    f
}

fn run(g: &Graph, f: &Feeds<f64>, outs: &[NodeId]) -> Vec<ArrayD<f64>> {
    CpuExecutor::<f64>::new().run(g, f, outs).unwrap()
}

fn names_shapes(layout: &Layout) -> Vec<(String, Vec<usize>)> {
    layout
        .entries
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect()
}

fn total_weights(layout: &Layout) -> usize {
    layout
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum()
}

/// EVALUATION_NOTES 1.7: DARTS_V2 at C=36, 20 layers, 10 classes has 3,349,342 parameters as
/// count_parameters_in_MB counts them, 3,825,768 with the auxiliary head (476,426 on its own),
/// and 1,650 state_dict entries. The 1,650 entries include the head's 14 (two BNs of five
/// entries, three weights and a bias): without it the model has 1,636. Counted by hand from the
/// module tree: stem 6; a normal cell 89 (two ReLUConvBN preprocessors of 6, five SepConvs of
/// 14, one DilConv of 7), 90 after a reduction (FactorizedReduce preprocess0 has 7); a DARTS_V2
/// reduction cell 12 (pools and Identity skips have none); so 6 + 18*89 + 2 + 2*12 + 2 =
/// 1,636 with the classifier's 2.
#[test]
fn darts_v2_cifar_sizes_match_reference() {
    let plain = cifar("DARTS_V2", false).layout().unwrap();
    assert_eq!(count_parameters(&plain), 3_349_342);
    assert_eq!(total_weights(&plain), 3_349_342);
    assert_eq!(plain.entries.len(), 1_636);
    let aux = cifar("DARTS_V2", true).layout().unwrap();
    assert_eq!(count_parameters(&aux), 3_349_342);
    assert_eq!(total_weights(&aux), 3_825_768);
    let head: usize = aux
        .weights()
        .filter(|(n, _, _)| n.starts_with("auxiliary_head."))
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(head, 476_426);
    assert_eq!(aux.entries.len(), 1_650);
}

/// EVALUATION_NOTES 1.7: DARTS_V1 3,169,414 without and 3,645,840 with the auxiliary head.
#[test]
fn darts_v1_cifar_sizes_match_reference() {
    let plain = cifar("DARTS_V1", false).layout().unwrap();
    assert_eq!(count_parameters(&plain), 3_169_414);
    let aux = cifar("DARTS_V1", true).layout().unwrap();
    assert_eq!(count_parameters(&aux), 3_169_414);
    assert_eq!(total_weights(&aux), 3_645_840);
}

/// Module order and names as PyTorch builds NetworkCIFAR (stem, cells with preprocess0/1 then
/// _ops in genotype order, auxiliary_head, classifier), and the measured per-cell shapes of the
/// default network (EVALUATION_NOTES 1.4).
#[test]
fn darts_v2_cifar_names_order_and_cell_shapes() {
    let cfg = cifar("DARTS_V2", true);
    let n = net(&cfg, 2, 32, true, None);
    let got = names_shapes(&n.layout);
    assert_eq!(got, names_shapes(&cfg.layout().unwrap()));
    let pos = |name: &str| {
        got.iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no entry '{name}'"))
    };
    let shape = |name: &str| got[pos(name)].1.clone();
    let stem: Vec<&str> = got[..6].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        stem,
        [
            "stem.0.weight",
            "stem.1.weight",
            "stem.1.bias",
            "stem.1.running_mean",
            "stem.1.running_var",
            "stem.1.num_batches_tracked"
        ]
    );
    assert_eq!(shape("stem.0.weight"), [108, 3, 3, 3]);
    assert_eq!(got[6].0, "cells.0.preprocess0.op.1.weight");
    assert_eq!(shape("cells.0.preprocess0.op.1.weight"), [36, 108, 1, 1]);
    assert_eq!(got[12].0, "cells.0.preprocess1.op.1.weight");
    assert_eq!(got[18].0, "cells.0._ops.0.op.1.weight");
    assert_eq!(shape("cells.0._ops.0.op.1.weight"), [36, 1, 3, 3]);
    assert_eq!(shape("cells.0._ops.0.op.6.weight"), [36, 36, 1, 1]);
    // Entry 7 is dil_conv_3x3 from node 0 (state 2).
    assert_eq!(shape("cells.0._ops.7.op.1.weight"), [36, 1, 3, 3]);
    assert_eq!(shape("cells.0._ops.7.op.3.weight"), [36]);
    assert!(!got.iter().any(|(n, _)| n.starts_with("cells.0._ops.5.")));
    // Cell 6 reduces (pools and Identity skips: no op parameters); cell 7's preprocess0 is a
    // FactorizedReduce of cell 5's 144 channels.
    assert_eq!(shape("cells.6.preprocess0.op.1.weight"), [72, 144, 1, 1]);
    assert!(!got.iter().any(|(n, _)| n.starts_with("cells.6._ops.")));
    assert_eq!(shape("cells.7.preprocess0.conv_1.weight"), [36, 144, 1, 1]);
    assert_eq!(shape("cells.7.preprocess0.conv_2.weight"), [36, 144, 1, 1]);
    assert_eq!(shape("cells.7.preprocess0.bn.weight"), [72]);
    assert_eq!(shape("cells.7.preprocess1.op.1.weight"), [72, 288, 1, 1]);
    assert_eq!(shape("cells.14.preprocess0.conv_1.weight"), [72, 288, 1, 1]);
    assert_eq!(shape("cells.14.preprocess1.op.1.weight"), [144, 576, 1, 1]);
    // The auxiliary head follows the last cell; the classifier closes the list.
    let last_cell = got
        .iter()
        .rposition(|(n, _)| n.starts_with("cells.19."))
        .unwrap();
    assert_eq!(got[last_cell + 1].0, "auxiliary_head.features.2.weight");
    assert_eq!(shape("auxiliary_head.features.2.weight"), [128, 576, 1, 1]);
    assert_eq!(shape("auxiliary_head.features.3.running_var"), [128]);
    assert_eq!(shape("auxiliary_head.features.5.weight"), [768, 128, 2, 2]);
    assert_eq!(shape("auxiliary_head.features.6.weight"), [768]);
    assert_eq!(shape("auxiliary_head.classifier.weight"), [10, 768]);
    let k = got.len();
    assert_eq!(got[k - 3].0, "auxiliary_head.classifier.bias");
    assert_eq!(got[k - 2], ("classifier.weight".to_string(), vec![10, 576]));
    assert_eq!(got[k - 1], ("classifier.bias".to_string(), vec![10]));
    let mut uniq: Vec<&String> = got.iter().map(|(n, _)| n).collect();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), got.len(), "duplicate state_dict names");
    // Per-cell output shapes (measured on the reference).
    for (i, &o) in n.out.cell_outputs.iter().enumerate() {
        let want = match i {
            0..=5 => [2, 144, 32, 32],
            6..=12 => [2, 288, 16, 16],
            _ => [2, 576, 8, 8],
        };
        assert_eq!(n.g.shape(o).dims(), want, "cell {i}");
    }
    // The evaluation-mode build declares the same state (the head is not evaluated there).
    let e = net(&cfg, 2, 32, false, None);
    assert_eq!(names_shapes(&e.layout), got);
}

/// A small network runs forward in both modes with finite losses. Training mode: one BN record
/// per BN (auxiliary head included), loss = CE + 0.4 CE_aux. Evaluation mode: no records, no
/// auxiliary logits, running statistics used, samples independent of each other.
#[test]
fn small_net_forward_in_train_and_eval_mode() {
    let cfg = small(named("DARTS_V2").unwrap(), 5, true);
    let tr = net(&cfg, 2, 32, true, None);
    let st = state(&tr.layout, 1);
    let (x, t) = images(2, 32, 10, 2);
    let f = feeds(&tr.g, &st, &x, &t);
    let la = tr.out.logits_aux.expect("aux logits in training mode");
    let la_loss = tr.out.loss_aux.unwrap();
    let v = run(
        &tr.g,
        &f,
        &[tr.out.loss, tr.out.loss_main, la_loss, tr.out.logits, la],
    );
    let (loss, main, aux) = (v[0].sum(), v[1].sum(), v[2].sum());
    println!("train: loss {loss:.6} = {main:.6} + 0.4 * {aux:.6}");
    assert!(loss.is_finite() && main > 0.0 && aux > 0.0);
    assert_eq!(loss, main + 0.4 * aux);
    assert_eq!(v[4].shape(), [2, 10]);
    let bns = tr
        .layout
        .entries
        .iter()
        .filter(|(n, _, _)| n.ends_with(".running_mean"))
        .count();
    assert_eq!(tr.out.bn.len(), bns);
    assert!(tr
        .out
        .bn
        .iter()
        .any(|r| r.prefix == "auxiliary_head.features.6"));

    let ev = net(&cfg, 2, 32, false, None);
    assert!(ev.out.bn.is_empty() && ev.out.logits_aux.is_none());
    assert_eq!(ev.out.loss, ev.out.loss_main);
    let f = feeds(&ev.g, &st, &x, &t);
    let e = run(&ev.g, &f, &[ev.out.loss, ev.out.logits]);
    println!("eval: loss {:.6}", e[0].sum());
    assert!(e[0].sum().is_finite());
    assert_ne!(e[1], v[3], "eval mode must use running statistics");
    // Evaluation mode is per sample: changing image 1 leaves the logits of image 0 alone.
    let mut x2 = x.clone();
    x2.index_axis_mut(Axis(0), 1).mapv_inplace(|v| -v);
    let f2 = feeds(&ev.g, &st, &x2, &t);
    let e2 = run(&ev.g, &f2, &[ev.out.logits]);
    assert_eq!(e2[0].index_axis(Axis(0), 0), e[1].index_axis(Axis(0), 0));
    assert_ne!(e2[0].index_axis(Axis(0), 1), e[1].index_axis(Axis(0), 1));
}

fn depth(g: &Graph) -> Vec<usize> {
    let mut d = vec![0usize; g.len()];
    for (i, n) in g.nodes().iter().enumerate() {
        d[i] = 1 + n.inputs.iter().map(|j| d[j.0]).max().unwrap_or(0);
    }
    d
}

/// Largest |value| of any node upstream of `targets`: the scale round-off is relative to.
fn max_abs_upstream(g: &Graph, f: &Feeds<f64>, targets: &[NodeId]) -> f64 {
    let (needed, _) = darts::exec::liveness(g, targets).unwrap();
    let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
    run(g, f, &ids)
        .iter()
        .flat_map(|v| v.iter())
        .fold(0.0, |m: f64, v| m.max(v.abs()))
}

/// Probabilistic round-off bound of a result computed with at most `n` roundings along any
/// path, relative to the largest intermediate magnitude `m`: lambda sqrt(n) u m (first order of
/// gamma~_n(lambda) = exp(lambda sqrt(n) u + n u^2/(1-u)) - 1, Higham and Mary, "A new approach
/// to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Thm 2.4: it
/// holds with probability >= 1 - 2 exp(-lambda^2 (1-u)^2 / 2) per product of rounding factors,
/// assuming independent mean-zero rounding errors). lambda = 10 gives 1 - 4e-22 per product.
/// The worst-case bound `evaluation_bound` (gamma_n) is printed beside it: at a step small
/// enough not to cross ReLU/max-pool kinks (1e-6) it exceeds the signal, so it cannot be used.
fn probabilistic_bound(n: usize, m: f64, u: f64) -> f64 {
    let lambda = 10.0;
    lambda * (n as f64).sqrt() * u * m
}

/// Reverse-mode gradients of the training loss (auxiliary head on, so cell 2 = 2*3/3 is the
/// last cell and the in-place ReLU feeds the global pool; drop path with keep 0.8 and mixed
/// masks; every op type) and of the evaluation-mode loss, against central differences of
/// directional derivatives <grad_w L, d> along a seeded random unit direction d in each of a
/// dozen weight tensors (every element of the tensor takes part).
///
/// Step h = 1e-6: at 1e-4 the stem weights' central differences are off by up to ~2% because the
/// perturbation crosses ReLU and max-pool kinks (measured; D(h) then differs from D(h/2)).
/// Tolerance: `central_difference_bound(D(h), D(h/2), eval_err, h)` (Richardson estimate of the
/// truncation error plus 2 eval_err / h of round-off) plus the round-off of the analytic side,
/// with eval_err = `probabilistic_bound(K depth, M)`: K = 2048, the longest sum (a BN mean over
/// N*H*W = 2*32*32 terms), depth = the loss node's depth, M = the largest |value| upstream of
/// the loss (the analytic side likewise with its own depth and M, times ||d||_1).
#[test]
fn gradients_match_central_differences() {
    let u = f64::EPSILON / 2.0;
    let k = 2048;
    let h = 1e-6;
    let cfg = small(mixed(), 3, true);
    for train in [true, false] {
        let drop = train.then_some(DropPath);
        let mut n = net(&cfg, 2, 32, train, drop);
        let st = state(&n.layout, 11);
        let (x, t) = images(2, 32, 10, 12);
        let mut f = feeds(&n.g, &st, &x, &t);
        if train {
            assert!(!n.out.drop_masks.is_empty());
            f.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), 0.8));
            for (i, m) in n.out.drop_masks.iter().enumerate() {
                let v = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]][i % 3];
                f.insert(
                    m.clone(),
                    ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), v.to_vec()).unwrap(),
                );
            }
        }
        let mut names = vec![
            "stem.0.weight",
            "stem.1.weight",
            "cells.0._ops.0.op.1.weight",
            "cells.0._ops.1.op.2.weight",
            "cells.0._ops.6.op.3.bias",
            "cells.1._ops.0.conv_2.weight",
            "cells.1._ops.6.op.6.weight",
            "cells.2.preprocess0.conv_1.weight",
            "cells.2._ops.5.op.1.weight",
            "classifier.weight",
            "classifier.bias",
        ];
        if train {
            names.extend([
                "auxiliary_head.features.2.weight",
                "auxiliary_head.features.6.weight",
                "auxiliary_head.classifier.bias",
            ]);
        }
        let wrt: Vec<NodeId> = names.iter().map(|s| n.g.input_id(s).unwrap()).collect();
        let loss = n.out.loss;
        let grads = autodiff::grad(&mut n.g, loss, &wrt).unwrap();
        let g = &n.g;
        let d = depth(g);
        let m = max_abs_upstream(g, &f, &[loss]);
        let l0 = run(g, &f, &[loss])[0].sum();
        let eval_err = probabilistic_bound(k * d[loss.0], m, u);
        let worst_case = evaluation_bound(k, d[loss.0], m, u);
        let gv = run(g, &f, &grads);
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut worst: f64 = 0.0;
        for (i, name) in names.iter().enumerate() {
            let w0 = f.get(name).unwrap().clone();
            let dir = w0.mapv(|_| rng.sample::<f64, _>(StandardNormal));
            let dir = &dir / dir.mapv(|v| v * v).sum().sqrt();
            let m_g = max_abs_upstream(g, &f, &[grads[i]]);
            let mut loss_at = |s: f64| {
                f.insert(name.to_string(), &w0 + &(&dir * s));
                run(g, &f, &[loss])[0].sum()
            };
            let dh = (loss_at(h) - loss_at(-h)) / (2.0 * h);
            let dhalf = (loss_at(h / 2.0) - loss_at(-h / 2.0)) / h;
            f.insert(name.to_string(), w0.clone());
            let a = (&gv[i] * &dir).sum();
            let tol = central_difference_bound(dh, dhalf, eval_err, h)
                + probabilistic_bound(k * d[grads[i].0], m_g, u) * dir.mapv(f64::abs).sum();
            println!(
                "train={train} {name}: autodiff {a:+.10e} FD {dhalf:+.10e} |diff| {:.2e} tol {tol:.2e}",
                (a - dhalf).abs()
            );
            assert!(
                (a - dhalf).abs() <= tol,
                "{name}: {a} vs {dhalf} (tol {tol})"
            );
            worst = worst.max((a - dhalf).abs() / tol);
        }
        println!(
            "train={train}: loss {l0:.6}, depth {}, M {m:.3e}, eval_err {eval_err:.2e} \
             (worst case {worst_case:.2e}), worst |diff|/tol {worst:.2e}",
            d[loss.0]
        );
    }
}

/// Drop path with keep = 1 and every mask 1 is the identity: logits, loss and gradients equal
/// (bit for bit) those of the network built without drop path. The masks are exactly the
/// non-Identity ops, in module order.
#[test]
fn drop_path_with_unit_masks_equals_no_drop_path() {
    let geno = named("DARTS_V2").unwrap();
    let cfg = small(geno.clone(), 3, false);
    let mut a = net(&cfg, 2, 16, true, Some(DropPath));
    let mut b = net(&cfg, 2, 16, true, None);
    let mut want = Vec::new();
    for i in 0..3 {
        let genes = if cfg.is_reduction(i) {
            &geno.reduce
        } else {
            &geno.normal
        };
        for (e, (op, j)) in genes.ops.iter().enumerate() {
            let identity = op == "skip_connect" && !(cfg.is_reduction(i) && *j < 2);
            if !identity {
                want.push(DropPath::mask_name(i, e));
            }
        }
    }
    assert_eq!(a.out.drop_masks, want);
    assert_eq!(want.len(), 6 + 5 + 5);
    assert!(b.out.drop_masks.is_empty());
    let st = state(&a.layout, 3);
    let (x, t) = images(2, 16, 10, 4);
    let w = [
        "cells.0._ops.0.op.1.weight",
        "cells.2.preprocess0.conv_1.weight",
    ];
    let mut outs = Vec::new();
    for n in [&mut a, &mut b] {
        let wrt: Vec<NodeId> = w.iter().map(|s| n.g.input_id(s).unwrap()).collect();
        let gr = autodiff::grad(&mut n.g, n.out.loss, &wrt).unwrap();
        let mut f = feeds(&n.g, &st, &x, &t);
        if n.g.input_id(DropPath::KEEP).is_some() {
            f.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), 1.0));
        }
        outs.push(run(&n.g, &f, &[n.out.logits, n.out.loss, gr[0], gr[1]]));
    }
    assert_eq!(outs[0], outs[1]);
}

/// A zero mask removes exactly one op's contribution for that sample: node 0 of cell 0 is
/// h1 + h2, so with h1 dropped for sample 0 it is h2 exactly, with h2 dropped h1 exactly, and
/// sample 1 is untouched. keep = 0.5 doubles every non-Identity op (exact in binary) and leaves
/// the stride-1 skip_connect (Identity) alone.
#[test]
fn zero_mask_removes_exactly_one_contribution() {
    let cfg = small(named("DARTS_V2").unwrap(), 3, false);
    let n = net(&cfg, 2, 16, true, Some(DropPath));
    let st = state(&n.layout, 5);
    let (x, t) = images(2, 16, 10, 6);
    let states = &n.out.cell_states[0];
    let (p0, node0, node2) = (states[0], states[2], states[4]);
    let value = |masks: &[(usize, [f64; 2])], keep: f64| {
        let mut f = feeds(&n.g, &st, &x, &t);
        f.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), keep));
        for (e, m) in masks {
            f.insert(
                DropPath::mask_name(0, *e),
                ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1]), m.to_vec()).unwrap(),
            );
        }
        run(&n.g, &f, &[p0, node0, node2])
    };
    let full = value(&[], 1.0);
    let no_h1 = value(&[(0, [0.0, 1.0])], 1.0);
    let no_h2 = value(&[(1, [0.0, 1.0])], 1.0);
    let s = |a: &ArrayD<f64>, i: usize| a.index_axis(Axis(0), i).to_owned();
    assert_eq!(s(&full[1], 1), s(&no_h1[1], 1));
    assert_eq!(s(&full[1], 1), s(&no_h2[1], 1));
    assert_eq!(&s(&no_h1[1], 0) + &s(&no_h2[1], 0), s(&full[1], 0));
    assert!(s(&no_h1[1], 0) != s(&full[1], 0) && s(&no_h2[1], 0) != s(&full[1], 0));
    let half = value(&[], 0.5);
    assert_eq!(half[1], &full[1] * 2.0);
    // Node 2 = sep_conv_3x3(state 1) [entry 4] + skip_connect(state 0) [entry 5, Identity]:
    // with entry 4 dropped for sample 0 and keep 0.5, node 2 of sample 0 is p0, unscaled.
    let only_skip = value(&[(4, [0.0, 1.0])], 0.5);
    assert_eq!(s(&only_skip[2], 0), s(&full[0], 0));
}

/// In a reduction cell, ops reading the cell inputs (j < 2) have stride 2 and ops reading
/// intermediate nodes (j >= 2) stride 1; a sep conv's second depthwise conv is always stride 1.
#[test]
fn reduction_strides_follow_input_index() {
    let reduce = cell_genes(
        &[
            ("sep_conv_3x3", 0),
            ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 2),
            ("skip_connect", 2),
            ("dil_conv_5x5", 3),
            ("sep_conv_7x7", 2),
            ("skip_connect", 0),
            ("sep_conv_3x3", 4),
        ],
        &[2, 3, 4, 5],
    );
    let geno = Genotype {
        normal: named("DARTS_V2").unwrap().normal,
        reduce,
    };
    let cfg = small(geno.clone(), 3, false);
    let n = net(&cfg, 2, 16, true, None);
    let stride_of = |w: &str| -> usize {
        let id = n.g.input_id(w).unwrap_or_else(|| panic!("no input {w}"));
        let strides: Vec<usize> =
            n.g.nodes()
                .iter()
                .filter(|nd| nd.inputs.get(1) == Some(&id))
                .filter_map(|nd| match &nd.op {
                    Op::Conv2d(p) => Some(p.stride[0]),
                    _ => None,
                })
                .collect();
        assert_eq!(strides.len(), 1, "{w}");
        strides[0]
    };
    let mut checked = 0;
    for cell in [1, 2] {
        for (e, (op, j)) in geno.reduce.ops.iter().enumerate() {
            let want = if *j < 2 { 2 } else { 1 };
            let first = if op == "skip_connect" {
                if *j >= 2 {
                    continue;
                }
                format!("cells.{cell}._ops.{e}.conv_1.weight")
            } else {
                format!("cells.{cell}._ops.{e}.op.1.weight")
            };
            assert_eq!(stride_of(&first), want, "{first} ({op}, {j})");
            if op.starts_with("sep_conv") {
                assert_eq!(stride_of(&format!("cells.{cell}._ops.{e}.op.5.weight")), 1);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 14);
    // Identity skips have no parameters.
    assert!(!n
        .layout
        .entries
        .iter()
        .any(|(s, _, _)| s.starts_with("cells.1._ops.3.")));
}

/// Every operation of the reference's OPS table that a genotype may name builds in both cell
/// types (stride 1 and 2), with the reference's parameter names and shapes, runs with a finite
/// loss, and survives the text round trip of its genotype.
#[test]
fn every_known_op_builds_and_round_trips() {
    for op in KNOWN_OPS {
        let genes = |ops: [(&str, usize); 4]| cell_genes(&ops, &[2, 3]);
        let geno = Genotype {
            normal: genes([(op, 0), (op, 1), (op, 2), (op, 1)]),
            reduce: genes([(op, 0), (op, 1), (op, 2), (op, 0)]),
        };
        let back: Genotype = geno.to_string().parse().unwrap();
        assert_eq!(back, geno, "{op}");
        let cfg = EvalConfig {
            c: 4,
            ..small(back, 3, false)
        };
        let n = net(&cfg, 2, 8, true, Some(DropPath));
        let got: Vec<(String, Vec<usize>)> = names_shapes(&n.layout)
            .into_iter()
            .filter_map(|(s, sh)| {
                s.strip_prefix("cells.0._ops.0.")
                    .map(|r| (r.to_string(), sh))
            })
            .collect();
        let bn = |p: &str| {
            vec![
                (format!("{p}.weight"), vec![4]),
                (format!("{p}.bias"), vec![4]),
                (format!("{p}.running_mean"), vec![4]),
                (format!("{p}.running_var"), vec![4]),
                (format!("{p}.num_batches_tracked"), vec![]),
            ]
        };
        let want: Vec<(String, Vec<usize>)> = match op {
            "none" | "max_pool_3x3" | "avg_pool_3x3" | "skip_connect" => vec![],
            _ => {
                let k: usize = op[op.len() - 1..].parse().unwrap();
                let mut v = vec![
                    ("op.1.weight".to_string(), vec![4, 1, k, k]),
                    ("op.2.weight".to_string(), vec![4, 4, 1, 1]),
                ];
                v.extend(bn("op.3"));
                if op.starts_with("sep_conv") {
                    v.push(("op.5.weight".to_string(), vec![4, 1, k, k]));
                    v.push(("op.6.weight".to_string(), vec![4, 4, 1, 1]));
                    v.extend(bn("op.7"));
                }
                v
            }
        };
        assert_eq!(got, want, "{op}");
        if op == "skip_connect" {
            assert_eq!(
                n.layout.shape_of("cells.1._ops.0.conv_1.weight"),
                Some(&[4, 8, 1, 1][..])
            );
        }
        let st = state(&n.layout, 7);
        let (x, t) = images(2, 8, 10, 8);
        let mut f = feeds(&n.g, &st, &x, &t);
        f.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), 0.9));
        let loss = run(&n.g, &f, &[n.out.loss])[0].sum();
        assert!(loss.is_finite(), "{op}: loss {loss}");
    }
}

/// The in-place ReLU of the auxiliary head (EVALUATION_NOTES 1.5): with 3 layers, cell 2 is
/// both the head's input and the last cell, so in training mode the global pool sees
/// relu(cell output) and the main logits differ from the head-less network's; with 5 layers
/// (head on cell 3, followed by cell 4 whose preprocessing starts with a ReLU) the main logits
/// are bit-identical with and without the head.
#[test]
fn aux_head_inplace_relu_quirk() {
    let geno = named("DARTS_V2").unwrap();
    let (x, t) = images(2, 32, 10, 9);
    // layers = 3: logits = Linear(mean_hw(relu(out_2))).
    let on = net(&small(geno.clone(), 3, true), 2, 32, true, None);
    let off = net(&small(geno.clone(), 3, false), 2, 32, true, None);
    let st = state(&on.layout, 10);
    let out2 = *on.out.cell_outputs.last().unwrap();
    let v = run(&on.g, &feeds(&on.g, &st, &x, &t), &[on.out.logits, out2]);
    let w = off_logits(&off, &st, &x, &t);
    let pooled = v[1]
        .mapv(|a| a.max(0.0))
        .sum_axis(Axis(3))
        .sum_axis(Axis(2))
        / 64.0;
    let wc = st["classifier.weight"]
        .clone()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let bc = &st["classifier.bias"];
    let pooled = pooled.into_dimensionality::<ndarray::Ix2>().unwrap();
    let by_hand = pooled.dot(&wc.t()) + bc;
    // Same sums in a different order: both are within gamma_K of the exact value, relative
    // to the sum of absolute terms (pooled >= 0), with K = 64 pooled pixels + 128 channels + 1.
    let abs_terms = pooled.dot(&wc.mapv(f64::abs).t()) + bc.mapv(f64::abs);
    let tol =
        2.0 * gamma(64 + 128 + 1, f64::EPSILON / 2.0) * abs_terms.fold(0.0, |m: f64, &a| m.max(a));
    let diff = (&v[0] - &by_hand.into_dyn())
        .mapv(f64::abs)
        .fold(0.0, |m: f64, &a| m.max(a));
    assert!(
        diff <= tol,
        "logits vs hand-computed relu head: {diff} (tol {tol})"
    );
    let gap = (&v[0] - &w).mapv(f64::abs).fold(0.0, |m: f64, &a| m.max(a));
    println!("layers=3: main logits with vs without the aux head differ by {gap:.3e}");
    assert!(gap > 1e-6);
    // layers = 5: identical.
    let on = net(&small(geno.clone(), 5, true), 2, 32, true, None);
    let off = net(&small(geno, 5, false), 2, 32, true, None);
    let st = state(&on.layout, 10);
    let a = run(&on.g, &feeds(&on.g, &st, &x, &t), &[on.out.logits]);
    assert_eq!(a[0], off_logits(&off, &st, &x, &t));
}

fn off_logits(
    n: &Net,
    st: &BTreeMap<String, ArrayD<f64>>,
    x: &ArrayD<f64>,
    t: &ArrayD<f64>,
) -> ArrayD<f64> {
    run(&n.g, &feeds(&n.g, st, x, t), &[n.out.logits]).remove(0)
}

/// Configurations the reference cannot run are errors that say why, from `validate` and from
/// `build` (which validates), never panics.
#[test]
fn unsupported_configurations_are_clear_errors() {
    let v2 = named("DARTS_V2").unwrap();
    let cfg = small(v2.clone(), 3, true);
    assert_eq!(cfg.validate(32, 32), Ok(()));
    let e = |c: &EvalConfig, h: usize, w: usize| c.validate(h, w).unwrap_err();
    assert_eq!(
        e(
            &EvalConfig {
                layers: 0,
                ..cfg.clone()
            },
            32,
            32
        ),
        EvalConfigError::NoLayers
    );
    // Fewer than 3 layers is what the reference allows (every cell reduces).
    assert_eq!(small(v2.clone(), 2, false).validate(16, 16), Ok(()));
    assert_eq!(small(v2.clone(), 1, false).validate(16, 16), Ok(()));
    assert_eq!(
        e(
            &EvalConfig {
                num_classes: 0,
                ..cfg.clone()
            },
            32,
            32
        ),
        EvalConfigError::Zero("num_classes")
    );
    // The auxiliary head needs an 8x8 (to 10x10) input: 32x32 images.
    let msg = e(&cfg, 16, 16).to_string();
    assert!(msg.contains("cells.2") && msg.contains("4x4"), "{msg}");
    assert!(small(v2.clone(), 3, false).validate(16, 16).is_ok());
    // Odd sizes where a FactorizedReduce runs.
    let msg = e(&small(v2.clone(), 3, false), 15, 16).to_string();
    assert!(
        msg.contains("cells.2.preprocess0") && msg.contains("FactorizedReduce"),
        "{msg}"
    );
    let msg = e(&small(mixed(), 3, false), 14, 14).to_string();
    assert!(
        msg.contains("cells.2._ops.0") && msg.contains("7x7"),
        "{msg}"
    );
    // Malformed genotypes.
    let mut bad = v2.clone();
    bad.normal.ops[3].0 = "conv_7x1_1x7".into();
    let msg = e(&small(bad, 3, false), 16, 16).to_string();
    assert!(
        msg.contains("normal cell, entry 3") && msg.contains("conv_7x1_1x7"),
        "{msg}"
    );
    let mut bad = v2.clone();
    bad.reduce.ops[2].1 = 3;
    let msg = e(&small(bad, 3, false), 16, 16).to_string();
    assert!(
        msg.contains("reduce cell") && msg.contains("input index 3"),
        "{msg}"
    );
    let mut bad = v2.clone();
    bad.normal.concat.push(6);
    let msg = e(&small(bad, 3, false), 16, 16).to_string();
    assert!(msg.contains("concat index 6"), "{msg}");
    let mut bad = v2.clone();
    bad.reduce.concat = vec![1, 2];
    let msg = e(&small(bad, 3, false), 16, 16).to_string();
    assert!(
        msg.contains("concat joins states of different sizes"),
        "{msg}"
    );
    // build() validates too, and rejects drop path in evaluation mode.
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 16, 16]).unwrap();
    let t = g.input("onehot", [2, 10]).unwrap();
    let mut nb = NetBuilder {
        g: &mut g,
        source: ParamSource::Inputs,
        layout: None,
        bn: Vec::new(),
        smooth: false,
        affine: false,
        train_mode: true,
    };
    let msg = build(&mut nb, &cfg, x, t, None, AUX_WEIGHT)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("auxiliary head"), "{msg}");
    nb.train_mode = false;
    let plain = small(v2, 3, false);
    let msg = build(&mut nb, &plain, x, t, Some(DropPath), AUX_WEIGHT)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("drop path applies in training mode only"),
        "{msg}"
    );
}
