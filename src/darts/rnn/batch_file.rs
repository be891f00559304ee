//! The batch npz of `darts gradients --space rnn` (and `darts step --space rnn`): `x_train`,
//! `y_train`, `x_valid`, `y_valid` (token ids [T, B], time-major as the reference's get_batch
//! returns them) and `hidden_train`, `hidden_valid` ([1, B, H], the incoming hidden states),
//! read strictly: each key exactly once, no other key, shapes that agree, token ids in the
//! vocabulary, finite hidden states, and B >= 2 (a train-mode BN needs two rows).

use super::state::RnnConfig;
use crate::darts::params::{read_npz, refuse_extra, StateError};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

/// One batch of the language model: inputs x and targets y [T, B] (token ids held as exact
/// f64 integers), and the incoming hidden state [1, B, H].
#[derive(Clone, Debug, PartialEq)]
pub struct RnnBatch {
    pub x: ArrayD<f64>,
    pub y: ArrayD<f64>,
    pub hidden: ArrayD<f64>,
}

impl RnnBatch {
    /// (T, B).
    pub fn tb(&self) -> (usize, usize) {
        (self.x.shape()[0], self.x.shape()[1])
    }

    /// The one-hot targets [T B, V], row t B + b (the reference's flattened target block).
    pub fn onehot(&self, ntoken: usize) -> ArrayD<f64> {
        let n = self.y.len();
        let mut oh = ArrayD::zeros(IxDyn(&[n, ntoken]));
        for (i, &v) in self.y.iter().enumerate() {
            oh[[i, v as usize]] = 1.0;
        }
        oh
    }
}

/// The two batches of a batch file.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnBatchFile {
    pub train: RnnBatch,
    pub valid: RnnBatch,
}

/// Reads the batch npz at `path` for the model `cfg`.
pub fn read_rnn_batch_npz(path: &Path, cfg: &RnnConfig) -> Result<RnnBatchFile, StateError> {
    rnn_batch_from_arrays(read_npz(path)?, &path.display().to_string(), cfg)
}

/// The batches of the arrays of a batch file (`file` names it in errors).
pub fn rnn_batch_from_arrays(
    mut all: BTreeMap<String, ArrayD<f64>>,
    file: &str,
    cfg: &RnnConfig,
) -> Result<RnnBatchFile, StateError> {
    let train = half(&mut all, file, cfg, "train")?;
    let valid = half(&mut all, file, cfg, "valid")?;
    refuse_extra(all, file)?;
    Ok(RnnBatchFile { train, valid })
}

fn half(
    all: &mut BTreeMap<String, ArrayD<f64>>,
    file: &str,
    cfg: &RnnConfig,
    which: &str,
) -> Result<RnnBatch, StateError> {
    let read_err = |key: &str, reason: String| StateError::Read {
        file: file.to_string(),
        key: key.to_string(),
        reason,
    };
    let mut take = |key: &str, what: &str| {
        all.remove(key).ok_or_else(|| StateError::File {
            file: file.to_string(),
            reason: format!("missing key '{key}' ({what})"),
        })
    };
    let (xk, yk, hk) = (
        format!("x_{which}"),
        format!("y_{which}"),
        format!("hidden_{which}"),
    );
    let x = take(&xk, "input token ids, shape [T, B]")?;
    let (t, b) = match x.shape() {
        [t, b] if *t >= 1 && *b >= 1 => (*t, *b),
        s => {
            return Err(read_err(
                &xk,
                format!("has shape {s:?}, expected [T, B] with T, B at least 1"),
            ))
        }
    };
    if b == 1 {
        return Err(read_err(
            &xk,
            "has batch size B = 1: the search cell's train-mode BatchNorm needs at least two \
             rows (PyTorch refuses B = 1 too)"
                .into(),
        ));
    }
    let y = take(&yk, "target token ids, shape [T, B]")?;
    if y.shape() != [t, b] {
        return Err(read_err(
            &yk,
            format!(
                "has shape {:?}, expected [{t}, {b}] to match '{xk}'",
                y.shape()
            ),
        ));
    }
    for (key, a) in [(&xk, &x), (&yk, &y)] {
        if let Some((i, v)) = a
            .iter()
            .enumerate()
            .find(|(_, &v)| !(v >= 0.0 && v.fract() == 0.0 && v < cfg.ntoken as f64))
        {
            return Err(read_err(
                key,
                format!("element {i} = {v} is not a token id in 0..{}", cfg.ntoken),
            ));
        }
    }
    let hidden = take(&hk, "incoming hidden state, shape [1, B, H]")?;
    if hidden.shape() != [1, b, cfg.nhid] {
        return Err(read_err(
            &hk,
            format!(
                "has shape {:?}, expected [1, {b}, {}] (B of '{xk}', H of the state)",
                hidden.shape(),
                cfg.nhid
            ),
        ));
    }
    if let Some(index) = hidden.iter().position(|v| !v.is_finite()) {
        return Err(StateError::NonFinite {
            file: file.to_string(),
            key: hk,
            index,
            value: hidden.iter().nth(index).copied().unwrap_or(f64::NAN),
        });
    }
    Ok(RnnBatch { x, y, hidden })
}
