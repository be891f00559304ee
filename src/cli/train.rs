//! `darts train`: train a genotype's evaluation network from scratch on CIFAR-10, as the
//! reference's cnn/train.py does (see `darts::search::train_eval`).

use anyhow::{bail, Context, Result};
use darts::darts::genotype::{named, Genotype};
use darts::train::{train, DataSource, Dtype, EpochRecord, Reporting, TrainOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A few minutes on a 2-core CPU: C = 8, 5 cells, 6 epochs, the embedded subset.
    Quick,
    /// The paper's recipe (train.py --auxiliary --cutout, 600 epochs, C = 36, 20 cells).
    Paper,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which half of DARTS: the convolutional network on CIFAR-10 or the recurrent language
    /// model on PTB.
    #[arg(long, value_enum, default_value_t = crate::cli::gradients::Space::Cnn)]
    pub space: crate::cli::gradients::Space,
    /// The genotype: its text form as the search prints it
    /// ("Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], ...)"),
    /// or one of the reference's names DARTS_V1, DARTS_V2, DARTS (= DARTS_V2).
    #[arg(
        long,
        conflicts_with = "genotype_file",
        required_unless_present = "genotype_file"
    )]
    pub genotype: Option<String>,
    /// A file holding the genotype's text form (or a name).
    #[arg(long)]
    pub genotype_file: Option<PathBuf>,
    /// Starting values of every option; the flags below override them.
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// A `cifar-10-batches-bin` folder (default: the embedded 4,000 + 1,000 image subset).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Folder for options.json, log.jsonl, weights.npz, summary.json
    /// (default: runs/train-<unix time>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Batch size of training and testing (train.py: 96; quick: 64).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Initial learning rate, cosine-annealed to 0 (train.py: 0.025).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// SGD momentum (train.py: 0.9).
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Coupled L2 weight decay on every parameter (train.py: 3e-4).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Epochs (train.py: 600; quick: 6).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Initial channels C; the stem has 3C (train.py: 36; quick: 8).
    #[arg(long)]
    pub init_channels: Option<usize>,
    /// Number of cells (train.py: 20; quick: 5).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Auxiliary head (`--auxiliary` or `--auxiliary false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub auxiliary: Option<bool>,
    /// Weight of the auxiliary loss (train.py: 0.4).
    #[arg(long)]
    pub auxiliary_weight: Option<f64>,
    /// Cutout (`--cutout` or `--cutout false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cutout: Option<bool>,
    /// Cutout patch side (train.py: 16).
    #[arg(long)]
    pub cutout_length: Option<usize>,
    /// Final drop-path probability, ramped linearly from 0 (train.py: 0.2).
    #[arg(long)]
    pub drop_path_prob: Option<f64>,
    /// Maximum total gradient norm (train.py: 5).
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Seed of initialisation, data order, augmentation and drop path (train.py: 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// f32 (as the reference) or f64.
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Executor: the CPU reference, or the wgpu GPU path (f32).
    #[arg(long, value_enum)]
    pub backend: Option<darts::exec::Backend>,
    /// Use only the first n training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first n test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Skip the check that the network fits in the host's available memory.
    #[arg(long)]
    pub no_memory_check: bool,
    #[command(flatten)]
    pub rnn: crate::cli::train_rnn::RnnTrainFlags,
}

/// The genotype from a name or its text form; parse errors point at the token.
fn parse_genotype(text: &str, source: &str) -> Result<Genotype> {
    let t = text.trim();
    if let Some(g) = named(t) {
        return Ok(g);
    }
    if !t.starts_with("Genotype") && !t.contains('(') {
        bail!("{source}: unknown genotype name '{t}' (known: DARTS_V1, DARTS_V2, DARTS, or the text form Genotype(normal=[...], ...))");
    }
    t.parse::<Genotype>()
        .with_context(|| format!("{source}: cannot read the genotype"))
}

/// The preset with every given flag applied.
pub fn options(a: &Args) -> TrainOptions {
    let mut o = match a.preset {
        Preset::Quick => TrainOptions::quick(),
        Preset::Paper => TrainOptions::paper(),
    };
    macro_rules! set {
        ($($f:ident),*) => {$( if let Some(v) = a.$f { o.$f = v; } )*};
    }
    set!(
        batch_size,
        learning_rate,
        momentum,
        weight_decay,
        epochs,
        init_channels,
        layers,
        auxiliary,
        auxiliary_weight,
        cutout,
        cutout_length,
        drop_path_prob,
        grad_clip,
        seed,
        dtype,
        backend
    );
    if a.train_limit.is_some() {
        o.train_limit = a.train_limit;
    }
    if a.test_limit.is_some() {
        o.test_limit = a.test_limit;
    }
    if let Some(d) = &a.data_dir {
        o.data = DataSource::Dir(d.clone());
    }
    o
}

fn print_epoch(r: &EpochRecord, epochs: usize) {
    println!(
        "epoch {:>3}/{epochs}  lr {:.6e}  drop_path {:.5}  train loss {:.4} acc {:6.2}%  \
         test loss {:.4} acc {:6.2}%  ({:.1} s)",
        r.epoch + 1,
        r.lr,
        r.drop_path_prob,
        r.train_loss,
        r.train_acc,
        r.test_loss,
        r.test_acc,
        r.seconds
    );
}

pub fn run(a: Args) -> Result<()> {
    if a.space == crate::cli::gradients::Space::Rnn {
        return crate::cli::train_rnn::run(&a);
    }
    a.rnn.refuse_for_cnn()?;
    let genotype = match (&a.genotype, &a.genotype_file) {
        (Some(t), _) => parse_genotype(t, "--genotype")?,
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading --genotype-file {}", f.display()))?;
            parse_genotype(&text, &f.display().to_string())?
        }
        (None, None) => bail!("give --genotype or --genotype-file"),
    };
    let opts = options(&a);
    opts.validate()?;
    if !a.no_memory_check {
        let need = opts.memory_lower_bound(&genotype)?;
        crate::cli::check_memory(
            need,
            &format!(
                "--init-channels {} --layers {} --batch-size {}",
                opts.init_channels, opts.layers, opts.batch_size
            ),
        )?;
    }
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("runs/train-{secs}"))
    });
    println!("genotype: {genotype}");
    println!(
        "C = {}, {} cells, {} epochs, batch {}, lr {}, auxiliary {}, cutout {}, drop path {}, \
         {:?} on {:?}, run folder {}",
        opts.init_channels,
        opts.layers,
        opts.epochs,
        opts.batch_size,
        opts.learning_rate,
        opts.auxiliary,
        opts.cutout,
        opts.drop_path_prob,
        opts.dtype,
        opts.backend,
        run_dir.display()
    );
    let epochs = opts.epochs;
    let mut on_epoch = |r: &EpochRecord| print_epoch(r, epochs);
    let report = train(
        &opts,
        &genotype,
        Reporting {
            run_dir: Some(run_dir),
            progress: true,
            on_epoch: Some(&mut on_epoch),
        },
    )?;
    println!(
        "train images {}, test images {}, {:.1} s",
        report.train_images, report.test_images, report.seconds
    );
    println!(
        "final test accuracy: {:.2}% (epoch {})",
        report.final_test_acc,
        report.epochs.len()
    );
    println!(
        "{:.6} M parameters (count_parameters_in_MB: auxiliary head excluded; {} with it)",
        report.parameters as f64 / 1e6,
        report.parameters_with_aux
    );
    Ok(())
}
