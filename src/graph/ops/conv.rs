//! 2-D convolution (stride, padding, dilation, groups) and its two transposes.
//!
//! Index contractions (NCHW input x, OIHW weight w, G groups, C_g = C/G, O_g = O/G):
//!
//! ```text
//! conv:         y[n,o,p,q]  = sum_{c',i,j} x[n, g(o)C_g + c', p s - pad + i d, q s - pad + j d] w[o,c',i,j]
//! input grad:   x_bar[n,c,h,v] = sum_{o in group(c), i, j : h = p s - pad + i d, v = ...} y_bar[n,o,p,q] w[o, c - g C_g, i, j]
//! weight grad:  w_bar[o,c',i,j] = sum_{n,p,q} x[n, g(o)C_g + c', p s - pad + i d, q s - pad + j d] y_bar[n,o,p,q]
//! ```
//!
//! All three are bilinear, so each one's VJP is one of the other two (or itself):
//! derivation in proofs/convolution.md.

use crate::graph::{ConvParams, Graph, NodeId, Op, Result, Shape};

fn check_params(p: &ConvParams) -> std::result::Result<(), String> {
    if p.stride.contains(&0) {
        return Err("stride must be at least 1".into());
    }
    if p.dilation.contains(&0) {
        return Err("dilation must be at least 1".into());
    }
    if p.groups == 0 {
        return Err("groups must be at least 1".into());
    }
    Ok(())
}

fn out_hw(
    p: &ConvParams,
    hw: [usize; 2],
    k: [usize; 2],
) -> std::result::Result<[usize; 2], String> {
    if k.contains(&0) {
        return Err("kernel size must be at least 1".into());
    }
    let h = p.out_len(0, hw[0], k[0]);
    let w = p.out_len(1, hw[1], k[1]);
    match (h, w) {
        (Some(h), Some(w)) => Ok([h, w]),
        _ => Err(format!(
            "the dilated {}x{} kernel does not fit the padded {}x{} input",
            k[0], k[1], hw[0], hw[1]
        )),
    }
}

fn check_rank4(s: &Shape, what: &str) -> std::result::Result<(), String> {
    if s.rank() == 4 {
        Ok(())
    } else {
        Err(format!("{what} must have rank 4 (got {s})"))
    }
}

/// x [N, C, H, W], w [O, C/G, kh, kw] -> [N, O, H', W'].
pub fn conv_shape(x: &Shape, w: &Shape, p: &ConvParams) -> std::result::Result<Shape, String> {
    check_params(p)?;
    check_rank4(x, "input")?;
    check_rank4(w, "weight")?;
    let (n, c) = (x.dims()[0], x.dims()[1]);
    let o = w.dims()[0];
    if c % p.groups != 0 || o % p.groups != 0 {
        return Err(format!(
            "groups {} must divide input channels {c} and output channels {o}",
            p.groups
        ));
    }
    if w.dims()[1] != c / p.groups {
        return Err(format!(
            "weight has {} input channels per group, input has {c}/{} = {}",
            w.dims()[1],
            p.groups,
            c / p.groups
        ));
    }
    let [oh, ow] = out_hw(p, [x.dims()[2], x.dims()[3]], [w.dims()[2], w.dims()[3]])?;
    Ok(Shape::new([n, o, oh, ow]))
}

/// gy [N, O, H', W'], w [O, C/G, kh, kw] -> x-shaped [N, C, H, W].
pub fn input_grad_shape(
    gy: &Shape,
    w: &Shape,
    p: &ConvParams,
    in_hw: [usize; 2],
) -> std::result::Result<Shape, String> {
    check_params(p)?;
    check_rank4(gy, "output cotangent")?;
    check_rank4(w, "weight")?;
    let c = w.dims()[1] * p.groups;
    let x = Shape::new([gy.dims()[0], c, in_hw[0], in_hw[1]]);
    let y = conv_shape(&x, w, p)?;
    if &y != gy {
        return Err(format!("cotangent {gy} does not match the conv output {y}"));
    }
    Ok(x)
}

/// x [N, C, H, W], gy [N, O, H', W'] -> w-shaped [O, C/G, kh, kw].
pub fn weight_grad_shape(
    x: &Shape,
    gy: &Shape,
    p: &ConvParams,
    kernel: [usize; 2],
) -> std::result::Result<Shape, String> {
    check_params(p)?;
    check_rank4(x, "input")?;
    check_rank4(gy, "output cotangent")?;
    if x.dims()[1] % p.groups != 0 {
        return Err(format!(
            "groups {} must divide input channels {}",
            p.groups,
            x.dims()[1]
        ));
    }
    let w = Shape::new([gy.dims()[1], x.dims()[1] / p.groups, kernel[0], kernel[1]]);
    let y = conv_shape(x, &w, p)?;
    if &y != gy {
        return Err(format!("cotangent {gy} does not match the conv output {y}"));
    }
    Ok(w)
}

fn hw(g: &Graph, id: NodeId) -> [usize; 2] {
    let d = g.shape(id).dims();
    [d[2], d[3]]
}

/// VJP of y = conv(x, w): x_bar = conv_input_grad(y_bar, w), w_bar = conv_weight_grad(x, y_bar).
pub fn conv_vjp(
    g: &mut Graph,
    x: NodeId,
    w: NodeId,
    p: ConvParams,
    gy: NodeId,
) -> Result<Vec<Option<NodeId>>> {
    let in_hw = hw(g, x);
    let kernel = hw(g, w);
    let gx = g.add(Op::Conv2dInputGrad { p, in_hw }, &[gy, w])?;
    let gw = g.add(Op::Conv2dWeightGrad { p, kernel }, &[x, gy])?;
    Ok(vec![Some(gx), Some(gw)])
}

/// VJP of z = conv_input_grad(gy, w) with cotangent c (x-shaped):
/// gy_bar = conv(c, w), w_bar = conv_weight_grad(c, gy).
pub fn input_grad_vjp(
    g: &mut Graph,
    gy: NodeId,
    w: NodeId,
    p: ConvParams,
    c: NodeId,
) -> Result<Vec<Option<NodeId>>> {
    let kernel = hw(g, w);
    let d_gy = g.conv2d(c, w, p)?;
    let d_w = g.add(Op::Conv2dWeightGrad { p, kernel }, &[c, gy])?;
    Ok(vec![Some(d_gy), Some(d_w)])
}

/// VJP of z = conv_weight_grad(x, gy) with cotangent c (w-shaped):
/// x_bar = conv_input_grad(gy, c), gy_bar = conv(x, c).
pub fn weight_grad_vjp(
    g: &mut Graph,
    x: NodeId,
    gy: NodeId,
    p: ConvParams,
    c: NodeId,
) -> Result<Vec<Option<NodeId>>> {
    let in_hw = hw(g, x);
    let d_x = g.add(Op::Conv2dInputGrad { p, in_hw }, &[gy, c])?;
    let d_gy = g.conv2d(x, c, p)?;
    Ok(vec![Some(d_x), Some(d_gy)])
}

#[cfg(test)]
mod tests {
    use crate::graph::{ConvParams, Graph};

    #[test]
    fn conv_shape_errors_name_the_problem() {
        let mut g = Graph::new();
        let x = g.input("x", [2, 4, 8, 8]).unwrap();
        let w = g.input("w", [4, 1, 3, 3]).unwrap();
        let w0 = g.input("w0", [4, 1, 0, 3]).unwrap();
        let e = g
            .conv2d(x, w, ConvParams::new(0, 1, 1, 4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride"), "{e}");
        let e = g
            .conv2d(x, w, ConvParams::new(1, 1, 1, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input channels per group"), "{e}");
        assert!(g.conv2d(x, w0, ConvParams::new(1, 1, 1, 4)).is_err());
        let y = g.conv2d(x, w, ConvParams::new(2, 2, 2, 4)).unwrap();
        assert_eq!(g.shape(y).dims(), &[2, 4, 4, 4]);
    }
}
