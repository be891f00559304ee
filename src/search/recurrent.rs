//! The recurrent half's architecture gradient, exactly as the reference's rnn/architect.py
//! computes it (RNN_REFERENCE_NOTES.md section 5), and the two derivatives it approximates,
//! as pieces of a graph built from the same parts as the conv half ([`super::architect`]:
//! the unrolled step, the central-difference and exact mixed HVPs; [`crate::step::optim`]:
//! the clip coefficient).
//!
//! With g = grad_w L_train(w, alpha) over the 11 parameters (the tied embedding E first),
//! c = clip / (||g|| + 1e-6) uncapped and g_c = min(1, c) g:
//!
//! * first order: grad_alpha L_val(w, alpha);
//! * `second`, the reference's formula: the unrolled step w' = w - eta (g_c + lambda w) on
//!   every tensor but E (E' = E: the tied-weight quirk of `_construct_model_from_theta`),
//!   v = grad_w' L_val(w', alpha) over all 11 tensors (dE included) clipped to norm `clip`,
//!   H v by central differences at w along v with R = 0.01 / ||v|| on the train batch, and
//!   grad = partial - (eta c) H v with the *uncapped* c;
//! * `exact`: d/dalpha L_val(w'(alpha), alpha) by autodiff through that same unrolled step
//!   (E fixed, min(1, c(alpha)) differentiated);
//! * `intended`: the same with E moved too (w'_E = E - eta (g_c,E + lambda E)).
//!
//! Derivations and the measured size of each quirk: proofs/recurrent-architect.md.

use super::architect::{
    exact_mixed_hvp, fd_mixed_hvp, second_order, unrolled_weights, Paper, FD_SCALE,
};
use crate::autodiff;
use crate::darts::names::LR;
use crate::darts::ops::BnRecord;
use crate::darts::rnn::batch_file::RnnBatchFile;
use crate::darts::rnn::model::{self, Cell, LmBatch, LmOut, Masks};
use crate::darts::rnn::state::{RnnConfig, RnnState};
use crate::darts::rnn::{names, PRIMITIVES, ROWS};
use crate::exec::{Feeds, Scalar};
use crate::graph::{Graph, NodeId, Shape};
use crate::step::optim::{clip_coefficient, Clip};
use ndarray::{ArrayD, IxDyn};
use std::collections::HashMap;

use crate::graph::Result as R;

/// The graph inputs of the recurrent architect: both batches, alpha [36, 5], the learning
/// rate eta, and the 11 parameters by their state_dict names (named_parameters order).
pub struct RnnInputs {
    pub cfg: RnnConfig,
    /// relu replaced by softplus (the smooth variant for convergence tests).
    pub smooth: bool,
    pub train: LmBatch,
    pub valid: LmBatch,
    pub alpha: NodeId,
    pub lr: NodeId,
    pub names: Vec<(String, Vec<usize>)>,
    pub w: Vec<NodeId>,
}

impl RnnInputs {
    /// Inputs for a train batch of T x B = `train` and a valid batch of `valid`.
    pub fn declare(
        g: &mut Graph,
        cfg: RnnConfig,
        smooth: bool,
        train: (usize, usize),
        valid: (usize, usize),
    ) -> R<RnnInputs> {
        let tb = LmBatch::declare(g, &cfg, names::TRAIN, train)?;
        let vb = LmBatch::declare(g, &cfg, names::VALID, valid)?;
        let alpha = g.input(names::ALPHA, [ROWS, PRIMITIVES.len()])?;
        let lr = g.input(LR, Shape::scalar())?;
        let names: Vec<(String, Vec<usize>)> = cfg
            .search_layout()
            .weights()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        let w = names
            .iter()
            .map(|(n, s)| g.input(n.clone(), s.clone()))
            .collect::<R<Vec<_>>>()?;
        Ok(RnnInputs {
            cfg,
            smooth,
            train: tb,
            valid: vb,
            alpha,
            lr,
            names,
            w,
        })
    }

    /// The language model (train mode) on `batch` at the parameters `w` (named_parameters
    /// order), without dropout.
    pub fn lm_at(&self, g: &mut Graph, batch: &LmBatch, w: &[NodeId]) -> R<LmOut> {
        self.lm_masked(g, batch, w, &Masks::default())
    }

    /// [`RnnInputs::lm_at`] with dropout masks.
    pub fn lm_masked(
        &self,
        g: &mut Graph,
        batch: &LmBatch,
        w: &[NodeId],
        masks: &Masks,
    ) -> R<LmOut> {
        self.lm(g, batch, (w, self.alpha), masks)
    }

    /// The language model (train mode) at the parameters `w` and the architecture `alpha`.
    pub fn lm(
        &self,
        g: &mut Graph,
        batch: &LmBatch,
        (w, alpha): (&[NodeId], NodeId),
        masks: &Masks,
    ) -> R<LmOut> {
        let map: HashMap<String, NodeId> = self
            .names
            .iter()
            .zip(w)
            .map(|((n, _), &id)| (n.clone(), id))
            .collect();
        let cell = Cell::Search {
            alpha,
            smooth: self.smooth,
        };
        model::forward(g, &self.cfg, cell, &map, batch, masks, true)
    }
}

/// The reference's unrolled step (`_compute_unrolled_model`): the clip numbers of g and
/// w' = w - eta (g_c + lambda w), with E (index 0) left as it is unless `move_embedding`.
pub struct Unrolled {
    pub clip: Clip,
    pub w_prime: Vec<NodeId>,
}

pub fn reference_unrolled(
    g: &mut Graph,
    (w, grad): (&[NodeId], &[NodeId]),
    eta: NodeId,
    (clip, weight_decay): (f64, f64),
    move_embedding: bool,
) -> R<Unrolled> {
    let c = clip_coefficient(g, grad, clip)?;
    let clipped = grad
        .iter()
        .map(|&gi| g.mul(gi, c.factor))
        .collect::<R<Vec<_>>>()?;
    let from = usize::from(!move_embedding);
    let mut w_prime = w[..from].to_vec();
    w_prime.extend(unrolled_weights(
        g,
        (&w[from..], &clipped[from..]),
        None,
        eta,
        weight_decay,
    )?);
    Ok(Unrolled { clip: c, w_prime })
}

/// v clipped as the reference clips it (`_clip(dtheta, clip)`, coefficient discarded).
pub fn clip_direction(g: &mut Graph, v: &[NodeId], clip: f64) -> R<Vec<NodeId>> {
    let c = clip_coefficient(g, v, clip)?;
    v.iter().map(|&vi| g.mul(vi, c.factor)).collect()
}

/// The reference's second-order pieces at one point: everything `darts gradients --space
/// rnn` reports and a search step's architect needs.
pub struct RnnSecondOrder {
    pub train: LmOut,
    pub grad_w: Vec<NodeId>,
    pub unrolled: Unrolled,
    pub valid_unrolled: LmOut,
    pub v: Vec<NodeId>,
    pub partial: NodeId,
    pub hvp_fd: NodeId,
    pub r: NodeId,
    /// The weights the in-place FD leaves on the model: ((w + R v) - 2R v) + R v.
    pub restored: Vec<NodeId>,
    pub grad: NodeId,
    /// BN records of the model's forwards in order: the train forward, w + R v, w - R v.
    pub bn_runs: Vec<Vec<BnRecord>>,
}

/// The reference's second-order architecture gradient (architect.py
/// `_backward_step_unrolled`), with the hyperparameters (clip, weight decay) and the dropout
/// masks of its four forwards in order (train at w, valid at w', train at w + R v, train at
/// w - R v; the reference draws fresh ones at each).
pub fn reference_second_order(
    g: &mut Graph,
    inp: &RnnInputs,
    (clip, weight_decay): (f64, f64),
    masks: &[Masks; 4],
) -> R<RnnSecondOrder> {
    let w = &inp.w;
    let train = inp.lm_masked(g, &inp.train, w, &masks[0])?;
    let grad_w = autodiff::grad(g, train.loss, w)?;
    let unrolled = reference_unrolled(g, (w, &grad_w), inp.lr, (clip, weight_decay), false)?;
    let valid_unrolled = inp.lm_masked(g, &inp.valid, &unrolled.w_prime, &masks[1])?;
    // Partial derivatives at (w', alpha): w' held (the exact variant keeps that path).
    let mut wrt = unrolled.w_prime.clone();
    wrt.push(inp.alpha);
    let grads = autodiff::grad_holding(g, valid_unrolled.loss, &wrt, &unrolled.w_prime)?;
    let (v_raw, partial) = grads.split_at(w.len());
    let v = clip_direction(g, v_raw, clip)?;
    let mut fd_masks = masks[2..].iter();
    let mut loss_at = |g: &mut Graph, at: &[NodeId]| -> R<(NodeId, Vec<BnRecord>)> {
        let m = fd_masks.next().copied().unwrap_or_default();
        let o = inp.lm_masked(g, &inp.train, at, &m)?;
        Ok((o.loss, o.bn))
    };
    let fd = fd_mixed_hvp(g, &Paper, &mut loss_at, &[inp.alpha], w, &v, FD_SCALE)?;
    let xi = g.mul(inp.lr, unrolled.clip.coef)?;
    let grad = second_order(g, &[partial[0]], &fd.hvp, xi)?[0];
    let bn_runs = vec![train.bn.clone(), fd.bn[0].clone(), fd.bn[1].clone()];
    Ok(RnnSecondOrder {
        train,
        grad_w,
        unrolled,
        valid_unrolled,
        v,
        partial: partial[0],
        hvp_fd: fd.hvp[0],
        r: fd.r,
        restored: fd.restored,
        grad,
        bn_runs,
    })
}

/// The graph of `darts gradients --space rnn` and its outputs, keyed as in the output npz
/// (`<key>/<parameter>` for parameter-shaped tensors, `<key>/recurrent` for alpha-shaped).
pub struct RnnGradientsGraph {
    pub graph: Graph,
    pub outputs: Vec<(String, NodeId)>,
    /// R = 0.01 / ||v|| of the finite difference.
    pub r: NodeId,
}

/// The feeds of an [`RnnInputs`] graph without dropout: both batches (ids, one-hot targets,
/// hidden states), the 11 parameters and alpha of `state`, and the learning rate `eta`.
pub fn rnn_feeds<T: Scalar>(
    cfg: &RnnConfig,
    state: &RnnState,
    batches: &RnnBatchFile,
    eta: f64,
) -> Feeds<T> {
    let mut f = Feeds::<T>::new();
    for (which, b) in [
        (names::TRAIN, &batches.train),
        (names::VALID, &batches.valid),
    ] {
        f.insert(names::of(which, names::X), b.x.mapv(T::of));
        f.insert(
            names::of(which, names::TARGET),
            b.onehot(cfg.ntoken).mapv(T::of),
        );
        f.insert(names::of(which, names::HIDDEN), b.hidden.mapv(T::of));
    }
    for (name, _, kind) in &cfg.search_layout().entries {
        if kind.trainable() {
            f.insert(name.clone(), state.tensors[name].mapv(T::of));
        }
    }
    f.insert(names::ALPHA, state.alpha.mapv(T::of));
    f.insert(LR, ArrayD::from_elem(IxDyn(&[]), T::of(eta)));
    f
}

impl RnnGradientsGraph {
    /// For a train batch of T x B = `train` and a valid batch of `valid`, no dropout.
    pub fn build(
        cfg: RnnConfig,
        smooth: bool,
        train: (usize, usize),
        valid: (usize, usize),
        (clip, weight_decay): (f64, f64),
    ) -> R<RnnGradientsGraph> {
        let mut g = Graph::new();
        let inp = RnnInputs::declare(&mut g, cfg, smooth, train, valid)?;
        let mut out: Vec<(String, NodeId)> = Vec::new();
        let weights = |out: &mut Vec<(String, NodeId)>, key: &str, nodes: &[NodeId]| {
            for ((n, _), &id) in inp.names.iter().zip(nodes) {
                out.push((format!("{key}/{n}"), id));
            }
        };
        let alpha_key = |key: &str| format!("{key}/recurrent");

        let so =
            reference_second_order(&mut g, &inp, (clip, weight_decay), &[Masks::default(); 4])?;
        out.push(("loss_train".into(), so.train.loss));
        weights(&mut out, "grad_w_train", &so.grad_w);
        let train_alpha = autodiff::grad(&mut g, so.train.loss, &[inp.alpha])?[0];
        out.push((alpha_key("grad_alpha_train"), train_alpha));
        // First order on the valid batch at w.
        let nv = inp.lm_at(&mut g, &inp.valid, &inp.w)?;
        let first = autodiff::grad(&mut g, nv.loss, &[inp.alpha])?[0];
        out.push(("loss_valid".into(), nv.loss));
        out.push((alpha_key("grad_alpha_first"), first));
        out.push(("clip_coef_train".into(), so.unrolled.clip.coef));
        weights(&mut out, "unrolled_w", &so.unrolled.w_prime);
        out.push(("loss_valid_unrolled".into(), so.valid_unrolled.loss));
        weights(&mut out, "v", &so.v);
        out.push((alpha_key("grad_alpha_unrolled_partial"), so.partial));
        out.push(("fd_r".into(), so.r));
        out.push((alpha_key("hvp_fd"), so.hvp_fd));
        let hvp_exact = exact_mixed_hvp(&mut g, &so.grad_w, &so.v, &[inp.alpha])?[0];
        out.push((alpha_key("hvp_exact"), hvp_exact));
        out.push((alpha_key("grad_alpha_second"), so.grad));
        // Exact: autodiff through the reference's unrolled step (E fixed).
        let exact = autodiff::grad(&mut g, so.valid_unrolled.loss, &[inp.alpha])?[0];
        out.push((alpha_key("grad_alpha_unrolled_exact"), exact));
        // Intended: every tensor moved, E included.
        let moved = reference_unrolled(
            &mut g,
            (&inp.w, &so.grad_w),
            inp.lr,
            (clip, weight_decay),
            true,
        )?;
        let ni = inp.lm_at(&mut g, &inp.valid, &moved.w_prime)?;
        let intended = autodiff::grad(&mut g, ni.loss, &[inp.alpha])?[0];
        out.push((alpha_key("grad_alpha_unrolled_intended"), intended));
        out.push(("hidden_train_next".into(), so.train.hidden_next));
        out.push(("hidden_valid_next_first".into(), nv.hidden_next));
        out.push((
            "hidden_valid_next_second".into(),
            so.valid_unrolled.hidden_next,
        ));
        Ok(RnnGradientsGraph {
            graph: g,
            outputs: out,
            r: so.r,
        })
    }
}
