//! 3x3-style pooling: average (count_include_pad = False) and max (-inf padding), with
//! their backward primitives.
//!
//! avg:   y[n,c,p,q] = (1/|W_pq|) sum_{(h,v) in W_pq} x[n,c,h,v], W_pq = in-bounds pixels of the window
//! max:   y[n,c,p,q] = x[n,c,a_pq], a_pq = first argmax of the window (row-major scan), pads = -inf
//!
//! Derivation: proofs/pooling.md.

use crate::graph::{Graph, NodeId, Op, PoolParams, Result, Shape};

/// x [N, C, H, W] -> [N, C, H', W'].
pub fn pool_shape(x: &Shape, p: &PoolParams) -> std::result::Result<Shape, String> {
    if x.rank() != 4 {
        return Err(format!("input must have rank 4 (got {x})"));
    }
    if p.kernel.contains(&0) {
        return Err("kernel size must be at least 1".into());
    }
    if p.stride.contains(&0) {
        return Err("stride must be at least 1".into());
    }
    if p.padding[0] > p.kernel[0] / 2 || p.padding[1] > p.kernel[1] / 2 {
        return Err(format!(
            "padding {:?} exceeds half the kernel {:?} (windows could lie entirely in the padding)",
            p.padding, p.kernel
        ));
    }
    let d = x.dims();
    match (p.out_len(0, d[2]), p.out_len(1, d[3])) {
        (Some(h), Some(w)) => Ok(Shape::new([d[0], d[1], h, w])),
        _ => Err(format!(
            "the {:?} window does not fit the padded input",
            p.kernel
        )),
    }
}

pub fn avg_grad_shape(
    gy: &Shape,
    p: &PoolParams,
    in_hw: [usize; 2],
) -> std::result::Result<Shape, String> {
    if gy.rank() != 4 {
        return Err(format!("cotangent must have rank 4 (got {gy})"));
    }
    let x = Shape::new([gy.dims()[0], gy.dims()[1], in_hw[0], in_hw[1]]);
    let y = pool_shape(&x, p)?;
    if &y != gy {
        return Err(format!("cotangent {gy} does not match the pool output {y}"));
    }
    Ok(x)
}

pub fn max_grad_shape(x: &Shape, gy: &Shape, p: &PoolParams) -> std::result::Result<Shape, String> {
    let y = pool_shape(x, p)?;
    if &y != gy {
        return Err(format!("cotangent {gy} does not match the pool output {y}"));
    }
    Ok(x.clone())
}

pub fn max_gather_shape(
    x: &Shape,
    c: &Shape,
    p: &PoolParams,
) -> std::result::Result<Shape, String> {
    if x != c {
        return Err(format!(
            "the gathered tensor {c} must have the input's shape {x}"
        ));
    }
    pool_shape(x, p)
}

/// VJP of y = avg_pool(x): x_bar = avg_pool_grad(y_bar), the transpose of the same linear map.
pub fn avg_vjp(g: &mut Graph, x: NodeId, p: PoolParams, gy: NodeId) -> Result<NodeId> {
    let d = g.shape(x).dims();
    let in_hw = [d[2], d[3]];
    g.add(Op::AvgPool2dGrad { p, in_hw }, &[gy])
}
