//! Oracle (tests only): the architecture gradient three ways re-derived on the host in f64
//! ndarray arithmetic around per-network gradient graphs (Liu, Simonyan and Yang, ICLR 2019,
//! eqs. 5-8), to check the production step graph ([`crate::search::step_graph`]) and the
//! `darts gradients` graph ([`crate::search::gradients`]):
//!
//! * first order (xi = 0): grad_alpha L_val(w, alpha);
//! * second order as the paper states it: grad_alpha L_val(w', alpha) - xi * H v with
//!   w' = w - xi (mu buf + grad_w L_train(w, alpha) + lambda w), v = grad_w' L_val(w', alpha) and
//!   H v = d2 L_train / (dalpha dw) . v by central differences at w with eps = 0.01 / ||v||;
//!   plus the audit variant that differences at w' along v + lambda w';
//! * exact: H v by autodiff (differentiating <grad_w L_train, v>), and the total derivative of
//!   L_val(w'(alpha), alpha) by autodiff through the unrolled step.
//!
//! Derivations: proofs/architecture-gradient.md and proofs/finite-difference-hvp.md.

use crate::autodiff;
use crate::darts::names;
use crate::darts::network::{self, SearchConfig};
use crate::darts::ops::{BnRecord, NetBuilder, ParamSource};
use crate::exec::{Executor, Feeds, Scalar};
use crate::graph::{Graph, GraphError, NodeId, Shape};
pub use crate::search::architect::{check_finite, weight_list, ArchError, Order, FD_SCALE};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap};

/// Hyperparameters of the unrolled step w' = w - eta (mu buf + grad + lambda w).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Unroll {
    /// xi in the paper: the reference uses the current weight learning rate eta.
    pub eta: f64,
    /// Weight decay lambda (coupled L2, added to the gradient).
    pub weight_decay: f64,
    /// SGD momentum mu (only used with a momentum buffer).
    pub momentum: f64,
}

/// One network on one batch shape: loss, gradients with respect to all weights and both
/// alphas, and the exact mixed HVP d/dalpha <grad_w L, v> for direction inputs `v/<p>`.
pub struct NetGraph {
    pub graph: Graph,
    pub loss: NodeId,
    pub logits: NodeId,
    pub grad_w: Vec<NodeId>,
    /// [normal, reduce]
    pub grad_alpha: [NodeId; 2],
    pub hvp_alpha: [NodeId; 2],
    pub bn: Vec<BnRecord>,
    pub x_shape: Shape,
}

/// The training step unrolled inside one graph, for the exact total derivative
/// d/dalpha L_val(w'(alpha), alpha).
pub struct UnrolledGraph {
    pub graph: Graph,
    /// The BNs of the train-batch forward at w (whose statistics the reference's running
    /// averages absorb).
    pub train_bn: Vec<BnRecord>,
    pub loss_valid_unrolled: NodeId,
    pub grad_alpha_total: [NodeId; 2],
    pub w_prime: Vec<NodeId>,
}

fn alpha_inputs(g: &mut Graph, k: usize) -> Result<[NodeId; 2], GraphError> {
    Ok([
        g.input(names::ALPHA[0], [k, 8])?,
        g.input(names::ALPHA[1], [k, 8])?,
    ])
}

impl NetGraph {
    /// Build the network for images of shape `x_shape` = [N, 3, H, W].
    pub fn build(cfg: &SearchConfig, x_shape: &[usize]) -> Result<NetGraph, GraphError> {
        let mut g = Graph::new();
        let x = g.input(names::X, x_shape.to_vec())?;
        let t = g.input(names::ONEHOT, [x_shape[0], cfg.num_classes])?;
        let alpha = alpha_inputs(&mut g, cfg.k())?;
        let mut nb = NetBuilder::search(&mut g, ParamSource::Inputs, cfg.smooth);
        let net = network::build(&mut nb, cfg, x, t, alpha[0], alpha[1])?;
        let weights = weight_list(cfg)?;
        let w: Vec<NodeId> = weights
            .iter()
            .map(|(n, _)| g.input_id(n).expect("every weight is an input"))
            .collect();
        let mut wrt = w.clone();
        wrt.extend(alpha);
        let grads = autodiff::grad(&mut g, net.loss, &wrt)?;
        let (grad_w, ga) = grads.split_at(w.len());
        let v: Vec<NodeId> = weights
            .iter()
            .map(|(n, s)| g.input(format!("v/{n}"), s.clone()))
            .collect::<Result<_, _>>()?;
        let s = autodiff::inner(&mut g, grad_w, &v)?;
        let hvp = autodiff::grad(&mut g, s, &alpha)?;
        Ok(NetGraph {
            loss: net.loss,
            logits: net.logits,
            grad_w: grad_w.to_vec(),
            grad_alpha: [ga[0], ga[1]],
            hvp_alpha: [hvp[0], hvp[1]],
            bn: net.bn,
            x_shape: Shape::from(x_shape),
            graph: g,
        })
    }
}

impl UnrolledGraph {
    /// L_val(w'(alpha), alpha) with w' = w - xi (moment + (grad_w L_train(w, alpha) + lambda w)),
    /// inputs: weights, alphas, `train/x`, `train/onehot`, `valid/x`, `valid/onehot`,
    /// `moment/<p>` (= mu * momentum buffer), scalars `xi` and `weight_decay`.
    pub fn build(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
    ) -> Result<UnrolledGraph, GraphError> {
        let mut g = Graph::new();
        let xt = g.input(names::TRAIN_X, train_shape.to_vec())?;
        let tt = g.input(names::TRAIN_ONEHOT, [train_shape[0], cfg.num_classes])?;
        let xv = g.input(names::VALID_X, valid_shape.to_vec())?;
        let tv = g.input(names::VALID_ONEHOT, [valid_shape[0], cfg.num_classes])?;
        let alpha = alpha_inputs(&mut g, cfg.k())?;
        let xi = g.input("xi", Shape::scalar())?;
        let lambda = g.input("weight_decay", Shape::scalar())?;
        let mut nb = NetBuilder::search(&mut g, ParamSource::Inputs, cfg.smooth);
        let train = network::build(&mut nb, cfg, xt, tt, alpha[0], alpha[1])?;
        let weights = weight_list(cfg)?;
        let w: Vec<NodeId> = weights
            .iter()
            .map(|(n, _)| g.input_id(n).expect("every weight is an input"))
            .collect();
        let grad_w = autodiff::grad(&mut g, train.loss, &w)?;
        let mut w_prime = Vec::with_capacity(w.len());
        let mut by_name = HashMap::new();
        for (i, (name, shape)) in weights.iter().enumerate() {
            // Same operation order as the reference: theta - eta * (moment + (g + lambda theta)).
            let m = g.input(format!("moment/{name}"), shape.clone())?;
            let decay = g.mul(lambda, w[i])?;
            let dtheta = g.add2(grad_w[i], decay)?;
            let step = g.add2(m, dtheta)?;
            let step = g.mul(xi, step)?;
            let wp = g.sub(w[i], step)?;
            by_name.insert(name.clone(), wp);
            w_prime.push(wp);
        }
        let mut nb = NetBuilder::search(&mut g, ParamSource::Nodes(by_name), cfg.smooth);
        let valid = network::build(&mut nb, cfg, xv, tv, alpha[0], alpha[1])?;
        let total = autodiff::grad(&mut g, valid.loss, &alpha)?;
        Ok(UnrolledGraph {
            graph: g,
            train_bn: train.bn,
            loss_valid_unrolled: valid.loss,
            grad_alpha_total: [total[0], total[1]],
            w_prime,
        })
    }
}

pub use crate::data::Batch;

/// Network state as the architect sees it: weights (module order) and both alphas.
#[derive(Clone, Debug)]
pub struct Point {
    pub weights: Vec<(String, ArrayD<f64>)>,
    pub alpha: [ArrayD<f64>; 2],
}

impl Point {
    fn feeds<T: Scalar>(&self, batch: &Batch) -> Feeds<T> {
        let mut f = Feeds::new();
        for (n, a) in &self.weights {
            f.insert(n.clone(), cast(a));
        }
        f.insert(names::ALPHA[0], cast(&self.alpha[0]));
        f.insert(names::ALPHA[1], cast(&self.alpha[1]));
        f.insert(names::X, cast(&batch.x));
        f.insert(names::ONEHOT, cast(&batch.onehot));
        f
    }

    /// The same point with weights w + s * d (d in weight order).
    pub fn moved(&self, d: &[ArrayD<f64>], s: f64) -> Point {
        Point {
            weights: self
                .weights
                .iter()
                .zip(d)
                .map(|((n, w), d)| (n.clone(), w + &(d * s)))
                .collect(),
            alpha: self.alpha.clone(),
        }
    }
}

fn cast<T: Scalar>(a: &ArrayD<f64>) -> ArrayD<T> {
    a.mapv(T::of)
}

fn uncast<T: Scalar>(a: ArrayD<T>) -> ArrayD<f64> {
    a.mapv(|v| v.as_f64())
}

/// Loss, weight gradients and alpha gradients of one net at one point.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub loss: f64,
    pub logits: ArrayD<f64>,
    pub grad_w: Vec<ArrayD<f64>>,
    pub grad_alpha: [ArrayD<f64>; 2],
    /// Per BN (module order): batch mean and biased batch variance.
    pub bn_stats: Vec<(ArrayD<f64>, ArrayD<f64>)>,
}

/// Run `net` at `point` on `batch` for `outs` followed by every BN's batch statistics
/// (read back with [`take_bn_stats`]), as f64.
fn run_net<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    net: &NetGraph,
    point: &Point,
    batch: &Batch,
    what: &str,
    mut outs: Vec<NodeId>,
) -> Result<impl Iterator<Item = ArrayD<f64>>, ArchError> {
    push_bn_outputs(&mut outs, &net.bn);
    let vals = exec
        .run(&net.graph, &point.feeds::<T>(batch), &outs)
        .map_err(|source| ArchError::Exec {
            what: what.to_string(),
            source,
        })?;
    Ok(vals.into_iter().map(uncast))
}

/// Request every BN's batch mean and variance after the other outputs.
fn push_bn_outputs(outs: &mut Vec<NodeId>, bn: &[BnRecord]) {
    for b in bn {
        outs.push(b.mean);
        outs.push(b.var);
    }
}

/// The (mean, variance) pairs requested by [`push_bn_outputs`], from the remaining outputs.
fn take_bn_stats(mut it: impl Iterator<Item = ArrayD<f64>>) -> BnStats {
    let mut stats = Vec::new();
    while let (Some(m), Some(v)) = (it.next(), it.next()) {
        stats.push((m, v));
    }
    stats
}

/// Evaluate loss and gradients (and BN statistics) of `net` at `point` on `batch`.
pub fn evaluate<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    net: &NetGraph,
    point: &Point,
    batch: &Batch,
    what: &str,
) -> Result<Evaluation, ArchError> {
    let mut outs = vec![net.loss, net.logits, net.grad_alpha[0], net.grad_alpha[1]];
    outs.extend(&net.grad_w);
    let mut it = run_net(exec, net, point, batch, what, outs)?;
    let loss = it.next().expect("loss").sum();
    if !loss.is_finite() {
        return Err(ArchError::NonFinite {
            what: what.to_string(),
            tensor: "loss".into(),
            index: 0,
            value: loss,
        });
    }
    let logits = it.next().expect("logits");
    let ga = [it.next().expect("alpha"), it.next().expect("alpha")];
    let grad_w: Vec<ArrayD<f64>> = it.by_ref().take(net.grad_w.len()).collect();
    let bn_stats = take_bn_stats(it);
    for (i, gw) in grad_w.iter().enumerate() {
        check_finite(what, &format!("grad_w/{}", point.weights[i].0), gw)?;
    }
    check_finite(what, "grad_alpha/normal", &ga[0])?;
    check_finite(what, "grad_alpha/reduce", &ga[1])?;
    Ok(Evaluation {
        loss,
        logits,
        grad_w,
        grad_alpha: ga,
        bn_stats,
    })
}

/// Batch statistics (mean, biased variance) of every BN of one train-mode forward, in
/// module order: what the reference's running averages absorb.
pub type BnStats = Vec<(ArrayD<f64>, ArrayD<f64>)>;

/// Only the alpha gradient of `net` at `point` (what each FD evaluation needs), with the
/// forward's BN statistics.
pub fn grad_alpha<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    net: &NetGraph,
    point: &Point,
    batch: &Batch,
    what: &str,
) -> Result<([ArrayD<f64>; 2], BnStats), ArchError> {
    let outs = vec![net.grad_alpha[0], net.grad_alpha[1]];
    let mut it = run_net(exec, net, point, batch, what, outs)?;
    let g = [it.next().expect("normal"), it.next().expect("reduce")];
    check_finite(what, "grad_alpha/normal", &g[0])?;
    check_finite(what, "grad_alpha/reduce", &g[1])?;
    let stats = take_bn_stats(it);
    Ok((g, stats))
}

/// ||v||_2 over all tensors together.
pub fn norm(v: &[ArrayD<f64>]) -> f64 {
    v.iter()
        .flat_map(|a| a.iter())
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
}

/// Central-difference mixed HVP as the reference computes it (architect.py
/// `_hessian_vector_product`): R = 0.01 / ||d||, w+ = w + R d, w- = w+ - 2R d (the reference
/// perturbs in place, so w- is reached from w+), hvp = (grad_alpha L(w+) - grad_alpha L(w-)) / 2R.
/// The reference then adds R d back in place: `restored` = w- + R d, equal to w in real
/// arithmetic but not always in floating point (drift of about one ulp), and the model goes
/// on from it.
/// `scale` is 0.01 ([`FD_SCALE`]) in the reference; tests sweep it.
pub fn fd_mixed_hvp<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    net: &NetGraph,
    at: &Point,
    d: &[ArrayD<f64>],
    batch: &Batch,
    scale: f64,
) -> Result<FdHvp, ArchError> {
    let n = norm(d);
    if n == 0.0 || !n.is_finite() {
        return Err(ArchError::ZeroDirection);
    }
    let r = scale / n;
    let plus = at.moved(d, r);
    let minus = plus.moved(d, -2.0 * r);
    let (gp, stats_plus) = grad_alpha(exec, net, &plus, batch, "FD HVP at w + R v")?;
    let (gm, stats_minus) = grad_alpha(exec, net, &minus, batch, "FD HVP at w - R v")?;
    let hvp = [(&gp[0] - &gm[0]) / (2.0 * r), (&gp[1] - &gm[1]) / (2.0 * r)];
    let restored = minus.moved(d, r);
    Ok(FdHvp {
        hvp,
        r,
        bn_stats: vec![stats_plus, stats_minus],
        restored,
    })
}

/// A central-difference mixed HVP, its radius R, the BN statistics of its two forwards and
/// the point the reference's in-place perturbation leaves behind ((w + R v) - 2R v) + R v.
pub struct FdHvp {
    pub hvp: [ArrayD<f64>; 2],
    pub r: f64,
    pub bn_stats: Vec<BnStats>,
    pub restored: Point,
}

/// Exact mixed HVP d2 L / (dalpha dw) . v by autodiff.
pub fn exact_mixed_hvp<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    net: &NetGraph,
    at: &Point,
    v: &[ArrayD<f64>],
    batch: &Batch,
) -> Result<[ArrayD<f64>; 2], ArchError> {
    let mut f = at.feeds::<T>(batch);
    for ((n, _), vi) in at.weights.iter().zip(v) {
        f.insert(format!("v/{n}"), cast(vi));
    }
    let vals = exec
        .run(&net.graph, &f, &[net.hvp_alpha[0], net.hvp_alpha[1]])
        .map_err(|source| ArchError::Exec {
            what: "exact HVP".into(),
            source,
        })?;
    let mut it = vals.into_iter().map(uncast);
    Ok([it.next().expect("normal"), it.next().expect("reduce")])
}

/// The unrolled weights w' = w - eta (moment + (g + lambda w)), moment = mu * buf (zero when
/// there is no momentum buffer, as at the reference's first step).
pub fn unrolled_weights(
    point: &Point,
    grad_w: &[ArrayD<f64>],
    buf: Option<&[ArrayD<f64>]>,
    u: &Unroll,
) -> Point {
    let weights = point
        .weights
        .iter()
        .enumerate()
        .map(|(i, (n, w))| {
            let dtheta = &grad_w[i] + &(w * u.weight_decay);
            let step = match buf {
                Some(b) => &(&b[i] * u.momentum) + &dtheta,
                None => dtheta,
            };
            (n.clone(), w - &(step * u.eta))
        })
        .collect();
    Point {
        weights,
        alpha: point.alpha.clone(),
    }
}

/// Everything `darts gradients` reports, keyed as in its output npz.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub arrays: BTreeMap<String, ArrayD<f64>>,
    pub r_paper: f64,
    pub r_audit: f64,
}

impl Report {
    fn put(&mut self, k: impl Into<String>, a: ArrayD<f64>) {
        self.arrays.insert(k.into(), a);
    }
    fn put_alpha(&mut self, k: &str, a: &[ArrayD<f64>; 2]) {
        self.put(format!("{k}/normal"), a[0].clone());
        self.put(format!("{k}/reduce"), a[1].clone());
    }
    fn put_weights(&mut self, k: &str, names: &[(String, ArrayD<f64>)], a: &[ArrayD<f64>]) {
        for ((n, _), v) in names.iter().zip(a) {
            self.put(format!("{k}/{n}"), v.clone());
        }
    }
    pub fn scalar(&self, k: &str) -> f64 {
        self.arrays.get(k).map(|a| a.sum()).unwrap_or(f64::NAN)
    }
    pub fn alpha(&self, k: &str) -> [ArrayD<f64>; 2] {
        [
            self.arrays[&format!("{k}/normal")].clone(),
            self.arrays[&format!("{k}/reduce")].clone(),
        ]
    }
}

/// The graphs the architecture gradient needs for one pair of batch shapes.
pub struct ArchGraphs {
    pub cfg: SearchConfig,
    pub train: NetGraph,
    pub valid: NetGraph,
    /// Only built when needed (exact gradients): it is the largest graph.
    pub unrolled: Option<UnrolledGraph>,
}

impl ArchGraphs {
    /// Every graph, including the unrolled one.
    pub fn build(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
    ) -> Result<ArchGraphs, GraphError> {
        Self::build_for(cfg, train_shape, valid_shape, true)
    }

    /// The graphs, with the unrolled graph only when `unrolled` (exact order).
    pub fn build_for(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        unrolled: bool,
    ) -> Result<ArchGraphs, GraphError> {
        let train = NetGraph::build(cfg, train_shape)?;
        let valid = NetGraph::build(cfg, valid_shape)?;
        let unrolled = if unrolled {
            Some(UnrolledGraph::build(cfg, train_shape, valid_shape)?)
        } else {
            None
        };
        Ok(ArchGraphs {
            cfg: *cfg,
            train,
            valid,
            unrolled,
        })
    }

    fn unrolled(&self) -> Result<&UnrolledGraph, ArchError> {
        self.unrolled
            .as_ref()
            .ok_or(ArchError::Graph(GraphError::Shape {
                op: "oracle".into(),
                label: "unrolled graph".into(),
                shapes: String::new(),
                reason: "not built (ArchGraphs::build_for with unrolled = false)".into(),
            }))
    }
}

fn scalar(v: f64) -> ArrayD<f64> {
    ArrayD::from_elem(IxDyn(&[]), v)
}

/// Feeds of the unrolled graph at `point`.
pub fn unrolled_feeds<T: Scalar>(
    point: &Point,
    momentum_buffer: Option<&[ArrayD<f64>]>,
    train: &Batch,
    valid: &Batch,
    u: &Unroll,
) -> Feeds<T> {
    let mut f = Feeds::<T>::new();
    for (i, (n, w)) in point.weights.iter().enumerate() {
        f.insert(n.clone(), cast(w));
        let m = match momentum_buffer {
            Some(b) => &b[i] * u.momentum,
            None => ArrayD::zeros(w.raw_dim()),
        };
        f.insert(format!("moment/{n}"), cast(&m));
    }
    f.insert(names::ALPHA[0], cast(&point.alpha[0]));
    f.insert(names::ALPHA[1], cast(&point.alpha[1]));
    f.insert(names::TRAIN_X, cast(&train.x));
    f.insert(names::TRAIN_ONEHOT, cast(&train.onehot));
    f.insert(names::VALID_X, cast(&valid.x));
    f.insert(names::VALID_ONEHOT, cast(&valid.onehot));
    f.insert("xi", cast(&scalar(u.eta)));
    f.insert("weight_decay", cast(&scalar(u.weight_decay)));
    f
}

/// The unrolled objective L_val(w'(alpha), alpha) itself (for finite differences of the
/// whole objective in alpha).
pub fn unrolled_loss<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    graphs: &ArchGraphs,
    point: &Point,
    momentum_buffer: Option<&[ArrayD<f64>]>,
    train: &Batch,
    valid: &Batch,
    u: &Unroll,
) -> Result<f64, ArchError> {
    let f = unrolled_feeds::<T>(point, momentum_buffer, train, valid, u);
    let ug = graphs.unrolled()?;
    let v = exec
        .run(&ug.graph, &f, &[ug.loss_valid_unrolled])
        .map_err(|source| ArchError::Exec {
            what: "L_val(w'(alpha), alpha)".into(),
            source,
        })?;
    Ok(v[0].iter().next().map(|x| x.as_f64()).unwrap_or(f64::NAN))
}

/// All three architecture gradients and their ingredients at one point (the
/// `darts gradients` job).
pub fn all_gradients<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    graphs: &ArchGraphs,
    point: &Point,
    momentum_buffer: Option<&[ArrayD<f64>]>,
    train: &Batch,
    valid: &Batch,
    u: &Unroll,
) -> Result<Report, ArchError> {
    let mut rep = Report::default();
    // L_train(w, alpha) and grad_w L_train.
    let et = evaluate(exec, &graphs.train, point, train, "L_train(w, alpha)")?;
    rep.put("loss_train", scalar(et.loss));
    rep.put_weights("grad_w_train", &point.weights, &et.grad_w);
    // First order: grad_alpha L_val(w, alpha).
    let ev = evaluate(exec, &graphs.valid, point, valid, "L_val(w, alpha)")?;
    rep.put("loss_valid", scalar(ev.loss));
    rep.put_alpha("grad_alpha_first", &ev.grad_alpha);
    // Unrolled step and the validation gradients at w'.
    let wp = unrolled_weights(point, &et.grad_w, momentum_buffer, u);
    let wp_vals: Vec<ArrayD<f64>> = wp.weights.iter().map(|(_, a)| a.clone()).collect();
    rep.put_weights("unrolled_w", &point.weights, &wp_vals);
    let eu = evaluate(exec, &graphs.valid, &wp, valid, "L_val(w', alpha)")?;
    rep.put("loss_valid_unrolled", scalar(eu.loss));
    let v = eu.grad_w.clone();
    rep.put_weights("v", &point.weights, &v);
    rep.put_alpha("grad_alpha_unrolled_partial", &eu.grad_alpha);
    // Paper: FD mixed HVP at w along v.
    let FdHvp { hvp: hvp_fd, r, .. } =
        fd_mixed_hvp(exec, &graphs.train, point, &v, train, FD_SCALE)?;
    rep.r_paper = r;
    rep.put("fd_r", ArrayD::from_elem(ndarray::IxDyn(&[]), r));
    rep.put_alpha("hvp_fd", &hvp_fd);
    // Audit variant: at w' along v + lambda w'.
    let d: Vec<ArrayD<f64>> = v
        .iter()
        .zip(&wp_vals)
        .map(|(vi, wi)| vi + &(wi * u.weight_decay))
        .collect();
    let FdHvp {
        hvp: hvp_audit,
        r: r_audit,
        ..
    } = fd_mixed_hvp(exec, &graphs.train, &wp, &d, train, FD_SCALE)?;
    rep.r_audit = r_audit;
    rep.put(
        "fd_r_at_unrolled",
        ArrayD::from_elem(ndarray::IxDyn(&[]), r_audit),
    );
    rep.put_alpha("hvp_fd_at_unrolled", &hvp_audit);
    // Exact mixed HVP at w.
    let hvp_exact = exact_mixed_hvp(exec, &graphs.train, point, &v, train)?;
    rep.put_alpha("hvp_exact", &hvp_exact);
    let second = [
        &eu.grad_alpha[0] - &(&hvp_fd[0] * u.eta),
        &eu.grad_alpha[1] - &(&hvp_fd[1] * u.eta),
    ];
    rep.put_alpha("grad_alpha_second", &second);
    // Exact: autodiff through the unrolled step.
    let ug = graphs.unrolled()?;
    let f = unrolled_feeds::<T>(point, momentum_buffer, train, valid, u);
    let vals = exec
        .run(
            &ug.graph,
            &f,
            &[ug.grad_alpha_total[0], ug.grad_alpha_total[1]],
        )
        .map_err(|source| ArchError::Exec {
            what: "autodiff through the unrolled step".into(),
            source,
        })?;
    let mut it = vals.into_iter().map(uncast);
    let exact = [it.next().expect("normal"), it.next().expect("reduce")];
    rep.put_alpha("grad_alpha_unrolled_exact", &exact);
    for (k, a) in &rep.arrays {
        check_finite("architecture gradient", k, a)?;
    }
    Ok(rep)
}

/// The architecture gradient of one search step, the validation loss it saw, and the BN
/// statistics of every train-mode forward the reference runs on the original model during
/// the step, in order (first order: the search batch at w; second order: the train batch at
/// w, then w + R v, w - R v; exact: the train batch at w).
pub struct ArchStep {
    pub grad: [ArrayD<f64>; 2],
    pub loss_valid: f64,
    pub bn_updates: Vec<BnStats>,
    /// The weights the step leaves in the model where they are not exactly w: the second
    /// order's in-place finite difference restores w as ((w + R v) - 2R v) + R v
    /// ([`fd_mixed_hvp`]), and the weight step starts from that.
    pub weights_after: Option<Vec<(String, ArrayD<f64>)>>,
}

/// The architecture gradient of one search step (see [`ArchStep`]).
#[allow(clippy::too_many_arguments)]
pub fn arch_gradient<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    graphs: &ArchGraphs,
    point: &Point,
    momentum_buffer: Option<&[ArrayD<f64>]>,
    train: &Batch,
    valid: &Batch,
    u: &Unroll,
    order: Order,
) -> Result<ArchStep, ArchError> {
    match order {
        Order::First => {
            let e = evaluate(exec, &graphs.valid, point, valid, "L_val(w, alpha)")?;
            Ok(ArchStep {
                grad: e.grad_alpha,
                loss_valid: e.loss,
                bn_updates: vec![e.bn_stats],
                weights_after: None,
            })
        }
        Order::Second => {
            let et = evaluate(exec, &graphs.train, point, train, "L_train(w, alpha)")?;
            let wp = unrolled_weights(point, &et.grad_w, momentum_buffer, u);
            let eu = evaluate(exec, &graphs.valid, &wp, valid, "L_val(w', alpha)")?;
            let fd = fd_mixed_hvp(exec, &graphs.train, point, &eu.grad_w, train, FD_SCALE)?;
            let grad = [
                &eu.grad_alpha[0] - &(&fd.hvp[0] * u.eta),
                &eu.grad_alpha[1] - &(&fd.hvp[1] * u.eta),
            ];
            let mut bn_updates = vec![et.bn_stats];
            bn_updates.extend(fd.bn_stats);
            Ok(ArchStep {
                grad,
                loss_valid: eu.loss,
                bn_updates,
                weights_after: Some(fd.restored.weights),
            })
        }
        Order::Exact => {
            let ug = graphs.unrolled()?;
            let f = unrolled_feeds::<T>(point, momentum_buffer, train, valid, u);
            let mut outs = vec![
                ug.loss_valid_unrolled,
                ug.grad_alpha_total[0],
                ug.grad_alpha_total[1],
            ];
            push_bn_outputs(&mut outs, &ug.train_bn);
            let vals = exec
                .run(&ug.graph, &f, &outs)
                .map_err(|source| ArchError::Exec {
                    what: "autodiff through the unrolled step".into(),
                    source,
                })?;
            let mut it = vals.into_iter().map(uncast);
            let loss_valid = it.next().expect("loss").sum();
            let grad = [it.next().expect("normal"), it.next().expect("reduce")];
            check_finite("exact architecture gradient", "grad_alpha/normal", &grad[0])?;
            check_finite("exact architecture gradient", "grad_alpha/reduce", &grad[1])?;
            let stats = take_bn_stats(it);
            Ok(ArchStep {
                grad,
                loss_valid,
                bn_updates: vec![stats],
                weights_after: None,
            })
        }
    }
}
