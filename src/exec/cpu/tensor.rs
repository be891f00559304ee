//! CPU kernels for reductions, movement, matmul, gather/scatter and log-softmax.

use super::BufferPool;
use crate::exec::{ExecError, Scalar};
use crate::graph::Node;
use ndarray::{linalg::general_mat_mul, ArrayD, Axis, Ix2, IxDyn, Slice, Zip};

/// Sum over `axes` keeping them. Sums run in increasing index order along each axis.
pub fn reduce_sum<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    axes: &[usize],
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.zeros(shape);
    let sh = IxDyn(shape);
    // Accumulate x into the broadcast view of the output: out[..] += x[..] in x's row-major
    // order (ndarray's broadcast view aliases the kept entries).
    if axes.is_empty() {
        out.assign(x);
        return out;
    }
    let mut acc = out.view_mut();
    // Walk x in row-major order; for each element add into its reduced slot.
    let strides: Vec<usize> = {
        let mut s = vec![0usize; shape.len()];
        let mut m = 1;
        for i in (0..shape.len()).rev() {
            s[i] = if shape[i] == 1 { 0 } else { m };
            m *= shape[i];
        }
        s
    };
    let acc_slice = acc.as_slice_mut().expect("fresh buffer is contiguous");
    let dims = x.shape().to_vec();
    let mut idx = vec![0usize; dims.len()];
    let xs = x.as_standard_layout();
    for &v in xs.iter() {
        let mut off = 0;
        for (i, &k) in idx.iter().enumerate() {
            off += k * strides[i];
        }
        acc_slice[off] += v;
        for d in (0..dims.len()).rev() {
            idx[d] += 1;
            if idx[d] < dims[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    let _ = sh;
    out
}

/// Max over `axes` keeping them; NaN propagates.
pub fn reduce_max<T: Scalar>(x: &ArrayD<T>, axes: &[usize]) -> ArrayD<T> {
    let mut out = x.clone();
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    for &a in &sorted {
        out = out
            .fold_axis(Axis(a), T::neg_infinity(), |&m, &v| {
                if v > m || v.is_nan() {
                    v
                } else {
                    m
                }
            })
            .insert_axis(Axis(a));
    }
    out
}

pub fn broadcast<T: Scalar>(pool: &mut BufferPool<T>, x: &ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    let mut out = pool.alloc(shape);
    out.assign(&x.broadcast(IxDyn(shape)).expect("shape rule checked"));
    out
}

pub fn reshape<T: Scalar>(pool: &mut BufferPool<T>, x: &ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    let mut out = pool.alloc(shape);
    out.as_slice_mut()
        .expect("contiguous")
        .iter_mut()
        .zip(x.iter())
        .for_each(|(o, &v)| *o = v);
    out
}

pub fn permute<T: Scalar>(pool: &mut BufferPool<T>, x: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    let v = x.view().permuted_axes(IxDyn(perm));
    let mut out = pool.alloc(v.shape());
    out.assign(&v);
    out
}

pub fn slice<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    axis: usize,
    start: usize,
    end: usize,
    step: usize,
) -> ArrayD<T> {
    let v = x.slice_axis(
        Axis(axis),
        Slice::new(start as isize, Some(end as isize), step as isize),
    );
    let mut out = pool.alloc(v.shape());
    out.assign(&v);
    out
}

pub fn pad<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    axis: usize,
    before: usize,
    interior: usize,
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.zeros(shape);
    let n = x.shape()[axis];
    let end = before + (n - 1) * (interior + 1) + 1;
    out.slice_axis_mut(
        Axis(axis),
        Slice::new(before as isize, Some(end as isize), (interior + 1) as isize),
    )
    .assign(x);
    out
}

pub fn concat<T: Scalar>(
    pool: &mut BufferPool<T>,
    xs: &[&ArrayD<T>],
    axis: usize,
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.alloc(shape);
    let mut off = 0;
    for x in xs {
        let n = x.shape()[axis];
        out.slice_axis_mut(Axis(axis), Slice::from(off..off + n))
            .assign(*x);
        off += n;
    }
    out
}

pub fn matmul<T: Scalar>(pool: &mut BufferPool<T>, a: &ArrayD<T>, b: &ArrayD<T>) -> ArrayD<T> {
    let a2 = a.view().into_dimensionality::<Ix2>().expect("rank 2");
    let b2 = b.view().into_dimensionality::<Ix2>().expect("rank 2");
    let mut out = pool.alloc(&[a2.nrows(), b2.ncols()]);
    {
        let mut o2 = out.view_mut().into_dimensionality::<Ix2>().expect("rank 2");
        general_mat_mul(T::one(), &a2, &b2, T::zero(), &mut o2);
    }
    out
}

fn row_index<T: Scalar>(v: T, rows: usize, node: &Node) -> Result<usize, ExecError> {
    let f = v.as_f64();
    if f >= 0.0 && f.fract() == 0.0 && (f as usize) < rows {
        Ok(f as usize)
    } else {
        Err(ExecError::IndexOutOfRange {
            op: node.op.name(),
            label: node.label.clone(),
            index: f,
            rows,
        })
    }
}

pub fn gather<T: Scalar>(
    pool: &mut BufferPool<T>,
    table: &ArrayD<T>,
    idx: &ArrayD<T>,
    shape: &[usize],
    node: &Node,
) -> Result<ArrayD<T>, ExecError> {
    let rows = table.shape()[0];
    let mut out = pool.alloc(shape);
    for (r, &i) in idx.iter().enumerate() {
        let i = row_index(i, rows, node)?;
        out.index_axis_mut(Axis(0), r)
            .assign(&table.index_axis(Axis(0), i));
    }
    Ok(out)
}

pub fn scatter_add<T: Scalar>(
    pool: &mut BufferPool<T>,
    idx: &ArrayD<T>,
    src: &ArrayD<T>,
    shape: &[usize],
    node: &Node,
) -> Result<ArrayD<T>, ExecError> {
    let rows = shape[0];
    let mut out = pool.zeros(shape);
    for (r, &i) in idx.iter().enumerate() {
        let i = row_index(i, rows, node)?;
        let mut dst = out.index_axis_mut(Axis(0), i);
        dst += &src.index_axis(Axis(0), r);
    }
    Ok(out)
}

/// y = x - m - log(sum(exp(x - m))) along `axis`, m the lane maximum.
pub fn log_softmax<T: Scalar>(pool: &mut BufferPool<T>, x: &ArrayD<T>, axis: usize) -> ArrayD<T> {
    let mut out = pool.alloc(x.shape());
    Zip::from(out.lanes_mut(Axis(axis)))
        .and(x.lanes(Axis(axis)))
        .for_each(|mut o, l| {
            let m = l.fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
            let s: T = l.iter().map(|&v| (v - m).exp()).sum();
            let lse = m + s.ln();
            Zip::from(&mut o).and(&l).for_each(|o, &v| *o = v - lse);
        });
    out
}
