//! The batch npz of `darts gradients`: `x_train`, `y_train`, `x_valid`, `y_valid` (NCHW
//! images as floats, integer class labels), read strictly: each of the four keys exactly once,
//! no other key, shapes that agree, finite pixels, labels that are class indices.

use super::params::{read_npz, read_npz_from, StateError};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::Path;

/// One half of a batch file: images `x` [N, 3, H, W] and their one-hot labels [N, classes].
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledBatch {
    pub x: ArrayD<f64>,
    pub onehot: ArrayD<f64>,
}

/// The two halves of a batch file.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchFile {
    pub train: LabelledBatch,
    pub valid: LabelledBatch,
}

/// The keys of a batch file, in the order they are checked.
pub const BATCH_KEYS: [&str; 4] = ["x_train", "y_train", "x_valid", "y_valid"];

/// Reads the batch npz at `path` for a network of `classes` classes.
pub fn read_batch_npz(path: &Path, classes: usize) -> Result<BatchFile, StateError> {
    let all = read_npz(path)?;
    batch_from_arrays(all, &path.display().to_string(), classes)
}

/// [`read_batch_npz`] of an archive already open (`file` names it in errors).
pub fn read_batch_npz_from<R: std::io::Read + std::io::Seek>(
    reader: R,
    file: &str,
    classes: usize,
) -> Result<BatchFile, StateError> {
    batch_from_arrays(read_npz_from(reader, file)?, file, classes)
}

/// The batch of the arrays of a batch file (`file` names it in errors).
pub fn batch_from_arrays(
    mut all: BTreeMap<String, ArrayD<f64>>,
    file: &str,
    classes: usize,
) -> Result<BatchFile, StateError> {
    let mut half = |which: &str| -> Result<LabelledBatch, StateError> {
        let (xk, yk) = (format!("x_{which}"), format!("y_{which}"));
        let read_err = |key: &str, reason: String| StateError::Read {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let missing = |key: &str, what: &str| StateError::File {
            file: file.to_string(),
            reason: format!("missing key '{key}' ({what})"),
        };
        let x = all
            .remove(&xk)
            .ok_or_else(|| missing(&xk, "images, shape [N, 3, H, W]"))?;
        let y = all
            .remove(&yk)
            .ok_or_else(|| missing(&yk, "integer class labels, shape [N]"))?;
        let s = x.shape();
        if s.len() != 4 || s[1] != 3 || s[0] == 0 || s[2] == 0 || s[3] == 0 {
            return Err(read_err(
                &xk,
                format!("has shape {s:?}, expected [N, 3, H, W] with N, H, W at least 1"),
            ));
        }
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(StateError::NonFinite {
                file: file.to_string(),
                key: xk,
                index,
                value: x.iter().nth(index).copied().unwrap_or(f64::NAN),
            });
        }
        let n = s[0];
        if y.shape() != [n] {
            return Err(read_err(
                &yk,
                format!(
                    "has shape {:?}, expected [{n}] to match the {n} images of '{xk}'",
                    y.shape()
                ),
            ));
        }
        let mut onehot = ArrayD::zeros(IxDyn(&[n, classes]));
        for (i, &v) in y.iter().enumerate() {
            if !(v >= 0.0 && v.fract() == 0.0 && v < classes as f64) {
                return Err(read_err(
                    &yk,
                    format!("element {i} = {v} is not a class index in 0..{classes}"),
                ));
            }
            onehot[[i, v as usize]] = 1.0;
        }
        Ok(LabelledBatch { x, onehot })
    };
    let train = half("train")?;
    let valid = half("valid")?;
    if let Some((key, a)) = all.into_iter().next() {
        return Err(StateError::Extra {
            file: file.to_string(),
            key,
            got: a.shape().to_vec(),
        });
    }
    if valid.x.shape()[2..] != train.x.shape()[2..] {
        return Err(StateError::File {
            file: file.to_string(),
            reason: format!(
                "x_train has images of {:?} pixels, x_valid of {:?}; they must agree",
                &train.x.shape()[2..],
                &valid.x.shape()[2..]
            ),
        });
    }
    Ok(BatchFile { train, valid })
}
