//! The bilevel search loop as the reference runs it (cnn/train_search.py; REFERENCE_NOTES.md
//! section 4): per step an architect step on a fresh search batch, then a weight step with
//! gradient-norm clipping; cosine learning rate with the reference's off-by-one epoch
//! semantics; per-epoch validation in eval mode; atomic checkpoints and exact resume.

mod audit;
mod hessian;

use super::alpha_hessian::{AlphaHessian, AlphaHessianError, DominantEstimate};
use super::architect::ArchError;
use super::checkpoint;
use super::early_stop::EsDecision;
use super::step_graph::OptimState;
use super::stepper::Stepper;
use crate::darts::genotype::{derive, softmax_rows, Genotype};
use crate::darts::init::init_state;
use crate::darts::names;
use crate::darts::network::{self, SearchConfig};
use crate::darts::ops::{NetBuilder, ParamSource};
use crate::darts::params::State;
use crate::data::{
    embedded_subset, fresh_batch, make_batch, permutation, read_cifar_dir, search_split, Augment,
    Batch, DataError, EpochSampler, Images, RngState, SamplerState,
};
use crate::exec::{Executor, Feeds, Scalar};
use crate::graph::{Graph, NodeId};
use ndarray::{ArrayD, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use crate::exec::Dtype;

pub use super::options::{DataSource, SearchOptions};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("the audit of step {step}: {reason}")]
    Audit { step: usize, reason: String },
    #[error("epoch {epoch}, step {step}: {cause}")]
    Step {
        epoch: usize,
        step: usize,
        cause: ArchError,
    },
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error(transparent)]
    Config(#[from] crate::darts::network::ConfigError),
    #[error(transparent)]
    State(#[from] crate::darts::params::StateError),
    #[error("{flag}: {reason}")]
    Option { flag: String, reason: String },
    #[error("run folder {path}: {reason}")]
    RunDir { path: String, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error("running the validation graph: {0}")]
    Exec(#[from] crate::exec::ExecError),
    #[error("epoch {epoch}, alpha Hessian (--track-hessian): {cause}")]
    Hessian {
        epoch: usize,
        cause: AlphaHessianError,
    },
}

/// Per-epoch running sums.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss: f64,
    pub correct: usize,
    pub seen: usize,
    pub steps: usize,
    /// Seconds in search steps (architecture step and weight step together).
    #[serde(default)]
    pub step_seconds: f64,
}

impl EpochSums {
    /// Mean seconds per search step.
    pub fn seconds_per_step(&self) -> f64 {
        self.step_seconds / self.steps.max(1) as f64
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
    /// Adam steps taken on the alphas the network uses.
    pub adam_t: u64,
    pub log_lines: usize,
    /// `--track-hessian`: one entry per finished epoch, in order (the series DARTS-ES reads).
    #[serde(default)]
    pub hessian: Vec<HessianEpoch>,
    /// Set when DARTS-ES stopped the run; a resumed run then ends at once.
    #[serde(default)]
    pub early_stopped: Option<EsDecision>,
}

/// The alpha Hessian at the end of one epoch, on that epoch's last search batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HessianEpoch {
    pub epoch: usize,
    pub estimate: DominantEstimate,
    /// The genotype at the end of the epoch (what DARTS-ES returns for it).
    pub genotype: String,
    pub seconds: f64,
}

/// Checkpoint keys of the search batch the epoch's alpha Hessian is computed on, saved while
/// an epoch is in progress so that a run resumed after its last step still has it.
const HESSIAN_BATCH: [&str; 2] = ["alpha_hessian/valid_x", "alpha_hessian/valid_onehot"];

/// How a run ended.
#[derive(Debug)]
pub enum Finish {
    Done {
        genotype: Genotype,
    },
    /// DARTS-ES stopped the run after epoch `decision.stop_epoch`; `genotype` is that of
    /// epoch `decision.return_epoch` (also in genotype.txt).
    EarlyStopped {
        genotype: Genotype,
        decision: EsDecision,
    },
    /// Stopped after step `step` (1-based) of `of` in epoch `epoch` (0-based), `global_step`
    /// steps in all; the checkpoint holds the state after that step.
    Interrupted {
        epoch: usize,
        step: usize,
        of: usize,
        global_step: usize,
    },
}

/// One search run: data, the stepper (executor and state) and the loop's progress.
pub struct Search<T: Scalar> {
    pub opts: SearchOptions,
    pub cfg: SearchConfig,
    images: Images,
    valid_idx: Vec<usize>,
    augment: Augment,
    stepper: Stepper<T>,
    eval_graphs: HashMap<usize, (Graph, NodeId, NodeId)>,
    rng: ChaCha8Rng,
    sampler: EpochSampler,
    pub progress: Progress,
    pub run_dir: PathBuf,
    /// The f64 CPU auditor of `--audit-every`, on its own thread (started at the first audit).
    auditor: Option<crate::search::audit::AuditWorker>,
    /// `--track-hessian`: the HVP graphs by batch size, and the last search batch.
    hessian_graphs: HashMap<usize, AlphaHessian>,
    last_search: Option<Batch>,
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

/// The checkpoint of the run in `run_dir`: its tensors and its progress record.
pub fn read_checkpoint(
    run_dir: &Path,
) -> Result<(BTreeMap<String, ArrayD<f64>>, Progress), SearchError> {
    let path = run_dir.join("checkpoint.npz");
    let ck_err = |reason: String| SearchError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        return Err(ck_err("no checkpoint in this run folder".into()));
    }
    let (arrays, meta) = checkpoint::read(&path)?;
    let progress: Progress =
        serde_json::from_value(meta).map_err(|e| ck_err(format!("meta.json: {e}")))?;
    Ok((arrays, progress))
}

/// The options of the run in `run_dir` (from its checkpoint), e.g. to open the executor a
/// resumed run needs.
pub fn saved_options(run_dir: &Path) -> Result<SearchOptions, SearchError> {
    Ok(read_checkpoint(run_dir)?.1.options)
}

impl<T: Scalar> Search<T> {
    /// A fresh run in `run_dir` (created; must not already hold a checkpoint) on `exec`.
    pub fn new(
        opts: SearchOptions,
        run_dir: &Path,
        exec: Box<dyn Executor<T>>,
    ) -> Result<Self, SearchError> {
        if run_dir.join("checkpoint.npz").exists() {
            return Err(run_err(
                run_dir,
                "already holds a checkpoint; use --resume to continue it",
            ));
        }
        opts.validate()?;
        let cfg = opts.config();
        cfg.validate(32, 32)?;
        let layout = cfg.layout()?;
        let images = load_images(&opts)?;
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let state = init_state(&layout, cfg.k(), &mut rng);
        let (train_idx, valid_idx) = search_split(images.n, opts.train_portion);
        if train_idx.is_empty() || valid_idx.is_empty() {
            return Err(SearchError::Option {
                flag: "--train-portion".into(),
                reason: format!(
                    "{} of {} images leaves {} for the weights and {} for the architecture; \
                     each half needs at least one (see also --max-images)",
                    opts.train_portion,
                    images.n,
                    train_idx.len(),
                    valid_idx.len()
                ),
            });
        }
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
            hessian: Vec::new(),
            early_stopped: None,
        };
        std::fs::create_dir_all(run_dir).map_err(|e| run_err(run_dir, e))?;
        std::fs::write(
            run_dir.join("config.json"),
            serde_json::to_string_pretty(&opts).expect("options serialise"),
        )
        .map_err(|e| run_err(run_dir, e))?;
        std::fs::write(run_dir.join("log.jsonl"), "").map_err(|e| run_err(run_dir, e))?;
        let stepper = Stepper::new(
            cfg,
            opts.order,
            opts.hyper(),
            exec,
            state,
            OptimState::default(),
        )?;
        Ok(Self::assemble(
            opts, images, valid_idx, stepper, rng, sampler, progress, run_dir, None,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        opts: SearchOptions,
        images: Images,
        valid_idx: Vec<usize>,
        stepper: Stepper<T>,
        rng: ChaCha8Rng,
        sampler: EpochSampler,
        progress: Progress,
        run_dir: &Path,
        last_search: Option<Batch>,
    ) -> Self {
        let augment = Augment {
            cutout: opts.cutout,
            ..Augment::reference_train()
        };
        Search {
            cfg: stepper.cfg,
            opts,
            images,
            valid_idx,
            augment,
            stepper,
            eval_graphs: HashMap::new(),
            rng,
            sampler,
            progress,
            run_dir: run_dir.to_path_buf(),
            auditor: None,
            hessian_graphs: HashMap::new(),
            last_search,
        }
    }

    /// Continue the run in `run_dir` from its checkpoint, on `exec` (which must be the
    /// executor the run was started on: see [`saved_options`]).
    pub fn resume(run_dir: &Path, exec: Box<dyn Executor<T>>) -> Result<Self, SearchError> {
        let path = run_dir.join("checkpoint.npz");
        let ck_err = |reason: String| SearchError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let (mut arrays, progress) = read_checkpoint(run_dir)?;
        let opts = progress.options.clone();
        let cfg = opts.config();
        let layout = cfg.layout()?;
        let mut take = |k: &str, shape: &[usize]| {
            let a = arrays
                .remove(k)
                .ok_or_else(|| ck_err(format!("missing tensor '{k}'")))?;
            if a.shape() != shape {
                return Err(ck_err(format!(
                    "'{k}' has shape {:?}, expected {shape:?}",
                    a.shape()
                )));
            }
            if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                return Err(ck_err(format!(
                    "'{k}' holds {} at flat index {i}",
                    a.as_slice().map_or(f64::NAN, |s| s[i])
                )));
            }
            Ok(a)
        };
        let mut state = State::default();
        let mut bufs = Vec::new();
        for (name, shape, kind) in &layout.entries {
            state
                .tensors
                .insert(name.clone(), take(&format!("sd/{name}"), shape)?);
            if kind.trainable() && progress.global_step > 0 {
                bufs.push(take(&names::sgd_buf(name), shape)?);
            }
        }
        let alpha_shape = [cfg.k(), 8];
        state.alpha_normal = take(names::ALPHA[0], &alpha_shape)?;
        state.alpha_reduce = take(names::ALPHA[1], &alpha_shape)?;
        let mut opt = OptimState {
            sgd_buf: (progress.global_step > 0).then_some(bufs),
            ..OptimState::default()
        };
        for (c, cell) in names::CELLS.into_iter().enumerate() {
            if cfg.alphas_used()[c] && progress.adam_t > 0 {
                opt.adam_t[c] = progress.adam_t;
                opt.adam_m[c] = Some(take(&names::adam_m(cell), &alpha_shape)?);
                opt.adam_v[c] = Some(take(&names::adam_v(cell), &alpha_shape)?);
            }
        }
        let last_search = match (
            arrays.remove(HESSIAN_BATCH[0]),
            arrays.remove(HESSIAN_BATCH[1]),
        ) {
            (Some(x), Some(onehot)) => Some(Batch { x, onehot }),
            (None, None) => None,
            _ => return Err(ck_err("only half of the alpha-Hessian search batch".into())),
        };
        if let Some(k) = arrays.keys().next() {
            return Err(ck_err(format!("unexpected tensor '{k}'")));
        }
        let images = load_images(&opts)?;
        let (train_idx, valid_idx) = search_split(images.n, opts.train_portion);
        let sampler =
            EpochSampler::from_state(train_idx.clone(), opts.batch_size, progress.sampler.clone())?;
        let rng = progress.rng.restore();
        let stepper = Stepper::new(cfg, opts.order, opts.hyper(), exec, state, opt)?;
        // Drop log lines written after the checkpoint (a run killed between the two).
        let log = run_dir.join("log.jsonl");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let kept: Vec<&str> = text.lines().take(progress.log_lines).collect();
        let mut kept = kept.join("\n");
        if !kept.is_empty() {
            kept.push('\n');
        }
        std::fs::write(&log, kept).map_err(|e| run_err(run_dir, e))?;
        Ok(Self::assemble(
            opts,
            images,
            valid_idx,
            stepper,
            rng,
            sampler,
            progress,
            run_dir,
            last_search,
        ))
    }

    /// The current host state (weights, BN buffers, alphas), read back from the executor.
    pub fn state(&mut self) -> Result<&State, SearchError> {
        self.stepper.sync_host()?;
        Ok(&self.stepper.state)
    }

    /// Replace the host state (e.g. to start from given weights); the executor is refreshed
    /// before the next step.
    pub fn set_state(&mut self, state: State) -> Result<(), SearchError> {
        self.stepper.sync_host()?;
        self.stepper.state = state;
        self.stepper.host_changed();
        Ok(())
    }

    /// The state of the run's random generator now (its keystream position moves with every
    /// augmentation, batch and shuffle draw): a resumed run starts where its checkpoint left
    /// it, a fresh one where seeding and initialisation leave it.
    pub fn rng_position(&self) -> RngState {
        RngState::capture(&self.rng)
    }

    pub fn executor_name(&self) -> String {
        self.stepper.executor_name()
    }

    pub fn genotype(&self) -> Genotype {
        let st = &self.stepper.state;
        derive(
            &st.alpha_normal,
            &st.alpha_reduce,
            self.cfg.steps,
            self.cfg.multiplier,
        )
    }

    /// Write the checkpoint atomically.
    pub fn checkpoint(&mut self) -> Result<(), SearchError> {
        self.finish_audits()?;
        self.stepper.sync_host()?;
        self.progress.rng = RngState::capture(&self.rng);
        self.progress.sampler = self.sampler.state().clone();
        let (st, opt) = (&self.stepper.state, &self.stepper.opt);
        self.progress.adam_t = opt.adam_t.into_iter().max().unwrap_or(0);
        let mut arrays: BTreeMap<String, ArrayD<f64>> = BTreeMap::new();
        for (k, v) in &st.tensors {
            arrays.insert(format!("sd/{k}"), v.clone());
        }
        arrays.insert(names::ALPHA[0].into(), st.alpha_normal.clone());
        arrays.insert(names::ALPHA[1].into(), st.alpha_reduce.clone());
        if let Some(buf) = &opt.sgd_buf {
            for ((n, _), b) in self
                .stepper
                .layout
                .weights()
                .map(|(n, s, _)| (n, s))
                .zip(buf)
            {
                arrays.insert(names::sgd_buf(n), b.clone());
            }
        }
        for (c, cell) in names::CELLS.into_iter().enumerate() {
            if let (Some(m), Some(v)) = (&opt.adam_m[c], &opt.adam_v[c]) {
                arrays.insert(names::adam_m(cell), m.clone());
                arrays.insert(names::adam_v(cell), v.clone());
            }
        }
        if let (true, true, Some(b)) = (
            self.opts.hessian.track,
            self.progress.in_epoch,
            &self.last_search,
        ) {
            arrays.insert(HESSIAN_BATCH[0].into(), b.x.clone());
            arrays.insert(HESSIAN_BATCH[1].into(), b.onehot.clone());
        }
        let meta = serde_json::to_value(&self.progress).expect("progress serialises");
        checkpoint::write(&self.run_dir.join("checkpoint.npz"), &arrays, &meta)?;
        Ok(())
    }

    /// One search step on the training batch `idx`: architect step (Adam on alpha) on a
    /// fresh search batch, then the weight step (clip, SGD).
    fn step(&mut self, idx: &[usize], epoch: usize) -> Result<(), SearchError> {
        let train = make_batch(&self.images, idx, Some(&self.augment), &mut self.rng, 10)?;
        let sidx = fresh_batch(&self.valid_idx, self.opts.batch_size, &mut self.rng);
        let search = make_batch(&self.images, &sidx, Some(&self.augment), &mut self.rng, 10)?;
        let step = self.progress.global_step;
        if self.opts.audit_every.is_some_and(|k| step % k == 0) {
            self.audit(&train, &search, epoch)?;
        }
        let t0 = Instant::now();
        let rep = self
            .stepper
            .step(&train, &search, self.opts.lr(epoch))
            .map_err(|cause| SearchError::Step { epoch, step, cause })?;
        let n = idx.len();
        let s = &mut self.progress.sums;
        s.loss += rep.loss_train * n as f64;
        s.correct += correct(&rep.logits, &train.onehot);
        s.seen += n;
        s.steps += 1;
        s.step_seconds += t0.elapsed().as_secs_f64();
        self.progress.global_step += 1;
        if self.opts.hessian.track {
            self.last_search = Some(search);
        }
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

    /// Loss and logits of the network in eval mode on `b`; weights, running statistics and
    /// alphas are the executor's variables.
    fn eval_batch(&mut self, b: &Batch) -> Result<(f64, ArrayD<f64>), SearchError> {
        let n = b.x.shape()[0];
        if !self.eval_graphs.contains_key(&n) {
            let mut g = Graph::new();
            let x = g.input(names::X, [n, 3, 32, 32])?;
            let t = g.input(names::ONEHOT, [n, 10])?;
            let k = self.cfg.k();
            let an = g.input(names::ALPHA[0], [k, 8])?;
            let ar = g.input(names::ALPHA[1], [k, 8])?;
            let mut nb = NetBuilder::search(&mut g, ParamSource::Inputs, false);
            nb.train_mode = false;
            let out = network::build(&mut nb, &self.cfg, x, t, an, ar)?;
            self.eval_graphs.insert(n, (g, out.loss, out.logits));
        }
        let (g, loss, logits) = &self.eval_graphs[&n];
        let mut f = Feeds::<T>::new();
        f.insert(names::X, b.x.mapv(T::of));
        f.insert(names::ONEHOT, b.onehot.mapv(T::of));
        let v = self.stepper.executor()?.run(g, &f, &[*loss, *logits])?;
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
        if let Some(decision) = self.progress.early_stopped.clone() {
            return self.early_stopped(decision);
        }
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
                        step: self.progress.sums.steps,
                        of: per_epoch,
                        global_step: self.progress.global_step,
                    });
                }
            }
            let t = Instant::now();
            let (valid_loss, valid_acc) = self.infer()?;
            let infer_s = t.elapsed().as_secs_f64();
            let hessian = if self.opts.hessian.track {
                Some(self.track_hessian(epoch)?)
            } else {
                None
            };
            let decision = self.opts.hessian.early_stop.and_then(|rule| {
                let series: Vec<f64> = self
                    .progress
                    .hessian
                    .iter()
                    .map(|h| h.estimate.eigenvalue)
                    .collect();
                rule.check(&series)
            });
            let s = self.progress.sums.clone();
            let line = serde_json::json!({
                "epoch": epoch,
                "global_step": self.progress.global_step,
                "lr": self.opts.lr(epoch),
                "genotype_at_start": self.progress.genotype_at_epoch_start,
                "train_loss": s.loss / s.seen as f64,
                "train_acc": s.correct as f64 / s.seen as f64,
                "valid_loss": valid_loss,
                "valid_acc": valid_acc,
                "genotype": self.genotype().to_string(),
                "softmax_alpha_normal": rows(&softmax_rows(&self.stepper.state.alpha_normal)),
                "softmax_alpha_reduce": rows(&softmax_rows(&self.stepper.state.alpha_reduce)),
                "timing": {
                    "s_per_step": s.seconds_per_step(),
                    "images_per_s": s.seen as f64 / (s.seconds_per_step() * s.steps as f64),
                    "infer_s": infer_s,
                    "epoch_s": epoch_start.elapsed().as_secs_f64(),
                },
            });
            let mut line = line;
            if let Some(h) = &hessian {
                let e = &h.estimate;
                line["hessian_dominant_eigenvalue"] = e.eigenvalue.into();
                line["hessian"] = serde_json::json!({
                    "hvps": e.hvps,
                    "residual": e.residual,
                    "converged": e.converged,
                    "max_ritz": e.max_ritz,
                    "max_ritz_residual": e.max_ritz_residual,
                });
                line["timing"]["hessian_s"] = h.seconds.into();
            }
            if let Some(d) = &decision {
                line["early_stop"] = serde_json::to_value(d).expect("decision serialises");
            }
            self.append_log(&line)?;
            self.progress.in_epoch = false;
            self.progress.epoch += 1;
            if let Some(d) = decision {
                self.progress.early_stopped = Some(d.clone());
                self.checkpoint()?;
                return self.early_stopped(d);
            }
            self.checkpoint()?;
        }
        self.stepper.sync_host()?;
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
