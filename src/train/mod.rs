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
//! One step graph per batch size ([`graphs::TrainStepGraph`]) is the only training step: the
//! parameters, BN buffers and SGD momentum buffers stay in the executor's variables (on the
//! GPU in device memory) in the chosen dtype (f32 as the reference, or f64) and come back to
//! the host for `weights.npz` and at the end.

pub mod graphs;
pub mod options;
pub mod recurrent;
pub mod trainer;

pub use options::{
    drop_path_prob_at, lr_at, DataSource, Dtype, EpochRecord, Reporting, TrainError, TrainOptions,
    TrainReport,
};
pub use trainer::{train, train_on};
