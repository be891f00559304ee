//! The recurrent genotype (rnn/genotypes.py): one (op, predecessor) per node and the states
//! averaged into the output, derived from alpha with the reference's tie rules
//! (RNN_REFERENCE_NOTES.md section 7), printed and parsed in the reference's text form
//! `Genotype(recurrent=[('sigmoid', 0), ...], concat=range(1, 9))`.

use super::{row_offset, PRIMITIVES, STEPS};
use crate::darts::genotype::{fmt_concat, fmt_ops, Lexer, ParseError, Tok};
use ndarray::ArrayD;
use std::fmt;

/// A derived recurrent cell: node i (producing s_{i+1}) applies `recurrent[i].0` to
/// s_{recurrent[i].1}; the output is the mean of the states in `concat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RnnGenotype {
    pub recurrent: Vec<(String, usize)>,
    pub concat: Vec<usize>,
}

/// The derived cell of alpha [36, 5] (model_search.py genotype()): p = softmax(alpha) over all
/// five columns; node i scores each predecessor j by its largest non-none probability and
/// keeps the best j, ties to the smaller j (Python's stable sort of the negated scores); on
/// that row the op is the non-none column with the largest probability, ties to the lower
/// column (a strict `>`). A row whose largest entry is `none` can still win.
pub fn derive(alpha: &ArrayD<f64>) -> RnnGenotype {
    let mut recurrent = Vec::with_capacity(STEPS);
    for i in 0..STEPS {
        let off = row_offset(i);
        let probs: Vec<Vec<f64>> = (0..=i).map(|j| softmax_row(alpha, off + j)).collect();
        let best_op = |row: &[f64]| -> usize {
            let mut k_best = 1;
            for k in 2..PRIMITIVES.len() {
                if row[k] > row[k_best] {
                    k_best = k;
                }
            }
            k_best
        };
        let mut j_best = 0;
        for j in 1..=i {
            if probs[j][best_op(&probs[j])] > probs[j_best][best_op(&probs[j_best])] {
                j_best = j;
            }
        }
        let k = best_op(&probs[j_best]);
        recurrent.push((PRIMITIVES[k].to_string(), j_best));
    }
    RnnGenotype {
        recurrent,
        concat: (1..=STEPS).collect(),
    }
}

/// softmax over the 5 columns of one alpha row, as F.softmax computes it (max subtracted).
fn softmax_row(alpha: &ArrayD<f64>, r: usize) -> Vec<f64> {
    let row: Vec<f64> = (0..PRIMITIVES.len()).map(|k| alpha[[r, k]]).collect();
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

impl fmt::Display for RnnGenotype {
    /// The reference's text form (Python 3 repr of the namedtuple).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Genotype(recurrent={}, concat={})",
            fmt_ops(&self.recurrent),
            fmt_concat(&self.concat)
        )
    }
}

/// The non-none ops a derived cell may use.
const CELL_OPS: [&str; 4] = ["tanh", "relu", "sigmoid", "identity"];

impl std::str::FromStr for RnnGenotype {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut lx = Lexer::new(s)?;
        if lx.ident()? != "Genotype" {
            lx.pos -= 1;
            return Err(lx.err("expected `Genotype(`"));
        }
        lx.punct('(')?;
        let (mut recurrent, mut concat) = (None, None);
        loop {
            let field = lx.ident()?;
            lx.punct('=')?;
            match field.as_str() {
                "recurrent" if recurrent.is_none() => recurrent = Some(lx.ops_of(&CELL_OPS, 1, 1)?),
                "concat" if concat.is_none() => concat = Some(lx.concat()?),
                "recurrent" | "concat" => {
                    lx.pos -= 2;
                    return Err(lx.err(format!("field '{field}' is given twice")));
                }
                other => {
                    lx.pos -= 2;
                    return Err(lx.err(format!(
                        "unknown field '{other}' (a recurrent genotype has recurrent and concat)"
                    )));
                }
            }
            match lx.next() {
                Some(Tok::Punct(',')) => continue,
                Some(Tok::Punct(')')) => break,
                _ => {
                    lx.pos -= 1;
                    return Err(lx.err("expected ',' or ')'"));
                }
            }
        }
        if lx.peek().is_some() {
            return Err(lx.err("trailing text after the genotype"));
        }
        let missing = |what: &str| ParseError {
            column: s.len(),
            near: "end of input".into(),
            reason: format!("missing field '{what}'"),
        };
        let g = RnnGenotype {
            recurrent: recurrent.ok_or_else(|| missing("recurrent"))?,
            concat: concat.ok_or_else(|| missing("concat"))?,
        };
        let states = g.recurrent.len() + 1;
        if let Some(&c) = g.concat.iter().find(|&&c| c >= states) {
            return Err(ParseError {
                column: s.find("concat").map_or(0, |p| p + 1),
                near: "concat".into(),
                reason: format!("concat index {c} exceeds the cell's {states} states"),
            });
        }
        Ok(g)
    }
}

/// The recurrent genotypes published with the reference (rnn/genotypes.py): DARTS_V1,
/// DARTS_V2 and the alias DARTS = DARTS_V2.
pub fn named(name: &str) -> Option<RnnGenotype> {
    let text = match name {
        "DARTS_V1" => "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))",
        "DARTS_V2" | "DARTS" => "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))",
        _ => return None,
    };
    text.parse().ok()
}
