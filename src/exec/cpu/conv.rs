//! CPU kernels for conv2d and its transposes: im2col + GEMM (matrixmultiply through
//! ndarray) for dense groups, direct loops for depthwise (one input and one output channel
//! per group), which is what DARTS separable and dilated convolutions use.
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
    fn krows(&self) -> usize {
        self.cg * self.kh * self.kw
    }
    /// Input row for output row p and kernel row i, or None in the padding.
    #[inline]
    fn in_y(&self, p: usize, i: usize) -> Option<usize> {
        let y = p * self.s[0] + i * self.d[0];
        (y >= self.pad[0] && y - self.pad[0] < self.h).then(|| y - self.pad[0])
    }
    #[inline]
    fn in_x(&self, q: usize, j: usize) -> Option<usize> {
        let x = q * self.s[1] + j * self.d[1];
        (x >= self.pad[1] && x - self.pad[1] < self.w).then(|| x - self.pad[1])
    }
}

/// col[(c*kh + i)*kw + j, p*ow + q] = x[c0 + c, p s - pad + i d, q s - pad + j d] (0 in padding).
fn im2col<T: Scalar>(g: &Geo, x: &[T], c0: usize, col: &mut [T]) {
    let plane = g.oh * g.ow;
    for c in 0..g.cg {
        let xc = &x[(c0 + c) * g.h * g.w..(c0 + c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                for p in 0..g.oh {
                    let dst = &mut row[p * g.ow..(p + 1) * g.ow];
                    match g.in_y(p, i) {
                        None => dst.fill(T::zero()),
                        Some(yy) => {
                            let src = &xc[yy * g.w..(yy + 1) * g.w];
                            for (q, d) in dst.iter_mut().enumerate() {
                                *d = match g.in_x(q, j) {
                                    Some(xx) => src[xx],
                                    None => T::zero(),
                                };
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
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                for p in 0..g.oh {
                    if let Some(yy) = g.in_y(p, i) {
                        let dst = &mut xc[yy * g.w..(yy + 1) * g.w];
                        for q in 0..g.ow {
                            if let Some(xx) = g.in_x(q, j) {
                                dst[xx] += row[p * g.ow + q];
                            }
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
    if g.depthwise() {
        for n in 0..g.n {
            for c in 0..g.c {
                let xc = &xs[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                let wc = &ws[c * g.kh * g.kw..][..g.kh * g.kw];
                let yc = &mut ys[(n * g.o + c) * plane..][..plane];
                yc.fill(T::zero());
                for i in 0..g.kh {
                    for pp in 0..g.oh {
                        let Some(yy) = g.in_y(pp, i) else { continue };
                        let src = &xc[yy * g.w..(yy + 1) * g.w];
                        let dst = &mut yc[pp * g.ow..(pp + 1) * g.ow];
                        for j in 0..g.kw {
                            let wv = wc[i * g.kw + j];
                            for (q, d) in dst.iter_mut().enumerate() {
                                if let Some(xx) = g.in_x(q, j) {
                                    *d += wv * src[xx];
                                }
                            }
                        }
                    }
                }
            }
        }
        return y;
    }
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let xn = &xs[n * g.c * g.h * g.w..][..g.c * g.h * g.w];
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
    let mut gx = pool.zeros(xshape);
    let gys = gy.as_slice().expect("standard layout");
    let ws = wt.as_slice().expect("standard layout");
    let gxs = gx.as_slice_mut().expect("fresh buffer");
    let plane = g.oh * g.ow;
    if g.depthwise() {
        for n in 0..g.n {
            for c in 0..g.c {
                let gyc = &gys[(n * g.o + c) * plane..][..plane];
                let wc = &ws[c * g.kh * g.kw..][..g.kh * g.kw];
                let gxc = &mut gxs[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                for i in 0..g.kh {
                    for pp in 0..g.oh {
                        let Some(yy) = g.in_y(pp, i) else { continue };
                        let src = &gyc[pp * g.ow..(pp + 1) * g.ow];
                        let dst = &mut gxc[yy * g.w..(yy + 1) * g.w];
                        for j in 0..g.kw {
                            let wv = wc[i * g.kw + j];
                            for (q, &s) in src.iter().enumerate() {
                                if let Some(xx) = g.in_x(q, j) {
                                    dst[xx] += wv * s;
                                }
                            }
                        }
                    }
                }
            }
        }
        return gx;
    }
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let gxn = &mut gxs[n * g.c * g.h * g.w..][..g.c * g.h * g.w];
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
    if g.depthwise() {
        for n in 0..g.n {
            for c in 0..g.c {
                let xc = &xs[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
                let gyc = &gys[(n * g.o + c) * plane..][..plane];
                let gwc = &mut gws[c * g.kh * g.kw..][..g.kh * g.kw];
                for i in 0..g.kh {
                    for pp in 0..g.oh {
                        let Some(yy) = g.in_y(pp, i) else { continue };
                        let src = &xc[yy * g.w..(yy + 1) * g.w];
                        let gyr = &gyc[pp * g.ow..(pp + 1) * g.ow];
                        for j in 0..g.kw {
                            let mut acc = T::zero();
                            for (q, &s) in gyr.iter().enumerate() {
                                if let Some(xx) = g.in_x(q, j) {
                                    acc += s * src[xx];
                                }
                            }
                            gwc[i * g.kw + j] += acc;
                        }
                    }
                }
            }
        }
        return gw;
    }
    let kr = g.krows();
    let mut col = pool.alloc(&[kr * plane]);
    let cs = col.as_slice_mut().expect("fresh buffer");
    for n in 0..g.n {
        let xn = &xs[n * g.c * g.h * g.w..][..g.c * g.h * g.w];
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
