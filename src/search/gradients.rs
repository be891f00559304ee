//! `darts gradients` as one graph: the architecture gradient three ways and every ingredient
//! at one state and one pair of batches, built from the same pieces as the search step
//! ([`super::architect`]), so what the command reports is what a search step computes.

use super::architect::{check_finite, ArchError};
use super::architect::{
    exact_mixed_hvp, fd_mixed_hvp_conv, net_at, second_order, Paper, Pieces, StepInputs, FD_SCALE,
};
use super::step_graph::{upload_state, OptimState};
use crate::autodiff;
use crate::darts::names;
use crate::darts::network::SearchConfig;
use crate::darts::params::State;
use crate::data::Batch;
use crate::exec::{Executor, Feeds, Scalar};
use crate::graph::{Graph, GraphError, NodeId};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;

/// What one evaluation of a [`GradientsGraph`] gives: every output by its key, and R of the
/// paper's finite difference and of the audit variant.
pub struct Evaluated {
    pub arrays: BTreeMap<String, ArrayD<f64>>,
    pub r_paper: f64,
    pub r_audit: f64,
}

/// The graph and its outputs, keyed as in the output npz (`<key>/<weight>` for weight-shaped
/// tensors, `<key>/normal|reduce` for alpha-shaped ones). Inputs: as a search step's
/// ([`StepInputs`], the learning rate being xi) plus the momentum buffers
/// ([`names::sgd_buf`], zeros where PyTorch has none).
pub struct GradientsGraph {
    pub graph: Graph,
    pub outputs: Vec<(String, NodeId)>,
    /// R of the paper's finite difference (at w along v) and of the audit variant (at w'
    /// along v + lambda w').
    pub r_paper: NodeId,
    pub r_audit: NodeId,
    /// The graph's inputs (both batches, alphas, xi, the weights).
    pub inputs: StepInputs,
}

impl GradientsGraph {
    /// For train batches of shape `train_shape` and search batches of `valid_shape`; the
    /// unrolled step uses SGD momentum `momentum` and coupled decay `weight_decay`.
    pub fn build(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        momentum: f64,
        weight_decay: f64,
    ) -> Result<GradientsGraph, GraphError> {
        Self::build_with(
            &Paper,
            cfg,
            train_shape,
            valid_shape,
            momentum,
            weight_decay,
        )
    }

    /// [`GradientsGraph::build`] from the architect's `pieces` (the bug zoo's seam).
    pub fn build_with(
        pieces: &dyn Pieces,
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        momentum: f64,
        weight_decay: f64,
    ) -> Result<GradientsGraph, GraphError> {
        let mut g = Graph::new();
        let inp = StepInputs::declare(&mut g, cfg, train_shape, valid_shape)?;
        let buf = inp.momentum_buffers(&mut g)?;
        let (alpha, w) = (inp.alpha, &inp.w);
        let mut out = Outputs::new(&inp.names);

        // L_train(w, alpha) and grad_w L_train.
        let nt = net_at(&mut g, cfg, inp.train, alpha, inp.at(w))?;
        let gw = autodiff::grad(&mut g, nt.loss, w)?;
        out.scalar("loss_train", nt.loss);
        out.weights("grad_w_train", &gw);
        // First order: grad_alpha L_val(w, alpha).
        let nv = net_at(&mut g, cfg, inp.valid, alpha, inp.at(w))?;
        let first = autodiff::grad(&mut g, nv.loss, &alpha)?;
        out.scalar("loss_valid", nv.loss);
        out.alpha("grad_alpha_first", [first[0], first[1]]);
        // The unrolled step and the partial derivatives at w' (w' held).
        let w_prime = pieces.unrolled(
            &mut g,
            (w, &gw),
            Some((&buf, momentum)),
            inp.lr,
            weight_decay,
        )?;
        out.weights("unrolled_w", &w_prime);
        let nu = net_at(&mut g, cfg, inp.valid, alpha, inp.at(&w_prime))?;
        out.scalar("loss_valid_unrolled", nu.loss);
        let mut wrt = w_prime.clone();
        wrt.extend(alpha);
        let grads = autodiff::grad_holding(&mut g, nu.loss, &wrt, &w_prime)?;
        let (v, partial) = grads.split_at(w_prime.len());
        let partial = [partial[0], partial[1]];
        out.weights("v", v);
        out.alpha("grad_alpha_unrolled_partial", partial);
        // The paper's FD mixed HVP at w along v, and the audit variant at w' along
        // v + lambda w'.
        let at = pieces.fd_point(w, &w_prime);
        let fd = fd_mixed_hvp_conv(&mut g, pieces, cfg, &inp, inp.train, alpha, at, v, FD_SCALE)?;
        out.scalar("fd_r", fd.r);
        out.alpha("hvp_fd", [fd.hvp[0], fd.hvp[1]]);
        let lambda = g.scalar(weight_decay)?;
        let mut d = Vec::with_capacity(v.len());
        for (&vi, &wi) in v.iter().zip(&w_prime) {
            let decay = g.mul(wi, lambda)?;
            d.push(g.add2(vi, decay)?);
        }
        let audit = fd_mixed_hvp_conv(
            &mut g, pieces, cfg, &inp, inp.train, alpha, &w_prime, &d, FD_SCALE,
        )?;
        out.scalar("fd_r_at_unrolled", audit.r);
        out.alpha("hvp_fd_at_unrolled", [audit.hvp[0], audit.hvp[1]]);
        // The exact mixed HVP at w along v, and the paper's second-order gradient.
        let hvp_exact = exact_mixed_hvp(&mut g, &gw, v, &alpha)?;
        out.alpha("hvp_exact", [hvp_exact[0], hvp_exact[1]]);
        let second = second_order(&mut g, &partial, &fd.hvp, inp.lr)?;
        out.alpha("grad_alpha_second", [second[0], second[1]]);
        // Exact: autodiff through the unrolled step (w' depends on alpha here).
        let exact = autodiff::grad(&mut g, nu.loss, &alpha)?;
        out.alpha("grad_alpha_unrolled_exact", [exact[0], exact[1]]);
        Ok(GradientsGraph {
            graph: g,
            outputs: out.list,
            r_paper: fd.r,
            r_audit: audit.r,
            inputs: inp,
        })
    }
}

impl GradientsGraph {
    /// The node of output `key` (as in the dump), if the graph has it.
    pub fn output(&self, key: &str) -> Option<NodeId> {
        self.outputs.iter().find(|o| o.0 == key).map(|o| o.1)
    }

    /// The graph's feeds: both batches and xi (`eta`, the learning rate input).
    pub fn feeds<T: Scalar>(train: &Batch, valid: &Batch, eta: f64) -> Feeds<T> {
        let mut f = Feeds::<T>::new();
        f.insert(names::TRAIN_X, train.x.mapv(T::of));
        f.insert(names::TRAIN_ONEHOT, train.onehot.mapv(T::of));
        f.insert(names::VALID_X, valid.x.mapv(T::of));
        f.insert(names::VALID_ONEHOT, valid.onehot.mapv(T::of));
        f.insert(names::LR, ArrayD::from_elem(IxDyn(&[]), T::of(eta)));
        f
    }

    /// Runs the graph on `exec` at `state` (with the momentum buffers of `opt`), on the batches,
    /// with xi = `eta`: every output, each checked finite (the error names it), and both R.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate<T: Scalar>(
        &self,
        exec: &mut dyn Executor<T>,
        cfg: &SearchConfig,
        state: &State,
        opt: &OptimState,
        train: &Batch,
        valid: &Batch,
        eta: f64,
    ) -> Result<Evaluated, ArchError> {
        let exec_err = |source| ArchError::Exec {
            what: "the gradients graph".into(),
            source,
        };
        upload_state(exec, &cfg.layout()?, state, opt).map_err(exec_err)?;
        let f = Self::feeds::<T>(train, valid, eta);
        let mut outs: Vec<NodeId> = self.outputs.iter().map(|(_, n)| *n).collect();
        outs.extend([self.r_paper, self.r_audit]);
        let vals = exec.run(&self.graph, &f, &outs).map_err(exec_err)?;
        let mut vals: Vec<ArrayD<f64>> = vals.into_iter().map(|v| v.mapv(|x| x.as_f64())).collect();
        let r_audit = vals.pop().map_or(f64::NAN, |v| v.sum());
        let r_paper = vals.pop().map_or(f64::NAN, |v| v.sum());
        let mut arrays = BTreeMap::new();
        for ((key, _), v) in self.outputs.iter().zip(vals) {
            check_finite("architecture gradient", key, &v)?;
            arrays.insert(key.clone(), v);
        }
        if !(r_paper.is_finite() && r_audit.is_finite()) {
            return Err(ArchError::ZeroDirection);
        }
        Ok(Evaluated {
            arrays,
            r_paper,
            r_audit,
        })
    }
}

/// The output list under construction.
struct Outputs<'a> {
    names: &'a [(String, Vec<usize>)],
    list: Vec<(String, NodeId)>,
}

impl<'a> Outputs<'a> {
    fn new(names: &'a [(String, Vec<usize>)]) -> Self {
        Outputs {
            names,
            list: Vec::new(),
        }
    }
    fn scalar(&mut self, key: &str, node: NodeId) {
        self.list.push((key.to_string(), node));
    }
    fn weights(&mut self, key: &str, nodes: &[NodeId]) {
        for ((n, _), &id) in self.names.iter().zip(nodes) {
            self.list.push((format!("{key}/{n}"), id));
        }
    }
    fn alpha(&mut self, key: &str, nodes: [NodeId; 2]) {
        for (cell, id) in names::CELLS.into_iter().zip(nodes) {
            self.list.push((format!("{key}/{cell}"), id));
        }
    }
}
