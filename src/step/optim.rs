//! The optimisers of the bilevel loop as graph nodes, with PyTorch's update formulas and order
//! of operations (the reference runs torch.optim; derivation: proofs/resident-search-step.md):
//! SGD with momentum and coupled weight decay after total-norm clipping for the weights w,
//! Adam with coupled weight decay for the alphas, and the BN running statistics.

use crate::darts::names;
use crate::darts::ops::BnRecord;
use crate::graph::{BinaryOp, Graph, NodeId, UnaryOp};
use std::collections::HashMap;

use crate::graph::Result as R;

/// BN running-average momentum (PyTorch's default, the reference's).
pub const BN_MOMENTUM: f64 = 0.1;

/// torch.optim.Adam(lr, betas, eps, weight_decay) with coupled L2 decay (not AdamW).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamHyper {
    /// The reference's architect optimiser with learning rate `lr` and decay `weight_decay`
    /// (train_search.py: 3e-4 and 1e-3): betas (0.5, 0.999), eps 1e-8.
    pub fn architect(lr: f64, weight_decay: f64) -> Self {
        AdamHyper {
            lr,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// The fed scalars of step `t` (1-based), as `_single_tensor_adam` forms them with
    /// Python's `**` ([`f64::powf`]): (lr / (1 - b1^t), sqrt(1 - b2^t)).
    pub fn step_scalars(&self, t: u64) -> (f64, f64) {
        let t = t as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        (self.lr / bc1, (1.0 - self.beta2.powf(t)).sqrt())
    }

    /// One Adam step of `alpha` with gradient `grad` and moments `m`, `v`, in PyTorch's order
    /// of operations (torch/optim/adam.py, `_single_tensor_adam`):
    /// g = grad + lambda alpha; m <- lerp(m, g, 1 - b1); v <- b2 v + ((1 - b2) g) g;
    /// alpha <- alpha + (-s m) / (sqrt(v) / c2 + eps) with the fed scalars s = `step_size`,
    /// c2 = `bc2_sqrt` ([`AdamHyper::step_scalars`]). ATen's lerp(m, g, w) is m + w (g - m)
    /// for |w| < 0.5, else g - (g - m)(1 - w). Returns (alpha', m', v').
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        g: &mut Graph,
        alpha: NodeId,
        grad: NodeId,
        (m, v): (NodeId, NodeId),
        step_size: NodeId,
        bc2_sqrt: NodeId,
    ) -> R<(NodeId, NodeId, NodeId)> {
        let lambda = g.scalar(self.weight_decay)?;
        let decay = g.mul(alpha, lambda)?;
        let gr = g.add2(grad, decay)?;
        let w1 = 1.0 - self.beta1;
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
        let b2 = g.scalar(self.beta2)?;
        let c2 = g.scalar(1.0 - self.beta2)?;
        let vb = g.mul(v, b2)?;
        let cg = g.mul(c2, gr)?;
        let cgg = g.mul(cg, gr)?;
        let v_new = g.add2(vb, cgg)?;
        let sq = g.unary(UnaryOp::Sqrt, v_new)?;
        let sq = g.div(sq, bc2_sqrt)?;
        let eps = g.scalar(self.eps)?;
        let denom = g.add2(sq, eps)?;
        let neg_step_size = g.neg(step_size)?;
        let num = g.mul(neg_step_size, m_new)?;
        let upd = g.div(num, denom)?;
        let alpha_new = g.add2(alpha, upd)?;
        Ok((alpha_new, m_new, v_new))
    }
}

/// torch.optim.SGD(lr, momentum, dampening 0, nesterov False, weight_decay) after
/// torch.nn.utils.clip_grad_norm_(max_norm).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdHyper {
    pub momentum: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
}

/// ||(t_1, ..., t_n)||_2 over all tensors: sqrt(sum_i s_i) with s_i = sum t_i^2, or with
/// `per_tensor_sqrt` s_i = sqrt(sum t_i^2)^2 (clip_grad_norm's norm of the per-tensor norms).
pub fn total_norm(g: &mut Graph, ts: &[NodeId], per_tensor_sqrt: bool) -> R<NodeId> {
    let mut acc: Option<NodeId> = None;
    for &t in ts {
        let sq = g.square(t)?;
        let mut s = g.sum_all(sq)?;
        if per_tensor_sqrt {
            let n = g.unary(UnaryOp::Sqrt, s)?;
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
    g.unary(UnaryOp::Sqrt, sum)
}

/// Total-norm clipping's numbers as graph nodes ([`clip_coefficient`]).
pub struct Clip {
    /// N = sqrt(sum_i sqrt(sum g_i^2)^2).
    pub norm: NodeId,
    /// c = max_norm / (N + 1e-6), uncapped (the recurrent architect's `_clip` returns this).
    pub coef: NodeId,
    /// min(c, 1), built as -max(-c, -1): exactly c below 1 and exactly 1 otherwise, so
    /// g factor is g itself when nothing is clipped, as in PyTorch.
    pub factor: NodeId,
}

/// The clip coefficient of `clip_grad_norm_` (and of the recurrent architect's `_clip`,
/// which computes the same numbers) for the tensors `grads`.
pub fn clip_coefficient(g: &mut Graph, grads: &[NodeId], max_norm: f64) -> R<Clip> {
    let norm = total_norm(g, grads, true)?;
    let tiny = g.scalar(1e-6)?;
    let den = g.add2(norm, tiny)?;
    let max_norm = g.scalar(max_norm)?;
    let coef = g.div(max_norm, den)?;
    let neg_coef = g.neg(coef)?;
    let minus_one = g.scalar(-1.0)?;
    let neg_factor = g.binary(BinaryOp::Max, neg_coef, minus_one)?;
    let factor = g.neg(neg_factor)?;
    Ok(Clip { norm, coef, factor })
}

/// Gradient clipping and the SGD step as graph nodes (`clip_grad_norm_` then `SGD.step`, in
/// their operation order): N = sqrt(sum_i sqrt(sum g_i^2)^2), the factor
/// min(max_norm / (N + 1e-6), 1) built as -max(-coef, -1) (exactly coef below 1, exactly 1
/// otherwise), buf' = buf mu + (g factor + w lambda), w' = w - buf' lr. A zero buffer gives
/// PyTorch's first step (buf = d) exactly: 0 mu + d = d. `names` are the weights' variable
/// names, `(w, buf)` their input nodes; without buffers (`None`: SGD without momentum, as the
/// recurrent search's) w' = w - d lr, which is PyTorch's w + (-lr) d exactly (the products
/// differ only in sign). Returns N and the assignments w' -> name,
/// buf' -> [`names::sgd_buf`].
pub fn clip_and_sgd(
    g: &mut Graph,
    names: &[(String, Vec<usize>)],
    (w, buf): (&[NodeId], Option<&[NodeId]>),
    grads: &[NodeId],
    lr: NodeId,
    h: &SgdHyper,
) -> R<(NodeId, Vec<(NodeId, String)>)> {
    let Clip {
        norm: grad_norm,
        factor,
        ..
    } = clip_coefficient(g, grads, h.grad_clip)?;
    let mu = g.scalar(h.momentum)?;
    let lambda = g.scalar(h.weight_decay)?;
    let mut assign = Vec::with_capacity(2 * names.len());
    for (i, (n, _)) in names.iter().enumerate() {
        let gi = g.mul(grads[i], factor)?;
        let decay = g.mul(w[i], lambda)?;
        let d = g.add2(gi, decay)?;
        let Some(buf) = buf else {
            // Without momentum (the recurrent search's SGD): w' = w - d lr.
            let step = g.mul(d, lr)?;
            assign.push((g.sub(w[i], step)?, n.clone()));
            continue;
        };
        let mb = g.mul(buf[i], mu)?;
        let b_new = g.add2(mb, d)?;
        let step = g.mul(b_new, lr)?;
        let w_new = g.sub(w[i], step)?;
        assign.push((w_new, n.clone()));
        assign.push((b_new, names::sgd_buf(n)));
    }
    Ok((grad_norm, assign))
}

/// BN running statistics as graph nodes (PyTorch's train-mode update per forward, in order):
/// r <- (1 - 0.1) r + 0.1 b, the variance unbiased by m / (m - 1). Reads the inputs
/// `<prefix>.running_mean|var` and returns their final values' assignments.
/// `num_batches_tracked` counts forwards on the host (it is an integer in PyTorch).
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
