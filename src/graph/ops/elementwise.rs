//! Elementwise unary and binary primitives (with NumPy broadcasting) and `select`.
//!
//! Derivations: proofs/broadcasting-and-reductions.md and proofs/elementwise.md.

use crate::graph::{BinaryOp, Graph, NodeId, Result, Shape, UnaryOp};

pub fn binary_shape(a: &Shape, b: &Shape) -> std::result::Result<Shape, String> {
    Shape::broadcast(a, b).ok_or_else(|| format!("shapes {a} and {b} do not broadcast"))
}

pub fn select_shape(s: &[&Shape]) -> std::result::Result<Shape, String> {
    if s[0] == s[1] && s[1] == s[2] {
        Ok(s[0].clone())
    } else {
        Err("condition and both branches must have the same shape".into())
    }
}

/// VJP of y = f(x): x_bar = y_bar * f'(x), with f' written using x or y.
///
/// relu'(0) = 0 (PyTorch's choice); step' = 0 everywhere.
pub fn unary_vjp(
    g: &mut Graph,
    op: UnaryOp,
    x: NodeId,
    y: NodeId,
    gy: NodeId,
) -> Result<Option<NodeId>> {
    use UnaryOp::*;
    let r = match op {
        Neg => g.neg(gy)?,
        // d exp(x) = exp(x) dx: reuse the output.
        Exp => g.mul(gy, y)?,
        Log => g.div(gy, x)?,
        // d sqrt(x) = dx / (2 sqrt(x))
        Sqrt => {
            let t = g.div(gy, y)?;
            g.scale(t, 0.5)?
        }
        // d x^{-1/2} = -1/2 x^{-3/2} dx = -1/2 (y / x) dx
        Rsqrt => {
            let t = g.mul(gy, y)?;
            let t = g.div(t, x)?;
            g.scale(t, -0.5)?
        }
        // d (1/x) = -y^2 dx
        Recip => {
            let y2 = g.square(y)?;
            let t = g.mul(gy, y2)?;
            g.neg(t)?
        }
        Square => {
            let t = g.mul(gy, x)?;
            g.scale(t, 2.0)?
        }
        // d tanh = (1 - y^2) dx
        Tanh => {
            let y2 = g.square(y)?;
            let one = g.scalar(1.0)?;
            let d = g.sub(one, y2)?;
            g.mul(gy, d)?
        }
        // d sigmoid = y (1 - y) dx
        Sigmoid => {
            let one = g.scalar(1.0)?;
            let d = g.sub(one, y)?;
            let d = g.mul(y, d)?;
            g.mul(gy, d)?
        }
        Relu => {
            let s = g.unary(Step, x)?;
            g.mul(gy, s)?
        }
        // d softplus = sigmoid(x) dx
        Softplus => {
            let s = g.unary(Sigmoid, x)?;
            g.mul(gy, s)?
        }
        Step => return Ok(None),
    };
    Ok(Some(r))
}

/// VJP of y = f(a, b), returned in the broadcast shape of y (the driver sums back).
///
/// max: a strict winner takes the whole cotangent; on a tie each side gets half, so the
/// rule is symmetric and the directional derivative along a = b is right.
pub fn binary_vjp(
    g: &mut Graph,
    op: BinaryOp,
    a: NodeId,
    b: NodeId,
    y: NodeId,
    gy: NodeId,
) -> Result<Vec<Option<NodeId>>> {
    use BinaryOp::*;
    Ok(match op {
        Add => vec![Some(gy), Some(gy)],
        Sub => vec![Some(gy), Some(g.neg(gy)?)],
        Mul => vec![Some(g.mul(gy, b)?), Some(g.mul(gy, a)?)],
        // d(a/b) = da / b - (a/b) db / b
        Div => {
            let ga = g.div(gy, b)?;
            let t = g.mul(gy, y)?;
            let t = g.div(t, b)?;
            vec![Some(ga), Some(g.neg(t)?)]
        }
        Max => {
            let gt_ab = g.binary(Greater, a, b)?;
            let gt_ba = g.binary(Greater, b, a)?;
            let eq = g.binary(Equal, a, b)?;
            let half_eq = g.scale(eq, 0.5)?;
            let wa = g.add2(gt_ab, half_eq)?;
            let wb = g.add2(gt_ba, half_eq)?;
            vec![Some(g.mul(gy, wa)?), Some(g.mul(gy, wb)?)]
        }
        Greater | Equal => vec![None, None],
    })
}

/// VJP of select(c, a, b): a_bar = select(c, y_bar, 0), b_bar = select(c, 0, y_bar); the
/// condition gets none.
pub fn select_vjp(g: &mut Graph, c: NodeId, gy: NodeId) -> Result<Vec<Option<NodeId>>> {
    let z = g.zeros_like(gy)?;
    let ga = g.select(c, gy, z)?;
    let gb = g.select(c, z, gy)?;
    Ok(vec![None, Some(ga), Some(gb)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_broadcasting_shapes_are_an_error_naming_label_and_shapes() {
        let mut g = Graph::new();
        let a = g.input("a", [2, 3]).unwrap();
        let b = g.input("b", [3, 2]).unwrap();
        g.push_scope("cells.0");
        let e = g.add2(a, b).unwrap_err().to_string();
        assert!(
            e.contains("add") && e.contains("cells.0") && e.contains("[2, 3]"),
            "{e}"
        );
    }
}
