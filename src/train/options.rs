//! What a training run is told (the flags of cnn/train.py, with its defaults) and what it
//! reports (per-epoch records, the final report, errors).

use crate::darts::eval_network::{self, EvalConfig, EvalConfigError};
use crate::darts::genotype::Genotype;
use crate::darts::params::StateError;
use crate::data::{Augment, DataError, CIFAR10_CLASSES};
use crate::exec::{Backend, ExecError};
use crate::graph::GraphError;
use std::path::PathBuf;

pub use crate::exec::Dtype;
pub use crate::search::run::DataSource;

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
    /// A lower bound of the memory one training step needs, in bytes: the parameters and the
    /// state that shadows them (parameters, momentum buffers, gradients: 3 copies) plus, per
    /// cell, one activation per op of its genotype (N x C x 32 x 32 at the first cells), in
    /// the run's dtype. It errs low: it refuses absurd networks before allocating.
    pub fn memory_lower_bound(&self, genotype: &Genotype) -> Result<u128, TrainError> {
        let bytes: u128 = match self.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        };
        let params: u128 = self
            .eval_config(genotype)
            .layout()?
            .weights()
            .map(|(_, s, _)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let nodes = genotype.normal.ops.len() as u128;
        let activations = self.batch_size as u128
            * self.init_channels as u128
            * 32
            * 32
            * self.layers as u128
            * nodes;
        Ok(bytes * (3 * params + activations))
    }

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
    #[error("epoch {epoch}, {what}: {cause}")]
    Exec {
        epoch: usize,
        what: String,
        cause: ExecError,
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
