//! GPU f32 against the CPU f64 reference, per gradient-check case: the forward output and
//! the reverse-mode gradient of <c, f(x)>, both computed by each executor from the same
//! f32-rounded inputs, so the only difference is the arithmetic.
//!
//! Bound per output entry (first order in u): every node rounds each of at most K terms once
//! in f32, and errors travel at most `depth` nodes, so |gpu - cpu| <= gamma_{K depth}(2^-24) M,
//! with K the case's longest accumulation, depth the output's longest path and M the largest
//! |value| upstream of the output (the scale round-off is relative to). This covers the WGSL
//! builtins used here (exp within 3 + 2|x| ULP, log within 2^-21 absolute near 1, ...) as
//! long as their error stays inside that budget, which the per-primitive tests in
//! tests/gpu_vs_cpu.rs check against the WGSL accuracy table directly.

use super::gradcheck::{depth, max_abs_upstream, normal_like, Case, CheckError};
use super::tolerance::gamma;
use crate::autodiff;
use crate::exec::{cpu::CpuExecutor, Executor};
use crate::graph::NodeId;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Agreement of one case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Agreement {
    pub op: String,
    pub shapes: String,
    /// max |gpu - cpu| / max |cpu| over the output and all gradients.
    pub rel_err: f64,
    /// max over entries of |gpu - cpu| / bound (pass iff <= 1).
    pub worst_ratio: f64,
    pub pass: bool,
}

/// Compare `gpu` with the CPU f64 reference on `case`.
pub fn gpu_vs_cpu<E: Executor<f32> + ?Sized>(
    case: &Case,
    gpu: &mut E,
    seed: u64,
) -> Result<Agreement, CheckError> {
    let op = case.op.clone();
    let gerr = |source| CheckError::Graph {
        op: op.clone(),
        source,
    };
    let eerr = |source| CheckError::Exec {
        op: op.clone(),
        source,
    };
    let mut g = case.graph.clone();
    let out_shape = g.shape(case.output).clone();
    let c_in = g
        .input("__check_cotangent", out_shape.clone())
        .map_err(gerr)?;
    let s = g.dot(case.output, c_in).map_err(gerr)?;
    let grads = autodiff::grad(&mut g, s, &case.wrt).map_err(gerr)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut feeds = case.feeds.clone();
    feeds.insert("__check_cotangent", normal_like(out_shape.dims(), &mut rng));
    // Both sides see the same f32-rounded inputs.
    let f32_feeds = feeds.cast::<f32>();
    let cpu_feeds = f32_feeds.cast::<f64>();
    let mut outputs: Vec<NodeId> = vec![case.output];
    outputs.extend(&grads);
    let mut cpu = CpuExecutor::<f64>::new();
    let want = cpu.run(&g, &cpu_feeds, &outputs).map_err(eerr)?;
    let got = gpu.run(&g, &f32_feeds, &outputs).map_err(eerr)?;
    let depths = depth(&g);
    let u32_ = f32::EPSILON as f64 / 2.0;
    let (mut worst, mut max_err, mut scale, mut finite) = (0f64, 0f64, 0f64, true);
    for (k, &o) in outputs.iter().enumerate() {
        let m = max_abs_upstream(&mut cpu, &g, &cpu_feeds, &[o])?;
        let bound = gamma(case.k_terms.max(1) * depths[o.0], u32_) * m;
        for (w, v) in want[k].iter().zip(got[k].iter()) {
            let v = *v as f64;
            finite &= v.is_finite() == w.is_finite();
            let d = (v - w).abs();
            max_err = max_err.max(d);
            scale = scale.max(w.abs());
            worst = worst.max(if bound > 0.0 {
                d / bound
            } else if d == 0.0 {
                0.0
            } else {
                f64::INFINITY
            });
        }
    }
    Ok(Agreement {
        op: case.op.clone(),
        shapes: case.shapes.clone(),
        rel_err: max_err / scale.max(1e-300),
        worst_ratio: worst,
        pass: finite && worst <= 1.0,
    })
}

/// Render agreements as a plain-text or Markdown table.
pub fn render(rows: &[Agreement], markdown: bool) -> String {
    let mut s = String::new();
    if markdown {
        s +=
            "| op | shapes | GPU vs CPU (rel. err, ratio to bound) | result |\n|---|---|---|---|\n";
    } else {
        s += &format!(
            "{:<44} {:<30} {:<24} result\n",
            "op", "shapes", "GPU f32 vs CPU f64"
        );
    }
    for r in rows {
        let cell = format!("{:.1e} ({:.2})", r.rel_err, r.worst_ratio);
        let res = if r.pass { "pass" } else { "FAIL" };
        let shapes: String = r.shapes.chars().take(30).collect();
        if markdown {
            s += &format!("| {} | {} | {cell} | {res} |\n", r.op, r.shapes);
        } else {
            s += &format!("{:<44} {:<30} {:<24} {res}\n", r.op, shapes, cell);
        }
    }
    let failed = rows.iter().filter(|r| !r.pass).count();
    s += &format!(
        "\n{} GPU-vs-CPU checks, {}.\n",
        rows.len(),
        if failed == 0 {
            "all passed".to_string()
        } else {
            format!("{failed} FAILED")
        }
    );
    s
}
