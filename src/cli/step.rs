//! `darts step`: N whole iterations of the reference's search loop body (train_search.py) on
//! one given pair of batches, through the same step graph as `darts search`, with the state
//! after every iteration written to an npz for side-by-side comparison with other
//! implementations.

use super::inputs::{read_batches, read_state, SearchInput};
use anyhow::{bail, Context, Result};
use darts::data::Batch;
use darts::exec::{Backend, Dtype, Executor, ExecutorUser, Scalar};
use darts::search::architect::Order;
use darts::search::step_graph::StepHyper;
use darts::search::stepper::Stepper;
use darts::step::optim::{AdamHyper, SgdHyper};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// State npz: `sd/<state_dict name>` for every weight and BN buffer, `alpha/normal` and
    /// `alpha/reduce` ([k, 8]); optionally `momentum_buffer/<name>` for every weight and,
    /// per alpha, `adam_m/<a>`, `adam_v/<a>` and `adam_step/<a>` (or one `adam_step`).
    #[arg(long)]
    pub state: PathBuf,
    /// Batch npz: x_train, y_train (the weights' batch), x_valid, y_valid (the architecture's
    /// search batch); NCHW floats and integer labels. Every iteration uses the same two.
    #[arg(long)]
    pub batch: PathBuf,
    /// Output npz (see the README for its keys).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of iterations.
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
    /// Architecture gradient: first order, second (the paper's FD approximation) or exact.
    #[arg(long, value_enum)]
    pub order: Order,
    /// The weights' learning rate (constant; also xi of the unrolled step).
    #[arg(long, default_value_t = 0.025)]
    pub eta: f64,
    #[arg(long, default_value_t = 3e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 3e-4)]
    pub arch_learning_rate: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub arch_weight_decay: f64,
    /// Maximum total norm of the weight gradient (clip_grad_norm).
    #[arg(long, default_value_t = 5.0)]
    pub grad_clip: f64,
    #[arg(long, value_enum, default_value_t = Dtype::F64)]
    pub dtype: Dtype,
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Stem multiplier and cell multiplier: read from the state's shapes; when given, they
    /// must agree with them.
    #[arg(long)]
    pub stem_multiplier: Option<usize>,
    #[arg(long)]
    pub multiplier: Option<usize>,
}

/// Every flag's range, before any work.
fn validate(a: &Args) -> Result<()> {
    if a.steps == 0 || a.steps > 1_000_000 {
        bail!("--steps {}: must lie in 1..=1000000", a.steps);
    }
    use super::Sign::{NonNegative, Positive};
    super::check_flags(
        &[
            ("--eta", a.eta, Positive),
            ("--weight-decay", a.weight_decay, NonNegative),
            ("--arch-learning-rate", a.arch_learning_rate, Positive),
            ("--arch-weight-decay", a.arch_weight_decay, NonNegative),
            ("--grad-clip", a.grad_clip, Positive),
        ],
        a.momentum,
    )
}

/// The N iterations, once the executor is open.
struct Iterate<'a> {
    input: SearchInput,
    batches: (&'a Batch, &'a Batch),
    a: &'a Args,
}

impl ExecutorUser for Iterate<'_> {
    type Output = Result<BTreeMap<String, ArrayD<f64>>>;
    fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Self::Output {
        let Iterate { input, batches, a } = self;
        println!("backend: {}", exec.name());
        let hyper = StepHyper {
            sgd: SgdHyper {
                momentum: a.momentum,
                weight_decay: a.weight_decay,
                grad_clip: a.grad_clip,
            },
            adam: AdamHyper::architect(a.arch_learning_rate, a.arch_weight_decay),
        };
        let mut s = Stepper::new(input.cfg, a.order, hyper, exec, input.state, input.opt)?
            .reporting_restored();
        let mut out = BTreeMap::new();
        for k in 0..a.steps {
            let rep = s
                .step(batches.0, batches.1, a.eta)
                .with_context(|| format!("iteration {k}"))?;
            s.sync_host()?;
            out.extend(s.iteration_arrays(k, &rep));
            println!(
                "iteration {k}: L_train {:.10} | L_val {:.10} | ||grad_w|| {:.6e}",
                rep.loss_train, rep.loss_valid, rep.grad_norm
            );
        }
        // The final optimiser state, under the input's names.
        out.extend(s.optimiser_arrays());
        Ok(out)
    }
}

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    validate(&a)?;
    darts::io::check_output_path(&a.out, "--out")?;
    let input = read_state(&a.state, a.stem_multiplier, a.multiplier)?;
    let (train, valid) = read_batches(&a.batch, &input.cfg)?;
    let cfg = input.cfg;
    println!(
        "network: C={} layers={} | train {:?} valid {:?} | order {:?} | {} iterations | {:?}{}",
        cfg.c,
        cfg.layers,
        train.x.shape(),
        valid.x.shape(),
        a.order,
        a.steps,
        a.dtype,
        if input.has_momentum {
            ""
        } else {
            " | no momentum buffers given: PyTorch's first step"
        }
    );
    let user = Iterate {
        input,
        batches: (&train, &valid),
        a: &a,
    };
    let mut out = darts::exec::open(a.backend, a.dtype, user).with_context(|| {
        format!("--backend {:?} --dtype {:?}", a.backend, a.dtype).to_lowercase()
    })??;
    let settings = [
        ("order", order_code(a.order)),
        ("eta", a.eta),
        ("weight_decay", a.weight_decay),
        ("momentum", a.momentum),
        ("arch_learning_rate", a.arch_learning_rate),
        ("arch_weight_decay", a.arch_weight_decay),
        ("grad_clip", a.grad_clip),
        ("steps", a.steps as f64),
    ];
    super::provenance::record(&mut out, &a.state, &a.batch, &settings)?;
    write_out(&a.out, &out)?;
    println!(
        "wrote {} arrays to {} ({:.2} s)",
        out.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The architecture gradient's order as a recorded setting: 0 first, 1 second, 2 exact.
pub fn order_code(order: Order) -> f64 {
    match order {
        Order::First => 0.0,
        Order::Second => 1.0,
        Order::Exact => 2.0,
    }
}

/// Writes `out` to `path` (float64 arrays; int64 for the iterations' num_batches_tracked, as
/// PyTorch stores it), atomically and never over a non-regular file
/// ([`darts::io::write_atomically`]).
fn write_out(path: &std::path::Path, out: &BTreeMap<String, ArrayD<f64>>) -> Result<()> {
    darts::io::write_atomically(path, |sink| {
        let mut w = ndarray_npy::NpzWriter::new(sink);
        for (k, v) in out {
            if k.starts_with("iter") && k.ends_with("num_batches_tracked") {
                w.add_array(k.as_str(), &v.mapv(|x| x as i64))
            } else {
                w.add_array(k.as_str(), v)
            }
            .map_err(|e| format!("{k}: {e}"))?;
        }
        w.finish().map(|_| ()).map_err(|e| e.to_string())
    })?;
    Ok(())
}
