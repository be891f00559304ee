//! The GPU executor's kernel choices against the CPU reference (f64): fused elementwise
//! kernels (src/exec/gpu/fusion/) against the single-op kernels, and the two weight-gradient
//! kernels (one invocation per weight element, one workgroup per weight element;
//! shaders/conv.wgsl).
//!
//! Inputs are f32 values fed unchanged to both sides (no input rounding), constants are
//! exactly representable in f32, so every difference comes from arithmetic. Tolerances:
//! * Random elementwise DAGs: a running error bound (Higham, *Accuracy and Stability of
//!   Numerical Algorithms*, 2nd ed., sec. 3.3) carried through the DAG in f64 beside the
//!   values. With e(x) >= |x_gpu - x| for each operand and u = 2^-24 + 2^-53 (both sides
//!   round, each at most its unit roundoff per operation):
//!   - a ± b:  e = (e_a + e_b)(1 + u) + u |a ± b|
//!   - a * b:  e = (|a| e_b + |b| e_a + e_a e_b)(1 + u) + u |a b|   (square: b = a)
//!   - -a, relu(a), broadcast(a): e = e_a;  max(a, b): e = max(e_a, e_b) (1-Lipschitz)
//!   - select(c, a, b) with c an exact input: e = e_a or e_b as c picks;
//!   - a sum of K values: e = sum e_k + gamma_K(u)(sum |x_k| + sum e_k); a max: max e_k.
//!
//!   A driver that contracts a * b + c into one fused multiply-add rounds once where the bound
//!   allows two roundings, so the bound holds fused or not. Ops whose result jumps (step,
//!   greater, equal) would turn a rounding difference into an O(1) one, so conditions are
//!   exact inputs and those ops are left to the per-op tests of tests/gpu_vs_cpu.rs (which run
//!   through the same `unary_op`/`binary_op` functions). Cases whose values leave
//!   [1e-30, 1e30] in magnitude (overflow, or a subnormal flush) are skipped.
//! * Weight gradients: a sum of K = n oh ow products, (gamma_K(2^-24) + gamma_K(2^-53)) times
//!   the sum of |products| (Higham, ch. 3; any summation order, so either kernel).

mod common;

use darts::exec::cpu::CpuExecutor;
use darts::exec::gpu::{fusion, GpuExecutor};
use darts::exec::{Executor, Feeds};
use darts::graph::{BinaryOp, ConvParams, Graph, NodeId, Op, UnaryOp};
use ndarray::{ArrayD, IxDyn, Zip};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

/// Unit roundoff of f32 plus that of f64: both sides round.
const U: f64 = 5.960464477539063e-8 + 1.1102230246251565e-16;
const U32: f64 = 5.960464477539063e-8;
const U64: f64 = 1.1102230246251565e-16;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Named f32 inputs, fed as they are to the GPU and widened exactly to f64 for the CPU.
type Inputs = Vec<(String, ArrayD<f32>)>;

fn feeds_f32(inputs: &Inputs) -> Feeds<f32> {
    let mut f = Feeds::new();
    for (k, v) in inputs {
        f.insert(k.clone(), v.clone());
    }
    f
}

/// The inputs in f64 (exact), or their absolute values.
fn feeds_f64(inputs: &Inputs, abs: bool) -> Feeds<f64> {
    let mut f = Feeds::new();
    for (k, v) in inputs {
        let v = v.mapv(f64::from);
        f.insert(k.clone(), if abs { v.mapv(f64::abs) } else { v });
    }
    f
}

/// Runs `outs` of `g` on the f32 GPU and, where there is one, the f64 GPU, fused and unfused,
/// and requires every element to equal `want` (the CPU f64 run) exactly: the cases that use it
/// take small integers, so every operation is exact in both precisions. Leaves fusion on.
fn assert_exact_on_gpus(
    gpu: &mut GpuExecutor,
    gpu64: &mut Option<GpuExecutor<f64>>,
    g: &Graph,
    inputs: &Inputs,
    outs: &[NodeId],
    want: &[ArrayD<f64>],
    what: &str,
) {
    for fusion in [true, false] {
        gpu.set_fusion(fusion);
        let got = gpu.run(g, &feeds_f32(inputs), outs).unwrap();
        for (k, (a, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.shape(), w.shape(), "{what}, output {k}");
            for (idx, (x, w)) in a.iter().zip(w.iter()).enumerate() {
                assert_eq!(
                    f64::from(*x),
                    *w,
                    "{what}, fusion {fusion}, output {k} element {idx}"
                );
            }
        }
        if let Some(gpu64) = gpu64.as_mut() {
            gpu64.set_fusion(fusion);
            let got = gpu64.run(g, &feeds_f64(inputs, false), outs).unwrap();
            for (k, (a, w)) in got.iter().zip(want).enumerate() {
                for (idx, (x, w)) in a.iter().zip(w.iter()).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        w.to_bits(),
                        "f64 {what}, fusion {fusion}, output {k} element {idx}"
                    );
                }
            }
        }
    }
    gpu.set_fusion(true);
    if let Some(gpu64) = gpu64.as_mut() {
        gpu64.set_fusion(true);
    }
}

/// (value, bound) of a binary op from its operands' (value, bound) pairs.
type BinaryRule = fn(f64, f64, f64, f64) -> (f64, f64);
/// (value, bound) of a unary op from its operand's (value, bound).
type UnaryRule = fn(f64, f64) -> (f64, f64);

/// A node of the random DAG as the test evaluates it: value and error bound per element.
struct Val {
    v: ArrayD<f64>,
    e: ArrayD<f64>,
}

fn zip2(a: &Val, b: &Val, shape: &[usize], f: impl Fn(f64, f64, f64, f64) -> (f64, f64)) -> Val {
    let sh = IxDyn(shape);
    let (av, ae) = (
        a.v.broadcast(sh.clone()).unwrap(),
        a.e.broadcast(sh.clone()).unwrap(),
    );
    let (bv, be) = (
        b.v.broadcast(sh.clone()).unwrap(),
        b.e.broadcast(sh.clone()).unwrap(),
    );
    let mut v = ArrayD::zeros(sh.clone());
    let mut e = ArrayD::zeros(sh);
    Zip::from(&mut v)
        .and(&mut e)
        .and(&av)
        .and(&ae)
        .and(&bv)
        .and(&be)
        .for_each(|v, e, &x, &ex, &y, &ey| (*v, *e) = f(x, ex, y, ey));
    Val { v, e }
}

fn map1(a: &Val, f: impl Fn(f64, f64) -> (f64, f64)) -> Val {
    let mut v = a.v.clone();
    let mut e = a.e.clone();
    Zip::from(&mut v)
        .and(&mut e)
        .for_each(|v, e| (*v, *e) = f(*v, *e));
    Val { v, e }
}

/// ReduceSum or ReduceMax of `a` over `axes` (kept as 1) with its bound: for a sum of K
/// values each known within e_k, |fl(sum x^_k) - sum x_k| <= sum e_k + gamma_K(u) sum |x^_k|
/// <= sum e_k + gamma_K(u) (sum |x_k| + sum e_k) in any summation order (Higham, Lemma 3.1,
/// sec. 4.2); a max is 1-Lipschitz in the largest error: e = max e_k.
fn reduce_val(a: &Val, axes: &[usize], max: bool) -> Val {
    let k: usize = axes.iter().map(|&d| a.v.shape()[d]).product();
    let gamma = k as f64 * U / (1.0 - k as f64 * U);
    let mut v = a.v.clone();
    let mut e = a.e.clone();
    let mut abs = a.v.mapv(f64::abs);
    for &d in axes.iter().rev() {
        let ax = ndarray::Axis(d);
        if max {
            v = v.map_axis(ax, |l| l.fold(f64::NEG_INFINITY, |m, &x| m.max(x)));
            e = e.map_axis(ax, |l| l.fold(0.0f64, |m, &x| m.max(x)));
        } else {
            v = v.sum_axis(ax);
            e = e.sum_axis(ax);
            abs = abs.sum_axis(ax);
        }
        v.insert_axis_inplace(ax);
        e.insert_axis_inplace(ax);
        abs.insert_axis_inplace(ax);
    }
    if !max {
        e = &e + &((&abs + &e) * gamma);
    }
    Val { v, e }
}

/// Draws a random elementwise DAG over three inputs broadcastable to one shape, and
/// evaluates it with its error bound. Returns the graph, feeds, outputs and their bounds.
fn random_dag(seed: u64) -> (Graph, Inputs, Vec<NodeId>, Vec<Val>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rank = rng.random_range(1..=4usize);
    let full: Vec<usize> = (0..rank).map(|_| rng.random_range(1..=5usize)).collect();
    let mut g = Graph::new();
    let mut feeds = Inputs::new();
    let mut nodes: Vec<(NodeId, Val)> = Vec::new();
    let draw = |rng: &mut ChaCha8Rng, shape: &[usize]| -> ArrayD<f32> {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || {
            // Values in +-[0.25, 2): no subnormals, no overflow over a few dozen ops.
            let m: f32 = rng.random_range(0.25..2.0);
            if rng.random_bool(0.5) {
                -m
            } else {
                m
            }
        })
    };
    for k in 0..3 {
        // Drop some leading axes, set others to extent 1.
        let drop = rng.random_range(0..rank);
        let shape: Vec<usize> = full[drop..]
            .iter()
            .map(|&d| if rng.random_bool(0.3) { 1 } else { d })
            .collect();
        let name = format!("x{k}");
        let x = g.input(name.clone(), shape.clone()).unwrap();
        let value = draw(&mut rng, &shape);
        let v = value.mapv(f64::from);
        feeds.push((name, value));
        let e = ArrayD::zeros(v.raw_dim());
        nodes.push((x, Val { v, e }));
    }
    // An exact condition of the full shape for select.
    let cond = g.input("cond", full.clone()).unwrap();
    let cv = ArrayD::from_shape_simple_fn(IxDyn(&full), || {
        if rng.random_bool(0.5) {
            1.0f32
        } else {
            0.0
        }
    });
    let cond_val = cv.mapv(f64::from);
    feeds.push(("cond".into(), cv));
    let ops = rng.random_range(3..=30usize);
    for _ in 0..ops {
        let pick = |rng: &mut ChaCha8Rng, n: usize| {
            // Favour recent nodes: long chains, some shared values.
            let lo = n.saturating_sub(4);
            if rng.random_bool(0.75) {
                rng.random_range(lo..n)
            } else {
                rng.random_range(0..n)
            }
        };
        let a = pick(&mut rng, nodes.len());
        let b = pick(&mut rng, nodes.len());
        let (ia, ib) = (nodes[a].0, nodes[b].0);
        let kind = rng.random_range(0..12);
        let (id, val) = match kind {
            0..=3 => {
                let (op, f): (BinaryOp, BinaryRule) = match kind {
                    0 => (BinaryOp::Add, |x, ex, y, ey| {
                        (x + y, (ex + ey) * (1.0 + U) + U * (x + y).abs())
                    }),
                    1 => (BinaryOp::Sub, |x, ex, y, ey| {
                        (x - y, (ex + ey) * (1.0 + U) + U * (x - y).abs())
                    }),
                    2 => (BinaryOp::Mul, |x, ex, y, ey| {
                        (
                            x * y,
                            (x.abs() * ey + y.abs() * ex + ex * ey) * (1.0 + U) + U * (x * y).abs(),
                        )
                    }),
                    _ => (BinaryOp::Max, |x, ex, y, ey| (x.max(y), ex.max(ey))),
                };
                let id = g.binary(op, ia, ib).unwrap();
                let val = zip2(&nodes[a].1, &nodes[b].1, g.shape(id).dims(), f);
                (id, val)
            }
            4..=6 => {
                let (op, f): (UnaryOp, UnaryRule) = match kind {
                    4 => (UnaryOp::Neg, |x, e| (-x, e)),
                    5 => (UnaryOp::Relu, |x, e| (x.max(0.0), e)),
                    _ => (UnaryOp::Square, |x, e| {
                        (x * x, (2.0 * x.abs() * e + e * e) * (1.0 + U) + U * x * x)
                    }),
                };
                let id = g.unary(op, ia).unwrap();
                (id, map1(&nodes[a].1, f))
            }
            7 => {
                let id = g.broadcast_to(ia, full.clone()).unwrap();
                let sh = IxDyn(&full);
                let val = Val {
                    v: nodes[a].1.v.broadcast(sh.clone()).unwrap().to_owned(),
                    e: nodes[a].1.e.broadcast(sh).unwrap().to_owned(),
                };
                (id, val)
            }
            8 => {
                // select(cond, a, b) over the full shape (inputs broadcast first).
                let fa = g.broadcast_to(ia, full.clone()).unwrap();
                let fb = g.broadcast_to(ib, full.clone()).unwrap();
                let id = g.select(cond, fa, fb).unwrap();
                let sh = IxDyn(&full);
                let pa = (
                    nodes[a].1.v.broadcast(sh.clone()).unwrap(),
                    nodes[a].1.e.broadcast(sh.clone()).unwrap(),
                );
                let pb = (
                    nodes[b].1.v.broadcast(sh.clone()).unwrap(),
                    nodes[b].1.e.broadcast(sh.clone()).unwrap(),
                );
                let mut v = ArrayD::zeros(sh.clone());
                let mut e = ArrayD::zeros(sh);
                Zip::from(&mut v)
                    .and(&mut e)
                    .and(&cond_val)
                    .and(&pa.0)
                    .and(&pa.1)
                    .and(&pb.0)
                    .for_each(|v, e, &c, &x, &ex, &y| {
                        (*v, *e) = if c != 0.0 { (x, ex) } else { (y, 0.0) };
                    });
                Zip::from(&mut e)
                    .and(&cond_val)
                    .and(&pb.1)
                    .for_each(|e, &c, &ey| {
                        if c == 0.0 {
                            *e = ey;
                        }
                    });
                (id, Val { v, e })
            }
            10 | 11 => {
                // A reduction over a random subset of the axes (kept as 1, so later ops
                // broadcast it back).
                let rank = g.shape(ia).rank();
                let axes: Vec<usize> = (0..rank).filter(|_| rng.random_bool(0.5)).collect();
                let max = kind == 11;
                let id = if max {
                    g.reduce_max(ia, &axes).unwrap()
                } else {
                    g.reduce_sum(ia, &axes).unwrap()
                };
                (id, reduce_val(&nodes[a].1, &axes, max))
            }
            _ => {
                // A constant exactly representable in f32, then a product with it.
                let c = [0.5, -1.25, 3.0, 0.0, 1.0][rng.random_range(0..5)];
                let shape = g.shape(ia).dims().to_vec();
                let k = g.constant(c, shape.clone()).unwrap();
                let id = g.mul(ia, k).unwrap();
                let val = map1(&nodes[a].1, |x, e| {
                    (x * c, e * c.abs() * (1.0 + U) + U * (x * c).abs())
                });
                (id, val)
            }
        };
        nodes.push((id, val));
    }
    // Outputs: the last node and, sometimes, an intermediate (kept from being absorbed).
    let mut outputs = vec![nodes.len() - 1];
    if rng.random_bool(0.5) && nodes.len() > 5 {
        outputs.push(rng.random_range(4..nodes.len() - 1));
    }
    let ids = outputs.iter().map(|&k| nodes[k].0).collect();
    let vals = outputs
        .into_iter()
        .map(|k| {
            let (_, v) = &nodes[k];
            Val {
                v: v.v.clone(),
                e: v.e.clone(),
            }
        })
        .collect();
    (g, feeds, ids, vals)
}

/// Random DAGs of adds, subs, products, squares, negations, relus, maxes, broadcasts,
/// selects, constants and sum/max reductions (fused with their inputs when the plan can): fused
/// and unfused GPU runs both within the running error bound of
/// the CPU f64 run. Also reports how often fused and unfused agree bit for bit and how many
/// dispatches fusion saved (asserted to be some: the plan must actually fuse).
#[test]
fn gpu_fused_elementwise_dags_match_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_fused_elementwise_dags_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let stats = RefCell::new((0usize, 0usize, 0usize, 0usize)); // cases, saved, equal, total
    let fused_reductions = RefCell::new(0usize);
    runner(64)
        .run(&any::<u64>(), |seed| {
            let (g, inputs, outs, bounds) = random_dag(seed);
            if bounds.iter().any(|b| {
                b.v.iter()
                    .any(|v| v.abs() > 1e30 || (*v != 0.0 && v.abs() < 1e-30))
            }) {
                return Ok(());
            }
            let feeds = feeds_f32(&inputs);
            // How many reductions the executor's plan fuses with their input.
            let (needed, _) = darts::exec::liveness(&g, &outs).unwrap();
            let p = fusion::plan(&g, &needed, &outs, |v| v, fusion::MAX_LEAVES, true);
            *fused_reductions.borrow_mut() +=
                p.fused.values().filter(|f| f.reduce.is_some()).count();
            let want = CpuExecutor::<f64>::new()
                .run(&g, &feeds_f64(&inputs, false), &outs)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut gpu = gpu.borrow_mut();
            // Even seeds split every reduction of at most 128 outputs into two dispatches.
            gpu.set_split_min(if seed % 2 == 0 { 1 } else { u32::MAX });
            let mut runs = Vec::new();
            for fusion in [true, false] {
                gpu.set_fusion(fusion);
                let got = gpu
                    .run(&g, &feeds, &outs)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if fusion {
                    stats.borrow_mut().1 += gpu.run_timing().fused_away;
                }
                for (k, b) in bounds.iter().enumerate() {
                    for (idx, ((&x, &w), &e)) in got[k]
                        .iter()
                        .zip(want[k].iter())
                        .zip(b.e.iter())
                        .enumerate()
                    {
                        // The bound's own f64 evaluation differs from the CPU executor's
                        // by at most a few ulps of the value: 8 U64 |w| covers it.
                        let tol = e + 8.0 * U64 * w.abs();
                        prop_assert!(
                            (f64::from(x) - w).abs() <= tol,
                            "fusion {fusion}, output {k} element {idx}: gpu {x:e} cpu {w:e} \
                             bound {tol:e} (seed {seed})"
                        );
                    }
                }
                runs.push(got);
            }
            let mut s = stats.borrow_mut();
            s.0 += 1;
            for (a, b) in runs[0].iter().zip(&runs[1]) {
                s.3 += a.len();
                s.2 += a
                    .iter()
                    .zip(b.iter())
                    .filter(|(x, y)| x.to_bits() == y.to_bits())
                    .count();
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    gpu.borrow_mut().set_fusion(true);
    let (cases, saved, equal, total) = *stats.borrow();
    let fused_reductions = *fused_reductions.borrow();
    println!(
        "{cases} DAGs: fusion saved {saved} dispatches, {fused_reductions} reductions fused with \
         their input; fused and unfused equal bit for bit on {equal} of {total} elements ({} \
         fused kernels compiled)",
        gpu.borrow().fused_kernels()
    );
    assert!(fused_reductions > 0, "no reduction was fused");
    assert!(cases >= 32, "only {cases} cases ran");
    assert!(
        saved > cases,
        "fusion saved only {saved} dispatches over {cases} DAGs"
    );
}

/// The weight gradient of random convolutions with long sums (n oh ow up to 2048 terms, past
/// several workgroup strides of 256), by the serial kernel, the workgroup kernel and the split
/// kernels (chunks of the terms, then a finishing dispatch), each within gamma_K (f32 + f64)
/// times the sum of |products|; the workgroup and split kernels repeat exactly, and the split
/// ran (two dispatches) in some cases.
#[test]
fn gpu_weight_grad_kernels_match_cpu() {
    let Some(gpu) = common::gpu_executor("gpu_weight_grad_kernels_match_cpu") else {
        return;
    };
    let gpu = RefCell::new(gpu);
    let splits = RefCell::new(0usize);
    let case = (
        1usize..=8,
        prop::sample::select(vec![1usize, 2, 4]),
        prop::sample::select(vec![1usize, 3, 5]),
        (1usize..=2, 0usize..=2, 1usize..=2, any::<bool>()),
        (4usize..=16, 4usize..=16),
        any::<u64>(),
    );
    runner(24)
        .run(
            &case,
            |(n, c, k, (stride, pad, dil, depthwise), (h, w), seed)| {
                let groups = if depthwise { c } else { 1 };
                let o = if depthwise { c } else { 2 };
                let p = ConvParams::new(stride, pad, dil, groups);
                let (Some(oh), Some(ow)) = (p.out_len(0, h, k), p.out_len(1, w, k)) else {
                    return Ok(());
                };
                let (xs, ys) = (vec![n, c, h, w], vec![n, o, oh, ow]);
                let mut g = Graph::new();
                let x = g.input("x", xs.clone()).unwrap();
                let gy = g.input("gy", ys.clone()).unwrap();
                let gw = g
                    .add(Op::Conv2dWeightGrad { p, kernel: [k, k] }, &[x, gy])
                    .unwrap();
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut inputs = Inputs::new();
                for (name, s) in [("x", &xs), ("gy", &ys)] {
                    let v =
                        ArrayD::from_shape_simple_fn(IxDyn(s), || rng.random_range(-1.0f32..1.0));
                    inputs.push((name.into(), v));
                }
                let feeds = feeds_f32(&inputs);
                let mut cpu = CpuExecutor::<f64>::new();
                let want = cpu
                    .run(&g, &feeds_f64(&inputs, false), &[gw])
                    .unwrap()
                    .remove(0);
                let abs = cpu
                    .run(&g, &feeds_f64(&inputs, true), &[gw])
                    .unwrap()
                    .remove(0);
                let terms = n * oh * ow;
                let gamma = |u: f64| terms as f64 * u / (1.0 - terms as f64 * u);
                let mut gpu = gpu.borrow_mut();
                let mut workgroup_runs = Vec::new();
                let mut split_runs = Vec::new();
                let mut split_dispatches = 0;
                for (kernel, min, split) in [
                    ("serial", u32::MAX, u32::MAX),
                    ("workgroup", 1, u32::MAX),
                    ("workgroup", 1, u32::MAX),
                    ("split", 1, 1),
                    ("split", 1, 1),
                ] {
                    gpu.set_workgroup_min(min);
                    gpu.set_split_min(split);
                    let got = gpu
                        .run(&g, &feeds, &[gw])
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .remove(0);
                    for ((&x, &w), &a) in got.iter().zip(want.iter()).zip(abs.iter()) {
                        let tol = (gamma(U32) + gamma(U64)) * a;
                        prop_assert!(
                            (f64::from(x) - w).abs() <= tol,
                            "{kernel} kernel, x {xs:?} gy {ys:?} stride {stride} pad {pad} dil \
                         {dil} groups {groups}: gpu {x:e} cpu {w:e} tolerance {tol:e} \
                         (K = {terms})"
                        );
                    }
                    // A split gradient of more than one chunk is two dispatches.
                    let dispatches = gpu.run_timing().dispatches;
                    match kernel {
                        "workgroup" => workgroup_runs.push(got),
                        "split" => {
                            split_runs.push(got);
                            split_dispatches = dispatches;
                        }
                        _ => {}
                    }
                }
                for (runs, kernel) in [(&workgroup_runs, "workgroup"), (&split_runs, "split")] {
                    let (a, b) = (&runs[0], &runs[1]);
                    prop_assert!(
                        a.iter()
                            .zip(b.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "the {kernel} kernel did not repeat exactly"
                    );
                }
                *splits.borrow_mut() += usize::from(split_dispatches == 2);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    gpu.borrow_mut()
        .set_workgroup_min(darts::exec::gpu::kernels::REDUCE_WORKGROUP_MIN);
    let splits = *splits.borrow();
    println!("{splits} of the cases ran the split weight gradient");
    assert!(splits >= 4, "only {splits} cases ran split");
}

/// Fusion is on by default: relu(x * y) + 2 is one dispatch (the constant a literal), four
/// with fusion off, and both give relu(3) + 2 = 5.
#[test]
fn gpu_fusion_is_on_by_default() {
    let Some(mut gpu) = common::gpu_executor("gpu_fusion_is_on_by_default") else {
        return;
    };
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 4]).unwrap();
    let y = g.input("y", [4]).unwrap();
    let s = g.mul(x, y).unwrap();
    let t = g.unary(UnaryOp::Relu, s).unwrap();
    let c = g.constant(2.0, [2, 3, 4]).unwrap();
    let out = g.add2(t, c).unwrap();
    let mut feeds = Feeds::<f32>::new();
    feeds.insert("x", ArrayD::from_elem(IxDyn(&[2, 3, 4]), -1.5f32));
    feeds.insert("y", ArrayD::from_elem(IxDyn(&[4]), -2.0f32));
    let got = gpu.run(&g, &feeds, &[out]).unwrap().remove(0);
    assert!(got.iter().all(|&v| v == 5.0), "relu(3) + 2 = 5: {got:?}");
    let t = gpu.run_timing();
    assert_eq!(t.dispatches, 1, "one fused kernel: {t}");
    assert_eq!(t.fused_away, 3, "mul, relu and the constant: {t}");
    gpu.set_fusion(false);
    let unfused = gpu.run(&g, &feeds, &[out]).unwrap().remove(0);
    assert_eq!(unfused, got);
    assert_eq!(gpu.run_timing().dispatches, 4);
}

/// A sum of 11 inputs, 8 of them broadcast: more buffers than WebGPU's guaranteed 7 reads and
/// 8 broadcast leaves (each a view slot in the kernel's parameter words), so the plan fills a
/// kernel to the adapter's limits and splits the rest. Small integers make every sum exact: the GPU must equal the
/// CPU bit for bit, and it takes far fewer dispatches than the 10 additions.
#[test]
fn gpu_wide_kernels_bind_many_leaves() {
    let Some(mut gpu) = common::gpu_executor("gpu_wide_kernels_bind_many_leaves") else {
        return;
    };
    let shapes: [&[usize]; 11] = [
        &[2, 3, 4],
        &[4],
        &[3, 1],
        &[2, 3, 4],
        &[1, 4],
        &[2, 1, 1],
        &[3, 4],
        &[2, 3, 4],
        &[1, 1, 4],
        &[2, 1, 4],
        &[1],
    ];
    let mut g = Graph::new();
    let mut inputs = Inputs::new();
    let mut acc = None;
    for (k, s) in shapes.iter().enumerate() {
        let name = format!("x{k}");
        let x = g.input(name.clone(), s.to_vec()).unwrap();
        let n: usize = s.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + k * 3) % 11) as f32 - 5.0)
            .collect();
        inputs.push((name, ArrayD::from_shape_vec(IxDyn(s), v).unwrap()));
        acc = Some(match acc {
            None => x,
            Some(a) => g.add2(a, x).unwrap(),
        });
    }
    let y = acc.unwrap();
    let want = CpuExecutor::<f64>::new()
        .run(&g, &feeds_f64(&inputs, false), &[y])
        .unwrap()
        .remove(0);
    let got = gpu.run(&g, &feeds_f32(&inputs), &[y]).unwrap().remove(0);
    for (a, b) in got.iter().zip(want.iter()) {
        assert_eq!(f64::from(*a), *b);
    }
    let t = gpu.run_timing();
    println!("11-input sum: {t}");
    assert!(t.dispatches <= 3, "{t}");
}

/// The executor plans a graph once and reuses the plan while the same graph runs again
/// (`Graph::version`): a node appended to the graph, a clone grown differently, other outputs
/// and fusion turned off each get a fresh plan, so every run returns its own graph's values.
#[test]
fn gpu_plan_cache_follows_graph_changes() {
    let Some(mut gpu) = common::gpu_executor("gpu_plan_cache_follows_graph_changes") else {
        return;
    };
    let mut g = Graph::new();
    let x = g.input("x", [4]).unwrap();
    let y = g.unary(UnaryOp::Square, x).unwrap();
    let mut feeds = Feeds::<f32>::new();
    feeds.insert(
        "x",
        ArrayD::from_shape_vec(IxDyn(&[4]), vec![1.0, -2.0, 3.0, 0.5]).unwrap(),
    );
    let run = |gpu: &mut darts::exec::gpu::GpuExecutor, g: &Graph, out: NodeId| -> Vec<f32> {
        gpu.run(g, &feeds, &[out])
            .unwrap()
            .remove(0)
            .iter()
            .copied()
            .collect()
    };
    assert_eq!(run(&mut gpu, &g, y), vec![1.0, 4.0, 9.0, 0.25]);
    assert_eq!(
        run(&mut gpu, &g, y),
        vec![1.0, 4.0, 9.0, 0.25],
        "the cached plan"
    );
    let (id, len) = g.version();
    let mut h = g.clone();
    assert_ne!(h.version().0, id, "a clone has its own identity");
    let z = g.unary(UnaryOp::Neg, y).unwrap();
    assert_eq!(g.version(), (id, len + 1));
    assert_eq!(
        run(&mut gpu, &g, y),
        vec![1.0, 4.0, 9.0, 0.25],
        "the grown graph"
    );
    assert_eq!(
        run(&mut gpu, &g, z),
        vec![-1.0, -4.0, -9.0, -0.25],
        "other outputs"
    );
    let w = h.unary(UnaryOp::Relu, x).unwrap(); // same length as g's z, other node
    assert_eq!(w, z);
    assert_eq!(run(&mut gpu, &h, w), vec![1.0, 0.0, 3.0, 0.5]);
    gpu.set_fusion(false);
    assert_eq!(run(&mut gpu, &h, w), vec![1.0, 0.0, 3.0, 0.5]);
    assert_eq!(gpu.run_timing().fused_away, 0, "fusion off: a fresh plan");
}

/// A run split into many submits (every 3 or 7 dispatches: pooled buffers reused across
/// submits), encoded on 1 to 4 threads (chunks finished out of order, submitted in order),
/// gives, bit for bit, what one thread and one submit per 2048 dispatches give, on the search
/// network's loss and gradients (a few thousand dispatches); the runs after the first replay
/// its tape and allocate no device buffer.
#[test]
fn gpu_chunked_submits_change_nothing() {
    use darts::check::oracle::architect::NetGraph;
    use darts::darts::network::SearchConfig;
    let Some(mut gpu) = common::gpu_executor("gpu_chunked_submits_change_nothing") else {
        return;
    };
    let cfg = SearchConfig {
        c: 2,
        layers: 3,
        ..SearchConfig::paper()
    };
    let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).unwrap();
    let st = common::state(&cfg, 5);
    let point = common::point(&cfg, &st);
    let batch = common::batch(2, 8, cfg.num_classes, 6);
    let mut feeds = Feeds::<f32>::new();
    for (n, a) in &point.weights {
        feeds.insert(n.clone(), a.mapv(|v| v as f32));
    }
    feeds.insert("alpha/normal", point.alpha[0].mapv(|v| v as f32));
    feeds.insert("alpha/reduce", point.alpha[1].mapv(|v| v as f32));
    feeds.insert("x", batch.x.mapv(|v| v as f32));
    feeds.insert("onehot", batch.onehot.mapv(|v| v as f32));
    let mut outs = vec![net.loss, net.grad_alpha[0], net.grad_alpha[1]];
    outs.extend(&net.grad_w);
    let mut runs = Vec::new();
    let ways = [(darts::exec::gpu::SUBMIT_EVERY, 1), (3, 1), (3, 4), (7, 2)];
    for (every, threads) in ways {
        gpu.set_submit_every(every);
        gpu.set_encode_threads(threads);
        runs.push(gpu.run(&net.graph, &feeds, &outs).unwrap());
        let t = gpu.run_timing();
        println!("submit every {every}, {threads} encoding threads: {t}");
        if runs.len() > 1 {
            assert!(t.replayed && t.fresh_buffers == 0, "{t}");
        }
    }
    assert!(gpu.run_timing().dispatches > 100);
    for (w, run) in ways.iter().zip(&runs).skip(1) {
        for (k, (a, b)) in runs[0].iter().zip(run).enumerate() {
            assert!(
                a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "output {k} differs with (submit every, threads) = {w:?}"
            );
        }
    }
}

/// One random term of shape `t`: an input (or its negation, a buffer a view reads) carried to
/// `t` by one to three random slices (start, end, step), pads (before, after; some with
/// interior zeros, never read through), reshapes and broadcasts. Built backwards from `t`.
fn random_view_term(
    rng: &mut ChaCha8Rng,
    g: &mut Graph,
    inputs: &mut Inputs,
    t: &[usize],
) -> NodeId {
    let mut shape = t.to_vec();
    let mut ops: Vec<Op> = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let rank = shape.len();
        let a = if rank > 0 {
            rng.random_range(0..rank)
        } else {
            0
        };
        match rng.random_range(0..6) {
            0 | 1 if rank > 0 => {
                let n = shape[a];
                let (start, step) = (rng.random_range(0..=2), rng.random_range(1..=3));
                let end = start + (n - 1) * step + 1 + rng.random_range(0..step);
                ops.push(Op::Slice {
                    axis: a,
                    start,
                    end,
                    step,
                });
                shape[a] = end + rng.random_range(0..=2);
            }
            2 if rank > 0 && shape[a] > 1 => {
                let before = rng.random_range(0..shape[a]);
                let after = rng.random_range(0..shape[a] - before);
                ops.push(Op::Pad {
                    axis: a,
                    before,
                    after,
                    interior: 0,
                });
                shape[a] -= before + after;
            }
            3 if rank > 0 && shape[a] >= 3 && shape[a] % 2 == 1 => {
                // m elements with one zero between neighbours: 2 m - 1 = extent.
                ops.push(Op::Pad {
                    axis: a,
                    before: 0,
                    after: 0,
                    interior: 1,
                });
                shape[a] = shape[a].div_ceil(2);
            }
            4 => {
                let from = if rng.random_bool(0.5) {
                    vec![shape.iter().product()]
                } else {
                    let mut s = shape.clone();
                    s.insert(rng.random_range(0..=rank), 1);
                    s
                };
                ops.push(Op::Reshape {
                    shape: shape.clone().into(),
                });
                shape = from;
            }
            _ => {
                let mut from: Vec<usize> = shape
                    .iter()
                    .map(|&n| if rng.random_bool(0.4) { 1 } else { n })
                    .collect();
                if !from.is_empty() && rng.random_bool(0.3) {
                    from.remove(0);
                }
                ops.push(Op::Broadcast {
                    shape: shape.clone().into(),
                });
                shape = from;
            }
        }
    }
    let name = format!("x{}", inputs.len());
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3..=3) as f32).collect();
    inputs.push((
        name.clone(),
        ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap(),
    ));
    let mut x = g.input(name, shape).unwrap();
    if rng.random_bool(0.3) {
        x = g.unary(UnaryOp::Neg, x).unwrap();
    }
    for op in ops.into_iter().rev() {
        x = match op {
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => g.slice(x, axis, start, end, step),
            Op::Pad {
                axis,
                before,
                after,
                interior,
            } => g.pad(x, axis, before, after, interior),
            Op::Reshape { shape } => g.reshape(x, shape),
            Op::Broadcast { shape } => g.broadcast_to(x, shape),
            _ => unreachable!(),
        }
        .unwrap();
    }
    assert_eq!(g.shape(x).dims(), t);
    x
}

/// Reads through views (proofs/gpu-kernel-choices.md, claim 8): random sums of terms that are
/// inputs carried by random slices, pads, reshapes and broadcasts to one shape, times another
/// such term, and a sum over axis 0 of a third. Small integers make every value exact, so the
/// fused and unfused GPU runs (f32, and f64 where the adapter has it) must equal the CPU f64
/// run bit for bit. Asserts that the plans did read through slices and pads (bounded views).
#[test]
fn gpu_views_match_cpu_exactly() {
    let Some(mut gpu) = common::gpu_executor("gpu_views_match_cpu_exactly") else {
        return;
    };
    let mut gpu64 = common::gpu_f64_executor("gpu_views_match_cpu_exactly");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut through, mut bounded, mut dispatched) = (0usize, 0usize, 0usize);
    for case in 0..48 {
        let rank = rng.random_range(1..=4);
        let t: Vec<usize> = (0..rank).map(|_| rng.random_range(1..=5)).collect();
        let mut g = Graph::new();
        let mut inputs = Inputs::new();
        let mut sum = random_view_term(&mut rng, &mut g, &mut inputs, &t);
        for _ in 0..rng.random_range(1..=5) {
            let x = random_view_term(&mut rng, &mut g, &mut inputs, &t);
            sum = g.add2(sum, x).unwrap();
        }
        let w = random_view_term(&mut rng, &mut g, &mut inputs, &t);
        let y = g.mul(sum, w).unwrap();
        let r = random_view_term(&mut rng, &mut g, &mut inputs, &t);
        let red = g.reduce_sum(r, &[0]).unwrap();
        let outs = [y, red];
        let (needed, _) = darts::exec::liveness(&g, &outs).unwrap();
        let p = fusion::plan(&g, &needed, &outs, |v| v, fusion::MAX_LEAVES, true);
        for (i, n) in g.nodes().iter().enumerate() {
            if matches!(n.op, Op::Slice { .. } | Op::Pad { .. }) && needed[i] {
                if p.skipped[i] {
                    through += 1;
                } else {
                    dispatched += 1;
                }
            }
        }
        bounded += p.fused.values().map(|f| f.bounded.len()).sum::<usize>();
        let want = CpuExecutor::<f64>::new()
            .run(&g, &feeds_f64(&inputs, false), &outs)
            .unwrap();
        let what = format!("case {case}, t {t:?}");
        assert_exact_on_gpus(&mut gpu, &mut gpu64, &g, &inputs, &outs, &want, &what);
    }
    println!(
        "views: {through} slices and pads read through, {dispatched} dispatched, {bounded} \
         bounded views"
    );
    assert!(through > 48, "{through} read through");
    assert!(bounded > 10, "{bounded} bounded views");
    assert!(
        dispatched > 0,
        "interior pads and non-affine chains stay dispatched"
    );
}

/// Reduction epilogues (proofs/gpu-kernel-choices.md, claim 9): batch-norm-like statistics,
/// `mul(reduce_sum(x), 0.25)` read by a reshape and by `x - mean`, and `sub(reduce_max(x), b)`,
/// `sub(b, reduce_sum(x))` with `b` of the output's shape, over random shapes and axes, in one
/// dispatch and (odd cases) split. Small integers and power-of-two factors make every value
/// exact: fused and unfused GPU runs (f32, and f64 where the adapter has it) equal the CPU f64
/// run bit for bit. Asserts that the plans used epilogues.
#[test]
fn gpu_reduction_epilogues_match_cpu_exactly() {
    let Some(mut gpu) = common::gpu_executor("gpu_reduction_epilogues_match_cpu_exactly") else {
        return;
    };
    let mut gpu64 = common::gpu_f64_executor("gpu_reduction_epilogues_match_cpu_exactly");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut epilogues = 0;
    for case in 0..24 {
        let rank = rng.random_range(1..=3);
        let shape: Vec<usize> = (0..rank).map(|_| rng.random_range(1..=6)).collect();
        let axes: Vec<usize> = (0..rank).filter(|_| rng.random_bool(0.6)).collect();
        let axes = if axes.is_empty() { vec![0] } else { axes };
        let mut g = Graph::new();
        let mut inputs = Inputs::new();
        let mut input = |g: &mut Graph, name: &str, s: &[usize]| {
            let n: usize = s.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-4..=4) as f32).collect();
            inputs.push((name.into(), ArrayD::from_shape_vec(IxDyn(s), v).unwrap()));
            g.input(name, s.to_vec()).unwrap()
        };
        let x = input(&mut g, "x", &shape);
        let sum = g.reduce_sum(x, &axes).unwrap();
        let out_shape = g.shape(sum).dims().to_vec();
        let b = input(&mut g, "b", &out_shape);
        let quarter = g.constant(0.25, out_shape.clone()).unwrap();
        let mean = g.mul(sum, quarter).unwrap();
        let flat = g
            .reshape(mean, vec![out_shape.iter().product::<usize>()])
            .unwrap();
        let centred = g.sub(x, mean).unwrap();
        let mx = g.reduce_max(x, &axes).unwrap();
        let top = g.sub(mx, b).unwrap();
        let sum2 = g.reduce_sum(centred, &axes).unwrap();
        let rest = g.sub(b, sum2).unwrap();
        let outs = [flat, centred, top, rest];
        let (needed, _) = darts::exec::liveness(&g, &outs).unwrap();
        let p = fusion::plan(&g, &needed, &outs, |v| v, fusion::MAX_LEAVES, true);
        epilogues += p
            .fused
            .iter()
            .filter(|(r, f)| f.reduce.is_some_and(|x| x.node.0 != **r))
            .count();
        let want = CpuExecutor::<f64>::new()
            .run(&g, &feeds_f64(&inputs, false), &outs)
            .unwrap();
        // Odd cases split every reduction (a chunk per workgroup, then a second dispatch
        // that sums the chunks and applies the epilogue).
        let split = if case % 2 == 1 { 1 } else { u32::MAX };
        gpu.set_split_min(split);
        if let Some(gpu64) = gpu64.as_mut() {
            gpu64.set_split_min(split);
        }
        let what = format!("case {case}, {shape:?} {axes:?}, split {}", case % 2 == 1);
        assert_exact_on_gpus(&mut gpu, &mut gpu64, &g, &inputs, &outs, &want, &what);
    }
    println!("{epilogues} reductions with an epilogue");
    assert!(epilogues >= 48, "{epilogues} epilogues");
}

/// Fusion rule 6 on the device: relu(x) read only by a convolution and a weight gradient
/// (depthwise and dense, strided, padded) is applied as they load x; with NaN, -0, negative
/// and positive inputs the results equal, bit for bit, the unfused run in which relu(x) is a
/// dispatch of its own (the same kernel, the same order of terms, ReLU computed as
/// elementwise_ops.wgsl computes it), and the fused run makes fewer dispatches.
#[test]
fn gpu_relu_prologue_equals_the_relu_dispatch() {
    let Some(mut gpu) = common::gpu_executor("gpu_relu_prologue_equals_the_relu_dispatch") else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (c, groups, stride, pad, dil) in [(3, 1, 1, 1, 1), (4, 4, 2, 2, 2), (2, 1, 1, 0, 1)] {
        let (n, h, w, k, o) = (2, 7, 6, 3, if groups == 1 { 5 } else { c });
        let p = ConvParams::new(stride, pad, dil, groups);
        let (oh, ow) = (p.out_len(0, h, k).unwrap(), p.out_len(1, w, k).unwrap());
        let mut g = Graph::new();
        let x = g.input("x", [n, c, h, w]).unwrap();
        let wt = g.input("w", [o, c / groups, k, k]).unwrap();
        let gy = g.input("gy", [n, o, oh, ow]).unwrap();
        let r = g.relu(x).unwrap();
        let y = g.conv2d(r, wt, p).unwrap();
        let gw = g
            .add(Op::Conv2dWeightGrad { p, kernel: [k, k] }, &[r, gy])
            .unwrap();
        let mut inputs = Inputs::new();
        for (name, shape) in [
            ("x", vec![n, c, h, w]),
            ("w", vec![o, c / groups, k, k]),
            ("gy", vec![n, o, oh, ow]),
        ] {
            let v = ArrayD::from_shape_simple_fn(IxDyn(&shape), || match rng.random_range(0..8) {
                0 if name == "x" => f32::NAN,
                1 => -0.0,
                _ => rng.random_range(-1.0f32..1.0),
            });
            inputs.push((name.into(), v));
        }
        let feeds = feeds_f32(&inputs);
        let mut runs = Vec::new();
        for fusion in [true, false] {
            gpu.set_fusion(fusion);
            let got = gpu.run(&g, &feeds, &[y, gw]).unwrap();
            runs.push((got, gpu.run_timing().dispatches));
        }
        gpu.set_fusion(true);
        let what = format!("c {c} groups {groups} stride {stride} pad {pad} dil {dil}");
        for (a, b) in runs[0].0.iter().zip(&runs[1].0) {
            assert!(
                a.iter()
                    .zip(b.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "{what}: prologue {a:?} vs relu dispatch {b:?}"
            );
        }
        assert!(
            runs[0].0[0].iter().any(|v| v.is_nan()),
            "{what}: a NaN reached y"
        );
        assert_eq!(
            runs[0].1 + 1,
            runs[1].1,
            "{what}: the ReLU dispatch is gone"
        );
    }
}

/// The settings of one batching case, applied to an executor of either element type.
struct BatchCase {
    fusion: bool,
    workgroup_min: u32,
    split_min: u32,
    most: usize,
}

impl BatchCase {
    fn apply<T: darts::exec::gpu::GpuScalar>(&self, gpu: &mut GpuExecutor<T>, batching: bool) {
        gpu.set_fusion(self.fusion);
        gpu.set_batching(batching);
        gpu.set_max_instances(self.most);
        gpu.set_workgroup_min(self.workgroup_min);
        gpu.set_split_min(self.split_min);
    }

    /// Runs `g` batched and single on `gpu` (and `gpu64`), asserts every output equal bit for
    /// bit, and returns the dispatches (batched, single) of the f32 runs.
    fn check(
        &self,
        gpu: &mut GpuExecutor,
        gpu64: &mut Option<GpuExecutor<f64>>,
        g: &Graph,
        inputs: &Inputs,
        outs: &[NodeId],
    ) -> (usize, usize) {
        let what = format!(
            "fusion {}, workgroup_min {}, split_min {}, {} instances",
            self.fusion, self.workgroup_min, self.split_min, self.most
        );
        let (mut bits, mut bits64, mut dispatches) = (Vec::new(), Vec::new(), Vec::new());
        for batching in [true, false] {
            self.apply(gpu, batching);
            let got = gpu.run(g, &feeds_f32(inputs), outs).unwrap();
            let b: Vec<Vec<u32>> = got
                .iter()
                .map(|a| a.iter().map(|v| v.to_bits()).collect())
                .collect();
            bits.push(b);
            dispatches.push(gpu.run_timing().dispatches);
            if let Some(g64) = gpu64.as_mut() {
                self.apply(g64, batching);
                let got = g64.run(g, &feeds_f64(inputs, false), outs).unwrap();
                let b: Vec<Vec<u64>> = got
                    .iter()
                    .map(|a| a.iter().map(|v| v.to_bits()).collect())
                    .collect();
                bits64.push(b);
            }
        }
        for (k, (a, b)) in bits[0].iter().zip(&bits[1]).enumerate() {
            for (idx, (x, y)) in a.iter().zip(b).enumerate() {
                assert_eq!(
                    x,
                    y,
                    "{what}, output {k} element {idx}: batched {:e}, single {:e}",
                    f32::from_bits(*x),
                    f32::from_bits(*y)
                );
            }
        }
        if let [on, off] = &bits64[..] {
            assert!(on == off, "f64, {what}: batched and single runs differ");
        }
        println!(
            "{what}: {} dispatches batched, {} single",
            dispatches[0], dispatches[1]
        );
        (dispatches[0], dispatches[1])
    }
}

/// Batched dispatches (src/exec/gpu/batch.rs, proofs/gpu-kernel-choices.md claim 12): the
/// 11 branches of `common::parallel_branches` run as batches of 8, 2 and 1 (or 4, 4, 2, 1)
/// instances of each kernel text (fused maps, sums over two axes, maxes, means with an epilogue; unfused, the
/// single-op kernels; the inputs' first extents differ, so the instances' grids differ), and
/// every output equals the run with batching off bit for bit, in f32 and (where the adapter
/// has it) f64, with invocation-per-output and workgroup-per-output sums and with every
/// reduction split in two dispatches.
#[test]
fn gpu_batched_kernels_equal_single_dispatches() {
    let test = "gpu_batched_kernels_equal_single_dispatches";
    let Some(mut gpu) = common::gpu_executor(test) else {
        return;
    };
    let mut gpu64 = common::gpu_f64_executor(test);
    let (g, outs, names) = common::parallel_branches(11);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let inputs: Inputs = names
        .iter()
        .map(|(name, shape)| {
            let v = ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(-2.0f32..2.0));
            (name.clone(), v)
        })
        .collect();
    // (workgroup_min, split_min, fusion, most instances): 16 lets the fused kernels run as
    // batches of 8 + 2 + 1 (the cap of a GPU; a CPU adapter's default is 4, since LLVM takes
    // minutes over 8 instances of a single-op kernel).
    let wg = darts::exec::gpu::kernels::REDUCE_WORKGROUP_MIN;
    for (workgroup_min, split_min, fusion, most) in [
        (wg, u32::MAX, true, 16),
        (1, u32::MAX, true, 4),
        (wg, 1, true, 16),
        (wg, u32::MAX, false, 4),
        (1, 1, false, 4),
    ] {
        let case = BatchCase {
            fusion,
            workgroup_min,
            split_min,
            most,
        };
        let (on, off) = case.check(&mut gpu, &mut gpu64, &g, &inputs, &outs);
        // Fused: 44 kernels (twice the dispatches split) in 6 texts, batched in powers of two:
        // 13 dispatches instead of 44 (map, sum and max: 8 + 2 + 1 each; means: 4, 4, 2 + 1),
        // 16 with at most 4 instances.
        assert!(on * 2 < off, "{on} dispatches batched, {off} single");
    }
}

/// Batched single-op kernels (claim 12): seven branches of convolutions (dense, depthwise,
/// strided, padded, dilated; ReLU applied on load or not), their input and weight gradients
/// (invocation-per-element, workgroup-per-element and split), and pooling with its gradients,
/// each branch on other shapes, run as batched dispatches and equal the run with batching off
/// bit for bit, in f32 and f64, with fusion on and off.
#[test]
fn gpu_batched_convolutions_and_pools_equal_single_dispatches() {
    use darts::graph::PoolParams;
    let test = "gpu_batched_convolutions_and_pools_equal_single_dispatches";
    let Some(mut gpu) = common::gpu_executor(test) else {
        return;
    };
    let mut gpu64 = common::gpu_f64_executor(test);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut g = Graph::new();
    let (mut outs, mut inputs) = (Vec::new(), Inputs::new());
    for k in 0..7 {
        // Branch 4's weight gradient sums 2 x 16 x 16 terms per element: split in 2 chunks.
        let (n, c, h, w) = match k {
            4 => (2, 4, 16, 16),
            _ => (1 + k % 3, 4, 6 + k % 2, 7),
        };
        let (groups, stride, pad, dil, kk) = [
            (1, 1, 1, 1, 3),
            (4, 1, 2, 2, 3),
            (1, 2, 0, 1, 1),
            (4, 2, 2, 1, 5),
        ][k % 4];
        let o = if groups == 1 { 5 } else { c };
        let p = ConvParams::new(stride, pad, dil, groups);
        let (oh, ow) = (p.out_len(0, h, kk).unwrap(), p.out_len(1, w, kk).unwrap());
        let mut input = |g: &mut Graph, name: String, shape: Vec<usize>| {
            let v = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.random_range(-1.0f32..1.0));
            inputs.push((name.clone(), v));
            g.input(&name, shape).unwrap()
        };
        let x = input(&mut g, format!("x{k}"), vec![n, c, h, w]);
        let wt = input(&mut g, format!("w{k}"), vec![o, c / groups, kk, kk]);
        let gy = input(&mut g, format!("gy{k}"), vec![n, o, oh, ow]);
        let r = g.relu(x).unwrap();
        // Even branches read x through a ReLU (applied on load when fused), odd ones x itself.
        let xin = if k % 2 == 0 { r } else { x };
        let y = g.conv2d(xin, wt, p).unwrap();
        let gx = g
            .add(Op::Conv2dInputGrad { p, in_hw: [h, w] }, &[gy, wt])
            .unwrap();
        let gw = g
            .add(
                Op::Conv2dWeightGrad {
                    p,
                    kernel: [kk, kk],
                },
                &[xin, gy],
            )
            .unwrap();
        let pp = PoolParams::new(3, 1 + k % 2, 1);
        let avg = g.avg_pool2d(x, pp).unwrap();
        let max = g.max_pool2d(x, pp).unwrap();
        let gmax = g.add(Op::MaxPool2dGrad(pp), &[x, max]).unwrap();
        let gavg = g
            .add(
                Op::AvgPool2dGrad {
                    p: pp,
                    in_hw: [h, w],
                },
                &[avg],
            )
            .unwrap();
        outs.extend([y, gx, gw, avg, max, gmax, gavg]);
    }
    // (workgroup_min, split_min): per-element sums, a workgroup per element, and split.
    for (workgroup_min, split_min) in [(u32::MAX, u32::MAX), (1, u32::MAX), (1, 1)] {
        for fusion in [true, false] {
            let case = BatchCase {
                fusion,
                workgroup_min,
                split_min,
                most: 4,
            };
            let (on, off) = case.check(&mut gpu, &mut gpu64, &g, &inputs, &outs);
            // 49 kernels (7 ops x 7 branches, more when split), 3 dispatches per op batched.
            assert!(on * 2 < off, "{on} dispatches batched, {off} single");
        }
    }
}
