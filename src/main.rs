//! The `darts` command-line tool.

mod cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use darts::check::report;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "darts",
    version,
    about = "DARTS (Liu, Simonyan & Yang, ICLR 2019): architecture search you can audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every primitive's derivatives: VJP vs central differences, the adjoint identity,
    /// and second order (exact H v vs differences of the gradient), in f64 on the CPU.
    Gradcheck {
        /// Output format of the table.
        #[arg(long, value_enum, default_value_t = report::Format::Text)]
        format: report::Format,
        /// Seed for inputs and random directions.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Only run checks whose op name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Skip the whole-network check (the slowest row).
        #[arg(long)]
        no_network: bool,
        /// `gpu` adds a table of GPU f32 against CPU f64 (forward and gradient) per case.
        #[arg(long, value_enum, default_value_t = cli::gradients::Backend::Cpu)]
        backend: cli::gradients::Backend,
    },
    /// Write a freshly initialised search state and a pair of embedded CIFAR-10 batches
    /// (state.npz, batch.npz): a starting point for `gradients`, `step` and `compare`.
    Init(cli::init::Args),
    /// The architecture gradient three ways (first order, the paper's FD second order and
    /// its audit variant, exact) at one state and batch, written to an npz.
    Gradients(cli::gradients::Args),
    /// N whole iterations of the search loop body (architect step, weight step) on one pair
    /// of batches, the state after each written to an npz (for comparison with other
    /// implementations).
    Step(cli::step::Args),
    /// Compare two `gradients` or `step` dumps (ours or another implementation's) key by key
    /// in dependency order, with tolerances derived from our graph at the recorded inputs;
    /// names the first quantity that disagrees. Exit status 1 on disagreement.
    Compare(cli::compare::Args),
    /// Audit a finished (or stopped) search that ran without --audit-every: replay it from
    /// its seed with the audit on, check the replay reproduced it, write DIR/audit.jsonl.
    Audit(cli::audit::Args),
    /// One self-contained HTML page of a search run: losses, softmax(alpha) per edge, the
    /// Hessian eigenvalue, the audit's errors and eps V-curve, a gradient-check table.
    Report(cli::report::Args),
    /// Architecture search (bilevel DARTS) on CIFAR-10, with checkpoints and resume.
    Search(Box<cli::search::Args>),
    /// Train a genotype's evaluation network from scratch on CIFAR-10 (cnn/train.py).
    Train(Box<cli::train::Args>),
}

/// Exit status: 0 done; 1 an error (its message names the flag, file, key or step); 2 a usage
/// error (clap); 130 a run stopped by Ctrl-C after writing its checkpoint.
fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) if e.is::<cli::Interrupted>() => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gradcheck {
            format,
            seed,
            filter,
            no_network,
            backend,
        } => {
            let start = Instant::now();
            let (suite, outcomes) =
                darts::check::gradcheck::run_suite(seed, !no_network, filter.as_deref())
                    .context("running the gradient-check suite")?;
            if let (Some(f), true) = (&filter, outcomes.is_empty()) {
                anyhow::bail!(
                    "--filter '{f}' selects none of the {} checks (their ops: {})",
                    suite.len(),
                    suite
                        .iter()
                        .map(|c| c.op.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            print!("{}", report::render(&outcomes, format));
            if format != report::Format::Json {
                println!("({:.2} s)", start.elapsed().as_secs_f64());
            }
            let mut ok = outcomes.iter().all(|o| o.pass());
            if backend == cli::gradients::Backend::Gpu {
                let mut gpu = darts::exec::open_as::<f32>(darts::exec::Backend::Gpu)
                    .context("--backend gpu needs a GPU adapter")?;
                let mut rows = Vec::new();
                for (i, case) in suite.iter().enumerate() {
                    if filter
                        .as_ref()
                        .is_some_and(|f| !case.op.contains(f.as_str()))
                    {
                        continue;
                    }
                    rows.push(darts::check::gpu_compare::gpu_vs_cpu(
                        case,
                        gpu.as_mut(),
                        i as u64,
                    )?);
                }
                ok &= rows.iter().all(|r| r.pass);
                if format == report::Format::Json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!("\nGPU: {}", gpu.name());
                    match darts::exec::open_as::<f64>(darts::exec::Backend::Gpu) {
                        Ok(g) => println!("f64 kernels: available on {}", g.name()),
                        Err(e) => println!("f64 kernels: unavailable: {e}"),
                    }
                    print!(
                        "{}",
                        darts::check::gpu_compare::render(
                            &rows,
                            format == report::Format::Markdown
                        )
                    );
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Gradients(args) => {
            cli::gradients::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init(args) => {
            cli::init::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            cli::report::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => {
            cli::audit::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare(args) => {
            cli::compare::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Step(args) => {
            cli::step::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Search(args) => {
            cli::search::run(*args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            cli::train::run(*args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
