//! Movement primitives: broadcast, reshape, permute, slice, pad, concat.
//!
//! All are linear maps that only move or copy elements; each VJP is the transpose map
//! (proofs/broadcasting-and-reductions.md): broadcast <-> sum, reshape <-> reshape,
//! permute <-> inverse permute, slice <-> pad with zeros, concat <-> slices.

use super::check_axis;
use crate::graph::{Graph, NodeId, Result, Shape};

pub fn broadcast_shape(x: &Shape, target: &Shape) -> std::result::Result<Shape, String> {
    if x.broadcasts_to(target) {
        Ok(target.clone())
    } else {
        Err(format!("{x} does not broadcast to {target}"))
    }
}

pub fn reshape_shape(x: &Shape, target: &Shape) -> std::result::Result<Shape, String> {
    if x.numel() == target.numel() {
        Ok(target.clone())
    } else {
        Err(format!(
            "cannot reshape {} elements to {target} ({} elements)",
            x.numel(),
            target.numel()
        ))
    }
}

pub fn permute_shape(x: &Shape, perm: &[usize]) -> std::result::Result<Shape, String> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank() {
        return Err(format!(
            "permutation {perm:?} has the wrong length for rank {}",
            x.rank()
        ));
    }
    for &p in perm {
        if p >= x.rank() || seen[p] {
            return Err(format!("{perm:?} is not a permutation of 0..{}", x.rank()));
        }
        seen[p] = true;
    }
    Ok(Shape(perm.iter().map(|&p| x.dims()[p]).collect()))
}

pub fn slice_shape(
    x: &Shape,
    axis: usize,
    start: usize,
    end: usize,
    step: usize,
) -> std::result::Result<Shape, String> {
    check_axis(axis, x.rank())?;
    if step == 0 {
        return Err("slice step must be at least 1".into());
    }
    let n = x.dims()[axis];
    if start >= end || end > n {
        return Err(format!(
            "slice {start}..{end} is empty or exceeds axis {axis} of length {n}"
        ));
    }
    let mut d = x.dims().to_vec();
    d[axis] = (end - start).div_ceil(step);
    Ok(Shape(d))
}

pub fn pad_shape(
    x: &Shape,
    axis: usize,
    before: usize,
    after: usize,
    interior: usize,
) -> std::result::Result<Shape, String> {
    check_axis(axis, x.rank())?;
    let n = x.dims()[axis];
    if n == 0 {
        return Err("cannot pad an empty axis".into());
    }
    let mut d = x.dims().to_vec();
    d[axis] = before + n + (n - 1) * interior + after;
    Ok(Shape(d))
}

pub fn concat_shape(xs: &[&Shape], axis: usize) -> std::result::Result<Shape, String> {
    let first = xs.first().ok_or("concat needs at least one input")?;
    check_axis(axis, first.rank())?;
    let mut d = first.dims().to_vec();
    for s in &xs[1..] {
        let same_rest = s.rank() == first.rank()
            && (0..s.rank()).all(|i| i == axis || s.dims()[i] == first.dims()[i]);
        if !same_rest {
            return Err(format!("inputs differ off the concat axis {axis}"));
        }
        d[axis] += s.dims()[axis];
    }
    Ok(Shape(d))
}

pub fn permute_vjp(g: &mut Graph, perm: &[usize], gy: NodeId) -> Result<NodeId> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    g.permute(gy, &inv)
}

/// The transpose of a strided slice scatters the cotangent back with zeros: a pad with
/// `start` zeros before, `step - 1` zeros between neighbours, and the rest after.
pub fn slice_vjp(
    g: &mut Graph,
    x: NodeId,
    axis: usize,
    start: usize,
    step: usize,
    gy: NodeId,
) -> Result<NodeId> {
    let n = g.shape(x).dims()[axis];
    let m = g.shape(gy).dims()[axis];
    let last = start + (m - 1) * step;
    g.pad(gy, axis, start, n - 1 - last, step - 1)
}

/// The transpose of a pad is the slice that picks the original elements.
pub fn pad_vjp(
    g: &mut Graph,
    x: NodeId,
    axis: usize,
    before: usize,
    interior: usize,
    gy: NodeId,
) -> Result<NodeId> {
    let n = g.shape(x).dims()[axis];
    g.slice(
        gy,
        axis,
        before,
        before + (n - 1) * (interior + 1) + 1,
        interior + 1,
    )
}

pub fn concat_vjp(
    g: &mut Graph,
    xs: &[NodeId],
    axis: usize,
    gy: NodeId,
) -> Result<Vec<Option<NodeId>>> {
    let mut off = 0;
    let mut out = Vec::with_capacity(xs.len());
    for &x in xs {
        let n = g.shape(x).dims()[axis];
        out.push(Some(g.slice(gy, axis, off, off + n, 1)?));
        off += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::graph::Graph;

    #[test]
    fn bad_slices_and_permutations_are_errors() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 3]).unwrap();
        assert!(g.slice(x, 1, 0, 4, 1).is_err());
        assert!(g.slice(x, 1, 0, 3, 0).is_err());
        assert!(g.slice(x, 2, 0, 1, 1).is_err());
        assert!(g.permute(x, &[0, 0]).is_err());
        assert!(g.reshape(x, [5]).is_err());
        let s = g.slice(x, 1, 1, 3, 2).unwrap();
        assert_eq!(g.shape(s).dims(), &[2, 1]);
    }
}
