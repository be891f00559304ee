//! Kinks, ties and NaN: the conventions decided once (STYLE.md item 4), each tested exactly
//! on the kink or the tie. They match PyTorch, which the DARTS reference runs on.

use darts::autodiff::grad;
use darts::exec::{cpu::CpuExecutor, Executor, Feeds};
use darts::graph::{compose, BinaryOp, Graph, PoolParams, UnaryOp};
use ndarray::{ArrayD, IxDyn};

fn arr(shape: &[usize], v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

#[test]
fn relu_gradient_at_kink_is_zero() {
    let mut g = Graph::new();
    let x = g.input("x", [4]).unwrap();
    let y = g.relu(x).unwrap();
    let s = g.sum_all(y).unwrap();
    let dx = grad(&mut g, s, &[x]).unwrap()[0];
    let step = g.unary(UnaryOp::Step, x).unwrap();
    let mut f = Feeds::new();
    f.insert("x", arr(&[4], &[0.0, -0.0, 1.0, f64::NAN]));
    let out = CpuExecutor::new().run(&g, &f, &[y, dx, step]).unwrap();
    // relu'(0) = 0 as PyTorch; relu(NaN) = NaN (propagates); step(0) = step(NaN) = 0.
    assert_eq!(out[1].as_slice().unwrap()[..3], [0.0, 0.0, 1.0]);
    assert!(out[0][3].is_nan());
    assert_eq!(out[2].as_slice().unwrap(), &[0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn max_pool_tie_goes_to_first_argmax() {
    // One 3x3 window (no padding) whose maximum 5 appears at (0, 2) and (2, 0): PyTorch's
    // CPU kernel keeps the first maximum in row-major scan order, so all of the cotangent
    // goes to (0, 2).
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 3, 3]).unwrap();
    let y = g.max_pool2d(x, PoolParams::new(3, 1, 0)).unwrap();
    let s = g.sum_all(y).unwrap();
    let dx = grad(&mut g, s, &[x]).unwrap()[0];
    let mut f = Feeds::new();
    f.insert(
        "x",
        arr(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 5.0, 0.0, 3.0, 0.0, 5.0, 1.0, 1.0],
        ),
    );
    let out = CpuExecutor::new().run(&g, &f, &[y, dx]).unwrap();
    assert_eq!(out[0].as_slice().unwrap(), &[5.0]);
    assert_eq!(
        out[1].as_slice().unwrap(),
        &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    // Padding acts as -inf: an all-negative input is never beaten by a padded zero.
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 2, 2]).unwrap();
    let y = g.max_pool2d(x, PoolParams::new(3, 1, 1)).unwrap();
    f.insert("x", arr(&[1, 1, 2, 2], &[-4.0, -3.0, -2.0, -1.0]));
    let out = CpuExecutor::new().run(&g, &f, &[y]).unwrap();
    assert_eq!(out[0].as_slice().unwrap(), &[-1.0; 4]);
}

#[test]
fn max_ties_split_the_cotangent() {
    // Binary max on a tie: each side gets half (the rule is symmetric, so the derivative
    // along a = b, d/dt max(t, t) = 1, is right). reduce_max: shared evenly among maxima.
    let mut g = Graph::new();
    let a = g.input("a", [2]).unwrap();
    let b = g.input("b", [2]).unwrap();
    let m = g.binary(BinaryOp::Max, a, b).unwrap();
    let s = g.sum_all(m).unwrap();
    let d = grad(&mut g, s, &[a, b]).unwrap();
    let x = g.input("x", [4]).unwrap();
    let r = g.reduce_max(x, &[0]).unwrap();
    let sr = g.sum_all(r).unwrap();
    let dr = grad(&mut g, sr, &[x]).unwrap()[0];
    let mut f = Feeds::new();
    f.insert("a", arr(&[2], &[1.0, 3.0]));
    f.insert("b", arr(&[2], &[1.0, 2.0]));
    f.insert("x", arr(&[4], &[2.0, 7.0, 7.0, 7.0]));
    let out = CpuExecutor::new().run(&g, &f, &[d[0], d[1], dr]).unwrap();
    assert_eq!(out[0].as_slice().unwrap(), &[0.5, 1.0]);
    assert_eq!(out[1].as_slice().unwrap(), &[0.5, 0.0]);
    let third = 1.0 / 3.0;
    assert_eq!(out[2].as_slice().unwrap(), &[0.0, third, third, third]);
}

#[test]
fn avg_pool_divides_by_in_bounds_count() {
    // 3x3, stride 1, pad 1 over a 3x3 ramp: the corner window sees 4 pixels, the edge
    // window 6, the centre 9 (count_include_pad = False).
    let mut g = Graph::new();
    let x = g.input("x", [1, 1, 3, 3]).unwrap();
    let y = g.avg_pool2d(x, PoolParams::new(3, 1, 1)).unwrap();
    let mut f = Feeds::new();
    let v: Vec<f64> = (1..=9).map(|i| i as f64).collect();
    f.insert("x", arr(&[1, 1, 3, 3], &v));
    let out = CpuExecutor::new().run(&g, &f, &[y]).unwrap();
    let o = out[0].as_slice().unwrap();
    assert_eq!(o[0], (1.0 + 2.0 + 4.0 + 5.0) / 4.0);
    assert_eq!(o[1], (1.0 + 2.0 + 3.0 + 4.0 + 5.0 + 6.0) / 6.0);
    assert_eq!(o[4], 45.0 / 9.0);
}

#[test]
fn batch_norm_uses_biased_batch_variance() {
    // Channel 0 holds 1, 2, 3, 6 over (N, H, W): mean 3, biased variance 14/4 = 3.5.
    let mut g = Graph::new();
    let x = g.input("x", [2, 1, 1, 2]).unwrap();
    let bn = compose::batch_norm_train(&mut g, x, None, None, compose::BN_EPS).unwrap();
    let mut f = Feeds::new();
    f.insert("x", arr(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 6.0]));
    let out = CpuExecutor::new()
        .run(&g, &f, &[bn.y, bn.mean, bn.var])
        .unwrap();
    assert_eq!(out[1].as_slice().unwrap(), &[3.0]);
    assert_eq!(out[2].as_slice().unwrap(), &[3.5]);
    let inv = 1.0 / (3.5f64 + 1e-5).sqrt();
    for (got, xv) in out[0].iter().zip([1.0, 2.0, 3.0, 6.0]) {
        // One rounding in the subtraction, one in rsqrt (correctly rounded sqrt then a
        // division: two roundings), one in the product: |err| <= 4 u |y|.
        let want: f64 = (xv - 3.0) * inv;
        assert!((got - want).abs() <= 4.0 * f64::EPSILON / 2.0 * want.abs().max(1e-300) + 1e-300);
    }
    assert_eq!(bn.count, 4);
}

/// PyTorch refuses a training-mode batch norm with one value per channel ("Expected more than
/// 1 value per channel when training"; e.g. the auxiliary head's 1x1 BN at batch 1): so do we,
/// naming the shape, instead of returning the constant 0 its zero variance would give.
#[test]
fn batch_norm_with_one_value_per_channel_is_an_error() {
    let mut g = Graph::new();
    let x = g.input("x", [1, 3, 1, 1]).unwrap();
    let e = compose::batch_norm_train(&mut g, x, None, None, compose::BN_EPS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1 value per channel"), "{e}");
    assert!(e.contains("[1, 3, 1, 1]"), "{e}");
    // Two values per channel are fine, and N = 1 with H W > 1 too.
    for shape in [[2, 3, 1, 1], [1, 3, 2, 1]] {
        let mut g = Graph::new();
        let x = g.input("x", shape).unwrap();
        compose::batch_norm_train(&mut g, x, None, None, compose::BN_EPS).unwrap();
    }
}

/// The DARTS finite-difference trap in one dimension: a central difference whose step
/// crosses a ReLU kink is off by O(1) from the (almost-everywhere) exact derivative, however
/// accurate the arithmetic. At x = 0.001 with h = 0.01 (the reference's step scale):
/// FD = (relu(0.011) - relu(-0.009)) / 0.02 = 0.55 while relu'(0.001) = 1.
#[test]
fn fd_across_a_relu_kink_is_off_by_order_one() {
    let mut g = Graph::new();
    let x = g.input("x", [1]).unwrap();
    let y = g.relu(x).unwrap();
    let s = g.sum_all(y).unwrap();
    let dx = grad(&mut g, s, &[x]).unwrap()[0];
    let mut ex = CpuExecutor::new();
    let mut at = |v: f64| {
        let mut f = Feeds::new();
        f.insert("x", arr(&[1], &[v]));
        let o = ex.run(&g, &f, &[s, dx]).unwrap();
        (o[0][[]], o[1][0])
    };
    let (x0, h) = (0.001, 0.01);
    let exact = at(x0).1;
    let fd = (at(x0 + h).0 - at(x0 - h).0) / (2.0 * h);
    assert_eq!(exact, 1.0);
    assert!((fd - 0.55).abs() < 1e-12, "fd {fd}");
    // Away from the kink (step smaller than the distance to it) FD is exact for a
    // piecewise-linear function.
    let fd_small = (at(x0 + 1e-4).0 - at(x0 - 1e-4).0) / 2e-4;
    assert!((fd_small - 1.0).abs() < 1e-9);
}
