//! `darts gradients --space rnn`: the recurrent architecture gradient as the reference computes
//! it (first order, `second` with its quirks) and the two derivatives it approximates (exact
//! through the reference's unrolled step, and the intended step with the embedding moved), at
//! one state and pair of batches, written to an npz in float64.

use super::gradients::{norm, Args};
use anyhow::{bail, Context, Result};
use darts::darts::rnn::batch_file::{read_rnn_batch_npz, RnnBatchFile};
use darts::darts::rnn::state::{RnnConfig, RnnState};
use darts::exec::{Executor, ExecutorUser, Scalar};
use darts::graph::NodeId;
use darts::search::architect::{check_finite, ArchError};
use darts::search::recurrent::{rnn_feeds, RnnGradientsGraph};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::time::Instant;

/// The settings of `darts gradients --space rnn` with their defaults filled in.
struct RnnSettings {
    eta: f64,
    weight_decay: f64,
    clip: f64,
}

fn validate(a: &Args) -> Result<RnnSettings> {
    use super::Sign::{NonNegative, Positive};
    for (flag, given) in [
        ("--momentum", a.momentum.is_some()),
        ("--stem-multiplier", a.stem_multiplier.is_some()),
        ("--multiplier", a.multiplier.is_some()),
    ] {
        if given {
            bail!("{flag} applies to --space cnn only (the recurrent search has no such setting)");
        }
    }
    let s = RnnSettings {
        eta: a.eta.unwrap_or(20.0),
        weight_decay: a.weight_decay.unwrap_or(5e-7),
        clip: a.clip.unwrap_or(0.25),
    };
    super::check_flags(
        &[
            ("--eta", s.eta, Positive),
            ("--weight-decay", s.weight_decay, NonNegative),
            ("--clip", s.clip, Positive),
        ],
        0.0,
    )?;
    Ok(s)
}

/// What the command computes once the executor is open.
struct Compute<'a> {
    cfg: RnnConfig,
    state: &'a RnnState,
    batches: &'a RnnBatchFile,
    s: &'a RnnSettings,
}

impl ExecutorUser for Compute<'_> {
    type Output = Result<(BTreeMap<String, ArrayD<f64>>, f64)>;
    fn with<T: Scalar>(self, mut exec: Box<dyn Executor<T>>) -> Self::Output {
        let Compute {
            cfg,
            state,
            batches,
            s,
        } = self;
        println!("backend: {}", exec.name());
        let gg = RnnGradientsGraph::build(
            cfg,
            false,
            batches.train.tb(),
            batches.valid.tb(),
            (s.clip, s.weight_decay),
        )?;
        let f = rnn_feeds::<T>(&cfg, state, batches, s.eta);
        let mut outs: Vec<NodeId> = gg.outputs.iter().map(|(_, n)| *n).collect();
        outs.push(gg.r);
        let vals = exec
            .run(&gg.graph, &f, &outs)
            .context("running the recurrent gradients graph")?;
        let mut vals: Vec<ArrayD<f64>> = vals.into_iter().map(|v| v.mapv(|x| x.as_f64())).collect();
        let r = vals.pop().map_or(f64::NAN, |v| v.sum());
        let mut arrays = BTreeMap::new();
        for ((key, _), v) in gg.outputs.iter().zip(vals) {
            check_finite("recurrent architecture gradient", key, &v)?;
            arrays.insert(key.clone(), v);
        }
        if !r.is_finite() {
            bail!(ArchError::ZeroDirection);
        }
        Ok((arrays, r))
    }
}

pub fn run(a: Args) -> Result<()> {
    let start = Instant::now();
    let s = validate(&a)?;
    darts::io::check_output_path(&a.out, "--out")?;
    let (cfg, state) = RnnState::read_search(&a.state)?;
    let batches = read_rnn_batch_npz(&a.batch, &cfg)?;
    println!(
        "recurrent network: V={} H={} | train [T, B] = {:?} valid {:?} | {} parameters | {:?}",
        cfg.ntoken,
        cfg.nhid,
        batches.train.tb(),
        batches.valid.tb(),
        cfg.parameter_count(darts::darts::rnn::STEPS),
        a.dtype
    );
    let user = Compute {
        cfg,
        state: &state,
        batches: &batches,
        s: &s,
    };
    let (arrays, r) = darts::exec::open(a.backend, a.dtype, user).with_context(|| {
        format!("--backend {:?} --dtype {:?}", a.backend, a.dtype).to_lowercase()
    })??;
    print_summary(&arrays, r);
    let settings = [
        ("eta", s.eta),
        ("weight_decay", s.weight_decay),
        ("clip", s.clip),
    ];
    super::provenance::write_gradients_dump(&a, arrays, &settings, start)
}

fn print_summary(arrays: &BTreeMap<String, ArrayD<f64>>, r: f64) {
    let scalar = |k: &str| arrays.get(k).map_or(f64::NAN, |a| a.sum());
    let alpha = |k: &str| vec![arrays[&format!("{k}/recurrent")].clone()];
    let weights_norm = |prefix: &str| {
        let v: Vec<ArrayD<f64>> = arrays
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        norm(&v)
    };
    let rel = |a: &str, b: &str| {
        let (x, y) = (alpha(a), alpha(b));
        norm(&[&x[0] - &y[0]]) / norm(&y).max(1e-300)
    };
    println!(
        "losses: L_train(w) {:.10} | L_val(w) {:.10} | L_val(w') {:.10}",
        scalar("loss_train"),
        scalar("loss_valid"),
        scalar("loss_valid_unrolled")
    );
    println!(
        "norms: |grad_w L_train| {:.4e} | clip coefficient c {:.4e} (uncapped) | |v| {:.4e} (clipped) | R = 0.01/|v| = {:.4e}",
        weights_norm("grad_w_train/"),
        scalar("clip_coef_train"),
        weights_norm("v/"),
        r
    );
    println!(
        "norms: |grad_alpha| first {:.4e} | second {:.4e} | exact {:.4e} | intended {:.4e} | |H v| FD {:.4e} exact {:.4e}",
        norm(&alpha("grad_alpha_first")),
        norm(&alpha("grad_alpha_second")),
        norm(&alpha("grad_alpha_unrolled_exact")),
        norm(&alpha("grad_alpha_unrolled_intended")),
        norm(&alpha("hvp_fd")),
        norm(&alpha("hvp_exact"))
    );
    println!(
        "relative differences: second vs exact {:.3e} | first vs exact {:.3e} | exact vs intended {:.3e} | H v FD vs exact {:.3e}",
        rel("grad_alpha_second", "grad_alpha_unrolled_exact"),
        rel("grad_alpha_first", "grad_alpha_unrolled_exact"),
        rel("grad_alpha_unrolled_exact", "grad_alpha_unrolled_intended"),
        rel("hvp_fd", "hvp_exact")
    );
    println!(
        "note: `second` is the reference's formula, with its four quirks (the E block of H v \
         although E is not moved, v clipped, the uncapped clip coefficient, dc/dalpha ignored; \
         proofs/recurrent-architect.md); `exact` is the derivative of the reference's own \
         unrolled objective."
    );
}
