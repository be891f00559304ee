//! The audit of the architecture gradient at one search step, in f64 on the CPU whatever the
//! run's dtype: against the exact derivative of eq. 7's one-step objective (autodiff through
//! the unrolled step), the first-order gradient, the paper's finite-difference second order,
//! its audit variant (the difference at w'), the second-order formula with the exact mixed
//! HVP, and the implicit-function hypergradient with a K-term Neumann series for the inverse
//! Hessian; for each, relative error and cosine. Plus, for the paper's difference and an eps
//! sweep r = 1e-1 .. 1e-8 (two points per decade), the error of the difference quotient
//! against the exact mixed HVP and the number of ReLU sign flips and max-pool argmax switches
//! between w + R v and w - R v (the kinks the step crosses). Derivations: proofs/audit.md,
//! sections 5-7. Every quantity is a node of one graph, built from the architect's pieces.

use super::architect::{exact_mixed_hvp, fd_mixed_hvp, net_at, second_order, LossAt, Paper};
use super::gradients::GradientsGraph;
use super::step_graph::{upload_state, OptimState};
use crate::autodiff;
use crate::darts::network::SearchConfig;
use crate::darts::ops::BnRecord;
use crate::darts::params::State;
use crate::data::Batch;
use crate::exec::{open_as, Backend, ExecError, Executor};
use crate::graph::{Graph, GraphError, NodeId, Op, UnaryOp};
use serde::Serialize;

use crate::graph::Result as R;

/// The eps sweep's scales r (R = r / ||v||): 10^(-j/2) for j = 2..=16, 1e-1 down to 1e-8.
pub fn sweep_scales() -> Vec<f64> {
    (2..=16).map(|j| 10f64.powf(-(j as f64) / 2.0)).collect()
}

/// The hypergradients the audit compares with the exact one, by name.
pub const METHODS: [&str; 5] = [
    "first",
    "second_fd",
    "second_fd_at_unrolled",
    "second_exact_hvp",
    "neumann",
];

/// Kinks crossed between two forwards: ReLU inputs whose sign differs, max-pool windows whose
/// maximum moves, as count nodes, and the totals.
struct Kinks {
    relu_flips: NodeId,
    relu_total: usize,
    pool_switches: NodeId,
    pool_total: usize,
}

/// The audit graph: the gradients graph extended by the audit's quantities.
pub struct AuditGraph {
    pub gradients: GradientsGraph,
    /// The exact unrolled gradient and each method's [normal, reduce].
    pub exact: [NodeId; 2],
    pub methods: Vec<(&'static str, [NodeId; 2])>,
    pub hvp_exact: [NodeId; 2],
    /// Per sweep scale r: the difference quotient, R and the kinks crossed.
    sweep: Vec<(f64, [NodeId; 2], NodeId, Kinks)>,
    pub neumann_terms: usize,
}

/// Nodes [a, b) of op `pick` in a forward's node range.
fn nodes_in(g: &Graph, (a, b): (usize, usize), pick: fn(&Op) -> bool) -> Vec<NodeId> {
    (a..b)
        .map(NodeId)
        .filter(|&n| pick(&g.node(n).op))
        .collect()
}

/// Sums of `counts` as one scalar node (0 when empty).
fn total(g: &mut Graph, counts: Vec<NodeId>) -> R<NodeId> {
    let mut acc = g.scalar(0.0)?;
    for c in counts {
        acc = g.add2(acc, c)?;
    }
    Ok(acc)
}

/// The kinks between the forwards over node ranges `plus` and `minus` (the same builder, so
/// their ReLUs and max-pools pair in order): sum (step(x+) - step(x-))^2 over every ReLU input
/// x, and, per max-pool window, step(max x- - x-[argmax x+]): 1 where the argmax of x+ is not
/// a maximiser of x- (ties are not switches: no kink in value is crossed).
fn kinks(g: &mut Graph, plus: (usize, usize), minus: (usize, usize)) -> R<Kinks> {
    let is_relu = |op: &Op| matches!(op, Op::Unary(UnaryOp::Relu));
    let is_pool = |op: &Op| matches!(op, Op::MaxPool2d(_));
    let (rp, rm) = (nodes_in(g, plus, is_relu), nodes_in(g, minus, is_relu));
    let (pp, pm) = (nodes_in(g, plus, is_pool), nodes_in(g, minus, is_pool));
    if rp.len() != rm.len() || pp.len() != pm.len() {
        return Err(GraphError::Shape {
            op: "audit kinks".into(),
            label: "w + R v vs w - R v".into(),
            shapes: format!(
                "{} / {} ReLUs, {} / {} max-pools",
                rp.len(),
                rm.len(),
                pp.len(),
                pm.len()
            ),
            reason: "the two forwards differ in their ReLUs or max-pools".into(),
        });
    }
    let (mut flips, mut relu_total) = (Vec::new(), 0);
    for (a, b) in rp.into_iter().zip(rm) {
        let (xa, xb) = (g.node(a).inputs[0], g.node(b).inputs[0]);
        relu_total += g.shape(xa).numel();
        let sa = g.unary(UnaryOp::Step, xa)?;
        let sb = g.unary(UnaryOp::Step, xb)?;
        let d = g.sub(sa, sb)?;
        let d2 = g.square(d)?;
        flips.push(g.sum_all(d2)?);
    }
    let (mut switches, mut pool_total) = (Vec::new(), 0);
    for (a, b) in pp.into_iter().zip(pm) {
        let Op::MaxPool2d(p) = g.node(a).op.clone() else {
            unreachable!("picked as a max-pool")
        };
        let (xa, xb) = (g.node(a).inputs[0], g.node(b).inputs[0]);
        pool_total += g.shape(b).numel();
        let at_a = g.add(Op::MaxPool2dGather(p), &[xa, xb])?;
        let gap = g.sub(b, at_a)?;
        let s = g.unary(UnaryOp::Step, gap)?;
        switches.push(g.sum_all(s)?);
    }
    Ok(Kinks {
        relu_flips: total(g, flips)?,
        relu_total,
        pool_switches: total(g, switches)?,
        pool_total,
    })
}

impl AuditGraph {
    /// For train batches of shape `train_shape` and search batches of `valid_shape`, the
    /// unrolled step with momentum `momentum` and coupled decay `weight_decay`, and a
    /// Neumann series of `neumann_terms` terms (at least 1).
    pub fn build(
        cfg: &SearchConfig,
        train_shape: &[usize],
        valid_shape: &[usize],
        (momentum, weight_decay): (f64, f64),
        neumann_terms: usize,
    ) -> R<AuditGraph> {
        let gg = GradientsGraph::build(cfg, train_shape, valid_shape, momentum, weight_decay)?;
        let mut gg = gg;
        let mut g = std::mem::replace(&mut gg.graph, Graph::new());
        let node = |key: &str| gg.output(key).expect("the gradients graph's key");
        let pair = |key: &str| {
            [
                node(&format!("{key}/normal")),
                node(&format!("{key}/reduce")),
            ]
        };
        let inp = &gg.inputs;
        let (alpha, w) = (inp.alpha, inp.w.clone());
        let exact = pair("grad_alpha_unrolled_exact");
        let partial = pair("grad_alpha_unrolled_partial");
        let hvp_exact = pair("hvp_exact");
        let v: Vec<NodeId> = inp
            .names
            .iter()
            .map(|(n, _)| node(&format!("v/{n}")))
            .collect();
        let second_exact = second_order(&mut g, &partial, &hvp_exact, inp.lr)?;
        let audit_fd = pair("hvp_fd_at_unrolled");
        let second_audit = second_order(&mut g, &partial, &audit_fd, inp.lr)?;

        // The implicit-function hypergradient at w: grad_alpha L_val - (d2 L_train / dalpha dw) p,
        // p = eta sum_{j<K} (I - eta (H + lambda I))^j grad_w L_val, H the Hessian of L_train.
        let nt = net_at(&mut g, cfg, inp.train, alpha, inp.at(&w))?;
        let gw_train = autodiff::grad(&mut g, nt.loss, &w)?;
        let nv = net_at(&mut g, cfg, inp.valid, alpha, inp.at(&w))?;
        let mut wrt = w.clone();
        wrt.extend(alpha);
        let gv = autodiff::grad(&mut g, nv.loss, &wrt)?;
        let (gv_w, gv_alpha) = gv.split_at(w.len());
        let lambda = g.scalar(weight_decay)?;
        let mut term = gv_w.to_vec();
        let mut sum = term.clone();
        for _ in 1..neumann_terms.max(1) {
            let s = autodiff::inner(&mut g, &gw_train, &term)?;
            let h_term = autodiff::grad_holding(&mut g, s, &w, &term)?;
            let mut next = Vec::with_capacity(w.len());
            for i in 0..w.len() {
                let decay = g.mul(term[i], lambda)?;
                let h = g.add2(h_term[i], decay)?;
                let step = g.mul(h, inp.lr)?;
                next.push(g.sub(term[i], step)?);
            }
            for i in 0..w.len() {
                sum[i] = g.add2(sum[i], next[i])?;
            }
            term = next;
        }
        let p: Vec<NodeId> = sum.iter().map(|&s| g.mul(s, inp.lr)).collect::<R<_>>()?;
        let mixed = exact_mixed_hvp(&mut g, &gw_train, &p, &alpha)?;
        let mut neumann = [mixed[0], mixed[1]];
        for c in 0..2 {
            neumann[c] = g.sub(gv_alpha[c], mixed[c])?;
        }

        // The eps sweep: the paper's difference at w along v with R = r / ||v||, its kinks.
        let mut sweep = Vec::new();
        for r in sweep_scales() {
            let mut ranges: Vec<(usize, usize)> = Vec::new();
            let (train, inputs) = (inp.train, &gg.inputs);
            let mut loss_at = |g: &mut Graph, at: &[NodeId]| -> R<(NodeId, Vec<BnRecord>)> {
                let start = g.len();
                let n = net_at(g, cfg, train, alpha, inputs.at(at))?;
                ranges.push((start, g.len()));
                Ok((n.loss, n.bn))
            };
            let loss_at: &mut LossAt = &mut loss_at;
            let fd = fd_mixed_hvp(&mut g, &Paper, loss_at, &alpha, &w, &v, r)?;
            let k = kinks(&mut g, ranges[0], ranges[1])?;
            sweep.push((r, [fd.hvp[0], fd.hvp[1]], fd.r, k));
        }
        let methods = vec![
            ("first", pair("grad_alpha_first")),
            ("second_fd", pair("grad_alpha_second")),
            ("second_fd_at_unrolled", [second_audit[0], second_audit[1]]),
            ("second_exact_hvp", [second_exact[0], second_exact[1]]),
            ("neumann", neumann),
        ];
        gg.graph = g;
        Ok(AuditGraph {
            gradients: gg,
            exact,
            methods,
            hvp_exact,
            sweep,
            neumann_terms: neumann_terms.max(1),
        })
    }
}

/// How one approximation compares with the exact gradient e: ||g - e|| / ||e|| and
/// <g, e> / (||g|| ||e||), both alphas together.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub method: String,
    pub rel_err: f64,
    pub cosine: f64,
}

/// One point of the eps sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// R = r / ||v||.
    pub r: f64,
    pub big_r: f64,
    /// ||hvp_fd(r) - hvp_exact|| / ||hvp_exact||.
    pub hvp_rel_err: f64,
    pub relu_flips: f64,
    pub maxpool_switches: f64,
}

/// The audit of one step.
#[derive(Clone, Debug, Serialize)]
pub struct Audit {
    pub exact_norm: f64,
    pub methods: Vec<Agreement>,
    /// The paper's scale r = 0.01 point of the sweep.
    pub paper: SweepPoint,
    pub sweep: Vec<SweepPoint>,
    pub relu_total: usize,
    pub maxpool_total: usize,
    pub neumann_terms: usize,
    pub seconds: f64,
}

fn flat(v: &[ndarray::ArrayD<f64>]) -> Vec<f64> {
    v.iter().flat_map(|a| a.iter().copied()).collect()
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// ||a - b|| / ||b|| and the cosine of a and b.
pub fn agreement(a: &[f64], b: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    (
        norm(&d) / norm(b).max(f64::MIN_POSITIVE),
        dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE),
    )
}

/// Runs audits on an f64 CPU executor of its own, caching the graph per batch shapes.
pub struct Auditor {
    exec: Box<dyn Executor<f64>>,
    graphs: std::collections::HashMap<(Vec<usize>, Vec<usize>), AuditGraph>,
    momentum: f64,
    weight_decay: f64,
    neumann_terms: usize,
}

impl Auditor {
    pub fn new(momentum: f64, weight_decay: f64, neumann_terms: usize) -> Result<Self, ExecError> {
        Ok(Auditor {
            exec: open_as::<f64>(Backend::Cpu)?,
            graphs: Default::default(),
            momentum,
            weight_decay,
            neumann_terms,
        })
    }

    /// The audit at `state` (and the momentum buffers of `opt`) on the step's batches with
    /// the learning rate (xi) `lr`.
    #[allow(clippy::too_many_arguments)]
    pub fn audit(
        &mut self,
        cfg: &SearchConfig,
        state: &State,
        opt: &OptimState,
        train: &Batch,
        valid: &Batch,
        lr: f64,
    ) -> Result<Audit, super::architect::ArchError> {
        let t0 = std::time::Instant::now();
        let key = (train.x.shape().to_vec(), valid.x.shape().to_vec());
        if !self.graphs.contains_key(&key) {
            let ag = AuditGraph::build(
                cfg,
                &key.0,
                &key.1,
                (self.momentum, self.weight_decay),
                self.neumann_terms,
            )?;
            self.graphs.insert(key.clone(), ag);
        }
        let ag = &self.graphs[&key];
        let exec_err = |source| super::architect::ArchError::Exec {
            what: "the audit graph".into(),
            source,
        };
        upload_state(self.exec.as_mut(), &cfg.layout()?, state, opt).map_err(exec_err)?;
        let f = GradientsGraph::feeds::<f64>(train, valid, lr);
        let mut outs: Vec<NodeId> = ag.exact.to_vec();
        outs.extend(ag.hvp_exact);
        for (_, m) in &ag.methods {
            outs.extend(m);
        }
        for (_, h, r, k) in &ag.sweep {
            outs.extend(h);
            outs.extend([*r, k.relu_flips, k.pool_switches]);
        }
        let vals = self
            .exec
            .run(&ag.gradients.graph, &f, &outs)
            .map_err(exec_err)?;
        for (i, v) in vals.iter().enumerate() {
            super::architect::check_finite("audit", &format!("output {i}"), v)?;
        }
        let mut it = vals.into_iter();
        let two = |it: &mut std::vec::IntoIter<ndarray::ArrayD<f64>>| {
            flat(&[it.next().unwrap(), it.next().unwrap()])
        };
        let exact = two(&mut it);
        let hvp_exact = two(&mut it);
        let methods = ag
            .methods
            .iter()
            .map(|(name, _)| {
                let (rel_err, cosine) = agreement(&two(&mut it), &exact);
                Agreement {
                    method: name.to_string(),
                    rel_err,
                    cosine,
                }
            })
            .collect();
        let mut sweep = Vec::new();
        let mut kink_totals = (0, 0);
        for (r, _, _, k) in &ag.sweep {
            let hvp = two(&mut it);
            let mut one = || it.next().unwrap().sum();
            let (big_r, flips, switches) = (one(), one(), one());
            kink_totals = (k.relu_total, k.pool_total);
            sweep.push(SweepPoint {
                r: *r,
                big_r,
                hvp_rel_err: agreement(&hvp, &hvp_exact).0,
                relu_flips: flips,
                maxpool_switches: switches,
            });
        }
        let paper = sweep
            .iter()
            .find(|p| (p.r - super::architect::FD_SCALE).abs() < 1e-12)
            .expect("the sweep holds the paper's scale")
            .clone();
        Ok(Audit {
            exact_norm: norm(&exact),
            methods,
            paper,
            sweep,
            relu_total: kink_totals.0,
            maxpool_total: kink_totals.1,
            neumann_terms: ag.neumann_terms,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// One audit to run: the state before step `step` and that step's batches.
pub struct AuditJob {
    pub cfg: SearchConfig,
    pub state: State,
    pub opt: OptimState,
    pub train: Batch,
    pub valid: Batch,
    pub lr: f64,
    pub step: usize,
    pub epoch: usize,
}

/// A finished audit: its job's step, epoch and learning rate, and the audit or the error's
/// message.
pub struct AuditDone {
    pub step: usize,
    pub epoch: usize,
    pub lr: f64,
    pub result: Result<Audit, String>,
}

/// An [`Auditor`] on a thread of its own, so that a search's audits run beside its steps (the
/// CPU executor uses one core; the audit reads copies of the state and changes nothing). At
/// most one audit is in flight: [`AuditWorker::submit`] first waits for the previous one.
pub struct AuditWorker {
    jobs: Option<std::sync::mpsc::Sender<AuditJob>>,
    done: std::sync::mpsc::Receiver<AuditDone>,
    in_flight: usize,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl AuditWorker {
    /// Starts the thread; its auditor (an f64 CPU executor) is opened there.
    pub fn spawn(momentum: f64, weight_decay: f64, neumann_terms: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<AuditJob>();
        let (tx, done) = std::sync::mpsc::channel::<AuditDone>();
        let handle = std::thread::spawn(move || {
            let mut auditor: Option<Auditor> = None;
            for job in rx {
                let result = (|| {
                    if auditor.is_none() {
                        let a = Auditor::new(momentum, weight_decay, neumann_terms)
                            .map_err(|e| e.to_string())?;
                        auditor = Some(a);
                    }
                    let a = auditor.as_mut().expect("opened above");
                    a.audit(
                        &job.cfg, &job.state, &job.opt, &job.train, &job.valid, job.lr,
                    )
                    .map_err(|e| e.to_string())
                })();
                let d = AuditDone {
                    step: job.step,
                    epoch: job.epoch,
                    lr: job.lr,
                    result,
                };
                if tx.send(d).is_err() {
                    return;
                }
            }
        });
        AuditWorker {
            jobs: Some(jobs),
            done,
            in_flight: 0,
            handle: Some(handle),
        }
    }

    /// Every audit in flight, waited for, in submission order.
    pub fn finish(&mut self) -> Vec<AuditDone> {
        let mut out = Vec::new();
        while self.in_flight > 0 {
            match self.done.recv() {
                Ok(d) => out.push(d),
                Err(_) => {
                    out.push(AuditDone {
                        step: usize::MAX,
                        epoch: usize::MAX,
                        lr: f64::NAN,
                        result: Err("the audit thread stopped (panicked)".into()),
                    });
                    self.in_flight = 1;
                }
            }
            self.in_flight -= 1;
        }
        out
    }

    /// Queues `job` after waiting for the audit in flight, which is returned.
    pub fn submit(&mut self, job: AuditJob) -> Vec<AuditDone> {
        let out = self.finish();
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if sent {
            self.in_flight += 1;
        }
        out
    }
}

impl Drop for AuditWorker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
