//! The official CIFAR-10 binary format (Krizhevsky 2009, `cifar-10-batches-bin`) and the
//! embedded real subset in `data/cifar10-subset/` (source, licence and checksums in its
//! README).
//!
//! A file is a sequence of [`RECORD_BYTES`] = 3073-byte records: one label byte (0..9),
//! then 1024 red, 1024 green and 1024 blue bytes, each channel a 32x32 image in row-major
//! order. [`Images`] keeps exactly this channel-major (CHW) pixel layout.

use std::path::{Path, PathBuf};

use super::DataError;

/// Image height and width (pixels).
pub const HEIGHT: usize = 32;
pub const WIDTH: usize = 32;
/// Colour channels, in file order R, G, B.
pub const CHANNELS: usize = 3;
/// Pixel bytes per image: 3 * 32 * 32 = 3072.
pub const IMAGE_BYTES: usize = CHANNELS * HEIGHT * WIDTH;
/// Bytes per record: 1 label byte + 3072 pixel bytes.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of CIFAR-10 classes (0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog,
/// 6 frog, 7 horse, 8 ship, 9 truck).
pub const CIFAR10_CLASSES: usize = 10;

/// Training batch files of `cifar-10-batches-bin`, concatenated in this order.
pub const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// Test batch file of `cifar-10-batches-bin`.
pub const TEST_BATCH: &str = "test_batch.bin";

/// A set of labelled uint8 images, `pixels[i * 3072 ..][.. 3072]` being image `i` in CHW
/// order (1024 R, 1024 G, 1024 B, each 32x32 row-major), `labels[i]` its class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub n: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Images {
    /// Checks that the buffers agree with `n` (the fields are public, so a hand-built
    /// value may not).
    pub fn validate(&self) -> Result<(), DataError> {
        let expected_pixels = self.n.checked_mul(IMAGE_BYTES);
        if expected_pixels != Some(self.pixels.len()) || self.labels.len() != self.n {
            return Err(DataError::Inconsistent {
                n: self.n,
                pixels: self.pixels.len(),
                expected_pixels: expected_pixels.unwrap_or(usize::MAX),
                labels: self.labels.len(),
            });
        }
        Ok(())
    }

    /// The 3072 CHW pixel bytes of image `i` (`None` past the end).
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let start = i.checked_mul(IMAGE_BYTES)?;
        self.pixels.get(start..start.checked_add(IMAGE_BYTES)?)
    }

    /// Number of images of each class `0..classes` (labels at or past `classes` are not
    /// counted).
    pub fn histogram(&self, classes: usize) -> Vec<usize> {
        let mut h = vec![0; classes];
        for &l in &self.labels {
            if let Some(c) = h.get_mut(l as usize) {
                *c += 1;
            }
        }
        h
    }

    /// The concatenation of `parts`, in order.
    pub fn concat(parts: Vec<Images>) -> Images {
        let mut out = Images {
            n: 0,
            pixels: Vec::new(),
            labels: Vec::new(),
        };
        for p in parts {
            out.n += p.n;
            out.pixels.extend_from_slice(&p.pixels);
            out.labels.extend_from_slice(&p.labels);
        }
        out
    }
}

/// Parses the bytes of one CIFAR-10 binary file; `path` is used only to name the file in
/// errors. Errors: empty input, a size that is not a multiple of 3073 (the incomplete
/// record is `len / 3073`, holding `len % 3073` bytes), a label byte of 10 or more.
pub fn parse_cifar_bytes(bytes: &[u8], path: &Path) -> Result<Images, DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            record_bytes: RECORD_BYTES,
        });
    }
    let rem = bytes.len() % RECORD_BYTES;
    if rem != 0 {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            file_bytes: bytes.len(),
            record: bytes.len() / RECORD_BYTES,
            bytes: rem,
            record_bytes: RECORD_BYTES,
        });
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (record, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label as usize >= CIFAR10_CLASSES {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                record,
                offset: record * RECORD_BYTES,
                label,
                classes: CIFAR10_CLASSES,
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(Images { n, pixels, labels })
}

/// Reads one CIFAR-10 binary file (e.g. `data_batch_1.bin`, 10,000 records).
pub fn read_cifar_bin(path: &Path) -> Result<Images, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_cifar_bytes(&bytes, path)
}

/// Reads the official `cifar-10-batches-bin` folder: train = `data_batch_1.bin` ..
/// `data_batch_5.bin` concatenated in that order (50,000 images in dataset order, the
/// order the reference's split indexes), test = `test_batch.bin`. Every file's presence is
/// checked before any is read.
pub fn read_cifar_dir(dir: &Path) -> Result<(Images, Images), DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let train_paths: Vec<PathBuf> = TRAIN_BATCHES.iter().map(|f| dir.join(f)).collect();
    let test_path = dir.join(TEST_BATCH);
    for p in train_paths.iter().chain(std::iter::once(&test_path)) {
        if !p.is_file() {
            return Err(DataError::MissingBatch {
                dir: dir.to_path_buf(),
                path: p.clone(),
            });
        }
    }
    let train = train_paths
        .iter()
        .map(|p| read_cifar_bin(p))
        .collect::<Result<Vec<_>, _>>()?;
    let test = read_cifar_bin(&test_path)?;
    Ok((Images::concat(train), test))
}

const SUBSET_TRAIN: &[u8] = include_bytes!("../../data/cifar10-subset/train_4000.bin");
const SUBSET_TEST: &[u8] = include_bytes!("../../data/cifar10-subset/test_1000.bin");
const _: () = assert!(SUBSET_TRAIN.len() == 4000 * RECORD_BYTES);
const _: () = assert!(SUBSET_TEST.len() == 1000 * RECORD_BYTES);

/// The embedded real subset: (train, test) = (CIFAR-10 training images 0..3999 in
/// dataset order, the first 1,000 images of `test_batch`), from
/// `data/cifar10-subset/{train_4000,test_1000}.bin` (compiled in with `include_bytes!`).
pub fn embedded_subset() -> (Images, Images) {
    // The sizes are asserted at compile time above; the labels are compile-time constants
    // checked by tests/data.rs::embedded_subset_label_heads_and_histograms, so parsing
    // cannot fail on any build that passes its tests.
    let parse = |bytes, name: &str| {
        parse_cifar_bytes(bytes, Path::new(name))
            .unwrap_or_else(|e| panic!("embedded CIFAR-10 subset is corrupt: {e}"))
    };
    (
        parse(SUBSET_TRAIN, "data/cifar10-subset/train_4000.bin"),
        parse(SUBSET_TEST, "data/cifar10-subset/test_1000.bin"),
    )
}
