//! The training loop: per epoch the schedule, one [`TrainStepGraph`] run per batch, the test
//! evaluation, the log and `weights.npz`.

use super::graphs::{build_eval_graph, EvalGraph, TrainGraph, TrainStepGraph};
use super::options::{
    drop_path_prob_at, lr_at, DataSource, EpochRecord, Reporting, TrainError, TrainOptions,
    TrainReport,
};
use crate::darts::eval_network::{count_parameters, DropPath, EvalConfig};
use crate::darts::genotype::Genotype;
use crate::darts::init::init_state;
use crate::darts::names;
use crate::darts::params::{write_npz, Layout};
use crate::data::{
    embedded_subset, make_batch, read_cifar_dir, Batch, EpochSampler, Images, CIFAR10_CLASSES,
};
use crate::exec::{ExecError, Executor, ExecutorUser, Feeds, Scalar};
use crate::step::optim::SgdHyper;
use ndarray::{ArrayD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Load the data named by `opts.data`, apply the limits, and train.
pub fn train(
    opts: &TrainOptions,
    genotype: &Genotype,
    reporting: Reporting,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    let (train_set, test_set) = match &opts.data {
        DataSource::Embedded => embedded_subset(),
        DataSource::Dir(d) => read_cifar_dir(d)?,
    };
    train_on(opts, genotype, &train_set, &test_set, reporting)
}

/// Train on given image sets (the limits of `opts` still apply), on the executor `opts`
/// names.
pub fn train_on(
    opts: &TrainOptions,
    genotype: &Genotype,
    train_set: &Images,
    test_set: &Images,
    reporting: Reporting,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    struct Run<'r, 'p> {
        opts: &'r TrainOptions,
        genotype: &'r Genotype,
        sets: (&'r Images, &'r Images),
        reporting: Reporting<'p>,
    }
    impl ExecutorUser for Run<'_, '_> {
        type Output = Result<TrainReport, TrainError>;
        fn with<T: Scalar>(self, exec: Box<dyn Executor<T>>) -> Self::Output {
            run(
                self.opts,
                self.genotype,
                self.sets.0,
                self.sets.1,
                self.reporting,
                exec,
            )
        }
    }
    let user = Run {
        opts,
        genotype,
        sets: (train_set, test_set),
        reporting,
    };
    crate::exec::open(opts.backend, opts.dtype, user).map_err(|cause| TrainError::Exec {
        epoch: 0,
        what: format!(
            "opening the {:?} executor in {:?}",
            opts.backend, opts.dtype
        ),
        cause,
    })?
}

/// Number of rows whose largest logit is at the one-hot class (ties: the first maximum).
fn correct(logits: &ArrayD<f64>, onehot: &ArrayD<f64>) -> usize {
    logits
        .axis_iter(Axis(0))
        .zip(onehot.axis_iter(Axis(0)))
        .filter(|(l, t)| {
            let pred = l
                .iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0;
            t.iter().position(|&v| v == 1.0) == Some(pred)
        })
        .count()
}

fn limited(images: &Images, limit: Option<usize>) -> Vec<usize> {
    (0..limit.map_or(images.n, |l| l.min(images.n))).collect()
}

/// Creates the run folder with its `options.json` record `meta`, and opens its `log.jsonl`.
fn open_run_dir(
    dir: &Path,
    meta: &serde_json::Value,
) -> Result<(std::fs::File, std::path::PathBuf), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| run_dir_err(dir, e))?;
    let text = serde_json::to_string_pretty(meta).map_err(|e| run_dir_err(dir, e))?;
    std::fs::write(dir.join("options.json"), text).map_err(|e| run_dir_err(dir, e))?;
    let path = dir.join("log.jsonl");
    let f = std::fs::File::create(&path).map_err(|e| run_dir_err(&path, e))?;
    Ok((f, path))
}

fn run_dir_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::RunDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The state of one run: the executor (whose variables hold the parameters, BN buffers and
/// SGD momentum buffers between steps), the host copies, and the graphs per batch size.
pub struct Trainer<T: Scalar> {
    cfg: EvalConfig,
    /// Parameters (layout order) and their shapes.
    params: Vec<(String, Vec<usize>)>,
    /// The host state by state_dict name (parameters and BN buffers): current after
    /// [`Trainer::sync_host`] (num_batches_tracked is counted on the host).
    pub state: BTreeMap<String, ArrayD<f64>>,
    /// SGD's momentum buffers (parameter order), host copies as `state`; None before the
    /// first step (PyTorch's absent buffers, uploaded as zeros: 0 mu + d = d).
    pub sgd_buf: Option<Vec<ArrayD<f64>>>,
    sgd: SgdHyper,
    exec: Box<dyn Executor<T>>,
    step_graphs: HashMap<usize, TrainStepGraph>,
    eval_graphs: HashMap<usize, EvalGraph>,
    drop_path: bool,
    aux_weight: f64,
    /// The executor's variables hold the current state / the host copies lag them.
    device_current: bool,
    host_stale: bool,
}

impl<T: Scalar> Trainer<T> {
    /// A trainer of the network `cfg` from `state` (every state_dict entry), with SGD
    /// constants `sgd`, drop path on or off and the auxiliary loss weight, on `exec`. SGD's
    /// momentum buffers start absent (zero), as PyTorch's.
    pub fn new(
        cfg: EvalConfig,
        state: BTreeMap<String, ArrayD<f64>>,
        sgd: SgdHyper,
        (drop_path, aux_weight): (bool, f64),
        exec: Box<dyn Executor<T>>,
    ) -> Result<Self, TrainError> {
        let params = cfg
            .layout()?
            .weights()
            .map(|(n, shape, _)| (n.clone(), shape.clone()))
            .collect();
        Ok(Trainer {
            cfg,
            params,
            state,
            sgd_buf: None,
            sgd,
            exec,
            step_graphs: HashMap::new(),
            eval_graphs: HashMap::new(),
            drop_path,
            aux_weight,
            device_current: false,
            host_stale: false,
        })
    }

    /// Parameters, BN buffers (num_batches_tracked stays on the host) and zero SGD buffers
    /// (PyTorch's absent buffers: 0 mu + d = d) as executor variables.
    fn upload(&mut self) -> Result<(), ExecError> {
        self.exec.clear_vars();
        for (k, v) in &self.state {
            if !k.ends_with(".num_batches_tracked") {
                self.exec.set_var(k, &v.mapv(T::of))?;
            }
        }
        for (i, (n, shape)) in self.params.iter().enumerate() {
            let buf = match &self.sgd_buf {
                Some(b) => b[i].mapv(T::of),
                None => ArrayD::zeros(IxDyn(shape)),
            };
            self.exec.set_var(&names::sgd_buf(n), &buf)?;
        }
        self.device_current = true;
        Ok(())
    }

    /// Copy the executor's parameters and BN buffers back into the host state.
    pub fn sync_host(&mut self) -> Result<(), ExecError> {
        if !self.host_stale {
            return Ok(());
        }
        let mut bufs = Vec::with_capacity(self.params.len());
        for (n, _) in &self.params {
            bufs.push(self.exec.var(&names::sgd_buf(n))?.mapv(|v| v.as_f64()));
        }
        self.sgd_buf = Some(bufs);
        let keys: Vec<String> = self.state.keys().cloned().collect();
        for k in keys {
            if !k.ends_with(".num_batches_tracked") {
                let v = self.exec.var(&k)?.mapv(|v| v.as_f64());
                self.state.insert(k, v);
            }
        }
        self.host_stale = false;
        Ok(())
    }

    /// The state as `sd/<state_dict name>` in an npz (train.py's weights.pt, overwritten
    /// every epoch).
    fn write_weights(&mut self, path: &Path, epoch: usize) -> Result<(), TrainError> {
        self.sync_host().map_err(|cause| TrainError::Exec {
            epoch,
            what: "reading the state back for weights.npz".into(),
            cause,
        })?;
        let all: Vec<(String, &ArrayD<f64>)> = self
            .state
            .iter()
            .map(|(k, v)| (format!("sd/{k}"), v))
            .collect();
        write_npz(path, all.iter().map(|(k, v)| (k.as_str(), *v)))?;
        Ok(())
    }

    /// Replace the host state and momentum buffers; the executor is refreshed before the
    /// next step.
    pub fn set_state(
        &mut self,
        state: BTreeMap<String, ArrayD<f64>>,
        sgd_buf: Option<Vec<ArrayD<f64>>>,
    ) {
        self.state = state;
        self.sgd_buf = sgd_buf;
        self.device_current = false;
        self.host_stale = false;
    }

    /// Drop-path feeds: the keep probability and one Bernoulli(keep) mask per cell output.
    fn drop_path_feeds(
        &self,
        feeds: &mut Feeds<T>,
        tg: &TrainGraph,
        n: usize,
        keep: f64,
        drop_rng: &mut ChaCha8Rng,
    ) {
        if !self.drop_path {
            return;
        }
        feeds.insert(DropPath::KEEP, ArrayD::from_elem(IxDyn(&[]), T::of(keep)));
        for name in &tg.drop_masks {
            let mask = if keep < 1.0 {
                ArrayD::from_shape_simple_fn(IxDyn(&[n, 1, 1, 1]), || {
                    if drop_rng.random::<f64>() < keep {
                        T::one()
                    } else {
                        T::zero()
                    }
                })
            } else {
                ArrayD::from_elem(IxDyn(&[n, 1, 1, 1]), T::one())
            };
            feeds.insert(name.clone(), mask);
        }
    }

    /// One training step on `batch` (one run of [`TrainStepGraph`]; only the batch, the
    /// drop-path masks and lr go in, only the loss, logits and gradient norm come back);
    /// returns (loss, correct, gradient norm before clipping).
    pub fn step(
        &mut self,
        batch: &Batch,
        lr: f64,
        keep: f64,
        drop_rng: &mut ChaCha8Rng,
        epoch: usize,
        step: usize,
    ) -> Result<(f64, usize, f64), TrainError> {
        let n = batch.x.shape()[0];
        let exec_err = |what: &str| {
            let what = what.to_string();
            move |cause| TrainError::Exec {
                epoch,
                what: what.clone(),
                cause,
            }
        };
        if !self.step_graphs.contains_key(&n) {
            let flags = (self.drop_path, self.aux_weight);
            let sg = TrainStepGraph::build(&self.cfg, &self.params, n, flags, &self.sgd)?;
            self.step_graphs.insert(n, sg);
        }
        if !self.device_current {
            self.upload().map_err(exec_err("uploading the state"))?;
        }
        let mut feeds = Feeds::new();
        feeds.insert(names::X, batch.x.mapv(T::of));
        feeds.insert(names::ONEHOT, batch.onehot.mapv(T::of));
        feeds.insert(names::LR, ArrayD::from_elem(IxDyn(&[]), T::of(lr)));
        let sg = &self.step_graphs[&n];
        self.drop_path_feeds(&mut feeds, &sg.train, n, keep, drop_rng);
        let outs = [sg.train.loss, sg.train.logits, sg.grad_norm];
        let vals = self
            .exec
            .run_assign(&sg.train.graph, &feeds, &outs, &sg.assign)
            .map_err(exec_err(&format!("training step {step}")))?;
        self.host_stale = true;
        let bn: Vec<String> = sg.train.bn.iter().map(|b| b.prefix.clone()).collect();
        let mut it = vals.into_iter().map(|a| a.mapv(|v| v.as_f64()));
        let loss = it.next().expect("loss").sum();
        let logits = it.next().expect("logits");
        let norm = it.next().expect("norm").sum();
        for (tensor, v) in [("loss", loss), ("||grad||", norm)] {
            if !v.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch,
                    step,
                    tensor: tensor.into(),
                    index: 0,
                    value: v,
                });
            }
        }
        for p in bn {
            if let Some(nbt) = self.state.get_mut(&format!("{p}.num_batches_tracked")) {
                nbt.mapv_inplace(|v| v + 1.0);
            }
        }
        Ok((loss, correct(&logits, &batch.onehot), norm))
    }
}

fn run<T: Scalar>(
    opts: &TrainOptions,
    genotype: &Genotype,
    train_set: &Images,
    test_set: &Images,
    mut reporting: Reporting,
    exec: Box<dyn Executor<T>>,
) -> Result<TrainReport, TrainError> {
    let start = Instant::now();
    let cfg = opts.eval_config(genotype);
    cfg.validate(32, 32)?;
    let layout: Layout = cfg.layout()?;
    let parameters = count_parameters(&layout);
    let parameters_with_aux = layout
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();

    // Independent streams: initialisation, data order and augmentation, drop-path masks.
    let mut init_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut data_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    data_rng.set_stream(1);
    let mut drop_rng = ChaCha8Rng::seed_from_u64(opts.seed);
    drop_rng.set_stream(2);

    let state = init_state(&layout, 1, &mut init_rng);
    let sgd = SgdHyper {
        momentum: opts.momentum,
        weight_decay: opts.weight_decay,
        grad_clip: opts.grad_clip,
    };
    let flags = (opts.drop_path_prob > 0.0, opts.auxiliary_weight);
    let mut tr = Trainer::<T>::new(cfg, state.tensors, sgd, flags, exec)?;

    let train_idx = limited(train_set, opts.train_limit);
    let test_idx = limited(test_set, opts.test_limit);
    let (n_train, n_test) = (train_idx.len(), test_idx.len());
    let mut sampler = EpochSampler::new(train_idx, opts.batch_size)?;
    let augment = opts.augment();

    let mut log = match &reporting.run_dir {
        Some(dir) => {
            let meta = serde_json::json!({
                "options": opts,
                "genotype": genotype.to_string(),
                "parameters": parameters,
                "parameters_with_aux": parameters_with_aux,
                "train_images": n_train,
                "test_images": n_test,
            });
            Some(open_run_dir(dir, &meta)?)
        }
        None => None,
    };

    let bar = if reporting.progress {
        indicatif::ProgressBar::new((sampler.batches_per_epoch() * opts.epochs) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ) {
        bar.set_style(style);
    }

    let mut records = Vec::new();
    for epoch in 0..opts.epochs {
        let t0 = Instant::now();
        let lr = lr_at(opts.learning_rate, epoch, opts.epochs);
        let p = drop_path_prob_at(opts.drop_path_prob, epoch, opts.epochs);
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, opts.epochs));
        sampler.start_epoch(&mut data_rng);
        let (mut loss_sum, mut hits, mut seen, mut norm_sum, mut steps) = (0.0, 0, 0, 0.0, 0);
        while let Some(idx) = sampler.next_batch() {
            let batch = make_batch(
                train_set,
                &idx,
                Some(&augment),
                &mut data_rng,
                CIFAR10_CLASSES,
            )?;
            let (loss, c, norm) = tr.step(&batch, lr, 1.0 - p, &mut drop_rng, epoch, steps)?;
            loss_sum += loss * idx.len() as f64;
            hits += c;
            seen += idx.len();
            norm_sum += norm;
            steps += 1;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}%",
                loss_sum / seen as f64,
                100.0 * hits as f64 / seen as f64
            ));
        }
        let (test_loss, test_acc) = evaluate(&mut tr, test_set, &test_idx, opts.batch_size, epoch)?;
        let rec = EpochRecord {
            epoch,
            lr,
            drop_path_prob: p,
            train_loss: loss_sum / seen as f64,
            train_acc: 100.0 * hits as f64 / seen as f64,
            test_loss,
            test_acc,
            mean_grad_norm: norm_sum / steps.max(1) as f64,
            steps,
            seconds: t0.elapsed().as_secs_f64(),
        };
        if let Some((f, path)) = &mut log {
            let line = serde_json::to_string(&rec).map_err(|e| run_dir_err(path, e))?;
            writeln!(f, "{line}")
                .and_then(|_| f.flush())
                .map_err(|e| run_dir_err(path, e))?;
        }
        if let Some(dir) = &reporting.run_dir {
            tr.write_weights(&dir.join("weights.npz"), epoch)?;
        }
        bar.suspend(|| {
            if let Some(cb) = reporting.on_epoch.as_deref_mut() {
                cb(&rec);
            }
        });
        records.push(rec);
    }
    bar.finish_and_clear();
    let report = TrainReport {
        final_test_acc: records.last().map_or(0.0, |r| r.test_acc),
        epochs: records,
        parameters,
        parameters_with_aux,
        train_images: n_train,
        test_images: n_test,
        seconds: start.elapsed().as_secs_f64(),
    };
    if let Some(dir) = &reporting.run_dir {
        let text = serde_json::to_string_pretty(&report).map_err(|e| run_dir_err(dir, e))?;
        std::fs::write(dir.join("summary.json"), text).map_err(|e| run_dir_err(dir, e))?;
    }
    Ok(report)
}

/// Test loss and accuracy (percent) in evaluation mode over `idx` in order.
fn evaluate<T: Scalar>(
    tr: &mut Trainer<T>,
    images: &Images,
    idx: &[usize],
    batch_size: usize,
    epoch: usize,
) -> Result<(f64, f64), TrainError> {
    let (mut loss_sum, mut hits) = (0.0, 0);
    // The test transform draws no random numbers.
    let mut unused = ChaCha8Rng::seed_from_u64(0);
    for chunk in idx.chunks(batch_size) {
        let batch = make_batch(images, chunk, None, &mut unused, CIFAR10_CLASSES)?;
        let n = chunk.len();
        if !tr.eval_graphs.contains_key(&n) {
            let g = build_eval_graph(&tr.cfg, n)?;
            tr.eval_graphs.insert(n, g);
        }
        // Parameters and running statistics are the executor's variables.
        if !tr.device_current {
            tr.upload().map_err(|cause| TrainError::Exec {
                epoch,
                what: "uploading the state".into(),
                cause,
            })?;
        }
        let mut feeds = Feeds::new();
        feeds.insert(names::X, batch.x.mapv(T::of));
        feeds.insert(names::ONEHOT, batch.onehot.mapv(T::of));
        let eg = &tr.eval_graphs[&n];
        let vals = tr
            .exec
            .run(&eg.graph, &feeds, &[eg.loss, eg.logits])
            .map_err(|cause| TrainError::Exec {
                epoch,
                what: "test evaluation".into(),
                cause,
            })?;
        let loss = vals[0].sum().as_f64();
        let logits = vals[1].mapv(|v| v.as_f64());
        loss_sum += loss * n as f64;
        hits += correct(&logits, &batch.onehot);
    }
    let n = idx.len() as f64;
    Ok((loss_sum / n, 100.0 * hits as f64 / n))
}
