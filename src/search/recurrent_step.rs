//! One iteration of the reference's recurrent search loop (rnn/train_search.py) as one graph,
//! from the same pieces as the conv step ([`super::step_graph`]): the architecture gradient
//! ([`super::recurrent`], with the shared unrolled step and finite-difference H v), Adam with
//! coupled decay on alpha ([`AdamHyper::update`]), the clipped weight step
//! ([`clip_and_sgd`], here without momentum) on NLL + TAR (+ AR), and the BN running statistics
//! of every train-mode forward the reference runs on the model ([`running_stats`]), all with
//! the state in executor variables ([`crate::exec::Executor::run_assign`]).
//!
//! Every forward of the step has its own dropout masks (fed; the reference draws fresh masks at
//! each forward call): [`RnnStepGraph::forwards`] lists them in the order the host draws them.
//! Derivation and order of operations: proofs/recurrent-architect.md and
//! proofs/resident-search-step.md.

use super::architect::Order;
use super::recurrent::{reference_second_order, reference_unrolled, RnnInputs};
use crate::autodiff;
use crate::darts::names as cnn_names;
use crate::darts::ops::BnRecord;
use crate::darts::rnn::model::{DropoutOn, Masks};
use crate::darts::rnn::state::RnnConfig;
use crate::darts::rnn::{names, PRIMITIVES, ROWS};
use crate::graph::compose::mean_all;
use crate::graph::{Graph, NodeId, Shape};
use crate::step::optim::{clip_and_sgd, running_stats, AdamHyper, SgdHyper};

use crate::graph::Result as R;

/// The name of the recurrent alpha in Adam's variable names (`adam_m/recurrent`, ...).
pub const CELL: &str = "recurrent";

/// The dropout probabilities of the search model (RNNModelSearch's arguments).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dropouts {
    /// Locked dropout on the cell outputs (`dropout`).
    pub output: f64,
    /// The cell's h mask (`dropouth`).
    pub h: f64,
    /// The cell's x mask (`dropoutx`).
    pub x: f64,
    /// Locked dropout on the embedded input (`dropouti`).
    pub input: f64,
    /// Per-word embedding dropout (`dropoute`).
    pub embedding: f64,
}

impl Dropouts {
    /// train_search.py's defaults: 0.75, 0.25, 0.75, 0.2, 0.
    pub fn search() -> Self {
        Dropouts {
            output: 0.75,
            h: 0.25,
            x: 0.75,
            input: 0.2,
            embedding: 0.0,
        }
    }

    pub fn none() -> Self {
        Dropouts {
            output: 0.0,
            h: 0.0,
            x: 0.0,
            input: 0.0,
            embedding: 0.0,
        }
    }

    /// The probabilities in the order of [`names::MASKS`].
    pub fn ordered(&self) -> [f64; 5] {
        [self.embedding, self.input, self.output, self.x, self.h]
    }

    pub fn on(&self) -> DropoutOn {
        self.ordered().map(|p| p > 0.0)
    }
}

/// The constants of a recurrent search's step (train_search.py's flags).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RnnStepHyper {
    /// The gradient clip of the architect's `_clip` and of the weight step.
    pub clip: f64,
    /// SGD's coupled weight decay (`wdecay`), also lambda of the unrolled step.
    pub weight_decay: f64,
    /// TAR's beta (on the raw outputs) and AR's alpha (on the dropped outputs; 0 skips it).
    pub tar_beta: f64,
    pub ar_alpha: f64,
    pub adam: AdamHyper,
    pub dropouts: Dropouts,
}

impl RnnStepHyper {
    /// train_search.py's defaults: clip 0.25, wdecay 5e-7, beta 1e-3, alpha 0, Adam lr 3e-3,
    /// betas (0.9, 0.999) (torch's defaults), eps 1e-8, arch_wdecay 1e-3; the search dropouts.
    pub fn reference() -> Self {
        RnnStepHyper {
            clip: 0.25,
            weight_decay: 5e-7,
            tar_beta: 1e-3,
            ar_alpha: 0.0,
            adam: AdamHyper {
                lr: 3e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-3,
            },
            dropouts: Dropouts::search(),
        }
    }
}

/// One forward of the step whose masks the host draws: the mask inputs' prefix and its batch
/// size.
#[derive(Clone, Debug)]
pub struct Forward {
    pub prefix: String,
    pub batch: usize,
}

/// The whole recurrent search step (see the module documentation).
pub struct RnnStepGraph {
    pub graph: Graph,
    pub order: Order,
    /// (node, variable): every piece of state the step replaces.
    pub assign: Vec<(NodeId, String)>,
    /// The weight step's NLL (before TAR) at (w, alpha'), and its objective with TAR and AR.
    pub loss_train: NodeId,
    pub objective: NodeId,
    /// The validation loss the architecture step saw (at w first order, at w' otherwise).
    pub loss_valid: NodeId,
    /// ||grad_w objective|| before clipping.
    pub grad_norm: NodeId,
    /// ||v|| of the second order's finite difference; None otherwise.
    pub norm_v: Option<NodeId>,
    pub alpha_new: NodeId,
    /// The hidden states the loop carries: the weight step's train forward's, and the
    /// architect's valid forward's (the unrolled model's in the second order).
    pub hidden_train_next: NodeId,
    pub hidden_valid_next: NodeId,
    /// BN calls whose statistics the running averages absorb (num_batches_tracked's increase).
    pub bn_updates: usize,
    /// The forwards with dropout masks, in the order the host draws them.
    pub forwards: Vec<Forward>,
}

/// The architecture part: gradient, the loss it saw, the weights it leaves, its BN runs.
struct Arch {
    grad: NodeId,
    loss_valid: NodeId,
    w_after: Vec<NodeId>,
    norm_v: Option<NodeId>,
    hidden_valid_next: NodeId,
    bn_runs: Vec<Vec<BnRecord>>,
}

impl RnnStepGraph {
    /// The step for a train batch of T x B = `train` and a valid batch of `valid`.
    pub fn build(
        cfg: RnnConfig,
        train: (usize, usize),
        valid: (usize, usize),
        order: Order,
        h: &RnnStepHyper,
    ) -> R<RnnStepGraph> {
        let mut g = Graph::new();
        let inp = RnnInputs::declare(&mut g, cfg, false, train, valid)?;
        let on = h.dropouts.on();
        let mut forwards = Vec::new();
        let mut masks = |g: &mut Graph, b: usize| -> R<Masks> {
            let prefix = format!("fwd{}", forwards.len());
            let m = Masks::declare(g, &cfg, &prefix, b, on)?;
            forwards.push(Forward { prefix, batch: b });
            Ok(m)
        };
        let (bt, bv) = (train.1, valid.1);
        let w = inp.w.clone();
        let arch = match order {
            Order::First => {
                let m = masks(&mut g, bv)?;
                let nv = inp.lm_masked(&mut g, &inp.valid, &w, &m)?;
                let ga = autodiff::grad(&mut g, nv.loss, &[inp.alpha])?[0];
                Arch {
                    grad: ga,
                    loss_valid: nv.loss,
                    w_after: w.clone(),
                    norm_v: None,
                    hidden_valid_next: nv.hidden_next,
                    bn_runs: vec![nv.bn],
                }
            }
            Order::Second => {
                let m = [
                    masks(&mut g, bt)?,
                    masks(&mut g, bv)?,
                    masks(&mut g, bt)?,
                    masks(&mut g, bt)?,
                ];
                let so = reference_second_order(&mut g, &inp, (h.clip, h.weight_decay), &m)?;
                let norm_v = crate::step::optim::total_norm(&mut g, &so.v, false)?;
                Arch {
                    grad: so.grad,
                    loss_valid: so.valid_unrolled.loss,
                    w_after: so.restored,
                    norm_v: Some(norm_v),
                    hidden_valid_next: so.valid_unrolled.hidden_next,
                    bn_runs: so.bn_runs,
                }
            }
            Order::Exact => {
                let (mt, mv) = (masks(&mut g, bt)?, masks(&mut g, bv)?);
                let nt = inp.lm_masked(&mut g, &inp.train, &w, &mt)?;
                let gw = autodiff::grad(&mut g, nt.loss, &w)?;
                let u =
                    reference_unrolled(&mut g, (&w, &gw), inp.lr, (h.clip, h.weight_decay), false)?;
                let nv = inp.lm_masked(&mut g, &inp.valid, &u.w_prime, &mv)?;
                let ga = autodiff::grad(&mut g, nv.loss, &[inp.alpha])?[0];
                Arch {
                    grad: ga,
                    loss_valid: nv.loss,
                    w_after: w.clone(),
                    norm_v: None,
                    hidden_valid_next: nv.hidden_next,
                    bn_runs: vec![nt.bn],
                }
            }
        };
        let mut bn_runs = arch.bn_runs;

        // Adam on alpha.
        let shape = [ROWS, PRIMITIVES.len()];
        let m = g.input(cnn_names::adam_m(CELL), shape)?;
        let v = g.input(cnn_names::adam_v(CELL), shape)?;
        let step_size = g.input(cnn_names::adam_step_size(CELL), Shape::scalar())?;
        let bc2_sqrt = g.input(cnn_names::adam_bc2_sqrt(CELL), Shape::scalar())?;
        let (alpha_new, m_new, v_new) =
            h.adam
                .update(&mut g, inp.alpha, arch.grad, (m, v), step_size, bc2_sqrt)?;
        let mut assign = vec![
            (m_new, cnn_names::adam_m(CELL)),
            (v_new, cnn_names::adam_v(CELL)),
            (alpha_new, names::ALPHA.to_string()),
        ];

        // The weight step at alpha' from the weights the architect left: NLL + TAR (+ AR).
        let mw = masks(&mut g, bt)?;
        let nw = inp.lm(&mut g, &inp.train, (&arch.w_after, alpha_new), &mw)?;
        let mut objective = nw.loss;
        if h.ar_alpha > 0.0 {
            let sq = g.square(nw.output)?;
            let ar = mean_all(&mut g, sq)?;
            let ar = g.scale(ar, h.ar_alpha)?;
            objective = g.add2(objective, ar)?;
        }
        if h.tar_beta > 0.0 {
            let t = g.shape(nw.raw).dims()[0];
            let later = g.slice(nw.raw, 0, 1, t, 1)?;
            let earlier = g.slice(nw.raw, 0, 0, t - 1, 1)?;
            let d = g.sub(later, earlier)?;
            let sq = g.square(d)?;
            let tar = mean_all(&mut g, sq)?;
            let tar = g.scale(tar, h.tar_beta)?;
            objective = g.add2(objective, tar)?;
        }
        let mut held = arch.w_after.clone();
        held.push(alpha_new);
        let gw = autodiff::grad_holding(&mut g, objective, &arch.w_after, &held)?;
        bn_runs.push(nw.bn);
        let sgd = SgdHyper {
            momentum: 0.0,
            weight_decay: h.weight_decay,
            grad_clip: h.clip,
        };
        let (grad_norm, sgd_assign) =
            clip_and_sgd(&mut g, &inp.names, (&arch.w_after, None), &gw, inp.lr, &sgd)?;
        assign.extend(sgd_assign);
        let bn_updates = bn_runs.iter().map(Vec::len).sum();
        assign.extend(running_stats(&mut g, &bn_runs)?);
        Ok(RnnStepGraph {
            graph: g,
            order,
            assign,
            loss_train: nw.loss,
            objective,
            loss_valid: arch.loss_valid,
            grad_norm,
            norm_v: arch.norm_v,
            alpha_new,
            hidden_train_next: nw.hidden_next,
            hidden_valid_next: arch.hidden_valid_next,
            bn_updates,
            forwards,
        })
    }
}
