//! Conv2d: y = conv(x, w), by depthwise loops, a pointwise GEMM, or im2col + GEMM.

use super::{axpy, corr_wide, im2col, mat, mat_mut, pad_plane, Geo};
use crate::exec::cpu::BufferPool;
use crate::exec::Scalar;
use crate::graph::ConvParams;
use ndarray::{linalg::general_mat_mul, ArrayD};

/// y = conv(x, w).
pub fn conv2d<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    wt: &ArrayD<T>,
    p: &ConvParams,
    yshape: &[usize],
) -> ArrayD<T> {
    let g = Geo::new(x.shape(), wt.shape(), yshape, p);
    let mut y = pool.alloc(yshape);
    let xs = x.as_slice().expect("standard layout");
    let ws = wt.as_slice().expect("standard layout");
    let ys = y.as_slice_mut().expect("fresh buffer");
    let plane = g.oh * g.ow;
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    if g.depthwise() {
        let (hp, wp) = g.padded();
        let mut xp = vec![T::zero(); hp * wp];
        // Stride 1: the wide tap loop over (oh - 1) wp + ow positions.
        let mut acc = vec![T::zero(); (g.oh - 1) * wp + g.ow];
        for n in 0..g.n {
            for c in 0..g.c {
                let xc = &xs[(n * g.c + c) * hw..][..hw];
                let wc = &ws[c * kk..][..kk];
                let yc = &mut ys[(n * g.o + c) * plane..][..plane];
                pad_plane(xc, g.h, g.w, &mut xp, wp, g.pad[0], g.pad[1]);
                if g.s == [1, 1] {
                    corr_wide(&xp, wp, wc, g.kw, g.d, &mut acc, yc, g.ow);
                    continue;
                }
                // Strided: one output row at a time, taps in row-major order.
                for (pp, dst) in yc.chunks_exact_mut(g.ow).enumerate() {
                    dst.fill(T::zero());
                    for (k, &wv) in wc.iter().enumerate() {
                        let (i, j) = (k / g.kw, k % g.kw);
                        let src = &xp[(pp * g.s[0] + i * g.d[0]) * wp + j * g.d[1]..];
                        axpy(dst, wv, src, g.s[1]);
                    }
                }
            }
        }
        return y;
    }
    if g.pointwise() {
        for n in 0..g.n {
            for gi in 0..g.groups {
                let wg = mat(&ws[gi * g.og * g.cg..][..g.og * g.cg], g.og, g.cg);
                let xg = mat(&xs[(n * g.c + gi * g.cg) * hw..][..g.cg * hw], g.cg, hw);
                let mut yg = mat_mut(
                    &mut ys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                    g.og,
                    plane,
                );
                general_mat_mul(T::one(), &wg, &xg, T::zero(), &mut yg);
            }
        }
        return y;
    }
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let xn = &xs[n * g.c * hw..][..g.c * hw];
        for gi in 0..g.groups {
            im2col(&g, xn, gi * g.cg, cs);
            let wg = mat(&ws[gi * g.og * kr..][..g.og * kr], g.og, kr);
            let mut yg = mat_mut(
                &mut ys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                g.og,
                plane,
            );
            general_mat_mul(T::one(), &wg, &mat(cs, kr, plane), T::zero(), &mut yg);
        }
    }
    pool.recycle(col);
    y
}
