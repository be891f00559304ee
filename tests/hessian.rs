//! Dense Hessians from second-order autodiff, checked against finite differences of the
//! first-order gradient, for symmetry, against HVPs, and through the faer (and, with
//! `--features lapack`, LAPACK) eigendecomposition and solve.
//!
//! Every tolerance below is computed from a bound stated beside it; none is tuned.
//! Notation: u = 2^-53, gamma(k) = k u / (1 - k u) (Higham, Accuracy and Stability of
//! Numerical Algorithms, 2nd ed., ch. 3).

use darts::autodiff;
use darts::check::hessian::{
    asymmetry, dense_hessian, dense_mixed_hessian, fd_error_bound, fd_hessian, fd_mixed_hessian,
    fd_step, flatten, hessian_report, HessianError,
};
use darts::exec::cpu::CpuExecutor;
use darts::exec::{liveness, Executor, Feeds};
use darts::graph::compose::{batch_norm_train, cross_entropy_mean, linear, softmax, BN_EPS};
use darts::graph::{ConvParams, Graph, NodeId, UnaryOp};
use darts::linalg::{self, LinalgError};
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const U: f64 = f64::EPSILON / 2.0;

/// gamma(k) = k u / (1 - k u): relative error bound of k successive roundings (Higham, Lemma 3.1).
fn gamma(k: f64) -> f64 {
    k * U / (1.0 - k * U)
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape matches length")
}

fn onehot(rng: &mut ChaCha8Rng, n: usize, k: usize) -> ArrayD<f64> {
    let mut t = ArrayD::zeros(IxDyn(&[n, k]));
    for i in 0..n {
        t[[i, rng.random_range(0..k)]] = 1.0;
    }
    t
}

/// A small smooth DARTS-like problem: the loss, the weights w, the architecture alpha.
struct Problem {
    g: Graph,
    loss: NodeId,
    w: Vec<NodeId>,
    alpha: Vec<NodeId>,
    feeds: Feeds<f64>,
}

/// Two-layer net whose hidden activation is a mixed op over {tanh, softplus} weighted by
/// softmax(alpha) (eq. (2) of Liu, Simonyan and Yang, ICLR 2019), a softplus output layer and
/// the composed softmax cross-entropy. x [4, 3], W1 [5, 3], b1 [5], W2 [3, 5], b2 [3],
/// alpha [2]: 38 weights.
fn mlp_problem(seed: u64) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let (n, d, h, k) = (4, 3, 5, 3);
    let x = g.input("x", [n, d]).unwrap();
    let t = g.input("t", [n, k]).unwrap();
    let w1 = g.input("w1", [h, d]).unwrap();
    let b1 = g.input("b1", [h]).unwrap();
    let w2 = g.input("w2", [k, h]).unwrap();
    let b2 = g.input("b2", [k]).unwrap();
    let alpha = g.input("alpha", [2]).unwrap();
    let z1 = linear(&mut g, x, w1, Some(b1)).unwrap();
    let p = softmax(&mut g, alpha, 0).unwrap();
    let p0 = g.slice(p, 0, 0, 1, 1).unwrap();
    let p1 = g.slice(p, 0, 1, 2, 1).unwrap();
    let a_tanh = g.unary(UnaryOp::Tanh, z1).unwrap();
    let a_sp = g.unary(UnaryOp::Softplus, z1).unwrap();
    let m0 = g.mul(a_tanh, p0).unwrap();
    let m1 = g.mul(a_sp, p1).unwrap();
    let a1 = g.add2(m0, m1).unwrap();
    let z2 = linear(&mut g, a1, w2, Some(b2)).unwrap();
    let logits = g.unary(UnaryOp::Softplus, z2).unwrap();
    let loss = cross_entropy_mean(&mut g, logits, t).unwrap();
    let mut feeds = Feeds::new();
    feeds.insert("x", uniform(&mut rng, &[n, d], -1.0, 1.0));
    feeds.insert("t", onehot(&mut rng, n, k));
    feeds.insert("w1", uniform(&mut rng, &[h, d], -0.8, 0.8));
    feeds.insert("b1", uniform(&mut rng, &[h], -0.3, 0.3));
    feeds.insert("w2", uniform(&mut rng, &[k, h], -0.8, 0.8));
    feeds.insert("b2", uniform(&mut rng, &[k], -0.3, 0.3));
    feeds.insert("alpha", uniform(&mut rng, &[2], -0.5, 0.5));
    Problem {
        g,
        loss,
        w: vec![w1, b1, w2, b2],
        alpha: vec![alpha],
        feeds,
    }
}

/// conv 3x3 (pad 1) -> batch_norm_train (affine) -> tanh -> global sum -> log_softmax -> CE.
/// x [2, 2, 4, 4], Wc [3, 2, 3, 3], gamma [3], beta [3]: 60 weights. No alpha (empty).
fn conv_problem(seed: u64) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = Graph::new();
    let (n, c, hw, co) = (2, 2, 4, 3);
    let x = g.input("x", [n, c, hw, hw]).unwrap();
    let t = g.input("t", [n, co]).unwrap();
    let wc = g.input("wc", [co, c, 3, 3]).unwrap();
    let gm = g.input("gamma", [co]).unwrap();
    let bt = g.input("beta", [co]).unwrap();
    let y = g.conv2d(x, wc, ConvParams::new(1, 1, 1, 1)).unwrap();
    let bn = batch_norm_train(&mut g, y, Some(gm), Some(bt), BN_EPS).unwrap();
    let a = g.unary(UnaryOp::Tanh, bn.y).unwrap();
    let s = g.reduce_sum(a, &[2, 3]).unwrap();
    let s = g.reshape(s, [n, co]).unwrap();
    let s = g.scale(s, 1.0 / (hw * hw) as f64).unwrap();
    let lp = g.log_softmax(s, 1).unwrap();
    let picked = g.dot(lp, t).unwrap();
    let loss = g.scale(picked, -1.0 / n as f64).unwrap();
    let mut feeds = Feeds::new();
    feeds.insert("x", uniform(&mut rng, &[n, c, hw, hw], -1.0, 1.0));
    feeds.insert("t", onehot(&mut rng, n, co));
    feeds.insert("wc", uniform(&mut rng, &[co, c, 3, 3], -0.5, 0.5));
    feeds.insert("gamma", uniform(&mut rng, &[co], 0.5, 1.5));
    feeds.insert("beta", uniform(&mut rng, &[co], -0.3, 0.3));
    Problem {
        g,
        loss,
        w: vec![wc, gm, bt],
        alpha: vec![],
        feeds,
    }
}

/// Roundoff model of a graph evaluation, as (C, S):
///
/// * C = sum over the nodes needed for `outs` of the largest input size of the node (at least
///   1). A node's output element is a rounded sum of at most that many terms (matmul: the
///   inner dimension; reduce: the reduced count; conv: C_in k_h k_w), so C bounds the number
///   of roundings on any path to an output.
/// * S = the largest |value| of any needed node at these feeds.
///
/// First-order error analysis then bounds every output entry's rounding error by gamma(C) * S,
/// assuming the local derivatives along the graph are at most 1 in size. That holds for the
/// unit-scale networks here up to small factors (tanh', softplus', softmax Jacobians <= 1,
/// weights in [-0.8, 0.8]), and summing C over all nodes instead of one path overestimates
/// the count by far more than those factors.
fn roundoff_model(g: &Graph, feeds: &Feeds<f64>, outs: &[NodeId]) -> (f64, f64) {
    let (needed, _) = liveness(g, outs).unwrap();
    let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
    let c: usize = ids
        .iter()
        .map(|&i| {
            g.node(i)
                .inputs
                .iter()
                .map(|&j| g.shape(j).numel())
                .max()
                .unwrap_or(1)
                .max(1)
        })
        .sum();
    let vals = CpuExecutor::<f64>::new().run(g, feeds, &ids).unwrap();
    let s = vals
        .iter()
        .flat_map(|v| v.iter())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    (c as f64, s)
}

/// Roundoff model of the HVP graph over all unit directions: (C, max over e_i of S).
fn hvp_roundoff_model(
    p: &Problem,
    params: &[NodeId],
    mixed_alpha: Option<&[NodeId]>,
) -> (f64, f64) {
    let mut g = p.g.clone();
    let mut v = Vec::new();
    let mut names = Vec::new();
    for (k, &w) in params.iter().enumerate() {
        let name = format!("test.v{k}");
        v.push(g.input(name.clone(), g.shape(w).clone()).unwrap());
        names.push(name);
    }
    let outs = match mixed_alpha {
        None => autodiff::hvp(&mut g, p.loss, params, &v).unwrap(),
        Some(a) => autodiff::mixed_hvp(&mut g, p.loss, params, &v, a).unwrap(),
    };
    let mut feeds = p.feeds.clone();
    for (name, &w) in names.iter().zip(params) {
        feeds.insert(name.clone(), ArrayD::zeros(IxDyn(p.g.shape(w).dims())));
    }
    let (mut c_max, mut s_max) = (0.0f64, 0.0f64);
    for (name, &w) in names.iter().zip(params) {
        let dims = p.g.shape(w).dims().to_vec();
        for k in 0..p.g.shape(w).numel() {
            let mut e = ArrayD::zeros(IxDyn(&dims));
            e.as_slice_mut().unwrap()[k] = 1.0;
            feeds.insert(name.clone(), e);
            let (c, s) = roundoff_model(&g, &feeds, &outs);
            c_max = c_max.max(c);
            s_max = s_max.max(s);
        }
        feeds.insert(name.clone(), ArrayD::zeros(IxDyn(&dims)));
    }
    (c_max, s_max)
}

/// Third-derivative bound M3 for the FD error of `fd` (a function of the step returning an FD
/// matrix), by Richardson extrapolation at a large step h3 = 1e-3 where truncation dominates:
/// FD(h) = exact + (h^2/6) T + O(h^4) entrywise, with T the third derivative along the step,
/// so T ~ (FD(2 h3) - FD(h3)) / (h3^2 / 2). This uses only first-order autodiff, not the
/// second-order graph under test. M3 = 2 max|T|: the factor 2 covers the change of the third
/// derivative over [x - h, x + h] and the O(h3^2) error of the estimate (both relative
/// O(1e-6) here), and the estimate's own rounding noise, gamma(C) S / h3^3 ~ 1e-4 absolute.
fn m3_estimate(fd: &mut dyn FnMut(f64) -> Array2<f64>) -> f64 {
    let h3 = 1e-3;
    let a = fd(h3);
    let b = fd(2.0 * h3);
    let t = (&b - &a) / (h3 * h3 / 2.0);
    2.0 * linalg::max_abs(t.view())
}

#[test]
fn hessian_is_symmetric_to_roundoff() {
    for (name, p) in [("mlp", mlp_problem(1)), ("conv", conv_problem(2))] {
        let mut exec = CpuExecutor::<f64>::new();
        let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
        let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
        // H_ij and H_ji come from different runs (directions e_j and e_i) and different
        // summation orders; in exact arithmetic they are equal (Schwarz). Each computed entry is
        // within gamma(C) S of the exact one (roundoff_model over the HVP graph, worst unit
        // direction), so |H_ij - H_ji| <= 2 gamma(C) S.
        let (c, s) = hvp_roundoff_model(&p, &params, None);
        let bound = 2.0 * gamma(c) * s;
        let (asym, i, j) = linalg::max_asymmetry(h.view());
        println!(
            "{name}: n = {}, max |H - H^T| = {asym:.3e} at ({i}, {j}), relative {:.3e}; bound 2 gamma(C) S = {bound:.3e} (C = {c}, S = {s:.3})",
            h.nrows(),
            asymmetry(h.view())
        );
        assert!(
            asym <= bound,
            "{name}: asymmetry {asym:e} > bound {bound:e}"
        );
        // Not vacuous: the Hessian has structure well above the bound.
        assert!(linalg::max_abs(h.view()) > 1e3 * bound);
    }
}

#[test]
fn hessian_matches_finite_difference_hessian() {
    for (name, p) in [("mlp", mlp_problem(3)), ("conv", conv_problem(4))] {
        let mut exec = CpuExecutor::<f64>::new();
        let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
        let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
        let m3 = m3_estimate(&mut |step| {
            fd_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds, step).unwrap()
        });
        // Rounding of one gradient evaluation: gamma(C) S from the gradient graph's roundoff
        // model, i.e. G = gamma(C) S / u in the units of fd_error_bound.
        let mut gg = p.g.clone();
        let gr = autodiff::grad(&mut gg, p.loss, &params).unwrap();
        let (c, s) = roundoff_model(&gg, &p.feeds, &gr);
        let g_scale = gamma(c) * s / U;
        let step = fd_step(g_scale, m3);
        let hfd = fd_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds, step).unwrap();
        // Entry bound: FD error h^2/6 M3 + u G / h (fd_error_bound), plus the exact Hessian's
        // own rounding gamma(C') S' (HVP graph roundoff model).
        let (ch, sh) = hvp_roundoff_model(&p, &params, None);
        let tol = fd_error_bound(step, g_scale, m3) + gamma(ch) * sh;
        let err = (&hfd - &h).iter().fold(0.0f64, |m, x| m.max(x.abs()));
        println!(
            "{name}: n = {}, M3 = {m3:.3e}, G = {g_scale:.3e}, h = {step:.3e}: max |H_fd - H| = {err:.3e}, bound {tol:.3e}, max |H| = {:.3e}",
            h.nrows(),
            linalg::max_abs(h.view())
        );
        assert!(err <= tol, "{name}: FD error {err:e} > bound {tol:e}");
        assert!(linalg::max_abs(h.view()) > 1e3 * tol);
    }
}

#[test]
fn mixed_hvp_matches_finite_differences() {
    let p = mlp_problem(5);
    let mut exec = CpuExecutor::<f64>::new();
    let m = dense_mixed_hessian(&mut exec, &p.g, p.loss, &p.w, &p.alpha, &p.feeds).unwrap();
    assert_eq!(m.dim(), (2, 38));
    // Same derivation as hessian_matches_finite_difference_hessian, for FD of grad_alpha L
    // under perturbations of w: M3 from Richardson at h3 = 1e-3, G from the roundoff model of
    // the grad_alpha graph, plus the rounding of the exact mixed block (mixed-HVP graph).
    let m3 = m3_estimate(&mut |step| {
        fd_mixed_hessian(&mut exec, &p.g, p.loss, &p.w, &p.alpha, &p.feeds, step).unwrap()
    });
    let mut gg = p.g.clone();
    let gr = autodiff::grad(&mut gg, p.loss, &p.alpha).unwrap();
    let (c, s) = roundoff_model(&gg, &p.feeds, &gr);
    let g_scale = gamma(c) * s / U;
    let step = fd_step(g_scale, m3);
    let mfd = fd_mixed_hessian(&mut exec, &p.g, p.loss, &p.w, &p.alpha, &p.feeds, step).unwrap();
    let (cm, sm) = hvp_roundoff_model(&p, &p.w, Some(&p.alpha));
    let tol = fd_error_bound(step, g_scale, m3) + gamma(cm) * sm;
    let err = (&mfd - &m).iter().fold(0.0f64, |a, x| a.max(x.abs()));
    println!(
        "mixed block 2x38: M3 = {m3:.3e}, h = {step:.3e}: max |M_fd - M| = {err:.3e}, bound {tol:.3e}, max |M| = {:.3e}",
        linalg::max_abs(m.view())
    );
    assert!(err <= tol, "mixed FD error {err:e} > bound {tol:e}");
    assert!(linalg::max_abs(m.view()) > 1e3 * tol);
    // The mixed block is the alpha-rows, w-columns block of the full Hessian.
    let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
    let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
    let block = h.slice(ndarray::s![38..40, 0..38]);
    let (ch, sh) = hvp_roundoff_model(&p, &params, None);
    let tol_block = gamma(ch) * sh + gamma(cm) * sm;
    let d = (&block - &m).iter().fold(0.0f64, |a, x| a.max(x.abs()));
    assert!(d <= tol_block, "block of H vs mixed: {d:e} > {tol_block:e}");
}

#[test]
fn hvp_matches_dense_hessian_times_vector() {
    for (name, p) in [("mlp", mlp_problem(6)), ("conv", conv_problem(7))] {
        let mut exec = CpuExecutor::<f64>::new();
        let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
        let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(100);
        let mut g = p.g.clone();
        let mut feeds = p.feeds.clone();
        let mut v = Vec::new();
        let mut vals = Vec::new();
        for (k, &w) in params.iter().enumerate() {
            let name = format!("test.v{k}");
            let dims = p.g.shape(w).dims().to_vec();
            v.push(g.input(name.clone(), p.g.shape(w).clone()).unwrap());
            let val = uniform(&mut rng, &dims, -1.0, 1.0);
            feeds.insert(name, val.clone());
            vals.push(val);
        }
        let hv_nodes = autodiff::hvp(&mut g, p.loss, &params, &v).unwrap();
        let hv = flatten(&exec.run(&g, &feeds, &hv_nodes).unwrap());
        let vflat = flatten(&vals);
        let hv_dense = h.dot(&vflat);
        // The graph HVP with v: within gamma(C_v) S_v (roundoff model at this v). The dense
        // product: each H_ij within gamma(C) S (unit directions), times |v_j| summed over j,
        // plus the n-term dot product's own rounding gamma(n) sum_j |H_ij| |v_j|.
        let (cv, sv) = roundoff_model(&g, &feeds, &hv_nodes);
        let (ch, sh) = hvp_roundoff_model(&p, &params, None);
        let n = h.nrows() as f64;
        let abs_hv = h.mapv(f64::abs).dot(&vflat.mapv(f64::abs));
        let v1: f64 = vflat.iter().map(|x| x.abs()).sum();
        let mut worst = 0.0f64;
        for i in 0..h.nrows() {
            let tol = gamma(cv) * sv + gamma(ch) * sh * v1 + gamma(n) * abs_hv[i];
            let d = (hv[i] - hv_dense[i]).abs();
            assert!(d <= tol, "{name}: entry {i}: |Hv - H v| = {d:e} > {tol:e}");
            worst = worst.max(d / tol);
        }
        println!("{name}: n = {n}, worst |Hv - H v| / bound = {worst:.3e}");
    }
}

#[test]
fn quadratic_form_hessian_is_exactly_symmetric_part() {
    // L(x) = x^T A x / 2 with A fed as data: H = (A + A^T)/2 exactly. H e_i is
    // (A e_i + A^T e_i)/2 in the graph; products with the unit vector are exact (x * 1, x * 0,
    // sums of exact zeros), scaling by 1/2 is exact, and the one rounded addition
    // fl(A_ji + A_ij) is commutative, so the result matches (A + A^T)/2 bit for bit.
    let n = 6;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let a = uniform(&mut rng, &[n, n], -2.0, 2.0);
    let mut g = Graph::new();
    let am = g.input("A", [n, n]).unwrap();
    let x = g.input("x", [n, 1]).unwrap();
    let ax = g.matmul(am, x).unwrap();
    let q = g.dot(x, ax).unwrap();
    let loss = g.scale(q, 0.5).unwrap();
    let mut feeds = Feeds::new();
    feeds.insert("A", a.clone());
    feeds.insert("x", uniform(&mut rng, &[n, 1], -1.0, 1.0));
    let mut exec = CpuExecutor::<f64>::new();
    let h = dense_hessian(&mut exec, &g, loss, &[x], &feeds).unwrap();
    let a2 = a.into_dimensionality::<ndarray::Ix2>().unwrap();
    let expected = linalg::symmetric_part(a2.view());
    assert_eq!(h, expected);
    // Errors: a parameter that is not an input node is rejected, naming it.
    let err = dense_hessian(&mut exec, &g, loss, &[ax], &feeds).unwrap_err();
    assert!(matches!(err, HessianError::NotAnInput { .. }), "{err}");
    let err = fd_hessian(&mut exec, &g, loss, &[x], &feeds, 0.0).unwrap_err();
    assert!(matches!(err, HessianError::BadStep { .. }), "{err}");
}

/// A = Q diag(lambda) Q^T with Q a product of three Householder reflectors from seeded random
/// vectors, symmetrised so that it is exactly symmetric in floating point.
fn known_spectrum(lambda: &[f64], seed: u64) -> (Array2<f64>, Array2<f64>) {
    let n = lambda.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut q = Array2::<f64>::eye(n);
    for _ in 0..3 {
        let w: Array1<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ww = w.dot(&w);
        let outer = w
            .view()
            .insert_axis(ndarray::Axis(1))
            .dot(&w.view().insert_axis(ndarray::Axis(0)));
        let p = Array2::<f64>::eye(n) - outer * (2.0 / ww);
        q = q.dot(&p);
    }
    let a = q
        .dot(&Array2::from_diag(&Array1::from(lambda.to_vec())))
        .dot(&q.t());
    (linalg::symmetric_part(a.view()), q)
}

/// Backward-error tolerance of a symmetric eigendecomposition, n^2 u ||A||_F: Householder
/// tridiagonalisation and the orthogonal iteration after it are backward stable with
/// ||dA||_F <= gamma~(c n^2) ||A||_F (Higham, Thm. 19.4 and section 19.3, taken with c = 1);
/// by Weyl each eigenvalue is then within that of the exact one.
fn eigh_tolerance(a: &Array2<f64>) -> f64 {
    let n = a.nrows() as f64;
    let fro = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    n * n * U * fro
}

/// max |V diag(lambda) V^T - A| and max |V^T V - I|.
fn reconstruction_errors(a: &Array2<f64>, e: &linalg::SymEigen) -> (f64, f64) {
    let n = a.nrows();
    let recon = e
        .vectors
        .dot(&Array2::from_diag(&e.values))
        .dot(&e.vectors.t());
    let orth = e.vectors.t().dot(&e.vectors) - Array2::<f64>::eye(n);
    (
        linalg::max_abs((recon - a).view()),
        linalg::max_abs(orth.view()),
    )
}

#[test]
fn eigenvalues_match_faer_reconstruction() {
    let lambda = [-4.0, -1.5, 0.25, 1.0, 3.0, 8.0];
    let (a, _) = known_spectrum(&lambda, 11);
    let e = linalg::sym_eigh(a.view()).unwrap();
    // Forming A = Q diag(lambda) Q^T rounds each entry by at most gamma(n + 1) max|lambda|
    // (n products, Cauchy-Schwarz on the unit rows of Q) plus the non-orthogonality of Q
    // (three reflectors, each applied with gamma(n + 2)-size errors, so ||Q^T Q - I|| <=
    // 3 gamma(n + 2) n); together with the solver's backward error (eigh_tolerance) this
    // bounds |lambda_hat - lambda| by Weyl's inequality.
    let n = lambda.len() as f64;
    let lmax = 8.0;
    let tol_vals = eigh_tolerance(&a) + n * (gamma(n + 1.0) + 3.0 * n * gamma(n + 2.0)) * lmax;
    for (got, want) in e.values.iter().zip(lambda) {
        assert!(
            (got - want).abs() <= tol_vals,
            "{got} vs {want}, tol {tol_vals:e}"
        );
    }
    // Reconstruction: V diag V^T reproduces A to the backward error plus the rounding of
    // the two products, gamma(n) * max|lambda| per entry (Cauchy-Schwarz again); V is
    // orthonormal to n^2 u (the same backward-stable analysis applied to V^T V).
    let (recon, orth) = reconstruction_errors(&a, &e);
    let tol_recon = eigh_tolerance(&a) + 2.0 * gamma(n) * lmax;
    println!("known spectrum: max eigenvalue error tol {tol_vals:.3e}, recon {recon:.3e} (tol {tol_recon:.3e}), orth {orth:.3e}");
    assert!(recon <= tol_recon, "recon {recon:e} > {tol_recon:e}");
    assert!(orth <= n * n * U + gamma(n), "orth {orth:e}");

    // The same on a real Hessian (its symmetric part).
    let p = mlp_problem(12);
    let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
    let mut exec = CpuExecutor::<f64>::new();
    let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
    let hs = linalg::symmetric_part(h.view());
    let eh = linalg::sym_eigh(hs.view()).unwrap();
    assert!(eh.values.windows(2).into_iter().all(|w| w[0] <= w[1]));
    let nh = hs.nrows() as f64;
    let lmax_h = eh.values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let (recon, orth) = reconstruction_errors(&hs, &eh);
    let tol_recon = eigh_tolerance(&hs) + 2.0 * gamma(nh) * lmax_h;
    assert!(
        recon <= tol_recon,
        "Hessian recon {recon:e} > {tol_recon:e}"
    );
    assert!(orth <= nh * nh * U + gamma(nh), "Hessian orth {orth:e}");
    let report = hessian_report(
        &mut exec,
        &p.g,
        p.loss,
        &params,
        &p.feeds,
        fd_step(1.0, 1.0),
    )
    .unwrap();
    println!("{report}");
    assert_eq!(report.dim, 40);
    assert_eq!(report.eig_min, eh.values[0]);
    assert_eq!(report.eig_max, eh.values[39]);

    // Input checks.
    let asym = ndarray::array![[1.0, 2.0], [2.1, 1.0]];
    let err = linalg::sym_eigh(asym.view()).unwrap_err();
    // The error names the max asymmetry; 2.1 - 2.0 is exact (Sterbenz), so compare exactly.
    match err {
        LinalgError::NotSymmetric { max_asymmetry, .. } => assert_eq!(max_asymmetry, 2.1 - 2.0),
        other => panic!("expected NotSymmetric, got {other}"),
    }
    let rect = Array2::<f64>::zeros((2, 3));
    assert!(matches!(
        linalg::sym_eigh(rect.view()),
        Err(LinalgError::NotSquare {
            rows: 2,
            cols: 3,
            ..
        })
    ));
    let nan = ndarray::array![[1.0, f64::NAN], [f64::NAN, 1.0]];
    assert!(matches!(
        linalg::sym_eigh(nan.view()),
        Err(LinalgError::NonFinite { .. })
    ));
}

/// A matrix strictly diagonally dominant by rows and by columns: partial pivoting makes no
/// interchanges and the growth factor is at most 2 (Higham, Thm. 9.9), and Varah's bound
/// ||A^-1||_inf <= 1 / min_i (|a_ii| - sum_{j != i} |a_ij|) gives kappa_inf without solving.
fn dominant_matrix(n: usize, seed: u64) -> (Array2<f64>, f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut a = Array2::from_shape_fn((n, n), |_| rng.random_range(-1.0..1.0));
    for i in 0..n {
        a[[i, i]] = n as f64 + 1.0;
    }
    let row_abs = |i: usize| a.row(i).iter().map(|x| x.abs()).sum::<f64>();
    let inv_norm = 1.0
        / (0..n)
            .map(|i| 2.0 * a[[i, i]].abs() - row_abs(i))
            .fold(f64::INFINITY, f64::min);
    let a_norm = (0..n).map(row_abs).fold(0.0, f64::max);
    (a, a_norm * inv_norm)
}

/// Forward-error tolerance of an LU solve (relative, infinity norm), for `dominant_matrix`:
/// the computed x solves (A + dA) x = b with |dA| <= gamma(3n) |L||U| (Higham, Thm. 9.4);
/// with |l_ij| <= 1 and growth <= 2, || |L||U| ||_inf <= 2 n ||A||_inf, so
/// ||dA||_inf / ||A||_inf <= 2 n gamma(3n). Forming b = A x rounds by gamma(n) relative.
/// Forward error <= kappa (eta_A + eta_b) / (1 - kappa eta_A) (Higham, Thm. 7.2).
fn solve_tolerance(n: usize, kappa: f64) -> f64 {
    let n = n as f64;
    let eta_a = 2.0 * n * gamma(3.0 * n);
    let eta_b = gamma(n);
    kappa * (eta_a + eta_b) / (1.0 - kappa * eta_a)
}

#[test]
fn solve_recovers_known_solution() {
    let n = 8;
    let (a, kappa) = dominant_matrix(n, 21);
    let x_true = Array2::from_shape_fn((n, 3), |(i, j)| (i as f64) - 2.0 * j as f64 + 0.5);
    let b = a.dot(&x_true);
    let x = linalg::solve(a.view(), b.view()).unwrap();
    let tol = solve_tolerance(n, kappa);
    for j in 0..3 {
        let xn = x_true.column(j).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let d = (&x.column(j) - &x_true.column(j))
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        println!(
            "column {j}: relative error {:.3e}, bound {tol:.3e} (kappa <= {kappa:.3})",
            d / xn
        );
        assert!(d <= tol * xn, "column {j}: {d:e} > {:e}", tol * xn);
    }
    // Errors: exactly singular (the second row is twice the first; U_22 = 0 exactly).
    let sing = ndarray::array![[1.0, 2.0], [2.0, 4.0]];
    let rhs = ndarray::array![[1.0], [1.0]];
    let err = linalg::solve(sing.view(), rhs.view()).unwrap_err();
    assert!(matches!(err, LinalgError::Singular { .. }), "{err}");
    // Singular to working precision: rank 2, the last pivot is rounding noise of size
    // <= n u max|A|.
    let sing3 = ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]];
    let rhs3 = Array2::ones((3, 1));
    let err = linalg::solve(sing3.view(), rhs3.view()).unwrap_err();
    assert!(matches!(err, LinalgError::Singular { n: 3, .. }), "{err}");
    let rect = Array2::<f64>::zeros((2, 3));
    let err = linalg::solve(rect.view(), rhs.view()).unwrap_err();
    assert!(
        matches!(
            err,
            LinalgError::NotSquare {
                rows: 2,
                cols: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    let err = linalg::solve(a.view(), rhs.view()).unwrap_err();
    assert!(
        matches!(
            err,
            LinalgError::RowMismatch {
                a_rows: 8,
                b_rows: 2,
                ..
            }
        ),
        "{err}"
    );
    let mut bad = a.clone();
    bad[[3, 4]] = f64::INFINITY;
    let err = linalg::solve(bad.view(), b.view()).unwrap_err();
    assert!(
        matches!(err, LinalgError::NonFinite { row: 3, col: 4, .. }),
        "{err}"
    );
}

#[cfg(feature = "lapack")]
#[test]
fn lapack_matches_faer() {
    use darts::linalg::lapack;
    // Eigenvalues: each backend is within eigh_tolerance of the exact spectrum of the (exactly
    // symmetric) input, so the two agree to twice that. Eigenvectors: by Davis-Kahan each
    // computed unit eigenvector is within sqrt(2) ||dA||_2 / gap_i of the exact one up to sign
    // (||dA||_2 <= eigh_tolerance, gap_i the distance to the nearest other eigenvalue), so the
    // two backends agree up to sign to 2 sqrt(2) tol / gap_i; vectors whose bound is not
    // below 1 carry no information and are counted, not compared.
    let (a, _) = known_spectrum(&[-4.0, -1.5, 0.25, 1.0, 3.0, 8.0], 31);
    let p = mlp_problem(32);
    let params: Vec<NodeId> = p.w.iter().chain(&p.alpha).copied().collect();
    let mut exec = CpuExecutor::<f64>::new();
    let h = dense_hessian(&mut exec, &p.g, p.loss, &params, &p.feeds).unwrap();
    let hs = linalg::symmetric_part(h.view());
    for (name, m) in [("known spectrum", a), ("mlp Hessian", hs)] {
        let ef = linalg::sym_eigh(m.view()).unwrap();
        let el = lapack::sym_eigh(m.view()).unwrap();
        let tol = eigh_tolerance(&m);
        let dv = (&ef.values - &el.values)
            .iter()
            .fold(0.0f64, |a, x| a.max(x.abs()));
        assert!(
            dv <= 2.0 * tol,
            "{name}: eigenvalues differ by {dv:e} > {:e}",
            2.0 * tol
        );
        let n = m.nrows();
        let mut compared = 0;
        for i in 0..n {
            let gap = (0..n)
                .filter(|&j| j != i)
                .map(|j| (ef.values[j] - ef.values[i]).abs())
                .fold(f64::INFINITY, f64::min);
            let vtol = 2.0 * 2f64.sqrt() * tol / (gap - 2.0 * tol).max(0.0);
            if !vtol.is_finite() || vtol >= 1.0 {
                continue;
            }
            let a = ef.vectors.column(i);
            let b = el.vectors.column(i);
            let d = (&a - &b)
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .min((&a + &b).iter().map(|x| x * x).sum::<f64>().sqrt());
            assert!(
                d <= vtol,
                "{name}: eigenvector {i} differs by {d:e} > {vtol:e}"
            );
            compared += 1;
        }
        println!("{name}: eigenvalues agree to {dv:.3e} (tol {:.3e}); {compared}/{n} eigenvectors compared", 2.0 * tol);
        assert!(compared > 0);
    }
    // Solve: both backends are within solve_tolerance of the exact solution.
    let n = 8;
    let (a, kappa) = dominant_matrix(n, 33);
    let b = Array2::from_shape_fn((n, 2), |(i, j)| (i as f64).sin() + j as f64);
    let xf = linalg::solve(a.view(), b.view()).unwrap();
    let xl = lapack::solve(a.view(), b.view()).unwrap();
    let tol = 2.0 * solve_tolerance(n, kappa);
    for j in 0..2 {
        let xn = xf.column(j).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let d = (&xf.column(j) - &xl.column(j))
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(d <= tol * xn, "solve column {j}: {d:e} > {:e}", tol * xn);
    }
    let sing = ndarray::array![[1.0, 2.0], [2.0, 4.0]];
    let rhs = ndarray::array![[1.0], [1.0]];
    assert!(lapack::solve(sing.view(), rhs.view()).is_err());
    let rect = Array2::<f64>::zeros((2, 3));
    assert!(matches!(
        lapack::solve(rect.view(), rhs.view()),
        Err(LinalgError::NotSquare { .. })
    ));
}
