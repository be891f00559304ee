//! Composite operations built from primitives: batch norm with batch statistics, softmax,
//! cross-entropy, linear layers. They need no VJP rules of their own; their derivatives
//! come from the primitives' (derivations in proofs/batch-norm.md and
//! proofs/softmax-cross-entropy.md). Semantics follow PyTorch as the DARTS reference uses it
//! (../shared/reference/REFERENCE_NOTES.md).

use super::{Graph, NodeId, Result, UnaryOp};

/// PyTorch's BatchNorm eps.
pub const BN_EPS: f64 = 1e-5;

/// The pieces of a training-mode batch norm, for callers that update running statistics.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormOut {
    /// Normalised (and, if affine, scaled and shifted) output.
    pub y: NodeId,
    /// Batch mean per channel, shape [1, C, 1, 1] (or [1, C]).
    pub mean: NodeId,
    /// Biased batch variance per channel (divides by the count m), same shape as `mean`.
    pub var: NodeId,
    /// Number of values per channel, m = N*H*W.
    pub count: usize,
}

/// Batch norm in training mode over axis 1 of x ([N, C, H, W] or [N, C]):
///
/// y = (x - mu) / sqrt(sigma^2 + eps) * gamma + beta,
/// mu = mean over (N, H, W), sigma^2 = mean of (x - mu)^2 (biased, as PyTorch normalises).
///
/// `gamma` and `beta` have shape [C] (affine BN) or are `None` (affine=False). One value per
/// channel (N H W = 1) is an error, as in PyTorch ("Expected more than 1 value per channel
/// when training"): its variance is 0 and the output would be 0 whatever the input.
pub fn batch_norm_train(
    g: &mut Graph,
    x: NodeId,
    gamma: Option<NodeId>,
    beta: Option<NodeId>,
    eps: f64,
) -> Result<BatchNormOut> {
    let dims = g.shape(x).dims().to_vec();
    let axes: Vec<usize> = (0..dims.len()).filter(|&a| a != 1).collect();
    let count: usize = axes.iter().map(|&a| dims[a]).product();
    if count == 1 {
        return Err(super::GraphError::Shape {
            op: "BatchNorm (training mode)".into(),
            label: g.current_label(),
            shapes: format!("{dims:?}"),
            reason: "expected more than 1 value per channel when training (PyTorch refuses \
                     this too: the batch variance is 0)"
                .into(),
        });
    }
    let inv_m = 1.0 / count as f64;
    let s = g.reduce_sum(x, &axes)?;
    let mean = g.scale(s, inv_m)?;
    let xc = g.sub(x, mean)?;
    let sq = g.square(xc)?;
    let ss = g.reduce_sum(sq, &axes)?;
    let var = g.scale(ss, inv_m)?;
    let e = g.scalar(eps)?;
    let ve = g.add2(var, e)?;
    let inv_std = g.unary(UnaryOp::Rsqrt, ve)?;
    let mut y = g.mul(xc, inv_std)?;
    let mut chan = vec![1; dims.len()];
    chan[1] = dims[1];
    if let Some(gm) = gamma {
        let gm = g.reshape(gm, chan.clone())?;
        y = g.mul(y, gm)?;
    }
    if let Some(b) = beta {
        let b = g.reshape(b, chan)?;
        y = g.add2(y, b)?;
    }
    Ok(BatchNormOut {
        y,
        mean,
        var,
        count,
    })
}

/// Batch norm in evaluation mode over axis 1: y = (x - running_mean) / sqrt(running_var + eps)
/// * gamma + beta, with running statistics of shape [C] (PyTorch's eval-mode BatchNorm2d).
pub fn batch_norm_eval(
    g: &mut Graph,
    x: NodeId,
    running_mean: NodeId,
    running_var: NodeId,
    gamma: Option<NodeId>,
    beta: Option<NodeId>,
    eps: f64,
) -> Result<NodeId> {
    let dims = g.shape(x).dims().to_vec();
    let mut chan = vec![1; dims.len()];
    chan[1] = dims[1];
    let mean = g.reshape(running_mean, chan.clone())?;
    let var = g.reshape(running_var, chan.clone())?;
    let xc = g.sub(x, mean)?;
    let e = g.scalar(eps)?;
    let ve = g.add2(var, e)?;
    let inv_std = g.unary(UnaryOp::Rsqrt, ve)?;
    let mut y = g.mul(xc, inv_std)?;
    if let Some(gm) = gamma {
        let gm = g.reshape(gm, chan.clone())?;
        y = g.mul(y, gm)?;
    }
    if let Some(b) = beta {
        let b = g.reshape(b, chan)?;
        y = g.add2(y, b)?;
    }
    Ok(y)
}

/// softmax(x) = exp(log_softmax(x)) along `axis`.
pub fn softmax(g: &mut Graph, x: NodeId, axis: usize) -> Result<NodeId> {
    let l = g.log_softmax(x, axis)?;
    g.exp(l)
}

/// Mean cross-entropy of logits [N, K] against one-hot targets [N, K]:
/// L = -(1/N) sum_n sum_k t[n,k] log_softmax(z)[n,k]  (PyTorch's CrossEntropyLoss, mean).
pub fn cross_entropy_mean(g: &mut Graph, logits: NodeId, onehot: NodeId) -> Result<NodeId> {
    let n = g.shape(logits).dims()[0];
    let lp = g.log_softmax(logits, 1)?;
    let picked = g.dot(lp, onehot)?;
    g.scale(picked, -1.0 / n as f64)
}

/// Mean of all elements, as a scalar.
pub fn mean_all(g: &mut Graph, x: NodeId) -> Result<NodeId> {
    let n = g.shape(x).numel();
    let s = g.sum_all(x)?;
    g.scale(s, 1.0 / n as f64)
}

/// y = x W^T + b for x [N, in], W [out, in], b [out] (PyTorch's Linear).
pub fn linear(g: &mut Graph, x: NodeId, w: NodeId, b: Option<NodeId>) -> Result<NodeId> {
    let wt = g.transpose(w)?;
    let y = g.matmul(x, wt)?;
    match b {
        Some(b) => g.add2(y, b),
        None => Ok(y),
    }
}
