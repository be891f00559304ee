//! `darts gradients`: the architecture gradient three ways at one state and batch, written to
//! an npz for side-by-side comparison with other implementations.

use anyhow::{bail, Context, Result};
use darts::darts::network::SearchConfig;
use darts::darts::params::{read_npz, write_npz, State};
use darts::exec::cpu::CpuExecutor;
use darts::search::architect::{all_gradients, norm, ArchGraphs, Batch, Point, Report, Unroll};
use ndarray::{ArrayD, IxDyn};
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
    /// xi of the unrolled step (the reference uses the weight learning rate eta).
    #[arg(long, default_value_t = 0.025)]
    pub eta: f64,
    #[arg(long, default_value_t = 3e-4)]
    pub weight_decay: f64,
    /// SGD momentum mu (applies to the momentum buffer, when the state has one).
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, value_enum, default_value_t = Dtype::F64)]
    pub dtype: Dtype,
    /// Executor: the CPU reference, or the wgpu GPU path (f32 only).
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

pub use darts::exec::Backend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    F64,
    F32,
}

fn labels_to_onehot(y: &ArrayD<f64>, n: usize, classes: usize, key: &str) -> Result<ArrayD<f64>> {
    if y.shape() != [n] {
        bail!(
            "batch: '{key}' has shape {:?}, expected [{n}] to match its images",
            y.shape()
        );
    }
    let mut t = ArrayD::zeros(IxDyn(&[n, classes]));
    for (i, &v) in y.iter().enumerate() {
        if v < 0.0 || v.fract() != 0.0 || v as usize >= classes {
            bail!("batch: '{key}'[{i}] = {v} is not a class index in 0..{classes}");
        }
        t[[i, v as usize]] = 1.0;
    }
    Ok(t)
}

fn take_batch(
    all: &mut BTreeMap<String, ArrayD<f64>>,
    which: &str,
    classes: usize,
    file: &str,
) -> Result<Batch> {
    let xk = format!("x_{which}");
    let yk = format!("y_{which}");
    let x = all
        .remove(&xk)
        .with_context(|| format!("{file}: missing key '{xk}'"))?;
    let y = all
        .remove(&yk)
        .with_context(|| format!("{file}: missing key '{yk}'"))?;
    if x.ndim() != 4 || x.shape()[1] != 3 {
        bail!(
            "{file}: '{xk}' has shape {:?}, expected [N, 3, H, W]",
            x.shape()
        );
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        bail!("{file}: '{xk}' holds a non-finite value at flat index {i}");
    }
    let onehot = labels_to_onehot(&y, x.shape()[0], classes, &yk)?;
    Ok(Batch { x, onehot })
}

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let state_file = a.state.display().to_string();
    let all = read_npz(&a.state)?;
    let k = all
        .get("alpha/normal")
        .with_context(|| format!("{state_file}: missing key 'alpha/normal'"))?
        .shape()
        .first()
        .copied()
        .unwrap_or(0);
    let shapes: Vec<(&str, &[usize])> = all
        .iter()
        .filter_map(|(n, v)| n.strip_prefix("sd/").map(|n| (n, v.shape())))
        .collect();
    let cfg = SearchConfig::from_state_shapes(shapes, k, a.stem_multiplier, a.multiplier)
        .with_context(|| format!("reading the network configuration from {state_file}"))?;
    let batch_file = a.batch.display().to_string();
    let mut b = read_npz(&a.batch)?;
    let train = take_batch(&mut b, "train", cfg.num_classes, &batch_file)?;
    let valid = take_batch(&mut b, "valid", cfg.num_classes, &batch_file)?;
    let (h, w) = (train.x.shape()[2], train.x.shape()[3]);
    if valid.x.shape()[2..] != train.x.shape()[2..] {
        bail!("{batch_file}: x_train and x_valid differ in image size");
    }
    cfg.validate(h, w)?;
    let layout = cfg.layout()?;
    let st = State::from_npz(&a.state, &layout, k)?;
    let weights: Vec<(String, ArrayD<f64>)> = layout
        .weights()
        .map(|(n, _, _)| (n.clone(), st.tensors[n].clone()))
        .collect();
    let mut buf = Vec::new();
    for (n, w) in &weights {
        if let Some(m) = all.get(&format!("momentum_buffer/{n}")) {
            if m.shape() != w.shape() {
                bail!(
                    "{state_file}: 'momentum_buffer/{n}' has shape {:?}, the weight has {:?}",
                    m.shape(),
                    w.shape()
                );
            }
            buf.push(m.clone());
        }
    }
    if !buf.is_empty() && buf.len() != weights.len() {
        bail!(
            "{state_file}: momentum buffers for {} of {} weights; give all or none",
            buf.len(),
            weights.len()
        );
    }
    let point = Point {
        weights,
        alpha: [st.alpha_normal.clone(), st.alpha_reduce.clone()],
    };
    let unroll = Unroll {
        eta: a.eta,
        weight_decay: a.weight_decay,
        momentum: a.momentum,
    };
    println!(
        "network: C={} layers={} steps={} multiplier={} classes={} | train {:?} valid {:?} | {} weights | {}",
        cfg.c,
        cfg.layers,
        cfg.steps,
        cfg.multiplier,
        cfg.num_classes,
        train.x.shape(),
        valid.x.shape(),
        point.weights.iter().map(|(_, w)| w.len()).sum::<usize>(),
        match a.dtype {
            Dtype::F64 => "f64",
            Dtype::F32 => "f32",
        }
    );
    let graphs = ArchGraphs::build(&cfg, train.x.shape(), valid.x.shape())?;
    let buf_ref = (!buf.is_empty()).then_some(buf.as_slice());
    let rep = match (a.backend, a.dtype) {
        (Backend::Gpu, Dtype::F64) => {
            // f64 kernels exist only where the adapter offers SHADER_F64 and passes the
            // executor's self-check of every f64 operation; otherwise say why and stop.
            let mut gpu = darts::exec::gpu::GpuExecutor::<f64>::new_f64().map_err(|e| {
                anyhow::anyhow!(
                    "--backend gpu --dtype f64: {e}; pass --dtype f32 (or --backend cpu)"
                )
            })?;
            println!("backend: {} (f64 kernels)", gpu.adapter_info());
            all_gradients(&mut gpu, &graphs, &point, buf_ref, &train, &valid, &unroll)?
        }
        (Backend::Gpu, Dtype::F32) => {
            let mut gpu = darts::exec::gpu::GpuExecutor::new()?;
            println!("backend: {}", gpu.adapter_info());
            all_gradients(&mut gpu, &graphs, &point, buf_ref, &train, &valid, &unroll)?
        }
        (Backend::Cpu, Dtype::F64) => all_gradients(
            &mut CpuExecutor::<f64>::new(),
            &graphs,
            &point,
            buf_ref,
            &train,
            &valid,
            &unroll,
        )?,
        (Backend::Cpu, Dtype::F32) => all_gradients(
            &mut CpuExecutor::<f32>::new(),
            &graphs,
            &point,
            buf_ref,
            &train,
            &valid,
            &unroll,
        )?,
    };
    write_npz(&a.out, rep.arrays.iter().map(|(k, v)| (k.as_str(), v)))?;
    print_summary(&rep, &unroll);
    println!(
        "wrote {} arrays to {} ({:.2} s)",
        rep.arrays.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn rel(a: &[ArrayD<f64>; 2], b: &[ArrayD<f64>; 2]) -> f64 {
    let d: Vec<ArrayD<f64>> = (0..2).map(|i| &a[i] - &b[i]).collect();
    norm(&d) / norm(b).max(1e-300)
}

fn print_summary(rep: &Report, u: &Unroll) {
    let weights_norm = |prefix: &str| {
        let v: Vec<ArrayD<f64>> = rep
            .arrays
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        norm(&v)
    };
    let first = rep.alpha("grad_alpha_first");
    let second = rep.alpha("grad_alpha_second");
    let exact = rep.alpha("grad_alpha_unrolled_exact");
    let partial = rep.alpha("grad_alpha_unrolled_partial");
    let audit_hvp = rep.alpha("hvp_fd_at_unrolled");
    let audit = [
        &partial[0] - &(&audit_hvp[0] * u.eta),
        &partial[1] - &(&audit_hvp[1] * u.eta),
    ];
    println!(
        "losses: L_train(w) {:.10} | L_val(w) {:.10} | L_val(w') {:.10}",
        rep.scalar("loss_train"),
        rep.scalar("loss_valid"),
        rep.scalar("loss_valid_unrolled")
    );
    println!(
        "norms: |grad_w L_train| {:.4e} | |v| {:.4e} | eps = 0.01/|v| = {:.4e} (audit {:.4e})",
        weights_norm("grad_w_train/"),
        weights_norm("v/"),
        rep.r_paper,
        rep.r_audit
    );
    println!(
        "norms: |grad_alpha| first {:.4e} | second (FD) {:.4e} | exact {:.4e} | |H v| FD {:.4e} exact {:.4e}",
        norm(&first),
        norm(&second),
        norm(&exact),
        norm(&rep.alpha("hvp_fd")),
        norm(&rep.alpha("hvp_exact"))
    );
    println!(
        "relative differences: second-order(FD) vs exact {:.3e} | first-order vs exact {:.3e} | paper vs audit variant {:.3e} | H v FD vs exact {:.3e}",
        rel(&second, &exact),
        rel(&first, &exact),
        rel(&second, &audit),
        rel(&rep.alpha("hvp_fd"), &rep.alpha("hvp_exact"))
    );
    println!(
        "note: on ReLU/max-pool networks the FD H v differs from the exact one by O(1) where the \
         difference step crosses kinks (proofs/finite-difference-hvp.md); both are reported."
    );
}
