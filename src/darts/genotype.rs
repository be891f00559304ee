//! Genotypes: discretising alphas as the reference does (model_search.py `genotype`), the
//! reference's text form `Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6),
//! reduce=[...], reduce_concat=range(2, 6))`, and a parser for it with errors that point at the
//! offending token.

use super::PRIMITIVES;
use ndarray::{ArrayD, Axis};
use std::fmt;

/// Operation names a genotype may use: the search PRIMITIVES plus `sep_conv_7x7`, which the
/// reference's OPS table also defines (used by its NASNet and AmoebaNet genotypes).
pub const KNOWN_OPS: [&str; 9] = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "sep_conv_7x7",
];

/// One discretised cell type: (operation, input state index) pairs, two per node, and the
/// states concatenated into the output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CellGenes {
    pub ops: Vec<(String, usize)>,
    pub concat: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Genotype {
    pub normal: CellGenes,
    pub reduce: CellGenes,
}

/// Row-wise softmax of a [k, n] alpha matrix (exp(a - max) / sum, as torch.softmax).
pub fn softmax_rows(alpha: &ArrayD<f64>) -> ArrayD<f64> {
    let mut p = alpha.clone();
    for mut row in p.lanes_mut(Axis(alpha.ndim() - 1)) {
        let m = row.fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    p
}

/// Discretise one cell type as the reference does: for node i, rank its 2+i incoming rows
/// of softmax(alpha) by their largest non-`none` probability (stable, so ties keep the
/// smaller j), keep the top 2, and give each kept edge its non-`none` argmax (lowest index
/// on ties). Entries are in ranked order (strongest edge first).
pub fn parse_cell(alpha: &ArrayD<f64>, steps: usize, multiplier: usize) -> CellGenes {
    let w = softmax_rows(alpha);
    let none = 0;
    let mut ops = Vec::new();
    let mut start = 0;
    for i in 0..steps {
        let n = 2 + i;
        let strength = |j: usize| {
            (0..PRIMITIVES.len())
                .filter(|&k| k != none)
                .map(|k| w[[start + j, k]])
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let mut edges: Vec<usize> = (0..n).collect();
        // Stable sort on the negated key, exactly like Python's sorted(key=-max(...)).
        edges.sort_by(|&a, &b| {
            (-strength(a))
                .partial_cmp(&-strength(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for &j in edges.iter().take(2) {
            let mut best: Option<usize> = None;
            for k in (0..PRIMITIVES.len()).filter(|&k| k != none) {
                if best.is_none_or(|b| w[[start + j, k]] > w[[start + j, b]]) {
                    best = Some(k);
                }
            }
            ops.push((PRIMITIVES[best.expect("7 candidates")].to_string(), j));
        }
        start += n;
    }
    CellGenes {
        ops,
        concat: (2 + steps - multiplier..steps + 2).collect(),
    }
}

/// The genotype of a search state (alphas of both cell types).
pub fn derive(
    alpha_normal: &ArrayD<f64>,
    alpha_reduce: &ArrayD<f64>,
    steps: usize,
    multiplier: usize,
) -> Genotype {
    Genotype {
        normal: parse_cell(alpha_normal, steps, multiplier),
        reduce: parse_cell(alpha_reduce, steps, multiplier),
    }
}

pub(crate) fn fmt_concat(c: &[usize]) -> String {
    let contiguous = c.windows(2).all(|w| w[1] == w[0] + 1) && !c.is_empty();
    if contiguous {
        format!("range({}, {})", c[0], c[c.len() - 1] + 1)
    } else {
        format!(
            "[{}]",
            c.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

pub(crate) fn fmt_ops(ops: &[(String, usize)]) -> String {
    let items: Vec<String> = ops.iter().map(|(o, j)| format!("('{o}', {j})")).collect();
    format!("[{}]", items.join(", "))
}

impl fmt::Display for Genotype {
    /// The reference's text form (Python 3 repr of the namedtuple).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Genotype(normal={}, normal_concat={}, reduce={}, reduce_concat={})",
            fmt_ops(&self.normal.ops),
            fmt_concat(&self.normal.concat),
            fmt_ops(&self.reduce.ops),
            fmt_concat(&self.reduce.concat)
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("genotype: {reason} at column {column} (near `{near}`)")]
pub struct ParseError {
    pub column: usize,
    pub near: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    Ident(String),
    Str(String),
    Int(usize),
    Punct(char),
}

pub(crate) struct Lexer {
    toks: Vec<(Tok, usize, String)>,
    pub(crate) pos: usize,
    len: usize,
}

impl Lexer {
    pub(crate) fn new(s: &str) -> Result<Lexer, ParseError> {
        let chars: Vec<char> = s.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let col = i + 1;
            if c.is_whitespace() {
                i += 1;
            } else if "()[],=".contains(c) {
                toks.push((Tok::Punct(c), col, c.to_string()));
                i += 1;
            } else if c == '\'' || c == '"' {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == c)
                    .ok_or(ParseError {
                        column: col,
                        near: chars[i..].iter().take(16).collect(),
                        reason: "unterminated string".into(),
                    })?;
                let text: String = chars[i + 1..i + 1 + end].iter().collect();
                toks.push((Tok::Str(text.clone()), col, format!("{c}{text}{c}")));
                i += end + 2;
            } else if c.is_ascii_digit() {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let v = text.parse().map_err(|_| ParseError {
                    column: col,
                    near: text.clone(),
                    reason: "integer out of range".into(),
                })?;
                toks.push((Tok::Int(v), col, text));
            } else if c.is_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                toks.push((Tok::Ident(text.clone()), col, text));
            } else {
                return Err(ParseError {
                    column: col,
                    near: c.to_string(),
                    reason: format!("unexpected character '{c}'"),
                });
            }
        }
        Ok(Lexer {
            toks,
            pos: 0,
            len: s.chars().count(),
        })
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> ParseError {
        match self.toks.get(self.pos) {
            Some((_, col, text)) => ParseError {
                column: *col,
                near: text.clone(),
                reason: reason.into(),
            },
            None => ParseError {
                column: self.len + 1,
                near: "end of input".into(),
                reason: reason.into(),
            },
        }
    }

    pub(crate) fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    pub(crate) fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }

    pub(crate) fn punct(&mut self, c: char) -> Result<(), ParseError> {
        match self.peek() {
            Some(Tok::Punct(d)) if *d == c => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.err(format!("expected '{c}'"))),
        }
    }

    pub(crate) fn int(&mut self) -> Result<usize, ParseError> {
        match self.peek() {
            Some(Tok::Int(v)) => {
                let v = *v;
                self.pos += 1;
                Ok(v)
            }
            _ => Err(self.err("expected an integer")),
        }
    }

    pub(crate) fn ident(&mut self) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.err("expected a name")),
        }
    }

    /// `[('op', j), ...]`, each op known and each j a valid earlier state.
    fn ops(&mut self) -> Result<Vec<(String, usize)>, ParseError> {
        self.ops_of(&KNOWN_OPS, 2, 2)
    }

    /// A list of `('op', j)` pairs, `per_node` per node, op one of `known`, and node n's
    /// input j one of its `base + n` earlier states.
    pub(crate) fn ops_of(
        &mut self,
        known: &[&str],
        per_node: usize,
        base: usize,
    ) -> Result<Vec<(String, usize)>, ParseError> {
        self.punct('[')?;
        let mut ops = Vec::new();
        loop {
            if let Some(Tok::Punct(']')) = self.peek() {
                self.pos += 1;
                break;
            }
            if !ops.is_empty() {
                self.punct(',')?;
                if let Some(Tok::Punct(']')) = self.peek() {
                    self.pos += 1;
                    break;
                }
            }
            self.punct('(')?;
            let op = match self.peek() {
                Some(Tok::Str(s)) => s.clone(),
                _ => return Err(self.err("expected an operation name in quotes")),
            };
            if !known.contains(&op.as_str()) {
                return Err(self.err(format!(
                    "unknown operation '{op}' (known: {})",
                    known.join(", ")
                )));
            }
            self.pos += 1;
            self.punct(',')?;
            let node = ops.len() / per_node;
            let j = self.int()?;
            if j >= node + base {
                self.pos -= 1;
                return Err(self.err(format!(
                    "input index {j} is not an earlier state of node {node} (must be < {})",
                    node + base
                )));
            }
            self.punct(')')?;
            ops.push((op, j));
        }
        if ops.is_empty() || ops.len() % per_node != 0 {
            self.pos -= 1;
            let per = match per_node {
                1 => "one".to_string(),
                2 => "two".to_string(),
                n => n.to_string(),
            };
            return Err(self.err(format!(
                "a cell needs {per} (op, input) entries per node, got {}",
                ops.len()
            )));
        }
        Ok(ops)
    }

    /// `range(a, b)` or `[i, j, ...]`.
    pub(crate) fn concat(&mut self) -> Result<Vec<usize>, ParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) if s == "range" => {
                self.pos += 1;
                self.punct('(')?;
                let a = self.int()?;
                self.punct(',')?;
                let b = self.int()?;
                if b <= a {
                    self.pos -= 1;
                    return Err(self.err("empty concat range"));
                }
                self.punct(')')?;
                Ok((a..b).collect())
            }
            Some(Tok::Punct('[')) => {
                self.pos += 1;
                let mut v = vec![self.int()?];
                while let Some(Tok::Punct(',')) = self.peek() {
                    self.pos += 1;
                    v.push(self.int()?);
                }
                self.punct(']')?;
                Ok(v)
            }
            _ => Err(self.err("expected range(a, b) or a list of state indices")),
        }
    }
}

impl std::str::FromStr for Genotype {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut lx = Lexer::new(s)?;
        let head = lx.ident()?;
        if head != "Genotype" {
            lx.pos -= 1;
            return Err(lx.err("expected `Genotype(`"));
        }
        lx.punct('(')?;
        let (mut normal, mut reduce, mut nc, mut rc) = (None, None, None, None);
        loop {
            let field = lx.ident()?;
            lx.punct('=')?;
            let seen = match field.as_str() {
                "normal" => normal.is_some(),
                "reduce" => reduce.is_some(),
                "normal_concat" => nc.is_some(),
                "reduce_concat" => rc.is_some(),
                _ => false,
            };
            if seen {
                lx.pos -= 2;
                return Err(lx.err(format!("field '{field}' is given twice")));
            }
            match field.as_str() {
                "normal" => normal = Some(lx.ops()?),
                "reduce" => reduce = Some(lx.ops()?),
                "normal_concat" => nc = Some(lx.concat()?),
                "reduce_concat" => rc = Some(lx.concat()?),
                other => {
                    lx.pos -= 2;
                    return Err(lx.err(format!("unknown field '{other}'")));
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
        let g = Genotype {
            normal: CellGenes {
                ops: normal.ok_or_else(|| missing("normal"))?,
                concat: nc.ok_or_else(|| missing("normal_concat"))?,
            },
            reduce: CellGenes {
                ops: reduce.ok_or_else(|| missing("reduce"))?,
                concat: rc.ok_or_else(|| missing("reduce_concat"))?,
            },
        };
        for (name, cell) in [("normal", &g.normal), ("reduce", &g.reduce)] {
            let states = 2 + cell.ops.len() / 2;
            if let Some(&c) = cell.concat.iter().find(|&&c| c >= states) {
                return Err(ParseError {
                    column: s.find(&format!("{name}_concat")).map_or(0, |p| p + 1),
                    near: format!("{name}_concat"),
                    reason: format!("concat index {c} exceeds the cell's {states} states"),
                });
            }
        }
        Ok(g)
    }
}

/// The genotypes published with the reference (cnn/genotypes.py): DARTS_V1, DARTS_V2 and
/// the alias DARTS = DARTS_V2.
pub fn named(name: &str) -> Option<Genotype> {
    let text = match name {
        "DARTS_V1" => "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
        "DARTS_V2" | "DARTS" => "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])",
        _ => return None,
    };
    Some(text.parse().expect("built-in genotypes parse"))
}
