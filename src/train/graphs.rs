//! The graphs of evaluation training: the training step (train-mode forward, loss with the
//! auxiliary term, gradients of every parameter, then clipping, SGD and the BN running
//! statistics: [`TrainStepGraph`]) and the evaluation-mode forward ([`EvalGraph`]).

use crate::autodiff;
use crate::darts::eval_network::{self, DropPath, EvalConfig};
use crate::darts::names;
use crate::darts::ops::{BnRecord, NetBuilder, ParamSource};
use crate::graph::{Graph, GraphError, NodeId};
use crate::step::optim::{clip_and_sgd, running_stats, SgdHyper};

/// The train-mode graph for one batch size: loss, main logits, the gradient of every
/// parameter, the BN statistics and the drop-path mask inputs.
pub struct TrainGraph {
    pub graph: Graph,
    pub loss: NodeId,
    pub logits: NodeId,
    pub grads: Vec<NodeId>,
    pub bn: Vec<BnRecord>,
    pub drop_masks: Vec<String>,
}

/// The evaluation-mode graph for one batch size.
pub struct EvalGraph {
    pub graph: Graph,
    pub loss: NodeId,
    pub logits: NodeId,
}

/// The batch inputs of `n` images: images and one-hot labels.
fn batch_inputs(g: &mut Graph, cfg: &EvalConfig, n: usize) -> Result<(NodeId, NodeId), GraphError> {
    Ok((
        g.input(names::X, [n, 3, 32, 32])?,
        g.input(names::ONEHOT, [n, cfg.num_classes])?,
    ))
}

/// A builder of the evaluation network (affine BN, parameters as graph inputs), in train or
/// evaluation mode.
fn evaluation_builder(g: &mut Graph, train_mode: bool) -> NetBuilder<'_> {
    NetBuilder {
        g,
        source: ParamSource::Inputs,
        layout: None,
        bn: Vec::new(),
        smooth: false,
        affine: true,
        train_mode,
    }
}

pub fn build_train_graph(
    cfg: &EvalConfig,
    weights: &[String],
    n: usize,
    drop_path: bool,
    aux_weight: f64,
) -> Result<TrainGraph, GraphError> {
    let mut g = Graph::new();
    let (x, t) = batch_inputs(&mut g, cfg, n)?;
    let mut nb = evaluation_builder(&mut g, true);
    let out = eval_network::build(
        &mut nb,
        cfg,
        x,
        t,
        drop_path.then_some(DropPath),
        aux_weight,
    )?;
    let w = weights
        .iter()
        .map(|name| {
            g.input_id(name).ok_or_else(|| GraphError::Shape {
                op: "NetworkCIFAR".into(),
                label: name.clone(),
                shapes: String::new(),
                reason: "parameter of the layout is not an input of the training graph".into(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let grads = autodiff::grad(&mut g, out.loss, &w)?;
    Ok(TrainGraph {
        graph: g,
        loss: out.loss,
        logits: out.logits,
        grads,
        bn: out.bn,
        drop_masks: out.drop_masks,
    })
}

pub fn build_eval_graph(cfg: &EvalConfig, n: usize) -> Result<EvalGraph, GraphError> {
    let mut g = Graph::new();
    let (x, t) = batch_inputs(&mut g, cfg, n)?;
    let mut nb = evaluation_builder(&mut g, false);
    let out = eval_network::build(&mut nb, cfg, x, t, None, 0.0)?;
    Ok(EvalGraph {
        graph: g,
        loss: out.loss_main,
        logits: out.logits,
    })
}

/// The train graph plus gradient clipping, SGD and the BN running statistics
/// ([`clip_and_sgd`], [`running_stats`]): one whole training step. Feeds: the batch
/// ([`names::X`], [`names::ONEHOT`]), [`names::LR`] and the drop-path inputs; everything else
/// is the executor's variables.
pub struct TrainStepGraph {
    pub train: TrainGraph,
    pub grad_norm: NodeId,
    pub assign: Vec<(NodeId, String)>,
}

impl TrainStepGraph {
    /// The step for batches of `n` images; `names` are the parameters (layout order) and
    /// their shapes.
    pub fn build(
        cfg: &EvalConfig,
        params: &[(String, Vec<usize>)],
        n: usize,
        (drop_path, aux_weight): (bool, f64),
        h: &SgdHyper,
    ) -> Result<TrainStepGraph, GraphError> {
        let weights: Vec<String> = params.iter().map(|(k, _)| k.clone()).collect();
        let mut train = build_train_graph(cfg, &weights, n, drop_path, aux_weight)?;
        let g = &mut train.graph;
        let lr = g.input(names::LR, crate::graph::Shape::scalar())?;
        let mut w = Vec::with_capacity(params.len());
        let mut buf = Vec::with_capacity(params.len());
        for (k, shape) in params {
            w.push(g.input_id(k).ok_or_else(|| GraphError::Shape {
                op: "training step".into(),
                label: k.clone(),
                shapes: format!("{shape:?}"),
                reason: "parameter is not an input of the training graph".into(),
            })?);
            buf.push(g.input(names::sgd_buf(k), shape.clone())?);
        }
        let grads = train.grads.clone();
        let (grad_norm, mut assign) = clip_and_sgd(g, params, (&w, Some(&buf)), &grads, lr, h)?;
        assign.extend(running_stats(g, std::slice::from_ref(&train.bn))?);
        Ok(TrainStepGraph {
            train,
            grad_norm,
            assign,
        })
    }
}
