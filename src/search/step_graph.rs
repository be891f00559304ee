//! One whole search step as one graph, so an executor can keep every piece of state resident
//! (on the GPU: in device memory) and a step moves only its two batches, three scalars and a
//! handful of read-back numbers.
//!
//! The graph computes exactly what [`super::run::Search`]'s host step computes (derivation and
//! operation order: proofs/resident-search-step.md):
//!
//! 1. the architecture gradient g_alpha, by [`Order`]:
//!    first: grad_alpha L_val(w, alpha) (eq. 6 with xi = 0);
//!    second: grad_alpha L_val(w', alpha) - xi (g+ - g-) / 2R with w' = w - xi (mu buf +
//!    grad_w L_train(w, alpha) + lambda w), v = grad_w' L_val(w', alpha), R = 0.01 / ||v||,
//!    w+ = w + R v, w- = w+ - 2R v, g+- = grad_alpha L_train(w+-, alpha) (eqs. 7-8);
//!    exact: d/dalpha L_val(w'(alpha), alpha) by autodiff through the unrolled step;
//! 2. Adam with coupled decay on alpha (torch.optim.Adam, in its order of operations; see
//!    [`super::optim::Adam`]): g = g_alpha + lambda_a alpha, m <- lerp(m, g, 1 - b1),
//!    v <- b2 v + ((1 - b2) g) g, alpha <- alpha + (-s m) / (sqrt(v) / c2 + eps) with
//!    s = lr_a / (1 - b1^t), c2 = sqrt(1 - b2^t) fed per step; an alpha no cell uses is left
//!    as it is (PyTorch skips a parameter without a gradient);
//! 3. the weight step at the new alpha, from the weights the architect step left (w; in the
//!    second order the reference's in-place restore ((w + R v) - 2R v) + R v, which is w up to
//!    an ulp): g = grad_w L_train(w, alpha'), clipped by total norm
//!    (factor min(max_norm / (||g|| + 1e-6), 1)), then SGD with momentum and coupled decay:
//!    buf <- mu buf + (g + lambda w), w <- w - lr buf;
//!
//! 4. BN running statistics absorbing every train-mode forward the reference runs on the
//!    model, in order: r <- (1 - 0.1) r + 0.1 b (the variance unbiased by m / (m - 1)).
//!
//! Where a later stage reads a value computed from earlier ones (w' and w+- in the second
//! order, alpha' in the weight step), the gradients hold it constant
//! ([`autodiff::grad_holding`]): the host step sees those values as numbers. Only the exact
//! order differentiates through w'(alpha), as it must.
//!
//! Variables (see [`crate::exec::Executor`]): weights and BN buffers by their state_dict
//! names, `alpha/normal|reduce`, `sgd_buf/<weight>`, `adam_m/<cell>`, `adam_v/<cell>` (the
//! checkpoint's names). Feeds: `train/x`, `train/onehot`, `valid/x`, `valid/onehot`, and the
//! scalars `lr`, `adam/step_size`, `adam/bc2_sqrt`. A zero momentum buffer gives the same
//! numbers as PyTorch's absent one (mu 0 + d = d exactly).

use super::architect::{weight_list, Order, FD_SCALE};
use crate::autodiff;
use crate::darts::network::{self, SearchConfig};
use crate::darts::ops::{BnRecord, NetBuilder, ParamSource};
use crate::darts::params::{Kind, Layout, State};
use crate::exec::{ExecError, Executor, Scalar};
use crate::graph::{Graph, GraphError, NodeId, Shape};
use ndarray::ArrayD;
use std::collections::HashMap;

type R<T> = Result<T, GraphError>;

/// BN running-average momentum (PyTorch's default, the reference's).
pub const BN_MOMENTUM: f64 = 0.1;

/// The constants of one search's optimisers (fixed for a run; the schedules are fed).
#[derive(Clone, Copy, Debug)]
pub struct StepHyper {
    pub momentum: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub arch_weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
}

impl StepHyper {
    /// The reference's search settings (train_search.py): momentum 0.9, weight decay 3e-4,
    /// clip 5, and the architect's Adam (decay 1e-3, betas (0.5, 0.999), eps 1e-8).
    pub fn reference() -> Self {
        StepHyper {
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            arch_weight_decay: 1e-3,
            beta1: 0.5,
            beta2: 0.999,
            adam_eps: 1e-8,
        }
    }
}

/// The whole search step (see the module documentation).
pub struct StepGraph {
    pub graph: Graph,
    pub order: Order,
    /// (node, variable): every piece of state the step replaces.
    pub assign: Vec<(NodeId, String)>,
    /// L_train(w, alpha') of the weight step, and its logits (for the training accuracy).
    pub loss_train: NodeId,
    pub logits_train: NodeId,
    /// The validation loss the architecture step saw (at w for first order, at w' otherwise).
    pub loss_valid: NodeId,
    /// ||grad_w L_train(w, alpha')|| before clipping.
    pub grad_norm: NodeId,
    /// The updated alphas [normal, reduce].
    pub alpha_new: [NodeId; 2],
    /// Train-mode forwards whose statistics the running averages absorb, per step.
    pub bn_updates: usize,
}

/// A network instance: its loss, logits and BN records.
struct Net {
    loss: NodeId,
    logits: NodeId,
    bn: Vec<BnRecord>,
}

fn net_at(
    g: &mut Graph,
    cfg: &SearchConfig,
    batch: (NodeId, NodeId),
    alpha: [NodeId; 2],
    weights: &HashMap<String, NodeId>,
) -> R<Net> {
    let mut nb = NetBuilder::search(g, ParamSource::Nodes(weights.clone()), cfg.smooth);
    let out = network::build(&mut nb, cfg, batch.0, batch.1, alpha[0], alpha[1])?;
    Ok(Net {
        loss: out.loss,
        logits: out.logits,
        bn: out.bn,
    })
}

/// ||(t_1, ..., t_n)||_2 over all tensors: sqrt(sum_i sum t_i^2) (per-tensor squared norms
/// as clip_grad_norm forms them: sqrt then square).
fn total_norm(g: &mut Graph, ts: &[NodeId], per_tensor_sqrt: bool) -> R<NodeId> {
    let mut acc: Option<NodeId> = None;
    for &t in ts {
        let sq = g.square(t)?;
        let mut s = g.sum_all(sq)?;
        if per_tensor_sqrt {
            let n = g.unary(crate::graph::UnaryOp::Sqrt, s)?;
            s = g.square(n)?;
        }
        acc = Some(match acc {
            None => s,
            Some(a) => g.add2(a, s)?,
        });
    }
    let sum = match acc {
        Some(a) => a,
        None => g.scalar(0.0)?,
    };
    g.unary(crate::graph::UnaryOp::Sqrt, sum)
}

impl StepGraph {
    /// The step for train batches of shape `train_shape` and search batches of `valid_shape`.
    pub fn build(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        order: Order,
        h: &StepHyper,
    ) -> R<StepGraph> {
        let mut g = Graph::new();
        let classes = cfg.num_classes;
        let train = (
            g.input("train/x", train_shape.to_vec())?,
            g.input("train/onehot", [train_shape[0], classes])?,
        );
        let valid = (
            g.input("valid/x", valid_shape.to_vec())?,
            g.input("valid/onehot", [valid_shape[0], classes])?,
        );
        let k = cfg.k();
        let alpha = [
            g.input("alpha/normal", [k, 8])?,
            g.input("alpha/reduce", [k, 8])?,
        ];
        let lr = g.input("lr", Shape::scalar())?;
        let step_size = g.input("adam/step_size", Shape::scalar())?;
        let bc2_sqrt = g.input("adam/bc2_sqrt", Shape::scalar())?;
        let names = weight_list(cfg)?;
        let mut w = Vec::with_capacity(names.len());
        let mut buf = Vec::with_capacity(names.len());
        for (n, s) in &names {
            w.push(g.input(n.clone(), s.clone())?);
            buf.push(g.input(format!("sgd_buf/{n}"), s.clone())?);
        }
        let at = |nodes: &[NodeId]| -> HashMap<String, NodeId> {
            names
                .iter()
                .zip(nodes)
                .map(|((n, _), &id)| (n.clone(), id))
                .collect()
        };
        let w_map = at(&w);
        let mu = g.scalar(h.momentum)?;
        let lambda = g.scalar(h.weight_decay)?;
        let mut bn_runs: Vec<Vec<BnRecord>> = Vec::new();

        // 1. The architecture gradient.
        // The weights the architect step leaves: w, or the second order's in-place restore.
        let mut w_after = w.clone();
        let (g_alpha, loss_valid) = match order {
            Order::First => {
                let nv = net_at(&mut g, cfg, valid, alpha, &w_map)?;
                let ga = autodiff::grad(&mut g, nv.loss, &alpha)?;
                bn_runs.push(nv.bn);
                ([ga[0], ga[1]], nv.loss)
            }
            Order::Second | Order::Exact => {
                let nt = net_at(&mut g, cfg, train, alpha, &w_map)?;
                let gw = autodiff::grad(&mut g, nt.loss, &w)?;
                bn_runs.push(nt.bn);
                // w' = w - xi ((mu buf) + (g + lambda w)), xi = lr: the host's operation order.
                let mut wp = Vec::with_capacity(w.len());
                for i in 0..w.len() {
                    let decay = g.mul(w[i], lambda)?;
                    let dtheta = g.add2(gw[i], decay)?;
                    let m = g.mul(buf[i], mu)?;
                    let step = g.add2(m, dtheta)?;
                    let step = g.mul(step, lr)?;
                    wp.push(g.sub(w[i], step)?);
                }
                let nv = net_at(&mut g, cfg, valid, alpha, &at(&wp))?;
                if order == Order::Exact {
                    let ga = autodiff::grad(&mut g, nv.loss, &alpha)?;
                    ([ga[0], ga[1]], nv.loss)
                } else {
                    // The partial derivatives at (w', alpha): w' is held (it depends on
                    // alpha through grad_w L_train; the exact order keeps that path).
                    let mut wrt = wp.clone();
                    wrt.extend(alpha);
                    let grads = autodiff::grad_holding(&mut g, nv.loss, &wrt, &wp)?;
                    let (v, ga) = grads.split_at(wp.len());
                    // R = 0.01 / ||v||, w+ = w + R v, w- = w+ + (-2R) v.
                    let norm_v = total_norm(&mut g, v, false)?;
                    let scale = g.scalar(FD_SCALE)?;
                    let r = g.div(scale, norm_v)?;
                    let minus_two = g.scalar(-2.0)?;
                    let m2r = g.mul(minus_two, r)?;
                    // The reference then adds R v back in place: ((w + R v) - 2R v) + R v,
                    // which the weight step starts from (architect::fd_mixed_hvp).
                    let (mut wplus, mut wminus) = (Vec::new(), Vec::new());
                    for i in 0..w.len() {
                        let rv = g.mul(v[i], r)?;
                        let p = g.add2(w[i], rv)?;
                        let m2rv = g.mul(v[i], m2r)?;
                        let m = g.add2(p, m2rv)?;
                        w_after[i] = g.add2(m, rv)?;
                        wminus.push(m);
                        wplus.push(p);
                    }
                    // w+- are points, held constant (through v they depend on alpha).
                    let np = net_at(&mut g, cfg, train, alpha, &at(&wplus))?;
                    let gp = autodiff::grad_holding(&mut g, np.loss, &alpha, &wplus)?;
                    bn_runs.push(np.bn);
                    let nm = net_at(&mut g, cfg, train, alpha, &at(&wminus))?;
                    let gm = autodiff::grad_holding(&mut g, nm.loss, &alpha, &wminus)?;
                    bn_runs.push(nm.bn);
                    let two = g.scalar(2.0)?;
                    let two_r = g.mul(two, r)?;
                    let mut out = [ga[0], ga[1]];
                    for c in 0..2 {
                        let d = g.sub(gp[c], gm[c])?;
                        let hvp = g.div(d, two_r)?;
                        let xi_hvp = g.mul(hvp, lr)?;
                        out[c] = g.sub(ga[c], xi_hvp)?;
                    }
                    (out, nv.loss)
                }
            }
        };

        // 2. Adam on alpha, in PyTorch's order of operations (optim::Adam). An alpha no cell
        // uses (alphas_normal when every cell reduces) has no gradient in PyTorch, so Adam
        // leaves it and its moments as they are.
        let mut assign = Vec::new();
        let lambda_a = g.scalar(h.arch_weight_decay)?;
        let w1 = 1.0 - h.beta1;
        let b2 = g.scalar(h.beta2)?;
        let c2 = g.scalar(1.0 - h.beta2)?;
        let eps = g.scalar(h.adam_eps)?;
        let neg_step_size = g.unary(crate::graph::UnaryOp::Neg, step_size)?;
        let used = cfg.alphas_used();
        let mut alpha_new = alpha;
        for (c, cell) in ["normal", "reduce"].into_iter().enumerate() {
            if !used[c] {
                continue;
            }
            let m = g.input(format!("adam_m/{cell}"), [k, 8])?;
            let v = g.input(format!("adam_v/{cell}"), [k, 8])?;
            let decay = g.mul(alpha[c], lambda_a)?;
            let gr = g.add2(g_alpha[c], decay)?;
            // m = lerp(m, g, 1 - b1) (optim::lerp).
            let diff = g.sub(gr, m)?;
            let m_new = if w1.abs() < 0.5 {
                let w1 = g.scalar(w1)?;
                let step = g.mul(w1, diff)?;
                g.add2(m, step)?
            } else {
                let one_minus_w1 = g.scalar(1.0 - w1)?;
                let step = g.mul(diff, one_minus_w1)?;
                g.sub(gr, step)?
            };
            // v = b2 v + ((1 - b2) g) g.
            let vb = g.mul(v, b2)?;
            let cg = g.mul(c2, gr)?;
            let cgg = g.mul(cg, gr)?;
            let v_new = g.add2(vb, cgg)?;
            // alpha + (-step_size m) / (sqrt(v) / sqrt(1 - b2^t) + eps).
            let sq = g.unary(crate::graph::UnaryOp::Sqrt, v_new)?;
            let sq = g.div(sq, bc2_sqrt)?;
            let denom = g.add2(sq, eps)?;
            let num = g.mul(neg_step_size, m_new)?;
            let upd = g.div(num, denom)?;
            alpha_new[c] = g.add2(alpha[c], upd)?;
            assign.push((m_new, format!("adam_m/{cell}")));
            assign.push((v_new, format!("adam_v/{cell}")));
            assign.push((alpha_new[c], format!("alpha/{cell}")));
        }

        // 3. The weight step at alpha', from the weights the architect step left.
        // alpha' and those weights are values here: held, so no derivative flows from them
        // back to w.
        let nw = net_at(&mut g, cfg, train, alpha_new, &at(&w_after))?;
        let mut held = w_after.clone();
        held.extend(alpha_new);
        let gw = autodiff::grad_holding(&mut g, nw.loss, &w_after, &held)?;
        bn_runs.push(nw.bn);
        let (grad_norm, sgd) = clip_and_sgd(
            &mut g,
            &names,
            (&w_after, &buf),
            &gw,
            lr,
            (h.momentum, h.weight_decay, h.grad_clip),
        )?;
        assign.extend(sgd);

        // 4. BN running statistics, every forward in order.
        let bn_updates = bn_runs.len();
        assign.extend(running_stats(&mut g, &bn_runs)?);
        Ok(StepGraph {
            graph: g,
            order,
            assign,
            loss_train: nw.loss,
            logits_train: nw.logits,
            loss_valid,
            grad_norm,
            alpha_new,
            bn_updates,
        })
    }
}

/// Gradient clipping and the SGD step as graph nodes (`clip_grad_norm` then `Sgd::step`, in
/// their operation order): N = sqrt(sum_i sqrt(sum g_i^2)^2), the factor
/// min(max_norm / (N + 1e-6), 1) built as -max(-coef, -1) (exactly coef below 1, exactly 1
/// otherwise: the host's branch), buf' = buf mu + (g factor + w lambda), w' = w - buf' lr.
/// `names` are the weights' variable names, `(w, buf)` their input nodes, the last argument
/// (momentum, weight decay, max_norm). Returns N and the assignments w' -> name,
/// buf' -> `sgd_buf/<name>`.
pub fn clip_and_sgd(
    g: &mut Graph,
    names: &[(String, Vec<usize>)],
    (w, buf): (&[NodeId], &[NodeId]),
    grads: &[NodeId],
    lr: NodeId,
    (momentum, weight_decay, grad_clip): (f64, f64, f64),
) -> R<(NodeId, Vec<(NodeId, String)>)> {
    let grad_norm = total_norm(g, grads, true)?;
    let tiny = g.scalar(1e-6)?;
    let den = g.add2(grad_norm, tiny)?;
    let max_norm = g.scalar(grad_clip)?;
    let coef = g.div(max_norm, den)?;
    let neg_coef = g.neg(coef)?;
    let minus_one = g.scalar(-1.0)?;
    let neg_factor = g.binary(crate::graph::BinaryOp::Max, neg_coef, minus_one)?;
    let factor = g.neg(neg_factor)?;
    let mu = g.scalar(momentum)?;
    let lambda = g.scalar(weight_decay)?;
    let mut assign = Vec::with_capacity(2 * names.len());
    for (i, (n, _)) in names.iter().enumerate() {
        let gi = g.mul(grads[i], factor)?;
        let decay = g.mul(w[i], lambda)?;
        let d = g.add2(gi, decay)?;
        let mb = g.mul(buf[i], mu)?;
        let b_new = g.add2(mb, d)?;
        let step = g.mul(b_new, lr)?;
        let w_new = g.sub(w[i], step)?;
        assign.push((w_new, n.clone()));
        assign.push((b_new, format!("sgd_buf/{n}")));
    }
    Ok((grad_norm, assign))
}

/// BN running statistics as graph nodes (`update_running_stats` per forward, in order):
/// r <- (1 - 0.1) r + 0.1 b, the variance unbiased by m / (m - 1). Reads the inputs
/// `<prefix>.running_mean|var` and returns their final values' assignments.
pub fn running_stats(g: &mut Graph, runs: &[Vec<BnRecord>]) -> R<Vec<(NodeId, String)>> {
    let keep = g.scalar(1.0 - BN_MOMENTUM)?;
    let take = g.scalar(BN_MOMENTUM)?;
    let mut running: HashMap<String, (NodeId, NodeId)> = HashMap::new();
    let mut order_seen: Vec<String> = Vec::new();
    for run in runs {
        for rec in run {
            let c = g.shape(rec.mean).numel();
            let p = rec.prefix.clone();
            let (rm, rv) = match running.get(&p) {
                Some(&pair) => pair,
                None => {
                    order_seen.push(p.clone());
                    (
                        g.input(format!("{p}.running_mean"), [c])?,
                        g.input(format!("{p}.running_var"), [c])?,
                    )
                }
            };
            let unbias = rec.count as f64 / (rec.count as f64 - 1.0).max(1.0);
            let mean = g.reshape(rec.mean, [c])?;
            let var = g.reshape(rec.var, [c])?;
            let a = g.mul(keep, rm)?;
            let b = g.mul(take, mean)?;
            let rm_new = g.add2(a, b)?;
            let vu = g.scale(var, unbias)?;
            let a = g.mul(keep, rv)?;
            let b = g.mul(take, vu)?;
            let rv_new = g.add2(a, b)?;
            running.insert(p, (rm_new, rv_new));
        }
    }
    let mut assign = Vec::with_capacity(2 * order_seen.len());
    for p in order_seen {
        let (rm, rv) = running[&p];
        assign.push((rm, format!("{p}.running_mean")));
        assign.push((rv, format!("{p}.running_var")));
    }
    Ok(assign)
}

/// Adam's first and second moments, one array per cell type (normal, reduce).
pub type AdamMoments<'a> = (&'a [ArrayD<f64>], &'a [ArrayD<f64>]);

/// Upload a search's whole state as the variables a [`StepGraph`] reads: weights and BN
/// buffers (num_batches_tracked stays on the host) by state_dict name, both alphas, the SGD
/// buffers (`sgd_buf/<weight>`, zeros when `sgd_buf` is None: PyTorch's absent buffer) and the
/// Adam moments (`adam_m|adam_v/<cell>`, zeros when None), replacing any variables there were.
pub fn upload_state<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    layout: &Layout,
    state: &State,
    sgd_buf: Option<&[ArrayD<f64>]>,
    adam: Option<AdamMoments<'_>>,
) -> Result<(), ExecError> {
    exec.clear_vars();
    let cast = |a: &ArrayD<f64>| a.mapv(T::of);
    let mut weight = 0;
    for (name, _, kind) in &layout.entries {
        if matches!(kind, Kind::NumBatchesTracked) {
            continue;
        }
        let value = &state.tensors[name];
        exec.set_var(name, &cast(value))?;
        if kind.trainable() {
            let b = match sgd_buf {
                Some(b) => cast(&b[weight]),
                None => ArrayD::zeros(value.raw_dim()),
            };
            exec.set_var(&format!("sgd_buf/{name}"), &b)?;
            weight += 1;
        }
    }
    let alphas = [&state.alpha_normal, &state.alpha_reduce];
    for (c, cell) in ["normal", "reduce"].into_iter().enumerate() {
        exec.set_var(&format!("alpha/{cell}"), &cast(alphas[c]))?;
        let (m, v) = match adam {
            Some((m, v)) => (cast(&m[c]), cast(&v[c])),
            None => (
                ArrayD::zeros(alphas[c].raw_dim()),
                ArrayD::zeros(alphas[c].raw_dim()),
            ),
        };
        exec.set_var(&format!("adam_m/{cell}"), &m)?;
        exec.set_var(&format!("adam_v/{cell}"), &v)?;
    }
    Ok(())
}
