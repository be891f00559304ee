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
//!
//! `forward.rs` holds Conv2d, `input_grad.rs` and `weight_grad.rs` its two transposes; this
//! file the geometry and the loops they share (im2col, padded planes, dot products).

mod forward;
mod input_grad;
#[cfg(test)]
mod tests;
mod weight_grad;

pub use forward::conv2d;
pub use input_grad::conv2d_input_grad;
pub use weight_grad::conv2d_weight_grad;

use crate::exec::Scalar;
use crate::graph::ConvParams;
use ndarray::{ArrayView2, ArrayViewMut2};

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
