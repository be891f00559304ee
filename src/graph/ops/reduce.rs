//! Reductions over axes (kept as size-1 axes).
//!
//! Derivation: proofs/broadcasting-and-reductions.md.

use crate::graph::{BinaryOp, Graph, NodeId, Result, Shape};

pub fn shape(x: &Shape, axes: &[usize]) -> std::result::Result<Shape, String> {
    let mut out = x.dims().to_vec();
    for (i, &a) in axes.iter().enumerate() {
        super::check_axis(a, x.rank())?;
        if axes[..i].contains(&a) {
            return Err(format!("axis {a} is listed twice"));
        }
        out[a] = 1;
    }
    Ok(Shape(out))
}

/// VJP of y = max over axes: the cotangent is shared evenly among the tied maxima,
/// x_bar = [x == y] * y_bar / count(x == y).
pub fn max_vjp(g: &mut Graph, x: NodeId, y: NodeId, axes: &[usize], gy: NodeId) -> Result<NodeId> {
    let mask = g.binary(BinaryOp::Equal, x, y)?;
    let count = g.reduce_sum(mask, axes)?;
    let share = g.div(gy, count)?;
    g.mul(mask, share)
}
