//! `darts audit --run DIR`: the audit of `search --audit-every` for a run that was made
//! without it. The run is replayed from its seed and saved options (the same executor and
//! dtype) in a scratch folder, auditing every K steps; since the audit leaves a run's numbers
//! as they are (tests/audit.rs), the replay is the run, which is checked at its end: the
//! replay's alphas must equal the run's checkpoint's. The audit lines go to DIR/audit.jsonl.

use anyhow::{bail, Context, Result};
use darts::darts::names;
use darts::exec::{Executor, ExecutorUser, Scalar};
use darts::search::run::{read_checkpoint, Finish, Search, SearchOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run folder (holds checkpoint.npz and log.jsonl).
    #[arg(long)]
    pub run: PathBuf,
    /// Audit every K steps (steps 0, K, 2K, ... of the run).
    #[arg(long, default_value_t = 50)]
    pub every: usize,
    /// Terms of the Neumann series for the inverse Hessian.
    #[arg(long, default_value_t = 5)]
    pub neumann_terms: usize,
}

struct Replay {
    opts: SearchOptions,
    scratch: PathBuf,
    steps: usize,
}

impl ExecutorUser for Replay {
    type Output = Result<(Vec<String>, [ndarray::ArrayD<f64>; 2])>;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Self::Output {
        let mut s = Search::<T>::new(self.opts, &self.scratch, exec)?;
        println!("replaying {} steps on {}", self.steps, s.executor_name());
        let stop = AtomicBool::new(false);
        let steps = self.steps;
        let bar = indicatif::ProgressBar::new(steps as u64);
        let mut done = 0usize;
        let finish = s.run(&stop, &mut |_, _, _, _| {
            done += 1;
            bar.set_position(done as u64);
            if done >= steps {
                stop.store(true, Ordering::SeqCst);
            }
        })?;
        bar.finish_and_clear();
        if let Finish::Interrupted { global_step, .. } = finish {
            if global_step != steps {
                bail!("the replay stopped at step {global_step}, not {steps}");
            }
        }
        let st = s.state()?;
        let alphas = [st.alpha_normal.clone(), st.alpha_reduce.clone()];
        let log = std::fs::read_to_string(self.scratch.join("log.jsonl"))?;
        let audits = log
            .lines()
            .filter(|l| l.starts_with("{\"audit\""))
            .map(str::to_string)
            .collect();
        Ok((audits, alphas))
    }
}

fn validate(a: &Args) -> Result<()> {
    if a.every == 0 {
        bail!("--every 0: must be at least 1");
    }
    if !(1..=100).contains(&a.neumann_terms) {
        bail!("--neumann-terms {}: must lie in 1..=100", a.neumann_terms);
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    validate(&a)?;
    let recurrent = darts::search::checkpoint::read(&a.run.join("checkpoint.npz"))
        .is_ok_and(|(_, meta)| meta["space"] == "rnn");
    if recurrent {
        bail!(
            "{}: a recurrent search; the audit covers the convolutional search only so far \
             (`darts gradients --space rnn` audits one recurrent point)",
            a.run.display()
        );
    }
    let (arrays, progress) =
        read_checkpoint(&a.run).with_context(|| format!("auditing {}", a.run.display()))?;
    let out = a.run.join("audit.jsonl");
    darts::io::check_output_path(&out, "audit.jsonl")?;
    let steps = progress.global_step;
    if steps == 0 {
        bail!("{}: the run has taken no step yet", a.run.display());
    }
    let mut opts = progress.options.clone();
    opts.audit_every = Some(a.every);
    opts.neumann_terms = a.neumann_terms;
    let scratch = scratch_dir(&a.run);
    let _ = std::fs::remove_dir_all(&scratch);
    let user = Replay {
        opts: opts.clone(),
        scratch: scratch.clone(),
        steps,
    };
    let result = darts::exec::open(opts.backend, opts.dtype, user);
    let _ = std::fs::remove_dir_all(&scratch);
    let (audits, alphas) = result??;
    // The replay must be the run: its alphas equal the checkpoint's.
    for (c, name) in names::ALPHA.iter().enumerate() {
        let saved = arrays
            .get(*name)
            .with_context(|| format!("{}: checkpoint lacks '{name}'", a.run.display()))?;
        let diff = (saved - &alphas[c])
            .iter()
            .fold(0f64, |m, x| m.max(x.abs()));
        if diff != 0.0 {
            bail!(
                "the replay of {} differs from the run at '{name}' by {diff:.3e} after {steps} \
                 steps: the run was not reproduced (another machine or executor build?), so its \
                 audit would not describe it",
                a.run.display()
            );
        }
    }
    let text: String = audits.iter().map(|l| format!("{l}\n")).collect();
    darts::io::write_atomically(&out, |sink| {
        sink.write_all(text.as_bytes()).map_err(|e| e.to_string())
    })?;
    println!(
        "{} audits of steps 0, {}, ... of {} steps written to {} (the replay reproduced the run's \
         alphas exactly)",
        audits.len(),
        a.every,
        steps,
        out.display()
    );
    Ok(())
}

fn scratch_dir(run: &Path) -> PathBuf {
    run.join(".audit-replay")
}
