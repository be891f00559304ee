//! Training a recurrent genotype's language model from scratch on Penn Treebank, as the
//! reference's rnn/train.py does (RNN_REFERENCE_NOTES.md section 8; EVALUATION_NOTES.md
//! section 4): the derived cell without BN ([`Cell::Derived`]), the final recipe's dropouts,
//! variable BPTT (bptt' = bptt with probability 0.95 else bptt / 2, seq_len =
//! max(5, int(N(bptt', 5))) capped at bptt + 20, the learning rate scaled by seq_len / bptt),
//! NLL + TAR (+ AR), clip, SGD with coupled decay and no momentum, and NT-ASGD: once more
//! than `nonmono` epochs are recorded and the validation loss exceeds the minimum of all but
//! the last `nonmono`, the optimiser becomes ASGD (t0 = 0, lambd = 0), whose averaged weights
//! `ax` are then validated and tested. Validation at batch `eval_batch_size`, test at batch
//! `test_batch_size`, both in evaluation mode; the test uses the weights of the best
//! validation epoch (train.py saves the model when the validation loss improves and tests the
//! saved one).
//!
//! ASGD as torch.optim.ASGD computes it (lambd = 0, so the decay factor 1 - lambd eta is 1):
//! p <- p - eta (g + lambda p) with eta the learning rate of the *previous* step (its state is
//! updated after each step; the first step uses its own), then ax <- p at the state's first
//! two steps (mu = 1) and ax <- ax + (p - ax) mu with mu = 1 / (k - 1) at step k >= 3.
//!
//! Each step is one graph run with the weights (and ax) in the executor's variables.

use crate::autodiff;
use crate::darts::rnn::genotype::RnnGenotype;
use crate::darts::rnn::model::{self, Cell, LmBatch, Masks};
use crate::darts::rnn::names;
use crate::darts::rnn::state::{RnnConfig, RnnState};
use crate::data::ptb::{batchify, get_batch, Corpus};
use crate::exec::{Backend, Dtype, ExecError, Executor, Feeds, Scalar};
use crate::graph::compose::mean_all;
use crate::graph::{Graph, GraphError, NodeId, Shape};
use crate::search::recurrent_step::Dropouts;
use crate::step::optim::{clip_and_sgd, SgdHyper};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::HashMap;
use std::time::Instant;

/// Everything that defines a recurrent training run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RnnTrainOptions {
    pub nhid: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub test_batch_size: usize,
    pub bptt: usize,
    pub lr: f64,
    pub clip: f64,
    pub weight_decay: f64,
    pub tar_beta: f64,
    pub ar_alpha: f64,
    pub dropouts: Dropouts,
    pub nonmono: usize,
    pub seed: u64,
    /// Use only the first this many rows of each batchified split (None: all).
    pub max_train_rows: Option<usize>,
    pub max_eval_rows: Option<usize>,
    pub backend: Backend,
    pub dtype: Dtype,
}

impl RnnTrainOptions {
    /// train.py's configuration: emsize = nhid 850, 8000 epochs, batch 64, eval batch 10,
    /// test batch 1, bptt 35, lr 20, clip 0.25, wdecay 8e-7, dropouts 0.75 / 0.25 / 0.75 /
    /// 0.2 / 0.1, TAR 1e-3, AR 0, nonmono 5, seed 1267.
    pub fn paper() -> Self {
        RnnTrainOptions {
            nhid: 850,
            epochs: 8000,
            batch_size: 64,
            eval_batch_size: 10,
            test_batch_size: 1,
            bptt: 35,
            lr: 20.0,
            clip: 0.25,
            weight_decay: 8e-7,
            tar_beta: 1e-3,
            ar_alpha: 0.0,
            dropouts: Dropouts {
                output: 0.75,
                h: 0.25,
                x: 0.75,
                input: 0.2,
                embedding: 0.1,
            },
            nonmono: 5,
            seed: 1267,
            max_train_rows: None,
            max_eval_rows: None,
            backend: Backend::Cpu,
            dtype: Dtype::F32,
        }
    }

    /// Minutes on a 2-core CPU: H 32, batch 32, no dropout, 2 epochs over the first 4,000 rows
    /// of the train split, validation on 2,000 rows and test on 2,000 rows at batch 10.
    pub fn quick() -> Self {
        RnnTrainOptions {
            nhid: 32,
            epochs: 2,
            batch_size: 32,
            test_batch_size: 10,
            dropouts: Dropouts::none(),
            max_train_rows: Some(4_000),
            max_eval_rows: Some(2_000),
            ..Self::paper()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RnnTrainError {
    #[error("building the recurrent training graphs: {0}")]
    Graph(#[from] GraphError),
    #[error("running {what}: {source}")]
    Exec {
        what: String,
        #[source]
        source: ExecError,
    },
    #[error("{what}: {tensor} is {value}")]
    NonFinite {
        what: String,
        tensor: String,
        value: f64,
    },
    #[error("{0}")]
    Invalid(String),
}

fn exec_err(what: &str) -> impl Fn(ExecError) -> RnnTrainError + '_ {
    move |source| RnnTrainError::Exec {
        what: what.to_string(),
        source,
    }
}

/// The averaged-weight variable of a parameter.
fn ax(name: &str) -> String {
    format!("ax/{name}")
}

/// One training step's graph for T time steps: the weight step, and (`asgd`) the average.
struct StepGraph {
    graph: Graph,
    loss: NodeId,
    grad_norm: NodeId,
    hidden_next: NodeId,
    assign: Vec<(NodeId, String)>,
}

/// One epoch's record.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RnnEpoch {
    pub epoch: usize,
    pub train_ppl: f64,
    pub valid_ppl: f64,
    pub asgd: bool,
    pub seconds: f64,
}

/// The result of a training run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RnnTrainReport {
    pub parameters: usize,
    pub epochs: Vec<RnnEpoch>,
    pub best_valid_ppl: f64,
    pub test_ppl: f64,
}

/// NT-ASGD's trigger (train.py): with the validation losses recorded so far, switch when more
/// than `nonmono` are recorded and `val_loss` exceeds the minimum of all but the last
/// `nonmono` of them.
pub fn nt_asgd_switch(recorded: &[f64], val_loss: f64, nonmono: usize) -> bool {
    recorded.len() > nonmono
        && val_loss
            > recorded[..recorded.len() - nonmono]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
}

/// A split batchified, optionally cut to its first rows.
fn batched(stream: &[u32], bsz: usize, max_rows: Option<usize>) -> (Vec<u32>, usize) {
    let (data, rows) = batchify(stream, bsz);
    let rows = max_rows.map_or(rows, |m| m.min(rows));
    (data[..rows * bsz].to_vec(), rows)
}

/// A recurrent training run in progress.
pub struct RnnTrainer<'c, T: Scalar> {
    pub opts: RnnTrainOptions,
    pub cfg: RnnConfig,
    genotype: &'c RnnGenotype,
    exec: Box<dyn Executor<T>>,
    rng: ChaCha8Rng,
    names: Vec<String>,
    steps: HashMap<(usize, bool), StepGraph>,
    evals: HashMap<(usize, usize, bool), (Graph, NodeId, NodeId)>,
    /// ASGD's step count (0: still SGD) and its eta state.
    asgd_step: u64,
    asgd_eta: f64,
}

impl<'c, T: Scalar> RnnTrainer<'c, T> {
    pub fn new(
        opts: RnnTrainOptions,
        ntoken: usize,
        genotype: &'c RnnGenotype,
        mut exec: Box<dyn Executor<T>>,
    ) -> Result<Self, RnnTrainError> {
        let cfg = RnnConfig {
            ntoken,
            nhid: opts.nhid,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let layout = cfg.derived_layout(genotype.recurrent.len());
        let st = RnnState::init(&layout, false, &mut rng);
        exec.clear_vars();
        let mut names = Vec::new();
        for (name, _, kind) in &layout.entries {
            if kind.trainable() {
                exec.set_var(name, &st.tensors[name].mapv(T::of))
                    .map_err(exec_err("uploading the weights"))?;
                names.push(name.clone());
            }
        }
        Ok(RnnTrainer {
            opts,
            cfg,
            genotype,
            exec,
            rng,
            names,
            steps: HashMap::new(),
            evals: HashMap::new(),
            asgd_step: 0,
            asgd_eta: 0.0,
        })
    }

    fn weight_inputs(
        &self,
        g: &mut Graph,
        prefix: &str,
    ) -> Result<HashMap<String, NodeId>, GraphError> {
        let layout = self.cfg.derived_layout(self.genotype.recurrent.len());
        let mut w = HashMap::new();
        for (name, shape, kind) in &layout.entries {
            if kind.trainable() {
                w.insert(
                    name.clone(),
                    g.input(format!("{prefix}{name}"), shape.clone())?,
                );
            }
        }
        Ok(w)
    }

    fn build_step(&self, t: usize, asgd: bool) -> Result<StepGraph, GraphError> {
        let (b, cfg) = (self.opts.batch_size, self.cfg);
        let mut g = Graph::new();
        let batch = LmBatch::declare(&mut g, &cfg, "train", (t, b))?;
        let masks = Masks::declare(&mut g, &cfg, "fwd0", b, self.opts.dropouts.on())?;
        let w = self.weight_inputs(&mut g, "")?;
        let cell = Cell::Derived(self.genotype);
        let o = model::forward(&mut g, &cfg, cell, &w, &batch, &masks, true)?;
        let mut objective = o.loss;
        if self.opts.ar_alpha > 0.0 {
            let sq = g.square(o.output)?;
            let ar = mean_all(&mut g, sq)?;
            let ar = g.scale(ar, self.opts.ar_alpha)?;
            objective = g.add2(objective, ar)?;
        }
        if self.opts.tar_beta > 0.0 && t > 1 {
            let later = g.slice(o.raw, 0, 1, t, 1)?;
            let earlier = g.slice(o.raw, 0, 0, t - 1, 1)?;
            let d = g.sub(later, earlier)?;
            let sq = g.square(d)?;
            let tar = mean_all(&mut g, sq)?;
            let tar = g.scale(tar, self.opts.tar_beta)?;
            objective = g.add2(objective, tar)?;
        }
        let ws: Vec<NodeId> = self.names.iter().map(|n| w[n]).collect();
        let grads = autodiff::grad(&mut g, objective, &ws)?;
        let lr = g.input(crate::darts::names::LR, Shape::scalar())?;
        let sgd = SgdHyper {
            momentum: 0.0,
            weight_decay: self.opts.weight_decay,
            grad_clip: self.opts.clip,
        };
        let named: Vec<(String, Vec<usize>)> = self
            .names
            .iter()
            .map(|n| (n.clone(), g.shape(w[n]).dims().to_vec()))
            .collect();
        let (grad_norm, mut assign) = clip_and_sgd(&mut g, &named, (&ws, None), &grads, lr, &sgd)?;
        if asgd {
            // ax <- ax + (p - ax) mu, p the updated weight (mu fed; mu = 1 is a copy instead).
            let mu = g.input("asgd/mu", Shape::scalar())?;
            let copy = g.input("asgd/copy", Shape::scalar())?;
            let updated: Vec<(NodeId, String)> = assign.clone();
            for (p_new, name) in updated {
                let a = g.input(ax(&name), g.shape(p_new).clone())?;
                let d = g.sub(p_new, a)?;
                let step = g.mul(d, mu)?;
                let avg = g.add2(a, step)?;
                let c = g.broadcast_to(copy, g.shape(p_new).clone())?;
                let a_new = g.select(c, p_new, avg)?;
                assign.push((a_new, ax(&name)));
            }
        }
        Ok(StepGraph {
            graph: g,
            loss: o.loss,
            grad_norm,
            hidden_next: o.hidden_next,
            assign,
        })
    }

    fn mask(rng: &mut ChaCha8Rng, shape: &[usize], p: f64) -> ArrayD<f64> {
        let keep = 1.0 - p;
        ArrayD::from_shape_simple_fn(IxDyn(shape), || (rng.random::<f64>() + keep).floor() / keep)
    }

    fn onehot(&self, y: &ArrayD<f64>) -> ArrayD<T> {
        let mut oh = ArrayD::<T>::from_elem(IxDyn(&[y.len(), self.cfg.ntoken]), T::of(0.0));
        for (i, &t) in y.iter().enumerate() {
            oh[[i, t as usize]] = T::of(1.0);
        }
        oh
    }

    /// One epoch over the train split; returns its mean NLL.
    fn epoch(&mut self, data: &[u32], rows: usize) -> Result<f64, RnnTrainError> {
        let (b, bptt) = (self.opts.batch_size, self.opts.bptt);
        let mut hidden = ArrayD::<f64>::zeros(IxDyn(&[1, b, self.cfg.nhid]));
        let (mut nll, mut tokens) = (0.0, 0usize);
        let mut i = 0;
        while i < rows - 2 {
            let base = if self.rng.random::<f64>() < 0.95 {
                bptt as f64
            } else {
                bptt as f64 / 2.0
            };
            let draw: f64 = self.rng.sample(StandardNormal);
            let seq_len = ((base + 5.0 * draw) as i64).max(5) as usize;
            let seq_len = seq_len.min(bptt + 20);
            let lr = self.opts.lr * seq_len as f64 / bptt as f64;
            let (x, y) = get_batch(data, rows, b, i, seq_len);
            let t = x.shape()[0];
            let asgd = self.asgd_step > 0;
            if !self.steps.contains_key(&(t, asgd)) {
                let sg = self.build_step(t, asgd)?;
                self.steps.insert((t, asgd), sg);
            }
            let scalar = |v: f64| ArrayD::from_elem(IxDyn(&[]), T::of(v));
            let mut f = Feeds::<T>::new();
            f.insert(names::of("train", names::X), x.mapv(T::of));
            f.insert(names::of("train", names::TARGET), self.onehot(&y));
            f.insert(names::of("train", names::HIDDEN), hidden.mapv(T::of));
            for (k, &p) in self.opts.dropouts.ordered().iter().enumerate() {
                if p > 0.0 {
                    let shape = if k == 0 {
                        vec![self.cfg.ntoken, 1]
                    } else {
                        vec![b, self.cfg.nhid]
                    };
                    let m = Self::mask(&mut self.rng, &shape, p);
                    f.insert(names::of("fwd0", names::MASKS[k]), m.mapv(T::of));
                }
            }
            if asgd {
                // torch.optim.ASGD: this step uses the eta its state holds (the previous
                // step's lr; the first step its own), then stores this step's.
                let k = self.asgd_step;
                let eta = if k == 1 { lr } else { self.asgd_eta };
                let mu = if k <= 2 { 1.0 } else { 1.0 / (k - 1) as f64 };
                f.insert(crate::darts::names::LR, scalar(eta));
                f.insert("asgd/mu", scalar(mu));
                f.insert("asgd/copy", scalar(if mu == 1.0 { 1.0 } else { 0.0 }));
                self.asgd_eta = lr;
                self.asgd_step += 1;
            } else {
                f.insert(crate::darts::names::LR, scalar(lr));
            }
            let sg = &self.steps[&(t, asgd)];
            let out = self
                .exec
                .run_assign(
                    &sg.graph,
                    &f,
                    &[sg.loss, sg.grad_norm, sg.hidden_next],
                    &sg.assign,
                )
                .map_err(exec_err("the training step"))?;
            let loss = out[0].mapv(|v| v.as_f64()).sum();
            let gn = out[1].mapv(|v| v.as_f64()).sum();
            for (tensor, value) in [("NLL", loss), ("||grad||", gn)] {
                if !value.is_finite() {
                    return Err(RnnTrainError::NonFinite {
                        what: format!("training step at row {i}"),
                        tensor: tensor.into(),
                        value,
                    });
                }
            }
            hidden = out[2].mapv(|v| v.as_f64());
            nll += loss * x.len() as f64;
            tokens += x.len();
            i += seq_len;
        }
        Ok(nll / tokens.max(1) as f64)
    }

    /// Mean NLL on `data` in evaluation mode at batch `b` (the averaged weights once ASGD is
    /// on), as train.py's evaluate: sum of len * batch mean over the rows.
    fn evaluate(&mut self, data: &[u32], rows: usize, b: usize) -> Result<f64, RnnTrainError> {
        let bptt = self.opts.bptt;
        let use_ax = self.asgd_step > 0;
        let mut hidden = ArrayD::<f64>::zeros(IxDyn(&[1, b, self.cfg.nhid]));
        let mut total = 0.0;
        let mut i = 0;
        while i < rows - 1 {
            let (x, y) = get_batch(data, rows, b, i, bptt);
            let t = x.shape()[0];
            if !self.evals.contains_key(&(t, b, use_ax)) {
                let mut g = Graph::new();
                let batch = LmBatch::declare(&mut g, &self.cfg, "eval", (t, b))?;
                let w = self.weight_inputs(&mut g, if use_ax { "ax/" } else { "" })?;
                let cell = Cell::Derived(self.genotype);
                let o = model::forward(
                    &mut g,
                    &self.cfg,
                    cell,
                    &w,
                    &batch,
                    &Masks::default(),
                    false,
                )?;
                self.evals
                    .insert((t, b, use_ax), (g, o.loss, o.hidden_next));
            }
            let mut f = Feeds::<T>::new();
            f.insert(names::of("eval", names::X), x.mapv(T::of));
            f.insert(names::of("eval", names::TARGET), self.onehot(&y));
            f.insert(names::of("eval", names::HIDDEN), hidden.mapv(T::of));
            let (g, loss, hn) = &self.evals[&(t, b, use_ax)];
            let out = self
                .exec
                .run(g, &f, &[*loss, *hn])
                .map_err(exec_err("evaluation"))?;
            total += t as f64 * out[0].mapv(|v| v.as_f64()).sum();
            hidden = out[1].mapv(|v| v.as_f64());
            i += bptt;
        }
        Ok(total / rows as f64)
    }

    /// Switch to ASGD: ax starts as the current weights.
    fn start_asgd(&mut self) -> Result<(), RnnTrainError> {
        for n in self.names.clone() {
            let v = self.exec.var(&n).map_err(exec_err("reading the weights"))?;
            self.exec
                .set_var(&ax(&n), &v)
                .map_err(exec_err("starting ASGD"))?;
        }
        self.asgd_step = 1;
        Ok(())
    }

    /// Train for the configured epochs; `on_epoch` sees each record as it is made.
    pub fn run(
        &mut self,
        corpus: &Corpus,
        on_epoch: &mut dyn FnMut(&RnnEpoch),
    ) -> Result<RnnTrainReport, RnnTrainError> {
        let o = self.opts.clone();
        let (train, train_rows) = batched(&corpus.train, o.batch_size, o.max_train_rows);
        let (val, val_rows) = batched(&corpus.valid, o.eval_batch_size, o.max_eval_rows);
        let (test, test_rows) = batched(&corpus.test, o.test_batch_size, o.max_eval_rows);
        if train_rows < 3 || val_rows < 2 || test_rows < 2 {
            return Err(RnnTrainError::Invalid(format!(
                "the splits are too short for these batch sizes: {train_rows} train rows, \
                 {val_rows} valid rows, {test_rows} test rows"
            )));
        }
        let mut losses: Vec<f64> = Vec::new();
        let mut epochs = Vec::new();
        let mut best = f64::INFINITY;
        let mut best_weights: Option<Vec<ArrayD<T>>> = None;
        for epoch in 0..o.epochs {
            let start = Instant::now();
            let train_nll = self.epoch(&train, train_rows)?;
            let val_loss = self.evaluate(&val, val_rows, o.eval_batch_size)?;
            if val_loss < best {
                // train.py saves the model (the averaged weights under ASGD) when it improves,
                // and tests the saved model at the end.
                best = val_loss;
                let prefix = if self.asgd_step > 0 { "ax/" } else { "" };
                let mut w = Vec::with_capacity(self.names.len());
                for n in &self.names {
                    w.push(
                        self.exec
                            .var(&format!("{prefix}{n}"))
                            .map_err(exec_err("saving the best weights"))?,
                    );
                }
                best_weights = Some(w);
            }
            let rec = RnnEpoch {
                epoch,
                train_ppl: train_nll.exp(),
                valid_ppl: val_loss.exp(),
                asgd: self.asgd_step > 0,
                seconds: start.elapsed().as_secs_f64(),
            };
            on_epoch(&rec);
            epochs.push(rec);
            // NT-ASGD (train.py): switch once more than nonmono losses are recorded and this
            // one exceeds the minimum of all but the last nonmono.
            if self.asgd_step == 0 && nt_asgd_switch(&losses, val_loss, o.nonmono) {
                self.start_asgd()?;
            }
            losses.push(val_loss);
        }
        if let Some(w) = best_weights {
            for (n, a) in self.names.clone().iter().zip(&w) {
                self.exec
                    .set_var(n, a)
                    .map_err(exec_err("restoring the best weights"))?;
            }
            self.asgd_step = 0;
        }
        let test_loss = self.evaluate(&test, test_rows, o.test_batch_size)?;
        Ok(RnnTrainReport {
            parameters: self.cfg.parameter_count(self.genotype.recurrent.len()),
            epochs,
            best_valid_ppl: best.exp(),
            test_ppl: test_loss.exp(),
        })
    }
}
