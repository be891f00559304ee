//! Normalisation and augmentation exactly as the reference (cnn/utils.py
//! `_data_transforms_cifar10`, used by both train_search.py and train.py):
//!
//! * train: `RandomCrop(32, padding=4)` (zero padding of the uint8 image, so a padded pixel
//!   becomes `-mean/std` after normalisation), `RandomHorizontalFlip(p=0.5)`, `ToTensor`
//!   (x / 255), `Normalize(mean, std)`, then, if enabled, `Cutout(length)` on the
//!   normalised tensor;
//! * test: `ToTensor` + `Normalize` only.
//!
//! # Random draws (part of reproducibility)
//! [`make_batch`] first validates everything (so an error consumes no random numbers), then
//! visits the images in the order of `indices` and, for each, draws from the caller's
//! `ChaCha8Rng` in this order ([`Augment::draw`]):
//! 1. crop row offset `top`, then crop column offset `left`, each
//!    `rng.random_range(0..=2 * crop_padding)` on `u32` (only when `crop_padding > 0`: like
//!    torchvision, a crop of the full size draws nothing);
//! 2. flip: `rng.random::<f64>() < 0.5` (torchvision: `torch.rand(1) < p`), only when
//!    `flip` is on;
//! 3. cutout centre row `y`, then column `x`, each `rng.random_range(0..32)` on `u32`, only
//!    when `cutout` is `Some`.
//!
//! The sequence is that of rand 0.9's `random_range`/`random` on `ChaCha8Rng`; the
//! reference's PyTorch/NumPy streams are not reproduced (cannot be: different
//! generators), only their distributions. tests/data.rs pins a golden value so that a
//! change of rand's sampling algorithm is noticed.

use ndarray::{ArrayD, IxDyn};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::cifar::{Images, CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};
use super::{Batch, DataError};

/// Per-channel CIFAR-10 training-set mean (R, G, B) of pixel / 255, as in cnn/utils.py.
pub const CIFAR10_MEAN: [f64; 3] = [0.49139968, 0.48215827, 0.44653124];
/// Per-channel CIFAR-10 training-set standard deviation (R, G, B), as in cnn/utils.py.
pub const CIFAR10_STD: [f64; 3] = [0.24703233, 0.24348505, 0.26158768];

/// ToTensor then Normalize for one byte of channel `c`: (p / 255 - mean_c) / std_c.
/// Computed in f64 (PyTorch computes it in f32). A zero byte (the crop padding) gives
/// exactly `-mean_c / std_c`.
#[inline]
pub fn normalise(p: u8, c: usize) -> f64 {
    (p as f64 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
}

/// Training augmentation parameters. `crop_padding`: zero padding of RandomCrop(32) (0 =
/// no crop); `flip`: RandomHorizontalFlip(0.5); `cutout`: Cutout length (`None` = off).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    pub crop_padding: usize,
    pub flip: bool,
    pub cutout: Option<usize>,
}

/// The random choices for one image, in the order they are drawn. `top`/`left` are the
/// crop offsets in the padded image (0..=2*padding; `padding` = no shift); `cutout_centre`
/// is (row, column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draws {
    pub top: usize,
    pub left: usize,
    pub flip: bool,
    pub cutout_centre: Option<(usize, usize)>,
}

impl Augment {
    /// The search's train transform (cnn/train_search.py defaults): crop with padding 4,
    /// flip, cutout off.
    pub fn reference_train() -> Augment {
        Augment {
            crop_padding: 4,
            flip: true,
            cutout: None,
        }
    }

    /// The evaluation's train transform with `--cutout` (cnn/train.py): as
    /// [`Augment::reference_train`] plus Cutout(16).
    pub fn reference_train_cutout() -> Augment {
        Augment {
            cutout: Some(16),
            ..Augment::reference_train()
        }
    }

    /// Draws one image's random choices, in the documented order: crop top, crop left,
    /// flip, cutout row, cutout column (each only when that transform is on).
    pub fn draw(&self, rng: &mut ChaCha8Rng) -> Draws {
        let (top, left) = if self.crop_padding > 0 {
            // Padded side 32 + 2p, crop 32: torchvision draws i, j in [0, 2p] inclusive.
            let hi = (2 * self.crop_padding).min(u32::MAX as usize) as u32;
            let top = rng.random_range(0..=hi) as usize;
            let left = rng.random_range(0..=hi) as usize;
            (top, left)
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.random::<f64>() < 0.5;
        let cutout_centre = self.cutout.map(|_| {
            let y = rng.random_range(0..HEIGHT as u32) as usize;
            let x = rng.random_range(0..WIDTH as u32) as usize;
            (y, x)
        });
        Draws {
            top,
            left,
            flip,
            cutout_centre,
        }
    }

    /// The train transform of one CHW uint8 image with given draws, written normalised into
    /// `out` (CHW, 3072 values).
    ///
    /// Output pixel (c, y, x) reads the padded image at row `y + top`, column
    /// `x' + left` with `x' = 31 - x` when flipped (the flip mirrors the crop), i.e. the
    /// original pixel (y + top - p, x' + left - p), or 0 outside the image; then
    /// `normalise`. Cutout with length L and centre (cy, cx) then sets to 0 the rows
    /// clip(cy - L/2, 0, 32) .. clip(cy + L/2, 0, 32) (end exclusive, L/2 = L div 2) and
    /// the columns likewise, in every channel (cnn/utils.py `Cutout`). Any draws are
    /// accepted: offsets past the padding only read more zeros.
    pub fn apply(&self, image: &[u8; IMAGE_BYTES], draws: &Draws, out: &mut [f64; IMAGE_BYTES]) {
        let p = self.crop_padding as i64;
        let (top, left) = (draws.top as i64, draws.left as i64);
        for c in 0..CHANNELS {
            let plane = &image[c * HEIGHT * WIDTH..(c + 1) * HEIGHT * WIDTH];
            for y in 0..HEIGHT {
                let sy = y as i64 + top - p;
                for x in 0..WIDTH {
                    let xc = if draws.flip { WIDTH - 1 - x } else { x };
                    let sx = xc as i64 + left - p;
                    let inside =
                        (0..HEIGHT as i64).contains(&sy) && (0..WIDTH as i64).contains(&sx);
                    let v = if inside {
                        plane[sy as usize * WIDTH + sx as usize]
                    } else {
                        0
                    };
                    out[c * HEIGHT * WIDTH + y * WIDTH + x] = normalise(v, c);
                }
            }
        }
        if let (Some(len), Some((cy, cx))) = (self.cutout, draws.cutout_centre) {
            let (rows, cols) = cutout_box(len, cy, cx);
            for c in 0..CHANNELS {
                for y in rows.clone() {
                    for x in cols.clone() {
                        out[c * HEIGHT * WIDTH + y * WIDTH + x] = 0.0;
                    }
                }
            }
        }
    }
}

/// The rows and columns Cutout zeroes: clip(cy - L/2, 0, 32) .. clip(cy + L/2, 0, 32) and
/// likewise for cx, with L/2 = L div 2 (the reference's `self.length // 2`).
pub fn cutout_box(
    length: usize,
    cy: usize,
    cx: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let half = (length / 2) as i64;
    let clip = |v: i64, hi: usize| v.clamp(0, hi as i64) as usize;
    let (cy, cx) = (cy as i64, cx as i64);
    (
        clip(cy - half, HEIGHT)..clip(cy + half, HEIGHT),
        clip(cx - half, WIDTH)..clip(cx + half, WIDTH),
    )
}

/// The test transform of one image: ToTensor + Normalize only.
pub fn test_transform(image: &[u8; IMAGE_BYTES], out: &mut [f64; IMAGE_BYTES]) {
    for (i, (o, &v)) in out.iter_mut().zip(image.iter()).enumerate() {
        *o = normalise(v, i / (HEIGHT * WIDTH));
    }
}

/// A batch of `images[indices]`: x [N, 3, 32, 32] normalised (train transform with
/// `augment`, the test transform with `None`), onehot [N, classes].
///
/// Everything is validated before any random number is drawn; then the images are
/// transformed in the order of `indices`, each drawing as documented at the top of this
/// module. Errors: inconsistent `images`, an empty `indices`, an index outside 0..n, a
/// label at or past `classes`.
pub fn make_batch(
    images: &Images,
    indices: &[usize],
    augment: Option<&Augment>,
    rng: &mut ChaCha8Rng,
    classes: usize,
) -> Result<Batch, DataError> {
    images.validate()?;
    if indices.is_empty() {
        return Err(DataError::EmptyBatch);
    }
    for (position, &index) in indices.iter().enumerate() {
        if index >= images.n {
            return Err(DataError::IndexOutOfRange {
                index,
                position,
                n: images.n,
            });
        }
        let label = images.labels[index];
        if label as usize >= classes {
            return Err(DataError::ClassOutOfRange {
                index,
                label,
                classes,
            });
        }
    }
    let n = indices.len();
    let mut x = vec![0.0; n * IMAGE_BYTES];
    let mut onehot = vec![0.0; n * classes];
    for ((&index, out), hot) in indices
        .iter()
        .zip(x.chunks_exact_mut(IMAGE_BYTES))
        .zip(onehot.chunks_exact_mut(classes))
    {
        let start = index * IMAGE_BYTES;
        let image: &[u8; IMAGE_BYTES] = images.pixels[start..start + IMAGE_BYTES]
            .try_into()
            .expect("slice of IMAGE_BYTES");
        let out: &mut [f64; IMAGE_BYTES] = out.try_into().expect("chunk of IMAGE_BYTES");
        match augment {
            Some(a) => {
                let d = a.draw(rng);
                a.apply(image, &d, out);
            }
            None => test_transform(image, out),
        }
        hot[images.labels[index] as usize] = 1.0;
    }
    let x = ArrayD::from_shape_vec(IxDyn(&[n, CHANNELS, HEIGHT, WIDTH]), x)
        .expect("x has n * 3072 values");
    let onehot = ArrayD::from_shape_vec(IxDyn(&[n, classes]), onehot)
        .expect("onehot has n * classes values");
    Ok(Batch { x, onehot })
}
