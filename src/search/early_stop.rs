//! DARTS-ES (Zela et al., ICLR 2020): stop the search when the dominant
//! eigenvalue of the alpha Hessian ([`super::alpha_hessian`]) starts to grow fast, and
//! return the architecture from before the growth.
//!
//! The rule as this crate states it (proofs/alpha-hessian.md claim 5; the differences from
//! RobustDARTS' code are listed there): with `lambda[e]` the dominant eigenvalue at the end
//! of epoch e (0-based, as log.jsonl numbers epochs), window W, factor f and start epoch s,
//! let avg(i) = (lambda[i - W + 1] + ... + lambda[i]) / W, the mean of the last W epochs
//! ending at i. At the end of epoch i the search stops when
//!
//! i >= s,  i >= 2W - 1 (both windows full),  avg(i - W) > 0  and  avg(i) > f avg(i - W),
//!
//! and the run's genotype is the one logged at the end of epoch i - W.

use serde::{Deserialize, Serialize};

/// Window, factor and start epoch of the rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EsRule {
    pub window: usize,
    pub factor: f64,
    pub start_epoch: usize,
}

impl Default for EsRule {
    /// RobustDARTS' values: a window of 5 epochs, factor 1.3 (its code's default), checked
    /// from epoch 10.
    fn default() -> Self {
        EsRule {
            window: 5,
            factor: 1.3,
            start_epoch: 10,
        }
    }
}

/// Why and where the rule stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EsDecision {
    /// The epoch whose end triggered the stop (i).
    pub stop_epoch: usize,
    /// The epoch whose genotype is returned (i - W).
    pub return_epoch: usize,
    /// avg(i) and avg(i - W).
    pub avg_now: f64,
    pub avg_before: f64,
}

impl EsRule {
    /// The first epoch at which the rule can be evaluated: max(s, 2W - 1).
    pub fn first_checked_epoch(&self) -> usize {
        self.start_epoch.max((2 * self.window).saturating_sub(1))
    }

    /// The rule at the end of epoch i = `series.len() - 1`, where `series[e]` is the
    /// dominant eigenvalue at the end of epoch e. None: go on.
    pub fn check(&self, series: &[f64]) -> Option<EsDecision> {
        let w = self.window;
        let i = series.len().checked_sub(1)?;
        if w == 0 || i < self.first_checked_epoch() {
            return None;
        }
        let mean = |end: usize| series[end + 1 - w..=end].iter().sum::<f64>() / w as f64;
        let (avg_now, avg_before) = (mean(i), mean(i - w));
        (avg_before > 0.0 && avg_now > self.factor * avg_before).then_some(EsDecision {
            stop_epoch: i,
            return_epoch: i - w,
            avg_now,
            avg_before,
        })
    }

    /// The first stop on a whole series: the rule evaluated after each epoch in turn, as a
    /// run does.
    pub fn first_stop(&self, series: &[f64]) -> Option<EsDecision> {
        (1..=series.len()).find_map(|n| self.check(&series[..n]))
    }
}
