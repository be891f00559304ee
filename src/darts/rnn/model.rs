//! The recurrent language model as a graph of primitives (RNN_REFERENCE_NOTES.md section 3):
//! embedding (with its per-word dropout), input locked dropout, the cell unrolled over T time
//! steps, output locked dropout, the tied decoder, log-softmax and the mean NLL. BPTT, the
//! exact Hessian-vector products and grad-of-grad all come from the one autodiff.
//!
//! Per time step t, with h = h_{t-1} (row-vector convention, sigma the logistic sigmoid):
//!
//! * [a | b] = [x_t m_x, h m_h] W0, s_0 = h + sigma(a) (tanh(b) - h) (the blend uses the
//!   unmasked h); in the search cell s_0 = BN(s_0);
//! * search cell, node i = 0..7: [c_j | u_j] = (s_j m_h) W_i for every j <= i (one W_i shared
//!   by the node's edges), s_{i+1} = BN(sum_j sum_{k != none} p[off_i + j, k]
//!   (s_j + sigma(c_j) (f_k(u_j) - s_j))) with p = softmax(alpha) over all 5 columns;
//! * derived cell, node i with (op, j): s_{i+1} = s_j + sigma(c) (f_op(u) - s_j) from
//!   [c | u] = (s_j m_h) W_i, no BN;
//! * h_t = mean(s_1, ..., s_8) (s_0 excluded), the output and the next hidden state.
//!
//! Derivations: proofs/recurrent-cell.md.

use super::genotype::RnnGenotype;
use super::state::RnnConfig;
use super::{names, row_offset, PRIMITIVES, STEPS};
use crate::darts::ops::BnRecord;
use crate::graph::compose::{self, BN_EPS};
use crate::graph::{Graph, GraphError, NodeId, UnaryOp};
use std::collections::HashMap;

use crate::graph::Result as R;

/// Which cell the model unrolls.
#[derive(Clone, Copy, Debug)]
pub enum Cell<'a> {
    /// The search cell: every op on every edge mixed by softmax(alpha) ([36, 5] node), BN
    /// after s_0 and after every node. `smooth` replaces relu by softplus (for the
    /// convergence tests of finite differences, which need a smooth network).
    Search { alpha: NodeId, smooth: bool },
    /// The derived cell of a genotype, without BN.
    Derived(&'a RnnGenotype),
}

/// The dropout masks of one forward, as graph nodes (absent = no dropout, exactly the
/// reference's all-ones masks): the embedding's per-word mask [V, 1], the input and output
/// locked masks and the cell's x and h masks, each [B, H] and shared over time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Masks {
    pub embedding: Option<NodeId>,
    pub input: Option<NodeId>,
    pub output: Option<NodeId>,
    pub x: Option<NodeId>,
    pub h: Option<NodeId>,
}

/// One batch of the language model: token ids x [T, B] (exact integers), one-hot targets
/// [T B, V] (row t B + b, as the reference flattens the target block), and the incoming
/// hidden state [1, B, H].
#[derive(Clone, Copy, Debug)]
pub struct LmBatch {
    pub x: NodeId,
    pub target: NodeId,
    pub hidden: NodeId,
}

impl LmBatch {
    /// Declare a batch's inputs `<prefix>/x`, `<prefix>/target`, `<prefix>/hidden` for T time
    /// steps and B sequences.
    pub fn declare(
        g: &mut Graph,
        cfg: &RnnConfig,
        prefix: &str,
        (t, b): (usize, usize),
    ) -> R<LmBatch> {
        Ok(LmBatch {
            x: g.input(names::of(prefix, names::X), [t, b])?,
            target: g.input(names::of(prefix, names::TARGET), [t * b, cfg.ntoken])?,
            hidden: g.input(names::of(prefix, names::HIDDEN), [1, b, cfg.nhid])?,
        })
    }
}

/// Which dropouts are on (p > 0), in the order of [`names::MASKS`]: embedding, input, output,
/// x, h.
pub type DropoutOn = [bool; 5];

impl Masks {
    /// Declare the masks of one forward as inputs `<prefix>/mask/...` for B sequences (one
    /// per dropout that is on; the reference draws fresh masks at every forward call).
    pub fn declare(
        g: &mut Graph,
        cfg: &RnnConfig,
        prefix: &str,
        b: usize,
        on: DropoutOn,
    ) -> R<Masks> {
        let mut m = [None; 5];
        for (i, on) in on.into_iter().enumerate() {
            if on {
                let shape = if i == 0 {
                    vec![cfg.ntoken, 1]
                } else {
                    vec![b, cfg.nhid]
                };
                m[i] = Some(g.input(names::of(prefix, names::MASKS[i]), shape)?);
            }
        }
        Ok(Masks {
            embedding: m[0],
            input: m[1],
            output: m[2],
            x: m[3],
            h: m[4],
        })
    }
}

/// What one forward of the language model produces.
pub struct LmOut {
    /// Mean NLL over the T B positions.
    pub loss: NodeId,
    /// The last hidden state [1, B, H].
    pub hidden_next: NodeId,
    /// The cell outputs before the output dropout [T, B, H] (TAR reads these).
    pub raw: NodeId,
    /// The same after the output dropout (AR reads these).
    pub output: NodeId,
    /// The BN statistics of the forward's 9 T train-mode BN calls, in call order.
    pub bn: Vec<BnRecord>,
}

/// The language model on `batch` at the weights `w` (state_dict name -> node; the decoder
/// reads encoder.weight, the tied tensor). `train_mode`: BN with batch statistics and the
/// masks applied; evaluation mode: BN with the running statistics `rnns.0.bn.running_mean`
/// and `.running_var` from `w`, and no masks (as `model.eval()`).
pub fn forward(
    g: &mut Graph,
    cfg: &RnnConfig,
    cell: Cell,
    w: &HashMap<String, NodeId>,
    batch: &LmBatch,
    masks: &Masks,
    train_mode: bool,
) -> R<LmOut> {
    let (v, h) = (cfg.ntoken, cfg.nhid);
    let dims = g.shape(batch.x).dims().to_vec();
    let (t_len, b) = (dims[0], dims[1]);
    let get = |name: &str| -> R<NodeId> {
        w.get(name).copied().ok_or_else(|| GraphError::Shape {
            op: "recurrent model".into(),
            label: name.into(),
            shapes: String::new(),
            reason: "no node given for this parameter".into(),
        })
    };
    let masks = if train_mode { *masks } else { Masks::default() };
    let e = get(names::ENCODER)?;
    // Embedding (embedded_dropout: one factor per word, for the whole batch).
    let table = match masks.embedding {
        Some(m) => g.mul(e, m)?,
        None => e,
    };
    let ids = g.reshape(batch.x, [t_len * b])?;
    let emb = g.gather(table, ids)?;
    let mut emb = g.reshape(emb, [t_len, b, h])?;
    if let Some(m) = masks.input {
        emb = g.mul(emb, m)?;
    }
    let mut cellb = CellBuilder::new(g, cfg, cell, w, masks, train_mode)?;
    let mut hid = cellb.g.reshape(batch.hidden, [b, h])?;
    let mut outs = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let x_t = cellb.g.slice(emb, 0, t, t + 1, 1)?;
        let x_t = cellb.g.reshape(x_t, [b, h])?;
        cellb.g.push_scope(format!("rnns.0.t{t}"));
        let next = cellb.step(x_t, hid);
        cellb.g.pop_scope();
        hid = next?;
        outs.push(cellb.g.reshape(hid, [1, b, h])?);
    }
    let CellBuilder { g, bn, .. } = cellb;
    let raw = g.concat(&outs, 0)?;
    let mut out = raw;
    if let Some(m) = masks.output {
        out = g.mul(out, m)?;
    }
    let flat = g.reshape(out, [t_len * b, h])?;
    let bias = get(names::DECODER_BIAS)?;
    let logits = compose::linear(g, flat, e, Some(bias))?;
    debug_assert_eq!(g.shape(logits).dims(), [t_len * b, v]);
    let loss = compose::cross_entropy_mean(g, logits, batch.target)?;
    let hidden_next = g.reshape(hid, [1, b, h])?;
    Ok(LmOut {
        loss,
        hidden_next,
        raw,
        output: out,
        bn,
    })
}

/// Builds the cell's time steps, holding what every step shares.
struct CellBuilder<'g, 'c> {
    g: &'g mut Graph,
    h: usize,
    cell: Cell<'c>,
    smooth: bool,
    w0: NodeId,
    ws: Vec<NodeId>,
    masks: Masks,
    /// Eval-mode BN: (running_mean, running_var) as [1, H] rows.
    running: Option<(NodeId, NodeId)>,
    /// softmax(alpha)[off_i + j, k] as [i + 1, 1, 1] columns, per node i and op k (search).
    probs: Vec<Vec<NodeId>>,
    bn: Vec<BnRecord>,
}

impl<'g, 'c> CellBuilder<'g, 'c> {
    fn new(
        g: &'g mut Graph,
        cfg: &RnnConfig,
        cell: Cell<'c>,
        w: &HashMap<String, NodeId>,
        masks: Masks,
        train_mode: bool,
    ) -> R<Self> {
        let h = cfg.nhid;
        let get = |name: &str| -> R<NodeId> {
            w.get(name).copied().ok_or_else(|| GraphError::Shape {
                op: "recurrent cell".into(),
                label: name.into(),
                shapes: String::new(),
                reason: "no node given for this parameter".into(),
            })
        };
        let nodes = match cell {
            Cell::Search { .. } => STEPS,
            Cell::Derived(gt) => gt.recurrent.len(),
        };
        let w0 = get(names::W0)?;
        let ws = (0..nodes)
            .map(|i| get(&names::ws(i)))
            .collect::<R<Vec<_>>>()?;
        let (mut probs, mut running, mut smooth) = (Vec::new(), None, false);
        if let Cell::Search { alpha, smooth: s } = cell {
            smooth = s;
            let p = compose::softmax(g, alpha, 1)?;
            for i in 0..STEPS {
                let off = row_offset(i);
                let rows = g.slice(p, 0, off, off + i + 1, 1)?;
                let mut per_op = Vec::with_capacity(PRIMITIVES.len());
                for k in 0..PRIMITIVES.len() {
                    let col = g.slice(rows, 1, k, k + 1, 1)?;
                    per_op.push(g.reshape(col, [i + 1, 1, 1])?);
                }
                probs.push(per_op);
            }
            if !train_mode {
                let rm = get(&format!("{}.running_mean", names::BN))?;
                let rv = get(&format!("{}.running_var", names::BN))?;
                running = Some((rm, rv));
            }
        }
        Ok(CellBuilder {
            g,
            h,
            cell,
            smooth,
            w0,
            ws,
            masks,
            running,
            probs,
            bn: Vec::new(),
        })
    }

    /// f_k of the op column k (1 tanh, 2 relu, 3 sigmoid, 4 identity).
    fn act(&mut self, k: usize, u: NodeId) -> R<NodeId> {
        match PRIMITIVES[k] {
            "tanh" => self.g.unary(UnaryOp::Tanh, u),
            "relu" if self.smooth => self.g.unary(UnaryOp::Softplus, u),
            "relu" => self.g.unary(UnaryOp::Relu, u),
            "sigmoid" => self.g.unary(UnaryOp::Sigmoid, u),
            _ => Ok(u),
        }
    }

    /// x masked by m when there is a mask.
    fn masked(&mut self, x: NodeId, m: Option<NodeId>) -> R<NodeId> {
        match m {
            Some(m) => self.g.mul(x, m),
            None => Ok(x),
        }
    }

    /// s + sigma(c) (f - s): the highway blend.
    fn blend(&mut self, s: NodeId, c: NodeId, f: NodeId) -> R<NodeId> {
        let d = self.g.sub(f, s)?;
        let cd = self.g.mul(c, d)?;
        self.g.add2(s, cd)
    }

    /// The cell's BatchNorm1d(H, affine=False): batch statistics (recorded for the running
    /// averages) in training, the running statistics in evaluation.
    fn bn(&mut self, x: NodeId) -> R<NodeId> {
        match self.running {
            Some((rm, rv)) => compose::batch_norm_eval(self.g, x, rm, rv, None, None, BN_EPS),
            None => {
                let o = compose::batch_norm_train(self.g, x, None, None, BN_EPS)?;
                self.bn.push(BnRecord {
                    prefix: names::BN.to_string(),
                    mean: o.mean,
                    var: o.var,
                    count: o.count,
                });
                Ok(o.y)
            }
        }
    }

    /// [c | u] = x W split into its halves, c through the sigmoid.
    fn gate(&mut self, ch: NodeId, axis: usize) -> R<(NodeId, NodeId)> {
        let h = self.h;
        let c = self.g.slice(ch, axis, 0, h, 1)?;
        let c = self.g.unary(UnaryOp::Sigmoid, c)?;
        let u = self.g.slice(ch, axis, h, 2 * h, 1)?;
        Ok((c, u))
    }

    /// One time step: h_t from x_t [B, H] and h_{t-1} [B, H].
    fn step(&mut self, x: NodeId, hprev: NodeId) -> R<NodeId> {
        let b = self.g.shape(x).dims()[0];
        let xm = self.masked(x, self.masks.x)?;
        let hm = self.masked(hprev, self.masks.h)?;
        let xh = self.g.concat(&[xm, hm], 1)?;
        let ch = self.g.matmul(xh, self.w0)?;
        let (c0, u0) = self.gate(ch, 1)?;
        let h0 = self.g.unary(UnaryOp::Tanh, u0)?;
        let mut s0 = self.blend(hprev, c0, h0)?;
        let mut states = Vec::with_capacity(self.ws.len() + 1);
        match self.cell {
            Cell::Search { .. } => {
                s0 = self.bn(s0)?;
                states.push(s0);
                for i in 0..STEPS {
                    let s = self.search_node(i, &states, b)?;
                    states.push(s);
                }
            }
            Cell::Derived(gt) => {
                states.push(s0);
                for (i, (op, j)) in gt.recurrent.iter().enumerate() {
                    let sj = states[*j];
                    let m = self.masked(sj, self.masks.h)?;
                    let ch = self.g.matmul(m, self.ws[i])?;
                    let (c, u) = self.gate(ch, 1)?;
                    let k = PRIMITIVES.iter().position(|p| p == op).unwrap_or(4);
                    let f = self.act(k, u)?;
                    let s = self.blend(sj, c, f)?;
                    states.push(s);
                }
            }
        }
        // h_t = mean of the concatenated states (s_1..s_8; s_0 is never in concat).
        let concat: Vec<usize> = match self.cell {
            Cell::Search { .. } => (1..=STEPS).collect(),
            Cell::Derived(gt) => gt.concat.clone(),
        };
        let mut acc = states[concat[0]];
        for &i in &concat[1..] {
            acc = self.g.add2(acc, states[i])?;
        }
        self.g.scale(acc, 1.0 / concat.len() as f64)
    }

    /// Node i of the search cell from the states s_0..s_i (each [B, H]).
    fn search_node(&mut self, i: usize, states: &[NodeId], b: usize) -> R<NodeId> {
        let h = self.h;
        let rows: Vec<NodeId> = states
            .iter()
            .map(|&s| self.g.reshape(s, [1, b, h]))
            .collect::<R<_>>()?;
        let stack = self.g.concat(&rows, 0)?;
        let masked = match self.masks.h {
            Some(m) => self.g.mul(stack, m)?,
            None => stack,
        };
        let flat = self.g.reshape(masked, [(i + 1) * b, h])?;
        let ch = self.g.matmul(flat, self.ws[i])?;
        let ch = self.g.reshape(ch, [i + 1, b, 2 * h])?;
        let (c, u) = self.gate(ch, 2)?;
        // s = sum over the non-none ops k (ascending) of sum_j p[off_i + j, k] (blend_k)_j.
        let mut s = self.mixed_term(i, 1, (stack, c, u))?;
        for k in 2..PRIMITIVES.len() {
            let term = self.mixed_term(i, k, (stack, c, u))?;
            s = self.g.add2(s, term)?;
        }
        let s = self.g.reshape(s, [b, h])?;
        self.bn(s)
    }

    /// sum_j p[off_i + j, k] (s_j + sigma(c_j) (f_k(u_j) - s_j)) over the stacked states.
    fn mixed_term(
        &mut self,
        i: usize,
        k: usize,
        (stack, c, u): (NodeId, NodeId, NodeId),
    ) -> R<NodeId> {
        let f = self.act(k, u)?;
        let unweighted = self.blend(stack, c, f)?;
        let weighted = self.g.mul(self.probs[i][k], unweighted)?;
        self.g.reduce_sum(weighted, &[0])
    }
}
