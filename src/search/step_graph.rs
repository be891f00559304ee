//! One whole search iteration as one graph: the only implementation of a search step, on
//! every executor and in every precision. The executor keeps every piece of state in its
//! variables (on the GPU in device memory), so a step moves only its two batches, a few
//! scalars and a handful of read-back numbers.
//!
//! The graph computes one iteration of the reference's search loop (train_search.py;
//! derivation and operation order: proofs/resident-search-step.md):
//!
//! 1. the architecture gradient g_alpha, by [`Order`]:
//!    first: grad_alpha L_val(w, alpha) (eq. 6 with xi = 0);
//!    second: grad_alpha L_val(w', alpha) - xi (g+ - g-) / 2R with w' = w - xi (mu buf +
//!    grad_w L_train(w, alpha) + lambda w), v = grad_w' L_val(w', alpha), R = 0.01 / ||v||,
//!    w+ = w + R v, w- = w+ - 2R v, g+- = grad_alpha L_train(w+-, alpha) (eqs. 7-8);
//!    exact: d/dalpha L_val(w'(alpha), alpha) by autodiff through the unrolled step;
//! 2. Adam with coupled decay on alpha ([`AdamHyper::update`]); an alpha no cell uses is left
//!    as it is (PyTorch skips a parameter without a gradient);
//! 3. the weight step at the new alpha, from the weights the architect step left (w; in the
//!    second order the reference's in-place restore ((w + R v) - 2R v) + R v, which is w up to
//!    an ulp): g = grad_w L_train(w, alpha'), clipped by total norm, then SGD with momentum
//!    and coupled decay ([`clip_and_sgd`]);
//! 4. BN running statistics absorbing every train-mode forward the reference runs on the
//!    model, in order ([`running_stats`]): first order the search batch at w; second order
//!    the train batch at w, w + R v, w - R v; exact the train batch at w; then the weight
//!    step's forward.
//!
//! Where a later stage reads a value computed from earlier ones (w' and w+- in the second
//! order, alpha' in the weight step), the gradients hold it constant
//! ([`autodiff::grad_holding`]): the reference sees those values as numbers. Only the exact
//! order differentiates through w'(alpha), as it must.
//!
//! Variables ([`crate::exec::Executor`], names in [`names`]): weights and BN buffers by their
//! state_dict names, both alphas, the SGD buffers and the Adam moments. Feeds: both batches,
//! the learning rate, and Adam's two scalars per alpha. A zero momentum buffer gives the same
//! numbers as PyTorch's absent one (0 mu + d = d exactly).

use super::architect::FD_SCALE;
use super::architect::{fd_mixed_hvp_conv, net_at, second_order, Order, Paper, Pieces, StepInputs};
use crate::autodiff;
use crate::darts::names;
use crate::darts::network::SearchConfig;
use crate::darts::ops::BnRecord;
use crate::darts::params::{Kind, Layout, State};
use crate::exec::{ExecError, Executor, Scalar};
use crate::graph::{Graph, NodeId, Shape};
use crate::step::optim::{clip_and_sgd, running_stats, AdamHyper, SgdHyper};
use ndarray::ArrayD;

use crate::graph::Result as R;

/// The constants of one search's optimisers (fixed for a run; the learning rate is fed).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepHyper {
    pub sgd: SgdHyper,
    pub adam: AdamHyper,
}

impl StepHyper {
    /// The reference's search settings (train_search.py): momentum 0.9, weight decay 3e-4,
    /// clip 5, and the architect's Adam (lr 3e-4, decay 1e-3, betas (0.5, 0.999), eps 1e-8).
    pub fn reference() -> Self {
        StepHyper {
            sgd: SgdHyper {
                momentum: 0.9,
                weight_decay: 3e-4,
                grad_clip: 5.0,
            },
            adam: AdamHyper::architect(3e-4, 1e-3),
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
    /// ||v|| of the second order's finite difference (R = 0.01 / ||v||); None otherwise.
    pub norm_v: Option<NodeId>,
    /// The second order's difference quotients (g+ - g-) / 2R [normal, reduce]; None
    /// otherwise.
    pub fd_hvp: Option<[NodeId; 2]>,
    /// The weights the weight step starts from, in weight order: the second order's restored
    /// point ((w + R v) - 2R v) + R v, else w itself.
    pub w_after: Vec<NodeId>,
    /// The updated alphas [normal, reduce].
    pub alpha_new: [NodeId; 2],
    /// Train-mode forwards whose statistics the running averages absorb, per step (each adds
    /// one to every BN's num_batches_tracked).
    pub bn_updates: usize,
    /// Which alphas Adam updates ([`SearchConfig::alphas_used`]).
    pub alphas_used: [bool; 2],
}

/// The architecture gradient of one step, the loss it saw, the weights it leaves and the BN
/// records of its forwards on the model.
struct ArchPart {
    grad: [NodeId; 2],
    loss_valid: NodeId,
    w_after: Vec<NodeId>,
    norm_v: Option<NodeId>,
    fd_hvp: Option<[NodeId; 2]>,
    bn_runs: Vec<Vec<BnRecord>>,
}

fn arch_part(
    g: &mut Graph,
    pieces: &dyn Pieces,
    cfg: &SearchConfig,
    inp: &StepInputs,
    buf: &[NodeId],
    order: Order,
    h: &StepHyper,
) -> R<ArchPart> {
    let (alpha, w) = (inp.alpha, &inp.w);
    if order == Order::First {
        let nv = net_at(g, cfg, inp.valid, alpha, inp.at(w))?;
        let ga = autodiff::grad(g, nv.loss, &alpha)?;
        return Ok(ArchPart {
            grad: [ga[0], ga[1]],
            loss_valid: nv.loss,
            w_after: w.clone(),
            norm_v: None,
            fd_hvp: None,
            bn_runs: vec![nv.bn],
        });
    }
    let nt = net_at(g, cfg, inp.train, alpha, inp.at(w))?;
    let gw = autodiff::grad(g, nt.loss, w)?;
    let (mu, lambda) = (h.sgd.momentum, h.sgd.weight_decay);
    let w_prime = pieces.unrolled(g, (w, &gw), Some((buf, mu)), inp.lr, lambda)?;
    let nv = net_at(g, cfg, inp.valid, alpha, inp.at(&w_prime))?;
    if order == Order::Exact {
        let ga = autodiff::grad(g, nv.loss, &alpha)?;
        return Ok(ArchPart {
            grad: [ga[0], ga[1]],
            loss_valid: nv.loss,
            w_after: w.clone(),
            norm_v: None,
            fd_hvp: None,
            bn_runs: vec![nt.bn],
        });
    }
    // The partial derivatives at (w', alpha): w' is held (it depends on alpha through
    // grad_w L_train; the exact order keeps that path).
    let mut wrt = w_prime.clone();
    wrt.extend(alpha);
    let grads = autodiff::grad_holding(g, nv.loss, &wrt, &w_prime)?;
    let (v, partial) = grads.split_at(w_prime.len());
    let at = pieces.fd_point(w, &w_prime);
    let fd = fd_mixed_hvp_conv(g, pieces, cfg, inp, inp.train, alpha, at, v, FD_SCALE)?;
    let grad = second_order(g, partial, &fd.hvp, inp.lr)?;
    let [bn_plus, bn_minus] = fd.bn;
    Ok(ArchPart {
        grad: [grad[0], grad[1]],
        loss_valid: nv.loss,
        w_after: fd.restored,
        norm_v: Some(fd.norm_d),
        fd_hvp: Some([fd.hvp[0], fd.hvp[1]]),
        bn_runs: vec![nt.bn, bn_plus, bn_minus],
    })
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
        Self::build_with(&Paper, cfg, train_shape, valid_shape, order, h)
    }

    /// [`StepGraph::build`] from the architect's `pieces` (the bug zoo's seam).
    pub fn build_with(
        pieces: &dyn Pieces,
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        order: Order,
        h: &StepHyper,
    ) -> R<StepGraph> {
        let mut g = Graph::new();
        let inp = StepInputs::declare(&mut g, cfg, train_shape, valid_shape)?;
        let buf = inp.momentum_buffers(&mut g)?;

        // 1. The architecture gradient.
        let arch = arch_part(&mut g, pieces, cfg, &inp, &buf, order, h)?;
        let mut bn_runs = arch.bn_runs;

        // 2. Adam on alpha. An alpha no cell uses (alphas_normal when every cell reduces) has
        // no gradient in PyTorch, so Adam leaves it and its moments as they are.
        let mut assign = Vec::new();
        let alphas_used = cfg.alphas_used();
        let k = cfg.k();
        let mut alpha_new = inp.alpha;
        for (c, cell) in names::CELLS.into_iter().enumerate() {
            if !alphas_used[c] {
                continue;
            }
            let m = g.input(names::adam_m(cell), [k, 8])?;
            let v = g.input(names::adam_v(cell), [k, 8])?;
            let step_size = g.input(names::adam_step_size(cell), Shape::scalar())?;
            let bc2_sqrt = g.input(names::adam_bc2_sqrt(cell), Shape::scalar())?;
            let (a, m_new, v_new) = h.adam.update(
                &mut g,
                inp.alpha[c],
                arch.grad[c],
                (m, v),
                step_size,
                bc2_sqrt,
            )?;
            alpha_new[c] = a;
            assign.push((m_new, names::adam_m(cell)));
            assign.push((v_new, names::adam_v(cell)));
            assign.push((a, names::ALPHA[c].to_string()));
        }

        // 3. The weight step at alpha', from the weights the architect step left. alpha' and
        // those weights are values here: held, so no derivative flows from them back to w.
        let nw = net_at(&mut g, cfg, inp.train, alpha_new, inp.at(&arch.w_after))?;
        let mut held = arch.w_after.clone();
        held.extend(alpha_new);
        let gw = autodiff::grad_holding(&mut g, nw.loss, &arch.w_after, &held)?;
        bn_runs.push(nw.bn);
        let (grad_norm, sgd) = clip_and_sgd(
            &mut g,
            &inp.names,
            (&arch.w_after, Some(&buf)),
            &gw,
            inp.lr,
            &h.sgd,
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
            loss_valid: arch.loss_valid,
            grad_norm,
            norm_v: arch.norm_v,
            fd_hvp: arch.fd_hvp,
            w_after: arch.w_after.clone(),
            alpha_new,
            bn_updates,
            alphas_used,
        })
    }
}

/// The optimiser state of a search besides the weights: SGD momentum buffers (one per weight,
/// layout order; None before PyTorch's first step) and Adam's moments and step count per
/// alpha ([normal, reduce]; t = 0 and no moments before an alpha's first step).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimState {
    pub sgd_buf: Option<Vec<ArrayD<f64>>>,
    pub adam_m: [Option<ArrayD<f64>>; 2],
    pub adam_v: [Option<ArrayD<f64>>; 2],
    pub adam_t: [u64; 2],
}

/// Upload a search's whole state as the variables a [`StepGraph`] reads: weights and BN
/// buffers (num_batches_tracked stays on the host) by state_dict name, both alphas, the SGD
/// buffers (zeros where there are none: PyTorch's absent buffer) and the Adam moments (zeros
/// where there are none), replacing any variables there were.
pub fn upload_state<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    layout: &Layout,
    state: &State,
    opt: &OptimState,
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
            let b = match &opt.sgd_buf {
                Some(b) => cast(&b[weight]),
                None => ArrayD::zeros(value.raw_dim()),
            };
            exec.set_var(&names::sgd_buf(name), &b)?;
            weight += 1;
        }
    }
    let alphas = [&state.alpha_normal, &state.alpha_reduce];
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        exec.set_var(names::ALPHA[c], &cast(alphas[c]))?;
        let zeros = || ArrayD::zeros(alphas[c].raw_dim());
        let m = opt.adam_m[c].as_ref().map_or_else(zeros, cast);
        let v = opt.adam_v[c].as_ref().map_or_else(zeros, cast);
        exec.set_var(&names::adam_m(cell), &m)?;
        exec.set_var(&names::adam_v(cell), &v)?;
    }
    Ok(())
}

/// Read a search's state back from the executor's variables (the inverse of
/// [`upload_state`]): weights, BN buffers and alphas into `state`, the SGD buffers and the
/// moments of the alphas Adam has stepped into `opt`. num_batches_tracked is the host's.
pub fn download_state<T: Scalar, E: Executor<T> + ?Sized>(
    exec: &mut E,
    layout: &Layout,
    state: &mut State,
    opt: &mut OptimState,
) -> Result<(), ExecError> {
    let mut get =
        |n: &str| -> Result<ArrayD<f64>, ExecError> { Ok(exec.var(n)?.mapv(|x| x.as_f64())) };
    let mut bufs = Vec::new();
    for (name, _, kind) in &layout.entries {
        if matches!(kind, Kind::NumBatchesTracked) {
            continue;
        }
        state.tensors.insert(name.clone(), get(name)?);
        if kind.trainable() {
            bufs.push(get(&names::sgd_buf(name))?);
        }
    }
    opt.sgd_buf = Some(bufs);
    state.alpha_normal = get(names::ALPHA[0])?;
    state.alpha_reduce = get(names::ALPHA[1])?;
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        if opt.adam_t[c] > 0 {
            opt.adam_m[c] = Some(get(&names::adam_m(cell))?);
            opt.adam_v[c] = Some(get(&names::adam_v(cell))?);
        }
    }
    Ok(())
}
