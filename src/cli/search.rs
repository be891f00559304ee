//! `darts search`: the bilevel architecture search on CIFAR-10 images.

use anyhow::{bail, Context, Result};
use darts::exec::{Backend, Executor, ExecutorUser, Scalar};
use darts::search::architect::Order;
use darts::search::run::{saved_options, DataSource, Dtype, Finish, Search, SearchOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// Minutes on a 2-core CPU: C=4, 5 layers, 4 epochs, batch 32, 2,000 embedded images.
    Quick,
    /// The reference configuration (train_search.py defaults: C=16, 8 layers, 50 epochs, batch 64).
    Paper,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which half of DARTS: the convolutional cells on CIFAR-10 or the recurrent cell on PTB.
    #[arg(long, value_enum, default_value_t = crate::cli::gradients::Space::Cnn)]
    pub space: crate::cli::gradients::Space,
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// Continue the run in this folder from its last checkpoint with the settings it was
    /// started with (other flags are ignored; a --backend or --dtype that disagrees is an
    /// error).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Run folder (default: runs/search-<seed>-<order>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// A real `cifar-10-batches-bin` folder (default: the embedded 4,000-image subset).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Architecture gradient: first order, second (the paper's FD approximation) or exact.
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// Element type of the executor (default f32).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Executor: the CPU reference, or the wgpu GPU path (default cpu).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub init_channels: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub learning_rate_min: Option<f64>,
    #[arg(long)]
    pub momentum: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub grad_clip: Option<f64>,
    #[arg(long)]
    pub train_portion: Option<f64>,
    #[arg(long)]
    pub arch_learning_rate: Option<f64>,
    #[arg(long)]
    pub arch_weight_decay: Option<f64>,
    /// Cutout length (off by default, as in the reference search).
    #[arg(long)]
    pub cutout: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Use every training image (overrides the preset's image budget).
    #[arg(long)]
    pub all_images: bool,
    /// Skip the check that the network fits in the host's available memory.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Audit the architecture gradient every K steps, in f64 on the CPU, on that step's
    /// batches: every approximation against the exact unrolled gradient, the kinks the finite
    /// difference crosses, an eps sweep (log.jsonl `audit` lines; the run's numbers are
    /// unchanged). May be given on --resume.
    #[arg(long)]
    pub audit_every: Option<usize>,
    /// Terms of the audit's Neumann series for the inverse Hessian [default: 5].
    #[arg(long)]
    pub neumann_terms: Option<usize>,
    #[command(flatten)]
    pub hessian: HessianFlags,
    #[command(flatten)]
    pub rnn: crate::cli::search_rnn::RnnFlags,
}

/// The alpha-Hessian flags (conv space only; fixed when a run starts).
#[derive(clap::Args, Debug)]
pub struct HessianFlags {
    /// At the end of every epoch, the dominant eigenvalue (largest |.|) of the Hessian of
    /// L_val in alpha on that epoch's last search batch, by Lanczos on exact HVPs
    /// (log.jsonl `hessian_dominant_eigenvalue`; RobustDARTS, Zela et al. 2020). The search's
    /// numbers are unchanged.
    #[arg(long)]
    pub track_hessian: bool,
    /// DARTS-ES (implies --track-hessian): stop after epoch i (0-based) once the mean
    /// eigenvalue of epochs i-W+1..i exceeds --es-factor times that of epochs i-2W+1..i-W
    /// (W = --es-window), checked from --es-start-epoch, and return the genotype of epoch
    /// i-W. RobustDARTS' code differs (centred windows, a lag of 4 averages, the largest
    /// signed eigenvalue, checked once the returned epoch reaches the start):
    /// proofs/alpha-hessian.md.
    #[arg(long)]
    pub early_stop_hessian: bool,
    /// DARTS-ES window W in epochs, also the lag between the two averages [default: 5].
    #[arg(long)]
    pub es_window: Option<usize>,
    /// DARTS-ES growth factor, > 1 [default: 1.3].
    #[arg(long)]
    pub es_factor: Option<f64>,
    /// First epoch (0-based) at which DARTS-ES may stop [default: 10].
    #[arg(long)]
    pub es_start_epoch: Option<usize>,
    /// Most HVPs (Lanczos steps) per eigenvalue estimate, at most the alpha count (224 for
    /// the paper's cells) [default: 30].
    #[arg(long)]
    pub hessian_hvps: Option<usize>,
    /// Lanczos stops once the residual norm is at most this times |eigenvalue|, in [0, 1)
    /// [default: 1e-3].
    #[arg(long)]
    pub hessian_tol: Option<f64>,
}

impl HessianFlags {
    /// The first hessian flag given, by name (for refusals).
    fn first_given(&self) -> Option<&'static str> {
        [
            (self.track_hessian, "--track-hessian"),
            (self.early_stop_hessian, "--early-stop-hessian"),
            (self.es_window.is_some(), "--es-window"),
            (self.es_factor.is_some(), "--es-factor"),
            (self.es_start_epoch.is_some(), "--es-start-epoch"),
            (self.hessian_hvps.is_some(), "--hessian-hvps"),
            (self.hessian_tol.is_some(), "--hessian-tol"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// Refused with `--space rnn`: the recurrent search does not track its Hessian.
    pub fn refuse_for_rnn(&self) -> Result<()> {
        if let Some(flag) = self.first_given() {
            bail!(
                "{flag}: the alpha-Hessian tracking and DARTS-ES are implemented for the \
                 convolutional search only, not for --space rnn"
            );
        }
        Ok(())
    }

    /// Refused with `--resume`: the series DARTS-ES reads starts at epoch 0, so tracking is
    /// fixed when a run starts.
    fn refuse_on_resume(&self, dir: &std::path::Path) -> Result<()> {
        if let Some(flag) = self.first_given() {
            bail!(
                "{flag}: not accepted with --resume; the run in {} keeps the alpha-Hessian \
                 settings it was started with (the eigenvalue series starts at epoch 0)",
                dir.display()
            );
        }
        Ok(())
    }

    /// The options these flags give; a setting without the flag it refines is an error.
    fn apply(&self, o: &mut darts::search::options::HessianOptions) -> Result<()> {
        let es = self.early_stop_hessian;
        for (given, flag) in [
            (self.es_window.is_some(), "--es-window"),
            (self.es_factor.is_some(), "--es-factor"),
            (self.es_start_epoch.is_some(), "--es-start-epoch"),
        ] {
            if given && !es {
                bail!("{flag}: only meaningful with --early-stop-hessian");
            }
        }
        let track = self.track_hessian || es;
        for (given, flag) in [
            (self.hessian_hvps.is_some(), "--hessian-hvps"),
            (self.hessian_tol.is_some(), "--hessian-tol"),
        ] {
            if given && !track {
                bail!("{flag}: only meaningful with --track-hessian or --early-stop-hessian");
            }
        }
        o.track = track;
        if es {
            let mut rule = darts::search::early_stop::EsRule::default();
            if let Some(w) = self.es_window {
                rule.window = w;
            }
            if let Some(f) = self.es_factor {
                rule.factor = f;
            }
            if let Some(e) = self.es_start_epoch {
                rule.start_epoch = e;
            }
            o.early_stop = Some(rule);
        }
        if let Some(m) = self.hessian_hvps {
            o.lanczos.max_hvps = m;
        }
        if let Some(t) = self.hessian_tol {
            o.lanczos.rel_tol = t;
        }
        Ok(())
    }
}

fn options(a: &Args) -> Result<SearchOptions> {
    let mut o = match a.preset {
        Preset::Quick => SearchOptions::quick(),
        Preset::Paper => SearchOptions::paper(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { o.$f = v; } )* };
    }
    set!(
        order,
        dtype,
        backend,
        seed,
        init_channels,
        layers,
        epochs,
        batch_size,
        learning_rate,
        learning_rate_min,
        momentum,
        weight_decay,
        grad_clip,
        train_portion,
        arch_learning_rate,
        arch_weight_decay
    );
    if a.cutout.is_some() {
        o.cutout = a.cutout;
    }
    if a.max_images.is_some() {
        o.max_images = a.max_images;
    }
    if a.all_images {
        o.max_images = None;
    }
    if let Some(d) = &a.data_dir {
        o.data = DataSource::Dir(d.clone());
    }
    audit_flags(a, &mut o);
    a.hessian.apply(&mut o.hessian)?;
    Ok(o)
}

/// `--audit-every` and `--neumann-terms` (also on --resume: the audit leaves the run's
/// numbers as they are).
fn audit_flags(a: &Args, o: &mut SearchOptions) {
    if a.audit_every.is_some() {
        o.audit_every = a.audit_every;
    }
    if let Some(k) = a.neumann_terms {
        o.neumann_terms = k;
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.space == crate::cli::gradients::Space::Rnn {
        a.hessian.refuse_for_rnn()?;
        return crate::cli::search_rnn::run(&a);
    }
    a.rnn.refuse_for_cnn()?;
    match &a.resume {
        Some(dir) => {
            a.hessian.refuse_on_resume(dir)?;
            let mut o =
                saved_options(dir).with_context(|| format!("resuming {}", dir.display()))?;
            refuse_changed_executor(&a, dir, o.backend, o.dtype)?;
            audit_flags(&a, &mut o);
            o.validate()?;
            let user = Start {
                opts: o.clone(),
                dir: dir.clone(),
                resume: true,
            };
            darts::exec::open(o.backend, o.dtype, user)
                .with_context(|| format!("opening the {:?} executor", o.backend))?
        }
        None => {
            let o = options(&a)?;
            o.validate()?;
            if !a.no_memory_check {
                let flags = format!(
                    "--init-channels {} --layers {} --batch-size {}",
                    o.init_channels, o.layers, o.batch_size
                );
                crate::cli::check_memory(o.memory_lower_bound()?, &flags)?;
            }
            let dir = a.run_dir.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/search-seed{}-{}",
                    o.seed,
                    format!("{:?}", o.order).to_lowercase()
                ))
            });
            let user = Start {
                opts: o.clone(),
                dir,
                resume: false,
            };
            darts::exec::open(o.backend, o.dtype, user)
                .with_context(|| format!("opening the {:?} executor", o.backend))?
        }
    }
}

/// On `--resume`, a `--backend` or `--dtype` that disagrees with the run's is an error (a
/// resumed run keeps every setting that changes its numbers); both searches check it here.
pub(crate) fn refuse_changed_executor(
    a: &Args,
    dir: &std::path::Path,
    backend: Backend,
    dtype: Dtype,
) -> Result<()> {
    for (flag, given, saved) in [
        (
            "--backend",
            a.backend.map(|b| format!("{b:?}")),
            format!("{backend:?}"),
        ),
        (
            "--dtype",
            a.dtype.map(|d| format!("{d:?}")),
            format!("{dtype:?}"),
        ),
    ] {
        if let Some(given) = given.filter(|g| *g != saved) {
            bail!(
                "{flag} {}: the run in {} was started with {} (a resumed run keeps every \
                 setting that changes its numbers)",
                given.to_lowercase(),
                dir.display(),
                saved.to_lowercase()
            );
        }
    }
    Ok(())
}

/// Starts or resumes the run once the executor is open.
struct Start {
    opts: SearchOptions,
    dir: PathBuf,
    resume: bool,
}

impl ExecutorUser for Start {
    type Output = Result<()>;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Result<()> {
        let s = if self.resume {
            Search::<T>::resume(&self.dir, exec)
                .with_context(|| format!("resuming {}", self.dir.display()))?
        } else {
            Search::<T>::new(self.opts, &self.dir, exec)?
        };
        drive(s, self.resume)
    }
}

/// Runs `s` to its end or to Ctrl-C; `resumed` says whether it was loaded from a checkpoint.
fn drive<T: darts::exec::Scalar>(mut s: Search<T>, resumed: bool) -> Result<()> {
    let o = s.opts.clone();
    println!(
        "search: C={} layers={} epochs={} batch={} order={:?} dtype={:?} seed={} | {} | run folder {}",
        o.init_channels,
        o.layers,
        o.epochs,
        o.batch_size,
        o.order,
        o.dtype,
        o.seed,
        s.executor_name(),
        s.run_dir.display()
    );
    let stop = crate::cli::stop_on_ctrl_c();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    // Where this process starts: a resumed run continues at its checkpoint's step and random
    // state, a fresh one at step 0 (tests/search.rs tells the two apart by this line).
    let p = &s.progress;
    let at = if p.epoch < o.epochs {
        format!(
            "epoch {} of {}, step {} of the epoch",
            p.epoch + 1,
            o.epochs,
            if p.in_epoch { p.sums.steps } else { 0 }
        )
    } else {
        format!("all {} epochs done", o.epochs)
    };
    println!(
        "{} at global step {} ({at}), rng word position {}",
        if resumed { "resuming" } else { "starting" },
        p.global_step,
        s.rng_position().word_pos
    );
    let start = Instant::now();
    let mut steps_here = 0usize;
    let mut on_step =
        |epoch: usize, step: usize, per: usize, sums: &darts::search::run::EpochSums| {
            steps_here += 1;
            bar.set_length(per as u64);
            bar.set_prefix(format!("{}/{}", epoch + 1, o.epochs));
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {:.3} acc {:.1}% | {:.2} s/step",
                sums.loss / sums.seen.max(1) as f64,
                100.0 * sums.correct as f64 / sums.seen.max(1) as f64,
                sums.seconds_per_step()
            ));
        };
    let finish = s.run(&stop, &mut on_step)?;
    bar.finish_and_clear();
    let log = std::fs::read_to_string(s.run_dir.join("log.jsonl")).unwrap_or_default();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        println!(
            "epoch {:>3}  lr {:.5}  train loss {:.4} acc {:5.1}%  valid loss {:.4} acc {:5.1}%  {:.2} s/step ({:.1} img/s)",
            v["epoch"].as_u64().unwrap_or(0) + 1,
            v["lr"].as_f64().unwrap_or(f64::NAN),
            v["train_loss"].as_f64().unwrap_or(f64::NAN),
            100.0 * v["train_acc"].as_f64().unwrap_or(f64::NAN),
            v["valid_loss"].as_f64().unwrap_or(f64::NAN),
            100.0 * v["valid_acc"].as_f64().unwrap_or(f64::NAN),
            v["timing"]["s_per_step"].as_f64().unwrap_or(f64::NAN),
            v["timing"]["images_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        if let Some(ev) = v["hessian_dominant_eigenvalue"].as_f64() {
            let h = &v["hessian"];
            println!(
                "           alpha Hessian: dominant eigenvalue {ev:.6e} (residual {:.2e}, {} HVPs{}, {:.1} s)",
                h["residual"].as_f64().unwrap_or(f64::NAN),
                h["hvps"].as_u64().unwrap_or(0),
                if h["converged"].as_bool() == Some(true) { "" } else { ", not converged" },
                v["timing"]["hessian_s"].as_f64().unwrap_or(f64::NAN),
            );
        }
    }
    match finish {
        Finish::Done { genotype } => {
            println!("genotype = {genotype}");
            println!(
                "done in {:.1} s at global step {} ({steps_here} steps run in this process); \
                 log, checkpoint and genotype.txt in {}",
                start.elapsed().as_secs_f64(),
                s.progress.global_step,
                s.run_dir.display()
            );
        }
        Finish::EarlyStopped { genotype, decision } => {
            let factor = o.hessian.early_stop.map_or(f64::NAN, |r| r.factor);
            println!(
                "DARTS-ES: stopped after epoch {} (log.jsonl epoch {}): mean dominant eigenvalue \
                 {:.6e} > {factor} x {:.6e} (the mean {} epochs earlier); returning the genotype \
                 of epoch {} (log.jsonl epoch {})",
                decision.stop_epoch + 1,
                decision.stop_epoch,
                decision.avg_now,
                decision.avg_before,
                decision.stop_epoch - decision.return_epoch,
                decision.return_epoch + 1,
                decision.return_epoch
            );
            println!("genotype = {genotype}");
            println!(
                "done in {:.1} s at global step {} ({steps_here} steps run in this process); \
                 log, checkpoint and genotype.txt in {}",
                start.elapsed().as_secs_f64(),
                s.progress.global_step,
                s.run_dir.display()
            );
        }
        Finish::Interrupted {
            epoch,
            step,
            of,
            global_step,
        } => {
            println!(
                "interrupted in epoch {} of {}, step {step} of {of} ({global_step} steps in all, {steps_here} run in this process); checkpoint written. Continue with: darts search --resume {}",
                epoch + 1,
                o.epochs,
                s.run_dir.display()
            );
            return Err(crate::cli::Interrupted.into());
        }
    }
    Ok(())
}
