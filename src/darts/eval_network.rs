//! The DARTS evaluation network (cnn/model.py `NetworkCIFAR`): a found genotype compiled into
//! stacked cells of fixed operations, trained from scratch. Built as a graph of primitives by a
//! [`NetBuilder`], with the reference's state_dict names, the CIFAR auxiliary head, and drop
//! path fed as graph inputs. Facts matched: EVALUATION_NOTES.md sections 1.1-1.5 and 1.7.
//!
//! Structure (for `layers` cells, reductions at cells `layers/3` and `2*layers/3`):
//! stem = BN(Conv3x3(x; 3 -> 3C)); cell k gets (s0, s1) = (out_{k-2}, out_{k-1}) (both the stem
//! output for k = 0); logits = Linear(mean_{h,w}(out_{layers-1})); the auxiliary head reads the
//! output of cell `2*layers/3` in training mode only.
//!
//! **In-place ReLU quirk** (EVALUATION_NOTES 1.5): the auxiliary head starts with
//! `ReLU(inplace=True)`, which rectifies the cell output tensor that the main path goes on to
//! use. We reproduce it: in training mode with `auxiliary` on, the main path continues after
//! cell `2*layers/3` with relu(cell output) (the very node the auxiliary head pools). Every
//! later consumer starts with a ReLU, so this changes nothing unless `2*layers/3` is the last
//! cell (layers <= 3), where the global pool then sees rectified features, as in the reference.

use super::genotype::{CellGenes, Genotype, KNOWN_OPS};
use super::ops::{BnRecord, NetBuilder, ParamSource};
use super::params::{Kind, Layout};
use crate::darts::names;
use crate::graph::{compose, Graph, GraphError, NodeId, PoolParams, Shape};

use crate::graph::Result as R;

/// Stem output channels are `STEM_MULTIPLIER * C` (fixed in NetworkCIFAR).
pub const STEM_MULTIPLIER: usize = 3;
/// Channels of the auxiliary head's hidden layers (features.2 and features.5).
pub const AUX_HIDDEN: [usize; 2] = [128, 768];
/// The reference's auxiliary loss weight (train.py `--auxiliary_weight`).
pub const AUX_WEIGHT: f64 = 0.4;

/// Shape of an evaluation network (NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalConfig {
    /// Initial channels C (the stem has 3C).
    pub c: usize,
    /// Number of cells.
    pub layers: usize,
    pub num_classes: usize,
    /// Build the auxiliary head (AuxiliaryHeadCIFAR) on the output of cell `2*layers/3`.
    pub auxiliary: bool,
    pub genotype: Genotype,
}

/// A configuration or input size the reference network cannot run, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvalConfigError {
    #[error("layers = 0: the evaluation network needs at least one cell")]
    NoLayers,
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("input size {h}x{w}: both must be at least 1")]
    EmptyInput { h: usize, w: usize },
    #[error("genotype {cell} cell: {reason}")]
    Genes { cell: &'static str, reason: String },
    #[error(
        "genotype {cell} cell, entry {entry}: unknown operation '{op}' (known: {known})",
        known = KNOWN_OPS.join(", ")
    )]
    UnknownOp {
        cell: &'static str,
        entry: usize,
        op: String,
    },
    #[error(
        "{module}: FactorizedReduce needs an even input size, got {h}x{w} \
         (its two stride-2 halves would differ in size)"
    )]
    OddSize { module: String, h: usize, w: usize },
    #[error("cells.{cell}: {reason}")]
    Size { cell: usize, reason: String },
    #[error(
        "auxiliary head on cells.{cell} (2*layers/3): its input is {h}x{w}, but \
         AvgPool2d(5, stride 3) then Conv2x2 must give 1x1 for Linear(768) (input 8x8 to 10x10; \
         32x32 images give 8x8)"
    )]
    AuxSize { cell: usize, h: usize, w: usize },
}

/// Drop path (cnn/utils.py `drop_path`, EVALUATION_NOTES 1.3) as graph inputs: the output x of
/// every op whose module is not Identity becomes x / keep * mask, with the scalar input
/// [`DropPath::KEEP`] and one mask input [N, 1, 1, 1] per op, named by [`DropPath::mask_name`]
/// (the trainer feeds independent Bernoulli(keep) draws). Training mode only; pass it only when
/// drop_prob > 0, as the reference applies nothing otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropPath;

impl DropPath {
    /// Name of the scalar keep-probability input (1 - drop_prob).
    pub const KEEP: &'static str = "drop_path/keep";

    /// Name of the per-sample mask input of op `entry` of cell `cell`.
    pub fn mask_name(cell: usize, entry: usize) -> String {
        format!("drop_path/cells.{cell}._ops.{entry}")
    }
}

/// The nodes of one built evaluation network.
#[derive(Clone, Debug)]
pub struct EvalOut {
    /// Main logits [N, classes].
    pub logits: NodeId,
    /// Auxiliary logits [N, classes]: Some only with `auxiliary` in training mode.
    pub logits_aux: Option<NodeId>,
    /// Mean cross-entropy of the main logits.
    pub loss_main: NodeId,
    /// Mean cross-entropy of the auxiliary logits (when `logits_aux` is Some).
    pub loss_aux: Option<NodeId>,
    /// Training objective: loss_main + aux_weight * loss_aux (loss_main without the head).
    pub loss: NodeId,
    /// Every BN's batch statistics in module order (empty in evaluation mode).
    pub bn: Vec<BnRecord>,
    /// Names of the drop-path mask inputs, [N, 1, 1, 1] each, in module order (empty without
    /// drop path). The keep probability is the scalar input [`DropPath::KEEP`].
    pub drop_masks: Vec<String>,
    /// The output of every cell (for cell `2*layers/3` with the auxiliary head in training mode:
    /// the output before the in-place ReLU).
    pub cell_outputs: Vec<NodeId>,
    /// Every cell's states: [preprocess0, preprocess1, node 0, node 1, ...] (after drop path).
    pub cell_states: Vec<Vec<NodeId>>,
}

/// Trainable parameters as the reference's `count_parameters_in_MB` counts them (times 1e6):
/// the elements of every trainable tensor whose name does not contain "auxiliary". BN buffers
/// are excluded.
pub fn count_parameters(layout: &Layout) -> usize {
    layout
        .weights()
        .filter(|(n, _, _)| !n.contains("auxiliary"))
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum()
}

/// Output extent of the stride-2 ops of a reduction cell (pools k3 p1, sep/dil convs with
/// "same" padding, Zero's `::2` slice): floor((n - 1) / 2) + 1 = ceil(n / 2).
fn half_up(n: usize) -> usize {
    n.div_ceil(2)
}

impl EvalConfig {
    /// The paper's CIFAR-10 evaluation network (A.2.1): C = 36, 20 cells, 10 classes, with the
    /// auxiliary head.
    pub fn paper(genotype: Genotype) -> Self {
        EvalConfig {
            c: 36,
            layers: 20,
            num_classes: 10,
            auxiliary: true,
            genotype,
        }
    }

    pub fn is_reduction(&self, cell: usize) -> bool {
        cell == self.layers / 3 || cell == 2 * self.layers / 3
    }

    /// The cell the auxiliary head reads: 2*layers/3.
    pub fn aux_cell(&self) -> usize {
        2 * self.layers / 3
    }

    fn genes(&self, reduction: bool) -> (&'static str, &CellGenes) {
        if reduction {
            ("reduce", &self.genotype.reduce)
        } else {
            ("normal", &self.genotype.normal)
        }
    }

    /// Reject configurations and image sizes the reference network cannot run, with the
    /// reason: no cells, zero sizes, malformed genotypes (odd entry count, unknown operation,
    /// input index not an earlier state, concat index out of range), odd sizes where a
    /// FactorizedReduce runs (preprocess0 after a reduction, stride-2 skip_connect), states of
    /// different sizes concatenated, and an auxiliary-head input that does not pool to 2x2.
    /// The reference itself allows any layers >= 1 (with layers <= 2 every cell reduces).
    pub fn validate(&self, h: usize, w: usize) -> Result<(), EvalConfigError> {
        self.validate_for(h, w, true)
    }

    /// [`EvalConfig::validate`], with the auxiliary-head size checked only when the head is
    /// evaluated (`head_runs`: training mode), as in the reference.
    pub fn validate_for(&self, h: usize, w: usize, head_runs: bool) -> Result<(), EvalConfigError> {
        if self.layers == 0 {
            return Err(EvalConfigError::NoLayers);
        }
        for (v, name) in [(self.c, "C"), (self.num_classes, "num_classes")] {
            if v == 0 {
                return Err(EvalConfigError::Zero(name));
            }
        }
        if h == 0 || w == 0 {
            return Err(EvalConfigError::EmptyInput { h, w });
        }
        for reduction in [false, true] {
            let (cell, genes) = self.genes(reduction);
            let err = |reason: String| EvalConfigError::Genes { cell, reason };
            if genes.ops.is_empty() || genes.ops.len() % 2 != 0 {
                return Err(err(format!(
                    "needs two (op, input) entries per node, got {}",
                    genes.ops.len()
                )));
            }
            for (entry, (op, j)) in genes.ops.iter().enumerate() {
                if !KNOWN_OPS.contains(&op.as_str()) {
                    return Err(EvalConfigError::UnknownOp {
                        cell,
                        entry,
                        op: op.clone(),
                    });
                }
                let node = entry / 2;
                if *j >= node + 2 {
                    return Err(err(format!(
                        "entry {entry} ('{op}', {j}): input index {j} is not an earlier state \
                         of node {node} (must be < {})",
                        node + 2
                    )));
                }
            }
            let states = 2 + genes.ops.len() / 2;
            if genes.concat.is_empty() {
                return Err(err("empty concat list".into()));
            }
            if let Some(c) = genes.concat.iter().find(|&&c| c >= states) {
                return Err(err(format!(
                    "concat index {c} exceeds the cell's {states} states"
                )));
            }
        }
        // Spatial sizes through the network (the stem keeps h x w).
        let (mut s0, mut s1) = ((h, w), (h, w));
        let mut reduction_prev = false;
        for i in 0..self.layers {
            let reduction = self.is_reduction(i);
            let p0 = if reduction_prev {
                if s0.0 % 2 != 0 || s0.1 % 2 != 0 {
                    return Err(EvalConfigError::OddSize {
                        module: format!("cells.{i}.preprocess0"),
                        h: s0.0,
                        w: s0.1,
                    });
                }
                (s0.0 / 2, s0.1 / 2)
            } else {
                s0
            };
            if p0 != s1 {
                return Err(EvalConfigError::Size {
                    cell: i,
                    reason: format!(
                        "preprocessed inputs differ in size ({}x{} vs {}x{})",
                        p0.0, p0.1, s1.0, s1.1
                    ),
                });
            }
            let (_, genes) = self.genes(reduction);
            let mut states = vec![p0, s1];
            for node in 0..genes.ops.len() / 2 {
                let mut sizes = Vec::new();
                for entry in [2 * node, 2 * node + 1] {
                    let (op, j) = &genes.ops[entry];
                    let x = states[*j];
                    let y = if reduction && *j < 2 {
                        if op == "skip_connect" && (x.0 % 2 != 0 || x.1 % 2 != 0) {
                            return Err(EvalConfigError::OddSize {
                                module: format!("cells.{i}._ops.{entry}"),
                                h: x.0,
                                w: x.1,
                            });
                        }
                        (half_up(x.0), half_up(x.1))
                    } else {
                        x
                    };
                    sizes.push(y);
                }
                if sizes[0] != sizes[1] {
                    return Err(EvalConfigError::Size {
                        cell: i,
                        reason: format!(
                            "node {node} sums inputs of different sizes ({}x{} vs {}x{})",
                            sizes[0].0, sizes[0].1, sizes[1].0, sizes[1].1
                        ),
                    });
                }
                states.push(sizes[0]);
            }
            let out = states[genes.concat[0]];
            if let Some(&c) = genes.concat.iter().find(|&&c| states[c] != out) {
                return Err(EvalConfigError::Size {
                    cell: i,
                    reason: format!(
                        "concat joins states of different sizes (state {} is {}x{}, state {c} \
                         is {}x{})",
                        genes.concat[0], out.0, out.1, states[c].0, states[c].1
                    ),
                });
            }
            if self.auxiliary && head_runs && i == self.aux_cell() {
                let pooled = |n: usize| if n >= 5 { (n - 5) / 3 + 1 } else { 0 };
                if pooled(out.0) != 2 || pooled(out.1) != 2 {
                    return Err(EvalConfigError::AuxSize {
                        cell: i,
                        h: out.0,
                        w: out.1,
                    });
                }
            }
            s0 = s1;
            s1 = out;
            reduction_prev = reduction;
        }
        Ok(())
    }

    /// The state_dict layout (names, shapes, kinds in module order, exactly as PyTorch names
    /// NetworkCIFAR's parameters and buffers): `stem`, `cells`, `auxiliary_head` (when on),
    /// `classifier`. Built on a batch of two 32x32 images (the CIFAR size, which the auxiliary
    /// head needs); shapes do not depend on the image size.
    pub fn layout(&self) -> R<Layout> {
        let mut layout = Layout::default();
        let mut g = Graph::new();
        let x = g.input(names::X, [2, 3, 32, 32])?;
        let t = g.input(names::ONEHOT, [2, self.num_classes])?;
        let mut nb = NetBuilder {
            g: &mut g,
            source: ParamSource::Inputs,
            layout: Some(&mut layout),
            bn: Vec::new(),
            smooth: false,
            affine: true,
            train_mode: true,
        };
        build(&mut nb, self, x, t, None, AUX_WEIGHT)?;
        Ok(layout)
    }
}

/// Operation `op` of the final model (OPS[op](C, stride, affine=True), EVALUATION_NOTES 1.2)
/// under module prefix `name`. Returns the output and whether the module is Identity
/// (stride-1 skip_connect), which drop path leaves alone.
fn final_op(
    nb: &mut NetBuilder,
    op: &str,
    x: NodeId,
    name: &str,
    stride: usize,
) -> R<(NodeId, bool)> {
    let pool = PoolParams::new(3, stride, 1);
    let y = match op {
        "none" => nb.candidate(0, x, name, stride)?,
        // Bare pools: no BN after them in the final model.
        "max_pool_3x3" => {
            if nb.smooth {
                nb.g.avg_pool2d(x, pool)?
            } else {
                nb.g.max_pool2d(x, pool)?
            }
        }
        "avg_pool_3x3" => nb.g.avg_pool2d(x, pool)?,
        "skip_connect" if stride == 1 => return Ok((x, true)),
        "skip_connect" => {
            let c = nb.g.shape(x).dims()[1];
            nb.factorized_reduce(x, name, c)?
        }
        "sep_conv_3x3" => nb.sep_conv(x, name, 3, stride)?,
        "sep_conv_5x5" => nb.sep_conv(x, name, 5, stride)?,
        "sep_conv_7x7" => nb.sep_conv(x, name, 7, stride)?,
        "dil_conv_3x3" => nb.dil_conv(x, name, 3, stride)?,
        "dil_conv_5x5" => nb.dil_conv(x, name, 5, stride)?,
        other => {
            return Err(GraphError::Shape {
                op: "genotype operation".into(),
                label: name.into(),
                shapes: format!("{:?}", nb.g.shape(x).dims()),
                reason: format!(
                    "unknown operation '{other}' (known: {})",
                    KNOWN_OPS.join(", ")
                ),
            })
        }
    };
    Ok((y, false))
}

/// The node of input `name` with `shape`, reusing it if the graph already has it.
fn input_or_existing(g: &mut Graph, name: &str, shape: Shape) -> R<NodeId> {
    match g.input_id(name) {
        Some(id) => Ok(id),
        None => g.input(name, shape),
    }
}

/// Per-cell construction context.
struct CellSpec<'c> {
    idx: usize,
    genes: &'c CellGenes,
    /// C_curr: channels of every state inside the cell.
    c: usize,
    reduction: bool,
    reduction_prev: bool,
}

/// One compiled cell (EVALUATION_NOTES 1.1): states = [pre0(s0), pre1(s1)]; node i =
/// op_{2i}(states[j_{2i}]) + op_{2i+1}(states[j_{2i+1}]) (each drop-pathed unless Identity);
/// output = concat of states[c] for c in concat. Returns (output, states).
fn cell(
    nb: &mut NetBuilder,
    spec: &CellSpec,
    s0: NodeId,
    s1: NodeId,
    drop: Option<(NodeId, usize)>,
    drop_masks: &mut Vec<String>,
) -> R<(NodeId, Vec<NodeId>)> {
    let name = format!("cells.{}", spec.idx);
    let p0 = if spec.reduction_prev {
        nb.factorized_reduce(s0, &format!("{name}.preprocess0"), spec.c)?
    } else {
        nb.relu_conv_bn(s0, &format!("{name}.preprocess0"), spec.c, 1, 1, 0)?
    };
    let p1 = nb.relu_conv_bn(s1, &format!("{name}.preprocess1"), spec.c, 1, 1, 0)?;
    let mut states = vec![p0, p1];
    for node in 0..spec.genes.ops.len() / 2 {
        let mut h = [p0; 2];
        for (slot, entry) in [2 * node, 2 * node + 1].into_iter().enumerate() {
            let (op, j) = &spec.genes.ops[entry];
            let x = *states.get(*j).ok_or_else(|| GraphError::Shape {
                op: "genotype".into(),
                label: format!("{name}._ops.{entry}"),
                shapes: String::new(),
                reason: format!("input index {j} is not an earlier state of node {node}"),
            })?;
            let stride = if spec.reduction && *j < 2 { 2 } else { 1 };
            let op_name = format!("{name}._ops.{entry}");
            let (mut y, identity) = final_op(nb, op, x, &op_name, stride)?;
            if let (Some((keep, n)), false) = (drop, identity) {
                // drop_path: x.div_(keep_prob); x.mul_(mask), mask ~ Bernoulli(keep) [N,1,1,1].
                let mask_name = DropPath::mask_name(spec.idx, entry);
                let mask = input_or_existing(nb.g, &mask_name, Shape::from(vec![n, 1, 1, 1]))?;
                y = nb.g.div(y, keep)?;
                y = nb.g.mul(y, mask)?;
                drop_masks.push(mask_name);
            }
            h[slot] = y;
        }
        states.push(nb.g.add2(h[0], h[1])?);
    }
    let parts: Vec<NodeId> = spec
        .genes
        .concat
        .iter()
        .map(|&c| {
            states.get(c).copied().ok_or_else(|| GraphError::Shape {
                op: "genotype".into(),
                label: name.clone(),
                shapes: String::new(),
                reason: format!(
                    "concat index {c} exceeds the cell's {} states",
                    states.len()
                ),
            })
        })
        .collect::<R<_>>()?;
    let out = nb.g.concat(&parts, 1)?;
    Ok((out, states))
}

/// Record the auxiliary head's parameters and buffers in the layout without building it
/// (evaluation mode: the head is not evaluated, but its tensors are in the state_dict).
fn declare_aux_layout(layout: &mut Layout, c_aux: usize, classes: usize) {
    let [h1, h2] = AUX_HIDDEN;
    let bn = |layout: &mut Layout, prefix: &str, c: usize| {
        layout.push(format!("{prefix}.weight"), &[c], Kind::BnWeight);
        layout.push(format!("{prefix}.bias"), &[c], Kind::BnBias);
        layout.push(format!("{prefix}.running_mean"), &[c], Kind::RunningMean);
        layout.push(format!("{prefix}.running_var"), &[c], Kind::RunningVar);
        layout.push(
            format!("{prefix}.num_batches_tracked"),
            &[],
            Kind::NumBatchesTracked,
        );
    };
    layout.push(
        "auxiliary_head.features.2.weight",
        &[h1, c_aux, 1, 1],
        Kind::Weight { fan_in: c_aux },
    );
    bn(layout, "auxiliary_head.features.3", h1);
    layout.push(
        "auxiliary_head.features.5.weight",
        &[h2, h1, 2, 2],
        Kind::Weight { fan_in: h1 * 4 },
    );
    bn(layout, "auxiliary_head.features.6", h2);
    layout.push(
        "auxiliary_head.classifier.weight",
        &[classes, h2],
        Kind::Weight { fan_in: h2 },
    );
    layout.push(
        "auxiliary_head.classifier.bias",
        &[classes],
        Kind::Bias { fan_in: h2 },
    );
}

/// AuxiliaryHeadCIFAR (EVALUATION_NOTES 1.5) on `r` = relu(cell output) (features.0, the
/// in-place ReLU, is applied by the caller so the main path shares it): AvgPool2d(5, 3)
/// [8x8 -> 2x2] (features.1), Conv1x1 -> 128 (features.2), BN (features.3), ReLU, Conv2x2 ->
/// 768 (features.5), BN (features.6), ReLU, flatten, Linear(768, classes) (classifier).
fn aux_head(nb: &mut NetBuilder, r: NodeId, classes: usize) -> R<NodeId> {
    let [h1, h2] = AUX_HIDDEN;
    let p = nb.g.scoped("auxiliary_head.features.1", |g| {
        g.avg_pool2d(r, PoolParams::new(5, 3, 0))
    })?;
    let h = nb.conv(p, "auxiliary_head.features.2", h1, 1, 1, 0, 1, 1)?;
    let h = nb.bn(h, "auxiliary_head.features.3")?;
    let h = nb.relu(h)?;
    let h = nb.conv(h, "auxiliary_head.features.5", h2, 2, 1, 0, 1, 1)?;
    let h = nb.bn(h, "auxiliary_head.features.6")?;
    let h = nb.relu(h)?;
    let d = nb.g.shape(h).dims().to_vec();
    if d[2] != 1 || d[3] != 1 {
        return Err(GraphError::Shape {
            op: "AuxiliaryHeadCIFAR".into(),
            label: "auxiliary_head.classifier".into(),
            shapes: format!("{d:?}"),
            reason: "features must end at 1x1 (the head assumes an 8x8 input)".into(),
        });
    }
    let h = nb.g.reshape(h, [d[0], d[1]])?;
    let w = nb.param(
        "auxiliary_head.classifier.weight",
        &[classes, h2],
        Kind::Weight { fan_in: h2 },
    )?;
    let b = nb.param(
        "auxiliary_head.classifier.bias",
        &[classes],
        Kind::Bias { fan_in: h2 },
    )?;
    compose::linear(nb.g, h, w, Some(b))
}

/// Build NetworkCIFAR on images `x` [N, 3, H, W] with one-hot targets `onehot` [N, classes];
/// parameters (and, in evaluation mode, BN running statistics) come from `nb.source`. Every BN
/// is affine whatever `nb.affine` says. With `drop` (training mode only) each non-Identity op
/// output is drop-pathed through graph inputs (see [`DropPath`]). In training mode with
/// `cfg.auxiliary`, loss = CE(logits) + aux_weight * CE(logits_aux) (the reference's 0.4 is
/// [`AUX_WEIGHT`]); otherwise loss = CE(logits). The configuration is validated first
/// ([`EvalConfig::validate`]), its error reported as a shape error naming the network.
pub fn build(
    nb: &mut NetBuilder,
    cfg: &EvalConfig,
    x: NodeId,
    onehot: NodeId,
    drop: Option<DropPath>,
    aux_weight: f64,
) -> R<EvalOut> {
    let xd = nb.g.shape(x).dims().to_vec();
    let config_err = |reason: String| GraphError::Shape {
        op: "NetworkCIFAR".into(),
        label: String::new(),
        shapes: format!("x {xd:?}"),
        reason,
    };
    if xd.len() != 4 || xd[1] != 3 {
        return Err(config_err("images must be [N, 3, H, W]".into()));
    }
    let td = nb.g.shape(onehot).dims().to_vec();
    if td != [xd[0], cfg.num_classes] {
        return Err(config_err(format!(
            "targets have shape {td:?}, expected [{}, {}]",
            xd[0], cfg.num_classes
        )));
    }
    cfg.validate_for(xd[2], xd[3], nb.train_mode)
        .map_err(|e| config_err(e.to_string()))?;
    if drop.is_some() && !nb.train_mode {
        return Err(config_err(
            "drop path applies in training mode only (the reference skips it in eval mode)".into(),
        ));
    }
    let affine = nb.affine;
    nb.affine = true;
    let out = build_inner(nb, cfg, x, onehot, drop, aux_weight);
    nb.affine = affine;
    out
}

fn build_inner(
    nb: &mut NetBuilder,
    cfg: &EvalConfig,
    x: NodeId,
    onehot: NodeId,
    drop: Option<DropPath>,
    aux_weight: f64,
) -> R<EvalOut> {
    let bn_start = nb.bn.len();
    let n = nb.g.shape(x).dims()[0];
    let drop = match drop {
        Some(DropPath) => Some((input_or_existing(nb.g, DropPath::KEEP, Shape::scalar())?, n)),
        None => None,
    };
    let c_stem = STEM_MULTIPLIER * cfg.c;
    let stem = nb.conv(x, "stem.0", c_stem, 3, 1, 1, 1, 1)?;
    let stem = nb.bn(stem, "stem.1")?;
    let (mut s0, mut s1) = (stem, stem);
    let mut c_curr = cfg.c;
    let mut reduction_prev = false;
    let mut drop_masks = Vec::new();
    let mut cell_outputs = Vec::new();
    let mut cell_states = Vec::new();
    let mut aux_input: Option<(NodeId, usize)> = None;
    let mut c_aux = None;
    for i in 0..cfg.layers {
        let reduction = cfg.is_reduction(i);
        if reduction {
            c_curr *= 2;
        }
        let (_, genes) = cfg.genes(reduction);
        let spec = CellSpec {
            idx: i,
            genes,
            c: c_curr,
            reduction,
            reduction_prev,
        };
        let (out, states) = cell(nb, &spec, s0, s1, drop, &mut drop_masks)?;
        cell_outputs.push(out);
        cell_states.push(states);
        let mut next = out;
        if cfg.auxiliary && i == cfg.aux_cell() {
            let c_out = nb.g.shape(out).dims()[1];
            c_aux = Some(c_out);
            if nb.train_mode {
                // ReLU(inplace=True) of the head: the main path continues with the rectified
                // tensor (see the module documentation).
                nb.g.push_scope("auxiliary_head.features.0");
                let r = nb.relu(out);
                nb.g.pop_scope();
                let r = r?;
                aux_input = Some((r, c_out));
                next = r;
            }
        }
        s0 = s1;
        s1 = next;
        reduction_prev = reduction;
    }
    // The auxiliary head's modules come after `cells` in NetworkCIFAR's module order.
    let logits_aux = match (aux_input, c_aux) {
        (Some((r, _)), _) => Some(aux_head(nb, r, cfg.num_classes)?),
        (None, Some(c)) => {
            if let Some(l) = nb.layout.as_deref_mut() {
                declare_aux_layout(l, c, cfg.num_classes);
            }
            None
        }
        (None, None) => None,
    };
    // AdaptiveAvgPool2d(1), flatten, Linear.
    let logits = nb.classifier_head(s1, cfg.num_classes)?;
    let loss_main = compose::cross_entropy_mean(nb.g, logits, onehot)?;
    let (loss, loss_aux) = match logits_aux {
        Some(la) => {
            let ce = compose::cross_entropy_mean(nb.g, la, onehot)?;
            let weighted = nb.g.scale(ce, aux_weight)?;
            (nb.g.add2(loss_main, weighted)?, Some(ce))
        }
        None => (loss_main, None),
    };
    Ok(EvalOut {
        logits,
        logits_aux,
        loss_main,
        loss_aux,
        loss,
        bn: nb.bn[bn_start..].to_vec(),
        drop_masks,
        cell_outputs,
        cell_states,
    })
}
