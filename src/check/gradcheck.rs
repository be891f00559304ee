//! Gradient checks of a graph's reverse-mode derivatives, in f64 on the CPU reference:
//!
//! (a) VJP vs central differences: for a random cotangent c, the gradient of s = <c, f(x)>
//!     against central differences of s, element by element;
//! (b) the adjoint (dot-product) identity <J t, c> = <t, J^T c>: J t from the forward map
//!     itself when f is linear in the input, otherwise from differentiating <J^T c, t> with
//!     respect to c (which exercises the VJP rules of the VJP nodes);
//! (c) second order: the gradient of <grad s, v> (an exact Hessian-vector product) against
//!     central differences of grad s along v, on smooth compositions.
//!
//! Tolerances come from `check::tolerance` (derivations: proofs/gradient-checking.md).

use super::tolerance::{central_difference_bound, evaluation_bound, gamma};
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
    pub pass: bool,
}

impl Measure {
    fn from(errs: &[(f64, f64, f64)]) -> Measure {
        // (analytic, reference, tolerance)
        let scale = errs
            .iter()
            .map(|e| e.1.abs())
            .fold(0.0, f64::max)
            .max(1e-300);
        let mut rel: f64 = 0.0;
        let mut ratio: f64 = 0.0;
        let mut finite = true;
        for &(a, b, tol) in errs {
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

/// The case's graph augmented with the check's inputs (cotangent c, tangents t, directions
/// v) and the nodes the checks evaluate.
struct Augmented {
    g: Graph,
    out_shape: Shape,
    /// s = <c, f(x)>.
    s: NodeId,
    /// r = <grad s, t> = <t, J^T c>.
    r: NodeId,
    /// J t, as the gradient of r with respect to c.
    jt: NodeId,
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
    let mut t_in = Vec::new();
    let mut v_in = Vec::new();
    for (i, &w) in case.wrt.iter().enumerate() {
        let sh = g.shape(w).clone();
        t_in.push(
            g.input(format!("__check_tangent_{i}"), sh.clone())
                .map_err(&gerr)?,
        );
        v_in.push(
            g.input(format!("__check_direction_{i}"), sh)
                .map_err(&gerr)?,
        );
    }
    let r = autodiff::inner(&mut g, &grads, &t_in).map_err(&gerr)?;
    let jt = autodiff::grad(&mut g, r, &[c_in]).map_err(&gerr)?[0];
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
        r,
        jt,
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
    r: NodeId,
    jt: NodeId,
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
    /// Values of [s, output, r, jt, grads.., hv..] at the base point.
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
        r,
        jt,
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
        feeds.insert(format!("__check_tangent_{i}"), t.clone());
        feeds.insert(format!("__check_direction_{i}"), v.clone());
        ts.push(t);
        vs.push(v);
    }
    let mut ex = CpuExecutor::<f64>::new();
    let mut wanted = vec![s, case.output, r, jt];
    wanted.extend(&grads);
    if let Some(hv) = &hv {
        wanted.extend(hv);
    }
    let base = ex.run(&g, &feeds, &wanted).map_err(exec_error(&case.op))?;
    Ok(Prepared {
        case,
        g,
        s,
        r,
        jt,
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

/// (a) VJP vs central differences of s, element by element; inputs with more than
/// `MAX_FD_ELEMENTS` elements are subsampled with draws from `rng`.
fn check_vjp_vs_fd(p: &mut Prepared, rng: &mut ChaCha8Rng) -> Result<Measure, CheckError> {
    let case = p.case;
    let eerr = exec_error(&case.op);
    let u = UNIT_ROUNDOFF;
    let k = case.k_terms;
    let s = p.s;
    let y = &p.base[1];
    let grad_vals = &p.base[4..4 + p.grads.len()];
    // Round-off of each evaluation of s is relative to the terms it sums, bounded by the
    // largest intermediate value M_s upstream of s: gamma_K * M_s * sum|c| (plus the |c||y| of
    // the final inner product).
    let m_s = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[s])?;
    let eval_err = evaluation_bound(
        k + y.len(),
        p.depths[s.0],
        abs_dot(&p.c, y) + m_s * l1(&p.c),
        u,
    );
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

/// (b) adjoint identity <J t, c> = <t, J^T c>.
fn check_adjoint(p: &mut Prepared) -> Result<Measure, CheckError> {
    let case = p.case;
    let eerr = exec_error(&case.op);
    let u = UNIT_ROUNDOFF;
    let k = case.k_terms;
    let y = &p.base[1];
    let r_val = p.base[2].sum();
    let jt_val = &p.base[3];
    let grad_vals = &p.base[4..4 + p.grads.len()];
    let rhs = r_val;
    let rhs_abs: f64 =
        p.ts.iter()
            .zip(grad_vals)
            .map(|(t, gv)| abs_dot(t, gv))
            .sum();
    let total_in = p.total_in();
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
            let lhs = dot(&yt, &p.c) - dot(&y0, &p.c);
            let rhs_i = dot(&p.ts[i], &grad_vals[i]);
            let tol = gamma(k * p.depths[p.grads[i].0] + yt.len() + p.ts[i].len(), u)
                * (abs_dot(&yt, &p.c) + abs_dot(&y0, &p.c) + abs_dot(&p.ts[i], &grad_vals[i]));
            errs_b.push((lhs, rhs_i, tol));
        }
    } else {
        // Both sides are computed through the VJP graph, where terms can cancel (batch norm
        // with two values per channel has a Jacobian of order eps). Round-off is relative to
        // the terms, not to the result: bound each term by the largest intermediate value M
        // upstream of the two sides, giving gamma_K * M * (sum |t| + sum |c|).
        let m = max_abs_upstream(&mut p.ex, &p.g, &p.feeds, &[p.jt, p.r])?;
        let c = &p.c;
        let terms = m * (p.ts.iter().map(l1).sum::<f64>() + l1(c));
        let lhs = dot(jt_val, c);
        let tol = gamma(k * p.depths[p.jt.0] + y.len() + total_in, u)
            * (abs_dot(jt_val, c) + rhs_abs + terms);
        errs_b.push((lhs, rhs, tol));
    }
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
    let hv_vals = &p.base[4 + p.grads.len()..];
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
