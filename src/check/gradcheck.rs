//! Gradient checks of a graph's reverse-mode derivatives, in f64 on the CPU reference:
//!
//! (a) VJP vs central differences: for a random cotangent c, the gradient of s = <c, f(x)>
//!     against central differences of s, element by element;
//! (b) the adjoint (dot-product) identity <c, J t> = <t, J^T c> along one random tangent t
//!     moving every input at once, with <c, J t> computed without the VJP graph: from the
//!     forward map itself when f is linear in the input, otherwise from central differences
//!     of phi(tau) = <c, f(x + tau t)>, so a wrong nonlinear rule fails it;
//! (c) second order: the gradient of <grad s, v> (an exact Hessian-vector product) against
//!     central differences of grad s along v, on smooth compositions.
//!
//! Tolerances come from `check::tolerance` (derivations: proofs/gradient-checking.md).

use super::tolerance::{central_difference_bound, evaluation_bound, gamma, rounded_point_bound};
use crate::autodiff;
use crate::exec::{cpu::CpuExecutor, ExecError, Executor, Feeds};
use crate::graph::{Graph, GraphError, NodeId, Shape};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Builds a gradient graph for s (a scalar) with respect to `wrt`; the default is
/// `autodiff::grad`. Tests of the checker pass a deliberately wrong one.
pub type GradientBuilder = dyn Fn(&mut Graph, NodeId, &[NodeId]) -> Result<Vec<NodeId>, GraphError>;

/// One gradient-check case: a graph, the inputs to differentiate and the output.
pub struct Case {
    /// Primitive (or composition) under test, for the report.
    pub op: String,
    /// Input shapes and parameters, for the report.
    pub shapes: String,
    pub graph: Graph,
    pub wrt: Vec<NodeId>,
    pub output: NodeId,
    /// Values of every input node of `graph`.
    pub feeds: Feeds<f64>,
    /// The output is affine in each `wrt` input separately (others fixed), so
    /// J_i t = f(.., t, ..) - f(.., 0, ..) exactly: the adjoint test then uses the forward map
    /// itself for J t (the classic dot-product test).
    pub linear: bool,
    /// The composition is C^3 around the point (inputs drawn away from kinks), so the
    /// second-order FD check applies.
    pub smooth: bool,
    /// Longest accumulation (number of summed terms) in the forward pass.
    pub k_terms: usize,
    pub gradient: Option<Box<GradientBuilder>>,
}

/// Result of one of the three checks.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measure {
    /// max |a - b| / max |b| (normwise relative error).
    pub rel_err: f64,
    /// max over entries of |a - b| / tolerance (pass iff <= 1).
    pub worst_ratio: f64,
    /// max |b|: the size of the reference values (0 when the derivative checked is zero).
    pub reference_max: f64,
    /// Largest tolerance over max |b|: how small the allowed error is against the quantity
    /// it guards (infinite when every reference value is zero).
    pub tolerance_rel: f64,
    pub pass: bool,
}

impl Measure {
    fn from(errs: &[(f64, f64, f64)]) -> Measure {
        // (analytic, reference, tolerance)
        let reference_max = errs.iter().map(|e| e.1.abs()).fold(0.0, f64::max);
        let scale = reference_max.max(1e-300);
        let mut rel: f64 = 0.0;
        let mut ratio: f64 = 0.0;
        let mut largest_tol: f64 = 0.0;
        let mut finite = true;
        for &(a, b, tol) in errs {
            largest_tol = largest_tol.max(tol);
            let d = (a - b).abs();
            finite &= a.is_finite() && b.is_finite();
            rel = rel.max(d / scale);
            ratio = ratio.max(if tol > 0.0 {
                d / tol
            } else if d == 0.0 {
                0.0
            } else {
                f64::INFINITY
            });
        }
        if !finite {
            ratio = f64::INFINITY;
            rel = f64::NAN;
        }
        Measure {
            rel_err: rel,
            worst_ratio: ratio,
            reference_max,
            tolerance_rel: if reference_max > 0.0 {
                largest_tol / reference_max
            } else {
                f64::INFINITY
            },
            pass: finite && ratio <= 1.0,
        }
    }
}

/// The three checks of one case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub op: String,
    pub shapes: String,
    pub vjp_vs_fd: Measure,
    pub adjoint: Measure,
    /// None when the composition is not smooth (second order not applicable).
    pub second_order: Option<Measure>,
}

impl Outcome {
    pub fn pass(&self) -> bool {
        self.vjp_vs_fd.pass
            && self.adjoint.pass
            && self.second_order.as_ref().is_none_or(|m| m.pass)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("building the check graph for {op}: {source}")]
    Graph {
        op: String,
        #[source]
        source: GraphError,
    },
    #[error("running the check graph for {op}: {source}")]
    Exec {
        op: String,
        #[source]
        source: ExecError,
    },
}

/// Central-difference step: balances truncation (h^2/6 M3) against round-off (u|f|/h) for
/// unit-scale inputs at h ~ (3u)^(1/3) ~ 7e-6; we take the next power of ten up, 1e-4, where the
/// truncation term (~1e-9 relative) still dominates round-off and is measured by Richardson.
pub const FD_STEP: f64 = 1e-4;

/// Most elements checked per input by central differences; beyond this a seeded random
/// subset is checked (the adjoint and second-order checks still cover every element).
pub const MAX_FD_ELEMENTS: usize = 160;

pub(crate) fn normal_like(shape: &[usize], rng: &mut ChaCha8Rng) -> ArrayD<f64> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.sample::<f64, _>(StandardNormal))
}

/// The number of nodes on the longest path ending at each node (inputs count 1): the
/// `depth` of [`crate::check::tolerance::evaluation_bound`].
pub fn depth(g: &Graph) -> Vec<usize> {
    let mut d = vec![0usize; g.len()];
    for (i, n) in g.nodes().iter().enumerate() {
        d[i] = 1 + n.inputs.iter().map(|j| d[j.0]).max().unwrap_or(0);
    }
    d
}

fn dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

fn abs_dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter().zip(b.iter()).map(|(x, y)| (x * y).abs()).sum()
}

/// Largest |value| of any node upstream of `targets` (inclusive): the scale of the terms
/// that round-off is relative to.
pub(crate) fn max_abs_upstream(
    ex: &mut CpuExecutor<f64>,
    g: &Graph,
    feeds: &Feeds<f64>,
    targets: &[NodeId],
) -> Result<f64, CheckError> {
    let (needed, _) = crate::exec::liveness(g, targets).map_err(|source| CheckError::Exec {
        op: "adjoint".into(),
        source,
    })?;
    let ids: Vec<NodeId> = (0..g.len()).filter(|&i| needed[i]).map(NodeId).collect();
    let vals = ex.run(g, feeds, &ids).map_err(|source| CheckError::Exec {
        op: "adjoint".into(),
        source,
    })?;
    Ok(vals.iter().flat_map(|v| v.iter()).fold(0.0f64, |m, v| {
        if v.is_finite() {
            m.max(v.abs())
        } else {
            m
        }
    }))
}

/// Unit round-off of f64.
const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

fn graph_error(op: &str) -> impl Fn(GraphError) -> CheckError + '_ {
    move |source| CheckError::Graph {
        op: op.to_owned(),
        source,
    }
}

fn exec_error(op: &str) -> impl Fn(ExecError) -> CheckError + '_ {
    move |source| CheckError::Exec {
        op: op.to_owned(),
        source,
    }
}

fn l1(a: &ArrayD<f64>) -> f64 {
    a.iter().map(|v| v.abs()).sum::<f64>()
}

/// The case's graph augmented with the check's inputs (cotangent c, directions v) and the
/// nodes the checks evaluate. The adjoint check's tangents t add no node: both sides of its
/// identity are inner products taken on the host.
struct Augmented {
    g: Graph,
    out_shape: Shape,
    /// s = <c, f(x)>.
    s: NodeId,
    grads: Vec<NodeId>,
    /// H v per `wrt` input, when the case is smooth.
    hv: Option<Vec<NodeId>>,
    depths: Vec<usize>,
}

fn augment(case: &Case) -> Result<Augmented, CheckError> {
    let gerr = graph_error(&case.op);
    let mut g = case.graph.clone();
    let out_shape = g.shape(case.output).clone();
    let c_in = g
        .input("__check_cotangent", out_shape.clone())
        .map_err(&gerr)?;
    let s = g.dot(case.output, c_in).map_err(&gerr)?;
    let grads = match &case.gradient {
        Some(f) => f(&mut g, s, &case.wrt),
        None => autodiff::grad(&mut g, s, &case.wrt),
    }
    .map_err(&gerr)?;
    let mut v_in = Vec::new();
    for (i, &w) in case.wrt.iter().enumerate() {
        let sh = g.shape(w).clone();
        v_in.push(
            g.input(format!("__check_direction_{i}"), sh)
                .map_err(&gerr)?,
        );
    }
    let hv = if case.smooth {
        let s2 = autodiff::inner(&mut g, &grads, &v_in).map_err(&gerr)?;
        Some(autodiff::grad(&mut g, s2, &case.wrt).map_err(&gerr)?)
    } else {
        None
    };
    let depths = depth(&g);
    Ok(Augmented {
        g,
        out_shape,
        s,
        grads,
        hv,
        depths,
    })
}

/// The augmented graph with its random inputs drawn and its values at the base point.
struct Prepared<'a> {
    case: &'a Case,
    g: Graph,
    s: NodeId,
    grads: Vec<NodeId>,
    hv: Option<Vec<NodeId>>,
    depths: Vec<usize>,
    ex: CpuExecutor<f64>,
    feeds: Feeds<f64>,
    /// Feed names of the `wrt` inputs.
    names: Vec<String>,
    c: ArrayD<f64>,
    ts: Vec<ArrayD<f64>>,
    vs: Vec<ArrayD<f64>>,
    /// Values of [s, output, grads.., hv..] at the base point.
    base: Vec<ArrayD<f64>>,
}

impl Prepared<'_> {
    /// Total number of elements of the `wrt` inputs.
    fn total_in(&self) -> usize {
        self.ts.iter().map(|t| t.len()).sum()
    }
}

/// Draws c, then (t_i, v_i) per input, from `rng`, and evaluates the base values.
fn prepare<'a>(case: &'a Case, rng: &mut ChaCha8Rng) -> Result<Prepared<'a>, CheckError> {
    let Augmented {
        g,
        out_shape,
        s,
        grads,
        hv,
        depths,
    } = augment(case)?;
    let mut feeds = case.feeds.clone();
    let c = normal_like(out_shape.dims(), rng);
    feeds.insert("__check_cotangent", c.clone());
    let names: Vec<String> = case
        .wrt
        .iter()
        .map(|&w| match &g.node(w).op {
            crate::graph::Op::Input { name, .. } => name.clone(),
            other => other.name(),
        })
        .collect();
    let mut ts = Vec::new();
    let mut vs = Vec::new();
    for (i, &w) in case.wrt.iter().enumerate() {
        let t = normal_like(g.shape(w).dims(), rng);
        let v = normal_like(g.shape(w).dims(), rng);
        feeds.insert(format!("__check_direction_{i}"), v.clone());
        ts.push(t);
        vs.push(v);
    }
    let mut ex = CpuExecutor::<f64>::new();
    let mut wanted = vec![s, case.output];
    wanted.extend(&grads);
    if let Some(hv) = &hv {
        wanted.extend(hv);
    }
    let base = ex.run(&g, &feeds, &wanted).map_err(exec_error(&case.op))?;
    Ok(Prepared {
        case,
        g,
        s,
        grads,
        hv,
        depths,
        ex,
        feeds,
        names,
        c,
        ts,
        vs,
        base,
    })
}

/// Round-off bound of one evaluation of s = <c, f(x)> near the base point. It is relative to
/// the terms s sums, bounded by the largest intermediate value M_s upstream of s:
/// gamma_K * M_s * sum|c| (plus the |c||y| of the final inner product).
fn s_evaluation_bound(p: &mut Prepared) -> Result<f64, CheckError> {
    let u = UNIT_ROUNDOFF;
    let y = &p.base[1];
    let m_s = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[p.s])?;
    Ok(evaluation_bound(
        p.case.k_terms + y.len(),
        p.depths[p.s.0],
        abs_dot(&p.c, y) + m_s * l1(&p.c),
        u,
    ))
}

/// (a) VJP vs central differences of s, element by element; inputs with more than
/// `MAX_FD_ELEMENTS` elements are subsampled with draws from `rng`.
fn check_vjp_vs_fd(p: &mut Prepared, rng: &mut ChaCha8Rng) -> Result<Measure, CheckError> {
    let case = p.case;
    let eerr = exec_error(&case.op);
    let u = UNIT_ROUNDOFF;
    let k = case.k_terms;
    let s = p.s;
    let grad_vals = p.base[2..2 + p.grads.len()].to_vec();
    let eval_err = s_evaluation_bound(p)?;
    let h = FD_STEP;
    let mut errs_a = Vec::new();
    for (i, name) in p.names.iter().enumerate() {
        let x0 = p.feeds.get(name).expect("wrt inputs are fed").clone();
        let n = x0.len();
        let elems: Vec<usize> = if n <= MAX_FD_ELEMENTS {
            (0..n).collect()
        } else {
            (0..MAX_FD_ELEMENTS)
                .map(|_| rng.random_range(0..n))
                .collect()
        };
        let m_g = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[p.grads[i]])?;
        let mut sval = |x: &ArrayD<f64>| -> Result<f64, CheckError> {
            p.feeds.insert(name.clone(), x.clone());
            Ok(p.ex.run(&p.g, &p.feeds, &[s]).map_err(&eerr)?[0].sum())
        };
        for e in elems {
            let mut d = [0.0; 2];
            for (slot, step) in [h, h / 2.0].into_iter().enumerate() {
                // Difference over the realised step (x + h) - (x - h), which is exact in
                // floating point, so the rounding of x + h does not enter the quotient.
                let xe = x0.as_slice().expect("standard layout")[e];
                let (xp_e, xm_e) = (xe + step, xe - step);
                let mut xp = x0.clone();
                xp.as_slice_mut().expect("standard layout")[e] = xp_e;
                let mut xm = x0.clone();
                xm.as_slice_mut().expect("standard layout")[e] = xm_e;
                d[slot] = (sval(&xp)? - sval(&xm)?) / (xp_e - xm_e);
            }
            let a = grad_vals[i].as_slice().expect("standard layout")[e];
            let tol = central_difference_bound(d[0], d[1], eval_err, h)
                + evaluation_bound(k, p.depths[p.grads[i].0], m_g, u);
            errs_a.push((a, d[1], tol));
        }
        p.feeds.insert(name.clone(), x0);
    }
    Ok(Measure::from(&errs_a))
}

/// (b) adjoint identity <c, J t> = <t, K c> for the VJP K c under test (the gradients of
/// s = <c, f(x)>) and one random tangent t per input, with <c, J t> computed without the VJP
/// graph. A linear case takes J_i t_i = f(.., t_i, ..) - f(.., 0, ..) from the forward map, one
/// input at a time, and the only error is summation round-off. Any other case moves every
/// input at once and takes the central difference of phi(tau) = <c, f(x + tau t)>, whose
/// derivative at 0 is <c, J t>: forward evaluations only, so any wrong VJP rule (linear or
/// not) fails it, whichever element of whichever input it gets wrong.
fn check_adjoint(p: &mut Prepared) -> Result<Measure, CheckError> {
    let case = p.case;
    let eerr = exec_error(&case.op);
    let u = UNIT_ROUNDOFF;
    let k = case.k_terms;
    let grad_vals = p.base[2..2 + p.grads.len()].to_vec();
    let mut errs_b = Vec::new();
    if case.linear {
        // J_i t = f(.., t, ..) - f(.., 0, ..): f is affine in each input separately.
        for (i, name) in p.names.iter().enumerate() {
            let x0 = p.feeds.get(name).expect("fed").clone();
            p.feeds.insert(name.clone(), p.ts[i].clone());
            let yt =
                p.ex.run(&p.g, &p.feeds, &[case.output])
                    .map_err(&eerr)?
                    .remove(0);
            p.feeds.insert(name.clone(), ArrayD::zeros(x0.raw_dim()));
            let y0 =
                p.ex.run(&p.g, &p.feeds, &[case.output])
                    .map_err(&eerr)?
                    .remove(0);
            p.feeds.insert(name.clone(), x0);
            let jvp = dot(&yt, &p.c) - dot(&y0, &p.c);
            let vjp = dot(&p.ts[i], &grad_vals[i]);
            let tol = gamma(k * p.depths[p.grads[i].0] + yt.len() + p.ts[i].len(), u)
                * (abs_dot(&yt, &p.c) + abs_dot(&y0, &p.c) + abs_dot(&p.ts[i], &grad_vals[i]));
            errs_b.push((vjp, jvp, tol));
        }
        return Ok(Measure::from(&errs_b));
    }
    let h = FD_STEP;
    let x0: Vec<ArrayD<f64>> = p
        .names
        .iter()
        .map(|n| p.feeds.get(n).expect("fed").clone())
        .collect();
    // Largest |s| change from rounding the evaluation point x + tau t (tau <= h) to doubles:
    // u sum_j |d_j s| (|x_j| + h |t_j|) (`rounded_point_bound`).
    let point_abs: f64 = (0..x0.len())
        .map(|i| {
            grad_vals[i]
                .iter()
                .zip(x0[i].iter().zip(p.ts[i].iter()))
                .map(|(g, (x, t))| g.abs() * (x.abs() + h * t.abs()))
                .sum::<f64>()
        })
        .sum();
    let eval_err = s_evaluation_bound(p)? + rounded_point_bound(point_abs, u);
    let s = p.s;
    let mut phi = |tau: f64| -> Result<f64, CheckError> {
        for (i, name) in p.names.iter().enumerate() {
            p.feeds.insert(name.clone(), &x0[i] + &(&p.ts[i] * tau));
        }
        Ok(p.ex.run(&p.g, &p.feeds, &[s]).map_err(&eerr)?[0].sum())
    };
    let d_h = (phi(h)? - phi(-h)?) / (2.0 * h);
    let d_half = (phi(h / 2.0)? - phi(-h / 2.0)?) / h;
    for (i, name) in p.names.iter().enumerate() {
        p.feeds.insert(name.clone(), x0[i].clone());
    }
    // The VJP side <t, K c> = sum_i <t_i, g_i>: each gradient entry carries the evaluation
    // bound of its graph (as in check (a)), and the inner product its own gamma_n.
    let mut vjp = 0.0;
    let mut vjp_err = 0.0;
    let mut vjp_abs = 0.0;
    for ((t, g), &node) in p.ts.iter().zip(&grad_vals).zip(&p.grads) {
        let m_g = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[node])?;
        vjp += dot(t, g);
        vjp_abs += abs_dot(t, g);
        vjp_err += evaluation_bound(k, p.depths[node.0], m_g, u) * l1(t);
    }
    vjp_err += gamma(p.total_in(), u) * vjp_abs;
    let tol = central_difference_bound(d_h, d_half, eval_err, h) + vjp_err;
    errs_b.push((vjp, d_half, tol));
    Ok(Measure::from(&errs_b))
}

/// (c) exact H v against central differences of the gradient along v; `hv_nodes` are the
/// H v nodes of a smooth case.
fn check_second_order(p: &mut Prepared, hv_nodes: &[NodeId]) -> Result<Measure, CheckError> {
    let case = p.case;
    let eerr = exec_error(&case.op);
    let u = UNIT_ROUNDOFF;
    let k = case.k_terms;
    let h = FD_STEP;
    let total_in = p.total_in();
    let hv_vals = &p.base[2 + p.grads.len()..];
    let x0: Vec<ArrayD<f64>> = p
        .names
        .iter()
        .map(|n| p.feeds.get(n).expect("fed").clone())
        .collect();
    let mut grad_at = |step: f64| -> Result<Vec<ArrayD<f64>>, CheckError> {
        for (i, name) in p.names.iter().enumerate() {
            p.feeds.insert(name.clone(), &x0[i] + &(&p.vs[i] * step));
        }
        p.ex.run(&p.g, &p.feeds, &p.grads).map_err(&eerr)
    };
    let gp = grad_at(h)?;
    let gm = grad_at(-h)?;
    let gp2 = grad_at(h / 2.0)?;
    let gm2 = grad_at(-h / 2.0)?;
    for (i, name) in p.names.iter().enumerate() {
        p.feeds.insert(name.clone(), x0[i].clone());
    }
    let mut errs_c = Vec::new();
    for i in 0..p.names.len() {
        // Round-off of each gradient evaluation is relative to the largest value
        // upstream of it (cancellation inside, e.g. batch norm, is covered).
        let m_g = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[p.grads[i]])?;
        let m_hv = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[hv_nodes[i]])?;
        let eval_g = evaluation_bound(k + total_in, p.depths[p.grads[i].0], m_g, u);
        for e in 0..hv_vals[i].len() {
            let at = |a: &ArrayD<f64>| a.as_slice().expect("standard layout")[e];
            let d1 = (at(&gp[i]) - at(&gm[i])) / (2.0 * h);
            let d2 = (at(&gp2[i]) - at(&gm2[i])) / h;
            let tol = central_difference_bound(d1, d2, eval_g, h)
                + evaluation_bound(k, p.depths[hv_nodes[i].0], m_hv, u);
            errs_c.push((at(&hv_vals[i]), d2, tol));
        }
    }
    Ok(Measure::from(&errs_c))
}

/// Run the three checks on `case` with random directions drawn from `seed`.
pub fn check(case: &Case, seed: u64) -> Result<Outcome, CheckError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = prepare(case, &mut rng)?;
    let vjp_vs_fd = check_vjp_vs_fd(&mut p, &mut rng)?;
    let adjoint = check_adjoint(&mut p)?;
    let second_order = match p.hv.clone() {
        None => None,
        Some(hv_nodes) => Some(check_second_order(&mut p, &hv_nodes)?),
    };
    Ok(Outcome {
        op: case.op.clone(),
        shapes: case.shapes.clone(),
        vjp_vs_fd,
        adjoint,
        second_order,
    })
}

/// The standard suite ([`super::cases::standard_suite`]) checked with `seed`, keeping the
/// cases whose op name contains `filter`: the suite and the outcomes, in suite order.
pub fn run_suite(
    seed: u64,
    network: bool,
    filter: Option<&str>,
) -> Result<(Vec<Case>, Vec<Outcome>), CheckError> {
    let suite =
        super::cases::standard_suite(seed, network).map_err(|source| CheckError::Graph {
            op: "the standard suite".into(),
            source,
        })?;
    let mut outcomes = Vec::new();
    for (i, case) in suite.iter().enumerate() {
        if filter.is_some_and(|f| !case.op.contains(f)) {
            continue;
        }
        outcomes.push(check(case, seed.wrapping_mul(1000) + i as u64)?);
    }
    Ok((suite, outcomes))
}
