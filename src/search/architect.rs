//! The architecture gradient three ways (Liu, Simonyan and Yang, ICLR 2019, eqs. 5-8), as
//! pieces of a graph that the search step ([`super::step_graph`]) and `darts gradients`
//! ([`super::gradients`]) assemble:
//!
//! * first order (xi = 0): grad_alpha L_val(w, alpha);
//! * second order as the paper states it: grad_alpha L_val(w', alpha) - xi H v with
//!   w' = w - xi (mu buf + grad_w L_train(w, alpha) + lambda w) ([`unrolled_weights`]),
//!   v = grad_w' L_val(w', alpha), and H v = d2 L_train / (dalpha dw) . v by central
//!   differences at w with R = 0.01 / ||v|| ([`fd_mixed_hvp`]); the audit variant differences
//!   at w' along v + lambda w';
//! * exact: H v by autodiff ([`exact_mixed_hvp`]), and the total derivative of
//!   L_val(w'(alpha), alpha) by autodiff through the unrolled step.
//!
//! Derivations: proofs/architecture-gradient.md and proofs/finite-difference-hvp.md. The
//! host-side re-derivation used to check these graphs is [`crate::check::oracle`].

use crate::autodiff;
use crate::darts::names;
use crate::darts::network::{self, SearchConfig};
use crate::darts::ops::{BnRecord, NetBuilder, ParamSource};
use crate::exec::ExecError;
use crate::graph::{Graph, GraphError, NodeId};
use crate::step::optim::total_norm;
use ndarray::ArrayD;
use std::collections::HashMap;

use crate::graph::Result as R;

#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("building the architecture-gradient graphs: {0}")]
    Graph(#[from] GraphError),
    #[error("running {what}: {source}")]
    Exec {
        what: String,
        #[source]
        source: ExecError,
    },
    #[error("{what}: tensor '{tensor}' holds {value} at flat index {index}")]
    NonFinite {
        what: String,
        tensor: String,
        index: usize,
        value: f64,
    },
    #[error("v = grad_w' L_val(w', alpha) is zero, so eps = 0.01 / ||v|| is undefined")]
    ZeroDirection,
}

/// Which architecture gradient a search step uses.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// xi = 0: grad_alpha L_val(w, alpha).
    First,
    /// The paper's second order: FD mixed HVP at w with eps = 0.01/||v||.
    Second,
    /// Autodiff through the unrolled step.
    Exact,
}

/// The FD step scale of the reference: R = 0.01 / ||v||.
pub const FD_SCALE: f64 = 0.01;

/// The pieces of the architecture step whose porting goes wrong in practice, as one seam:
/// the unrolled step (eq. 6), the point the finite difference is taken at, the norm that
/// sets R, the difference quotient and the direction the weights are restored along. Every
/// production graph is built with [`Paper`], whose methods are these defaults; the audit's
/// bug zoo (`check::bug_zoo`) overrides one method per known porting mistake, so that
/// `darts compare` can be shown to name each one.
pub trait Pieces {
    /// A short name for reports.
    fn name(&self) -> &str {
        "paper"
    }
    /// w' of eq. 6 ([`unrolled_weights`]).
    fn unrolled(
        &self,
        g: &mut Graph,
        w_grad: (&[NodeId], &[NodeId]),
        buf: Option<(&[NodeId], f64)>,
        xi: NodeId,
        weight_decay: f64,
    ) -> R<Vec<NodeId>> {
        unrolled_weights(g, w_grad, buf, xi, weight_decay)
    }
    /// The point of the paper's finite difference (eq. 8): w, not w'.
    fn fd_point<'a>(&self, w: &'a [NodeId], _w_prime: &'a [NodeId]) -> &'a [NodeId] {
        w
    }
    /// ||d||, the 2-norm of all of d concatenated, in R = 0.01 / ||d||.
    fn fd_norm(&self, g: &mut Graph, d: &[NodeId]) -> R<NodeId> {
        total_norm(g, d, false)
    }
    /// (g+ - g-) / (2R).
    fn fd_quotient(&self, g: &mut Graph, diff: NodeId, r: NodeId) -> R<NodeId> {
        let two = g.scalar(2.0)?;
        let two_r = g.mul(two, r)?;
        g.div(diff, two_r)
    }
    /// The direction the weights are moved back along after the difference: d itself.
    fn fd_restore_direction(&self, _g: &mut Graph, d: &[NodeId], _at: &[NodeId]) -> R<Vec<NodeId>> {
        Ok(d.to_vec())
    }
}

/// The architecture step as the paper and the reference compute it.
pub struct Paper;

impl Pieces for Paper {}

/// Weight names (state_dict names, module order) and shapes of a configuration.
pub fn weight_list(cfg: &SearchConfig) -> Result<Vec<(String, Vec<usize>)>, GraphError> {
    Ok(cfg
        .layout()?
        .weights()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect())
}

/// Fail on NaN/Inf, naming the step and the tensor.
pub fn check_finite(what: &str, tensor: &str, a: &ArrayD<f64>) -> Result<(), ArchError> {
    match a.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(ArchError::NonFinite {
            what: what.to_string(),
            tensor: tensor.to_string(),
            index,
            value: a.as_slice().map(|s| s[index]).unwrap_or(f64::NAN),
        }),
    }
}

/// The graph inputs of a search step: both batches (images, one-hot labels), both alphas,
/// the learning rate, and every weight by its state_dict name.
pub struct StepInputs {
    pub train: (NodeId, NodeId),
    pub valid: (NodeId, NodeId),
    pub alpha: [NodeId; 2],
    pub lr: NodeId,
    pub names: Vec<(String, Vec<usize>)>,
    pub w: Vec<NodeId>,
}

impl StepInputs {
    /// Declares the inputs for train batches of shape `train_shape` and search batches of
    /// `valid_shape` ([`names`]).
    pub fn declare(
        g: &mut Graph,
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
    ) -> R<StepInputs> {
        let classes = cfg.num_classes;
        let train = (
            g.input(names::TRAIN_X, train_shape.to_vec())?,
            g.input(names::TRAIN_ONEHOT, [train_shape[0], classes])?,
        );
        let valid = (
            g.input(names::VALID_X, valid_shape.to_vec())?,
            g.input(names::VALID_ONEHOT, [valid_shape[0], classes])?,
        );
        let k = cfg.k();
        let alpha = [
            g.input(names::ALPHA[0], [k, 8])?,
            g.input(names::ALPHA[1], [k, 8])?,
        ];
        let lr = g.input(names::LR, crate::graph::Shape::scalar())?;
        let names = weight_list(cfg)?;
        let w = names
            .iter()
            .map(|(n, s)| g.input(n.clone(), s.clone()))
            .collect::<R<Vec<_>>>()?;
        Ok(StepInputs {
            train,
            valid,
            alpha,
            lr,
            names,
            w,
        })
    }

    /// The SGD momentum buffers as inputs ([`names::sgd_buf`], one per weight, in weight
    /// order): the unrolled step reads them, the weight step updates them.
    pub fn momentum_buffers(&self, g: &mut Graph) -> R<Vec<NodeId>> {
        self.names
            .iter()
            .map(|(n, s)| g.input(names::sgd_buf(n), s.clone()))
            .collect()
    }

    /// Weight name -> node, for a network built at the weights `nodes` (in weight order).
    pub fn at(&self, nodes: &[NodeId]) -> HashMap<String, NodeId> {
        self.names
            .iter()
            .zip(nodes)
            .map(|((n, _), &id)| (n.clone(), id))
            .collect()
    }
}

/// A train-mode search network on one batch at given weights: its loss, logits and BN records
/// (whose batch statistics the running averages absorb).
pub struct Net {
    pub loss: NodeId,
    pub logits: NodeId,
    pub bn: Vec<BnRecord>,
}

/// The search network (eqs. 1-2) on `batch` at `alpha` and the weights `weights` (name ->
/// node), in train mode.
pub fn net_at(
    g: &mut Graph,
    cfg: &SearchConfig,
    batch: (NodeId, NodeId),
    alpha: [NodeId; 2],
    weights: HashMap<String, NodeId>,
) -> R<Net> {
    let mut nb = NetBuilder::search(g, ParamSource::Nodes(weights), cfg.smooth);
    let out = network::build(&mut nb, cfg, batch.0, batch.1, alpha[0], alpha[1])?;
    Ok(Net {
        loss: out.loss,
        logits: out.logits,
        bn: out.bn,
    })
}

/// The unrolled weights (eq. 6 with the reference's momentum and decay terms):
/// w' = w - xi ((mu buf) + (grad + lambda w)), in the reference's operation order;
/// `buf` is zero where PyTorch has no momentum buffer yet (architect.py's bare `except`).
/// Without momentum (`buf` None: the recurrent architect) w' = w - xi (grad + lambda w).
pub fn unrolled_weights(
    g: &mut Graph,
    (w, grad): (&[NodeId], &[NodeId]),
    buf: Option<(&[NodeId], f64)>,
    xi: NodeId,
    weight_decay: f64,
) -> R<Vec<NodeId>> {
    let lambda = g.scalar(weight_decay)?;
    let mu = match buf {
        Some((_, momentum)) => Some(g.scalar(momentum)?),
        None => None,
    };
    let mut w_prime = Vec::with_capacity(w.len());
    for i in 0..w.len() {
        let decay = g.mul(w[i], lambda)?;
        let dtheta = g.add2(grad[i], decay)?;
        let step = match (buf, mu) {
            (Some((b, _)), Some(mu)) => {
                let m = g.mul(b[i], mu)?;
                g.add2(m, dtheta)?
            }
            _ => dtheta,
        };
        let step = g.mul(step, xi)?;
        w_prime.push(g.sub(w[i], step)?);
    }
    Ok(w_prime)
}

/// A network's training loss at given weights, as the finite difference needs it: the loss
/// node and the BN records of its train-mode forward.
pub type LossAt<'a> = dyn FnMut(&mut Graph, &[NodeId]) -> R<(NodeId, Vec<BnRecord>)> + 'a;

/// A central-difference mixed HVP as graph nodes (see [`fd_mixed_hvp`]).
pub struct FdHvp {
    /// (g+ - g-) / 2R, one per alpha.
    pub hvp: Vec<NodeId>,
    /// ||d|| and R = scale / ||d||.
    pub norm_d: NodeId,
    pub r: NodeId,
    /// The point the reference's in-place perturbation leaves: ((w + R d) - 2R d) + R d.
    pub restored: Vec<NodeId>,
    /// The BN records of the forwards at w + R d and w - R d, in that order.
    pub bn: [Vec<BnRecord>; 2],
}

/// Central-difference mixed HVP as the reference computes it (architect.py
/// `_hessian_vector_product`, in both halves): R = scale / ||d|| (scale = [`FD_SCALE`] in
/// the reference; ||d|| the 2-norm of all of d concatenated), w+ = w + R d,
/// w- = w+ + (-2R) d (the reference perturbs in place, so w- is reached from w+),
/// hvp = (grad_alpha L(w+) - grad_alpha L(w-)) / 2R, with `loss_at` the loss on the
/// difference's batch. The reference then adds R d back in place: `restored` = w- + R d,
/// equal to w in real arithmetic but not always in floating point (about one ulp; proof
/// claim 3a), and the model goes on from it. The points w+- are held constant (through d they
/// may depend on alpha): this is a difference of two partial derivatives. The norm, the
/// quotient and the restoring direction are `pieces`' ([`Paper`] in production).
pub fn fd_mixed_hvp(
    g: &mut Graph,
    pieces: &dyn Pieces,
    loss_at: &mut LossAt,
    alpha: &[NodeId],
    at: &[NodeId],
    d: &[NodeId],
    scale: f64,
) -> R<FdHvp> {
    let norm_d = pieces.fd_norm(g, d)?;
    let scale = g.scalar(scale)?;
    let r = g.div(scale, norm_d)?;
    let minus_two = g.scalar(-2.0)?;
    let m2r = g.mul(minus_two, r)?;
    let back = pieces.fd_restore_direction(g, d, at)?;
    let (mut plus, mut minus, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..at.len() {
        let rd = g.mul(d[i], r)?;
        let p = g.add2(at[i], rd)?;
        let m2rd = g.mul(d[i], m2r)?;
        let m = g.add2(p, m2rd)?;
        let r_back = if back[i] == d[i] {
            rd
        } else {
            g.mul(back[i], r)?
        };
        restored.push(g.add2(m, r_back)?);
        plus.push(p);
        minus.push(m);
    }
    let (loss_p, bn_p) = loss_at(g, &plus)?;
    let gp = autodiff::grad_holding(g, loss_p, alpha, &plus)?;
    let (loss_m, bn_m) = loss_at(g, &minus)?;
    let gm = autodiff::grad_holding(g, loss_m, alpha, &minus)?;
    let mut hvp = Vec::with_capacity(alpha.len());
    for c in 0..alpha.len() {
        let diff = g.sub(gp[c], gm[c])?;
        hvp.push(pieces.fd_quotient(g, diff, r)?);
    }
    Ok(FdHvp {
        hvp,
        norm_d,
        r,
        restored,
        bn: [bn_p, bn_m],
    })
}

/// [`fd_mixed_hvp`] of the conv search network's training loss on `batch`.
#[allow(clippy::too_many_arguments)]
pub fn fd_mixed_hvp_conv(
    g: &mut Graph,
    pieces: &dyn Pieces,
    cfg: &SearchConfig,
    inputs: &StepInputs,
    batch: (NodeId, NodeId),
    alpha: [NodeId; 2],
    at: &[NodeId],
    d: &[NodeId],
    scale: f64,
) -> R<FdHvp> {
    let mut loss_at = |g: &mut Graph, w: &[NodeId]| -> R<(NodeId, Vec<BnRecord>)> {
        let n = net_at(g, cfg, batch, alpha, inputs.at(w))?;
        Ok((n.loss, n.bn))
    };
    fd_mixed_hvp(g, pieces, &mut loss_at, &alpha, at, d, scale)
}

/// The exact mixed HVP d/dalpha <grad_w L(w, alpha), v> = (d2 L / dalpha dw) v by autodiff
/// (grad of grad), from the gradient nodes `grad_w` of L at w; v is held constant (it may
/// depend on alpha through w').
pub fn exact_mixed_hvp(
    g: &mut Graph,
    grad_w: &[NodeId],
    v: &[NodeId],
    alpha: &[NodeId],
) -> R<Vec<NodeId>> {
    let s = autodiff::inner(g, grad_w, v)?;
    autodiff::grad_holding(g, s, alpha, v)
}

/// grad_alpha(a) - xi * hvp, per alpha (eq. 7 with eq. 8's approximation).
pub fn second_order(
    g: &mut Graph,
    partial: &[NodeId],
    hvp: &[NodeId],
    xi: NodeId,
) -> R<Vec<NodeId>> {
    let mut out = Vec::with_capacity(partial.len());
    for c in 0..partial.len() {
        let xi_hvp = g.mul(hvp[c], xi)?;
        out.push(g.sub(partial[c], xi_hvp)?);
    }
    Ok(out)
}
