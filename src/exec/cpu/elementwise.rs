//! CPU kernels for elementwise primitives.

use super::BufferPool;
use crate::exec::Scalar;
use crate::graph::{BinaryOp, UnaryOp};
use ndarray::{ArrayD, Zip};

/// f(x) for one unary primitive. NaN propagates through every function (relu(NaN) = NaN, as
/// PyTorch; step(NaN) = 0 since NaN > 0 is false).
#[inline]
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

#[inline]
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

/// Applies `f` to contiguous runs; `op` is a constant of each monomorphised call, so the
/// match in `apply_unary` folds away and simple functions vectorise.
#[inline]
fn map_slice<T: Scalar>(out: &mut [T], x: &[T], f: impl Fn(T) -> T) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

pub fn unary<T: Scalar>(pool: &mut BufferPool<T>, op: UnaryOp, x: &ArrayD<T>) -> ArrayD<T> {
    let mut out = pool.alloc(x.shape());
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout is contiguous");
    let os = out.as_slice_mut().expect("fresh buffer is contiguous");
    macro_rules! run {
        ($($v:ident),*) => {
            match op {
                $(UnaryOp::$v => map_slice(os, xs, |v| apply_unary(UnaryOp::$v, v)),)*
            }
        };
    }
    run!(Neg, Exp, Log, Sqrt, Rsqrt, Recip, Square, Tanh, Sigmoid, Relu, Softplus, Step);
    out
}

/// out = f(a, b) with NumPy broadcasting, one lane at a time (see `for_each_lane`): a
/// broadcast operand is read once per lane, a full one contiguously.
fn binary_lanes<T: Scalar>(
    out: &mut [T],
    shape: &[usize],
    a: (&[T], &[usize]),
    b: (&[T], &[usize]),
    f: impl Fn(T, T) -> T,
) {
    use LaneRead::{Const, Full};
    for_each_lane(shape, &[a.1, b.1], |o, offs, n, reads| {
        let dst = &mut out[o..o + n];
        let (xa, xb) = (&a.0[offs[0]..], &b.0[offs[1]..]);
        match (reads[0], reads[1]) {
            (Full, Full) => {
                for ((d, &x), &y) in dst.iter_mut().zip(&xa[..n]).zip(&xb[..n]) {
                    *d = f(x, y);
                }
            }
            (Full, Const) => {
                let y = xb[0];
                for (d, &x) in dst.iter_mut().zip(&xa[..n]) {
                    *d = f(x, y);
                }
            }
            (Const, Full) => {
                let x = xa[0];
                for (d, &y) in dst.iter_mut().zip(&xb[..n]) {
                    *d = f(x, y);
                }
            }
            (Const, Const) => dst.fill(f(xa[0], xb[0])),
        }
    });
}

pub fn binary<T: Scalar>(
    pool: &mut BufferPool<T>,
    op: BinaryOp,
    a: &ArrayD<T>,
    b: &ArrayD<T>,
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.alloc(shape);
    let (av, bv) = (a.as_standard_layout(), b.as_standard_layout());
    let xa = (av.as_slice().expect("standard layout"), a.shape());
    let xb = (bv.as_slice().expect("standard layout"), b.shape());
    let os = out.as_slice_mut().expect("fresh buffer is contiguous");
    macro_rules! run {
        ($($v:ident),*) => {
            match op {
                $(BinaryOp::$v => binary_lanes(os, shape, xa, xb, |x, y| apply_binary(BinaryOp::$v, x, y)),)*
            }
        };
    }
    run!(Add, Sub, Mul, Div, Max, Greater, Equal);
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

/// How one operand is read along a lane of the output (see `for_each_lane`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum LaneRead {
    /// The operand is contiguous along the lane (same extents as the output there).
    Full,
    /// The operand is broadcast along the whole lane: one value.
    Const,
}

/// Walks an output of shape `out` in contiguous lanes, each operand (NumPy-broadcast to
/// `out`, standard layout) read either contiguously or as one broadcast value per lane.
///
/// The lane is the longest suffix of axes along which every operand is all-broadcast or
/// all-full (size-1 output axes fit either); the remaining outer axes are walked in
/// row-major order with one offset update per lane, so no per-element index arithmetic.
/// `f(out_offset, operand_offsets, lane_len, reads)` is called once per lane, in row-major
/// order of the output.
pub(super) fn for_each_lane(
    out: &[usize],
    operands: &[&[usize]],
    mut f: impl FnMut(usize, &[usize], usize, &[LaneRead]),
) {
    let r = out.len();
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    // Operand extents left-padded to rank r, and their standard-layout strides
    // (0 along broadcast axes).
    let ext: Vec<Vec<usize>> = operands
        .iter()
        .map(|s| {
            let mut e = vec![1; r - s.len()];
            e.extend_from_slice(s);
            e
        })
        .collect();
    let strides: Vec<Vec<usize>> = ext
        .iter()
        .map(|e| {
            let mut st = vec![0; r];
            let mut m = 1;
            for a in (0..r).rev() {
                st[a] = if e[a] == 1 { 0 } else { m };
                m *= e[a];
            }
            st
        })
        .collect();
    let mut reads: Vec<Option<LaneRead>> = vec![None; operands.len()];
    let mut start = r;
    'suffix: while start > 0 {
        let a = start - 1;
        if out[a] != 1 {
            for (k, e) in ext.iter().enumerate() {
                let kind = if e[a] == 1 {
                    LaneRead::Const
                } else {
                    LaneRead::Full
                };
                if reads[k].is_some_and(|rd| rd != kind) {
                    break 'suffix;
                }
            }
            for (k, e) in ext.iter().enumerate() {
                reads[k] = Some(if e[a] == 1 {
                    LaneRead::Const
                } else {
                    LaneRead::Full
                });
            }
        }
        start = a;
    }
    let reads: Vec<LaneRead> = reads.iter().map(|r| r.unwrap_or(LaneRead::Full)).collect();
    let lane: usize = out[start..].iter().product();
    let outer = &out[..start];
    let mut idx = vec![0usize; start];
    let mut offs = vec![0usize; operands.len()];
    let mut o = 0;
    loop {
        f(o, &offs, lane, &reads);
        o += lane;
        if o >= total {
            return;
        }
        for a in (0..start).rev() {
            idx[a] += 1;
            for (off, st) in offs.iter_mut().zip(&strides) {
                *off += st[a];
            }
            if idx[a] < outer[a] {
                break;
            }
            for (off, st) in offs.iter_mut().zip(&strides) {
                *off -= st[a] * outer[a];
            }
            idx[a] = 0;
        }
    }
}
