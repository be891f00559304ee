//! Dense Hessians from second-order autodiff, and their finite-difference oracle.
//!
//! For a scalar loss L and parameters x (the concatenation, row-major, of the tensors in
//! `params`), [`dense_hessian`] builds once the Hessian-vector-product graph
//! H v = d/dx <grad_x L, v> (`autodiff::hvp`) with one direction input per parameter, then
//! runs it once per unit vector: column i of H is H e_i. [`dense_mixed_hessian`] does the same
//! for the DARTS mixed block d^2 L / (d alpha d w) through `autodiff::mixed_hvp`.
//!
//! The independent check is [`fd_hessian`]: central differences of the autodiff *gradient*,
//! H_fd[:, i] = (g(x + h e_i) - g(x - h e_i)) / (2h), whose error is bounded by
//! [`fd_error_bound`] and minimised by [`fd_step`]. [`hessian_report`] gathers the numbers
//! that describe a Hessian check: dimension, asymmetry, FD error, extreme eigenvalues.
//! Checked by: tests/hessian.rs.

use crate::autodiff;
use crate::exec::{ExecError, Executor, Feeds, Scalar};
use crate::graph::{Graph, GraphError, NodeId, Op};
use crate::linalg::{self, LinalgError};
use ndarray::{Array1, Array2, ArrayD, ArrayView2, IxDyn};
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum HessianError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Linalg(#[from] LinalgError),
    #[error(
        "{op}: parameter {id} at '{label}' is not an input node; only fed inputs can be \
         perturbed and differentiated here"
    )]
    NotAnInput {
        op: &'static str,
        id: NodeId,
        label: String,
    },
    #[error("{op}: node {id} is not in the graph")]
    UnknownNode { op: &'static str, id: NodeId },
    #[error("{op}: no value fed for parameter '{name}'")]
    MissingFeed { op: &'static str, name: String },
    #[error("{op}: the finite-difference step must be positive and finite, got {h}")]
    BadStep { op: &'static str, h: f64 },
}

pub type Result<T> = std::result::Result<T, HessianError>;

/// The fed name of each parameter (which must be an input node), checked against `graph`.
fn param_names(op: &'static str, graph: &Graph, params: &[NodeId]) -> Result<Vec<String>> {
    params
        .iter()
        .map(|&p| {
            if p.0 >= graph.len() {
                return Err(HessianError::UnknownNode { op, id: p });
            }
            match &graph.node(p).op {
                Op::Input { name, .. } => Ok(name.clone()),
                _ => Err(HessianError::NotAnInput {
                    op,
                    id: p,
                    label: graph.node(p).label.clone(),
                }),
            }
        })
        .collect()
}

/// Offsets of each parameter in the concatenated vector, and its total length.
fn offsets(graph: &Graph, params: &[NodeId]) -> (Vec<usize>, usize) {
    let mut off = Vec::with_capacity(params.len());
    let mut n = 0;
    for &p in params {
        off.push(n);
        n += graph.shape(p).numel();
    }
    (off, n)
}

/// A fresh input name that `graph` does not use yet.
fn fresh_input_name(graph: &Graph, stem: &str) -> String {
    let mut k = 0usize;
    loop {
        let name = format!("{stem}{k}");
        if graph.input_id(&name).is_none() {
            return name;
        }
        k += 1;
    }
}

/// Concatenates tensors, each row-major, into one vector.
pub fn flatten(values: &[ArrayD<f64>]) -> Array1<f64> {
    values
        .iter()
        .flat_map(|v| v.as_standard_layout().iter().copied().collect::<Vec<_>>())
        .collect()
}

/// Column-by-column driver shared by the exact Hessians: `graph` already holds the
/// second-order graph whose outputs `outs` are the product with the direction inputs
/// `dirs`; column j is the output for direction e_j.
fn columns_from_directions<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    outs: &[NodeId],
    dirs: &Directions,
    feeds: &Feeds<f64>,
) -> Result<Array2<f64>> {
    let (dir_names, dir_shapes) = (&dirs.names, &dirs.shapes);
    let n_dir: usize = dir_shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let n_out: usize = outs.iter().map(|&o| graph.shape(o).numel()).sum();
    let mut h = Array2::zeros((n_out, n_dir));
    let mut f = feeds.clone();
    for (name, shape) in dir_names.iter().zip(dir_shapes) {
        f.insert(name.clone(), ArrayD::zeros(IxDyn(shape)));
    }
    let mut col = 0;
    for (name, shape) in dir_names.iter().zip(dir_shapes) {
        let numel: usize = shape.iter().product();
        for k in 0..numel {
            let mut e = ArrayD::zeros(IxDyn(shape));
            if let Some(x) = e.as_slice_mut().and_then(|s| s.get_mut(k)) {
                *x = 1.0;
            }
            f.insert(name.clone(), e);
            let vals = exec.run(graph, &f, outs)?;
            h.column_mut(col).assign(&flatten(&vals));
            col += 1;
        }
        f.insert(name.clone(), ArrayD::zeros(IxDyn(shape)));
    }
    Ok(h)
}

/// Direction inputs added to a cloned graph, one per parameter tensor.
struct Directions {
    ids: Vec<NodeId>,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
}

/// Adds one direction input per tensor of `like` to `g`, with the same shapes.
fn add_directions(g: &mut Graph, like: &[NodeId]) -> Result<Directions> {
    let mut d = Directions {
        ids: Vec::new(),
        names: Vec::new(),
        shapes: Vec::new(),
    };
    for &p in like {
        let name = fresh_input_name(g, "hessian.v");
        let shape = g.shape(p).clone();
        d.shapes.push(shape.dims().to_vec());
        d.ids.push(g.input(name.clone(), shape)?);
        d.names.push(name);
    }
    Ok(d)
}

/// Dense Hessian H = d^2 L / dx^2 over the concatenated parameters x (row-major per tensor,
/// in the order of `params`), from exact second-order autodiff: column i is H e_i, computed
/// by the graph H v = d/dx <grad_x L, v> (`autodiff::hvp`), built once on a clone of `graph`.
///
/// Cost: one graph build plus n runs, for n = total parameter count. Each parameter must be an
/// input node with a value in `feeds`.
pub fn dense_hessian<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    params: &[NodeId],
    feeds: &Feeds<f64>,
) -> Result<Array2<f64>> {
    const OP: &str = "dense_hessian";
    param_names(OP, graph, params)?;
    if loss.0 >= graph.len() {
        return Err(HessianError::UnknownNode { op: OP, id: loss });
    }
    let mut g = graph.clone();
    let d = add_directions(&mut g, params)?;
    let hv = autodiff::hvp(&mut g, loss, params, &d.ids)?;
    columns_from_directions(exec, &g, &hv, &d, feeds)
}

/// Mixed block M = d^2 L / (d alpha d w), rows indexed by alpha and columns by w (each
/// concatenated row-major), from `autodiff::mixed_hvp`: column j is
/// d/dalpha <grad_w L, e_j> = (d^2 L / dalpha dw) e_j, the product eq. (7) of Liu, Simonyan
/// and Yang (ICLR 2019) needs with v = grad_w' L_val.
pub fn dense_mixed_hessian<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    w: &[NodeId],
    alpha: &[NodeId],
    feeds: &Feeds<f64>,
) -> Result<Array2<f64>> {
    const OP: &str = "dense_mixed_hessian";
    param_names(OP, graph, w)?;
    param_names(OP, graph, alpha)?;
    if loss.0 >= graph.len() {
        return Err(HessianError::UnknownNode { op: OP, id: loss });
    }
    let mut g = graph.clone();
    let d = add_directions(&mut g, w)?;
    let m = autodiff::mixed_hvp(&mut g, loss, w, &d.ids, alpha)?;
    columns_from_directions(exec, &g, &m, &d, feeds)
}

/// Step h* minimising the central-difference error bound [`fd_error_bound`]:
/// d/dh (h^2/6 M3 + u G / h) = h M3 / 3 - u G / h^2 = 0  =>  h* = (3 u G / M3)^(1/3).
///
/// `grad_scale` G bounds the rounding error of the differenced function in units of u (for a
/// well-scaled gradient, about |g|); `m3` bounds its second derivative along the step (the
/// third derivative of L). For unit scale (G = M3 = 1) in f64: h* = (3 * 2^-53)^(1/3) ~ 6.9e-6.
/// Non-positive or non-finite inputs fall back to that unit-scale step.
pub fn fd_step(grad_scale: f64, m3: f64) -> f64 {
    let u = f64::UNIT_ROUNDOFF;
    let ok = |x: f64| x.is_finite() && x > 0.0;
    if ok(grad_scale) && ok(m3) {
        (3.0 * u * grad_scale / m3).cbrt()
    } else {
        (3.0 * u).cbrt()
    }
}

/// Error bound of one central difference (f(x + h) - f(x - h)) / (2h) of a function f (here
/// one entry of the gradient) against f'(x):
///
/// |error| <= h^2/6 * M3 + u * G / h,
///
/// the Taylor remainder (f''' at some point in [x - h, x + h], |f'''| <= M3, divided by 3!)
/// plus the rounding of the two evaluations (each off by at most u * G, difference divided by
/// 2h).
pub fn fd_error_bound(h: f64, grad_scale: f64, m3: f64) -> f64 {
    h * h / 6.0 * m3 + f64::UNIT_ROUNDOFF * grad_scale / h
}

/// Central differences of the autodiff gradient grad_of L under perturbations of `by`:
/// column j is (grad_of(x + h e_j) - grad_of(x - h e_j)) / (2h).
fn fd_grad_jacobian<E: Executor<f64>>(
    op: &'static str,
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    (of, by): (&[NodeId], &[NodeId]),
    feeds: &Feeds<f64>,
    h: f64,
) -> Result<Array2<f64>> {
    if !(h.is_finite() && h > 0.0) {
        return Err(HessianError::BadStep { op, h });
    }
    param_names(op, graph, of)?;
    let by_names = param_names(op, graph, by)?;
    if loss.0 >= graph.len() {
        return Err(HessianError::UnknownNode { op, id: loss });
    }
    let mut g = graph.clone();
    let gr = autodiff::grad(&mut g, loss, of)?;
    let (_, n_of) = offsets(graph, of);
    let (_, n_by) = offsets(graph, by);
    let mut jac = Array2::zeros((n_of, n_by));
    let mut f = feeds.clone();
    let mut col = 0;
    for name in &by_names {
        let x0 = feeds
            .get(name)
            .ok_or_else(|| HessianError::MissingFeed {
                op,
                name: name.clone(),
            })?
            .as_standard_layout()
            .into_owned();
        for k in 0..x0.len() {
            let mut side = |sign: f64, f: &mut Feeds<f64>| -> Result<Array1<f64>> {
                let mut x = x0.clone();
                if let Some(v) = x.as_slice_mut().and_then(|s| s.get_mut(k)) {
                    *v += sign * h;
                }
                f.insert(name.clone(), x);
                Ok(flatten(&exec.run(&g, f, &gr)?))
            };
            let plus = side(1.0, &mut f)?;
            let minus = side(-1.0, &mut f)?;
            jac.column_mut(col).assign(&((plus - minus) / (2.0 * h)));
            col += 1;
        }
        f.insert(name.clone(), x0);
    }
    Ok(jac)
}

/// Finite-difference Hessian from central differences of the autodiff gradient:
/// H_fd[:, i] = (g(x + h e_i) - g(x - h e_i)) / (2h), each entry within
/// [`fd_error_bound`] of H; choose h with [`fd_step`] (~6e-6 for unit-scale f64).
///
/// Independent of the second-order graph: it differentiates only once.
pub fn fd_hessian<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    params: &[NodeId],
    feeds: &Feeds<f64>,
    h: f64,
) -> Result<Array2<f64>> {
    fd_grad_jacobian("fd_hessian", exec, graph, loss, (params, params), feeds, h)
}

/// Finite-difference mixed block: central differences of grad_alpha L in the w directions,
/// M_fd[:, j] = (grad_alpha L(w + h e_j) - grad_alpha L(w - h e_j)) / (2h); rows alpha,
/// columns w, as [`dense_mixed_hessian`].
pub fn fd_mixed_hessian<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    w: &[NodeId],
    alpha: &[NodeId],
    feeds: &Feeds<f64>,
    h: f64,
) -> Result<Array2<f64>> {
    fd_grad_jacobian("fd_mixed_hessian", exec, graph, loss, (alpha, w), feeds, h)
}

/// Symmetry measure of a square matrix: max |H - H^T| / max |H| (0 for H = 0).
pub fn asymmetry(h: ArrayView2<f64>) -> f64 {
    linalg::relative_asymmetry(h)
}

/// Largest entrywise difference between two matrices of the same shape, relative to the
/// largest entry of `reference`: max |A - B| / max |B| (absolute if B = 0).
pub fn max_relative_error(a: ArrayView2<f64>, reference: ArrayView2<f64>) -> f64 {
    let d = (&a - &reference).iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let s = linalg::max_abs(reference);
    if s == 0.0 {
        d
    } else {
        d / s
    }
}

/// What a dense Hessian check found.
#[derive(Clone, Debug)]
pub struct HessianReport {
    /// Total parameter count n (H is n x n).
    pub dim: usize,
    /// max |H - H^T| / max |H| of the autodiff Hessian.
    pub max_asymmetry: f64,
    /// max |H_fd - H| / max |H|, entrywise against the finite-difference Hessian.
    pub max_rel_fd_error: f64,
    /// Step used for the finite differences.
    pub fd_step: f64,
    /// Smallest and largest eigenvalue of (H + H^T)/2 (faer `sym_eigh`).
    pub eig_min: f64,
    pub eig_max: f64,
}

impl fmt::Display for HessianReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Hessian n = {}: asymmetry {:.3e}, FD error (h = {:.2e}) {:.3e}, eigenvalues [{:.6e}, {:.6e}]",
            self.dim, self.max_asymmetry, self.fd_step, self.max_rel_fd_error, self.eig_min, self.eig_max
        )
    }
}

/// Builds the dense autodiff Hessian and its FD counterpart with step `h` and summarises them
/// in a [`HessianReport`]. Eigenvalues are those of the symmetric part (H + H^T)/2, which is
/// exactly symmetric in floating point (a + b = b + a), so `sym_eigh` never rejects it.
pub fn hessian_report<E: Executor<f64>>(
    exec: &mut E,
    graph: &Graph,
    loss: NodeId,
    params: &[NodeId],
    feeds: &Feeds<f64>,
    h: f64,
) -> Result<HessianReport> {
    let hess = dense_hessian(exec, graph, loss, params, feeds)?;
    let hfd = fd_hessian(exec, graph, loss, params, feeds, h)?;
    let eig = linalg::sym_eigh(linalg::symmetric_part(hess.view()).view())?;
    let n = hess.nrows();
    Ok(HessianReport {
        dim: n,
        max_asymmetry: asymmetry(hess.view()),
        max_rel_fd_error: max_relative_error(hfd.view(), hess.view()),
        fd_step: h,
        eig_min: eig.values.first().copied().unwrap_or(0.0),
        eig_max: eig.values.last().copied().unwrap_or(0.0),
    })
}
