//! Every setting of a search: the reference's flags with its defaults (train_search.py), the
//! presets, the learning-rate schedule, and the range of every setting, checked before any
//! work.

use super::alpha_hessian::LanczosOptions;
use super::architect::Order;
use super::early_stop::EsRule;
use super::run::SearchError;
use super::step_graph::StepHyper;
use crate::darts::network::SearchConfig;
use crate::exec::{Backend, Dtype};
use crate::step::optim::{AdamHyper, SgdHyper};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the CIFAR-10 images come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The embedded subset: 4,000 training and 1,000 test images
    /// ([`crate::data::embedded_subset`]).
    Embedded,
    /// A `cifar-10-batches-bin` folder: all 50,000 training and 10,000 test images.
    Dir(PathBuf),
}

/// Every hyperparameter of a search (the reference's flags, with its names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    pub init_channels: usize,
    pub layers: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub learning_rate_min: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub train_portion: f64,
    pub arch_learning_rate: f64,
    pub arch_weight_decay: f64,
    pub order: Order,
    pub seed: u64,
    pub cutout: Option<usize>,
    pub dtype: Dtype,
    /// The executor (the numbers depend on it, so a resumed run keeps it).
    #[serde(default)]
    pub backend: Backend,
    pub data: DataSource,
    /// Use only the first n images of the training set (None: all).
    pub max_images: Option<usize>,
    /// Audit the architecture gradient every this many steps (`--audit-every`; None: never).
    #[serde(default)]
    pub audit_every: Option<usize>,
    /// Terms of the audit's Neumann series (`--neumann-terms`).
    #[serde(default = "default_neumann_terms")]
    pub neumann_terms: usize,
    /// The alpha-Hessian tracking and DARTS-ES (`--track-hessian`, `--early-stop-hessian`).
    #[serde(default)]
    pub hessian: HessianOptions,
}

/// `--track-hessian`: at the end of every epoch, the dominant eigenvalue of the Hessian of
/// L_val in alpha on that epoch's last search batch (Lanczos on exact HVPs,
/// [`super::alpha_hessian`]); `--early-stop-hessian`: DARTS-ES on that series
/// ([`super::early_stop`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HessianOptions {
    pub track: bool,
    /// The DARTS-ES rule (requires `track`).
    pub early_stop: Option<EsRule>,
    /// HVP budget and stopping tolerance of the Lanczos estimate (`--hessian-hvps`,
    /// `--hessian-tol`).
    pub lanczos: LanczosOptions,
}

fn default_neumann_terms() -> usize {
    5
}

impl SearchOptions {
    /// The reference configuration (train_search.py defaults; pass `--order second` for
    /// the paper's second-order results).
    pub fn paper() -> Self {
        SearchOptions {
            init_channels: 16,
            layers: 8,
            epochs: 50,
            batch_size: 64,
            learning_rate: 0.025,
            learning_rate_min: 0.001,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            train_portion: 0.5,
            arch_learning_rate: 3e-4,
            arch_weight_decay: 1e-3,
            order: Order::First,
            seed: 2,
            cutout: None,
            dtype: Dtype::F32,
            backend: Backend::Cpu,
            data: DataSource::Embedded,
            max_images: None,
            audit_every: None,
            neumann_terms: default_neumann_terms(),
            hessian: HessianOptions::default(),
        }
    }

    /// The default: the reference's algorithm and optimiser settings on a network and data
    /// budget sized to finish in minutes on a 2-core CPU (see README for the measured time).
    pub fn quick() -> Self {
        SearchOptions {
            init_channels: 4,
            layers: 5,
            epochs: 4,
            batch_size: 32,
            max_images: Some(2000),
            // A larger architecture learning rate so the alphas move visibly in a few
            // hundred steps (the reference's 3e-4 is tuned for 50 epochs of 25k images).
            arch_learning_rate: 3e-3,
            ..SearchOptions::paper()
        }
    }

    /// Every setting's range, checked before any work; the error names the flag.
    pub fn validate(&self) -> Result<(), SearchError> {
        let bad = |flag: &str, v: &dyn std::fmt::Display, range: &str| {
            Err(SearchError::Option {
                flag: flag.to_string(),
                reason: format!("{v} is not {range}"),
            })
        };
        for (flag, v) in [
            ("--init-channels", self.init_channels),
            ("--layers", self.layers),
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
        ] {
            if v == 0 {
                return bad(flag, &v, "at least 1");
            }
        }
        // Limits far above any network this crate can hold, so that shape arithmetic never
        // overflows; the memory a network needs is checked when its graph is built.
        for (flag, v, max) in [
            ("--init-channels", self.init_channels, 4096),
            ("--layers", self.layers, 1024),
            ("--batch-size", self.batch_size, 1 << 20),
        ] {
            if v > max {
                return bad(flag, &v, &format!("at most {max}"));
            }
        }
        for (flag, v, positive) in [
            ("--learning-rate", self.learning_rate, true),
            ("--learning-rate-min", self.learning_rate_min, false),
            ("--weight-decay", self.weight_decay, false),
            ("--grad-clip", self.grad_clip, true),
            ("--arch-learning-rate", self.arch_learning_rate, true),
            ("--arch-weight-decay", self.arch_weight_decay, false),
        ] {
            let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
            if !ok {
                let range = if positive {
                    "finite and > 0"
                } else {
                    "finite and >= 0"
                };
                return bad(flag, &v, range);
            }
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("--momentum", &self.momentum, "in [0, 1)");
        }
        if !(self.train_portion > 0.0 && self.train_portion < 1.0) {
            return bad("--train-portion", &self.train_portion, "in (0, 1)");
        }
        if let Some(m) = self.max_images {
            if m < 2 {
                return bad("--max-images", &m, "at least 2 (one image for each half)");
            }
        }
        if self.cutout == Some(0) {
            return bad("--cutout", &0, "at least 1");
        }
        if self.audit_every == Some(0) {
            return bad("--audit-every", &0, "at least 1");
        }
        if !(1..=100).contains(&self.neumann_terms) {
            return bad("--neumann-terms", &self.neumann_terms, "in 1..=100");
        }
        self.validate_hessian()
    }

    /// The ranges of the alpha-Hessian flags; an early-stopping rule that could never be
    /// checked within `--epochs` is refused too.
    fn validate_hessian(&self) -> Result<(), SearchError> {
        let h = &self.hessian;
        let err = |flag: &str, reason: String| {
            Err(SearchError::Option {
                flag: flag.to_string(),
                reason,
            })
        };
        let n = 2 * 8 * self.config().k();
        let l = &h.lanczos;
        if !(1..=n).contains(&l.max_hvps) {
            return err(
                "--hessian-hvps",
                format!(
                    "{} is not in 1..={n} (the number of alpha entries)",
                    l.max_hvps
                ),
            );
        }
        if !(l.rel_tol.is_finite() && (0.0..1.0).contains(&l.rel_tol)) {
            return err(
                "--hessian-tol",
                format!("{} is not finite and in [0, 1)", l.rel_tol),
            );
        }
        let Some(rule) = &h.early_stop else {
            return Ok(());
        };
        if !h.track {
            return err(
                "--early-stop-hessian",
                "needs the eigenvalue series of --track-hessian".into(),
            );
        }
        if !(1..=1000).contains(&rule.window) {
            return err("--es-window", format!("{} is not in 1..=1000", rule.window));
        }
        if !(rule.factor.is_finite() && rule.factor > 1.0) {
            return err(
                "--es-factor",
                format!(
                    "{} is not finite and > 1 (the rule detects growth)",
                    rule.factor
                ),
            );
        }
        if rule.start_epoch > 1_000_000 {
            return err(
                "--es-start-epoch",
                format!("{} is not at most 1000000", rule.start_epoch),
            );
        }
        let first = rule.first_checked_epoch();
        if first >= self.epochs {
            return err(
                "--early-stop-hessian",
                format!(
                    "with --es-window {} and --es-start-epoch {} the rule is first checked at \
                     epoch {first} (0-based; two full windows end there), but --epochs {} ends \
                     at epoch {}; lower the window or start epoch, or raise --epochs",
                    rule.window,
                    rule.start_epoch,
                    self.epochs,
                    self.epochs - 1
                ),
            );
        }
        Ok(())
    }

    /// A lower bound of the memory one search step needs, in bytes: the weights and the state
    /// that shadows them (weights, momentum buffers, gradients, the unrolled or perturbed
    /// copies: 4 copies) plus, per cell, one activation per edge of the mixed op's output
    /// (N x C x 32 x 32 at the first cells; the step holds many more), in the run's dtype.
    /// It errs low: it is there to refuse absurd networks before allocating, not to predict.
    pub fn memory_lower_bound(&self) -> Result<u128, SearchError> {
        let bytes: u128 = match self.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        };
        let cfg = self.config();
        let weights: u128 = cfg
            .layout()?
            .weights()
            .map(|(_, s, _)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        let edges = crate::darts::num_edges(cfg.steps) as u128;
        let activations = self.batch_size as u128
            * self.init_channels as u128
            * 32
            * 32
            * self.layers as u128
            * edges;
        Ok(bytes * (4 * weights + activations))
    }

    /// The optimisers' constants: SGD on the weights, the architect's Adam on the alphas.
    pub fn hyper(&self) -> StepHyper {
        StepHyper {
            sgd: SgdHyper {
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                grad_clip: self.grad_clip,
            },
            adam: AdamHyper::architect(self.arch_learning_rate, self.arch_weight_decay),
        }
    }

    pub fn config(&self) -> SearchConfig {
        SearchConfig {
            c: self.init_channels,
            layers: self.layers,
            ..SearchConfig::paper()
        }
    }

    /// Learning rate of epoch `e` (0-based) under the reference's schedule:
    /// CosineAnnealingLR(T_max = epochs, eta_min) stepped at the start of every epoch, so epoch e
    /// uses lr_min + (lr - lr_min) (1 + cos(pi (e + 1) / epochs)) / 2.
    pub fn lr(&self, e: usize) -> f64 {
        let t = std::f64::consts::PI * (e + 1) as f64 / self.epochs as f64;
        self.learning_rate_min
            + (self.learning_rate - self.learning_rate_min) * (1.0 + t.cos()) / 2.0
    }
}
