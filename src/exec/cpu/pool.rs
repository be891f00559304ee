//! CPU kernels for average pooling (count_include_pad = False) and max pooling (-inf
//! padding, first argmax in row-major window order, NaN wins as in PyTorch), with their
//! backward primitives. The backward kernels are written as scatters from each window; they
//! are the exact transposes of the forward maps (proofs/pooling.md).

use super::BufferPool;
use crate::exec::Scalar;
use crate::graph::PoolParams;
use ndarray::ArrayD;

struct Win {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    p: PoolParams,
}

impl Win {
    /// The in-bounds input rows and columns of output window (p, q), as half-open ranges.
    #[inline]
    fn ranges(&self, p: usize, q: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let y0 = (p * self.p.stride[0]) as isize - self.p.padding[0] as isize;
        let x0 = (q * self.p.stride[1]) as isize - self.p.padding[1] as isize;
        let y1 = (y0 + self.p.kernel[0] as isize).min(self.h as isize);
        let x1 = (x0 + self.p.kernel[1] as isize).min(self.w as isize);
        (
            y0.max(0) as usize..y1 as usize,
            x0.max(0) as usize..x1 as usize,
        )
    }
}

fn planes(xshape: &[usize], yshape: &[usize], p: &PoolParams) -> (usize, Win) {
    (
        xshape[0] * xshape[1],
        Win {
            h: xshape[2],
            w: xshape[3],
            oh: yshape[2],
            ow: yshape[3],
            p: *p,
        },
    )
}

pub fn avg_pool<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    p: &PoolParams,
    yshape: &[usize],
) -> ArrayD<T> {
    let (np, win) = planes(x.shape(), yshape, p);
    let mut y = pool.alloc(yshape);
    let xs = x.as_slice().expect("standard layout");
    let ys = y.as_slice_mut().expect("fresh buffer");
    for pl in 0..np {
        let xp = &xs[pl * win.h * win.w..][..win.h * win.w];
        for pp in 0..win.oh {
            for q in 0..win.ow {
                let (ry, rx) = win.ranges(pp, q);
                let count = ry.len() * rx.len();
                let mut s = T::zero();
                for yy in ry {
                    for xx in rx.clone() {
                        s += xp[yy * win.w + xx];
                    }
                }
                ys[(pl * win.oh + pp) * win.ow + q] = s / T::of(count as f64);
            }
        }
    }
    y
}

pub fn avg_pool_grad<T: Scalar>(
    pool: &mut BufferPool<T>,
    gy: &ArrayD<T>,
    p: &PoolParams,
    xshape: &[usize],
) -> ArrayD<T> {
    let (np, win) = planes(xshape, gy.shape(), p);
    let mut gx = pool.zeros(xshape);
    let gys = gy.as_slice().expect("standard layout");
    let gxs = gx.as_slice_mut().expect("fresh buffer");
    for pl in 0..np {
        let gxp = &mut gxs[pl * win.h * win.w..][..win.h * win.w];
        for pp in 0..win.oh {
            for q in 0..win.ow {
                let (ry, rx) = win.ranges(pp, q);
                let share =
                    gys[(pl * win.oh + pp) * win.ow + q] / T::of((ry.len() * rx.len()) as f64);
                for yy in ry {
                    for xx in rx.clone() {
                        gxp[yy * win.w + xx] += share;
                    }
                }
            }
        }
    }
    gx
}

/// Flat in-plane index of the first maximum of window (p, q); NaN counts as the maximum.
#[inline]
fn argmax<T: Scalar>(xp: &[T], win: &Win, p: usize, q: usize) -> usize {
    let (ry, rx) = win.ranges(p, q);
    let mut best = T::neg_infinity();
    let mut at = ry.start * win.w + rx.start;
    for yy in ry {
        for xx in rx.clone() {
            let v = xp[yy * win.w + xx];
            if v > best || v.is_nan() {
                best = v;
                at = yy * win.w + xx;
                if v.is_nan() {
                    return at;
                }
            }
        }
    }
    at
}

/// out[window] = c[argmax_window(x)]; with c = x this is max pooling itself.
pub fn max_pool_gather<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    c: &ArrayD<T>,
    p: &PoolParams,
    yshape: &[usize],
) -> ArrayD<T> {
    let (np, win) = planes(x.shape(), yshape, p);
    let mut y = pool.alloc(yshape);
    let xs = x.as_slice().expect("standard layout");
    let cs = c.as_slice().expect("standard layout");
    let ys = y.as_slice_mut().expect("fresh buffer");
    for pl in 0..np {
        let off = pl * win.h * win.w;
        let xp = &xs[off..off + win.h * win.w];
        for pp in 0..win.oh {
            for q in 0..win.ow {
                ys[(pl * win.oh + pp) * win.ow + q] = cs[off + argmax(xp, &win, pp, q)];
            }
        }
    }
    y
}

/// gx[argmax_window(x)] += gy[window].
pub fn max_pool_grad<T: Scalar>(
    pool: &mut BufferPool<T>,
    x: &ArrayD<T>,
    gy: &ArrayD<T>,
    p: &PoolParams,
) -> ArrayD<T> {
    let (np, win) = planes(x.shape(), gy.shape(), p);
    let mut gx = pool.zeros(x.shape());
    let xs = x.as_slice().expect("standard layout");
    let gys = gy.as_slice().expect("standard layout");
    let gxs = gx.as_slice_mut().expect("fresh buffer");
    for pl in 0..np {
        let off = pl * win.h * win.w;
        let xp = &xs[off..off + win.h * win.w];
        for pp in 0..win.oh {
            for q in 0..win.ow {
                gxs[off + argmax(xp, &win, pp, q)] += gys[(pl * win.oh + pp) * win.ow + q];
            }
        }
    }
    gx
}
