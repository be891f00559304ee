//! Matrix product of two rank-2 tensors.
//!
//! Derivation: proofs/elementwise.md (bilinear rules).

use crate::graph::{Graph, NodeId, Result, Shape};

pub fn shape(a: &Shape, b: &Shape) -> std::result::Result<Shape, String> {
    if a.rank() != 2 || b.rank() != 2 {
        return Err("both operands must have rank 2".into());
    }
    if a.dims()[1] != b.dims()[0] {
        return Err(format!(
            "inner dimensions differ ({} vs {})",
            a.dims()[1],
            b.dims()[0]
        ));
    }
    Ok(Shape::new([a.dims()[0], b.dims()[1]]))
}

/// VJP of C = A B: A_bar = C_bar B^T, B_bar = A^T C_bar.
pub fn vjp(g: &mut Graph, a: NodeId, b: NodeId, gc: NodeId) -> Result<Vec<Option<NodeId>>> {
    let bt = g.transpose(b)?;
    let at = g.transpose(a)?;
    Ok(vec![Some(g.matmul(gc, bt)?), Some(g.matmul(at, gc)?)])
}
