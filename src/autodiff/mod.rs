//! Reverse-mode autodiff as a graph -> graph transform.
//!
//! [`grad`] appends to the graph the nodes that compute the gradient of a scalar output with
//! respect to chosen nodes, written with the same primitives (each primitive's VJP rule lives
//! beside its shape rule in `graph::ops`). Applying `grad` to its own result gives exact second
//! derivatives: [`hvp`] and [`mixed_hvp`] are two lines each.

use crate::graph::{ops, Graph, GraphError, NodeId, Result, Shape};

/// Gradient of the scalar `output` with respect to each node of `wrt` (zeros where `output`
/// does not depend on it). Equation: x_bar = sum over consumers of VJP(consumer, y_bar).
pub fn grad(g: &mut Graph, output: NodeId, wrt: &[NodeId]) -> Result<Vec<NodeId>> {
    if g.shape(output).numel() != 1 {
        return Err(GraphError::NonScalarOutput {
            label: g.node(output).label.clone(),
            shape: g.shape(output).clone(),
        });
    }
    let seed = g.constant(1.0, g.shape(output).clone())?;
    vjp(g, &[(output, seed)], wrt)
}

/// The gradient of the scalar `output` with respect to `wrt`, holding the nodes in `held`
/// constant (a stop-gradient at each: no derivative flows through them, as if they were
/// inputs). E.g. the weight step's grad_w L_train(w, alpha') with alpha' = alpha - step(w)
/// computed in the same graph: alpha' is a value there, not a function of w.
pub fn grad_holding(
    g: &mut Graph,
    output: NodeId,
    wrt: &[NodeId],
    held: &[NodeId],
) -> Result<Vec<NodeId>> {
    if g.shape(output).numel() != 1 {
        return Err(GraphError::NonScalarOutput {
            label: g.node(output).label.clone(),
            shape: g.shape(output).clone(),
        });
    }
    let seed = g.constant(1.0, g.shape(output).clone())?;
    vjp_holding(g, &[(output, seed)], wrt, held)
}

/// Vector-Jacobian product: the cotangents of `wrt` given cotangents of several outputs.
pub fn vjp(g: &mut Graph, outputs: &[(NodeId, NodeId)], wrt: &[NodeId]) -> Result<Vec<NodeId>> {
    vjp_holding(g, outputs, wrt, &[])
}

/// [`vjp`] with the nodes in `held` treated as constants (see [`grad_holding`]).
pub fn vjp_holding(
    g: &mut Graph,
    outputs: &[(NodeId, NodeId)],
    wrt: &[NodeId],
    held: &[NodeId],
) -> Result<Vec<NodeId>> {
    let n = g.len();
    for &id in wrt.iter().chain(outputs.iter().map(|(o, _)| o)) {
        if id.0 >= n {
            return Err(GraphError::UnknownNode(id));
        }
    }
    // Which nodes depend on some wrt node (only those need cotangents).
    let mut depends = vec![false; n];
    for &w in wrt {
        depends[w.0] = true;
    }
    let mut is_held = vec![false; n];
    for &h in held {
        if h.0 >= n {
            return Err(GraphError::UnknownNode(h));
        }
        is_held[h.0] = true;
    }
    for i in 0..n {
        if !depends[i] && !is_held[i] && g.nodes()[i].inputs.iter().any(|j| depends[j.0]) {
            depends[i] = true;
        }
    }
    let mut cot: Vec<Option<NodeId>> = vec![None; n];
    for &(o, c) in outputs {
        accumulate(g, &mut cot, o, c)?;
    }
    let top = outputs.iter().map(|(o, _)| o.0).max().unwrap_or(0);
    for i in (0..=top.min(n.saturating_sub(1))).rev() {
        let Some(ci) = cot[i] else { continue };
        // A held node keeps its cotangent (it may itself be in `wrt`) but passes none on.
        if !depends[i] || is_held[i] {
            continue;
        }
        let inputs = g.nodes()[i].inputs.clone();
        if !inputs.iter().any(|j| depends[j.0]) {
            continue;
        }
        let contributions = ops::vjp(g, NodeId(i), ci)?;
        for (j, c) in inputs.into_iter().zip(contributions) {
            if let (true, Some(c)) = (depends[j.0], c) {
                let c = unbroadcast(g, c, &g.shape(j).clone())?;
                accumulate(g, &mut cot, j, c)?;
            }
        }
    }
    wrt.iter()
        .map(|&w| match cot[w.0] {
            Some(c) => Ok(c),
            None => g.zeros_like(w),
        })
        .collect()
}

fn accumulate(g: &mut Graph, cot: &mut [Option<NodeId>], at: NodeId, c: NodeId) -> Result<()> {
    cot[at.0] = Some(match cot[at.0] {
        None => c,
        Some(prev) => g.add2(prev, c)?,
    });
    Ok(())
}

/// Sum a cotangent computed in a broadcast shape back to the shape of the input it belongs
/// to: the transpose of broadcasting (proofs/broadcasting-and-reductions.md).
pub fn unbroadcast(g: &mut Graph, c: NodeId, target: &Shape) -> Result<NodeId> {
    let cs = g.shape(c).clone();
    if &cs == target {
        return Ok(c);
    }
    let axes = target.broadcast_axes(&cs);
    let s = if axes.is_empty() {
        c
    } else {
        g.reduce_sum(c, &axes)?
    };
    g.reshape(s, target.clone())
}

/// Sum over tensors of <a_i, b_i>, as one scalar node.
pub fn inner(g: &mut Graph, a: &[NodeId], b: &[NodeId]) -> Result<NodeId> {
    let mut acc: Option<NodeId> = None;
    for (&x, &y) in a.iter().zip(b) {
        let d = g.dot(x, y)?;
        acc = Some(match acc {
            None => d,
            Some(p) => g.add2(p, d)?,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => g.scalar(0.0),
    }
}

/// Hessian-vector product H v = d/dw <grad_w L, v> (exact, by differentiating the gradient
/// graph once more). `v[i]` must have the shape of `w[i]`.
pub fn hvp(g: &mut Graph, loss: NodeId, w: &[NodeId], v: &[NodeId]) -> Result<Vec<NodeId>> {
    mixed_hvp(g, loss, w, v, w)
}

/// Mixed second derivative applied to v: d/dalpha <grad_w L(w, alpha), v>
/// = (d^2 L / dalpha dw) v, the term the DARTS architecture gradient needs (eq. 7 of the paper).
pub fn mixed_hvp(
    g: &mut Graph,
    loss: NodeId,
    w: &[NodeId],
    v: &[NodeId],
    alpha: &[NodeId],
) -> Result<Vec<NodeId>> {
    let gw = grad(g, loss, w)?;
    let s = inner(g, &gw, v)?;
    grad(g, s, alpha)
}
