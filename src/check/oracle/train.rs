//! Oracle (tests only): one evaluation-training step on the host: the train graph's loss and
//! gradients (train.py's forward and backward), then clip_grad_norm, SGD with momentum and
//! weight decay, and the BN running statistics, in f64 ndarray arithmetic
//! ([`super::optim`]), to check [`crate::train::graphs::TrainStepGraph`].

use super::optim::{clip_grad_norm, update_running_stats, Sgd};
use crate::darts::eval_network::EvalConfig;
use crate::darts::names;
use crate::data::Batch;
use crate::exec::{ExecError, Executor, Feeds, Scalar};
use crate::graph::GraphError;
use crate::train::graphs::{build_train_graph, TrainGraph};
use ndarray::ArrayD;
use std::collections::BTreeMap;

/// The training state as the oracle holds it.
pub struct OracleTrain {
    pub names: Vec<String>,
    pub state: BTreeMap<String, ArrayD<f64>>,
    pub sgd: Sgd,
    pub grad_clip: f64,
    graph: TrainGraph,
}

impl OracleTrain {
    /// For batches of `n` images, without drop path, with auxiliary weight `aux_weight`.
    pub fn new(
        cfg: &EvalConfig,
        state: BTreeMap<String, ArrayD<f64>>,
        (momentum, weight_decay, grad_clip): (f64, f64, f64),
        n: usize,
        aux_weight: f64,
    ) -> Result<Self, GraphError> {
        let names: Vec<String> = cfg.layout()?.weights().map(|(k, _, _)| k.clone()).collect();
        let graph = build_train_graph(cfg, &names, n, false, aux_weight)?;
        Ok(OracleTrain {
            names,
            state,
            sgd: Sgd::new(momentum, weight_decay),
            grad_clip,
            graph,
        })
    }

    /// One step on `batch` at learning rate `lr`; returns (loss, gradient norm before
    /// clipping).
    pub fn step<T: Scalar, E: Executor<T> + ?Sized>(
        &mut self,
        exec: &mut E,
        batch: &Batch,
        lr: f64,
    ) -> Result<(f64, f64), ExecError> {
        let tg = &self.graph;
        let mut f = Feeds::<T>::new();
        for n in &self.names {
            f.insert(n.clone(), self.state[n].mapv(T::of));
        }
        f.insert(names::X, batch.x.mapv(T::of));
        f.insert(names::ONEHOT, batch.onehot.mapv(T::of));
        let mut outs = vec![tg.loss];
        outs.extend(&tg.grads);
        for b in &tg.bn {
            outs.push(b.mean);
            outs.push(b.var);
        }
        let vals = exec.run(&tg.graph, &f, &outs)?;
        let mut it = vals.into_iter().map(|a| a.mapv(|v| v.as_f64()));
        let loss = it.next().map_or(f64::NAN, |a| a.sum());
        let mut grads: Vec<ArrayD<f64>> = it.by_ref().take(tg.grads.len()).collect();
        for b in &tg.bn {
            let (Some(mean), Some(var)) = (it.next(), it.next()) else {
                break;
            };
            let get = |s: &str| format!("{}.{s}", b.prefix);
            let c = mean.len();
            let flat = |a: ArrayD<f64>| a.into_shape_with_order(vec![c]).expect("per channel");
            let mut rm = self.state[&get("running_mean")].clone();
            let mut rv = self.state[&get("running_var")].clone();
            let mut nb = self.state[&get("num_batches_tracked")].clone();
            update_running_stats(&mut rm, &mut rv, &mut nb, &flat(mean), &flat(var), b.count);
            self.state.insert(get("running_mean"), rm);
            self.state.insert(get("running_var"), rv);
            self.state.insert(get("num_batches_tracked"), nb);
        }
        let norm = clip_grad_norm(&mut grads, self.grad_clip);
        let mut params: Vec<ArrayD<f64>> =
            self.names.iter().map(|n| self.state[n].clone()).collect();
        self.sgd.step(&mut params, &grads, lr);
        for (n, p) in self.names.iter().zip(params) {
            self.state.insert(n.clone(), p);
        }
        Ok((loss, norm))
    }
}
