//! Runs search steps: one [`StepGraph`] run per iteration on any executor, with the whole
//! state kept in the executor's variables between steps and copied to the host only when
//! asked ([`Stepper::sync_host`]: checkpoints, `darts step` outputs, the end of a run). The
//! search loop ([`super::run::Search`]) and `darts step` both advance through [`Stepper::step`].

use super::architect::{check_finite, ArchError, Order, Paper, Pieces};
use super::step_graph::{download_state, upload_state, OptimState, StepGraph, StepHyper};
use crate::darts::names;
use crate::darts::network::SearchConfig;
use crate::darts::params::{Kind, Layout, State};
use crate::data::Batch;
use crate::exec::{ExecError, Executor, Feeds, Scalar};
use ndarray::{ArrayD, IxDyn};
use std::collections::{BTreeMap, HashMap};

/// What one step reports (the state itself stays in the executor).
#[derive(Clone, Debug)]
pub struct StepReport {
    /// L_train(w, alpha') of the weight step, computed before its update.
    pub loss_train: f64,
    /// Its logits, for the training accuracy.
    pub logits: ArrayD<f64>,
    /// The validation loss the architecture step saw (at w for first order, at w' otherwise).
    pub loss_valid: f64,
    /// ||grad_w L_train(w, alpha')|| before clipping.
    pub grad_norm: f64,
    /// The weights the weight step started from (the second order's restored point), in
    /// weight order, when the stepper was asked for them ([`Stepper::reporting_restored`]).
    pub restored: Option<Vec<ArrayD<f64>>>,
}

/// The feeds of one [`StepGraph`] run: both batches, the learning rate, and Adam's two scalars
/// for each alpha's next step (its step count `adam_t[c]` + 1).
pub fn step_feeds<T: Scalar>(
    train: &Batch,
    valid: &Batch,
    lr: f64,
    hyper: &StepHyper,
    adam_t: [u64; 2],
) -> Feeds<T> {
    let scalar = |v: f64| ArrayD::from_elem(IxDyn(&[]), T::of(v));
    let mut f = Feeds::<T>::new();
    f.insert(names::TRAIN_X, train.x.mapv(T::of));
    f.insert(names::TRAIN_ONEHOT, train.onehot.mapv(T::of));
    f.insert(names::VALID_X, valid.x.mapv(T::of));
    f.insert(names::VALID_ONEHOT, valid.onehot.mapv(T::of));
    f.insert(names::LR, scalar(lr));
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        let (step_size, bc2_sqrt) = hyper.adam.step_scalars(adam_t[c] + 1);
        f.insert(names::adam_step_size(cell), scalar(step_size));
        f.insert(names::adam_bc2_sqrt(cell), scalar(bc2_sqrt));
    }
    f
}

/// A search's state and the executor that steps it.
pub struct Stepper<T: Scalar> {
    pub cfg: SearchConfig,
    pub layout: Layout,
    pub order: Order,
    pub hyper: StepHyper,
    /// The architect's pieces the step graph is built from ([`Paper`]; the bug zoo's seam).
    pieces: Box<dyn Pieces>,
    /// Read back the second order's restored point every step (for `darts step` dumps).
    report_restored: bool,
    exec: Box<dyn Executor<T>>,
    graphs: HashMap<(usize, usize), StepGraph>,
    /// The host copies: current after [`Stepper::sync_host`] (alphas and num_batches_tracked
    /// are kept current after every step).
    pub state: State,
    pub opt: OptimState,
    /// The executor's variables hold the current state.
    device_current: bool,
    /// The host copies lag the executor's variables.
    host_stale: bool,
}

fn exec_err(what: &str) -> impl Fn(ExecError) -> ArchError + '_ {
    move |source| ArchError::Exec {
        what: what.to_string(),
        source,
    }
}

impl<T: Scalar> Stepper<T> {
    pub fn new(
        cfg: SearchConfig,
        order: Order,
        hyper: StepHyper,
        exec: Box<dyn Executor<T>>,
        state: State,
        opt: OptimState,
    ) -> Result<Self, ArchError> {
        Ok(Stepper {
            layout: cfg.layout()?,
            cfg,
            order,
            hyper,
            pieces: Box::new(Paper),
            report_restored: false,
            exec,
            graphs: HashMap::new(),
            state,
            opt,
            device_current: false,
            host_stale: false,
        })
    }

    /// Steps with the architect's `pieces` instead of [`Paper`]'s (the audit's bug zoo).
    pub fn with_pieces(mut self, pieces: Box<dyn Pieces>) -> Self {
        self.pieces = pieces;
        self.graphs.clear();
        self
    }

    /// Reads back, with each second-order step, the weights the weight step starts from
    /// ([`StepReport::restored`]).
    pub fn reporting_restored(mut self) -> Self {
        self.report_restored = true;
        self
    }

    /// The arrays `darts step` writes for iteration `k` with its report `rep` (call
    /// [`Stepper::sync_host`] first): `iter{k}/loss_train`, `iter{k}/grad_norm`,
    /// `iter{k}/alpha/<cell>`, `iter{k}/sd/<state_dict name>` (counts as whole floats) and,
    /// when reported, `iter{k}/w_restored/<weight>`.
    pub fn iteration_arrays(&self, k: usize, rep: &StepReport) -> BTreeMap<String, ArrayD<f64>> {
        let p = format!("iter{k}");
        let scalar = |v: f64| ArrayD::from_elem(IxDyn(&[]), v);
        let mut out = BTreeMap::new();
        out.insert(format!("{p}/loss_train"), scalar(rep.loss_train));
        out.insert(format!("{p}/grad_norm"), scalar(rep.grad_norm));
        out.insert(
            format!("{p}/{}", names::ALPHA[0]),
            self.state.alpha_normal.clone(),
        );
        out.insert(
            format!("{p}/{}", names::ALPHA[1]),
            self.state.alpha_reduce.clone(),
        );
        for (name, _, _) in &self.layout.entries {
            out.insert(format!("{p}/sd/{name}"), self.state.tensors[name].clone());
        }
        if let Some(restored) = &rep.restored {
            for ((name, _, _), w) in self.layout.weights().zip(restored) {
                out.insert(format!("{p}/w_restored/{name}"), w.clone());
            }
        }
        out
    }

    /// The optimiser state under a state file's names (call [`Stepper::sync_host`] first):
    /// `momentum_buffer/<weight>`, and per alpha Adam has stepped `adam_m/<a>`, `adam_v/<a>`,
    /// `adam_step/<a>`.
    pub fn optimiser_arrays(&self) -> BTreeMap<String, ArrayD<f64>> {
        let mut out = BTreeMap::new();
        if let Some(bufs) = &self.opt.sgd_buf {
            for ((name, _, _), b) in self.layout.weights().zip(bufs) {
                out.insert(format!("momentum_buffer/{name}"), b.clone());
            }
        }
        for (c, cell) in names::CELLS.into_iter().enumerate() {
            if let (Some(m), Some(v)) = (&self.opt.adam_m[c], &self.opt.adam_v[c]) {
                out.insert(names::adam_m(cell), m.clone());
                out.insert(names::adam_v(cell), v.clone());
                let t = ArrayD::from_elem(IxDyn(&[]), self.opt.adam_t[c] as f64);
                out.insert(format!("adam_step/{cell}"), t);
            }
        }
        out
    }

    pub fn executor_name(&self) -> String {
        self.exec.name()
    }

    /// Where the executor's last run spent its time, where it measures that.
    pub fn last_run_timing(&self) -> Option<String> {
        self.exec.last_run_timing()
    }

    /// The executor with the current state in its variables (for evaluation graphs that read
    /// the weights, BN buffers and alphas as variables).
    pub fn executor(&mut self) -> Result<&mut dyn Executor<T>, ArchError> {
        self.ensure_device()?;
        Ok(self.exec.as_mut())
    }

    /// Forget what the executor holds: the host state was changed and is the truth.
    pub fn host_changed(&mut self) {
        self.device_current = false;
    }

    fn ensure_device(&mut self) -> Result<(), ArchError> {
        if !self.device_current {
            upload_state(self.exec.as_mut(), &self.layout, &self.state, &self.opt)
                .map_err(exec_err("uploading the search state"))?;
            self.device_current = true;
        }
        Ok(())
    }

    /// Copy the executor's variables back into the host state.
    pub fn sync_host(&mut self) -> Result<(), ArchError> {
        if self.host_stale {
            download_state(
                self.exec.as_mut(),
                &self.layout,
                &mut self.state,
                &mut self.opt,
            )
            .map_err(exec_err("reading the search state back"))?;
            self.host_stale = false;
        }
        Ok(())
    }

    /// One iteration of the reference's search loop body on `train` (the weights' batch) and
    /// `valid` (the architecture's search batch) at learning rate `lr`: the architecture step
    /// (Adam on alpha), then the weight step, BN running statistics updated by every
    /// train-mode forward ([`StepGraph`]). On an error the run stops; what the executor holds
    /// is then not to be used (the caller's last checkpoint is).
    pub fn step(&mut self, train: &Batch, valid: &Batch, lr: f64) -> Result<StepReport, ArchError> {
        let key = (train.x.shape()[0], valid.x.shape()[0]);
        if !self.graphs.contains_key(&key) {
            let x_shape = |n: usize, b: &Batch| {
                let s = b.x.shape();
                vec![n, s[1], s[2], s[3]]
            };
            let sg = StepGraph::build_with(
                self.pieces.as_ref(),
                &self.cfg,
                &x_shape(key.0, train),
                &x_shape(key.1, valid),
                self.order,
                &self.hyper,
            )?;
            self.graphs.insert(key, sg);
        }
        self.ensure_device()?;
        let f = step_feeds::<T>(train, valid, lr, &self.hyper, self.opt.adam_t);
        let sg = &self.graphs[&key];
        let mut outs = vec![
            sg.loss_train,
            sg.logits_train,
            sg.loss_valid,
            sg.grad_norm,
            sg.alpha_new[0],
            sg.alpha_new[1],
        ];
        outs.extend(sg.norm_v);
        let restored_from = outs.len();
        if self.report_restored && self.order == Order::Second {
            outs.extend(&sg.w_after);
        }
        let (bn_updates, used) = (sg.bn_updates, sg.alphas_used);
        let vals = self
            .exec
            .run_assign(&sg.graph, &f, &outs, &sg.assign)
            .map_err(exec_err("the search step"))?;
        self.host_stale = true;
        let mut vals: Vec<ArrayD<f64>> = vals.into_iter().map(|a| a.mapv(|x| x.as_f64())).collect();
        let restored = (vals.len() > restored_from).then(|| vals.split_off(restored_from));
        let mut it = vals.into_iter();
        let mut next = || it.next().expect("one value per output");
        let (loss_train, logits, loss_valid, grad_norm) =
            (next().sum(), next(), next().sum(), next().sum());
        let alphas = [next(), next()];
        if self.order == Order::Second && next().sum() == 0.0 {
            return Err(ArchError::ZeroDirection);
        }
        let scalar_check = |what: &str, tensor: &str, v: f64| {
            check_finite(what, tensor, &ArrayD::from_elem(IxDyn(&[]), v))
        };
        check_finite("architect step", names::ALPHA[0], &alphas[0])?;
        check_finite("architect step", names::ALPHA[1], &alphas[1])?;
        scalar_check("architect step", "L_val", loss_valid)?;
        scalar_check("weight step", "L_train", loss_train)?;
        // A finite gradient norm means every weight gradient, hence every new weight, is finite.
        scalar_check("weight step", "||grad_w L_train||", grad_norm)?;
        let [an, ar] = alphas;
        self.state.alpha_normal = an;
        self.state.alpha_reduce = ar;
        for (t, u) in self.opt.adam_t.iter_mut().zip(used) {
            *t += u as u64;
        }
        for (name, _, kind) in &self.layout.entries {
            if matches!(kind, Kind::NumBatchesTracked) {
                if let Some(nb) = self.state.tensors.get_mut(name) {
                    nb.mapv_inplace(|v| v + bn_updates as f64);
                }
            }
        }
        Ok(StepReport {
            loss_train,
            logits,
            loss_valid,
            grad_norm,
            restored,
        })
    }
}
