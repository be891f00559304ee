//! Named parameters and buffers under the reference's state_dict names, with npz import and
//! export (keys `sd/<name>`, `alpha/normal`, `alpha/reduce`).

use crate::darts::names;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::NpzWriter;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

/// What a named tensor is: a trainable weight, or a BN buffer updated in train mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A conv or linear weight (initialised like PyTorch's default for its fan-in).
    Weight {
        fan_in: usize,
    },
    /// A linear bias.
    Bias {
        fan_in: usize,
    },
    /// Affine BN scale (init 1) and shift (init 0).
    BnWeight,
    BnBias,
    /// running_mean (init 0), running_var (init 1), num_batches_tracked (init 0).
    RunningMean,
    RunningVar,
    NumBatchesTracked,
    /// A second state_dict name of an earlier parameter (the recurrent language model's
    /// `decoder.weight`, the same tensor as `encoder.weight`): stored, not a parameter.
    Tied,
}

impl Kind {
    pub fn trainable(self) -> bool {
        matches!(
            self,
            Kind::Weight { .. } | Kind::Bias { .. } | Kind::BnWeight | Kind::BnBias
        )
    }
}

/// The declared layout of a network's state: names in module order, shapes and kinds.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub entries: Vec<(String, Vec<usize>, Kind)>,
}

impl Layout {
    pub fn push(&mut self, name: impl Into<String>, shape: &[usize], kind: Kind) {
        self.entries.push((name.into(), shape.to_vec(), kind));
    }

    /// Trainable parameters, in module order (PyTorch's `model.parameters()` order).
    pub fn weights(&self) -> impl Iterator<Item = &(String, Vec<usize>, Kind)> {
        self.entries.iter().filter(|e| e.2.trainable())
    }

    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.entries
            .iter()
            .find(|e| e.0 == name)
            .map(|e| e.1.as_slice())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{file}: missing key '{key}' (expected shape {expected:?})")]
    Missing {
        file: String,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{file}: unexpected key '{key}' (shape {got:?}) — not part of this network")]
    Extra {
        file: String,
        key: String,
        got: Vec<usize>,
    },
    #[error("{file}: key '{key}' has shape {got:?}, the network expects {expected:?}")]
    Shape {
        file: String,
        key: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{file}: key '{key}': {reason}")]
    Read {
        file: String,
        key: String,
        reason: String,
    },
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error(
        "{file}: no key has the 'sd/' prefix (found '{key}'); a state file stores the network's \
         tensors as 'sd/<state_dict name>'"
    )]
    NoPrefix { file: String, key: String },
    #[error("{file}: key '{key}' holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        file: String,
        key: String,
        index: usize,
        value: f64,
    },
}

/// SGD momentum buffers, one per trainable weight in [`Layout::weights`] order.
pub type MomentumBuffers = Vec<ArrayD<f64>>;

/// Every tensor of a network state (weights and BN buffers) plus the two alpha matrices,
/// all held in f64.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub tensors: BTreeMap<String, ArrayD<f64>>,
    pub alpha_normal: ArrayD<f64>,
    pub alpha_reduce: ArrayD<f64>,
}

/// Read every array of an npz file as f64 (accepting f64, f32 and i64 payloads), strictly
/// ([`super::npz`]: a corrupt member is reported as corrupt, naming it). A checkpoint's JSON
/// record (`meta.json`, bytes) is skipped here; [`crate::search::checkpoint::read`] reads it.
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, ArrayD<f64>>, StateError> {
    let file = path.display().to_string();
    let f = File::open(path).map_err(|e| StateError::File {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    read_npz_from(std::io::BufReader::new(f), &file)
}

/// [`read_npz`] of an archive already open (`file` names it in errors).
pub fn read_npz_from<R: std::io::Read + std::io::Seek>(
    reader: R,
    file: &str,
) -> Result<BTreeMap<String, ArrayD<f64>>, StateError> {
    let mut out = BTreeMap::new();
    for (key, member) in super::npz::read_members(reader, file)? {
        match member {
            _ if key == "meta.json" => {}
            super::npz::Member::F64(a) => {
                out.insert(key, a);
            }
            super::npz::Member::Bytes(_) => {
                return Err(StateError::Read {
                    file: file.to_string(),
                    key,
                    reason: "dtype '|u1' (bytes) is not supported here (want f64 '<f8', f32 \
                             '<f4' or i64 '<i8')"
                        .into(),
                })
            }
        }
    }
    Ok(out)
}

/// Write named f64 arrays to an npz file with [`crate::io::write_atomically`]: a regular file
/// is replaced atomically (temporary file, fsync, rename), so an interrupted write never leaves
/// a truncated file under the final name; `/dev/null` or a FIFO is written in place.
pub fn write_npz<'a>(
    path: &Path,
    arrays: impl IntoIterator<Item = (&'a str, &'a ArrayD<f64>)>,
) -> Result<(), StateError> {
    crate::io::write_atomically(path, |sink| {
        let mut w = NpzWriter::new(sink);
        for (k, a) in arrays {
            w.add_array(k, a).map_err(|e| format!("{k}: {e}"))?;
        }
        w.finish().map_err(|e| e.to_string())?;
        Ok(())
    })
    .map_err(StateError::from)
}

impl From<crate::io::OutputError> for StateError {
    fn from(e: crate::io::OutputError) -> Self {
        StateError::File {
            file: e.path.display().to_string(),
            reason: e.reason,
        }
    }
}

impl State {
    /// Load `sd/<name>` for every layout entry and `alpha/normal`, `alpha/reduce` with shape
    /// [k, 8]. Missing, extra and mis-shaped keys are errors naming the key and both shapes.
    /// `num_batches_tracked` may be absent (PyTorch 0.3.1 lacked it); it then reads 0.
    /// `momentum_buffer/<name>` keys are checked as in [`State::read_with_momentum`] and
    /// dropped.
    pub fn from_npz(path: &Path, layout: &Layout, k: usize) -> Result<State, StateError> {
        Self::read_with_momentum(path, layout, k).map(|(st, _)| st)
    }

    /// [`State::from_npz`], also returning the SGD momentum buffers when the file has them:
    /// `momentum_buffer/<name>` for every trainable weight (in [`Layout::weights`] order, each
    /// of its weight's shape), or for none.
    pub fn read_with_momentum(
        path: &Path,
        layout: &Layout,
        k: usize,
    ) -> Result<(State, Option<MomentumBuffers>), StateError> {
        let all = read_npz(path)?;
        Self::from_arrays(all, &path.display().to_string(), layout, k)
    }

    /// [`State::read_with_momentum`] of the arrays of a file already read (`file` names it in
    /// errors). Every key must be one of `sd/<layout name>`, `alpha/normal`, `alpha/reduce`,
    /// `momentum_buffer/<trainable weight>`; any other key is an error naming it (so is a
    /// file whose keys lack the `sd/` prefix, reported as such).
    pub fn from_arrays(
        mut all: BTreeMap<String, ArrayD<f64>>,
        file: &str,
        layout: &Layout,
        k: usize,
    ) -> Result<(State, Option<MomentumBuffers>), StateError> {
        let file = file.to_string();
        let tensors = take_tensors(&mut all, &file, layout)?;
        let alpha_normal = take_exact(&mut all, &file, names::ALPHA[0], &[k, 8])?;
        let alpha_reduce = take_exact(&mut all, &file, names::ALPHA[1], &[k, 8])?;
        let mut buffers = Vec::new();
        let mut missing_buffer = None;
        for (name, shape, _) in layout.weights() {
            let key = format!("momentum_buffer/{name}");
            match all.remove(&key) {
                Some(m) => {
                    if m.shape() != shape.as_slice() {
                        return Err(StateError::Shape {
                            file,
                            key,
                            expected: shape.clone(),
                            got: m.shape().to_vec(),
                        });
                    }
                    check_finite(&file, &key, &m)?;
                    buffers.push(m);
                }
                None => {
                    missing_buffer.get_or_insert((key, shape.clone()));
                }
            }
        }
        refuse_extra(all, &file)?;
        let momentum = match (buffers.is_empty(), missing_buffer) {
            (true, _) => None,
            (false, None) => Some(buffers),
            (false, Some((key, expected))) => {
                return Err(StateError::Missing {
                    file,
                    key,
                    expected,
                })
            }
        };
        Ok((
            State {
                tensors,
                alpha_normal,
                alpha_reduce,
            },
            momentum,
        ))
    }

    /// Save as `sd/<name>` plus `alpha/normal`, `alpha/reduce` (atomically).
    pub fn to_npz(&self, path: &Path) -> Result<(), StateError> {
        let keys: Vec<String> = self.tensors.keys().map(|k| format!("sd/{k}")).collect();
        let mut items: Vec<(&str, &ArrayD<f64>)> = keys
            .iter()
            .map(String::as_str)
            .zip(self.tensors.values())
            .collect();
        items.push((names::ALPHA[0], &self.alpha_normal));
        items.push((names::ALPHA[1], &self.alpha_reduce));
        write_npz(path, items)
    }
}

/// Remove `sd/<name>` for every layout entry from `all`, checked for shape and finiteness
/// (`num_batches_tracked` may be absent: PyTorch 0.3.1 lacked it; it then reads 0). A file
/// whose keys lack the `sd/` prefix is reported as such.
pub(crate) fn take_tensors(
    all: &mut BTreeMap<String, ArrayD<f64>>,
    file: &str,
    layout: &Layout,
) -> Result<BTreeMap<String, ArrayD<f64>>, StateError> {
    let file = file.to_string();
    if !all.keys().any(|key| key.starts_with("sd/")) {
        if let Some(key) = all
            .keys()
            .find(|key| layout.shape_of(key).is_some())
            .or_else(|| {
                all.keys()
                    .find(|key| !key.starts_with("alpha/") && !key.starts_with("momentum_buffer/"))
            })
        {
            return Err(StateError::NoPrefix {
                file,
                key: key.clone(),
            });
        }
    }
    let mut tensors = BTreeMap::new();
    for (name, shape, kind) in &layout.entries {
        let key = format!("sd/{name}");
        match all.remove(&key) {
            Some(a) => {
                if a.shape() != shape.as_slice() {
                    return Err(StateError::Shape {
                        file,
                        key,
                        expected: shape.clone(),
                        got: a.shape().to_vec(),
                    });
                }
                check_finite(&file, &key, &a)?;
                tensors.insert(name.clone(), a);
            }
            None if *kind == Kind::NumBatchesTracked => {
                tensors.insert(name.clone(), ArrayD::zeros(IxDyn(&[])));
            }
            None => {
                return Err(StateError::Missing {
                    file,
                    key,
                    expected: shape.clone(),
                })
            }
        }
    }
    Ok(tensors)
}

/// Remove `key` from `all`: present, of shape `shape`, finite.
pub(crate) fn take_exact(
    all: &mut BTreeMap<String, ArrayD<f64>>,
    file: &str,
    key: &str,
    shape: &[usize],
) -> Result<ArrayD<f64>, StateError> {
    let a = all.remove(key).ok_or_else(|| StateError::Missing {
        file: file.to_string(),
        key: key.to_string(),
        expected: shape.to_vec(),
    })?;
    if a.shape() != shape {
        return Err(StateError::Shape {
            file: file.to_string(),
            key: key.to_string(),
            expected: shape.to_vec(),
            got: a.shape().to_vec(),
        });
    }
    check_finite(file, key, &a)?;
    Ok(a)
}

/// An error naming the first key left in `all` (every expected key has been taken).
pub(crate) fn refuse_extra(
    all: BTreeMap<String, ArrayD<f64>>,
    file: &str,
) -> Result<(), StateError> {
    match all.into_iter().next() {
        Some((key, a)) => Err(StateError::Extra {
            file: file.to_string(),
            key,
            got: a.shape().to_vec(),
        }),
        None => Ok(()),
    }
}

fn check_finite(file: &str, key: &str, a: &ArrayD<f64>) -> Result<(), StateError> {
    match a.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(StateError::NonFinite {
            file: file.to_string(),
            key: key.to_string(),
            index,
            value: a.iter().nth(index).copied().unwrap_or(f64::NAN),
        }),
    }
}
