//! Dense linear algebra on small f64 matrices: the symmetric eigendecomposition and the
//! linear solve that the Hessian checks (`check::hessian`) and the DARTS analysis need.
//!
//! The default backend is faer 0.24, reached through faer-ext's zero-copy ndarray views.
//! With the `lapack` cargo feature, [`lapack`] offers the same two functions through
//! ndarray-linalg and the system LAPACK (OpenBLAS), as an independent implementation that
//! the tests compare against (tests/hessian.rs::lapack_matches_faer).
//!
//! Both backends check their input before factorising: square shape, matching rows, finite
//! entries, and (for the eigendecomposition) symmetry to a stated tolerance,
//! [`eigh_symmetry_tolerance`]. Errors name the operation and the shapes; nothing here
//! panics on user input.

#[cfg(feature = "lapack")]
pub mod lapack;

use faer::linalg::solvers::Solve;
use faer::Side;
use faer_ext::{IntoFaer, IntoNdarray};
use ndarray::{Array1, Array2, ArrayView2};

/// Unit roundoff of f64, u = 2^-53.
pub const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// Symmetric eigendecomposition A = V diag(values) V^T.
#[derive(Clone, Debug)]
pub struct SymEigen {
    /// Eigenvalues in ascending order.
    pub values: Array1<f64>,
    /// Orthonormal eigenvectors as columns: column i belongs to `values[i]`.
    pub vectors: Array2<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinalgError {
    #[error("{op}: the matrix must be square, it has shape [{rows}, {cols}]")]
    NotSquare {
        op: &'static str,
        rows: usize,
        cols: usize,
    },
    #[error(
        "{op}: A has shape [{a_rows}, {a_cols}] but the right-hand side B has shape \
         [{b_rows}, {b_cols}]; their row counts must match"
    )]
    RowMismatch {
        op: &'static str,
        a_rows: usize,
        a_cols: usize,
        b_rows: usize,
        b_cols: usize,
    },
    #[error(
        "{op}: {operand} (shape [{rows}, {cols}]) has a non-finite entry {value} at ({row}, {col})"
    )]
    NonFinite {
        op: &'static str,
        operand: &'static str,
        rows: usize,
        cols: usize,
        row: usize,
        col: usize,
        value: f64,
    },
    #[error(
        "{op}: the [{n}, {n}] matrix is not symmetric: max |A_ij - A_ji| = {max_asymmetry:e} at \
         ({row}, {col}), relative to max |A| = {max_abs:e} that is {relative:e}, above the \
         tolerance {tolerance:e} (symmetrise it first, e.g. (A + A^T)/2)"
    )]
    NotSymmetric {
        op: &'static str,
        n: usize,
        row: usize,
        col: usize,
        max_asymmetry: f64,
        max_abs: f64,
        relative: f64,
        tolerance: f64,
    },
    #[error(
        "{op}: the [{n}, {n}] matrix is singular to working precision: LU pivot {index} is \
         {pivot:e}, at or below n * u * max |A| = {threshold:e}"
    )]
    Singular {
        op: &'static str,
        n: usize,
        index: usize,
        pivot: f64,
        threshold: f64,
    },
    #[error("{op}: the [{n}, {n}] matrix produced a non-finite result at ({row}, {col})")]
    NonFiniteResult {
        op: &'static str,
        n: usize,
        row: usize,
        col: usize,
    },
    #[error("{op}: the eigenvalue iteration did not converge for the [{n}, {n}] matrix")]
    NoConvergence { op: &'static str, n: usize },
    #[error("{op}: LAPACK failed on the [{rows}, {cols}] matrix: {message}")]
    Lapack {
        op: &'static str,
        rows: usize,
        cols: usize,
        message: String,
    },
}

/// Largest |A_ij - A_ji| and where it occurs (row > col), for a square matrix.
pub fn max_asymmetry(a: ArrayView2<f64>) -> (f64, usize, usize) {
    let n = a.nrows().min(a.ncols());
    let mut best = (0.0, 0, 0);
    for i in 0..n {
        for j in 0..i {
            let d = (a[[i, j]] - a[[j, i]]).abs();
            if d > best.0 || d.is_nan() {
                best = (d, i, j);
            }
        }
    }
    best
}

/// Largest |A_ij| (0 for an empty matrix).
pub fn max_abs(a: ArrayView2<f64>) -> f64 {
    a.iter().fold(0.0, |m, &x| m.max(x.abs()))
}

/// Relative asymmetry max |A - A^T| / max |A| (0 for the zero matrix).
pub fn relative_asymmetry(a: ArrayView2<f64>) -> f64 {
    let m = max_abs(a);
    if m == 0.0 {
        0.0
    } else {
        max_asymmetry(a).0 / m
    }
}

/// The symmetric part (A + A^T)/2.
pub fn symmetric_part(a: ArrayView2<f64>) -> Array2<f64> {
    (&a + &a.t()) * 0.5
}

/// Tolerance on the relative asymmetry max |A - A^T| / max |A| that [`sym_eigh`] accepts for
/// an n x n matrix: sqrt(u) / max(n/2, 1).
///
/// Both backends read only the lower triangle, so they decompose S + E instead of the
/// symmetric part S = (A + A^T)/2, where E is symmetric with |E_ij| = |A_ij - A_ji|/2 off the
/// diagonal. By Weyl's inequality each eigenvalue moves by at most
/// ||E||_2 <= ||E||_F <= n * max|E_ij| = (n/2) * max|A - A^T|. The tolerance caps that shift
/// at sqrt(u) * max|A|: the eigenvalues keep at least half of the f64 digits relative to the
/// scale of A. A matrix that is symmetric in exact arithmetic but computed in floating point
/// (an autodiff Hessian, whose (i, j) and (j, i) entries are sums taken in different orders)
/// has asymmetry of a few gamma_K times its sums of absolute terms, far below this; more
/// asymmetry signals a bug or a genuinely non-symmetric input, and the caller must decide how
/// to symmetrise (e.g. [`symmetric_part`]), not the solver.
pub fn eigh_symmetry_tolerance(n: usize) -> f64 {
    UNIT_ROUNDOFF.sqrt() / (n as f64 / 2.0).max(1.0)
}

/// Pivot threshold below which an LU factor is treated as singular: n * u * max|A|.
///
/// LU with partial pivoting is backward stable: the computed factors are exact for some
/// A + dA with |dA| <= gamma_n |L||U| (Higham, Thm. 9.3), i.e. of size about n * u * rho *
/// max|A| with growth factor rho >= 1. A pivot no larger than n * u * max|A| is therefore
/// within the rounding perturbation: a matrix that is exactly singular cannot be told apart
/// from A, and the solution would carry no correct digits.
pub fn singular_pivot_threshold(n: usize, max_abs_a: f64) -> f64 {
    n as f64 * UNIT_ROUNDOFF * max_abs_a
}

pub(crate) fn check_finite(
    op: &'static str,
    operand: &'static str,
    a: ArrayView2<f64>,
) -> Result<(), LinalgError> {
    if let Some(((row, col), &value)) = a.indexed_iter().find(|(_, x)| !x.is_finite()) {
        return Err(LinalgError::NonFinite {
            op,
            operand,
            rows: a.nrows(),
            cols: a.ncols(),
            row,
            col,
            value,
        });
    }
    Ok(())
}

pub(crate) fn check_square(op: &'static str, a: ArrayView2<f64>) -> Result<usize, LinalgError> {
    if a.nrows() != a.ncols() {
        return Err(LinalgError::NotSquare {
            op,
            rows: a.nrows(),
            cols: a.ncols(),
        });
    }
    Ok(a.nrows())
}

/// The input checks of [`sym_eigh`] (shared with the LAPACK backend): square, finite,
/// symmetric within [`eigh_symmetry_tolerance`].
pub(crate) fn check_eigh_input(op: &'static str, a: ArrayView2<f64>) -> Result<usize, LinalgError> {
    let n = check_square(op, a)?;
    check_finite(op, "A", a)?;
    let (asym, row, col) = max_asymmetry(a);
    let m = max_abs(a);
    let tolerance = eigh_symmetry_tolerance(n);
    if asym > tolerance * m {
        return Err(LinalgError::NotSymmetric {
            op,
            n,
            row,
            col,
            max_asymmetry: asym,
            max_abs: m,
            relative: asym / m,
            tolerance,
        });
    }
    Ok(n)
}

/// The input checks of [`solve`] (shared with the LAPACK backend).
pub(crate) fn check_solve_input(
    op: &'static str,
    a: ArrayView2<f64>,
    b: ArrayView2<f64>,
) -> Result<usize, LinalgError> {
    let n = check_square(op, a)?;
    if b.nrows() != n {
        return Err(LinalgError::RowMismatch {
            op,
            a_rows: a.nrows(),
            a_cols: a.ncols(),
            b_rows: b.nrows(),
            b_cols: b.ncols(),
        });
    }
    check_finite(op, "A", a)?;
    check_finite(op, "B", b)?;
    Ok(n)
}

pub(crate) fn check_finite_result(
    op: &'static str,
    n: usize,
    x: ArrayView2<f64>,
) -> Result<(), LinalgError> {
    if let Some(((row, col), _)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(LinalgError::NonFiniteResult { op, n, row, col });
    }
    Ok(())
}

/// Symmetric eigendecomposition A = V diag(lambda) V^T (faer's self-adjoint EVD: Householder
/// tridiagonalisation, then divide and conquer), reading the lower triangle of A.
///
/// Eigenvalues are ascending; column i of `vectors` is a unit eigenvector for `values[i]`.
/// Errors: non-square, non-finite, or asymmetric beyond [`eigh_symmetry_tolerance`].
pub fn sym_eigh(a: ArrayView2<f64>) -> Result<SymEigen, LinalgError> {
    const OP: &str = "sym_eigh";
    let n = check_eigh_input(OP, a)?;
    if n == 0 {
        return Ok(SymEigen {
            values: Array1::zeros(0),
            vectors: Array2::zeros((0, 0)),
        });
    }
    let evd = a
        .into_faer()
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| LinalgError::NoConvergence { op: OP, n })?;
    let values: Array1<f64> = evd.S().column_vector().iter().copied().collect();
    let vectors = evd.U().into_ndarray().to_owned();
    check_finite_result(OP, n, vectors.view())?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(LinalgError::NonFiniteResult {
            op: OP,
            n,
            row: i,
            col: i,
        });
    }
    Ok(SymEigen { values, vectors })
}

/// Solves A X = B by LU with partial (row) pivoting, P A = L U (faer), for square A [n, n]
/// and B [n, k].
///
/// Errors: non-square A, row mismatch, non-finite input, a pivot at or below
/// [`singular_pivot_threshold`] (singular to working precision), or a non-finite result.
pub fn solve(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Result<Array2<f64>, LinalgError> {
    const OP: &str = "solve";
    let n = check_solve_input(OP, a, b)?;
    if n == 0 {
        return Ok(Array2::zeros((0, b.ncols())));
    }
    let lu = a.into_faer().partial_piv_lu();
    let threshold = singular_pivot_threshold(n, max_abs(a));
    let u = lu.U();
    for k in 0..n {
        let pivot = u[(k, k)];
        if pivot.abs() <= threshold {
            return Err(LinalgError::Singular {
                op: OP,
                n,
                index: k,
                pivot,
                threshold,
            });
        }
    }
    let x = lu.solve(b.into_faer());
    let x = x.as_ref().into_ndarray().to_owned();
    check_finite_result(OP, n, x.view())?;
    Ok(x)
}
