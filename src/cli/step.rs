//! `darts step`: N whole iterations of the reference's search loop body (train_search.py) on
//! one given pair of batches, through the same step graph as `darts search`, with the state
//! after every iteration written to an npz for side-by-side comparison with other
//! implementations.

use super::inputs::{read_batches, read_state, SearchInput};
use anyhow::{bail, Context, Result};
use darts::darts::names;
use darts::darts::params::Kind;
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

/// An output array: float64, or int64 for num_batches_tracked (as PyTorch stores it).
pub enum OutArray {
    F64(ArrayD<f64>),
    I64(ArrayD<i64>),
}

/// The N iterations, once the executor is open.
struct Iterate<'a> {
    input: SearchInput,
    batches: (&'a Batch, &'a Batch),
    a: &'a Args,
}

impl ExecutorUser for Iterate<'_> {
    type Output = Result<BTreeMap<String, OutArray>>;
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
        let mut s = Stepper::new(input.cfg, a.order, hyper, exec, input.state, input.opt)?;
        let mut out = BTreeMap::new();
        for k in 0..a.steps {
            let rep = s
                .step(batches.0, batches.1, a.eta)
                .with_context(|| format!("iteration {k}"))?;
            s.sync_host()?;
            let p = format!("iter{k}");
            out.insert(
                format!("{p}/loss_train"),
                OutArray::F64(ArrayD::from_elem(vec![], rep.loss_train)),
            );
            out.insert(
                format!("{p}/grad_norm"),
                OutArray::F64(ArrayD::from_elem(vec![], rep.grad_norm)),
            );
            out.insert(
                format!("{p}/{}", names::ALPHA[0]),
                OutArray::F64(s.state.alpha_normal.clone()),
            );
            out.insert(
                format!("{p}/{}", names::ALPHA[1]),
                OutArray::F64(s.state.alpha_reduce.clone()),
            );
            for (name, _, kind) in &s.layout.entries {
                let v = &s.state.tensors[name];
                let arr = match kind {
                    Kind::NumBatchesTracked => OutArray::I64(v.mapv(|x| x as i64)),
                    _ => OutArray::F64(v.clone()),
                };
                out.insert(format!("{p}/sd/{name}"), arr);
            }
            println!(
                "iteration {k}: L_train {:.10} | L_val {:.10} | ||grad_w|| {:.6e}",
                rep.loss_train, rep.loss_valid, rep.grad_norm
            );
        }
        // The final optimiser state, under the input's names.
        let bufs = s.opt.sgd_buf.as_ref().expect("a step sets every buffer");
        for ((name, _, _), b) in s.layout.weights().zip(bufs) {
            out.insert(format!("momentum_buffer/{name}"), OutArray::F64(b.clone()));
        }
        for (c, cell) in names::CELLS.into_iter().enumerate() {
            if let (Some(m), Some(v)) = (&s.opt.adam_m[c], &s.opt.adam_v[c]) {
                out.insert(names::adam_m(cell), OutArray::F64(m.clone()));
                out.insert(names::adam_v(cell), OutArray::F64(v.clone()));
                let t = ArrayD::from_elem(vec![], s.opt.adam_t[c] as f64);
                out.insert(format!("adam_step/{cell}"), OutArray::F64(t));
            }
        }
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
    let out = darts::exec::open(a.backend, a.dtype, user).with_context(|| {
        format!("--backend {:?} --dtype {:?}", a.backend, a.dtype).to_lowercase()
    })??;
    write_out(&a.out, &out)?;
    println!(
        "wrote {} arrays to {} ({:.2} s)",
        out.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `out` to `path` (float64 arrays, int64 for num_batches_tracked), atomically and
/// never over a non-regular file ([`darts::io::write_atomically`]).
fn write_out(path: &std::path::Path, out: &BTreeMap<String, OutArray>) -> Result<()> {
    darts::io::write_atomically(path, |sink| {
        let mut w = ndarray_npy::NpzWriter::new(sink);
        for (k, v) in out {
            match v {
                OutArray::F64(a) => w.add_array(k.as_str(), a),
                OutArray::I64(a) => w.add_array(k.as_str(), a),
            }
            .map_err(|e| format!("{k}: {e}"))?;
        }
        w.finish().map(|_| ()).map_err(|e| e.to_string())
    })?;
    Ok(())
}
