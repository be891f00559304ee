//! CPU kernels for conv2d and its transposes.
//!
//! - Dense groups: im2col + GEMM (matrixmultiply through ndarray). A 1x1 kernel with stride 1
//!   and no padding needs no im2col at all: a group's input channels are already the
//!   `[C_g, H*W]` column matrix, so the GEMM reads (and, for the input gradient, writes) the
//!   tensor in place.
//! - Depthwise (one input and one output channel per group, what DARTS separable and dilated
//!   convolutions use): direct loops over a zero-padded copy of each plane, so no inner loop
//!   tests bounds. With stride 1 the padded plane is read "wide": output row p, column q lives
//!   at flat index t = p*W_p + q of a buffer with the padded row width W_p, so tap (i, j) is one
//!   contiguous multiply-add over t with source offset i*d*W_p + j*d, a loop the compiler
//!   vectorises; the W_p - W' columns past each output row are computed and dropped.
//!
//! Padding is zero-valued data: like im2col + GEMM (and PyTorch), the stride-1 depthwise
//! kernels multiply the zeros of the padding by the weights, so a non-finite weight also makes
//! the outputs whose window overlaps the padding non-finite. The weight gradient only forms
//! products of real pairs (x in the padded plane times an existing y_bar entry).
//!
//! Index formulas: see `graph::ops::conv`.

use super::BufferPool;
use crate::exec::Scalar;
use crate::graph::ConvParams;
use ndarray::{linalg::general_mat_mul, ArrayD, ArrayView2, ArrayViewMut2};

/// Geometry of one convolution, taken from the input, weight and output shapes.
struct Geo {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    cg: usize,
    og: usize,
    groups: usize,
    s: [usize; 2],
    pad: [usize; 2],
    d: [usize; 2],
}

impl Geo {
    fn new(x: &[usize], wt: &[usize], y: &[usize], p: &ConvParams) -> Geo {
        Geo {
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            o: wt[0],
            kh: wt[2],
            kw: wt[3],
            oh: y[2],
            ow: y[3],
            cg: wt[1],
            og: wt[0] / p.groups,
            groups: p.groups,
            s: p.stride,
            pad: p.padding,
            d: p.dilation,
        }
    }
    fn depthwise(&self) -> bool {
        self.cg == 1 && self.og == 1
    }
    /// 1x1 kernel, stride 1, no padding: the input is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == [1, 1] && self.pad == [0, 0]
    }
    fn krows(&self) -> usize {
        self.cg * self.kh * self.kw
    }
    /// Half-open range of output positions `q` along `axis` whose input position
    /// `q s - pad + k d` (kernel tap k) lies inside the input: `lo = ceil((pad - k d) / s)`
    /// (0 if k d >= pad), `hi = min(out, floor((pad + n - 1 - k d) / s) + 1)`.
    fn valid(&self, axis: usize, k: usize) -> (usize, usize) {
        let (s, pad, off) = (self.s[axis], self.pad[axis], k * self.d[axis]);
        let (n, out) = if axis == 0 {
            (self.h, self.oh)
        } else {
            (self.w, self.ow)
        };
        let lo = if off >= pad {
            0
        } else {
            (pad - off).div_ceil(s)
        };
        let hi = if pad + n > off {
            ((pad + n - 1 - off) / s + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
    /// Input position of output position `q` (in the valid range) and tap `k` along `axis`.
    #[inline]
    fn input_pos(&self, axis: usize, q: usize, k: usize) -> usize {
        q * self.s[axis] + k * self.d[axis] - self.pad[axis]
    }
    /// Padded plane extents (H + 2 pad_h, W + 2 pad_w).
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad[0], self.w + 2 * self.pad[1])
    }
}

/// dst[k] += a * src[k * step] for k in 0..dst.len().
#[inline]
fn axpy<T: Scalar>(dst: &mut [T], a: T, src: &[T], step: usize) {
    if step == 1 {
        let n = dst.len();
        for (d, &s) in dst.iter_mut().zip(&src[..n]) {
            *d += a * s;
        }
    } else {
        for (d, &s) in dst.iter_mut().zip(src.iter().step_by(step)) {
            *d += a * s;
        }
    }
}

/// acc[k] += x[k * step] * y[k] for k in 0..acc.len().
#[inline]
fn mul_acc<T: Scalar>(acc: &mut [T], x: &[T], step: usize, y: &[T]) {
    if step == 1 {
        for ((a, &u), &v) in acc.iter_mut().zip(&x[..y.len()]).zip(y) {
            *a += u * v;
        }
    } else {
        for ((a, &u), &v) in acc.iter_mut().zip(x.iter().step_by(step)).zip(y) {
            *a += u * v;
        }
    }
}

/// sum_k a[k] b[k] over k in 0..a.len(), in a fixed order: product k goes to partial sum
/// k mod 8 (each accumulating in increasing k from 0, the tail past the last multiple of 8
/// to partials 0, 1, ...), combined as ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)).
/// Eight independent partials let the compiler vectorise without reassociating.
#[inline]
fn dot_lanes<T: Scalar>(a: &[T], b: &[T]) -> T {
    let b = &b[..a.len()];
    let mut s = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((acc, &u), &v) in s.iter_mut().zip(x).zip(y) {
            *acc += u * v;
        }
    }
    for (k, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        s[k] += x * y;
    }
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

/// Whether every entry is finite: v * 0 is +-0 for finite v and NaN for +-inf and NaN, and
/// NaN survives addition; eight partial sums and no early exit let the scan vectorise.
fn all_finite<T: Scalar>(x: &[T]) -> bool {
    let mut s = [T::zero(); 8];
    let c = x.chunks_exact(8);
    let r = c.remainder();
    for ch in c {
        for (a, &v) in s.iter_mut().zip(ch) {
            *a += v * T::zero();
        }
    }
    for (a, &v) in s.iter_mut().zip(r) {
        *a += v * T::zero();
    }
    s.iter().all(|v| *v == T::zero())
}

/// Copy an `h x w` plane into the zeroed `hp x wp` buffer `dst` at row `top`, column `left`.
fn pad_plane<T: Scalar>(
    src: &[T],
    h: usize,
    w: usize,
    dst: &mut [T],
    wp: usize,
    top: usize,
    left: usize,
) {
    dst.fill(T::zero());
    for (r, row) in src.chunks_exact(w).take(h).enumerate() {
        dst[(top + r) * wp + left..][..w].copy_from_slice(row);
    }
}

/// col[(c*kh + i)*kw + j, p*ow + q] = x[c0 + c, p s - pad + i d, q s - pad + j d] (0 in padding).
fn im2col<T: Scalar>(g: &Geo, x: &[T], c0: usize, col: &mut [T]) {
    let plane = g.oh * g.ow;
    for c in 0..g.cg {
        let xc = &x[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for i in 0..g.kh {
            let (plo, phi) = g.valid(0, i);
            for j in 0..g.kw {
                let (qlo, qhi) = g.valid(1, j);
                let row = &mut col[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                row[..plo * g.ow].fill(T::zero());
                row[phi * g.ow..].fill(T::zero());
                for p in plo..phi {
                    let dst = &mut row[p * g.ow..(p + 1) * g.ow];
                    dst[..qlo].fill(T::zero());
                    dst[qhi..].fill(T::zero());
                    if qlo < qhi {
                        let src = &xc[g.input_pos(0, p, i) * g.w..][..g.w];
                        let src = &src[g.input_pos(1, qlo, j)..];
                        let dst = &mut dst[qlo..qhi];
                        if g.s[1] == 1 {
                            dst.copy_from_slice(&src[..dst.len()]);
                        } else {
                            for (d, &s) in dst.iter_mut().zip(src.iter().step_by(g.s[1])) {
                                *d = s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The transpose of im2col: x[c0 + c, ...] += col[...] (accumulating overlaps).
fn col2im<T: Scalar>(g: &Geo, col: &[T], c0: usize, x: &mut [T]) {
    let plane = g.oh * g.ow;
    for c in 0..g.cg {
        let xc = &mut x[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for i in 0..g.kh {
            let (plo, phi) = g.valid(0, i);
            for j in 0..g.kw {
                let (qlo, qhi) = g.valid(1, j);
                if qlo >= qhi {
                    continue;
                }
                let row = &col[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                for p in plo..phi {
                    let src = &row[p * g.ow + qlo..p * g.ow + qhi];
                    let dst = &mut xc[g.input_pos(0, p, i) * g.w..][..g.w];
                    let dst = &mut dst[g.input_pos(1, qlo, j)..];
                    if g.s[1] == 1 {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        for (d, &s) in dst.iter_mut().step_by(g.s[1]).zip(src) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

fn mat<T>(s: &[T], r: usize, c: usize) -> ArrayView2<'_, T> {
    ArrayView2::from_shape((r, c), s).expect("buffer matches matrix")
}

fn mat_mut<T>(s: &mut [T], r: usize, c: usize) -> ArrayViewMut2<'_, T> {
    ArrayViewMut2::from_shape((r, c), s).expect("buffer matches matrix")
}

/// Stride-1 correlation of one zero-padded plane, read wide (see the module doc):
/// `acc[t] = sum_{(i, j) row-major} taps[i*kw + j] * src[t + i dh wp + j dw]` for
/// t in 0..acc.len(), accumulated from 0 in that tap order; then
/// `out[r, q] = acc[r wp + q]` for the `out.len() / ow` rows of width `ow`.
#[allow(clippy::too_many_arguments)]
fn corr_wide<T: Scalar>(
    src: &[T],
    wp: usize,
    taps: &[T],
    kw: usize,
    d: [usize; 2],
    acc: &mut [T],
    out: &mut [T],
    ow: usize,
) {
    acc.fill(T::zero());
    for (k, &wv) in taps.iter().enumerate() {
        let off = (k / kw) * d[0] * wp + (k % kw) * d[1];
        axpy(acc, wv, &src[off..], 1);
    }
    for (r, row) in out.chunks_exact_mut(ow).enumerate() {
        row.copy_from_slice(&acc[r * wp..][..ow]);
    }
}

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

#[cfg(test)]
mod tests {
    //! The kernels against naive 7-loop contractions, written straight from the index
    //! formulas in `graph::ops::conv`, in f64 over a sweep of geometries.

    use super::*;
    use crate::graph::ConvParams;
    use ndarray::IxDyn;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// gamma_K = K u / (1 - K u) (Higham, Lemma 3.1).
    fn gamma(k: usize) -> f64 {
        let ku = k as f64 * f64::UNIT_ROUNDOFF;
        ku / (1.0 - ku)
    }

    /// Kernel and reference each compute an entry as a sum of at most K products in some
    /// order, so each is within gamma_K * sum |products| of the exact value (Higham, eq. 3.5)
    /// and they differ by at most 2 gamma_K * sum |products|.
    fn summation_tolerance(k: usize, abs_sum: f64) -> f64 {
        2.0 * gamma(k) * abs_sum
    }

    fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        ArrayD::from_shape_fn(IxDyn(shape), |_| rng.random_range(-1.0..1.0))
    }

    /// A pool whose free buffers of the given lengths are full of NaN, so a kernel that
    /// reads an allocated buffer before writing it fails the comparison.
    fn poisoned_pool(lens: &[usize]) -> BufferPool<f64> {
        let mut pool = BufferPool::default();
        for &n in lens {
            pool.recycle(ArrayD::from_elem(IxDyn(&[n]), f64::NAN));
            pool.recycle(ArrayD::from_elem(IxDyn(&[n]), f64::NAN));
        }
        pool
    }

    /// The input position `q s - pad + k d`, or None in the padding.
    fn src(q: usize, k: usize, s: usize, pad: usize, d: usize, n: usize) -> Option<usize> {
        let v = (q * s + k * d) as isize - pad as isize;
        (v >= 0 && (v as usize) < n).then_some(v as usize)
    }

    /// Calls `f(n, o, p, q, c, ci, i, j, h, v)` for every product term of the conv
    /// contraction: output (n, o, p, q), input channel c (= g(o) C_g + ci), tap (i, j),
    /// in-bounds input position (h, v).
    fn for_each_term(
        x: &[usize],
        w: &[usize],
        y: &[usize],
        p: &ConvParams,
        mut f: impl FnMut([usize; 4], [usize; 4], [usize; 4]),
    ) {
        let (cg, og) = (w[1], w[0] / p.groups);
        for n in 0..y[0] {
            for o in 0..y[1] {
                for pp in 0..y[2] {
                    for q in 0..y[3] {
                        for ci in 0..cg {
                            for i in 0..w[2] {
                                for j in 0..w[3] {
                                    let hh =
                                        src(pp, i, p.stride[0], p.padding[0], p.dilation[0], x[2]);
                                    let vv =
                                        src(q, j, p.stride[1], p.padding[1], p.dilation[1], x[3]);
                                    if let (Some(h), Some(v)) = (hh, vv) {
                                        let c = (o / og) * cg + ci;
                                        f([n, o, pp, q], [n, c, h, v], [o, ci, i, j]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn check(name: &str, got: &ArrayD<f64>, want: &ArrayD<f64>, abs: &ArrayD<f64>, k: usize) {
        assert_eq!(got.shape(), want.shape(), "{name}: shape");
        for ((g, w), a) in got.iter().zip(want).zip(abs) {
            let tol = summation_tolerance(k, *a);
            assert!(
                (g - w).abs() <= tol,
                "{name}: kernel {g} vs reference {w}, tolerance {tol}"
            );
        }
    }

    #[test]
    fn kernels_match_naive_contractions() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let c = 4;
        let mut cases = 0;
        for &(h, wd) in &[(7usize, 6usize), (8, 9)] {
            for k in [1usize, 3, 5] {
                for stride in [1usize, 2] {
                    for pad in [0usize, 1, 2] {
                        for dil in [1usize, 2] {
                            for groups in [1usize, c, 2] {
                                let p = ConvParams::new(stride, pad, dil, groups);
                                let (Some(oh), Some(ow)) =
                                    (p.out_len(0, h, k), p.out_len(1, wd, k))
                                else {
                                    continue;
                                };
                                let o = if groups == c { c } else { 6 };
                                let xs = [2, c, h, wd];
                                let ws = [o, c / groups, k, k];
                                let ys = [2, o, oh, ow];
                                one_case(&xs, &ws, &ys, &p, &mut rng);
                                cases += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 150, "sweep ran {cases} geometries");
    }

    fn one_case(xs: &[usize], ws: &[usize], ys: &[usize], p: &ConvParams, rng: &mut ChaCha8Rng) {
        let name = format!("x {xs:?} w {ws:?} {p:?}");
        let x = random(xs, rng);
        let w = random(ws, rng);
        let gy = random(ys, rng);
        let z = |s: &[usize]| ArrayD::<f64>::zeros(IxDyn(s));
        let (mut y, mut y_abs) = (z(ys), z(ys));
        let (mut gx, mut gx_abs) = (z(xs), z(xs));
        let (mut gw, mut gw_abs) = (z(ws), z(ws));
        for_each_term(xs, ws, ys, p, |yi, xi, wi| {
            let (yi, xi, wi) = (IxDyn(&yi), IxDyn(&xi), IxDyn(&wi));
            let t = x[&xi] * w[&wi];
            y[&yi] += t;
            y_abs[&yi] += t.abs();
            let t = gy[&yi] * w[&wi];
            gx[&xi] += t;
            gx_abs[&xi] += t.abs();
            let t = x[&xi] * gy[&yi];
            gw[&wi] += t;
            gw_abs[&wi] += t.abs();
        });
        let taps = ws[2] * ws[3];
        let og = ws[0] / p.groups;
        let col = ws[1] * taps * ys[2] * ys[3];
        let lens = [
            xs.iter().product(),
            ys.iter().product(),
            ws.iter().product(),
            col,
        ];
        let got = conv2d(&mut poisoned_pool(&lens), &x, &w, p, ys);
        check(&format!("conv {name}"), &got, &y, &y_abs, ws[1] * taps);
        let got = conv2d_input_grad(&mut poisoned_pool(&lens), &gy, &w, p, xs);
        check(&format!("input grad {name}"), &got, &gx, &gx_abs, og * taps);
        let got = conv2d_weight_grad(&mut poisoned_pool(&lens), &x, &gy, p, ws);
        check(
            &format!("weight grad {name}"),
            &got,
            &gw,
            &gw_abs,
            xs[0] * ys[2] * ys[3],
        );
    }

    /// An infinite x in column 0 with a 3x3 kernel and padding 1: taps j = 2 never reach
    /// column 0, so gw[.., .., .., 2] stays finite; the wide layout's zero columns would
    /// meet it, and the kernel must not form those 0 * inf products.
    #[test]
    fn weight_grad_forms_no_products_with_nonfinite_x_outside_the_window() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (xs, ws) = ([2, 3, 6, 7], [3, 1, 3, 3]);
        let p = ConvParams::new(1, 1, 1, 3);
        let ys = [2, 3, 6, 7];
        let mut x = random(&xs, &mut rng);
        x[[1, 2, 3, 0]] = f64::INFINITY;
        let gy = random(&ys, &mut rng);
        let (mut gw, mut gw_abs) = (
            ArrayD::<f64>::zeros(IxDyn(&ws)),
            ArrayD::<f64>::zeros(IxDyn(&ws)),
        );
        for_each_term(&xs, &ws, &ys, &p, |yi, xi, wi| {
            let t = x[IxDyn(&xi)] * gy[IxDyn(&yi)];
            gw[IxDyn(&wi)] += t;
            gw_abs[IxDyn(&wi)] += t.abs();
        });
        let got = conv2d_weight_grad(&mut BufferPool::default(), &x, &gy, &p, &ws);
        for ((g, w), a) in got.iter().zip(&gw).zip(&gw_abs) {
            if w.is_finite() {
                assert!(
                    (g - w).abs() <= summation_tolerance(2 * 6 * 7, *a),
                    "{g} vs {w}"
                );
            } else {
                assert!(g == w || (g.is_nan() && w.is_nan()), "{g} vs {w}");
            }
        }
        assert!(gw[[2, 0, 1, 2]].is_finite() && gw[[2, 0, 1, 1]].is_infinite());
    }

    #[test]
    fn valid_ranges_match_the_bounds_test() {
        for (n, k, s, pad, d) in [
            (7, 3, 1, 1, 1),
            (8, 5, 2, 2, 2),
            (6, 3, 2, 0, 1),
            (5, 5, 1, 4, 1),
        ] {
            let p = ConvParams::new(s, pad, d, 1);
            let Some(out) = p.out_len(0, n, k) else {
                continue;
            };
            let g = Geo::new(&[1, 1, n, n], &[1, 1, k, k], &[1, 1, out, out], &p);
            for j in 0..k {
                let (lo, hi) = g.valid(1, j);
                for q in 0..out {
                    let inside = src(q, j, s, pad, d, n).is_some();
                    assert_eq!(
                        inside,
                        (lo..hi).contains(&q),
                        "n {n} k {k} s {s} pad {pad} d {d} j {j} q {q}"
                    );
                }
            }
        }
    }
}
