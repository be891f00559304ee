//! Data: the CIFAR-10 binary reader, the embedded subset, augmentation, normalisation,
//! splits and batching (the bottom layer: nothing here imports from above).
//!
//! * [`cifar`]: the official CIFAR-10 binary format (`cifar-10-batches-bin`) and the
//!   embedded 4,000 + 1,000 image subset in `data/cifar10-subset/`.
//! * [`augment`]: the reference's transforms (cnn/utils.py `_data_transforms_cifar10`):
//!   RandomCrop(32, padding 4), RandomHorizontalFlip, ToTensor, Normalize, Cutout.
//! * [`ptb`]: the Penn Treebank word-level corpus (embedded in `data/ptb/`), its dictionary,
//!   `batchify` and `get_batch` (rnn/data.py, rnn/utils.py).
//! * [`sampler`]: the search split (cnn/train_search.py), `SubsetRandomSampler` epochs,
//!   the fresh-iterator arch batch, and the exact capture/restore of the RNG.
//!
//! All randomness comes from a caller-owned `rand_chacha::ChaCha8Rng`; nothing here seeds
//! or owns a generator, so a checkpoint that stores [`RngState`] and [`SamplerState`]
//! resumes bit-identically.

use std::path::PathBuf;

use ndarray::ArrayD;

pub mod augment;
pub mod cifar;
pub mod ptb;
pub mod sampler;

pub use augment::{
    cutout_box, make_batch, normalise, test_transform, Augment, Draws, CIFAR10_MEAN, CIFAR10_STD,
};
pub use cifar::{
    embedded_subset, parse_cifar_bytes, read_cifar_bin, read_cifar_dir, Images, CHANNELS,
    CIFAR10_CLASSES, HEIGHT, IMAGE_BYTES, RECORD_BYTES, WIDTH,
};
pub use sampler::{fresh_batch, permutation, search_split, EpochSampler, RngState, SamplerState};

/// A labelled batch: normalised images [N, 3, H, W] and one-hot targets [N, classes].
#[derive(Clone, Debug)]
pub struct Batch {
    pub x: ArrayD<f64>,
    pub onehot: ArrayD<f64>,
}

/// Errors of the data layer. Reader errors name the file and, where there is one, the
/// record (0-based record index within that file).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("CIFAR-10 file {path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CIFAR-10 file {path}: empty (0 bytes; records are {record_bytes} bytes)")]
    Empty { path: PathBuf, record_bytes: usize },
    #[error(
        "CIFAR-10 file {path}: size {file_bytes} is not a multiple of the record size \
         {record_bytes}: record {record} is incomplete ({bytes} of {record_bytes} bytes)"
    )]
    Truncated {
        path: PathBuf,
        file_bytes: usize,
        record: usize,
        bytes: usize,
        record_bytes: usize,
    },
    #[error(
        "CIFAR-10 file {path}: record {record} (byte offset {offset}) has label {label}, \
         outside 0..{classes}"
    )]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        offset: usize,
        label: u8,
        classes: usize,
    },
    #[error("CIFAR-10 folder {path} does not exist or is not a directory")]
    MissingDir { path: PathBuf },
    #[error("CIFAR-10 folder {dir}: batch file {path} is missing")]
    MissingBatch { dir: PathBuf, path: PathBuf },
    #[error(
        "Images: inconsistent buffers: n = {n} but {pixels} pixel bytes (expected {expected_pixels}) \
         and {labels} labels"
    )]
    Inconsistent {
        n: usize,
        pixels: usize,
        expected_pixels: usize,
        labels: usize,
    },
    #[error("make_batch: index {index} (batch position {position}) is outside 0..{n}")]
    IndexOutOfRange {
        index: usize,
        position: usize,
        n: usize,
    },
    #[error("make_batch: image {index} has label {label}, outside 0..{classes} classes")]
    ClassOutOfRange {
        index: usize,
        label: u8,
        classes: usize,
    },
    #[error("make_batch: empty batch (no indices)")]
    EmptyBatch,
    #[error("EpochSampler: batch_size must be at least 1")]
    ZeroBatchSize,
    #[error("EpochSampler: the index subset is empty")]
    EmptySubset,
    #[error("EpochSampler: state does not match the sampler: {reason}")]
    BadSamplerState { reason: String },
}
