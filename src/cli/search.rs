//! `darts search`: the bilevel architecture search on CIFAR-10 images.

use anyhow::{bail, Context, Result};
use darts::search::architect::Order;
use darts::search::run::{DataSource, Dtype, Finish, Search, SearchOptions};
use darts::search::StepMode;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    #[arg(long, value_enum, default_value_t = Preset::Quick)]
    pub preset: Preset,
    /// Continue the run in this folder from its last checkpoint (other flags are ignored).
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
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Executor: the CPU reference, or the wgpu GPU path (f32).
    #[arg(long, value_enum, default_value_t = crate::cli::gradients::Backend::Cpu)]
    pub backend: crate::cli::gradients::Backend,
    /// How a step runs: `host` (gradients from the executor, optimisers on the host in f64;
    /// the default on the CPU) or `resident` (the whole step as one graph with weights,
    /// alphas, BN buffers and optimiser state kept in the executor, on the GPU in device
    /// memory; the default with --backend gpu).
    #[arg(long, value_enum)]
    pub step: Option<StepMode>,
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
}

fn options(a: &Args) -> SearchOptions {
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
    o
}

pub fn run(a: Args) -> Result<()> {
    match &a.resume {
        Some(dir) => {
            let dtype = {
                let s = Search::<f32>::resume(dir)
                    .with_context(|| format!("resuming {}", dir.display()))?;
                s.opts.dtype
            };
            match dtype {
                Dtype::F32 => drive(with_backend(Search::<f32>::resume(dir)?, &a)?),
                Dtype::F64 => drive(with_step(Search::<f64>::resume(dir)?, &a)),
            }
        }
        None => {
            let o = options(&a);
            if o.epochs == 0 || o.batch_size == 0 {
                bail!("--epochs and --batch-size must be at least 1");
            }
            let dir = a.run_dir.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/search-seed{}-{}",
                    o.seed,
                    format!("{:?}", o.order).to_lowercase()
                ))
            });
            if a.backend == crate::cli::gradients::Backend::Gpu && o.dtype == Dtype::F64 {
                bail!("--backend gpu runs in f32; pass --dtype f32");
            }
            match o.dtype {
                Dtype::F32 => drive(with_backend(Search::<f32>::new(o, &dir)?, &a)?),
                Dtype::F64 => drive(with_step(Search::<f64>::new(o, &dir)?, &a)),
            }
        }
    }
}

fn with_backend(s: Search<f32>, a: &Args) -> Result<Search<f32>> {
    let s = match a.backend {
        crate::cli::gradients::Backend::Cpu => s,
        crate::cli::gradients::Backend::Gpu => {
            let gpu = darts::exec::gpu::GpuExecutor::new()?;
            println!("backend: {}", gpu.adapter_info());
            s.with_executor(Box::new(gpu))
        }
    };
    Ok(with_step(s, a))
}

/// Resident steps when asked, else by default on the GPU.
fn with_step<T: darts::exec::Scalar>(s: Search<T>, a: &Args) -> Search<T> {
    s.resident(StepMode::or_default_for(a.step, a.backend) == StepMode::Resident)
}

fn drive<T: darts::exec::Scalar>(mut s: Search<T>) -> Result<()> {
    let o = s.opts.clone();
    println!(
        "search: C={} layers={} epochs={} batch={} order={:?} dtype={:?} seed={} step={} | run folder {}",
        o.init_channels,
        o.layers,
        o.epochs,
        o.batch_size,
        o.order,
        o.dtype,
        o.seed,
        if s.is_resident() { "resident" } else { "host" },
        s.run_dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // First Ctrl-C: finish the current step, checkpoint, exit. A second one kills.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: finishing the current step, then writing a checkpoint");
        });
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut on_step =
        |epoch: usize, step: usize, per: usize, sums: &darts::search::run::EpochSums| {
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
    }
    match finish {
        Finish::Done { genotype } => {
            println!("genotype = {genotype}");
            println!(
                "done in {:.1} s; log, checkpoint and genotype.txt in {}",
                start.elapsed().as_secs_f64(),
                s.run_dir.display()
            );
        }
        Finish::Interrupted { epoch, step } => {
            println!(
                "interrupted in epoch {} after step {step}; checkpoint written. Continue with: darts search --resume {}",
                epoch + 1,
                s.run_dir.display()
            );
        }
    }
    Ok(())
}
