//! The Hessian of the validation loss in the architecture parameters,
//! H = d^2 L_val(w, alpha) / d alpha^2 with alpha = [alpha_normal; alpha_reduce] flattened
//! row-major (2 k 8 entries: 224 for the paper's k = 14), the curvature RobustDARTS (Zela et
//! al., ICLR 2020) tracks to detect the sharp minima that make the discretised architecture
//! generalise badly.
//!
//! One graph ([`AlphaHessian`]) computes exact Hessian-vector products H v = d/dalpha
//! <grad_alpha L_val, v> (Pearlmutter; `autodiff` applied twice) of the search network on a
//! validation batch, built from the search step's own pieces ([`StepInputs`], [`net_at`]):
//! BN uses the batch's statistics (train mode), as every forward of the architect step does.
//! Weights and alphas are read from the executor's variables (the running search) unless
//! fed. Nothing is assigned: computing H leaves the search state untouched.
//!
//! On top of the HVP: the dense H (one HVP per unit vector, [`AlphaHessian::dense`]), its
//! spectrum after explicit symmetrisation ([`spectrum`]), and the dominant eigenvalue by
//! Lanczos on exact HVPs ([`lanczos_dominant`]) with a residual-based stopping rule.
//! Derivations and accuracy claims: proofs/alpha-hessian.md.

use super::architect::{net_at, StepInputs};
use crate::autodiff;
use crate::darts::names;
use crate::darts::network::SearchConfig;
use crate::exec::{ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, GraphError, NodeId};
use crate::linalg::{self, LinalgError};
use ndarray::{Array1, Array2, ArrayD, ArrayView2, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Input names of the HVP direction v, one per alpha ([`names::ALPHA`] order).
pub const DIRECTION: [&str; 2] = ["alpha_hessian/v/normal", "alpha_hessian/v/reduce"];

#[derive(Debug, thiserror::Error)]
pub enum AlphaHessianError {
    #[error("building the alpha-Hessian graph: {0}")]
    Graph(#[from] GraphError),
    #[error("running the alpha-Hessian graph ({what}): {source}")]
    Exec {
        what: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("alpha Hessian: {what} holds {value} at flat index {index}")]
    NonFinite {
        what: String,
        index: usize,
        value: f64,
    },
    #[error("alpha-Hessian eigenvalues: {0}")]
    Linalg(#[from] LinalgError),
    #[error("alpha Hessian: a direction of length {got}, the alphas have {expected} entries")]
    Dimension { expected: usize, got: usize },
    #[error("alpha Hessian: the batch has shape {got:?}, the graph was built for {expected:?}")]
    BatchShape {
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("Lanczos: at most {max_hvps} HVPs asked, need at least 1 and at most n = {n}")]
    HvpBudget { max_hvps: usize, n: usize },
}

pub type Result<T> = std::result::Result<T, AlphaHessianError>;

fn exec_err(what: &'static str) -> impl Fn(ExecError) -> AlphaHessianError {
    move |source| AlphaHessianError::Exec { what, source }
}

fn check_finite(what: &str, v: &[f64]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(AlphaHessianError::NonFinite {
            what: what.to_string(),
            index,
            value: v[index],
        }),
    }
}

/// The HVP graph of L_val in alpha on validation batches of one shape.
pub struct AlphaHessian {
    pub graph: Graph,
    /// L_val(w, alpha) on the batch (BN in train mode).
    pub loss: NodeId,
    /// grad_alpha L_val, per alpha.
    pub grad: [NodeId; 2],
    /// H v, per alpha, for v fed under [`DIRECTION`].
    pub hvp: [NodeId; 2],
    /// The direction inputs.
    pub direction: [NodeId; 2],
    /// Rows per alpha (k) and the batch shape the graph was built for.
    pub k: usize,
    pub batch_shape: Vec<usize>,
}

impl AlphaHessian {
    /// The graph for validation batches of shape `valid_shape` ([N, 3, H, W]): inputs are
    /// the search step's ([`StepInputs`]; only the validation batch, the alphas and the
    /// weights are read) plus the direction v.
    pub fn build(cfg: &SearchConfig, valid_shape: &[usize]) -> Result<Self> {
        let mut g = Graph::new();
        let inp = StepInputs::declare(&mut g, cfg, valid_shape, valid_shape)?;
        let net = net_at(&mut g, cfg, inp.valid, inp.alpha, inp.at(&inp.w))?;
        let grad = autodiff::grad(&mut g, net.loss, &inp.alpha)?;
        let k = cfg.k();
        let direction = [
            g.input(DIRECTION[0], [k, 8])?,
            g.input(DIRECTION[1], [k, 8])?,
        ];
        let s = autodiff::inner(&mut g, &grad, &direction)?;
        let hvp = autodiff::grad(&mut g, s, &inp.alpha)?;
        Ok(AlphaHessian {
            graph: g,
            loss: net.loss,
            grad: [grad[0], grad[1]],
            hvp: [hvp[0], hvp[1]],
            direction,
            k,
            batch_shape: valid_shape.to_vec(),
        })
    }

    /// n = 2 k 8, the length of the concatenated alphas.
    pub fn dim(&self) -> usize {
        2 * self.k * 8
    }

    /// The feeds of a validation batch (images [N, 3, H, W] and one-hot labels), in `T`.
    pub fn batch_feeds<T: Scalar>(
        &self,
        x: &ArrayD<f64>,
        onehot: &ArrayD<f64>,
    ) -> Result<Feeds<T>> {
        if x.shape() != self.batch_shape.as_slice() {
            return Err(AlphaHessianError::BatchShape {
                expected: self.batch_shape.clone(),
                got: x.shape().to_vec(),
            });
        }
        let mut f = Feeds::new();
        f.insert(names::VALID_X, x.mapv(T::of));
        f.insert(names::VALID_ONEHOT, onehot.mapv(T::of));
        Ok(f)
    }

    fn split(&self, v: &Array1<f64>) -> Result<[ArrayD<f64>; 2]> {
        if v.len() != self.dim() {
            return Err(AlphaHessianError::Dimension {
                expected: self.dim(),
                got: v.len(),
            });
        }
        let half = self.k * 8;
        let part = |lo: usize| {
            ArrayD::from_shape_vec(
                IxDyn(&[self.k, 8]),
                v.as_slice().expect("contiguous")[lo..lo + half].to_vec(),
            )
            .expect("k * 8 entries")
        };
        Ok([part(0), part(half)])
    }

    fn run_flat<T: Scalar>(
        &self,
        exec: &mut dyn Executor<T>,
        feeds: &Feeds<T>,
        outs: &[NodeId],
        what: &'static str,
    ) -> Result<Array1<f64>> {
        let vals = exec.run(&self.graph, feeds, outs).map_err(exec_err(what))?;
        let flat: Array1<f64> = vals
            .iter()
            .flat_map(|a| a.iter().map(|x| x.as_f64()).collect::<Vec<_>>())
            .collect();
        check_finite(what, flat.as_slice().expect("contiguous"))?;
        Ok(flat)
    }

    /// H v at the point and batch of `feeds` (weights and alphas fed or, when absent, the
    /// executor's variables). Errors on NaN/Inf in the result, naming it.
    pub fn hvp<T: Scalar>(
        &self,
        exec: &mut dyn Executor<T>,
        feeds: &Feeds<T>,
        v: &Array1<f64>,
    ) -> Result<Array1<f64>> {
        let [vn, vr] = self.split(v)?;
        let mut f = feeds.clone();
        f.insert(DIRECTION[0], vn.mapv(T::of));
        f.insert(DIRECTION[1], vr.mapv(T::of));
        self.run_flat(exec, &f, &self.hvp, "H v")
    }

    /// grad_alpha L_val at the point and batch of `feeds` (the first-order architecture
    /// gradient; the finite-difference oracle of the tests differences it).
    pub fn gradient<T: Scalar>(
        &self,
        exec: &mut dyn Executor<T>,
        feeds: &Feeds<T>,
    ) -> Result<Array1<f64>> {
        self.run_flat(exec, feeds, &self.grad, "grad_alpha L_val")
    }

    /// The dense H, column j = H e_j (n HVPs). Not symmetrised: see [`spectrum`].
    pub fn dense<T: Scalar>(
        &self,
        exec: &mut dyn Executor<T>,
        feeds: &Feeds<T>,
    ) -> Result<Array2<f64>> {
        let n = self.dim();
        let mut h = Array2::zeros((n, n));
        for j in 0..n {
            let mut e = Array1::zeros(n);
            e[j] = 1.0;
            h.column_mut(j).assign(&self.hvp(exec, feeds, &e)?);
        }
        Ok(h)
    }
}

/// The spectrum of a computed (hence only nearly symmetric) Hessian.
#[derive(Clone, Debug)]
pub struct AlphaSpectrum {
    /// Eigenvalues of the symmetric part (H + H^T)/2, ascending.
    pub values: Array1<f64>,
    /// max |H_ij - H_ji| of H as computed, and that over max |H_ij|.
    pub max_asymmetry: f64,
    pub relative_asymmetry: f64,
}

impl AlphaSpectrum {
    /// The eigenvalue of largest magnitude (signed; the larger one on a tie).
    pub fn dominant(&self) -> f64 {
        let lo = self.values.first().copied().unwrap_or(0.0);
        let hi = self.values.last().copied().unwrap_or(0.0);
        if lo.abs() > hi.abs() {
            lo
        } else {
            hi
        }
    }

    /// The algebraically largest eigenvalue (RobustDARTS' `max(eigvals(H))`).
    pub fn max(&self) -> f64 {
        self.values.last().copied().unwrap_or(0.0)
    }
}

/// Eigenvalues of H after explicit symmetrisation S = (H + H^T)/2 (faer's symmetric
/// eigensolver via [`linalg::sym_eigh`]), with H's asymmetry reported. In exact arithmetic
/// H = H^T (proofs/alpha-hessian.md claim 1); the computed entries differ by round-off, and
/// S is the nearest symmetric matrix to H in the Frobenius norm.
pub fn spectrum(h: ArrayView2<f64>) -> Result<AlphaSpectrum> {
    let (max_asymmetry, _, _) = linalg::max_asymmetry(h);
    let s = linalg::symmetric_part(h);
    let e = linalg::sym_eigh(s.view())?;
    Ok(AlphaSpectrum {
        values: e.values,
        max_asymmetry,
        relative_asymmetry: linalg::relative_asymmetry(h),
    })
}

/// The settings of [`lanczos_dominant`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LanczosOptions {
    /// At most this many HVPs (Lanczos steps).
    pub max_hvps: usize,
    /// Stop once the dominant Ritz pair's residual norm is at most `rel_tol` |theta|.
    pub rel_tol: f64,
    /// Seed of the Gaussian start vector (fixed, so repeated runs give the same numbers).
    pub seed: u64,
}

impl Default for LanczosOptions {
    fn default() -> Self {
        LanczosOptions {
            max_hvps: 30,
            rel_tol: 1e-3,
            seed: 0,
        }
    }
}

/// What Lanczos found.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DominantEstimate {
    /// The Ritz value of largest magnitude, theta (signed).
    pub eigenvalue: f64,
    /// Its residual norm rho = ||H y - theta y|| = beta_m |s_m| (unit Ritz vector y): some
    /// eigenvalue of H lies within rho of theta.
    pub residual: f64,
    /// The algebraically largest Ritz value and its residual norm.
    pub max_ritz: f64,
    pub max_ritz_residual: f64,
    /// HVPs used (= Lanczos steps m).
    pub hvps: usize,
    /// Whether the stopping rule rho <= rel_tol |theta| (or an invariant subspace) was met
    /// within the HVP budget.
    pub converged: bool,
}

/// Dominant eigenvalue of the symmetric operator `hvp` (v -> H v on R^n) by the Lanczos
/// process with full reorthogonalisation, from a seeded Gaussian start vector.
///
/// After step m the tridiagonal T_m = Q_m^T H Q_m has eigenpairs (theta_i, s_i); the Ritz
/// vector y_i = Q_m s_i has residual ||H y_i - theta_i y_i|| = beta_m |e_m^T s_i|.
/// Stopping rule: stop after the first m with rho <= `rel_tol` |theta| for the Ritz value
/// theta of largest magnitude, or when beta_m is below round-off (the Krylov space is
/// invariant and the Ritz values are eigenvalues), or at m = `max_hvps` (`converged` false).
/// Accuracy (proofs/alpha-hessian.md claim 4): some eigenvalue of H lies within rho of
/// theta, and |theta| <= max |lambda(H)| (Ritz values lie in [lambda_min, lambda_max]).
pub fn lanczos_dominant(
    n: usize,
    hvp: &mut dyn FnMut(&Array1<f64>) -> Result<Array1<f64>>,
    opts: &LanczosOptions,
) -> Result<DominantEstimate> {
    if opts.max_hvps == 0 || opts.max_hvps > n {
        return Err(AlphaHessianError::HvpBudget {
            max_hvps: opts.max_hvps,
            n,
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut q: Array1<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    q /= q.dot(&q).sqrt();
    let mut basis: Vec<Array1<f64>> = Vec::new();
    let (mut alphas, mut betas): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut est = DominantEstimate {
        eigenvalue: 0.0,
        residual: f64::INFINITY,
        max_ritz: 0.0,
        max_ritz_residual: f64::INFINITY,
        hvps: 0,
        converged: false,
    };
    let mut scale = 0.0f64;
    for m in 1..=opts.max_hvps {
        let mut w = hvp(&q)?;
        check_finite("H q", w.as_slice().expect("contiguous"))?;
        est.hvps = m;
        let a = q.dot(&w);
        basis.push(q.clone());
        // Full reorthogonalisation, twice ("twice is enough", Parlett): w leaves with no
        // component along any Lanczos vector to round-off, which includes the three-term
        // recurrence's a q_m + b q_{m-1}.
        for _ in 0..2 {
            for b in &basis {
                let c = b.dot(&w);
                w.scaled_add(-c, b);
            }
        }
        let beta = w.dot(&w).sqrt();
        alphas.push(a);
        scale = scale.max(a.abs()).max(beta);
        let t = tridiagonal(&alphas, &betas);
        let eig = linalg::sym_eigh(t.view())?;
        let last = m - 1;
        let (lo, hi) = (0, m - 1);
        let pick = if eig.values[lo].abs() > eig.values[hi].abs() {
            lo
        } else {
            hi
        };
        est.eigenvalue = eig.values[pick];
        est.residual = beta * eig.vectors[[last, pick]].abs();
        est.max_ritz = eig.values[hi];
        est.max_ritz_residual = beta * eig.vectors[[last, hi]].abs();
        // beta at the round-off level of the products (n u times the largest |T| seen): w is
        // numerically in the span of the basis, the Krylov space is invariant.
        let invariant = beta <= n as f64 * linalg::UNIT_ROUNDOFF * scale;
        if invariant || est.residual <= opts.rel_tol * est.eigenvalue.abs() {
            est.converged = true;
            break;
        }
        if m == n {
            break;
        }
        betas.push(beta);
        q = w / beta;
    }
    Ok(est)
}

/// The symmetric tridiagonal T with diagonal `a` and off-diagonal `b` (len(b) = len(a) - 1).
fn tridiagonal(a: &[f64], b: &[f64]) -> Array2<f64> {
    let m = a.len();
    let mut t = Array2::zeros((m, m));
    for i in 0..m {
        t[[i, i]] = a[i];
        if i + 1 < m {
            t[[i, i + 1]] = b[i];
            t[[i + 1, i]] = b[i];
        }
    }
    t
}

/// The dominant eigenvalue of the alpha Hessian by [`lanczos_dominant`] on exact HVPs of
/// `graph` at the point and batch of `feeds`.
pub fn dominant_eigenvalue<T: Scalar>(
    graph: &AlphaHessian,
    exec: &mut dyn Executor<T>,
    feeds: &Feeds<T>,
    opts: &LanczosOptions,
) -> Result<DominantEstimate> {
    let n = graph.dim();
    lanczos_dominant(n, &mut |v| graph.hvp(exec, feeds, v), opts)
}
