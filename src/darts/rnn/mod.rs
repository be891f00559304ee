//! The recurrent search space of DARTS (section 2.1 and 3.2 of the paper; the reference's
//! rnn/ code, facts in ../shared/reference/RNN_REFERENCE_NOTES.md): one highway cell of 8
//! nodes unrolled over time inside a language model with tied embedding and decoder.
//!
//! * [`model`]: the search cell and the language model around it as graphs of primitives,
//!   and the derived cell of a genotype (no BN) for training from scratch.
//! * [`state`]: the parameter layout under the reference's state_dict names, seeded
//!   initialisation, and strict npz reading.
//! * [`genotype`]: the recurrent genotype, derived with the reference's tie rules.

pub mod batch_file;
pub mod genotype;
pub mod model;
pub mod state;

/// The candidate operations, in the column order of alpha (rnn/genotypes.py PRIMITIVES).
pub const PRIMITIVES: [&str; 5] = ["none", "tanh", "relu", "sigmoid", "identity"];

/// Intermediate nodes of the search cell (rnn/genotypes.py STEPS; also CONCAT).
pub const STEPS: usize = 8;

/// Rows of alpha: one per edge, 1 + 2 + ... + 8 = 36.
pub const ROWS: usize = STEPS * (STEPS + 1) / 2;

/// The first alpha row of node i (producing state s_{i+1}): rows off_i .. off_i + i are its
/// edges from s_0 .. s_i.
pub fn row_offset(i: usize) -> usize {
    i * (i + 1) / 2
}

/// Every parameter's init range (model.py INITRANGE): U(-0.04, 0.04).
pub const INIT_RANGE: f64 = 0.04;

/// State_dict names of the language model.
pub mod names {
    pub const ENCODER: &str = "encoder.weight";
    pub const DECODER_WEIGHT: &str = "decoder.weight";
    pub const DECODER_BIAS: &str = "decoder.bias";
    pub const W0: &str = "rnns.0._W0";
    /// The cell's BatchNorm1d (search cell only).
    pub const BN: &str = "rnns.0.bn";
    /// alpha in a state file.
    pub const ALPHA: &str = "alpha/recurrent";
    /// The weight matrix of node i.
    pub fn ws(i: usize) -> String {
        format!("rnns.0._Ws.{i}")
    }
    /// Graph inputs of a batch: token ids [T, B] (as exact integers), one-hot targets
    /// [T B, V] (row t B + b), and the incoming hidden state [1, B, H].
    pub const X: &str = "x";
    pub const TARGET: &str = "target";
    pub const HIDDEN: &str = "hidden";
    /// The same for the two batches of a search step.
    pub const TRAIN: &str = "train";
    pub const VALID: &str = "valid";
    pub fn of(batch: &str, what: &str) -> String {
        format!("{batch}/{what}")
    }
    /// Dropout masks, fed per forward (absent when the dropout is 0): the embedding's
    /// per-word mask [V, 1], the input and output locked masks [B, H], the cell's x and h
    /// masks [B, H].
    pub const MASKS: [&str; 5] = [
        "mask/embedding",
        "mask/input",
        "mask/output",
        "mask/x",
        "mask/h",
    ];
}
