//! `darts init --out-dir DIR`: a starting point for `gradients`, `step` and `compare`: a
//! freshly initialised search state (`state.npz`: every weight and BN buffer of the relaxed
//! network of eqs. 1-2 under its state_dict name, and both alphas, initialised as `search`
//! initialises them) and a pair of batches of embedded CIFAR-10 images (`batch.npz`: the
//! weights' batch from the training half, the architecture's from the other half, normalised
//! as the search normalises them, without augmentation).

use anyhow::{bail, Result};
use darts::darts::init::init_state;
use darts::darts::names;
use darts::darts::params::write_npz;
use darts::data::{embedded_subset, make_batch, search_split};
use darts::search::run::SearchOptions;
use ndarray::ArrayD;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to write state.npz and batch.npz into (created).
    #[arg(long)]
    pub out_dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub init_channels: usize,
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Images in each of the two batches.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<()> {
    let opts = SearchOptions {
        init_channels: a.init_channels,
        layers: a.layers,
        batch_size: a.batch_size,
        seed: a.seed,
        ..SearchOptions::paper()
    };
    opts.validate()?;
    if a.batch_size > 1000 {
        bail!(
            "--batch-size {}: at most 1000 (the embedded images' half)",
            a.batch_size
        );
    }
    let cfg = opts.config();
    cfg.validate(32, 32)?;
    let (state_path, batch_path) = (a.out_dir.join("state.npz"), a.out_dir.join("batch.npz"));
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| anyhow::anyhow!("--out-dir {}: {e}", a.out_dir.display()))?;
    darts::io::check_output_path(&state_path, "--out-dir")?;
    darts::io::check_output_path(&batch_path, "--out-dir")?;
    let mut rng = ChaCha8Rng::seed_from_u64(a.seed);
    let state = init_state(&cfg.layout()?, cfg.k(), &mut rng);
    let (images, _) = embedded_subset();
    let (train_idx, valid_idx) = search_split(2000, opts.train_portion);
    let train = make_batch(&images, &train_idx[..a.batch_size], None, &mut rng, 10)?;
    let valid = make_batch(&images, &valid_idx[..a.batch_size], None, &mut rng, 10)?;
    let labels = |onehot: &ArrayD<f64>| -> ArrayD<f64> {
        onehot
            .map_axis(ndarray::Axis(1), |r| {
                r.iter().position(|&x| x == 1.0).unwrap_or(0) as f64
            })
            .into_dyn()
    };
    state.to_npz(&state_path)?;
    write_npz(
        &batch_path,
        [
            ("x_train", &train.x),
            ("y_train", &labels(&train.onehot)),
            ("x_valid", &valid.x),
            ("y_valid", &labels(&valid.onehot)),
        ],
    )?;
    let weights: usize = cfg
        .layout()?
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    println!(
        "wrote {} (C={} layers={}: {} cells of {} edges x 8 candidate ops, {} weights, alphas \
         {} and {} of [{}, 8]) and {} (two batches of {} images)",
        state_path.display(),
        cfg.c,
        cfg.layers,
        cfg.layers,
        cfg.k(),
        weights,
        names::ALPHA[0],
        names::ALPHA[1],
        cfg.k(),
        batch_path.display(),
        a.batch_size
    );
    Ok(())
}
