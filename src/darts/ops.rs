//! The candidate operations of the conv search space and the layers they are made of, with
//! exactly the reference's layer sequences and state_dict names (REFERENCE_NOTES.md sec. 1).
//!
//! Every op is built as primitives into a [`Graph`] by a [`NetBuilder`], which also records
//! the parameter layout and the batch-norm statistics each BN produces.

use super::params::{Kind, Layout};
use crate::graph::{compose, ConvParams, Graph, GraphError, NodeId, PoolParams, UnaryOp};
use std::collections::HashMap;

use crate::graph::Result as R;

/// Where a network's parameters come from.
#[derive(Clone, Debug)]
pub enum ParamSource {
    /// Graph inputs named by their state_dict names (reused if they already exist).
    Inputs,
    /// Given nodes, by name (e.g. the unrolled weights w' = w - xi * grad).
    Nodes(HashMap<String, NodeId>),
}

/// The nodes a training-mode BN produced, for running-statistics updates.
#[derive(Clone, Debug)]
pub struct BnRecord {
    /// Module prefix, e.g. `cells.0._ops.3._ops.1.1` (buffers are `<prefix>.running_mean`, ...).
    pub prefix: String,
    pub mean: NodeId,
    /// Biased batch variance.
    pub var: NodeId,
    /// Values per channel (N*H*W); the unbiased variance is var * m / (m - 1).
    pub count: usize,
}

/// Builds DARTS modules into a graph.
pub struct NetBuilder<'a> {
    pub g: &'a mut Graph,
    pub source: ParamSource,
    /// Receives every parameter and buffer in module order (None: do not record).
    pub layout: Option<&'a mut Layout>,
    pub bn: Vec<BnRecord>,
    /// Smooth variant for convergence tests: softplus for ReLU, average for max pooling.
    pub smooth: bool,
    /// BN with learnable weight and bias (false everywhere in the search cells).
    pub affine: bool,
    /// Training mode: BN normalises with batch statistics (and records them for the running
    /// averages). Evaluation mode: BN normalises with the running statistics, fed as inputs
    /// `<prefix>.running_mean` / `<prefix>.running_var` (from `source`).
    pub train_mode: bool,
}

impl<'a> NetBuilder<'a> {
    /// A builder for the search network (affine-free BN inside cells) in training mode.
    pub fn search(g: &'a mut Graph, source: ParamSource, smooth: bool) -> Self {
        NetBuilder {
            g,
            source,
            layout: None,
            bn: Vec::new(),
            smooth,
            affine: false,
            train_mode: true,
        }
    }

    /// The node of parameter `name` with the given shape.
    pub fn param(&mut self, name: &str, shape: &[usize], kind: Kind) -> R<NodeId> {
        if let Some(l) = self.layout.as_deref_mut() {
            l.push(name, shape, kind);
        }
        self.source_node(name, shape)
    }

    /// The node of a named tensor from `source` (not recorded in the layout).
    pub fn source_node(&mut self, name: &str, shape: &[usize]) -> R<NodeId> {
        match &self.source {
            ParamSource::Inputs => match self.g.input_id(name) {
                Some(id) => Ok(id),
                None => self.g.input(name, shape.to_vec()),
            },
            ParamSource::Nodes(m) => m.get(name).copied().ok_or_else(|| GraphError::Shape {
                op: "parameter".into(),
                label: name.into(),
                shapes: format!("{shape:?}"),
                reason: "no node given for this parameter".into(),
            }),
        }
    }

    /// The head of both CIFAR networks: AdaptiveAvgPool2d(1), flatten, Linear
    /// (`classifier.weight`, `classifier.bias`) to `classes` logits.
    pub fn classifier_head(&mut self, x: NodeId, classes: usize) -> R<NodeId> {
        let d = self.g.shape(x).dims().to_vec();
        let pooled = self.g.reduce_sum(x, &[2, 3])?;
        let pooled = self.g.scale(pooled, 1.0 / (d[2] * d[3]) as f64)?;
        let pooled = self.g.reshape(pooled, [d[0], d[1]])?;
        let w = self.param(
            "classifier.weight",
            &[classes, d[1]],
            Kind::Weight { fan_in: d[1] },
        )?;
        let b = self.param("classifier.bias", &[classes], Kind::Bias { fan_in: d[1] })?;
        compose::linear(self.g, pooled, w, Some(b))
    }

    /// ReLU (softplus in the smooth variant).
    pub fn relu(&mut self, x: NodeId) -> R<NodeId> {
        let op = if self.smooth {
            UnaryOp::Softplus
        } else {
            UnaryOp::Relu
        };
        self.g.unary(op, x)
    }

    /// Conv without bias, weight `<name>` of shape [c_out, c_in/groups, k, k].
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        x: NodeId,
        name: &str,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        groups: usize,
    ) -> R<NodeId> {
        let c_in = self.g.shape(x).dims()[1];
        let shape = [c_out, c_in / groups.max(1), k, k];
        let w = self.param(
            &format!("{name}.weight"),
            &shape,
            Kind::Weight {
                fan_in: shape[1] * k * k,
            },
        )?;
        self.g.scoped(name.to_string(), |g| {
            g.conv2d(x, w, ConvParams::new(stride, pad, dil, groups))
        })
    }

    /// BatchNorm2d in training mode under module prefix `name` (affine per `self.affine`).
    pub fn bn(&mut self, x: NodeId, name: &str) -> R<NodeId> {
        self.bn_with(x, name, self.affine)
    }

    pub fn bn_with(&mut self, x: NodeId, name: &str, affine: bool) -> R<NodeId> {
        let c = self.g.shape(x).dims()[1];
        let (gamma, beta) = if affine {
            (
                Some(self.param(&format!("{name}.weight"), &[c], Kind::BnWeight)?),
                Some(self.param(&format!("{name}.bias"), &[c], Kind::BnBias)?),
            )
        } else {
            (None, None)
        };
        for (suffix, kind, shape) in [
            ("running_mean", Kind::RunningMean, vec![c]),
            ("running_var", Kind::RunningVar, vec![c]),
            ("num_batches_tracked", Kind::NumBatchesTracked, vec![]),
        ] {
            if let Some(l) = self.layout.as_deref_mut() {
                l.push(format!("{name}.{suffix}"), &shape, kind);
            }
        }
        if !self.train_mode {
            let mean = self.source_node(&format!("{name}.running_mean"), &[c])?;
            let var = self.source_node(&format!("{name}.running_var"), &[c])?;
            return self.g.scoped(name.to_string(), |g| {
                compose::batch_norm_eval(g, x, mean, var, gamma, beta, compose::BN_EPS)
            });
        }
        let out = self.g.scoped(name.to_string(), |g| {
            compose::batch_norm_train(g, x, gamma, beta, compose::BN_EPS)
        })?;
        self.bn.push(BnRecord {
            prefix: name.to_string(),
            mean: out.mean,
            var: out.var,
            count: out.count,
        });
        Ok(out.y)
    }

    /// ReLUConvBN: ReLU, conv (`op.1`), BN (`op.2`).
    pub fn relu_conv_bn(
        &mut self,
        x: NodeId,
        name: &str,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> R<NodeId> {
        let h = self.relu(x)?;
        let h = self.conv(h, &format!("{name}.op.1"), c_out, k, stride, pad, 1, 1)?;
        self.bn(h, &format!("{name}.op.2"))
    }

    /// FactorizedReduce: ReLU, then 1x1 stride-2 convs `conv_1` on x and `conv_2` on
    /// x[:, :, 1:, 1:], concatenated on channels, then BN `bn`. H and W must be even.
    pub fn factorized_reduce(&mut self, x: NodeId, name: &str, c_out: usize) -> R<NodeId> {
        let d = self.g.shape(x).dims().to_vec();
        if d[2] % 2 != 0 || d[3] % 2 != 0 || c_out % 2 != 0 {
            return Err(GraphError::Shape {
                op: "FactorizedReduce".into(),
                label: name.into(),
                shapes: format!("{:?}", d),
                reason: format!(
                    "needs even height, width and output channels (got {}x{}, C_out {c_out}): \
                     the two shifted halves would differ in size",
                    d[2], d[3]
                ),
            });
        }
        let h = self.relu(x)?;
        let a = self.conv(h, &format!("{name}.conv_1"), c_out / 2, 1, 2, 0, 1, 1)?;
        let shifted = self.g.slice(h, 2, 1, d[2], 1)?;
        let shifted = self.g.slice(shifted, 3, 1, d[3], 1)?;
        let b = self.conv(shifted, &format!("{name}.conv_2"), c_out / 2, 1, 2, 0, 1, 1)?;
        let cat = self.g.concat(&[a, b], 1)?;
        self.bn(cat, &format!("{name}.bn"))
    }

    /// SepConv: [ReLU, depthwise KxK stride s (`op.1`), 1x1 (`op.2`), BN (`op.3`)], then
    /// [ReLU, depthwise KxK stride 1 (`op.5`), 1x1 (`op.6`), BN (`op.7`)].
    pub fn sep_conv(&mut self, x: NodeId, name: &str, k: usize, stride: usize) -> R<NodeId> {
        let c = self.g.shape(x).dims()[1];
        let pad = k / 2;
        let h = self.relu(x)?;
        let h = self.conv(h, &format!("{name}.op.1"), c, k, stride, pad, 1, c)?;
        let h = self.conv(h, &format!("{name}.op.2"), c, 1, 1, 0, 1, 1)?;
        let h = self.bn(h, &format!("{name}.op.3"))?;
        let h = self.relu(h)?;
        let h = self.conv(h, &format!("{name}.op.5"), c, k, 1, pad, 1, c)?;
        let h = self.conv(h, &format!("{name}.op.6"), c, 1, 1, 0, 1, 1)?;
        self.bn(h, &format!("{name}.op.7"))
    }

    /// DilConv: ReLU, depthwise KxK dilation 2 stride s (`op.1`), 1x1 (`op.2`), BN (`op.3`).
    pub fn dil_conv(&mut self, x: NodeId, name: &str, k: usize, stride: usize) -> R<NodeId> {
        let c = self.g.shape(x).dims()[1];
        let h = self.relu(x)?;
        let h = self.conv(h, &format!("{name}.op.1"), c, k, stride, 2 * (k / 2), 2, c)?;
        let h = self.conv(h, &format!("{name}.op.2"), c, 1, 1, 0, 1, 1)?;
        self.bn(h, &format!("{name}.op.3"))
    }

    /// Candidate operation `prim` (index into PRIMITIVES) on edge module prefix `name`, as in
    /// the search MixedOp (pools followed by an affine-free BN `<name>.1`).
    pub fn candidate(&mut self, prim: usize, x: NodeId, name: &str, stride: usize) -> R<NodeId> {
        let pool = PoolParams::new(3, stride, 1);
        match prim {
            // Zero: x * 0 (x[:, :, ::2, ::2] * 0 at stride 2), so NaN/Inf inputs give NaN.
            0 => {
                let h = if stride == 1 {
                    x
                } else {
                    let d = self.g.shape(x).dims().to_vec();
                    let h = self.g.slice(x, 2, 0, d[2], stride)?;
                    self.g.slice(h, 3, 0, d[3], stride)?
                };
                self.g.scale(h, 0.0)
            }
            1 => {
                let h = if self.smooth {
                    self.g.avg_pool2d(x, pool)?
                } else {
                    self.g.max_pool2d(x, pool)?
                };
                self.bn_with(h, &format!("{name}.1"), false)
            }
            2 => {
                let h = self.g.avg_pool2d(x, pool)?;
                self.bn_with(h, &format!("{name}.1"), false)
            }
            3 => {
                if stride == 1 {
                    Ok(x)
                } else {
                    let c = self.g.shape(x).dims()[1];
                    self.factorized_reduce(x, name, c)
                }
            }
            4 => self.sep_conv(x, name, 3, stride),
            5 => self.sep_conv(x, name, 5, stride),
            6 => self.dil_conv(x, name, 3, stride),
            7 => self.dil_conv(x, name, 5, stride),
            _ => Err(GraphError::Shape {
                op: "candidate".into(),
                label: name.into(),
                shapes: String::new(),
                reason: format!("no candidate operation with index {prim}"),
            }),
        }
    }
}
