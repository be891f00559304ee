//! The names of graph inputs, executor variables and state-file keys, each defined once.
//!
//! A graph input with no feed reads the executor variable of the same name
//! ([`crate::exec::Executor`]), and the checkpoint and state npz files use the same names, so
//! one name serves all three. Weights and BN buffers go by their PyTorch state_dict names.

/// The two cell types, in the order of every `[normal, reduce]` pair.
pub const CELLS: [&str; 2] = ["normal", "reduce"];

/// alpha of each cell type, `[k, 8]` (the reference's `alphas_normal`, `alphas_reduce`).
pub const ALPHA: [&str; 2] = ["alpha/normal", "alpha/reduce"];

/// A single batch: images `[N, 3, H, W]` and one-hot labels `[N, classes]`.
pub const X: &str = "x";
pub const ONEHOT: &str = "onehot";

/// The two batches of a search step: the weights' training batch and the architecture's
/// search ("valid") batch.
pub const TRAIN_X: &str = "train/x";
pub const TRAIN_ONEHOT: &str = "train/onehot";
pub const VALID_X: &str = "valid/x";
pub const VALID_ONEHOT: &str = "valid/onehot";

/// The weight learning rate eta of the step (also xi of the unrolled step).
pub const LR: &str = "lr";

/// SGD's momentum buffer of a weight (PyTorch's `momentum_buffer`).
pub fn sgd_buf(weight: &str) -> String {
    format!("sgd_buf/{weight}")
}

/// Adam's first moment of an alpha (PyTorch's `exp_avg`); `cell` is one of [`CELLS`].
pub fn adam_m(cell: &str) -> String {
    format!("adam_m/{cell}")
}

/// Adam's second moment of an alpha (PyTorch's `exp_avg_sq`).
pub fn adam_v(cell: &str) -> String {
    format!("adam_v/{cell}")
}

/// Adam's step size lr / (1 - beta1^t) for an alpha's step t (a fed scalar).
pub fn adam_step_size(cell: &str) -> String {
    format!("adam/step_size/{cell}")
}

/// Adam's sqrt(1 - beta2^t) for an alpha's step t (a fed scalar).
pub fn adam_bc2_sqrt(cell: &str) -> String {
    format!("adam/bc2_sqrt/{cell}")
}
