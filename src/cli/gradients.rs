//! `darts gradients`: the architecture gradient three ways at one state and batch, written to
//! an npz for side-by-side comparison with other implementations.

use super::inputs::{read_batches, read_state, SearchInput};
use anyhow::{bail, Context, Result};
use darts::darts::names;
use darts::data::Batch;
use darts::exec::{Executor, ExecutorUser, Scalar};
use darts::search::gradients::GradientsGraph;
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// State npz: `sd/<state_dict name>` for weights and BN buffers, `alpha/normal` and
    /// `alpha/reduce` ([k, 8]); optionally `momentum_buffer/<name>` for every weight.
    #[arg(long)]
    pub state: PathBuf,
    /// Batch npz: x_train, y_train, x_valid, y_valid (NCHW floats, int64 labels).
    #[arg(long)]
    pub batch: PathBuf,
    /// Output npz.
    #[arg(long)]
    pub out: PathBuf,
    /// Which half of DARTS: the convolutional cells (CIFAR-10) or the recurrent cell (PTB).
    #[arg(long, value_enum, default_value_t = Space::Cnn)]
    pub space: Space,
    /// xi of the unrolled step (the reference uses the weight learning rate eta; used as given,
    /// with no seq_len/bptt scaling) [default: 0.025 cnn, 20 rnn].
    #[arg(long)]
    pub eta: Option<f64>,
    /// Coupled weight decay lambda of the unrolled step [default: 3e-4 cnn, 5e-7 rnn].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// SGD momentum mu (applies to the momentum buffer, when the state has one) [default: 0.9;
    /// cnn only: the recurrent search's SGD has none].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// The recurrent architect's gradient clip (`_clip`, applied to the train gradient of the
    /// unrolled step and to v) [default: 0.25; rnn only].
    #[arg(long)]
    pub clip: Option<f64>,
    #[arg(long, value_enum, default_value_t = Dtype::F64)]
    pub dtype: Dtype,
    /// Executor: the CPU reference, or the wgpu GPU path (f64 only where the adapter offers
    /// it and passes the f64 self-check).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Stem channels = stem_multiplier * C (the reference fixes 3). Read from the state's
    /// shapes; when given, it must agree with them.
    #[arg(long)]
    pub stem_multiplier: Option<usize>,
    /// Intermediate nodes concatenated per cell (the reference fixes 4). Read from the
    /// state's shapes; when given, it must agree with them.
    #[arg(long)]
    pub multiplier: Option<usize>,
}

pub use darts::exec::{Backend, Dtype};

/// The two search spaces of the paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Space {
    /// Convolutional cells on CIFAR-10.
    Cnn,
    /// The recurrent cell on Penn Treebank.
    Rnn,
}

/// The settings of `darts gradients --space cnn` with their defaults filled in.
struct CnnSettings {
    eta: f64,
    weight_decay: f64,
    momentum: f64,
}

/// What `darts gradients` computes once the executor is open.
struct Compute<'a> {
    input: &'a SearchInput,
    train: &'a Batch,
    valid: &'a Batch,
    a: &'a CnnSettings,
}

impl ExecutorUser for Compute<'_> {
    type Output = Result<(BTreeMap<String, ArrayD<f64>>, [f64; 2])>;
    fn with<T: Scalar>(self, mut exec: Box<dyn Executor<T>>) -> Self::Output {
        let Compute {
            input,
            train,
            valid,
            a,
        } = self;
        println!("backend: {}", exec.name());
        let gg = GradientsGraph::build(
            &input.cfg,
            train.x.shape(),
            valid.x.shape(),
            a.momentum,
            a.weight_decay,
        )?;
        let e = gg
            .evaluate(
                exec.as_mut(),
                &input.cfg,
                &input.state,
                &input.opt,
                train,
                valid,
                a.eta,
            )
            .context("running the gradients graph")?;
        Ok((e.arrays, [e.r_paper, e.r_audit]))
    }
}

/// The validated flags of `darts gradients --space cnn`, before any work.
fn validate(a: &Args) -> Result<CnnSettings> {
    use super::Sign::{NonNegative, Positive};
    if a.clip.is_some() {
        bail!(
            "--clip applies to --space rnn only (the conv architect's unrolled step does not clip)"
        );
    }
    let s = CnnSettings {
        eta: a.eta.unwrap_or(0.025),
        weight_decay: a.weight_decay.unwrap_or(3e-4),
        momentum: a.momentum.unwrap_or(0.9),
    };
    super::check_flags(
        &[
            ("--eta", s.eta, Positive),
            ("--weight-decay", s.weight_decay, NonNegative),
        ],
        s.momentum,
    )?;
    Ok(s)
}

pub fn run(a: Args) -> Result<()> {
    if a.space == Space::Rnn {
        return super::gradients_rnn::run(a);
    }
    let start = Instant::now();
    let settings = validate(&a)?;
    darts::io::check_output_path(&a.out, "--out")?;
    let input = read_state(&a.state, a.stem_multiplier, a.multiplier)?;
    let (train, valid) = read_batches(&a.batch, &input.cfg)?;
    let cfg = &input.cfg;
    println!(
        "network: C={} layers={} steps={} multiplier={} classes={} | train {:?} valid {:?} | {} weights | {:?}",
        cfg.c,
        cfg.layers,
        cfg.steps,
        cfg.multiplier,
        cfg.num_classes,
        train.x.shape(),
        valid.x.shape(),
        cfg.layout()?.weights().map(|(_, s, _)| s.iter().product::<usize>()).sum::<usize>(),
        a.dtype
    );
    let user = Compute {
        input: &input,
        train: &train,
        valid: &valid,
        a: &settings,
    };
    let (arrays, [r_paper, r_audit]) =
        darts::exec::open(a.backend, a.dtype, user).with_context(|| {
            format!("--backend {:?} --dtype {:?}", a.backend, a.dtype).to_lowercase()
        })??;
    print_summary(&arrays, (r_paper, r_audit), settings.eta);
    let settings = [
        ("eta", settings.eta),
        ("weight_decay", settings.weight_decay),
        ("momentum", settings.momentum),
    ];
    super::provenance::write_gradients_dump(&a, arrays, &settings, start)
}

/// ||x||_2 over several tensors together.
pub(crate) fn norm(v: &[ArrayD<f64>]) -> f64 {
    v.iter()
        .flat_map(|a| a.iter())
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
}

fn rel(a: &[ArrayD<f64>; 2], b: &[ArrayD<f64>; 2]) -> f64 {
    let d: Vec<ArrayD<f64>> = (0..2).map(|i| &a[i] - &b[i]).collect();
    norm(&d) / norm(b).max(1e-300)
}

fn print_summary(arrays: &BTreeMap<String, ArrayD<f64>>, (r_paper, r_audit): (f64, f64), eta: f64) {
    let scalar = |k: &str| arrays.get(k).map_or(f64::NAN, |a| a.sum());
    let alpha = |k: &str| names::CELLS.map(|c| arrays[&format!("{k}/{c}")].clone());
    let weights_norm = |prefix: &str| {
        let v: Vec<ArrayD<f64>> = arrays
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        norm(&v)
    };
    let first = alpha("grad_alpha_first");
    let second = alpha("grad_alpha_second");
    let exact = alpha("grad_alpha_unrolled_exact");
    let partial = alpha("grad_alpha_unrolled_partial");
    let audit_hvp = alpha("hvp_fd_at_unrolled");
    let audit = [
        &partial[0] - &(&audit_hvp[0] * eta),
        &partial[1] - &(&audit_hvp[1] * eta),
    ];
    println!(
        "losses: L_train(w) {:.10} | L_val(w) {:.10} | L_val(w') {:.10}",
        scalar("loss_train"),
        scalar("loss_valid"),
        scalar("loss_valid_unrolled")
    );
    println!(
        "norms: |grad_w L_train| {:.4e} | |v| {:.4e} | eps = 0.01/|v| = {:.4e} (audit {:.4e})",
        weights_norm("grad_w_train/"),
        weights_norm("v/"),
        r_paper,
        r_audit
    );
    println!(
        "norms: |grad_alpha| first {:.4e} | second (FD) {:.4e} | exact {:.4e} | |H v| FD {:.4e} exact {:.4e}",
        norm(&first),
        norm(&second),
        norm(&exact),
        norm(&alpha("hvp_fd")),
        norm(&alpha("hvp_exact"))
    );
    println!(
        "relative differences: second-order(FD) vs exact {:.3e} | first-order vs exact {:.3e} | paper vs audit variant {:.3e} | H v FD vs exact {:.3e}",
        rel(&second, &exact),
        rel(&first, &exact),
        rel(&second, &audit),
        rel(&alpha("hvp_fd"), &alpha("hvp_exact"))
    );
    println!(
        "note: on ReLU/max-pool networks the FD H v differs from the exact one by O(1) where the \
         difference step crosses kinks (proofs/finite-difference-hvp.md); both are reported."
    );
}
