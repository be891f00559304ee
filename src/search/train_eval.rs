//! Training a genotype's evaluation network from scratch on CIFAR-10, as the reference's
//! cnn/train.py does (EVALUATION_NOTES.md section 2; the network is section 1).
//!
//! Per epoch e = 0, 1, ..., E - 1:
//! * lr_e = eta_min + (lr_0 - eta_min) (1 + cos(pi (e + 1) / E)) / 2 with eta_min = 0
//!   (CosineAnnealingLR(T_max = E) stepped at the start of every epoch, in the closed form of
//!   the PyTorch of the reference's era), so lr is exactly 0 in the last epoch: [`lr_at`];
//! * drop_path_prob_e = p e / E (0 in the first epoch): [`drop_path_prob_at`];
//! * one pass over the shuffled train set with the train transform (RandomCrop(32, 4), flip,
//!   Cutout when on); per step: train-mode forward, loss = CE(logits) + w_aux CE(logits_aux)
//!   when `auxiliary`, gradients of every parameter (the auxiliary head's included), clipping
//!   to total norm `grad_clip`, then SGD with momentum and coupled weight decay on every
//!   parameter (BN affine parameters and biases included). Every BN's running statistics absorb
//!   the batch statistics of every train-mode forward (PyTorch momentum 0.1, unbiased variance);
//! * test loss and accuracy on the test split in evaluation mode (running BN statistics, no
//!   drop path, no auxiliary head), in order, batch `batch_size`.
//!
//! Drop path (EVALUATION_NOTES 1.3): one Bernoulli(1 - p_e) decision per sample, per
//! non-Identity op, per forward, fed as graph inputs; the op output becomes x / keep * mask.
//! In the first epoch p_e = 0 and the reference applies nothing; we feed keep = 1 and masks of
//! ones, for which x / 1 * 1 = x exactly, and draw no random numbers.
//!
//! Reported per epoch (what train.py logs): train loss (the training objective, auxiliary term
//! included) and train accuracy (main logits only), both exact per-sample means over the epoch;
//! test loss (CE of the main logits) and test accuracy; lr and drop_path_prob; seconds. The
//! reported result is the test accuracy of the final epoch (no early stopping).
//!
//! Master weights, BN buffers and SGD momentum buffers are held in f64; the graph runs in the
//! chosen dtype (f32 as the reference, or f64).

use super::step_graph::{clip_and_sgd, running_stats};
use super::StepMode;
use crate::autodiff;
use crate::darts::eval_network::{self, count_parameters, DropPath, EvalConfig, EvalConfigError};
use crate::darts::genotype::Genotype;
use crate::darts::init::init_state;
use crate::darts::ops::{BnRecord, NetBuilder, ParamSource};
use crate::darts::params::{write_npz, Kind, Layout, StateError};
use crate::data::{
    embedded_subset, make_batch, read_cifar_dir, Augment, Batch, DataError, EpochSampler, Images,
    CIFAR10_CLASSES,
};
use crate::exec::cpu::CpuExecutor;
use crate::exec::{Backend, ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, GraphError, NodeId};
use crate::search::optim::{clip_grad_norm, update_running_stats, Sgd};
use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use super::run::{DataSource, Dtype};

/// Every flag of cnn/train.py that shapes training, with the reference's defaults
/// ([`TrainOptions::reference`]), plus the dtype, the data source and optional limits on the
/// number of images used (the first n of each split, for small runs).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    pub batch_size: usize,
    /// Initial learning rate lr_0 of the cosine schedule (annealed to 0).
    pub learning_rate: f64,
    pub momentum: f64,
    /// Coupled L2 weight decay lambda (added to the gradient after clipping).
    pub weight_decay: f64,
    pub epochs: usize,
    /// C: the stem has 3C channels.
    pub init_channels: usize,
    /// Number of cells.
    pub layers: usize,
    /// Train with the auxiliary head on cell 2*layers/3.
    pub auxiliary: bool,
    pub auxiliary_weight: f64,
    /// Cutout on the training images.
    pub cutout: bool,
    pub cutout_length: usize,
    /// Final drop-path probability p (ramped linearly from 0).
    pub drop_path_prob: f64,
    /// Maximum total L2 norm of the gradients.
    pub grad_clip: f64,
    pub seed: u64,
    pub dtype: Dtype,
    /// Executor: the CPU reference, or the wgpu GPU path (f32 only).
    pub backend: Backend,
    /// Host or resident steps (None: resident on the GPU, host on the CPU).
    #[serde(default)]
    pub step: Option<StepMode>,
    pub data: DataSource,
    /// Use only the first n training images (None: all).
    pub train_limit: Option<usize>,
    /// Use only the first n test images (None: all).
    pub test_limit: Option<usize>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions::reference()
    }
}

impl TrainOptions {
    /// cnn/train.py's defaults (EVALUATION_NOTES 2): batch 96, lr 0.025, momentum 0.9, weight
    /// decay 3e-4, 600 epochs, C = 36, 20 cells, auxiliary off (weight 0.4), cutout off (length
    /// 16), drop path 0.2, grad clip 5, seed 0; f32 as the reference runs; the embedded data.
    pub fn reference() -> Self {
        TrainOptions {
            batch_size: 96,
            learning_rate: 0.025,
            momentum: 0.9,
            weight_decay: 3e-4,
            epochs: 600,
            init_channels: 36,
            layers: 20,
            auxiliary: false,
            auxiliary_weight: eval_network::AUX_WEIGHT,
            cutout: false,
            cutout_length: 16,
            drop_path_prob: 0.2,
            grad_clip: 5.0,
            seed: 0,
            dtype: Dtype::F32,
            backend: Backend::Cpu,
            step: None,
            data: DataSource::Embedded,
            train_limit: None,
            test_limit: None,
        }
    }

    /// The paper's evaluation recipe (A.2.1): train.py with `--auxiliary --cutout`, 600 epochs
    /// (meant for the full data set: pair it with [`DataSource::Dir`]).
    pub fn paper() -> Self {
        TrainOptions {
            auxiliary: true,
            cutout: true,
            ..TrainOptions::reference()
        }
    }

    /// A run sized for a 2-core CPU in a few minutes that still learns: C = 8, 5 cells
    /// (reductions at cells 1 and 3), 6 epochs over the embedded 4,000 training images with
    /// batch 64, tested on the embedded 1,000 test images; everything else as train.py.
    pub fn quick() -> Self {
        TrainOptions {
            batch_size: 64,
            epochs: 6,
            init_channels: 8,
            layers: 5,
            ..TrainOptions::reference()
        }
    }

    /// The evaluation network these options build.
    pub fn eval_config(&self, genotype: &Genotype) -> EvalConfig {
        EvalConfig {
            c: self.init_channels,
            layers: self.layers,
            num_classes: CIFAR10_CLASSES,
            auxiliary: self.auxiliary,
            genotype: genotype.clone(),
        }
    }

    /// The training augmentation: RandomCrop(32, 4), flip, and Cutout(cutout_length) when on.
    pub fn augment(&self) -> Augment {
        Augment {
            cutout: self.cutout.then_some(self.cutout_length),
            ..Augment::reference_train()
        }
    }

    /// Reject values train.py could not run (or that make no sense), naming the option.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |option: &'static str, reason: String| Err(TrainError::Option { option, reason });
        for (v, name) in [
            (self.batch_size, "batch_size"),
            (self.epochs, "epochs"),
            (self.init_channels, "init_channels"),
            (self.layers, "layers"),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1".into());
            }
        }
        if self.cutout && self.cutout_length == 0 {
            return bad("cutout_length", "must be at least 1 with cutout on".into());
        }
        for (v, name) in [
            (self.learning_rate, "learning_rate"),
            (self.weight_decay, "weight_decay"),
            (self.auxiliary_weight, "auxiliary_weight"),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(name, format!("{v}: must be finite and >= 0"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", format!("{}: must lie in [0, 1)", self.momentum));
        }
        if !(0.0..1.0).contains(&self.drop_path_prob) {
            return bad(
                "drop_path_prob",
                format!("{}: must lie in [0, 1)", self.drop_path_prob),
            );
        }
        if !(self.grad_clip.is_finite() && self.grad_clip > 0.0) {
            return bad(
                "grad_clip",
                format!("{}: must be finite and > 0", self.grad_clip),
            );
        }
        for (v, name) in [
            (self.train_limit, "train_limit"),
            (self.test_limit, "test_limit"),
        ] {
            if v == Some(0) {
                return bad(name, "must be at least 1 image".into());
            }
        }
        Ok(())
    }
}

/// Learning rate of epoch `epoch` (0-based) of `epochs`: CosineAnnealingLR(T_max = epochs,
/// eta_min = 0) stepped before the epoch, closed form
/// lr_e = eta_min + (lr_0 - eta_min) (1 + cos(pi (e + 1) / E)) / 2. For e = E - 1 the cosine is
/// cos(pi) = -1 and lr is exactly 0.
pub fn lr_at(lr0: f64, epoch: usize, epochs: usize) -> f64 {
    let eta_min = 0.0;
    // pi * last_epoch / T_max, in PyTorch's order of operations.
    let t = std::f64::consts::PI * (epoch + 1) as f64 / epochs as f64;
    eta_min + (lr0 - eta_min) * (1.0 + t.cos()) / 2.0
}

/// Drop-path probability of epoch `epoch`: p e / E (train.py sets it before training the epoch).
pub fn drop_path_prob_at(p: f64, epoch: usize, epochs: usize) -> f64 {
    p * epoch as f64 / epochs as f64
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("option {option}: {reason}")]
    Option {
        option: &'static str,
        reason: String,
    },
    #[error("evaluation network: {0}")]
    Config(#[from] EvalConfigError),
    #[error("building the training graphs: {0}")]
    Graph(#[from] GraphError),
    #[error("data: {0}")]
    Data(#[from] DataError),
    #[error("epoch {epoch}, {what}: {source}")]
    Exec {
        epoch: usize,
        what: String,
        #[source]
        source: ExecError,
    },
    #[error(
        "epoch {epoch}, step {step}: tensor '{tensor}' holds {value} at flat index {index} \
         (training stopped)"
    )]
    NonFinite {
        epoch: usize,
        step: usize,
        tensor: String,
        index: usize,
        value: f64,
    },
    #[error("run folder {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },
    #[error("writing weights: {0}")]
    Weights(#[from] StateError),
}

/// One epoch's figures, as train.py logs them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// 0-based.
    pub epoch: usize,
    pub lr: f64,
    pub drop_path_prob: f64,
    /// Mean training objective per sample (auxiliary term included when on).
    pub train_loss: f64,
    /// Top-1 accuracy of the main logits on the (augmented) training images, percent.
    pub train_acc: f64,
    /// Mean cross-entropy of the main logits on the test split (evaluation mode).
    pub test_loss: f64,
    /// Top-1 accuracy on the test split, percent.
    pub test_acc: f64,
    /// Total gradient norm before clipping, averaged over the epoch's steps.
    pub mean_grad_norm: f64,
    pub steps: usize,
    pub seconds: f64,
}

/// The outcome of a training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochRecord>,
    /// Test accuracy of the final epoch, percent (what the reference reports).
    pub final_test_acc: f64,
    /// Trainable parameters as count_parameters_in_MB counts them (auxiliary head excluded),
    /// times 1e6.
    pub parameters: usize,
    /// All trainable parameters, auxiliary head included.
    pub parameters_with_aux: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub seconds: f64,
}

/// Where a run reports besides its return value.
#[derive(Default)]
pub struct Reporting<'a> {
    /// Folder for `options.json`, `log.jsonl` (one [`EpochRecord`] per line), `weights.npz`
    /// (state_dict names, overwritten every epoch as train.py does) and `summary.json`.
    pub run_dir: Option<PathBuf>,
    /// Show a progress bar (stderr; indicatif hides it when stderr is not a terminal).
    pub progress: bool,
    /// Called after every epoch.
    pub on_epoch: Option<&'a mut dyn FnMut(&EpochRecord)>,
}

/// Load the data named by `opts.data`, apply the limits, and train.
pub fn train(
    opts: &TrainOptions,
    genotype: &Genotype,
    reporting: Reporting,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    let (train_set, test_set) = match &opts.data {
        DataSource::Embedded => embedded_subset(),
        DataSource::Dir(d) => read_cifar_dir(d)?,
    };
    train_on(opts, genotype, &train_set, &test_set, reporting)
}

/// Train on given image sets (the limits of `opts` still apply).
pub fn train_on(
    opts: &TrainOptions,
    genotype: &Genotype,
    train_set: &Images,
    test_set: &Images,
    reporting: Reporting,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    match (opts.backend, opts.dtype) {
        (Backend::Cpu, Dtype::F32) => run::<f32>(
            opts,
            genotype,
            train_set,
            test_set,
            reporting,
            Box::new(CpuExecutor::new()),
        ),
        (Backend::Cpu, Dtype::F64) => run::<f64>(
            opts,
            genotype,
            train_set,
            test_set,
            reporting,
            Box::new(CpuExecutor::new()),
        ),
        (Backend::Gpu, Dtype::F32) => {
            let gpu = crate::exec::gpu::GpuExecutor::new().map_err(|source| TrainError::Exec {
                epoch: 0,
                what: "starting the GPU executor".into(),
                source,
            })?;
            run::<f32>(
                opts,
                genotype,
                train_set,
                test_set,
                reporting,
                Box::new(gpu),
            )
        }
        (Backend::Gpu, Dtype::F64) => Err(TrainError::Option {
            option: "backend",
            reason: "the GPU path runs in f32: use dtype f32".into(),
        }),
    }
}

/// The train-mode graph for one batch size: loss, main logits, the gradient of every
/// parameter, the BN statistics and the drop-path mask inputs.
struct TrainGraph {
    graph: Graph,
    loss: NodeId,
    logits: NodeId,
    grads: Vec<NodeId>,
    bn: Vec<BnRecord>,
    drop_masks: Vec<String>,
}

/// The evaluation-mode graph for one batch size.
struct EvalGraph {
    graph: Graph,
    loss: NodeId,
    logits: NodeId,
}

fn build_train_graph(
    cfg: &EvalConfig,
    weights: &[String],
    n: usize,
    drop_path: bool,
    aux_weight: f64,
) -> Result<TrainGraph, GraphError> {
    let mut g = Graph::new();
    let x = g.input("x", [n, 3, 32, 32])?;
    let t = g.input("onehot", [n, cfg.num_classes])?;
    let mut nb = NetBuilder {
        g: &mut g,
        source: ParamSource::Inputs,
        layout: None,
        bn: Vec::new(),
        smooth: false,
        affine: true,
        train_mode: true,
    };
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

fn build_eval_graph(cfg: &EvalConfig, n: usize) -> Result<EvalGraph, GraphError> {
    let mut g = Graph::new();
    let x = g.input("x", [n, 3, 32, 32])?;
    let t = g.input("onehot", [n, cfg.num_classes])?;
    let mut nb = NetBuilder {
        g: &mut g,
        source: ParamSource::Inputs,
        layout: None,
        bn: Vec::new(),
        smooth: false,
        affine: true,
        train_mode: false,
    };
    let out = eval_network::build(&mut nb, cfg, x, t, None, 0.0)?;
    Ok(EvalGraph {
        graph: g,
        loss: out.loss_main,
        logits: out.logits,
    })
}

/// Number of rows whose largest logit is at the one-hot class (ties: the first maximum).
fn correct(logits: &ArrayD<f64>, onehot: &ArrayD<f64>) -> usize {
    logits
        .axis_iter(Axis(0))
        .zip(onehot.axis_iter(Axis(0)))
        .filter(|(l, t)| {
            let pred = l
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0;
            t.iter().position(|&v| v == 1.0) == Some(pred)
        })
        .count()
}

fn first_non_finite(a: &ArrayD<f64>) -> Option<(usize, f64)> {
    a.iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
        .map(|(i, &v)| (i, v))
}

fn limited(images: &Images, limit: Option<usize>) -> Vec<usize> {
    (0..limit.map_or(images.n, |l| l.min(images.n))).collect()
}

fn run_dir_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::RunDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The state of one run: master weights (layout order), BN buffers, optimiser, graphs.
struct Trainer<T: Scalar> {
    cfg: EvalConfig,
    names: Vec<String>,
    params: Vec<ArrayD<f64>>,
    buffers: BTreeMap<String, ArrayD<f64>>,
    sgd: Sgd,
    exec: Box<dyn Executor<T>>,
    train_graphs: HashMap<usize, TrainGraph>,
    eval_graphs: HashMap<usize, EvalGraph>,
    drop_path: bool,
    aux_weight: f64,
    grad_clip: f64,
    /// Resident steps: parameters, BN buffers and SGD buffers live in executor variables.
    resident: bool,
    resident_graphs: HashMap<usize, ResidentTrainGraph>,
    /// The executor's variables hold the current state / the host copies lag them.
    device_current: bool,
    host_stale: bool,
}

/// The train graph plus gradient clipping, SGD and the BN running statistics
/// ([`clip_and_sgd`], [`running_stats`]): one resident training step.
struct ResidentTrainGraph {
    train: TrainGraph,
    grad_norm: NodeId,
    assign: Vec<(NodeId, String)>,
}

fn build_resident_train_graph(
    mut train: TrainGraph,
    names: &[(String, Vec<usize>)],
    hyper: (f64, f64, f64),
) -> Result<ResidentTrainGraph, GraphError> {
    let g = &mut train.graph;
    let lr = g.input("lr", crate::graph::Shape::scalar())?;
    let mut w = Vec::with_capacity(names.len());
    let mut buf = Vec::with_capacity(names.len());
    for (n, shape) in names {
        w.push(g.input_id(n).ok_or_else(|| GraphError::Shape {
            op: "resident training step".into(),
            label: n.clone(),
            shapes: format!("{shape:?}"),
            reason: "parameter is not an input of the training graph".into(),
        })?);
        buf.push(g.input(format!("sgd_buf/{n}"), shape.clone())?);
    }
    let grads = train.grads.clone();
    let (grad_norm, mut assign) = clip_and_sgd(g, names, (&w, &buf), &grads, lr, hyper)?;
    assign.extend(running_stats(g, std::slice::from_ref(&train.bn))?);
    Ok(ResidentTrainGraph {
        train,
        grad_norm,
        assign,
    })
}

impl<T: Scalar> Trainer<T> {
    /// Parameters, BN buffers (num_batches_tracked stays on the host) and SGD buffers as
    /// executor variables.
    fn upload(&mut self) -> Result<(), ExecError> {
        self.exec.clear_vars();
        for (i, (n, p)) in self.names.iter().zip(&self.params).enumerate() {
            self.exec.set_var(n, &p.mapv(T::of))?;
            let b = match &self.sgd.buf {
                Some(b) => b[i].mapv(T::of),
                None => ArrayD::zeros(p.raw_dim()),
            };
            self.exec.set_var(&format!("sgd_buf/{n}"), &b)?;
        }
        for (k, v) in &self.buffers {
            if !k.ends_with(".num_batches_tracked") {
                self.exec.set_var(k, &v.mapv(T::of))?;
            }
        }
        self.device_current = true;
        Ok(())
    }

    /// Copy the executor's variables back into the host state.
    fn sync_host(&mut self) -> Result<(), ExecError> {
        if !self.host_stale {
            return Ok(());
        }
        let mut bufs = Vec::with_capacity(self.names.len());
        for (i, n) in self.names.iter().enumerate() {
            self.params[i] = self.exec.var(n)?.mapv(|v| v.as_f64());
            bufs.push(self.exec.var(&format!("sgd_buf/{n}"))?.mapv(|v| v.as_f64()));
        }
        self.sgd.buf = Some(bufs);
        let keys: Vec<String> = self.buffers.keys().cloned().collect();
        for k in keys {
            if !k.ends_with(".num_batches_tracked") {
                let v = self.exec.var(&k)?.mapv(|v| v.as_f64());
                self.buffers.insert(k, v);
            }
        }
        self.host_stale = false;
        Ok(())
    }

    fn weight_feeds(&self, batch: &Batch) -> Feeds<T> {
        let mut f = Feeds::new();
        for (n, p) in self.names.iter().zip(&self.params) {
            f.insert(n.clone(), p.mapv(T::of));
        }
        f.insert("x", batch.x.mapv(T::of));
        f.insert("onehot", batch.onehot.mapv(T::of));
        f
    }

    /// One SGD step on `batch`; returns (loss, correct, gradient norm before clipping).
    fn step(
        &mut self,
        batch: &Batch,
        lr: f64,
        keep: f64,
        drop_rng: &mut ChaCha8Rng,
        epoch: usize,
        step: usize,
    ) -> Result<(f64, usize, f64), TrainError> {
        let n = batch.x.shape()[0];
        if self.resident {
            return self.step_resident(batch, lr, keep, drop_rng, epoch, step);
        }
        if !self.train_graphs.contains_key(&n) {
            let g = build_train_graph(&self.cfg, &self.names, n, self.drop_path, self.aux_weight)?;
            self.train_graphs.insert(n, g);
        }
        let mut feeds = self.weight_feeds(batch);
        let tg = &self.train_graphs[&n];
        self.drop_path_feeds(&mut feeds, tg, n, keep, drop_rng);
        let mut outs = vec![tg.loss, tg.logits];
        outs.extend(&tg.grads);
        for b in &tg.bn {
            outs.push(b.mean);
            outs.push(b.var);
        }
        let vals = self
            .exec
            .run(&tg.graph, &feeds, &outs)
            .map_err(|source| TrainError::Exec {
                epoch,
                what: format!("training step {step}"),
                source,
            })?;
        let mut it = vals.into_iter().map(|a| a.mapv(|v| v.as_f64()));
        let loss = it.next().expect("loss").sum();
        let non_finite = |tensor: String, index: usize, value: f64| TrainError::NonFinite {
            epoch,
            step,
            tensor,
            index,
            value,
        };
        if !loss.is_finite() {
            return Err(non_finite("loss".into(), 0, loss));
        }
        let logits = it.next().expect("logits");
        let mut grads: Vec<ArrayD<f64>> = it.by_ref().take(tg.grads.len()).collect();
        for (name, g) in self.names.iter().zip(&grads) {
            if let Some((i, v)) = first_non_finite(g) {
                return Err(non_finite(format!("grad/{name}"), i, v));
            }
        }
        for b in &tg.bn {
            let (mean, var) = (it.next().expect("mean"), it.next().expect("var"));
            let get = |s: &str| format!("{}.{s}", b.prefix);
            let mut rm = self.buffers.remove(&get("running_mean")).expect("buffer");
            let mut rv = self.buffers.remove(&get("running_var")).expect("buffer");
            let mut nbt = self
                .buffers
                .remove(&get("num_batches_tracked"))
                .expect("buffer");
            update_running_stats(&mut rm, &mut rv, &mut nbt, &mean, &var, b.count);
            self.buffers.insert(get("running_mean"), rm);
            self.buffers.insert(get("running_var"), rv);
            self.buffers.insert(get("num_batches_tracked"), nbt);
        }
        let norm = clip_grad_norm(&mut grads, self.grad_clip);
        self.sgd.step(&mut self.params, &grads, lr);
        Ok((loss, correct(&logits, &batch.onehot), norm))
    }

    /// Drop-path feeds: the keep probability and one Bernoulli(keep) mask per cell output.
    fn drop_path_feeds(
        &self,
        feeds: &mut Feeds<T>,
        tg: &TrainGraph,
        n: usize,
        keep: f64,
        drop_rng: &mut ChaCha8Rng,
    ) {
        if !self.drop_path {
            return;
        }
        feeds.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), T::of(keep)));
        for name in &tg.drop_masks {
            let mask = if keep < 1.0 {
                ArrayD::from_shape_simple_fn(IxDyn(&[n, 1, 1, 1]), || {
                    if drop_rng.random::<f64>() < keep {
                        T::one()
                    } else {
                        T::zero()
                    }
                })
            } else {
                ArrayD::from_elem(IxDyn(&[n, 1, 1, 1]), T::one())
            };
            feeds.insert(name.clone(), mask);
        }
    }

    /// The resident step: one run of [`ResidentTrainGraph`]; only the batch, the drop-path
    /// masks and lr go in, only the loss, logits and gradient norm come back.
    fn step_resident(
        &mut self,
        batch: &Batch,
        lr: f64,
        keep: f64,
        drop_rng: &mut ChaCha8Rng,
        epoch: usize,
        step: usize,
    ) -> Result<(f64, usize, f64), TrainError> {
        let n = batch.x.shape()[0];
        let exec_err = |what: &str| {
            let what = what.to_string();
            move |source| TrainError::Exec {
                epoch,
                what: what.clone(),
                source,
            }
        };
        if !self.resident_graphs.contains_key(&n) {
            let tg = build_train_graph(&self.cfg, &self.names, n, self.drop_path, self.aux_weight)?;
            let shapes: Vec<(String, Vec<usize>)> = self
                .names
                .iter()
                .zip(&self.params)
                .map(|(k, p)| (k.clone(), p.shape().to_vec()))
                .collect();
            let hyper = (self.sgd.momentum, self.sgd.weight_decay, self.grad_clip);
            let rg = build_resident_train_graph(tg, &shapes, hyper)?;
            self.resident_graphs.insert(n, rg);
        }
        if !self.device_current {
            self.upload().map_err(exec_err("uploading the state"))?;
        }
        let mut feeds = Feeds::new();
        feeds.insert("x", batch.x.mapv(T::of));
        feeds.insert("onehot", batch.onehot.mapv(T::of));
        feeds.insert("lr", ArrayD::from_elem(IxDyn(&[]), T::of(lr)));
        let rg = &self.resident_graphs[&n];
        self.drop_path_feeds(&mut feeds, &rg.train, n, keep, drop_rng);
        let outs = [rg.train.loss, rg.train.logits, rg.grad_norm];
        let vals = self
            .exec
            .run_assign(&rg.train.graph, &feeds, &outs, &rg.assign)
            .map_err(exec_err(&format!("resident training step {step}")))?;
        self.host_stale = true;
        let bn: Vec<String> = rg.train.bn.iter().map(|b| b.prefix.clone()).collect();
        let mut it = vals.into_iter().map(|a| a.mapv(|v| v.as_f64()));
        let loss = it.next().expect("loss").sum();
        let logits = it.next().expect("logits");
        let norm = it.next().expect("norm").sum();
        for (tensor, v) in [("loss", loss), ("||grad||", norm)] {
            if !v.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch,
                    step,
                    tensor: tensor.into(),
                    index: 0,
                    value: v,
                });
            }
        }
        for p in bn {
            if let Some(nbt) = self.buffers.get_mut(&format!("{p}.num_batches_tracked")) {
                nbt.mapv_inplace(|v| v + 1.0);
            }
        }
        Ok((loss, correct(&logits, &batch.onehot), norm))
    }
}

fn run<T: Scalar>(
    opts: &TrainOptions,
    genotype: &Genotype,
    train_set: &Images,
    test_set: &Images,
    mut reporting: Reporting,
    exec: Box<dyn Executor<T>>,
) -> Result<TrainReport, TrainError> {
    let start = Instant::now();
    let cfg = opts.eval_config(genotype);
    cfg.validate(32, 32)?;
    let layout: Layout = cfg.layout()?;
    let parameters = count_parameters(&layout);
    let parameters_with_aux = layout
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();

    // Independent streams: initialisation, data order and augmentation, drop-path masks.
    let mut init_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut data_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    data_rng.set_stream(1);
    let mut drop_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    drop_rng.set_stream(2);

    let state = init_state(&layout, 1, &mut init_rng);
    let mut names = Vec::new();
    let mut params = Vec::new();
    let mut buffers = BTreeMap::new();
    for (name, _, kind) in &layout.entries {
        let t = state.tensors[name].clone();
        if kind.trainable() {
            names.push(name.clone());
            params.push(t);
        } else {
            debug_assert!(matches!(
                kind,
                Kind::RunningMean | Kind::RunningVar | Kind::NumBatchesTracked
            ));
            buffers.insert(name.clone(), t);
        }
    }
    let mut tr = Trainer::<T> {
        cfg,
        names,
        params,
        buffers,
        sgd: Sgd::new(opts.momentum, opts.weight_decay),
        exec,
        train_graphs: HashMap::new(),
        eval_graphs: HashMap::new(),
        drop_path: opts.drop_path_prob > 0.0,
        aux_weight: opts.auxiliary_weight,
        grad_clip: opts.grad_clip,
        resident: StepMode::or_default_for(opts.step, opts.backend) == StepMode::Resident,
        resident_graphs: HashMap::new(),
        device_current: false,
        host_stale: false,
    };

    let train_idx = limited(train_set, opts.train_limit);
    let test_idx = limited(test_set, opts.test_limit);
    let (n_train, n_test) = (train_idx.len(), test_idx.len());
    let mut sampler = EpochSampler::new(train_idx, opts.batch_size)?;
    let augment = opts.augment();

    let mut log = None;
    if let Some(dir) = &reporting.run_dir {
        std::fs::create_dir_all(dir).map_err(|e| run_dir_err(dir, e))?;
        let meta = serde_json::json!({
            "options": opts,
            "genotype": genotype.to_string(),
            "parameters": parameters,
            "parameters_with_aux": parameters_with_aux,
            "train_images": n_train,
            "test_images": n_test,
        });
        let text = serde_json::to_string_pretty(&meta).map_err(|e| run_dir_err(dir, e))?;
        std::fs::write(dir.join("options.json"), text).map_err(|e| run_dir_err(dir, e))?;
        let path = dir.join("log.jsonl");
        log = Some((
            std::fs::File::create(&path).map_err(|e| run_dir_err(&path, e))?,
            path,
        ));
    }

    let bar = if reporting.progress {
        indicatif::ProgressBar::new((sampler.batches_per_epoch() * opts.epochs) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }

    let mut records = Vec::new();
    for epoch in 0..opts.epochs {
        let t0 = Instant::now();
        let lr = lr_at(opts.learning_rate, epoch, opts.epochs);
        let p = drop_path_prob_at(opts.drop_path_prob, epoch, opts.epochs);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, opts.epochs));
        sampler.start_epoch(&mut data_rng);
        let (mut loss_sum, mut hits, mut seen, mut norm_sum, mut steps) = (0.0, 0, 0, 0.0, 0);
        while let Some(idx) = sampler.next_batch() {
            let batch = make_batch(
                train_set,
                &idx,
                Some(&augment),
                &mut data_rng,
                CIFAR10_CLASSES,
            )?;
            let (loss, c, norm) = tr.step(&batch, lr, 1.0 - p, &mut drop_rng, epoch, steps)?;
            loss_sum += loss * idx.len() as f64;
            hits += c;
            seen += idx.len();
            norm_sum += norm;
            steps += 1;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}%",
                loss_sum / seen as f64,
                100.0 * hits as f64 / seen as f64
            ));
        }
        let (test_loss, test_acc) = evaluate(&mut tr, test_set, &test_idx, opts.batch_size, epoch)?;
        let rec = EpochRecord {
            epoch,
            lr,
            drop_path_prob: p,
            train_loss: loss_sum / seen as f64,
            train_acc: 100.0 * hits as f64 / seen as f64,
            test_loss,
            test_acc,
            mean_grad_norm: norm_sum / steps.max(1) as f64,
            steps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some((f, path)) = &mut log {
            let line = serde_json::to_string(&rec).map_err(|e| run_dir_err(path, e))?;
            writeln!(f, "{line}")
                .and_then(|_| f.flush())
                .map_err(|e| run_dir_err(path, e))?;
        }
        if let Some(dir) = &reporting.run_dir {
            tr.sync_host().map_err(|source| TrainError::Exec {
                epoch,
                what: "reading the state back for weights.npz".into(),
                source,
            })?;
            let mut all: Vec<(String, &ArrayD<f64>)> = tr
                .names
                .iter()
                .cloned()
                .zip(tr.params.iter())
                .chain(tr.buffers.iter().map(|(k, v)| (k.clone(), v)))
                .map(|(k, v)| (format!("sd/{k}"), v))
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            write_npz(
                &dir.join("weights.npz"),
                all.iter().map(|(k, v)| (k.as_str(), *v)),
            )?;
        }
        bar.suspend(|| {
            if let Some(cb) = reporting.on_epoch.as_deref_mut() {
                cb(&rec);
            }
        });
        records.push(rec);
    }
    bar.finish_and_clear();
    let report = TrainReport {
        final_test_acc: records.last().map_or(0.0, |r| r.test_acc),
        epochs: records,
        parameters,
        parameters_with_aux,
        train_images: n_train,
        test_images: n_test,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &reporting.run_dir {
        let text = serde_json::to_string_pretty(&report).map_err(|e| run_dir_err(dir, e))?;
        std::fs::write(dir.join("summary.json"), text).map_err(|e| run_dir_err(dir, e))?;
    }
    Ok(report)
}

/// Test loss and accuracy (percent) in evaluation mode over `idx` in order.
fn evaluate<T: Scalar>(
    tr: &mut Trainer<T>,
    images: &Images,
    idx: &[usize],
    batch_size: usize,
    epoch: usize,
) -> Result<(f64, f64), TrainError> {
    let (mut loss_sum, mut hits) = (0.0, 0);
    // The test transform draws no random numbers.
    let mut unused = ChaCha8Rng::seed_from_u64(0);
    for chunk in idx.chunks(batch_size) {
        let batch = make_batch(images, chunk, None, &mut unused, CIFAR10_CLASSES)?;
        let n = chunk.len();
        if !tr.eval_graphs.contains_key(&n) {
            let g = build_eval_graph(&tr.cfg, n)?;
            tr.eval_graphs.insert(n, g);
        }
        let mut feeds = Feeds::new();
        if tr.resident {
            // Parameters and running statistics are the executor's variables.
            if !tr.device_current {
                tr.upload().map_err(|source| TrainError::Exec {
                    epoch,
                    what: "uploading the state".into(),
                    source,
                })?;
            }
            feeds.insert("x", batch.x.mapv(T::of));
            feeds.insert("onehot", batch.onehot.mapv(T::of));
        } else {
            feeds = tr.weight_feeds(&batch);
            for (k, v) in &tr.buffers {
                feeds.insert(k.clone(), v.mapv(T::of));
            }
        }
        let eg = &tr.eval_graphs[&n];
        let vals = tr
            .exec
            .run(&eg.graph, &feeds, &[eg.loss, eg.logits])
            .map_err(|source| TrainError::Exec {
                epoch,
                what: "test evaluation".into(),
                source,
            })?;
        let loss = vals[0].sum().as_f64();
        let logits = vals[1].mapv(|v| v.as_f64());
        loss_sum += loss * n as f64;
        hits += correct(&logits, &batch.onehot);
    }
    let n = idx.len() as f64;
    Ok((loss_sum / n, 100.0 * hits as f64 / n))
}
