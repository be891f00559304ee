//! Round-off bounds of graph outputs, for comparisons between two evaluations of the same
//! mathematics (another implementation, another executor, another precision): per output,
//! the longest accumulation K upstream of it, its depth (nodes on the longest path), and M,
//! the largest |value| upstream; each side is then within
//! [`evaluation_bound`]`(K, depth, M, u)` of the exact value (proofs/gradient-checking.md,
//! claim "evaluation bound"). `darts compare` and the executor and reference tests use it.

use super::gradcheck::depth;
use super::tolerance::evaluation_bound;
use crate::exec::{liveness, open_as, Backend, ExecError, Executor, Feeds};
use crate::graph::{Graph, NodeId, Op};
use ndarray::ArrayD;

/// The number of terms a node sums per output element (1 for elementwise and movement ops):
/// the K of one accumulation, whose forward error is at most gamma_K times its abs-sum.
pub fn accumulation_length(g: &Graph, id: NodeId) -> usize {
    let n = g.node(id);
    let in_dims = |i: usize| g.shape(n.inputs[i]).dims().to_vec();
    match &n.op {
        Op::ReduceSum { axes } | Op::ReduceMax { axes } => {
            let d = in_dims(0);
            axes.iter().map(|&a| d[a]).product()
        }
        Op::MatMul => in_dims(0)[1],
        Op::LogSoftmax { axis } => in_dims(0)[*axis],
        Op::ScatterAdd { .. } => in_dims(0)[0],
        Op::Conv2d(_) | Op::Conv2dInputGrad { .. } | Op::Conv2dWeightGrad { .. } => in_dims(0)
            .iter()
            .product::<usize>()
            .max(in_dims(1).iter().product()),
        _ => 1,
    }
}

/// K, depth and M of each requested output, and the outputs' f64 values.
pub struct GraphBounds {
    pub k: Vec<usize>,
    pub depth: Vec<usize>,
    pub m: Vec<f64>,
    pub values: Vec<ArrayD<f64>>,
}

impl GraphBounds {
    /// Evaluates every node the outputs need on a fresh f64 CPU executor from `feeds` alone.
    pub fn of(g: &Graph, feeds: &Feeds<f64>, outputs: &[NodeId]) -> Result<GraphBounds, ExecError> {
        let mut ex = open_as::<f64>(Backend::Cpu)?;
        Self::of_on(ex.as_mut(), g, feeds, outputs)
    }

    /// Evaluates every node the outputs need on `exec` (f64; its variables as set), for M.
    pub fn of_on(
        exec: &mut dyn Executor<f64>,
        g: &Graph,
        feeds: &Feeds<f64>,
        outputs: &[NodeId],
    ) -> Result<GraphBounds, ExecError> {
        let (needed, _) = liveness(g, outputs)?;
        let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
        let vals = exec.run(g, feeds, &ids)?;
        let mut m_up = vec![0.0f64; g.len()];
        for (id, v) in ids.iter().zip(&vals) {
            m_up[id.0] = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        }
        let mut k_up: Vec<usize> = Vec::with_capacity(g.len());
        for (i, n) in g.nodes().iter().enumerate() {
            for j in &n.inputs {
                m_up[i] = m_up[i].max(m_up[j.0]);
            }
            let own = accumulation_length(g, NodeId(i));
            k_up.push(n.inputs.iter().map(|j| k_up[j.0]).fold(own, usize::max));
        }
        let dep = depth(g);
        let value = |o: NodeId| {
            let pos = ids.iter().position(|&i| i == o);
            pos.map(|p| vals[p].clone())
        };
        Ok(GraphBounds {
            k: outputs.iter().map(|o| k_up[o.0]).collect(),
            depth: outputs.iter().map(|o| dep[o.0]).collect(),
            m: outputs.iter().map(|o| m_up[o.0]).collect(),
            values: outputs
                .iter()
                .map(|&o| value(o).expect("liveness keeps every output"))
                .collect(),
        })
    }

    /// The bound on |a - b| for output i when a and b were evaluated with unit roundoffs
    /// `us` (one per side): the sum of each side's evaluation_bound.
    pub fn bound(&self, i: usize, us: &[f64]) -> f64 {
        us.iter()
            .map(|&u| evaluation_bound(self.k[i], self.depth[i], self.m[i], u))
            .sum()
    }
}

/// Which nodes depend on `source` (itself included): the outputs downstream of a finite
/// difference's R carry its 1/R amplification of round-off.
pub fn downstream_of(g: &Graph, source: NodeId) -> Vec<bool> {
    let mut down = vec![false; g.len()];
    down[source.0] = true;
    for (i, n) in g.nodes().iter().enumerate().skip(source.0 + 1) {
        down[i] = n.inputs.iter().any(|j| down[j.0]);
    }
    down
}
