//! The bilevel search loop as the reference runs it (cnn/train_search.py; REFERENCE_NOTES.md
//! section 4): per step an architect step on a fresh search batch, then a weight step with
//! gradient-norm clipping; cosine learning rate with the reference's off-by-one epoch
//! semantics; per-epoch validation in eval mode; atomic checkpoints and exact resume.

use super::architect::{
    arch_gradient, check_finite, evaluate, weight_list, ArchError, ArchGraphs, BnStats, Order,
    Point, Unroll,
};
use super::checkpoint;
use super::optim::{clip_grad_norm, update_running_stats, Adam, Sgd};
use super::step_graph::{StepGraph, StepHyper};
use crate::darts::genotype::{derive, softmax_rows, Genotype};
use crate::darts::init::init_state;
use crate::darts::network::{self, SearchConfig};
use crate::darts::ops::{NetBuilder, ParamSource};
use crate::darts::params::{Kind, Layout, State};
use crate::data::{
    embedded_subset, fresh_batch, make_batch, permutation, read_cifar_dir, search_split, Augment,
    Batch, DataError, EpochSampler, Images, RngState, SamplerState,
};
use crate::exec::{cpu::CpuExecutor, Executor, Feeds, Scalar};
use crate::graph::{Graph, NodeId};
use ndarray::{ArrayD, Axis, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Where the CIFAR-10 images come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// The embedded subset: 4,000 training and 1,000 test images
    /// ([`crate::data::embedded_subset`]).
    Embedded,
    /// A `cifar-10-batches-bin` folder: all 50,000 training and 10,000 test images.
    Dir(PathBuf),
}

/// Element type of the CPU executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F64,
}

/// Every hyperparameter of a search (the reference's flags, with its names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchOptions {
    pub init_channels: usize,
    pub layers: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub learning_rate_min: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub train_portion: f64,
    pub arch_learning_rate: f64,
    pub arch_weight_decay: f64,
    pub order: Order,
    pub seed: u64,
    pub cutout: Option<usize>,
    pub dtype: Dtype,
    pub data: DataSource,
    /// Use only the first n images of the training set (None: all).
    pub max_images: Option<usize>,
}

impl SearchOptions {
    /// The reference configuration (train_search.py defaults; pass `--order second` for
    /// the paper's second-order results).
    pub fn paper() -> Self {
        SearchOptions {
            init_channels: 16,
            layers: 8,
            epochs: 50,
            batch_size: 64,
            learning_rate: 0.025,
            learning_rate_min: 0.001,
            momentum: 0.9,
            weight_decay: 3e-4,
            grad_clip: 5.0,
            train_portion: 0.5,
            arch_learning_rate: 3e-4,
            arch_weight_decay: 1e-3,
            order: Order::First,
            seed: 2,
            cutout: None,
            dtype: Dtype::F32,
            data: DataSource::Embedded,
            max_images: None,
        }
    }

    /// The default: the reference's algorithm and optimiser settings on a network and data
    /// budget sized to finish in minutes on a 2-core CPU (see README for the measured time).
    pub fn quick() -> Self {
        SearchOptions {
            init_channels: 4,
            layers: 5,
            epochs: 4,
            batch_size: 32,
            max_images: Some(2000),
            // A larger architecture learning rate so the alphas move visibly in a few
            // hundred steps (the reference's 3e-4 is tuned for 50 epochs of 25k images).
            arch_learning_rate: 3e-3,
            ..SearchOptions::paper()
        }
    }

    pub fn config(&self) -> SearchConfig {
        SearchConfig {
            c: self.init_channels,
            layers: self.layers,
            ..SearchConfig::paper()
        }
    }

    /// Learning rate of epoch `e` (0-based) under the reference's schedule:
    /// CosineAnnealingLR(T_max = epochs, eta_min) stepped at the start of every epoch, so epoch e
    /// uses lr_min + (lr - lr_min) (1 + cos(pi (e + 1) / epochs)) / 2.
    pub fn lr(&self, e: usize) -> f64 {
        let t = std::f64::consts::PI * (e + 1) as f64 / self.epochs as f64;
        self.learning_rate_min
            + (self.learning_rate - self.learning_rate_min) * (1.0 + t.cos()) / 2.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("epoch {epoch}, step {step}: {source}")]
    Step {
        epoch: usize,
        step: usize,
        #[source]
        source: ArchError,
    },
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error(transparent)]
    Config(#[from] crate::darts::network::ConfigError),
    #[error(transparent)]
    State(#[from] crate::darts::params::StateError),
    #[error("run folder {path}: {reason}")]
    RunDir { path: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("running the validation graph: {0}")]
    Exec(#[from] crate::exec::ExecError),
}

/// Per-epoch running sums.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss: f64,
    pub correct: usize,
    pub seen: usize,
    pub steps: usize,
    /// Host steps: seconds in the architecture step and in the weight step.
    pub arch_seconds: f64,
    pub weight_seconds: f64,
    /// Resident steps (one graph, not split): seconds per whole step.
    #[serde(default)]
    pub resident_seconds: f64,
}

impl EpochSums {
    /// Mean seconds per search step, whichever way the steps ran.
    pub fn seconds_per_step(&self) -> f64 {
        (self.arch_seconds + self.weight_seconds + self.resident_seconds) / self.steps.max(1) as f64
    }
}

/// Everything a checkpoint records besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    pub options: SearchOptions,
    /// The epoch being run (or next to run when `in_epoch` is false).
    pub epoch: usize,
    pub in_epoch: bool,
    pub global_step: usize,
    pub rng: RngState,
    pub sampler: SamplerState,
    pub sums: EpochSums,
    /// The genotype logged at the start of the current epoch.
    pub genotype_at_epoch_start: String,
    pub adam_t: u64,
    pub log_lines: usize,
}

/// How a run ended.
#[derive(Debug)]
pub enum Finish {
    Done { genotype: Genotype },
    Interrupted { epoch: usize, step: usize },
}

/// One search run: data, graphs, executor and the evolving state.
pub struct Search<T: Scalar> {
    pub opts: SearchOptions,
    pub cfg: SearchConfig,
    images: Images,
    valid_idx: Vec<usize>,
    augment: Augment,
    layout: Layout,
    weight_names: Vec<String>,
    exec: Box<dyn Executor<T>>,
    graphs: HashMap<(usize, usize), ArchGraphs>,
    eval_graphs: HashMap<usize, (Graph, NodeId, NodeId)>,
    pub state: State,
    sgd: Sgd,
    adam: Adam,
    rng: ChaCha8Rng,
    sampler: EpochSampler,
    pub progress: Progress,
    pub run_dir: PathBuf,
    /// Run each step as one [`StepGraph`] with all state in executor variables.
    resident: bool,
    step_graphs: HashMap<(usize, usize), StepGraph>,
    /// The executor's variables hold the current state.
    device_current: bool,
    /// The host copies (state, SGD buffers, Adam moments) lag the executor's variables.
    host_stale: bool,
}

fn load_images(opts: &SearchOptions) -> Result<Images, SearchError> {
    let mut images = match &opts.data {
        DataSource::Embedded => embedded_subset().0,
        DataSource::Dir(d) => read_cifar_dir(d)?.0,
    };
    if let Some(m) = opts.max_images {
        let m = m.min(images.n);
        images = Images {
            n: m,
            pixels: images.pixels[..m * crate::data::IMAGE_BYTES].to_vec(),
            labels: images.labels[..m].to_vec(),
        };
    }
    Ok(images)
}

fn run_err(path: &Path, e: impl std::fmt::Display) -> SearchError {
    SearchError::RunDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl<T: Scalar> Search<T> {
    /// A fresh run in `run_dir` (created; must not already hold a checkpoint).
    pub fn new(opts: SearchOptions, run_dir: &Path) -> Result<Self, SearchError> {
        if run_dir.join("checkpoint.npz").exists() {
            return Err(run_err(
                run_dir,
                "already holds a checkpoint; use --resume to continue it",
            ));
        }
        std::fs::create_dir_all(run_dir).map_err(|e| run_err(run_dir, e))?;
        let cfg = opts.config();
        cfg.validate(32, 32)?;
        let layout = cfg.layout()?;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let state = init_state(&layout, cfg.k(), &mut rng);
        let images = load_images(&opts)?;
        let (train_idx, valid_idx) = search_split(images.n, opts.train_portion);
        let sampler = EpochSampler::new(train_idx.clone(), opts.batch_size)?;
        let progress = Progress {
            options: opts.clone(),
            epoch: 0,
            in_epoch: false,
            global_step: 0,
            rng: RngState::capture(&rng),
            sampler: sampler.state().clone(),
            sums: EpochSums::default(),
            genotype_at_epoch_start: String::new(),
            adam_t: 0,
            log_lines: 0,
        };
        std::fs::write(
            run_dir.join("config.json"),
            serde_json::to_string_pretty(&opts).expect("options serialise"),
        )
        .map_err(|e| run_err(run_dir, e))?;
        std::fs::write(run_dir.join("log.jsonl"), "").map_err(|e| run_err(run_dir, e))?;
        Self::assemble(
            opts,
            cfg,
            layout,
            images,
            valid_idx,
            state,
            rng,
            sampler,
            progress,
            run_dir,
            Sgd::new(0.0, 0.0),
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        opts: SearchOptions,
        cfg: SearchConfig,
        layout: Layout,
        images: Images,
        valid_idx: Vec<usize>,
        state: State,
        rng: ChaCha8Rng,
        sampler: EpochSampler,
        progress: Progress,
        run_dir: &Path,
        sgd_in: Sgd,
        adam_in: Option<Adam>,
    ) -> Result<Self, SearchError> {
        let weight_names = weight_list(&cfg)?.into_iter().map(|(n, _)| n).collect();
        let mut sgd = Sgd::new(opts.momentum, opts.weight_decay);
        sgd.buf = sgd_in.buf;
        let adam = adam_in.unwrap_or_else(|| {
            Adam::new(
                opts.arch_learning_rate,
                0.5,
                0.999,
                1e-8,
                opts.arch_weight_decay,
            )
        });
        let augment = Augment {
            cutout: opts.cutout,
            ..Augment::reference_train()
        };
        Ok(Search {
            opts,
            cfg,
            images,
            valid_idx,
            augment,
            layout,
            weight_names,
            exec: Box::new(CpuExecutor::<T>::new()),
            graphs: HashMap::new(),
            eval_graphs: HashMap::new(),
            state,
            sgd,
            adam,
            rng,
            sampler,
            progress,
            run_dir: run_dir.to_path_buf(),
            resident: false,
            step_graphs: HashMap::new(),
            device_current: false,
            host_stale: false,
        })
    }

    /// Continue the run in `run_dir` from its checkpoint.
    pub fn resume(run_dir: &Path) -> Result<Self, SearchError> {
        let path = run_dir.join("checkpoint.npz");
        let ck_err = |reason: String| SearchError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        if !path.exists() {
            return Err(ck_err("no checkpoint in this run folder".into()));
        }
        let (mut arrays, meta) = checkpoint::read(&path)?;
        let progress: Progress =
            serde_json::from_value(meta).map_err(|e| ck_err(format!("meta.json: {e}")))?;
        let opts = progress.options.clone();
        let cfg = opts.config();
        let layout = cfg.layout()?;
        let mut take = |k: &str| {
            arrays
                .remove(k)
                .ok_or_else(|| ck_err(format!("missing tensor '{k}'")))
        };
        let mut state = State::default();
        for (name, shape, _) in &layout.entries {
            let a = take(&format!("sd/{name}"))?;
            if a.shape() != shape.as_slice() {
                return Err(ck_err(format!(
                    "'sd/{name}' has shape {:?}, expected {shape:?}",
                    a.shape()
                )));
            }
            state.tensors.insert(name.clone(), a);
        }
        state.alpha_normal = take("alpha/normal")?;
        state.alpha_reduce = take("alpha/reduce")?;
        let weight_names: Vec<String> = weight_list(&cfg)?.into_iter().map(|(n, _)| n).collect();
        let mut sgd = Sgd::new(opts.momentum, opts.weight_decay);
        if progress.global_step > 0 {
            sgd.buf = Some(
                weight_names
                    .iter()
                    .map(|n| take(&format!("sgd_buf/{n}")))
                    .collect::<Result<_, _>>()?,
            );
        }
        let mut adam = Adam::new(
            opts.arch_learning_rate,
            0.5,
            0.999,
            1e-8,
            opts.arch_weight_decay,
        );
        adam.t = progress.adam_t;
        if adam.t > 0 {
            adam.m = vec![take("adam_m/normal")?, take("adam_m/reduce")?];
            adam.v = vec![take("adam_v/normal")?, take("adam_v/reduce")?];
        }
        let images = load_images(&opts)?;
        let (train_idx, valid_idx) = search_split(images.n, opts.train_portion);
        let sampler =
            EpochSampler::from_state(train_idx.clone(), opts.batch_size, progress.sampler.clone())?;
        let rng = progress.rng.restore();
        // Drop log lines written after the checkpoint (a run killed between the two).
        let log = run_dir.join("log.jsonl");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let kept: Vec<&str> = text.lines().take(progress.log_lines).collect();
        let mut kept = kept.join("\n");
        if !kept.is_empty() {
            kept.push('\n');
        }
        std::fs::write(&log, kept).map_err(|e| run_err(run_dir, e))?;
        Self::assemble(
            opts,
            cfg,
            layout,
            images,
            valid_idx,
            state,
            rng,
            sampler,
            progress,
            run_dir,
            sgd,
            Some(adam),
        )
    }

    /// Run on another executor (e.g. the GPU), keeping everything else.
    pub fn with_executor(mut self, exec: Box<dyn Executor<T>>) -> Self {
        self.exec = exec;
        self.device_current = false;
        self
    }

    /// Resident steps (true): every step is one [`StepGraph`] run, with weights, alphas, BN
    /// buffers and optimiser state kept in the executor's variables (on the GPU: device
    /// memory) and copied to the host only for checkpoints and at the end. Host steps (false,
    /// the default): the architecture gradient and weight gradient come from the executor and
    /// the optimisers run on the host in f64 (src/search/optim.rs). Both compute the same step
    /// (tests/resident_step.rs); with T = f32 the resident optimisers run in f32, as PyTorch's.
    pub fn resident(mut self, on: bool) -> Self {
        self.resident = on;
        self
    }

    pub fn is_resident(&self) -> bool {
        self.resident
    }

    /// The state, SGD buffers and Adam moments as executor variables (names: step_graph.rs).
    fn upload_state(&mut self) -> Result<(), SearchError> {
        let adam = (!self.adam.m.is_empty()).then(|| (&self.adam.m[..], &self.adam.v[..]));
        super::step_graph::upload_state(
            self.exec.as_mut(),
            &self.layout,
            &self.state,
            self.sgd.buf.as_deref(),
            adam,
        )?;
        self.device_current = true;
        Ok(())
    }

    fn ensure_device(&mut self) -> Result<(), SearchError> {
        if self.resident && !self.device_current {
            self.upload_state()?;
        }
        Ok(())
    }

    /// Copy the executor's variables back into the host state (after resident steps).
    pub fn sync_host(&mut self) -> Result<(), SearchError> {
        if !self.host_stale {
            return Ok(());
        }
        fn get<T: Scalar>(
            exec: &mut Box<dyn Executor<T>>,
            n: &str,
        ) -> Result<ArrayD<f64>, SearchError> {
            Ok(exec.var(n)?.mapv(|x| x.as_f64()))
        }
        for (name, _, kind) in &self.layout.entries {
            if !matches!(kind, Kind::NumBatchesTracked) {
                let a = get(&mut self.exec, name)?;
                self.state.tensors.insert(name.clone(), a);
            }
        }
        self.state.alpha_normal = get(&mut self.exec, "alpha/normal")?;
        self.state.alpha_reduce = get(&mut self.exec, "alpha/reduce")?;
        let mut bufs = Vec::with_capacity(self.weight_names.len());
        for n in &self.weight_names {
            bufs.push(get(&mut self.exec, &format!("sgd_buf/{n}"))?);
        }
        self.sgd.buf = Some(bufs);
        self.adam.m = vec![
            get(&mut self.exec, "adam_m/normal")?,
            get(&mut self.exec, "adam_m/reduce")?,
        ];
        self.adam.v = vec![
            get(&mut self.exec, "adam_v/normal")?,
            get(&mut self.exec, "adam_v/reduce")?,
        ];
        self.host_stale = false;
        Ok(())
    }

    pub fn executor_name(&self) -> String {
        self.exec.name()
    }

    fn point(&self) -> Point {
        Point {
            weights: self
                .weight_names
                .iter()
                .map(|n| (n.clone(), self.state.tensors[n].clone()))
                .collect(),
            alpha: [
                self.state.alpha_normal.clone(),
                self.state.alpha_reduce.clone(),
            ],
        }
    }

    pub fn genotype(&self) -> Genotype {
        derive(
            &self.state.alpha_normal,
            &self.state.alpha_reduce,
            self.cfg.steps,
            self.cfg.multiplier,
        )
    }

    /// Write the checkpoint atomically.
    pub fn checkpoint(&mut self) -> Result<(), SearchError> {
        self.sync_host()?;
        self.progress.rng = RngState::capture(&self.rng);
        self.progress.sampler = self.sampler.state().clone();
        self.progress.adam_t = self.adam.t;
        let mut arrays: BTreeMap<String, ArrayD<f64>> = BTreeMap::new();
        for (k, v) in &self.state.tensors {
            arrays.insert(format!("sd/{k}"), v.clone());
        }
        arrays.insert("alpha/normal".into(), self.state.alpha_normal.clone());
        arrays.insert("alpha/reduce".into(), self.state.alpha_reduce.clone());
        if let Some(buf) = &self.sgd.buf {
            for (n, b) in self.weight_names.iter().zip(buf) {
                arrays.insert(format!("sgd_buf/{n}"), b.clone());
            }
        }
        if self.adam.t > 0 {
            arrays.insert("adam_m/normal".into(), self.adam.m[0].clone());
            arrays.insert("adam_m/reduce".into(), self.adam.m[1].clone());
            arrays.insert("adam_v/normal".into(), self.adam.v[0].clone());
            arrays.insert("adam_v/reduce".into(), self.adam.v[1].clone());
        }
        let meta = serde_json::to_value(&self.progress).expect("progress serialises");
        checkpoint::write(&self.run_dir.join("checkpoint.npz"), &arrays, &meta)?;
        Ok(())
    }

    fn apply_bn(&mut self, updates: &[BnStats], graph_bn: &[crate::darts::ops::BnRecord]) {
        for stats in updates {
            for (rec, (mean, var)) in graph_bn.iter().zip(stats) {
                let p = &rec.prefix;
                let mut rm = self.state.tensors[&format!("{p}.running_mean")].clone();
                let mut rv = self.state.tensors[&format!("{p}.running_var")].clone();
                let mut nb = self.state.tensors[&format!("{p}.num_batches_tracked")].clone();
                let (mean, var) = (
                    mean.view().into_shape_with_order(IxDyn(&[rm.len()])),
                    var.view().into_shape_with_order(IxDyn(&[rv.len()])),
                );
                let (mean, var) = (
                    mean.expect("per-channel").to_owned(),
                    var.expect("per-channel").to_owned(),
                );
                update_running_stats(&mut rm, &mut rv, &mut nb, &mean, &var, rec.count);
                self.state.tensors.insert(format!("{p}.running_mean"), rm);
                self.state.tensors.insert(format!("{p}.running_var"), rv);
                self.state
                    .tensors
                    .insert(format!("{p}.num_batches_tracked"), nb);
            }
        }
    }

    fn graphs_for(&mut self, nt: usize, nv: usize) -> Result<(), SearchError> {
        if !self.graphs.contains_key(&(nt, nv)) {
            let g = ArchGraphs::build_for(
                &self.cfg,
                &[nt, 3, 32, 32],
                &[nv, 3, 32, 32],
                self.opts.order == Order::Exact,
            )?;
            self.graphs.insert((nt, nv), g);
        }
        Ok(())
    }

    /// One search step on the training batch `idx`: architect step (Adam on alpha) on a
    /// fresh search batch, then the weight step (clip, SGD).
    fn step(&mut self, idx: &[usize], epoch: usize) -> Result<(), SearchError> {
        let train = make_batch(&self.images, idx, Some(&self.augment), &mut self.rng, 10)?;
        let sidx = fresh_batch(&self.valid_idx, self.opts.batch_size, &mut self.rng);
        let search = make_batch(&self.images, &sidx, Some(&self.augment), &mut self.rng, 10)?;
        if self.resident {
            self.step_resident(&train, &search, epoch)
        } else {
            self.step_host(train, search, epoch)
        }
    }

    /// The resident step: one [`StepGraph`] run; only the batches and three scalars go in,
    /// only the losses, logits, gradient norm and new alphas come back.
    fn step_resident(
        &mut self,
        train: &Batch,
        search: &Batch,
        epoch: usize,
    ) -> Result<(), SearchError> {
        let lr = self.opts.lr(epoch);
        let n = train.x.shape()[0];
        let key = (n, search.x.shape()[0]);
        if !self.step_graphs.contains_key(&key) {
            let hyper = StepHyper {
                momentum: self.opts.momentum,
                weight_decay: self.opts.weight_decay,
                grad_clip: self.opts.grad_clip,
                arch_weight_decay: self.adam.weight_decay,
                beta1: self.adam.beta1,
                beta2: self.adam.beta2,
                adam_eps: self.adam.eps,
            };
            let sg = StepGraph::build(
                &self.cfg,
                &[key.0, 3, 32, 32],
                &[key.1, 3, 32, 32],
                self.opts.order,
                &hyper,
            )?;
            self.step_graphs.insert(key, sg);
        }
        self.ensure_device()?;
        let step = self.progress.global_step;
        let serr = |source| SearchError::Step {
            epoch,
            step,
            source,
        };
        // Adam's bias corrections for step t (as Adam::step computes them).
        let (bc1, bc2_sqrt) = self.adam.bias_corrections(self.adam.t + 1);
        let scalar = |v: f64| ArrayD::from_elem(IxDyn(&[]), T::of(v));
        let mut f = Feeds::<T>::new();
        f.insert("train/x", train.x.mapv(T::of));
        f.insert("train/onehot", train.onehot.mapv(T::of));
        f.insert("valid/x", search.x.mapv(T::of));
        f.insert("valid/onehot", search.onehot.mapv(T::of));
        f.insert("lr", scalar(lr));
        f.insert("adam/step_size", scalar(self.adam.lr / bc1));
        f.insert("adam/bc2_sqrt", scalar(bc2_sqrt));
        let t0 = Instant::now();
        let sg = &self.step_graphs[&key];
        let outs = [
            sg.loss_train,
            sg.logits_train,
            sg.loss_valid,
            sg.grad_norm,
            sg.alpha_new[0],
            sg.alpha_new[1],
        ];
        let bn_updates = sg.bn_updates;
        // The variables change only if the run succeeds; on an error they are as before.
        let vals = self
            .exec
            .run_assign(&sg.graph, &f, &outs, &sg.assign)
            .map_err(|source| {
                serr(ArchError::Exec {
                    what: "the resident search step".into(),
                    source,
                })
            })?;
        self.host_stale = true;
        let mut it = vals.into_iter().map(|a| a.mapv(|x| x.as_f64()));
        let mut next = || it.next().expect("one value per output");
        let (loss, logits, loss_valid, grad_norm) = (next().sum(), next(), next().sum(), next());
        let alphas = [next(), next()];
        let scalar_check = |what: &str, tensor: &str, v: f64| {
            check_finite(what, tensor, &ArrayD::from_elem(IxDyn(&[]), v)).map_err(serr)
        };
        check_finite("architect step", "alpha/normal", &alphas[0]).map_err(serr)?;
        check_finite("architect step", "alpha/reduce", &alphas[1]).map_err(serr)?;
        scalar_check("architect step", "L_val", loss_valid)?;
        scalar_check("weight step", "L_train", loss)?;
        // A finite gradient norm means every weight gradient, hence every new weight, is finite.
        check_finite("weight step", "||grad_w L_train||", &grad_norm).map_err(serr)?;
        let [an, ar] = alphas;
        self.state.alpha_normal = an;
        self.state.alpha_reduce = ar;
        self.adam.t += 1;
        for (name, _, kind) in &self.layout.entries {
            if matches!(kind, Kind::NumBatchesTracked) {
                if let Some(nb) = self.state.tensors.get_mut(name) {
                    nb.mapv_inplace(|v| v + bn_updates as f64);
                }
            }
        }
        let s = &mut self.progress.sums;
        s.loss += loss * n as f64;
        s.correct += correct(&logits, &train.onehot);
        s.seen += n;
        s.steps += 1;
        s.resident_seconds += t0.elapsed().as_secs_f64();
        self.progress.global_step += 1;
        Ok(())
    }

    /// The host step: gradients from the executor, optimisers on the host in f64.
    fn step_host(&mut self, train: Batch, search: Batch, epoch: usize) -> Result<(), SearchError> {
        let lr = self.opts.lr(epoch);
        let idx_len = train.x.shape()[0];
        let key = (idx_len, search.x.shape()[0]);
        self.graphs_for(key.0, key.1)?;
        let step = self.progress.global_step;
        let serr = |source| SearchError::Step {
            epoch,
            step,
            source,
        };
        let unroll = Unroll {
            eta: lr,
            weight_decay: self.opts.weight_decay,
            momentum: self.opts.momentum,
        };
        let t0 = Instant::now();
        let point = self.point();
        let graphs = &self.graphs[&key];
        let mut arch = arch_gradient(
            self.exec.as_mut(),
            graphs,
            &point,
            self.sgd.buf.as_deref(),
            &train,
            &search,
            &unroll,
            self.opts.order,
        )
        .map_err(serr)?;
        let mut alphas = vec![
            self.state.alpha_normal.clone(),
            self.state.alpha_reduce.clone(),
        ];
        // An alpha no cell uses has no gradient in PyTorch: Adam leaves it (and its moments).
        let used = self.cfg.alphas_used();
        let grads: Vec<Option<&ArrayD<f64>>> = arch
            .grad
            .iter()
            .zip(used)
            .map(|(g, u)| u.then_some(g))
            .collect();
        self.adam.step_present(&mut alphas, &grads);
        check_finite("architect step", "alpha/normal", &alphas[0]).map_err(serr)?;
        check_finite("architect step", "alpha/reduce", &alphas[1]).map_err(serr)?;
        let arch_bn: Vec<_> = match self.opts.order {
            Order::First => graphs.valid.bn.clone(),
            Order::Second => graphs.train.bn.clone(),
            Order::Exact => graphs
                .unrolled
                .as_ref()
                .map(|u| u.train_bn.clone())
                .unwrap_or_default(),
        };
        let t1 = Instant::now();
        // Weight step with the just-updated alphas, from the weights the architect step left
        // (the second order's in-place restore: ArchStep::weights_after).
        let mut point = point;
        point.alpha = [alphas[0].clone(), alphas[1].clone()];
        if let Some(w) = arch.weights_after.take() {
            point.weights = w;
        }
        let e = evaluate(
            self.exec.as_mut(),
            &self.graphs[&key].train,
            &point,
            &train,
            "weight step",
        )
        .map_err(serr)?;
        let mut grads = e.grad_w.clone();
        clip_grad_norm(&mut grads, self.opts.grad_clip);
        let mut weights: Vec<ArrayD<f64>> = point.weights.into_iter().map(|(_, w)| w).collect();
        self.sgd.step(&mut weights, &grads, lr);
        for (n, w) in self.weight_names.iter().zip(&weights) {
            check_finite("weight step", n, w).map_err(serr)?;
        }
        let train_bn = self.graphs[&key].train.bn.clone();
        let t2 = Instant::now();
        // Commit the step.
        for (n, w) in self.weight_names.clone().iter().zip(weights) {
            self.state.tensors.insert(n.clone(), w);
        }
        let [an, ar]: [ArrayD<f64>; 2] = alphas.try_into().expect("two alphas");
        self.state.alpha_normal = an;
        self.state.alpha_reduce = ar;
        // Running statistics absorb the arch forwards, then the weight-step forward.
        self.apply_bn(&arch.bn_updates, &arch_bn);
        self.apply_bn(std::slice::from_ref(&e.bn_stats), &train_bn);
        let s = &mut self.progress.sums;
        s.loss += e.loss * idx_len as f64;
        s.correct += correct(&e.logits, &train.onehot);
        s.seen += idx_len;
        s.steps += 1;
        s.arch_seconds += (t1 - t0).as_secs_f64();
        s.weight_seconds += (t2 - t1).as_secs_f64();
        self.progress.global_step += 1;
        Ok(())
    }

    /// Validation loss and accuracy in eval mode (running BN statistics) on the arch half,
    /// with the train augmentation, as the reference's `infer` sees it.
    pub fn infer(&mut self) -> Result<(f64, f64), SearchError> {
        let order = permutation(&self.valid_idx, &mut self.rng);
        let (mut loss, mut correct_n, mut seen) = (0.0, 0, 0);
        for chunk in order.chunks(self.opts.batch_size) {
            let b = make_batch(&self.images, chunk, Some(&self.augment), &mut self.rng, 10)?;
            let (l, logits) = self.eval_batch(&b)?;
            loss += l * chunk.len() as f64;
            correct_n += correct(&logits, &b.onehot);
            seen += chunk.len();
        }
        Ok((loss / seen as f64, correct_n as f64 / seen as f64))
    }

    fn eval_batch(&mut self, b: &Batch) -> Result<(f64, ArrayD<f64>), SearchError> {
        let n = b.x.shape()[0];
        if !self.eval_graphs.contains_key(&n) {
            let mut g = Graph::new();
            let x = g.input("x", [n, 3, 32, 32])?;
            let t = g.input("onehot", [n, 10])?;
            let k = self.cfg.k();
            let an = g.input("alpha/normal", [k, 8])?;
            let ar = g.input("alpha/reduce", [k, 8])?;
            let mut nb = NetBuilder::search(&mut g, ParamSource::Inputs, false);
            nb.train_mode = false;
            let out = network::build(&mut nb, &self.cfg, x, t, an, ar)?;
            self.eval_graphs.insert(n, (g, out.loss, out.logits));
        }
        self.ensure_device()?;
        let (g, loss, logits) = &self.eval_graphs[&n];
        let mut f = Feeds::<T>::new();
        f.insert("x", b.x.mapv(T::of));
        f.insert("onehot", b.onehot.mapv(T::of));
        if self.resident {
            // Weights, running statistics and alphas are the executor's variables.
            let v = self.exec.run(g, &f, &[*loss, *logits])?;
            return Ok((
                v[0].iter().next().map_or(f64::NAN, |x| x.as_f64()),
                v[1].mapv(|x| x.as_f64()),
            ));
        }
        for (name, _, kind) in &self.layout.entries {
            if matches!(kind, Kind::NumBatchesTracked) || g.input_id(name).is_none() {
                continue;
            }
            f.insert(name.clone(), self.state.tensors[name].mapv(T::of));
        }
        f.insert("alpha/normal", self.state.alpha_normal.mapv(T::of));
        f.insert("alpha/reduce", self.state.alpha_reduce.mapv(T::of));
        let v = self.exec.run(g, &f, &[*loss, *logits])?;
        Ok((
            v[0].iter().next().map_or(f64::NAN, |x| x.as_f64()),
            v[1].mapv(|x| x.as_f64()),
        ))
    }

    fn append_log(&mut self, line: &serde_json::Value) -> Result<(), SearchError> {
        let path = self.run_dir.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| run_err(&path, e))?;
        writeln!(f, "{line}").map_err(|e| run_err(&path, e))?;
        f.sync_all().map_err(|e| run_err(&path, e))?;
        self.progress.log_lines += 1;
        Ok(())
    }

    /// Run (or continue) the search until done or until `stop` is set, in which case the
    /// current step finishes, a checkpoint is written and `Interrupted` is returned.
    /// `on_step(epoch, step_in_epoch, steps_per_epoch, sums)` reports progress.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_step: &mut dyn FnMut(usize, usize, usize, &EpochSums),
    ) -> Result<Finish, SearchError> {
        // The host state is the truth at the start of a run (it may have been edited).
        self.device_current = false;
        while self.progress.epoch < self.opts.epochs {
            let epoch = self.progress.epoch;
            if !self.progress.in_epoch {
                self.progress.genotype_at_epoch_start = self.genotype().to_string();
                self.sampler.start_epoch(&mut self.rng);
                self.progress.sums = EpochSums::default();
                self.progress.in_epoch = true;
            }
            let per_epoch = self.sampler.batches_per_epoch();
            let epoch_start = Instant::now();
            while let Some(idx) = self.sampler.next_batch() {
                self.step(&idx, epoch)?;
                on_step(
                    epoch,
                    self.progress.sums.steps,
                    per_epoch,
                    &self.progress.sums,
                );
                if stop.load(Ordering::SeqCst) {
                    self.checkpoint()?;
                    return Ok(Finish::Interrupted {
                        epoch,
                        step: self.progress.global_step,
                    });
                }
            }
            let t = Instant::now();
            let (valid_loss, valid_acc) = self.infer()?;
            let infer_s = t.elapsed().as_secs_f64();
            let s = self.progress.sums.clone();
            let line = serde_json::json!({
                "epoch": epoch,
                "lr": self.opts.lr(epoch),
                "genotype_at_start": self.progress.genotype_at_epoch_start,
                "train_loss": s.loss / s.seen as f64,
                "train_acc": s.correct as f64 / s.seen as f64,
                "valid_loss": valid_loss,
                "valid_acc": valid_acc,
                "genotype": self.genotype().to_string(),
                "softmax_alpha_normal": rows(&softmax_rows(&self.state.alpha_normal)),
                "softmax_alpha_reduce": rows(&softmax_rows(&self.state.alpha_reduce)),
                "timing": {
                    "step": if self.resident { "resident" } else { "host" },
                    "arch_s_per_step": (!self.resident).then(|| s.arch_seconds / s.steps as f64),
                    "weight_s_per_step": (!self.resident).then(|| s.weight_seconds / s.steps as f64),
                    "s_per_step": s.seconds_per_step(),
                    "images_per_s": s.seen as f64 / (s.seconds_per_step() * s.steps as f64),
                    "infer_s": infer_s,
                    "epoch_s": epoch_start.elapsed().as_secs_f64(),
                },
            });
            self.append_log(&line)?;
            self.progress.in_epoch = false;
            self.progress.epoch += 1;
            self.checkpoint()?;
        }
        self.sync_host()?;
        let genotype = self.genotype();
        std::fs::write(self.run_dir.join("genotype.txt"), format!("{genotype}\n"))
            .map_err(|e| run_err(&self.run_dir, e))?;
        Ok(Finish::Done { genotype })
    }
}

fn rows(a: &ArrayD<f64>) -> Vec<Vec<f64>> {
    a.axis_iter(Axis(0))
        .map(|r| r.iter().copied().collect())
        .collect()
}

/// Number of rows whose first maximal logit is the labelled class.
pub fn correct(logits: &ArrayD<f64>, onehot: &ArrayD<f64>) -> usize {
    logits
        .axis_iter(Axis(0))
        .zip(onehot.axis_iter(Axis(0)))
        .filter(|(l, t)| {
            let mut best = 0;
            for (i, &v) in l.iter().enumerate() {
                if v > l[best] {
                    best = i;
                }
            }
            t[best] == 1.0
        })
        .count()
}
