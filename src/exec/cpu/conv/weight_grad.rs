//! Conv2dWeightGrad: w_bar = the transpose of conv in w, summed over the batch, by depthwise
//! dot products, a pointwise GEMM, or im2col + GEMM.

use super::{all_finite, dot_lanes, im2col, mat, mat_mut, mul_acc, pad_plane, Geo};
use crate::exec::cpu::BufferPool;
use crate::exec::Scalar;
use crate::graph::ConvParams;
use ndarray::{linalg::general_mat_mul, ArrayD};

/// gw = conv_weight_grad(x, gy): the transpose of conv in w (summed over the batch).
///
/// Depthwise summation order, fixed by the shapes (and, for stride 1, by whether a plane
/// of x is all finite):
/// - stride 1: each (n, c) plane gives one `dot_lanes` per tap over the wide layout
///   (rows of any plane with a non-finite x: one `dot_lanes` per output row, summed in
///   increasing row order), and `gw[c, i, j]` adds the planes' results in increasing n;
/// - otherwise: for each channel and tap, a vector of `ow` partial sums `acc[q]` accumulates
///   `x * y_bar` over (n, p) in increasing order; then `gw[c, i, j] = sum_q acc[q]` in
///   increasing q.
pub fn conv2d_weight_grad<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    p: &ConvParams,
    wshape: &[usize],
) -> ArrayD<T> {
    let g = Geo::new(x.shape(), wshape, gy.shape(), p);
    let mut gw = pool.zeros(wshape);
    let xs = x.as_slice().expect("standard layout");
    let gys = gy.as_slice().expect("standard layout");
    let gws = gw.as_slice_mut().expect("fresh buffer");
    let plane = g.oh * g.ow;
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    if g.depthwise() {
        let (hp, wp) = g.padded();
        let mut xp = vec![T::zero(); hp * wp];
        if g.s == [1, 1] {
            // Wide: y_bar is laid out with row width wp and zero columns past ow, so tap
            // (i, j) is one dot product with the padded x plane at offset i dh wp + j dw.
            let mut gyw = vec![T::zero(); (g.oh - 1) * wp + g.ow];
            let mut part = vec![T::zero(); kk];
            for c in 0..g.c {
                for n in 0..g.n {
                    let xc = &xs[(n * g.c + c) * hw..][..hw];
                    let gyc = &gys[(n * g.o + c) * plane..][..plane];
                    pad_plane(xc, g.h, g.w, &mut xp, wp, g.pad[0], g.pad[1]);
                    if all_finite(xc) {
                        // The zero columns meet only finite x, so they add exact zeros.
                        for (r, row) in gyc.chunks_exact(g.ow).enumerate() {
                            gyw[r * wp..][..g.ow].copy_from_slice(row);
                        }
                        for (k, pk) in part.iter_mut().enumerate() {
                            let off = (k / g.kw) * g.d[0] * wp + (k % g.kw) * g.d[1];
                            *pk = dot_lanes(&gyw, &xp[off..]);
                        }
                    } else {
                        // Non-finite x: only real (x, y_bar) pairs, so 0 * inf never appears.
                        for (k, pk) in part.iter_mut().enumerate() {
                            let off = (k / g.kw) * g.d[0] * wp + (k % g.kw) * g.d[1];
                            *pk = gyc
                                .chunks_exact(g.ow)
                                .enumerate()
                                .fold(T::zero(), |s, (r, row)| {
                                    s + dot_lanes(row, &xp[off + r * wp..])
                                });
                        }
                    }
                    for (dst, &v) in gws[c * kk..][..kk].iter_mut().zip(&part) {
                        *dst += v;
                    }
                }
            }
            return gw;
        }
        let mut acc = vec![T::zero(); kk * g.ow];
        for c in 0..g.c {
            acc.fill(T::zero());
            for n in 0..g.n {
                let xc = &xs[(n * g.c + c) * hw..][..hw];
                let gyc = &gys[(n * g.o + c) * plane..][..plane];
                pad_plane(xc, g.h, g.w, &mut xp, wp, g.pad[0], g.pad[1]);
                for (pp, gyr) in gyc.chunks_exact(g.ow).enumerate() {
                    for (k, a) in acc.chunks_exact_mut(g.ow).enumerate() {
                        let (i, j) = (k / g.kw, k % g.kw);
                        let src = &xp[(pp * g.s[0] + i * g.d[0]) * wp + j * g.d[1]..];
                        mul_acc(a, src, g.s[1], gyr);
                    }
                }
            }
            for (dst, a) in gws[c * kk..][..kk].iter_mut().zip(acc.chunks_exact(g.ow)) {
                *dst = a.iter().fold(T::zero(), |s, &v| s + v);
            }
        }
        return gw;
    }
    if g.pointwise() {
        for n in 0..g.n {
            for gi in 0..g.groups {
                let xg = mat(&xs[(n * g.c + gi * g.cg) * hw..][..g.cg * hw], g.cg, hw);
                let gyg = mat(
                    &gys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                    g.og,
                    plane,
                );
                let mut gwg = mat_mut(&mut gws[gi * g.og * g.cg..][..g.og * g.cg], g.og, g.cg);
                general_mat_mul(T::one(), &gyg, &xg.t(), T::one(), &mut gwg);
            }
        }
        return gw;
    }
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let xn = &xs[n * g.c * hw..][..g.c * hw];
        for gi in 0..g.groups {
            im2col(&g, xn, gi * g.cg, cs);
            let gyg = mat(
                &gys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                g.og,
                plane,
            );
            let mut gwg = mat_mut(&mut gws[gi * g.og * kr..][..g.og * kr], g.og, kr);
            general_mat_mul(T::one(), &gyg, &mat(cs, kr, plane).t(), T::one(), &mut gwg);
        }
    }
    pool.recycle(col);
    gw
}
