//! Conv2dInputGrad: x_bar = the transpose of conv in x, by depthwise loops (a stride-1
//! correlation with the flipped kernel, or a scatter into a padded plane), a pointwise GEMM,
//! or GEMM + col2im.

use super::{col2im, corr_wide, mat, mat_mut, pad_plane, Geo};
use crate::exec::cpu::BufferPool;
use crate::exec::Scalar;
use crate::graph::ConvParams;
use ndarray::{linalg::general_mat_mul, ArrayD};

/// gx = conv_input_grad(gy, w): the transpose of conv in x.
pub fn conv2d_input_grad<T: Scalar>(
    pool: &mut BufferPool<T>,
    gy: &ArrayD<T>,
    wt: &ArrayD<T>,
    p: &ConvParams,
    xshape: &[usize],
) -> ArrayD<T> {
    let g = Geo::new(xshape, wt.shape(), gy.shape(), p);
    let gys = gy.as_slice().expect("standard layout");
    let ws = wt.as_slice().expect("standard layout");
    let plane = g.oh * g.ow;
    let (hw, kk) = (g.h * g.w, g.kh * g.kw);
    if g.depthwise() {
        let mut gx = pool.alloc(xshape);
        let gxs = gx.as_slice_mut().expect("fresh buffer");
        let reach = [(g.kh - 1) * g.d[0], (g.kw - 1) * g.d[1]];
        if g.s == [1, 1] && g.pad[0] <= reach[0] && g.pad[1] <= reach[1] {
            // Stride 1 transpose = stride-1 correlation of y_bar zero-padded by
            // P = (k - 1) d - pad on each side with the flipped kernel:
            // x_bar[h, v] = sum_{i', j'} y_bar_P[h + i' d, v + j' d] w[kh-1-i', kw-1-j'].
            let top = [reach[0] - g.pad[0], reach[1] - g.pad[1]];
            let (hp, wp) = (g.h + reach[0], g.w + reach[1]);
            let mut gyp = vec![T::zero(); hp * wp];
            let mut acc = vec![T::zero(); (g.h - 1) * wp + g.w];
            let mut flipped = vec![T::zero(); kk];
            for c in 0..g.c {
                for (f, &v) in flipped.iter_mut().zip(ws[c * kk..][..kk].iter().rev()) {
                    *f = v;
                }
                for n in 0..g.n {
                    let gyc = &gys[(n * g.o + c) * plane..][..plane];
                    let gxc = &mut gxs[(n * g.c + c) * hw..][..hw];
                    pad_plane(gyc, g.oh, g.ow, &mut gyp, wp, top[0], top[1]);
                    corr_wide(&gyp, wp, &flipped, g.kw, g.d, &mut acc, gxc, g.w);
                }
            }
            return gx;
        }
        // General stride: scatter each y_bar row into a zeroed padded plane, taps in
        // row-major order, then crop the padding.
        let (hp, wp) = g.padded();
        let mut gxp = vec![T::zero(); hp * wp];
        for n in 0..g.n {
            for c in 0..g.c {
                let gyc = &gys[(n * g.o + c) * plane..][..plane];
                let wc = &ws[c * kk..][..kk];
                gxp.fill(T::zero());
                for (pp, src) in gyc.chunks_exact(g.ow).enumerate() {
                    for (k, &wv) in wc.iter().enumerate() {
                        let (i, j) = (k / g.kw, k % g.kw);
                        let dst = &mut gxp[(pp * g.s[0] + i * g.d[0]) * wp + j * g.d[1]..];
                        for (d, &s) in dst.iter_mut().step_by(g.s[1]).zip(src) {
                            *d += wv * s;
                        }
                    }
                }
                let gxc = &mut gxs[(n * g.c + c) * hw..][..hw];
                for (r, row) in gxc.chunks_exact_mut(g.w).enumerate() {
                    row.copy_from_slice(&gxp[(r + g.pad[0]) * wp + g.pad[1]..][..g.w]);
                }
            }
        }
        return gx;
    }
    if g.pointwise() {
        let mut gx = pool.alloc(xshape);
        let gxs = gx.as_slice_mut().expect("fresh buffer");
        for n in 0..g.n {
            for gi in 0..g.groups {
                let wg = mat(&ws[gi * g.og * g.cg..][..g.og * g.cg], g.og, g.cg);
                let gyg = mat(
                    &gys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                    g.og,
                    plane,
                );
                let mut gxg = mat_mut(
                    &mut gxs[(n * g.c + gi * g.cg) * hw..][..g.cg * hw],
                    g.cg,
                    hw,
                );
                general_mat_mul(T::one(), &wg.t(), &gyg, T::zero(), &mut gxg);
            }
        }
        return gx;
    }
    let mut gx = pool.zeros(xshape);
    let gxs = gx.as_slice_mut().expect("fresh buffer");
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let gxn = &mut gxs[n * g.c * hw..][..g.c * hw];
        for gi in 0..g.groups {
            let wg = mat(&ws[gi * g.og * kr..][..g.og * kr], g.og, kr);
            let gyg = mat(
                &gys[(n * g.o + gi * g.og) * plane..][..g.og * plane],
                g.og,
                plane,
            );
            general_mat_mul(
                T::one(),
                &wg.t(),
                &gyg,
                T::zero(),
                &mut mat_mut(cs, kr, plane),
            );
            col2im(&g, cs, gi * g.cg, gxn);
        }
    }
    pool.recycle(col);
    gx
}
