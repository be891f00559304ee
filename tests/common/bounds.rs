//! Round-off bounds of graph outputs for comparisons between two evaluations of the same
//! mathematics (another implementation, another executor): per output, the longest
//! accumulation K upstream of it, its depth, and M, the largest |value| upstream
//! (darts::check::tolerance::evaluation_bound's model, as tests/gpu_vs_cpu.rs uses it).

use darts::check::gradcheck::depth;
use darts::check::tolerance::evaluation_bound;
use darts::exec::{open_as, Backend, Feeds};
use darts::graph::{Graph, NodeId, Op};
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

/// K, depth and M of each requested output, and the outputs' f64 values on the CPU.
pub struct GraphBounds {
    pub k: Vec<usize>,
    pub depth: Vec<usize>,
    pub m: Vec<f64>,
    pub values: Vec<ArrayD<f64>>,
}

impl GraphBounds {
    /// Evaluates every node the outputs need on the CPU in f64 (for M).
    pub fn of(g: &Graph, feeds: &Feeds<f64>, outputs: &[NodeId]) -> GraphBounds {
        let (needed, _) = darts::exec::liveness(g, outputs).unwrap();
        let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
        let mut ex = open_as::<f64>(Backend::Cpu).unwrap();
        let vals = ex.run(g, feeds, &ids).unwrap();
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
        let pos = |o: NodeId| ids.iter().position(|&i| i == o).unwrap();
        GraphBounds {
            k: outputs.iter().map(|o| k_up[o.0]).collect(),
            depth: outputs.iter().map(|o| dep[o.0]).collect(),
            m: outputs.iter().map(|o| m_up[o.0]).collect(),
            values: outputs.iter().map(|&o| vals[pos(o)].clone()).collect(),
        }
    }

    /// The bound on |a - b| for output i when a and b were evaluated with unit roundoffs
    /// `us` (one per side): the sum of each side's evaluation_bound.
    pub fn bound(&self, i: usize, us: &[f64]) -> f64 {
        us.iter()
            .map(|&u| evaluation_bound(self.k[i], self.depth[i], self.m[i], u))
            .sum()
    }
}
