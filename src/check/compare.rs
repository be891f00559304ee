//! Key-by-key comparison of two dumps of the same quantities (`darts gradients` or
//! `darts step` outputs, ours or another implementation's written with the same keys), in the
//! order the quantities depend on each other, so that the first disagreement names the stage
//! where two implementations part: losses, grad w, the unrolled w', v, the partial
//! derivative, R and the mixed HVP, the architecture gradient; then, for step dumps, the
//! updated alphas, the weight step's loss and gradient norm, the new weights and buffers.
//!
//! Each key's tolerance comes from the caller (`darts compare` derives it from our graph at
//! the dumps' inputs: [`super::bounds`]); a key without one is listed, not judged.

use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The stages of a `darts gradients` dump in dependency order (a prefix ending in '/' or '_'
/// names a group of keys). Both spaces; keys of one space are simply absent in the other.
pub const GRADIENTS_ORDER: [&str; 21] = [
    "loss_train",
    "grad_w_train/",
    "grad_alpha_train/",
    "hidden_train_next",
    "loss_valid",
    "grad_alpha_first/",
    "hidden_valid_next_first",
    "clip_coef_train",
    "unrolled_w/",
    "loss_valid_unrolled",
    "hidden_valid_next_second",
    "v/",
    "grad_alpha_unrolled_partial/",
    "fd_r",
    "hvp_fd/",
    "fd_r_at_unrolled",
    "hvp_fd_at_unrolled/",
    "hvp_exact/",
    "grad_alpha_second/",
    "grad_alpha_unrolled_exact/",
    "grad_alpha_unrolled_intended/",
];

/// The stages of one iteration of a `darts step` dump (under `iter<k>/`), in dependency
/// order: the architecture step's new alphas, the point the weight step starts from (the
/// second order's restored weights), then the weight step.
pub const STEP_ORDER: [&str; 5] = ["alpha/", "w_restored/", "loss_train", "grad_norm", "sd/"];

/// The optimiser state a `darts step` dump ends with (after its last iteration).
pub const OPTIMISER_ORDER: [&str; 4] = ["momentum_buffer/", "adam_m/", "adam_v/", "adam_step/"];

/// Whether `key` belongs to the stage `prefix`.
fn in_stage(key: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        key.starts_with(prefix)
    } else {
        key == prefix
    }
}

/// The keys of `keys` in dependency order: gradients stages, then each iteration's stages,
/// then the optimiser state, then any other key in name order.
pub fn dependency_order<'a>(keys: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut rank: Vec<((usize, usize, usize), String)> = Vec::new();
    for k in keys {
        let r = if let Some(s) = GRADIENTS_ORDER.iter().position(|p| in_stage(k, p)) {
            (0, 0, s)
        } else if let Some((it, rest)) = iteration(k) {
            let s = STEP_ORDER.iter().position(|p| in_stage(rest, p));
            (1, it, s.unwrap_or(STEP_ORDER.len()))
        } else if let Some(s) = OPTIMISER_ORDER.iter().position(|p| in_stage(k, p)) {
            (2, 0, s)
        } else {
            (3, 0, 0)
        };
        rank.push((r, k.clone()));
    }
    rank.sort();
    rank.into_iter().map(|(_, k)| k).collect()
}

/// `iter<k>/<rest>` as (k, rest).
pub fn iteration(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("iter")?;
    let (n, rest) = rest.split_once('/')?;
    Some((n.parse().ok()?, rest))
}

/// A dump: key -> array.
pub type Dump = BTreeMap<String, ArrayD<f64>>;

/// One key's comparison.
#[derive(Clone, Debug)]
pub struct Row {
    pub key: String,
    /// max |A - B| and the flat index where it occurs.
    pub max_diff: f64,
    pub at: usize,
    pub a: f64,
    pub b: f64,
    /// max |A|: the quantity's own size.
    pub scale: f64,
    /// The bound on |A - B| per entry, where one was derived.
    pub bound: Option<f64>,
}

impl Row {
    /// Judged (a bound exists) and beyond its bound.
    pub fn disagrees(&self) -> bool {
        self.bound.is_some_and(|b| self.max_diff > b)
    }
    /// The bound is at least the quantity itself, so no disagreement could show at this key.
    pub fn vacuous(&self) -> bool {
        self.bound
            .is_some_and(|b| b >= self.scale && self.scale > 0.0)
    }
}

/// The whole comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Keys in both dumps, in dependency order.
    pub rows: Vec<Row>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("'{key}' has shape {a:?} in {file_a} and {b:?} in {file_b}")]
    Shape {
        key: String,
        a: Vec<usize>,
        b: Vec<usize>,
        file_a: String,
        file_b: String,
    },
    #[error("{file}: '{key}' holds {value} at flat index {index}")]
    NonFinite {
        file: String,
        key: String,
        index: usize,
        value: f64,
    },
    #[error("{file_a} and {file_b} have no key in common")]
    Disjoint { file_a: String, file_b: String },
}

/// Compares the dumps `a` and `b` (named `files` in errors) key by key with the per-entry
/// bounds `bounds` (absent keys are not judged). Shapes must agree and every value must be
/// finite.
pub fn compare(
    (a, b): (&Dump, &Dump),
    files: (&str, &str),
    bounds: &BTreeMap<String, f64>,
) -> Result<Comparison, CompareError> {
    let mut c = Comparison::default();
    for (dump, file) in [(a, files.0), (b, files.1)] {
        for (key, v) in dump {
            if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                return Err(CompareError::NonFinite {
                    file: file.to_string(),
                    key: key.clone(),
                    index,
                    value: v.iter().nth(index).copied().unwrap_or(f64::NAN),
                });
            }
        }
    }
    c.only_a = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    c.only_b = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let common: Vec<&String> = a.keys().filter(|k| b.contains_key(*k)).collect();
    if common.is_empty() {
        return Err(CompareError::Disjoint {
            file_a: files.0.to_string(),
            file_b: files.1.to_string(),
        });
    }
    for key in dependency_order(common) {
        let (x, y) = (&a[&key], &b[&key]);
        if x.shape() != y.shape() {
            return Err(CompareError::Shape {
                key,
                a: x.shape().to_vec(),
                b: y.shape().to_vec(),
                file_a: files.0.to_string(),
                file_b: files.1.to_string(),
            });
        }
        let mut row = Row {
            key: key.clone(),
            max_diff: 0.0,
            at: 0,
            a: x.iter().next().copied().unwrap_or(0.0),
            b: y.iter().next().copied().unwrap_or(0.0),
            scale: x.iter().fold(0.0f64, |m, v| m.max(v.abs())),
            bound: bounds.get(&key).copied(),
        };
        for (i, (p, q)) in x.iter().zip(y.iter()).enumerate() {
            let d = (p - q).abs();
            if d > row.max_diff {
                (row.max_diff, row.at, row.a, row.b) = (d, i, *p, *q);
            }
        }
        c.rows.push(row);
    }
    Ok(c)
}

impl Comparison {
    /// The first key, in dependency order, beyond its bound.
    pub fn first_disagreement(&self) -> Option<&Row> {
        self.rows.iter().find(|r| r.disagrees())
    }

    /// A plain-text table (one line per key) and the verdict.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let w = self
            .rows
            .iter()
            .map(|r| r.key.len())
            .max()
            .unwrap_or(3)
            .max(3);
        let _ = writeln!(
            s,
            "{:<w$}  {:>10}  {:>10}  {:>10}  {:>10}  verdict",
            "key", "max|A-B|", "bound", "diff/bound", "bound/|A|"
        );
        for r in &self.rows {
            let (bound, ratio, power, verdict) = match r.bound {
                Some(b) => (
                    format!("{b:.3e}"),
                    format!("{:.3e}", r.max_diff / b.max(f64::MIN_POSITIVE)),
                    format!("{:.3e}", b / r.scale.max(f64::MIN_POSITIVE)),
                    if r.disagrees() {
                        "DISAGREE"
                    } else if r.vacuous() {
                        "agree (bound vacuous)"
                    } else {
                        "agree"
                    },
                ),
                None => ("-".into(), "-".into(), "-".into(), "not judged"),
            };
            let _ = writeln!(
                s,
                "{:<w$}  {:>10.3e}  {bound:>10}  {ratio:>10}  {power:>10}  {verdict}",
                r.key, r.max_diff
            );
        }
        for (side, keys) in [("A", &self.only_a), ("B", &self.only_b)] {
            if !keys.is_empty() {
                let _ = writeln!(s, "only in {side}: {}", keys.join(", "));
            }
        }
        match self.first_disagreement() {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "first disagreement: {}: max |A - B| = {:.6e} at flat index {} \
                     (A = {:.17e}, B = {:.17e}), {:.3e} times its bound {:.6e}",
                    r.key,
                    r.max_diff,
                    r.at,
                    r.a,
                    r.b,
                    r.max_diff / r.bound.unwrap_or(f64::NAN),
                    r.bound.unwrap_or(f64::NAN)
                );
            }
            None => {
                let judged = self.rows.iter().filter(|r| r.bound.is_some()).count();
                let _ = writeln!(
                    s,
                    "agree: all {judged} judged keys within their bounds ({} not judged)",
                    self.rows.len() - judged
                );
            }
        }
        s
    }
}
