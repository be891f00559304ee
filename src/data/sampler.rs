//! The search split, per-epoch sampling, the arch step's fresh batch, and exact RNG state
//! capture (cnn/train_search.py).
//!
//! * [`search_split`]: `split = floor(train_portion * n)`; `indices[..split]` train the
//!   weights, `indices[split..n]` are the arch "valid" set (dataset order, no shuffle).
//! * [`EpochSampler`]: `SubsetRandomSampler` + `DataLoader(drop_last=False)`: each epoch a
//!   fresh permutation of the subset, cut into consecutive batches of `batch_size`, the
//!   last one partial. Its [`SamplerState`] (permutation and position) is serialisable, so a
//!   run can stop and resume mid-epoch.
//! * [`fresh_batch`]: the reference's `next(iter(valid_queue))` every step: a new
//!   permutation each time, its first `batch_size` entries (so batches are drawn with
//!   replacement across steps).
//! * [`RngState`]: the full state of a `ChaCha8Rng`.
//!
//! # Random draws
//! A permutation is the forward Fisher-Yates shuffle: for i = 0, 1, .., n - 2 draw
//! `j = rng.random_range(i..n)` (on `u32` when n fits, else `u64`) and swap entries i and
//! j. Positions before i never change after step i, so [`fresh_batch`] stops after
//! `min(batch_size, n - 1)` draws and returns exactly the first `batch_size` entries of the
//! permutation that [`permutation`] would have drawn from the same generator state.
//!
//! # Restoring a generator
//! `ChaCha8Rng` (rand_chacha 0.9) is fully described by its key (`get_seed()`), its stream
//! (`get_stream()`, 0 unless set) and its position in the keystream in 32-bit words
//! (`get_word_pos()`, a u128). `ChaCha8Rng::from_seed(seed)` then `set_stream(stream)` and
//! `set_word_pos(word_pos)` rebuilds a generator whose every later output equals the
//! original's, including mid-block positions (`set_word_pos` regenerates the buffered
//! block and sets the index into it). [`RngState`] stores exactly these three.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::DataError;

/// The reference's search split of `n` training images: `split = floor(train_portion * n)`
/// (clamped to 0..=n; NaN gives 0); returns (`0..split`, `split..n`) = (weights' train
/// set, arch "valid" set).
pub fn search_split(n: usize, train_portion: f64) -> (Vec<usize>, Vec<usize>) {
    // `as usize` saturates: negative and NaN give 0, too large gives usize::MAX.
    let split = ((train_portion * n as f64).floor() as usize).min(n);
    ((0..split).collect(), (split..n).collect())
}

fn uniform_index(rng: &mut ChaCha8Rng, lo: usize, hi: usize) -> usize {
    // Uniform in lo..hi (hi > lo), on u32 whenever it fits, so the stream does not depend
    // on the platform's usize width.
    if hi <= u32::MAX as usize {
        rng.random_range(lo as u32..hi as u32) as usize
    } else {
        rng.random_range(lo as u64..hi as u64) as usize
    }
}

/// The first `k` steps of the forward Fisher-Yates shuffle of `v` (all of it for k >= n-1).
fn shuffle_prefix(v: &mut [usize], k: usize, rng: &mut ChaCha8Rng) {
    let n = v.len();
    for i in 0..k.min(n.saturating_sub(1)) {
        let j = uniform_index(rng, i, n);
        v.swap(i, j);
    }
}

/// A uniformly random permutation of `subset` (forward Fisher-Yates, n - 1 draws).
pub fn permutation(subset: &[usize], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut v = subset.to_vec();
    shuffle_prefix(&mut v, subset.len(), rng);
    v
}

/// `next(iter(queue))` on a fresh `SubsetRandomSampler` iterator: the first
/// `min(batch_size, subset.len())` entries of a new random permutation of `subset`
/// (equal to `permutation(subset, rng)[..batch_size]` from the same generator state, but
/// drawing only `min(batch_size, n - 1)` numbers).
pub fn fresh_batch(subset: &[usize], batch_size: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut v = subset.to_vec();
    shuffle_prefix(&mut v, batch_size, rng);
    v.truncate(batch_size);
    v
}

/// Where an [`EpochSampler`] stands: `epoch` = number of epochs started, `order` = this
/// epoch's permutation of the subset (empty before the first epoch), `pos` = how many of
/// its entries have been handed out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub epoch: u64,
    pub order: Vec<usize>,
    pub pos: usize,
}

/// `SubsetRandomSampler(subset)` under `DataLoader(batch_size, drop_last=False)`.
///
/// Use: `start_epoch(rng)` at the top of every epoch, then `next_batch()` until `None`.
/// `batches_per_epoch()` = ceil(n / batch_size); the last batch has n mod batch_size
/// entries when that is not 0.
#[derive(Clone, Debug)]
pub struct EpochSampler {
    subset: Vec<usize>,
    batch_size: usize,
    state: SamplerState,
}

impl EpochSampler {
    /// A sampler over `subset` (non-empty) with `batch_size` >= 1; no epoch started.
    pub fn new(subset: Vec<usize>, batch_size: usize) -> Result<EpochSampler, DataError> {
        if batch_size == 0 {
            return Err(DataError::ZeroBatchSize);
        }
        if subset.is_empty() {
            return Err(DataError::EmptySubset);
        }
        Ok(EpochSampler {
            subset,
            batch_size,
            state: SamplerState {
                epoch: 0,
                order: Vec::new(),
                pos: 0,
            },
        })
    }

    /// Rebuilds a sampler from a saved state, checking that `state.order` is empty (with
    /// pos 0) or a permutation of `subset`, and that `pos <= order.len()`.
    pub fn from_state(
        subset: Vec<usize>,
        batch_size: usize,
        state: SamplerState,
    ) -> Result<EpochSampler, DataError> {
        let mut s = EpochSampler::new(subset, batch_size)?;
        let bad = |reason: String| Err(DataError::BadSamplerState { reason });
        if state.pos > state.order.len() {
            return bad(format!(
                "position {} is past the end of the order ({} entries)",
                state.pos,
                state.order.len()
            ));
        }
        if !state.order.is_empty() {
            let mut a = state.order.clone();
            let mut b = s.subset.clone();
            a.sort_unstable();
            b.sort_unstable();
            if a != b {
                return bad(format!(
                    "the order ({} entries) is not a permutation of the subset ({} entries)",
                    state.order.len(),
                    s.subset.len()
                ));
            }
        }
        s.state = state;
        Ok(s)
    }

    pub fn subset(&self) -> &[usize] {
        &self.subset
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// ceil(n / batch_size): the number of batches `next_batch` yields per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.subset.len().div_ceil(self.batch_size)
    }

    /// The state to save in a checkpoint (restore with [`EpochSampler::from_state`]).
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Starts a new epoch: draws a fresh permutation of the subset (n - 1 draws).
    pub fn start_epoch(&mut self, rng: &mut ChaCha8Rng) {
        self.state.order = permutation(&self.subset, rng);
        self.state.pos = 0;
        self.state.epoch += 1;
    }

    /// The next `batch_size` entries of this epoch's permutation (fewer for the last
    /// batch), or `None` when the epoch is exhausted (or none was started).
    pub fn next_batch(&mut self) -> Option<Vec<usize>> {
        let order = &self.state.order;
        if self.state.pos >= order.len() {
            return None;
        }
        let end = (self.state.pos + self.batch_size).min(order.len());
        let batch = order[self.state.pos..end].to_vec();
        self.state.pos = end;
        Some(batch)
    }
}

/// The complete state of a `ChaCha8Rng`: key, stream and keystream position in 32-bit
/// words (see the module docs). Serialised with `word_pos` as a decimal string, since JSON
/// numbers cannot hold a u128.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

impl RngState {
    /// The state of `rng` now.
    pub fn capture(rng: &ChaCha8Rng) -> RngState {
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos(),
        }
    }

    /// A generator whose outputs from now on equal those of the captured one. (A captured
    /// `word_pos` is below 2^68, ChaCha's 64-bit counter of 16-word blocks; rand_chacha
    /// reduces a larger, hand-written one modulo 2^68.)
    pub fn restore(&self) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos);
        rng
    }
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<u128>().map_err(|e| {
            serde::de::Error::custom(format!(
                "RngState.word_pos {text:?} is not a decimal u128: {e}"
            ))
        })
    }
}
