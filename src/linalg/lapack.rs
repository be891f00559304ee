//! The same two operations as [`super`], through ndarray-linalg and the system LAPACK
//! (OpenBLAS): `dsyevd`-family `eigh` reading the lower triangle, and `dgetrf`/`dgetrs` for the
//! solve. An independent implementation, compared with faer in
//! tests/hessian.rs::lapack_matches_faer. Enabled by the `lapack` cargo feature.

use super::{
    check_eigh_input, check_finite_result, check_solve_input, LinalgError, SymEigen, UNIT_ROUNDOFF,
};
use ndarray::{Array1, Array2, ArrayView2};
use ndarray_linalg::{Eigh, Factorize, ReciprocalConditionNum, Solve, UPLO};

fn lapack_err(
    op: &'static str,
    a: ArrayView2<f64>,
    e: ndarray_linalg::error::LinalgError,
) -> LinalgError {
    LinalgError::Lapack {
        op,
        rows: a.nrows(),
        cols: a.ncols(),
        message: e.to_string(),
    }
}

/// Symmetric eigendecomposition A = V diag(lambda) V^T via LAPACK, `eigh(UPLO::Lower)`.
/// Same contract and input checks as [`super::sym_eigh`]: ascending eigenvalues, unit
/// eigenvectors as columns.
pub fn sym_eigh(a: ArrayView2<f64>) -> Result<SymEigen, LinalgError> {
    const OP: &str = "lapack::sym_eigh";
    let n = check_eigh_input(OP, a)?;
    if n == 0 {
        return Ok(SymEigen {
            values: Array1::zeros(0),
            vectors: Array2::zeros((0, 0)),
        });
    }
    let owned = a.as_standard_layout().into_owned();
    let (values, vectors) = owned.eigh(UPLO::Lower).map_err(|e| lapack_err(OP, a, e))?;
    check_finite_result(OP, n, vectors.view())?;
    Ok(SymEigen { values, vectors })
}

/// Solves A X = B with LAPACK's LU with partial pivoting (`getrf`, then `getrs` per column).
///
/// Same input checks as [`super::solve`]. Singularity is decided differently from the faer
/// backend, on purpose: LAPACK's 1-norm condition estimate (`gecon`) gives
/// rcond = 1 / (||A||_1 ||A^-1||_1), and the forward error of a backward-stable solve is
/// about n * u * kappa(A) = n * u / rcond, so rcond <= n * u means no correct digit is left
/// (an exactly zero pivot, `getrf` info > 0, is reported as a LAPACK error).
pub fn solve(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Result<Array2<f64>, LinalgError> {
    const OP: &str = "lapack::solve";
    let n = check_solve_input(OP, a, b)?;
    if n == 0 {
        return Ok(Array2::zeros((0, b.ncols())));
    }
    let owned = a.as_standard_layout().into_owned();
    let lu = owned.factorize().map_err(|e| lapack_err(OP, a, e))?;
    let rcond = lu.rcond().map_err(|e| lapack_err(OP, a, e))?;
    let threshold = n as f64 * UNIT_ROUNDOFF;
    if rcond.is_nan() || rcond <= threshold {
        return Err(LinalgError::Lapack {
            op: OP,
            rows: n,
            cols: n,
            message: format!(
                "singular to working precision: reciprocal condition estimate {rcond:e} is at \
                 or below n * u = {threshold:e}"
            ),
        });
    }
    let mut x = Array2::zeros((n, b.ncols()));
    for (k, col) in b.columns().into_iter().enumerate() {
        let xk = lu
            .solve(&col.to_owned())
            .map_err(|e| lapack_err(OP, a, e))?;
        x.column_mut(k).assign(&xk);
    }
    check_finite_result(OP, n, x.view())?;
    Ok(x)
}
