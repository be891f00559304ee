//! Log-softmax along one axis. Softmax and cross-entropy are composed from it
//! (see `crate::graph::compose`).
//!
//! Derivation: proofs/softmax-cross-entropy.md.

use crate::graph::{Graph, NodeId, Result, Shape};

pub fn shape(x: &Shape, axis: usize) -> std::result::Result<Shape, String> {
    super::check_axis(axis, x.rank())?;
    Ok(x.clone())
}

/// VJP of y = log_softmax(x): x_bar = y_bar - exp(y) * sum_axis(y_bar).
pub fn vjp(g: &mut Graph, y: NodeId, axis: usize, gy: NodeId) -> Result<NodeId> {
    let p = g.exp(y)?;
    let s = g.reduce_sum(gy, &[axis])?;
    let t = g.mul(p, s)?;
    g.sub(gy, t)
}
