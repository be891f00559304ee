//! Oracle (tests only): one whole search iteration on the host, composed from
//! [`super::architect`] and [`super::optim`] as train_search.py runs it: the architecture
//! gradient, Adam on the alphas, then the weight step at the new alphas (clip, SGD) from the
//! weights the architect step left, every train-mode forward's batch statistics absorbed by
//! the BN running averages in order.

use super::architect::{
    arch_gradient, check_finite, evaluate, ArchError, ArchGraphs, BnStats, Order, Point, Unroll,
};
use super::optim::{clip_grad_norm, update_running_stats, Adam, Sgd};
use crate::darts::names;
use crate::darts::network::SearchConfig;
use crate::darts::ops::BnRecord;
use crate::darts::params::{Layout, State};
use crate::data::Batch;
use crate::exec::{Executor, Scalar};
use crate::search::step_graph::{OptimState, StepHyper};
use ndarray::{ArrayD, IxDyn};

/// A search's state as the oracle holds it: weights and buffers in f64 on the host.
pub struct OracleSearch {
    pub cfg: SearchConfig,
    pub layout: Layout,
    pub order: Order,
    pub graphs: ArchGraphs,
    pub state: State,
    pub sgd: Sgd,
    pub adam: Adam,
    pub grad_clip: f64,
}

/// What one oracle iteration reports.
#[derive(Clone, Debug)]
pub struct OracleStep {
    pub loss_train: f64,
    pub loss_valid: f64,
    pub grad_norm: f64,
}

impl OracleSearch {
    /// The oracle for batches of the shapes of `train` and `valid`.
    pub fn new(
        cfg: &SearchConfig,
        order: Order,
        h: &StepHyper,
        state: State,
        (train_shape, valid_shape): (&[usize], &[usize]),
    ) -> Result<Self, ArchError> {
        let graphs = ArchGraphs::build_for(cfg, train_shape, valid_shape, order == Order::Exact)?;
        let a = h.adam;
        Ok(OracleSearch {
            cfg: *cfg,
            layout: cfg.layout()?,
            order,
            graphs,
            state,
            sgd: Sgd::new(h.sgd.momentum, h.sgd.weight_decay),
            adam: Adam::new(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay),
            grad_clip: h.sgd.grad_clip,
        })
    }

    /// The optimiser state in the production step's form.
    pub fn optim_state(&self) -> OptimState {
        let used = self.cfg.alphas_used();
        let mut opt = OptimState {
            sgd_buf: self.sgd.buf.clone(),
            ..OptimState::default()
        };
        for (c, &u) in used.iter().enumerate() {
            if u && self.adam.t > 0 {
                opt.adam_m[c] = Some(self.adam.m[c].clone());
                opt.adam_v[c] = Some(self.adam.v[c].clone());
                opt.adam_t[c] = self.adam.t;
            }
        }
        opt
    }

    fn point(&self) -> Point {
        Point {
            weights: self
                .layout
                .weights()
                .map(|(n, _, _)| (n.clone(), self.state.tensors[n].clone()))
                .collect(),
            alpha: [
                self.state.alpha_normal.clone(),
                self.state.alpha_reduce.clone(),
            ],
        }
    }

    fn apply_bn(&mut self, updates: &[BnStats], graph_bn: &[BnRecord]) {
        for stats in updates {
            for (rec, (mean, var)) in graph_bn.iter().zip(stats) {
                let p = &rec.prefix;
                let t = &mut self.state.tensors;
                let mut rm = t[&format!("{p}.running_mean")].clone();
                let mut rv = t[&format!("{p}.running_var")].clone();
                let mut nb = t[&format!("{p}.num_batches_tracked")].clone();
                let c = rm.len();
                let flat = |a: &ArrayD<f64>| a.clone().into_shape_with_order(IxDyn(&[c]));
                let (mean, var) = (flat(mean), flat(var));
                let (Ok(mean), Ok(var)) = (mean, var) else {
                    continue;
                };
                update_running_stats(&mut rm, &mut rv, &mut nb, &mean, &var, rec.count);
                t.insert(format!("{p}.running_mean"), rm);
                t.insert(format!("{p}.running_var"), rv);
                t.insert(format!("{p}.num_batches_tracked"), nb);
            }
        }
    }

    /// One iteration on `train` and `valid` at learning rate `lr`, on `exec` (whose only job
    /// is to evaluate the per-network gradient graphs).
    pub fn step<T: Scalar, E: Executor<T> + ?Sized>(
        &mut self,
        exec: &mut E,
        train: &Batch,
        valid: &Batch,
        lr: f64,
    ) -> Result<OracleStep, ArchError> {
        let unroll = Unroll {
            eta: lr,
            weight_decay: self.sgd.weight_decay,
            momentum: self.sgd.momentum,
        };
        let point = self.point();
        let graphs = &self.graphs;
        let mut arch = arch_gradient(
            exec,
            graphs,
            &point,
            self.sgd.buf.as_deref(),
            train,
            valid,
            &unroll,
            self.order,
        )?;
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
        check_finite("architect step", names::ALPHA[0], &alphas[0])?;
        check_finite("architect step", names::ALPHA[1], &alphas[1])?;
        let arch_bn: Vec<BnRecord> = match self.order {
            Order::First => graphs.valid.bn.clone(),
            Order::Second => graphs.train.bn.clone(),
            Order::Exact => graphs
                .unrolled
                .as_ref()
                .map(|u| u.train_bn.clone())
                .unwrap_or_default(),
        };
        // The weight step at the new alphas, from the weights the architect step left.
        let mut point = point;
        point.alpha = [alphas[0].clone(), alphas[1].clone()];
        if let Some(w) = arch.weights_after.take() {
            point.weights = w;
        }
        let e = evaluate(exec, &graphs.train, &point, train, "weight step")?;
        let mut grads = e.grad_w.clone();
        let grad_norm = clip_grad_norm(&mut grads, self.grad_clip);
        let names: Vec<String> = point.weights.iter().map(|(n, _)| n.clone()).collect();
        let mut weights: Vec<ArrayD<f64>> = point.weights.into_iter().map(|(_, w)| w).collect();
        self.sgd.step(&mut weights, &grads, lr);
        let train_bn = graphs.train.bn.clone();
        for (n, w) in names.into_iter().zip(weights) {
            self.state.tensors.insert(n, w);
        }
        let [an, ar]: [ArrayD<f64>; 2] = alphas.try_into().expect("two alphas");
        self.state.alpha_normal = an;
        self.state.alpha_reduce = ar;
        self.apply_bn(&arch.bn_updates, &arch_bn);
        self.apply_bn(std::slice::from_ref(&e.bn_stats), &train_bn);
        Ok(OracleStep {
            loss_train: e.loss,
            loss_valid: arch.loss_valid,
            grad_norm,
        })
    }
}
