//! Derived error bounds. Every tolerance in the gradient checks comes from one of these
//! functions; none scales with a tuning knob. Derivations: proofs/gradient-checking.md.

/// gamma_K = K u / (1 - K u): the relative forward-error bound of a sum of K products
/// evaluated in floating point with unit roundoff u, applied to the sum of absolute terms
/// (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.4).
/// Returns infinity when K u >= 1 (no bound).
pub fn gamma(k: usize, u: f64) -> f64 {
    let ku = k as f64 * u;
    if ku >= 1.0 {
        f64::INFINITY
    } else {
        ku / (1.0 - ku)
    }
}

/// Error bound of the central difference D(h) = (f(x+h) - f(x-h)) / 2h used at step h/2,
/// from a second difference taken at step h:
///
/// D(h) - f' = C h^2 + O(h^4), so D(h) - D(h/2) = (3/4) C h^2 + O(h^4) and the truncation error of
/// D(h/2) is C h^2 / 4 = |D(h) - D(h/2)| / 3 + O(h^4). We allow |D(h) - D(h/2)| (three times the
/// estimate, covering the O(h^4) remainder and the estimate's own round-off) plus the round-off
/// of D(h/2): two evaluations each wrong by at most `eval_err`, divided by 2 (h/2) = h.
pub fn central_difference_bound(d_h: f64, d_half: f64, eval_err: f64, h: f64) -> f64 {
    (d_h - d_half).abs() + 2.0 * eval_err / h
}

/// Change of a function s caused by rounding the point p = x + tau t at which it is evaluated
/// to doubles: each coordinate moves by |fl(p_j) - p_j| <= u |p_j|, so by the mean value
/// theorem |s(fl(p)) - s(p)| <= u sum_j |d_j s| |p_j| to first order in u (the gradient changes
/// by O(u) over that distance). `abs_grad_dot_point` is sum_j |d_j s| (|x_j| + |tau t_j|), which
/// bounds sum_j |d_j s| |p_j|. It is an evaluation error of s, to be added to the graph's own
/// round-off before [`central_difference_bound`] divides by the step.
pub fn rounded_point_bound(abs_grad_dot_point: f64, u: f64) -> f64 {
    u * abs_grad_dot_point
}

/// Round-off bound of evaluating a graph whose longest accumulation has `k` terms and which
/// has `depth` nodes on its longest path, for a result whose terms sum in absolute value to
/// `abs_sum`: each node adds at most one more rounding per term, so the bound is
/// gamma_{k * depth} * abs_sum (first order in u; condition amplification inside the graph is
/// what `depth` stands in for).
pub fn evaluation_bound(k: usize, depth: usize, abs_sum: f64, u: f64) -> f64 {
    gamma(k.max(1) * depth.max(1), u) * abs_sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_matches_definition_and_saturates() {
        let u = f64::EPSILON / 2.0;
        assert!((gamma(10, u) - 10.0 * u / (1.0 - 10.0 * u)).abs() < 1e-30);
        assert!(gamma(usize::MAX, u).is_infinite());
    }

    #[test]
    fn richardson_bound_covers_a_known_truncation_error() {
        // f = sin at x = 1: D(h) - cos(1) = -cos(1) h^2 / 6 + O(h^4).
        let d = |h: f64| ((1.0 + h).sin() - (1.0 - h).sin()) / (2.0 * h);
        let h = 1e-2;
        let err = (d(h / 2.0) - 1f64.cos()).abs();
        let bound = central_difference_bound(d(h), d(h / 2.0), 1e-16, h);
        assert!(
            err <= bound && bound < 10.0 * err,
            "err {err} bound {bound}"
        );
    }
}
