//! CPU kernels for elementwise primitives.

use super::BufferPool;
use crate::exec::Scalar;
use crate::graph::{BinaryOp, UnaryOp};
use ndarray::{ArrayD, IxDyn, Zip};

/// f(x) for one unary primitive. NaN propagates through every function (relu(NaN) = NaN, as
/// PyTorch; step(NaN) = 0 since NaN > 0 is false).
pub fn apply_unary<T: Scalar>(op: UnaryOp, x: T) -> T {
    let zero = T::zero();
    let one = T::one();
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => one / x.sqrt(),
        UnaryOp::Recip => one / x,
        UnaryOp::Square => x * x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => {
            // Split by sign so exp never overflows.
            if x >= zero {
                one / (one + (-x).exp())
            } else {
                let e = x.exp();
                e / (one + e)
            }
        }
        // NaN is neither > 0 nor <= 0: keep it (propagate), as PyTorch.
        UnaryOp::Relu => {
            if x > zero || x.is_nan() {
                x
            } else {
                zero
            }
        }
        // log(1 + e^x) = max(x, 0) + log1p(e^{-|x|})
        UnaryOp::Softplus => x.max(zero) + (-x.abs()).exp().ln_1p(),
        UnaryOp::Step => {
            if x > zero {
                one
            } else {
                zero
            }
        }
    }
}

pub fn apply_binary<T: Scalar>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        // NaN in either operand gives NaN.
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else if a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Greater => {
            if a > b {
                T::one()
            } else {
                T::zero()
            }
        }
        BinaryOp::Equal => {
            if a == b {
                T::one()
            } else {
                T::zero()
            }
        }
    }
}

pub fn unary<T: Scalar>(pool: &mut BufferPool<T>, op: UnaryOp, x: &ArrayD<T>) -> ArrayD<T> {
    let mut out = pool.alloc(x.shape());
    Zip::from(&mut out)
        .and(x)
        .for_each(|o, &v| *o = apply_unary(op, v));
    out
}

pub fn binary<T: Scalar>(
    pool: &mut BufferPool<T>,
    op: BinaryOp,
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.alloc(shape);
    let sh = IxDyn(shape);
    if a.shape() == shape && b.shape() == shape {
        Zip::from(&mut out)
            .and(a)
            .and(b)
            .for_each(|o, &x, &y| *o = apply_binary(op, x, y));
    } else if b.len() == 1 {
        let y = *b.iter().next().expect("one element");
        let av = a.broadcast(sh).expect("shape rule checked broadcasting");
        Zip::from(&mut out)
            .and(&av)
            .for_each(|o, &x| *o = apply_binary(op, x, y));
    } else {
        let av = a
            .broadcast(sh.clone())
            .expect("shape rule checked broadcasting");
        let bv = b.broadcast(sh).expect("shape rule checked broadcasting");
        Zip::from(&mut out)
            .and(&av)
            .and(&bv)
            .for_each(|o, &x, &y| *o = apply_binary(op, x, y));
    }
    out
}

pub fn select<T: Scalar>(
    pool: &mut BufferPool<T>,
    c: &ArrayD<T>,
    a: &ArrayD<T>,
    b: &ArrayD<T>,
) -> ArrayD<T> {
    let mut out = pool.alloc(c.shape());
    Zip::from(&mut out)
        .and(c)
        .and(a)
        .and(b)
        .for_each(|o, &c, &x, &y| *o = if c != T::zero() { x } else { y });
    out
}
