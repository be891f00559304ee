//! Optimiser updates against PyTorch's formulas, written out by hand.

use darts::check::oracle::optim::{clip_grad_norm, update_running_stats, Adam, Sgd};
use ndarray::{arr1, ArrayD};

fn a(v: &[f64]) -> ArrayD<f64> {
    arr1(v).into_dyn()
}

/// On the first Adam step (bias-corrected) the update is exactly -lr g / (|g| + eps) with
/// g = grad + 1e-3 alpha (REFERENCE_NOTES.md sec. 3); the only rounding differences are a few
/// ulps of each component.
#[test]
fn architect_adam_first_step_is_lr_times_sign() {
    let mut opt = Adam::darts_architect();
    let mut p = vec![a(&[0.5, -0.25, 1e-3])];
    let grad = vec![a(&[2.0, -3.0, 0.0])];
    let before = p[0].clone();
    opt.step(&mut p, &grad);
    for i in 0..3 {
        let g = grad[0][i] + 1e-3 * before[i];
        let want = before[i] - 3e-4 * g / (g.abs() + 1e-8);
        assert!(
            (p[0][i] - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
            "{i}"
        );
    }
    // Second step by the formula.
    let g1 = &grad[0] + &(&before * 1e-3);
    let p1 = p[0].clone();
    opt.step(&mut p, &grad);
    let g2 = &grad[0] + &(&p1 * 1e-3);
    for i in 0..3 {
        let m = 0.5 * (0.5 * g1[i]) + 0.5 * g2[i];
        let v = 0.999 * (0.001 * g1[i] * g1[i]) + 0.001 * g2[i] * g2[i];
        let want =
            p1[i] - (3e-4 / (1.0 - 0.25)) * m / (v.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8);
        assert!(
            (p[0][i] - want).abs() <= 8.0 * f64::EPSILON * p1[i].abs().max(1e-3),
            "{i}"
        );
    }
}

#[test]
fn sgd_momentum_and_coupled_decay_follow_torch() {
    let mut opt = Sgd::new(0.9, 3e-4);
    let mut p = vec![a(&[1.0, -2.0])];
    let g = vec![a(&[0.5, 0.25])];
    opt.step(&mut p, &g, 0.1);
    let d1 = [0.5 + 3e-4, 0.25 - 6e-4];
    assert_eq!(p[0], a(&[1.0 - 0.1 * d1[0], -2.0 - 0.1 * d1[1]]));
    let p1 = p[0].clone();
    opt.step(&mut p, &g, 0.1);
    for i in 0..2 {
        let b = 0.9 * d1[i] + (g[0][i] + 3e-4 * p1[i]);
        assert_eq!(p[0][i], p1[i] - 0.1 * b);
    }
}

#[test]
fn clipping_scales_only_above_the_threshold() {
    let mut g = vec![a(&[3.0, 0.0]), a(&[4.0])];
    let n = clip_grad_norm(&mut g, 5.0);
    assert_eq!(n, 5.0);
    // coef = 5 / (5 + 1e-6) < 1: PyTorch scales even at the threshold.
    assert!(g[0][0] < 3.0 && (g[0][0] - 3.0 * 5.0 / (5.0 + 1e-6)).abs() < 1e-15);
    let mut g = vec![a(&[0.3, 0.4])];
    clip_grad_norm(&mut g, 5.0);
    assert_eq!(g[0], a(&[0.3, 0.4]));
}

#[test]
fn running_stats_use_unbiased_variance_and_momentum_point_one() {
    let (mut rm, mut rv, mut nb) = (a(&[0.0]), a(&[1.0]), ArrayD::zeros(ndarray::IxDyn(&[])));
    update_running_stats(&mut rm, &mut rv, &mut nb, &a(&[3.0]), &a(&[3.5]), 4);
    assert_eq!(rm[0], 0.1 * 3.0);
    assert_eq!(rv[0], 0.9 + 0.1 * (3.5 * 4.0 / 3.0));
    assert_eq!(nb[[]], 1.0);
}

/// Adam in PyTorch's order of operations (torch/optim/adam.py `_single_tensor_adam`, ATen's
/// lerp, addcmul and addcdiv kernels), written out step by step: the optimiser reproduces it
/// bit for bit, for the architect's beta1 = 0.5 (lerp's `end - (end - start) (1 - w)` branch)
/// and for beta1 = 0.9 (the `start + w (end - start)` branch). A gradient that is absent
/// (a parameter the loss does not use) leaves the parameter and its moments untouched.
#[test]
fn adam_follows_pytorchs_operation_order_and_skips_absent_gradients() {
    for beta1 in [0.5, 0.9] {
        let (lr, beta2, eps, wd) = (3e-4, 0.999, 1e-8, 1e-3);
        let mut opt = Adam::new(lr, beta1, beta2, eps, wd);
        let start = [a(&[0.5, -0.25, 1e-3, 7.0]), a(&[0.125, -3.0, 2.5, -1e-4])];
        let mut p = start.to_vec();
        let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
        let mut want = start[0].clone();
        for step in 1..=3 {
            let grad = a(&[0.3 * step as f64, -1.7, 1e-5, 0.01 / step as f64]);
            let untouched = p[1].clone();
            opt.step_present(&mut p, &[Some(&grad), None]);
            let bc1 = 1.0 - beta1.powf(step as f64);
            let bc2_sqrt = (1.0 - beta2.powf(step as f64)).sqrt();
            let step_size = lr / bc1;
            for i in 0..4 {
                let g = grad[i] + wd * want[i];
                let w = 1.0 - beta1;
                m[i] = if w < 0.5 {
                    m[i] + w * (g - m[i])
                } else {
                    g - (g - m[i]) * (1.0 - w)
                };
                v[i] = v[i] * beta2 + (1.0 - beta2) * g * g;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                want[i] += -step_size * m[i] / denom;
                assert_eq!(
                    p[0][i].to_bits(),
                    want[i].to_bits(),
                    "b1 {beta1} step {step} {i}"
                );
                assert_eq!(opt.m[0][i], m[i]);
                assert_eq!(opt.v[0][i], v[i]);
            }
            assert_eq!(p[1], untouched);
            assert!(opt.m[1].iter().chain(opt.v[1].iter()).all(|&x| x == 0.0));
        }
    }
}
