//! The DARTS conv search network (cnn/model_search.py): stem, stacked normal and reduction
//! cells of MixedOps, global average pool, linear head, mean cross-entropy.
//! Facts matched: REFERENCE_NOTES.md section 2.

use super::num_edges;
use super::ops::{BnRecord, NetBuilder, ParamSource};
use super::params::Layout;
use crate::darts::names;
use crate::graph::{compose, Graph, NodeId};

use crate::graph::Result as R;

/// Shape of a search network. The reference fixes steps 4, multiplier 4, stem_multiplier 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SearchConfig {
    /// Initial channels C.
    pub c: usize,
    pub layers: usize,
    /// Intermediate nodes per cell.
    pub steps: usize,
    /// Intermediate nodes concatenated into the cell output (the last `multiplier`).
    pub multiplier: usize,
    pub stem_multiplier: usize,
    pub num_classes: usize,
    /// Test-only smooth variant: softplus for ReLU and average for max pooling.
    pub smooth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("multiplier {multiplier} exceeds steps {steps}: the cell output concatenates the last `multiplier` intermediate nodes")]
    Multiplier { multiplier: usize, steps: usize },
    #[error(
        "input size {h}x{w}: FactorizedReduce halves it twice, so both must be divisible by 4"
    )]
    Spatial { h: usize, w: usize },
}

impl SearchConfig {
    /// The paper's search network: C = 16, 8 layers, 4 steps, multiplier 4, stem 3, 10 classes.
    pub fn paper() -> Self {
        SearchConfig {
            c: 16,
            layers: 8,
            steps: 4,
            multiplier: 4,
            stem_multiplier: 3,
            num_classes: 10,
            smooth: false,
        }
    }

    /// Alpha rows per cell type.
    pub fn k(&self) -> usize {
        num_edges(self.steps)
    }

    pub fn is_reduction(&self, cell: usize) -> bool {
        cell == self.layers / 3 || cell == 2 * self.layers / 3
    }

    /// Whether any cell is a normal cell. With 1 or 2 layers every cell reduces (cells
    /// layers/3 and 2 layers/3 cover them all), so alphas_normal takes no part in the loss:
    /// its gradient is zero here and None in PyTorch, whose Adam then skips it, and the
    /// reference's second order fails on the missing gradient (REFERENCE_NOTES 3).
    pub fn has_normal_cells(&self) -> bool {
        (0..self.layers).any(|i| !self.is_reduction(i))
    }

    /// Which alphas (normal, reduce) the loss uses: Adam updates only those, as torch.optim
    /// skips a parameter whose gradient is None.
    pub fn alphas_used(&self) -> [bool; 2] {
        [self.has_normal_cells(), true]
    }

    /// Reject configurations the reference cannot run, with the reason. (Any C and any
    /// number of layers run: see [`Self::has_normal_cells`] for fewer than 3.)
    pub fn validate(&self, h: usize, w: usize) -> Result<(), ConfigError> {
        for (v, name) in [
            (self.c, "C"),
            (self.layers, "layers"),
            (self.steps, "steps"),
            (self.multiplier, "multiplier"),
            (self.stem_multiplier, "stem_multiplier"),
            (self.num_classes, "num_classes"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.multiplier > self.steps {
            return Err(ConfigError::Multiplier {
                multiplier: self.multiplier,
                steps: self.steps,
            });
        }
        if h % 4 != 0 || w % 4 != 0 || h == 0 || w == 0 {
            return Err(ConfigError::Spatial { h, w });
        }
        Ok(())
    }

    /// The parameter and buffer layout (state_dict names in module order).
    pub fn layout(&self) -> R<Layout> {
        let mut layout = Layout::default();
        let mut g = Graph::new();
        let x = g.input(names::X, [2, 3, 8, 8])?;
        let t = g.input(names::ONEHOT, [2, self.num_classes])?;
        let k = self.k();
        let an = g.input(names::ALPHA[0], [k, 8])?;
        let ar = g.input(names::ALPHA[1], [k, 8])?;
        let mut nb = NetBuilder::search(&mut g, ParamSource::Inputs, self.smooth);
        nb.layout = Some(&mut layout);
        build(&mut nb, self, x, t, an, ar)?;
        Ok(layout)
    }
}

/// The nodes of one built search network.
#[derive(Clone, Debug)]
pub struct NetOut {
    pub logits: NodeId,
    /// Mean cross-entropy.
    pub loss: NodeId,
    /// Every BN's batch statistics, in module order.
    pub bn: Vec<BnRecord>,
}

/// MixedOp (eq. 2 of Liu, Simonyan and Yang, ICLR 2019): o(x) = sum_k softmax(alpha)_k o_k(x),
/// summed in PRIMITIVES order. `weights` is the [k, 8] softmax of the cell type's alphas.
fn mixed_op(
    nb: &mut NetBuilder,
    x: NodeId,
    weights: NodeId,
    edge: usize,
    name: &str,
    stride: usize,
) -> R<NodeId> {
    let mut acc: Option<NodeId> = None;
    for prim in 0..super::PRIMITIVES.len() {
        let op_name = format!("{name}._ops.{prim}");
        let y = nb.candidate(prim, x, &op_name, stride)?;
        let w = nb.g.slice(weights, 0, edge, edge + 1, 1)?;
        let w = nb.g.slice(w, 1, prim, prim + 1, 1)?;
        let w = nb.g.reshape(w, crate::graph::Shape::scalar())?;
        let term = nb.g.mul(w, y)?;
        acc = Some(match acc {
            None => term,
            Some(a) => nb.g.add2(a, term)?,
        });
    }
    Ok(acc.expect("at least one primitive"))
}

/// One search cell: preprocess both inputs, then node i = sum_{j < 2+i} MixedOp(states[j]),
/// output = concatenation of the last `multiplier` nodes.
#[allow(clippy::too_many_arguments)]
fn cell(
    nb: &mut NetBuilder,
    cfg: &SearchConfig,
    idx: usize,
    s0: NodeId,
    s1: NodeId,
    c: usize,
    reduction: bool,
    reduction_prev: bool,
    weights: NodeId,
) -> R<NodeId> {
    let name = format!("cells.{idx}");
    let p0 = if reduction_prev {
        nb.factorized_reduce(s0, &format!("{name}.preprocess0"), c)?
    } else {
        nb.relu_conv_bn(s0, &format!("{name}.preprocess0"), c, 1, 1, 0)?
    };
    let p1 = nb.relu_conv_bn(s1, &format!("{name}.preprocess1"), c, 1, 1, 0)?;
    let mut states = vec![p0, p1];
    let mut offset = 0;
    for _ in 0..cfg.steps {
        let mut acc: Option<NodeId> = None;
        for (j, &h) in states.clone().iter().enumerate() {
            let edge = offset + j;
            let stride = if reduction && j < 2 { 2 } else { 1 };
            let y = mixed_op(nb, h, weights, edge, &format!("{name}._ops.{edge}"), stride)?;
            acc = Some(match acc {
                None => y,
                Some(a) => nb.g.add2(a, y)?,
            });
        }
        offset += states.len();
        states.push(acc.expect("every node has predecessors"));
    }
    nb.g.concat(&states[states.len() - cfg.multiplier..], 1)
}

/// Build the search network on images `x` [N, 3, H, W] with one-hot targets [N, classes]
/// and alpha inputs [k, 8]; parameters come from `nb.source`.
pub fn build(
    nb: &mut NetBuilder,
    cfg: &SearchConfig,
    x: NodeId,
    onehot: NodeId,
    alpha_normal: NodeId,
    alpha_reduce: NodeId,
) -> R<NetOut> {
    let bn_start = nb.bn.len();
    let c_stem = cfg.stem_multiplier * cfg.c;
    let stem = nb.conv(x, "stem.0", c_stem, 3, 1, 1, 1, 1)?;
    let stem = nb.bn_with(stem, "stem.1", true)?;
    let (mut s0, mut s1) = (stem, stem);
    let mut c_curr = cfg.c;
    let mut reduction_prev = false;
    for i in 0..cfg.layers {
        let reduction = cfg.is_reduction(i);
        if reduction {
            c_curr *= 2;
        }
        let alpha = if reduction {
            alpha_reduce
        } else {
            alpha_normal
        };
        let weights = nb.g.scoped(format!("cells.{i}.softmax"), |g| {
            compose::softmax(g, alpha, 1)
        })?;
        let out = cell(
            nb,
            cfg,
            i,
            s0,
            s1,
            c_curr,
            reduction,
            reduction_prev,
            weights,
        )?;
        s0 = s1;
        s1 = out;
        reduction_prev = reduction;
    }
    // AdaptiveAvgPool2d(1), flatten, Linear, CrossEntropyLoss (mean).
    let logits = nb.classifier_head(s1, cfg.num_classes)?;
    let loss = compose::cross_entropy_mean(nb.g, logits, onehot)?;
    Ok(NetOut {
        logits,
        loss,
        bn: nb.bn[bn_start..].to_vec(),
    })
}

/// Reading a configuration back from a state's tensor shapes.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("state has no '{0}' tensor, so the network configuration cannot be read from it")]
    Missing(String),
    #[error("'{key}' has shape {shape:?}: {reason}")]
    Shape {
        key: String,
        shape: Vec<usize>,
        reason: String,
    },
    #[error("{what} {given} was given, but the state's shapes say {read} ({how})")]
    Given {
        what: &'static str,
        given: usize,
        read: usize,
        how: String,
    },
    #[error("alpha has {k} rows, which is no cell size: k = sum_(i<steps) (2 + i) gives 2, 5, 9, 14, 20, ...")]
    Edges { k: usize },
}

impl SearchConfig {
    /// The configuration a state was made for, read off the reference's module shapes:
    /// layers from the `cells.<i>` prefixes; C_curr of cell i from the output channels of its
    /// `preprocess1` (ReLUConvBN: `cells.<i>.preprocess1.op.1.weight` is [C_curr, C_prev, 1, 1]),
    /// so C = C_curr of cell 0, halved when cell 0 reduces (fewer than 3 layers);
    /// stem_multiplier = rows of `stem.0.weight` / C; multiplier = input features of
    /// `classifier.weight` / C_curr of the last cell (its output concatenates `multiplier`
    /// nodes of C_curr channels); classes from `classifier.weight`; steps from the alpha rows k.
    /// A `stem_multiplier` or `multiplier` given must agree with what the shapes say.
    pub fn from_state_shapes<'a>(
        names_shapes: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        alpha_rows: usize,
        stem_multiplier: Option<usize>,
        multiplier: Option<usize>,
    ) -> Result<SearchConfig, InferError> {
        let shapes: std::collections::HashMap<&str, &[usize]> = names_shapes.into_iter().collect();
        let layers = shapes
            .keys()
            .filter_map(|n| {
                n.strip_prefix("cells.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .ok_or_else(|| InferError::Missing("cells.0.preprocess1.op.1.weight".into()))?;
        let get = |key: String, rank: usize| -> Result<&[usize], InferError> {
            let s = *shapes
                .get(key.as_str())
                .ok_or(InferError::Missing(key.clone()))?;
            if s.len() != rank || s.contains(&0) {
                return Err(InferError::Shape {
                    key,
                    shape: s.to_vec(),
                    reason: format!("expected {rank} non-zero dimensions"),
                });
            }
            Ok(s)
        };
        let c_curr = |i: usize| -> Result<usize, InferError> {
            Ok(get(format!("cells.{i}.preprocess1.op.1.weight"), 4)?[0])
        };
        let stem_rows = get("stem.0.weight".into(), 4)?[0];
        let classifier = get("classifier.weight".into(), 2)?;
        let probe = SearchConfig {
            layers,
            ..SearchConfig::paper()
        };
        let first = c_curr(0)?;
        let c = if probe.is_reduction(0) {
            if first % 2 != 0 {
                return Err(InferError::Shape {
                    key: "cells.0.preprocess1.op.1.weight".into(),
                    shape: vec![first],
                    reason: "cell 0 reduces (fewer than 3 layers), so its C_curr = 2C is even"
                        .into(),
                });
            }
            first / 2
        } else {
            first
        };
        let ratio =
            |num: usize, den: usize, what: &'static str, how: String, given: Option<usize>| {
                if num % den != 0 {
                    return Err(InferError::Shape {
                        key: what.into(),
                        shape: vec![num, den],
                        reason: format!("{how}: {num} is not a multiple of {den}"),
                    });
                }
                let read = num / den;
                match given {
                    Some(g) if g != read => Err(InferError::Given {
                        what,
                        given: g,
                        read,
                        how,
                    }),
                    _ => Ok(read),
                }
            };
        let stem_multiplier = ratio(
            stem_rows,
            c,
            "stem_multiplier",
            format!("'stem.0.weight' has {stem_rows} output channels and C = {c}"),
            stem_multiplier,
        )?;
        let last = c_curr(layers - 1)?;
        let multiplier = ratio(
            classifier[1],
            last,
            "multiplier",
            format!(
                "'classifier.weight' reads {} features and the last cell's C_curr = {last}",
                classifier[1]
            ),
            multiplier,
        )?;
        let steps = (1..64)
            .find(|&s| num_edges(s) == alpha_rows)
            .ok_or(InferError::Edges { k: alpha_rows })?;
        Ok(SearchConfig {
            c,
            layers,
            steps,
            multiplier,
            stem_multiplier,
            num_classes: classifier[0],
            smooth: false,
        })
    }
}
