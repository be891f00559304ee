//! The recurrent search loop (rnn/train_search.py; RNN_REFERENCE_NOTES.md section 6): weights
//! on PTB train, the architecture on PTB valid (batch `batch_size`), the sequence length 35
//! with probability 0.95 else 17, the learning rate scaled by seq_len / bptt for each step,
//! the hidden states carried across steps and reset every epoch, evaluation on the valid split
//! at batch `eval_batch_size` every epoch, with an append-only log.jsonl, atomic checkpoints
//! (every `checkpoint_every` steps and at every epoch's end) that resume bit-identically, and
//! the genotype with the reference's tie rules. Each step is one [`RnnStepGraph`] run with the
//! state in the executor's variables.
//!
//! Randomness (the sequence lengths and every dropout mask) comes from one ChaCha8 generator
//! seeded by `seed` and saved in checkpoints; the numbers are therefore ours, not numpy's and
//! torch's streams.

use super::architect::{check_finite, ArchError, Order};
use super::checkpoint;
use super::recurrent_step::{Dropouts, RnnStepGraph, RnnStepHyper, CELL};
use crate::darts::names as cnn_names;
use crate::darts::params::Kind;
use crate::darts::rnn::genotype::{derive, RnnGenotype};
use crate::darts::rnn::model::{self, Cell, LmBatch, Masks};
use crate::darts::rnn::state::{RnnConfig, RnnState};
use crate::darts::rnn::{names, PRIMITIVES, ROWS};
use crate::data::ptb::{batchify, get_batch, Corpus};
use crate::data::RngState;
use crate::exec::{Backend, Dtype, ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, NodeId};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything that defines a recurrent search (stored in its checkpoints).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RnnSearchOptions {
    /// emsize = nhid = nhidlast.
    pub nhid: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub bptt: usize,
    pub lr: f64,
    pub seed: u64,
    pub order: Order,
    pub hyper: RnnStepHyper,
    /// Use only the first this many rows of the batchified train split per epoch (None: all).
    pub max_train_rows: Option<usize>,
    /// Evaluate on only the first this many rows of the batchified valid split (None: all).
    pub max_eval_rows: Option<usize>,
    pub checkpoint_every: usize,
    pub backend: Backend,
    pub dtype: Dtype,
}

impl RnnSearchOptions {
    /// train_search.py's configuration (the README's search command passes --unrolled, i.e.
    /// the second order): emsize = nhid 300, 50 epochs, batch 256, eval batch 10, bptt 35,
    /// lr 20, seed 3, and [`RnnStepHyper::reference`].
    pub fn paper() -> Self {
        RnnSearchOptions {
            nhid: 300,
            epochs: 50,
            batch_size: 256,
            eval_batch_size: 10,
            bptt: 35,
            lr: 20.0,
            seed: 3,
            order: Order::Second,
            hyper: RnnStepHyper::reference(),
            max_train_rows: None,
            max_eval_rows: None,
            checkpoint_every: 50,
            backend: Backend::Cpu,
            dtype: Dtype::F32,
        }
    }

    /// A search that finishes in minutes on a 2-core CPU: H 32, batch 32, first order, no
    /// dropout (a fraction of an epoch is too short for it to pay), one epoch over the first
    /// 8,000 rows of the train split (256,000 tokens), evaluated on the whole valid split.
    pub fn quick() -> Self {
        RnnSearchOptions {
            nhid: 32,
            epochs: 1,
            batch_size: 32,
            order: Order::First,
            hyper: RnnStepHyper {
                dropouts: Dropouts::none(),
                ..RnnStepHyper::reference()
            },
            max_train_rows: Some(8_000),
            ..Self::paper()
        }
    }
}

impl RnnSearchOptions {
    /// A lower bound of one step's memory in bytes for a vocabulary of `ntoken` words: every
    /// train-mode forward of the step keeps its [T B, V] log-probabilities for its backward
    /// (2 forwards first order, 3 exact, 5 second), at T = bptt, in the run's dtype.
    pub fn memory_lower_bound(&self, ntoken: usize) -> u128 {
        let forwards: u128 = match self.order {
            Order::First => 2,
            Order::Exact => 3,
            Order::Second => 5,
        };
        let bytes: u128 = match self.dtype {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        };
        forwards * (self.bptt * self.batch_size * ntoken) as u128 * bytes
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RnnSearchError {
    #[error(transparent)]
    Arch(#[from] ArchError),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error(transparent)]
    State(#[from] crate::darts::params::StateError),
    #[error(transparent)]
    Corpus(#[from] crate::data::ptb::CorpusError),
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RnnSearchError {
    RnnSearchError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn exec_err(what: &str) -> impl Fn(ExecError) -> ArchError + '_ {
    move |source| ArchError::Exec {
        what: what.to_string(),
        source,
    }
}

/// A split batchified: row-major [rows, bsz] ids.
struct Batched {
    data: Vec<u32>,
    rows: usize,
    bsz: usize,
}

impl Batched {
    fn new(stream: &[u32], bsz: usize, max_rows: Option<usize>) -> Self {
        let (data, rows) = batchify(stream, bsz);
        let rows = max_rows.map_or(rows, |m| m.min(rows));
        Batched {
            data: data[..rows * bsz].to_vec(),
            rows,
            bsz,
        }
    }
    fn batch(&self, i: usize, len: usize) -> (ArrayD<f64>, ArrayD<f64>) {
        get_batch(&self.data, self.rows, self.bsz, i, len)
    }
}

/// Where the loop is: completed epochs, the row position inside the current epoch, steps.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RnnProgress {
    pub epoch: usize,
    pub pos: usize,
    pub global_step: u64,
    pub adam_t: u64,
    /// The current epoch's sums: NLL * tokens, tokens, steps.
    pub nll_sum: f64,
    pub tokens: usize,
    pub steps: usize,
    pub best_valid_loss: Option<f64>,
    /// log.jsonl's length when this progress was checkpointed (a resume truncates to it).
    pub log_bytes: u64,
}

/// How a run ended.
#[derive(Debug)]
pub enum RnnFinish {
    Done {
        genotype: RnnGenotype,
        valid_ppl: f64,
    },
    Interrupted {
        epoch: usize,
        pos: usize,
        rows: usize,
    },
}

/// A recurrent search in progress.
pub struct RnnSearch<T: Scalar> {
    pub opts: RnnSearchOptions,
    pub cfg: RnnConfig,
    pub dir: PathBuf,
    pub state: RnnState,
    pub progress: RnnProgress,
    pub unigram_ppl: f64,
    exec: Box<dyn Executor<T>>,
    train: Batched,
    search: Batched,
    val: Batched,
    rng: ChaCha8Rng,
    hidden: [ArrayD<f64>; 2],
    steps: HashMap<(usize, usize), RnnStepGraph>,
    evals: HashMap<usize, (Graph, NodeId, NodeId)>,
    /// The host's state lags the executor's variables.
    host_stale: bool,
}

/// The file names inside a run folder.
pub const CHECKPOINT: &str = "checkpoint.npz";
pub const LOG: &str = "log.jsonl";

impl<T: Scalar> RnnSearch<T> {
    /// A new search in `dir` (created; it must not hold a checkpoint already).
    pub fn new(
        opts: RnnSearchOptions,
        corpus: &Corpus,
        dir: &Path,
        exec: Box<dyn Executor<T>>,
    ) -> Result<Self, RnnSearchError> {
        if dir.join(CHECKPOINT).exists() {
            return Err(RnnSearchError::Invalid(format!(
                "{} already holds a search (use --resume {})",
                dir.display(),
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let cfg = RnnConfig {
            ntoken: corpus.vocab(),
            nhid: opts.nhid,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let state = RnnState::init(&cfg.search_layout(), true, &mut rng);
        let mut s = Self::assemble(opts, cfg, corpus, dir, exec, state, rng)?;
        std::fs::write(dir.join(LOG), b"").map_err(|e| io_err(dir, e))?;
        s.upload(None)?;
        Ok(s)
    }

    fn assemble(
        opts: RnnSearchOptions,
        cfg: RnnConfig,
        corpus: &Corpus,
        dir: &Path,
        exec: Box<dyn Executor<T>>,
        state: RnnState,
        rng: ChaCha8Rng,
    ) -> Result<Self, RnnSearchError> {
        let train = Batched::new(&corpus.train, opts.batch_size, opts.max_train_rows);
        let search = Batched::new(&corpus.valid, opts.batch_size, None);
        let val = Batched::new(&corpus.valid, opts.eval_batch_size, opts.max_eval_rows);
        if train.rows < 3 || search.rows < 2 || val.rows < 2 {
            return Err(RnnSearchError::Invalid(format!(
                "the splits are too short for batch {} / eval batch {}: {} train rows, {} \
                 search rows, {} eval rows",
                opts.batch_size, opts.eval_batch_size, train.rows, search.rows, val.rows
            )));
        }
        let hidden = [
            ArrayD::zeros(IxDyn(&[1, opts.batch_size, cfg.nhid])),
            ArrayD::zeros(IxDyn(&[1, opts.batch_size, cfg.nhid])),
        ];
        Ok(RnnSearch {
            unigram_ppl: corpus.unigram_perplexity(&corpus.valid),
            opts,
            cfg,
            dir: dir.to_path_buf(),
            state,
            progress: RnnProgress::default(),
            exec,
            train,
            search,
            val,
            rng,
            hidden,
            steps: HashMap::new(),
            evals: HashMap::new(),
            host_stale: false,
        })
    }

    /// Continue the search whose checkpoint is in `dir`.
    pub fn resume(
        dir: &Path,
        corpus: &Corpus,
        exec: Box<dyn Executor<T>>,
    ) -> Result<Self, RnnSearchError> {
        let path = dir.join(CHECKPOINT);
        let (mut arrays, meta) = checkpoint::read(&path)?;
        let file = path.display().to_string();
        let opts: RnnSearchOptions = serde_json::from_value(meta["options"].clone())
            .map_err(|e| io_err(&path, format!("options: {e}")))?;
        let progress: RnnProgress = serde_json::from_value(meta["progress"].clone())
            .map_err(|e| io_err(&path, format!("progress: {e}")))?;
        let rng: RngState = serde_json::from_value(meta["rng"].clone())
            .map_err(|e| io_err(&path, format!("rng: {e}")))?;
        let mut take = |key: &str| {
            arrays
                .remove(key)
                .ok_or_else(|| crate::darts::params::StateError::Missing {
                    file: file.clone(),
                    key: key.to_string(),
                    expected: vec![],
                })
        };
        let hidden = [take("hidden_train")?, take("hidden_valid")?];
        let adam = [
            take(&cnn_names::adam_m(CELL))?,
            take(&cnn_names::adam_v(CELL))?,
        ];
        let (cfg, state) = RnnState::search_from_arrays(arrays, &file)?;
        if cfg.ntoken != corpus.vocab() {
            return Err(RnnSearchError::Invalid(format!(
                "{file}: the checkpoint's vocabulary has {} words, the corpus {}",
                cfg.ntoken,
                corpus.vocab()
            )));
        }
        let mut s = Self::assemble(opts, cfg, corpus, dir, exec, state, rng.restore())?;
        s.hidden = hidden;
        s.progress = progress;
        let log = dir.join(LOG);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .map_err(|e| io_err(&log, e))?;
        f.set_len(s.progress.log_bytes)
            .map_err(|e| io_err(&log, e))?;
        s.upload(Some(adam))?;
        Ok(s)
    }

    /// The executor's variables from the host state (and Adam's moments: zeros if None).
    fn upload(&mut self, adam: Option<[ArrayD<f64>; 2]>) -> Result<(), RnnSearchError> {
        let exec = self.exec.as_mut();
        exec.clear_vars();
        let cast = |a: &ArrayD<f64>| a.mapv(T::of);
        for (name, _, kind) in &self.cfg.search_layout().entries {
            if kind.trainable() || matches!(kind, Kind::RunningMean | Kind::RunningVar) {
                exec.set_var(name, &cast(&self.state.tensors[name]))
                    .map_err(exec_err("uploading the search state"))?;
            }
        }
        exec.set_var(names::ALPHA, &cast(&self.state.alpha))
            .map_err(exec_err("uploading alpha"))?;
        let zeros = ArrayD::zeros(IxDyn(&[ROWS, PRIMITIVES.len()]));
        let [m, v] = adam.unwrap_or([zeros.clone(), zeros]);
        exec.set_var(&cnn_names::adam_m(CELL), &cast(&m))
            .map_err(exec_err("uploading Adam's moments"))?;
        exec.set_var(&cnn_names::adam_v(CELL), &cast(&v))
            .map_err(exec_err("uploading Adam's moments"))?;
        self.host_stale = false;
        Ok(())
    }

    /// The host state from the executor's variables; Adam's moments returned.
    fn sync_host(&mut self) -> Result<[ArrayD<f64>; 2], RnnSearchError> {
        let exec = self.exec.as_mut();
        let mut get = |n: &str| -> Result<ArrayD<f64>, ArchError> {
            exec.var(n)
                .map(|a| a.mapv(|x| x.as_f64()))
                .map_err(exec_err("reading the search state back"))
        };
        for (name, _, kind) in &self.cfg.search_layout().entries {
            if kind.trainable() || matches!(kind, Kind::RunningMean | Kind::RunningVar) {
                self.state.tensors.insert(name.clone(), get(name)?);
            }
        }
        let e = self.state.tensors[names::ENCODER].clone();
        self.state
            .tensors
            .insert(names::DECODER_WEIGHT.to_string(), e);
        self.state.alpha = get(names::ALPHA)?;
        let moments = [
            get(&cnn_names::adam_m(CELL))?,
            get(&cnn_names::adam_v(CELL))?,
        ];
        self.host_stale = false;
        Ok(moments)
    }

    /// The genotype of the current alpha (the host's copy is current after every step).
    pub fn genotype(&self) -> RnnGenotype {
        derive(&self.state.alpha)
    }

    /// Write the checkpoint (atomically): every tensor, Adam's moments, the hidden states, and
    /// the options, progress and RNG position.
    pub fn checkpoint(&mut self) -> Result<(), RnnSearchError> {
        let [m, v] = self.sync_host()?;
        let mut arrays: BTreeMap<String, ArrayD<f64>> = self
            .state
            .tensors
            .iter()
            .map(|(k, a)| (format!("sd/{k}"), a.clone()))
            .collect();
        arrays.insert(names::ALPHA.to_string(), self.state.alpha.clone());
        arrays.insert(cnn_names::adam_m(CELL), m);
        arrays.insert(cnn_names::adam_v(CELL), v);
        arrays.insert("hidden_train".into(), self.hidden[0].clone());
        arrays.insert("hidden_valid".into(), self.hidden[1].clone());
        self.progress.log_bytes = std::fs::metadata(self.dir.join(LOG)).map_or(0, |m| m.len());
        let meta = serde_json::json!({
            "space": "rnn",
            "options": self.opts,
            "progress": self.progress,
            "rng": RngState::capture(&self.rng),
        });
        checkpoint::write(&self.dir.join(CHECKPOINT), &arrays, &meta)?;
        Ok(())
    }

    fn append_log(&mut self, line: &serde_json::Value) -> Result<(), RnnSearchError> {
        let path = self.dir.join(LOG);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        writeln!(f, "{line}").map_err(|e| io_err(&path, e))
    }

    /// A dropout mask: Bernoulli(1 - p) / (1 - p) of `shape` (floor(U + keep) / keep for the
    /// cell's masks is the same distribution).
    fn mask(rng: &mut ChaCha8Rng, shape: &[usize], p: f64) -> ArrayD<f64> {
        let keep = 1.0 - p;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || (rng.random::<f64>() + keep).floor() / keep)
    }

    /// One iteration of the loop body at row `pos`: the sequence length drawn as
    /// train_search.py draws it (bptt with probability 0.95, else bptt / 2, truncated), then
    /// [`RnnSearch::step_with`].
    fn step(&mut self) -> Result<(), RnnSearchError> {
        let bptt = self.opts.bptt;
        let r: f64 = self.rng.random();
        let bptt_now = if r < 0.95 {
            bptt as f64
        } else {
            bptt as f64 / 2.0
        };
        self.step_with((bptt_now as usize).max(1))
    }

    /// One iteration of the loop body at row `pos` with train sequence length `seq_len`
    /// (benches call it directly at a fixed length).
    pub fn step_with(&mut self, seq_len: usize) -> Result<(), RnnSearchError> {
        let bptt = self.opts.bptt;
        let lr = self.opts.lr * seq_len as f64 / bptt as f64;
        let pos = self.progress.pos;
        let (xv, yv) = self.search.batch(pos % (self.search.rows - 1), bptt);
        let (xt, yt) = self.train.batch(pos, seq_len);
        let b = self.opts.batch_size;
        let key = (xt.shape()[0], xv.shape()[0]);
        if !self.steps.contains_key(&key) {
            let sg = RnnStepGraph::build(
                self.cfg,
                (key.0, b),
                (key.1, b),
                self.opts.order,
                &self.opts.hyper,
            )
            .map_err(ArchError::from)?;
            self.steps.insert(key, sg);
        }
        let sg = &self.steps[&key];
        let v = self.cfg.ntoken;
        let mut f = Feeds::<T>::new();
        let onehot = |y: &ArrayD<f64>| {
            let mut oh = ArrayD::<T>::from_elem(IxDyn(&[y.len(), v]), T::of(0.0));
            for (i, &t) in y.iter().enumerate() {
                oh[[i, t as usize]] = T::of(1.0);
            }
            oh
        };
        for (which, (x, y), h) in [
            (names::TRAIN, (&xt, &yt), &self.hidden[0]),
            (names::VALID, (&xv, &yv), &self.hidden[1]),
        ] {
            f.insert(names::of(which, names::X), x.mapv(T::of));
            f.insert(names::of(which, names::TARGET), onehot(y));
            f.insert(names::of(which, names::HIDDEN), h.mapv(T::of));
        }
        let scalar = |x: f64| ArrayD::from_elem(IxDyn(&[]), T::of(x));
        f.insert(cnn_names::LR, scalar(lr));
        let (step_size, bc2) = self.opts.hyper.adam.step_scalars(self.progress.adam_t + 1);
        f.insert(cnn_names::adam_step_size(CELL), scalar(step_size));
        f.insert(cnn_names::adam_bc2_sqrt(CELL), scalar(bc2));
        let p = self.opts.hyper.dropouts.ordered();
        for fw in &sg.forwards {
            for (i, &pi) in p.iter().enumerate() {
                if pi > 0.0 {
                    let shape = if i == 0 {
                        vec![v, 1]
                    } else {
                        vec![fw.batch, self.cfg.nhid]
                    };
                    let m = Self::mask(&mut self.rng, &shape, pi);
                    f.insert(names::of(&fw.prefix, names::MASKS[i]), m.mapv(T::of));
                }
            }
        }
        let mut outs = vec![
            sg.loss_train,
            sg.loss_valid,
            sg.grad_norm,
            sg.alpha_new,
            sg.hidden_train_next,
            sg.hidden_valid_next,
        ];
        outs.extend(sg.norm_v);
        let bn_updates = sg.bn_updates;
        let vals = self
            .exec
            .run_assign(&sg.graph, &f, &outs, &sg.assign)
            .map_err(exec_err("the recurrent search step"))?;
        self.host_stale = true;
        let mut it = vals.into_iter().map(|a| a.mapv(|x| x.as_f64()));
        let mut next = || it.next().unwrap_or_default();
        let (loss_train, loss_valid, grad_norm, alpha) = (next(), next(), next(), next());
        let (ht, hv) = (next(), next());
        let what = format!(
            "step {} (epoch {}, row {pos})",
            self.progress.global_step, self.progress.epoch
        );
        check_finite(&what, "L_train", &loss_train)?;
        check_finite(&what, "L_val", &loss_valid)?;
        check_finite(&what, "||grad_w||", &grad_norm)?;
        check_finite(&what, names::ALPHA, &alpha)?;
        if self.opts.order == Order::Second && next().sum() == 0.0 {
            return Err(ArchError::ZeroDirection.into());
        }
        self.state.alpha = alpha;
        self.hidden = [ht, hv];
        self.progress.adam_t += 1;
        let nbt = format!("{}.num_batches_tracked", names::BN);
        if let Some(n) = self.state.tensors.get_mut(&nbt) {
            n.mapv_inplace(|x| x + bn_updates as f64);
        }
        let tokens = xt.len();
        self.progress.nll_sum += loss_train.sum() * tokens as f64;
        self.progress.tokens += tokens;
        self.progress.steps += 1;
        self.progress.global_step += 1;
        self.progress.pos += seq_len;
        Ok(())
    }

    /// The valid split's loss in evaluation mode (running BN statistics, no dropout), as the
    /// reference's `evaluate`: sum over batches of len * mean NLL, divided by the rows.
    pub fn evaluate(&mut self) -> Result<f64, RnnSearchError> {
        let (b, bptt) = (self.opts.eval_batch_size, self.opts.bptt);
        let mut hidden = ArrayD::<f64>::zeros(IxDyn(&[1, b, self.cfg.nhid]));
        let mut total = 0.0;
        let mut i = 0;
        while i < self.val.rows - 1 {
            let (x, y) = self.val.batch(i, bptt);
            let t = x.shape()[0];
            if !self.evals.contains_key(&t) {
                let mut g = Graph::new();
                let batch =
                    LmBatch::declare(&mut g, &self.cfg, "eval", (t, b)).map_err(ArchError::from)?;
                let alpha = g
                    .input(names::ALPHA, [ROWS, PRIMITIVES.len()])
                    .map_err(ArchError::from)?;
                let mut w = HashMap::new();
                for (name, shape, kind) in &self.cfg.search_layout().entries {
                    if kind.trainable() || matches!(kind, Kind::RunningMean | Kind::RunningVar) {
                        w.insert(
                            name.clone(),
                            g.input(name.clone(), shape.clone())
                                .map_err(ArchError::from)?,
                        );
                    }
                }
                let cell = Cell::Search {
                    alpha,
                    smooth: false,
                };
                let o = model::forward(
                    &mut g,
                    &self.cfg,
                    cell,
                    &w,
                    &batch,
                    &Masks::default(),
                    false,
                )
                .map_err(ArchError::from)?;
                self.evals.insert(t, (g, o.loss, o.hidden_next));
            }
            let (g, loss, hn) = &self.evals[&t];
            let mut f = Feeds::<T>::new();
            f.insert(names::of("eval", names::X), x.mapv(T::of));
            let mut oh = ArrayD::<T>::from_elem(IxDyn(&[y.len(), self.cfg.ntoken]), T::of(0.0));
            for (k, &w) in y.iter().enumerate() {
                oh[[k, w as usize]] = T::of(1.0);
            }
            f.insert(names::of("eval", names::TARGET), oh);
            f.insert(names::of("eval", names::HIDDEN), hidden.mapv(T::of));
            let out = self
                .exec
                .run(g, &f, &[*loss, *hn])
                .map_err(exec_err("evaluation"))?;
            let l = out[0].mapv(|v| v.as_f64());
            check_finite("evaluation", "L_val", &l)?;
            total += t as f64 * l.sum();
            hidden = out[1].mapv(|v| v.as_f64());
            i += bptt;
        }
        Ok(total / self.val.rows as f64)
    }

    /// Run (or continue) until done or until `stop` is set (then the current step finishes, a
    /// checkpoint is written and `Interrupted` returned). `on_step(epoch, row, rows, nll)`.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        on_step: &mut dyn FnMut(usize, usize, usize, f64),
    ) -> Result<RnnFinish, RnnSearchError> {
        let mut valid_ppl = f64::NAN;
        while self.progress.epoch < self.opts.epochs {
            let start = Instant::now();
            let rows = self.train.rows;
            while self.progress.pos < rows - 2 {
                self.step()?;
                let nll = self.progress.nll_sum / self.progress.tokens.max(1) as f64;
                on_step(self.progress.epoch, self.progress.pos.min(rows), rows, nll);
                let every = self.opts.checkpoint_every;
                if every > 0 && self.progress.global_step % every as u64 == 0 {
                    self.checkpoint()?;
                }
                if stop.load(Ordering::SeqCst) {
                    self.checkpoint()?;
                    return Ok(RnnFinish::Interrupted {
                        epoch: self.progress.epoch,
                        pos: self.progress.pos,
                        rows,
                    });
                }
            }
            self.sync_host()?;
            let t = Instant::now();
            let valid_loss = self.evaluate()?;
            valid_ppl = valid_loss.exp();
            let p = &self.progress;
            let train_nll = p.nll_sum / p.tokens.max(1) as f64;
            let line = serde_json::json!({
                "epoch": p.epoch,
                "steps": p.steps,
                "global_step": p.global_step,
                "train_loss": train_nll,
                "train_ppl": train_nll.exp(),
                "valid_loss": valid_loss,
                "valid_ppl": valid_ppl,
                "unigram_valid_ppl": self.unigram_ppl,
                "genotype": self.genotype().to_string(),
                "softmax_alpha": softmax_rows(&self.state.alpha),
                "timing": {
                    "s_per_step": (t - start).as_secs_f64() / p.steps.max(1) as f64,
                    "eval_s": t.elapsed().as_secs_f64(),
                    "epoch_s": start.elapsed().as_secs_f64(),
                },
            });
            self.append_log(&line)?;
            let best = self
                .progress
                .best_valid_loss
                .map_or(valid_loss, |b| b.min(valid_loss));
            self.progress = RnnProgress {
                epoch: self.progress.epoch + 1,
                global_step: self.progress.global_step,
                adam_t: self.progress.adam_t,
                best_valid_loss: Some(best),
                ..RnnProgress::default()
            };
            for h in &mut self.hidden {
                h.fill(0.0);
            }
            self.checkpoint()?;
        }
        let genotype = self.genotype();
        let path = self.dir.join("genotype.txt");
        std::fs::write(&path, format!("{genotype}\n")).map_err(|e| io_err(&path, e))?;
        Ok(RnnFinish::Done {
            genotype,
            valid_ppl,
        })
    }
}

/// softmax over each row of alpha, as nested rows for the log.
fn softmax_rows(a: &ArrayD<f64>) -> Vec<Vec<f64>> {
    a.outer_iter()
        .map(|r| {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = r.iter().map(|x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        })
        .collect()
}
