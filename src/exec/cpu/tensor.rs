//! CPU kernels for reductions, movement, matmul, gather/scatter and log-softmax.

use super::elementwise::{for_each_lane, LaneRead};
use super::BufferPool;
use crate::exec::{row_index, ExecError, Scalar};
use crate::graph::Node;
use ndarray::{linalg::general_mat_mul, ArrayD, Axis, Ix2, IxDyn, Slice, Zip};

/// Number of interleaved partial sums used to sum one contiguous lane (see `reduce_sum`).
const LANES: usize = 8;

/// Sum of a contiguous lane in a fixed order: element k goes to partial sum k mod 8 (each
/// partial accumulates in increasing k, from 0), the tail past the last multiple of 8 goes to
/// partial sums 0, 1, ... in order, and the partials are combined as
/// `((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7))`. Independent of the data and of the
/// machine, so results are bit-reproducible; it is a sum of `lane.len()` terms, so its error
/// is bounded by gamma_K sum |x| like any order (Higham, ch. 4).
#[inline]
fn lane_sum<T: Scalar>(lane: &[T]) -> T {
    let mut s = [T::zero(); LANES];
    let mut chunks = lane.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &v) in s.iter_mut().zip(ch) {
            *a += v;
        }
    }
    for (a, &v) in s.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// Sum over `axes` keeping them (as size-1 axes of `shape`).
///
/// x's axes are merged into maximal runs that are all reduced or all kept (size-1 axes
/// dropped), and x is walked as contiguous lanes of its last run, in row-major order:
/// - last run reduced: each lane is one output's contribution, summed by `lane_sum`, and
///   added to its output slot;
/// - last run kept: the lane is added elementwise to a contiguous output row.
///
/// So each output is `(((0 + l_1) + l_2) + ...)` over its lane contributions in x's row-major
/// order (a lane contribution is a single element when the last run is kept). The order is
/// fixed by the shapes alone. Index arithmetic happens once per lane, not per element.
pub fn reduce_sum<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    axes: &[usize],
    shape: &[usize],
) -> ArrayD<T> {
    let mut out = pool.zeros(shape);
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().expect("standard layout is contiguous");
    let os = out.as_slice_mut().expect("fresh buffer is contiguous");
    // Runs (length, reduced?) of x's axes, size-1 axes dropped.
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for (a, &len) in x.shape().iter().enumerate() {
        let red = axes.contains(&a);
        match runs.last_mut() {
            _ if len == 1 => {}
            Some((l, r)) if *r == red => *l *= len,
            _ => runs.push((len, red)),
        }
    }
    let Some(&(lane, last_reduced)) = runs.last() else {
        // One element in, one out.
        os.copy_from_slice(xs);
        return out;
    };
    if xs.is_empty() {
        return out;
    }
    let outer = &runs[..runs.len() - 1];
    // Output stride of each outer run (0 for reduced runs): kept runs are row-major in out.
    let mut ostride = vec![0usize; outer.len()];
    let mut m = if last_reduced { 1 } else { lane };
    for (k, &(len, red)) in outer.iter().enumerate().rev() {
        if !red {
            ostride[k] = m;
            m *= len;
        }
    }
    let mut idx = vec![0usize; outer.len()];
    let mut off = 0usize;
    for xl in xs.chunks_exact(lane) {
        if last_reduced {
            os[off] += lane_sum(xl);
        } else {
            for (o, &v) in os[off..off + lane].iter_mut().zip(xl) {
                *o += v;
            }
        }
        // Advance the outer multi-index (odometer) and the output offset with it.
        for k in (0..outer.len()).rev() {
            idx[k] += 1;
            off += ostride[k];
            if idx[k] < outer[k].0 {
                break;
            }
            off -= ostride[k] * outer[k].0;
            idx[k] = 0;
        }
    }
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
    let xv = x.as_standard_layout();
    let xs = xv.as_slice().expect("standard layout");
    let os = out.as_slice_mut().expect("fresh buffer is contiguous");
    for_each_lane(shape, &[x.shape()], |o, offs, n, reads| match reads[0] {
        LaneRead::Full => os[o..o + n].copy_from_slice(&xs[offs[0]..offs[0] + n]),
        LaneRead::Const => os[o..o + n].fill(xs[offs[0]]),
    });
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// gamma_K = K u / (1 - K u) (Higham, Lemma 3.1): each of the kernel's and the naive sum
    /// of K terms is within gamma_{K-1} sum |x| <= gamma_K sum |x| of the exact sum.
    fn gamma(k: usize) -> f64 {
        let ku = k as f64 * f64::UNIT_ROUNDOFF;
        ku / (1.0 - ku)
    }

    #[test]
    fn reduce_sum_matches_naive_sum_over_every_axis_subset() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for dims in [[3usize, 4, 5, 19], [2, 1, 3, 9], [1, 6, 1, 1], [5, 3, 2, 8]] {
            let x = ArrayD::from_shape_fn(IxDyn(&dims), |_| rng.random_range(-1.0f64..1.0));
            for mask in 0u32..16 {
                let axes: Vec<usize> = (0..4).filter(|a| mask & (1 << a) != 0).collect();
                let shape: Vec<usize> = (0..4)
                    .map(|a| if axes.contains(&a) { 1 } else { dims[a] })
                    .collect();
                let mut want = ArrayD::<f64>::zeros(IxDyn(&shape));
                let mut abs = ArrayD::<f64>::zeros(IxDyn(&shape));
                for (i, &v) in x.indexed_iter() {
                    let o: Vec<usize> = (0..4)
                        .map(|a| if axes.contains(&a) { 0 } else { i[a] })
                        .collect();
                    want[IxDyn(&o)] += v;
                    abs[IxDyn(&o)] += v.abs();
                }
                let k: usize = axes.iter().map(|&a| dims[a]).product();
                let mut pool = BufferPool::default();
                pool.recycle(ArrayD::from_elem(IxDyn(&[want.len()]), f64::NAN));
                let got = reduce_sum(&mut pool, &x, &axes, &shape);
                assert_eq!(got.shape(), &shape[..]);
                for ((g, w), a) in got.iter().zip(&want).zip(&abs) {
                    let tol = 2.0 * gamma(k) * a;
                    assert!(
                        (g - w).abs() <= tol,
                        "{dims:?} axes {axes:?}: {g} vs {w} (tol {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn lane_sum_order_is_the_documented_one() {
        // 1e17 + 1 - 1e17 depends on order; the documented order puts element k in partial
        // k mod 8, so [1e17, 1, .., -1e17 at index 8] sums 1e17 + -1e17 in partial 0 first.
        let mut v = vec![0.0f64; 9];
        v[0] = 1e17;
        v[1] = 1.0;
        v[8] = -1e17;
        assert_eq!(lane_sum(&v), 1.0);
        // A sequential sum would give ((1e17 + 1) - 1e17) = 0: the order really differs.
        assert_eq!(v.iter().fold(0.0, |s, &x| s + x), 0.0);
    }
}
