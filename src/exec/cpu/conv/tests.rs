//! The kernels against naive 7-loop contractions, written straight from the index
//! formulas in `graph::ops::conv`, in f64 over a sweep of geometries.

use super::*;
use crate::exec::cpu::BufferPool;
use crate::graph::ConvParams;
use ndarray::{ArrayD, IxDyn};
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
                                let hh = src(pp, i, p.stride[0], p.padding[0], p.dilation[0], x[2]);
                                let vv = src(q, j, p.stride[1], p.padding[1], p.dilation[1], x[3]);
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
                            let (Some(oh), Some(ow)) = (p.out_len(0, h, k), p.out_len(1, wd, k))
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
