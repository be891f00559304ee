//! `darts search --space rnn`: the recurrent cell search on Penn Treebank
//! ([`darts::search::recurrent_run`]), with the reference's hyperparameters as flags.

use super::search::{Args, Preset};
use anyhow::{bail, Context, Result};
use darts::data::ptb::Corpus;
use darts::exec::{Executor, ExecutorUser, Scalar};
use darts::search::recurrent_run::{RnnFinish, RnnSearch, RnnSearchOptions, CHECKPOINT, LOG};
use darts::search::recurrent_step::Dropouts;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

/// The flags only the recurrent search has (train_search.py's names).
#[derive(clap::Args, Debug, Default)]
pub struct RnnFlags {
    /// emsize = nhid = nhidlast [quick 32, paper 300].
    #[arg(long)]
    pub nhid: Option<usize>,
    /// Sequence length [35].
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Evaluation batch size [10].
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    #[command(flatten)]
    pub dropouts: DropoutFlags,
    /// TAR's beta [1e-3].
    #[arg(long)]
    pub beta: Option<f64>,
    /// AR's alpha [0].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Use only the first N rows of the batchified train split [quick 8000, paper all].
    #[arg(long)]
    pub max_train_rows: Option<usize>,
    /// Evaluate on only the first N rows of the batchified valid split [all].
    #[arg(long)]
    pub max_eval_rows: Option<usize>,
    /// Write a checkpoint every N steps (and at every epoch's end; 0: epochs only) [50].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
}

impl RnnFlags {
    /// The recurrent flags given with `--space cnn` are errors.
    pub fn refuse_for_cnn(&self) -> Result<()> {
        let given = [
            ("--nhid", self.nhid.is_some()),
            ("--bptt", self.bptt.is_some()),
            ("--eval-batch-size", self.eval_batch_size.is_some()),
            ("--beta", self.beta.is_some()),
            ("--alpha", self.alpha.is_some()),
            ("--max-train-rows", self.max_train_rows.is_some()),
            ("--max-eval-rows", self.max_eval_rows.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|g| g.1) {
            bail!("{flag} applies to --space rnn only");
        }
        self.dropouts.refuse_for_cnn()
    }
}

/// The recurrent model's five dropout flags (train_search.py's and train.py's names), shared
/// by `search --space rnn` and `train --space rnn`.
#[derive(clap::Args, Debug, Default)]
pub struct DropoutFlags {
    /// Output locked dropout [quick 0, paper 0.75].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// The cell's h dropout [quick 0, paper 0.25].
    #[arg(long)]
    pub dropouth: Option<f64>,
    /// The cell's x dropout [quick 0, paper 0.75].
    #[arg(long)]
    pub dropoutx: Option<f64>,
    /// Input locked dropout [quick 0, paper 0.2].
    #[arg(long)]
    pub dropouti: Option<f64>,
    /// Per-word embedding dropout [search 0; train: quick 0, paper 0.1].
    #[arg(long)]
    pub dropoute: Option<f64>,
}

impl DropoutFlags {
    fn flags(&self) -> [(&'static str, Option<f64>); 5] {
        [
            ("--dropout", self.dropout),
            ("--dropouth", self.dropouth),
            ("--dropoutx", self.dropoutx),
            ("--dropouti", self.dropouti),
            ("--dropoute", self.dropoute),
        ]
    }

    /// Any of them given with `--space cnn` is an error.
    pub fn refuse_for_cnn(&self) -> Result<()> {
        match self.flags().iter().find(|f| f.1.is_some()) {
            Some((flag, _)) => bail!("{flag} applies to --space rnn only"),
            None => Ok(()),
        }
    }

    /// The given ones written into `d`, then every probability checked to lie in [0, 1).
    pub fn apply(&self, d: &mut Dropouts) -> Result<()> {
        let targets = [
            &mut d.output,
            &mut d.h,
            &mut d.x,
            &mut d.input,
            &mut d.embedding,
        ];
        for ((flag, given), target) in self.flags().into_iter().zip(targets) {
            if let Some(p) = given {
                *target = p;
            }
            if !(0.0..1.0).contains(target) {
                bail!(
                    "{flag} {}: a dropout probability must lie in [0, 1)",
                    *target
                );
            }
        }
        Ok(())
    }
}

/// The options of a new recurrent search from the preset and the flags, validated.
fn options(a: &Args) -> Result<RnnSearchOptions> {
    for (flag, given) in [
        ("--init-channels", a.init_channels.is_some()),
        ("--layers", a.layers.is_some()),
        ("--learning-rate-min", a.learning_rate_min.is_some()),
        ("--momentum", a.momentum.is_some()),
        ("--train-portion", a.train_portion.is_some()),
        ("--cutout", a.cutout.is_some()),
        ("--max-images", a.max_images.is_some()),
        ("--all-images", a.all_images),
    ] {
        if given {
            bail!("{flag} applies to --space cnn only (the recurrent search has no such setting)");
        }
    }
    let mut o = match a.preset {
        Preset::Quick => RnnSearchOptions::quick(),
        Preset::Paper => RnnSearchOptions::paper(),
    };
    let r = &a.rnn;
    macro_rules! set {
        ($($src:expr => $dst:expr),* $(,)?) => { $( if let Some(v) = $src { $dst = v; } )* };
    }
    set!(
        a.order => o.order, a.dtype => o.dtype, a.backend => o.backend, a.seed => o.seed,
        a.epochs => o.epochs, a.batch_size => o.batch_size, a.learning_rate => o.lr,
        a.weight_decay => o.hyper.weight_decay, a.grad_clip => o.hyper.clip,
        a.arch_learning_rate => o.hyper.adam.lr, a.arch_weight_decay => o.hyper.adam.weight_decay,
        r.nhid => o.nhid, r.bptt => o.bptt, r.eval_batch_size => o.eval_batch_size,
        r.beta => o.hyper.tar_beta,
        r.alpha => o.hyper.ar_alpha, r.checkpoint_every => o.checkpoint_every,
    );
    if r.max_train_rows.is_some() {
        o.max_train_rows = r.max_train_rows;
    }
    if r.max_eval_rows.is_some() {
        o.max_eval_rows = r.max_eval_rows;
    }
    r.dropouts.apply(&mut o.hyper.dropouts)?;
    use super::Sign::{NonNegative, Positive};
    let h = &o.hyper;
    super::check_flags(
        &[
            ("--learning-rate", o.lr, Positive),
            ("--weight-decay", h.weight_decay, NonNegative),
            ("--grad-clip", h.clip, Positive),
            ("--arch-learning-rate", h.adam.lr, Positive),
            ("--arch-weight-decay", h.adam.weight_decay, NonNegative),
            ("--beta", h.tar_beta, NonNegative),
            ("--alpha", h.ar_alpha, NonNegative),
        ],
        0.0,
    )?;
    for (flag, v, min) in [
        ("--nhid", o.nhid, 1),
        ("--epochs", o.epochs, 1),
        ("--batch-size", o.batch_size, 2),
        ("--eval-batch-size", o.eval_batch_size, 2),
        ("--bptt", o.bptt, 2),
        ("--max-train-rows", o.max_train_rows.unwrap_or(3), 3),
        ("--max-eval-rows", o.max_eval_rows.unwrap_or(2), 2),
    ] {
        if v < min {
            bail!("{flag} {v}: must be at least {min} (train-mode BatchNorm needs two rows; TAR two time steps)");
        }
    }
    if o.nhid > 100_000 || o.batch_size > 1_000_000 || o.bptt > 100_000 {
        bail!(
            "--nhid {} --batch-size {} --bptt {}: absurdly large",
            o.nhid,
            o.batch_size,
            o.bptt
        );
    }
    Ok(o)
}

fn corpus(a: &Args) -> Result<Corpus> {
    Ok(match &a.data_dir {
        Some(d) => Corpus::from_dir(d)?,
        None => Corpus::embedded()?,
    })
}

pub fn run(a: &Args) -> Result<()> {
    for (flag, given) in [
        ("--audit-every", a.audit_every.is_some()),
        ("--neumann-terms", a.neumann_terms.is_some()),
    ] {
        if given {
            bail!(
                "{flag}: the audit covers the convolutional search only so far \
                 (`darts gradients --space rnn` audits one recurrent point)"
            );
        }
    }
    match &a.resume {
        Some(dir) => {
            let (_, meta) = darts::search::checkpoint::read(&dir.join(CHECKPOINT))
                .with_context(|| format!("resuming {}", dir.display()))?;
            if meta["space"] != "rnn" {
                bail!(
                    "{}: not a recurrent search (resume it without --space rnn)",
                    dir.display()
                );
            }
            let o: RnnSearchOptions = serde_json::from_value(meta["options"].clone())
                .with_context(|| format!("{}: options", dir.display()))?;
            super::search::refuse_changed_executor(a, dir, o.backend, o.dtype)?;
            let corpus = corpus(a)?;
            let user = Start {
                opts: o.clone(),
                dir: dir.clone(),
                resume: true,
                corpus,
            };
            darts::exec::open(o.backend, o.dtype, user)?
        }
        None => {
            let o = options(a)?;
            let dir = a.run_dir.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/search-rnn-seed{}-{}",
                    o.seed,
                    format!("{:?}", o.order).to_lowercase()
                ))
            });
            if dir.join(CHECKPOINT).exists() {
                bail!(
                    "{} already holds a search: continue it with --resume {}",
                    dir.display(),
                    dir.display()
                );
            }
            let corpus = corpus(a)?;
            if !a.no_memory_check {
                let flags = format!(
                    "--batch-size {} --bptt {} --order {:?}",
                    o.batch_size, o.bptt, o.order
                )
                .to_lowercase();
                super::check_memory(o.memory_lower_bound(corpus.vocab()), &flags)?;
            }
            let user = Start {
                opts: o.clone(),
                dir,
                resume: false,
                corpus,
            };
            darts::exec::open(o.backend, o.dtype, user)?
        }
    }
}

struct Start {
    opts: RnnSearchOptions,
    dir: PathBuf,
    resume: bool,
    corpus: Corpus,
}

impl ExecutorUser for Start {
    type Output = Result<()>;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Result<()> {
        let mut s = if self.resume {
            RnnSearch::<T>::resume(&self.dir, &self.corpus, exec)
                .with_context(|| format!("resuming {}", self.dir.display()))?
        } else {
            RnnSearch::<T>::new(self.opts, &self.corpus, &self.dir, exec)?
        };
        drive(&mut s)
    }
}

fn drive<T: Scalar>(s: &mut RnnSearch<T>) -> Result<()> {
    let o = s.opts.clone();
    println!(
        "recurrent search: V={} H={} epochs={} batch={} bptt={} order={:?} dtype={:?} seed={} | run folder {}",
        s.cfg.ntoken, o.nhid, o.epochs, o.batch_size, o.bptt, o.order, o.dtype, o.seed,
        s.dir.display()
    );
    let stop = crate::cli::stop_on_ctrl_c();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] row {pos}/{len} {msg} ({elapsed} elapsed, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut on_step = |epoch: usize, row: usize, rows: usize, nll: f64| {
        bar.set_length(rows as u64);
        bar.set_prefix(format!("{}/{}", epoch + 1, o.epochs));
        bar.set_position(row as u64);
        bar.set_message(format!("train ppl {:.1}", nll.exp()));
    };
    let finish = s.run(&stop, &mut on_step)?;
    bar.finish_and_clear();
    let log = std::fs::read_to_string(s.dir.join(LOG)).unwrap_or_default();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        println!(
            "epoch {:>3}  train ppl {:8.2}  valid ppl {:8.2}  (add-one unigram {:.2})  {:.2} s/step",
            v["epoch"].as_u64().unwrap_or(0) + 1,
            v["train_ppl"].as_f64().unwrap_or(f64::NAN),
            v["valid_ppl"].as_f64().unwrap_or(f64::NAN),
            v["unigram_valid_ppl"].as_f64().unwrap_or(f64::NAN),
            v["timing"]["s_per_step"].as_f64().unwrap_or(f64::NAN),
        );
    }
    match finish {
        RnnFinish::Done {
            genotype,
            valid_ppl,
        } => {
            println!(
                "valid perplexity {valid_ppl:.2} = {:.3} x the add-one unigram model's {:.2}",
                valid_ppl / s.unigram_ppl,
                s.unigram_ppl
            );
            println!("genotype = {genotype}");
            println!(
                "done in {:.1} s; log, checkpoint and genotype.txt in {}",
                start.elapsed().as_secs_f64(),
                s.dir.display()
            );
            Ok(())
        }
        RnnFinish::Interrupted { epoch, pos, rows } => {
            println!(
                "interrupted in epoch {} of {}, row {pos} of {rows}; checkpoint written. Continue with: darts search --resume {}",
                epoch + 1,
                o.epochs,
                s.dir.display()
            );
            Err(crate::cli::Interrupted.into())
        }
    }
}
