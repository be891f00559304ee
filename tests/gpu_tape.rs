//! Tapes (src/exec/gpu/tape.rs): a run recorded once and replayed while the same graph runs
//! again. A replay must compute exactly what a fresh recording computes: the GPU kernels are
//! deterministic (no atomics; every reduction has a fixed order), so a replayed run and a run
//! on a fresh executor with the same graph and feeds must agree bit for bit. Any stale input,
//! parameter block or buffer shared with another run changes values by far more than one ulp,
//! so exact equality is the tolerance here (proofs/gpu-kernel-choices.md, claim 7).

mod common;

use darts::autodiff::grad;
use darts::exec::gpu::tape::TAPES_KEPT;
use darts::exec::gpu::GpuExecutor;
use darts::exec::{Executor, Feeds};
use darts::graph::{ConvParams, Graph, NodeId, PoolParams};
use ndarray::{ArrayD, IxDyn};

/// Deterministic pseudo-random values in [-1, 1) (a hash of the index and the seed).
fn values(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    let v = (0..n as u64)
        .map(|i| {
            let mut z = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z ^= z >> 29;
            z = z.wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 32;
            (z % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
}

/// A small network with most kernel families (conv, pooling, fused elementwise chains,
/// reductions, slice, pad, concat, matmul, log-softmax) and its gradients; `width` varies the
/// graph so that several different graphs can be built. Returns the graph, its outputs (the
/// loss and the gradients of w and v) and the shapes of its inputs.
type Network = (Graph, Vec<NodeId>, Vec<(&'static str, Vec<usize>)>);

fn network(width: usize) -> Network {
    let mut g = Graph::new();
    let shapes = vec![
        ("x", vec![2, 3, 6, 6]),
        ("w", vec![width, 3, 3, 3]),
        ("v", vec![width * 9, 4]),
    ];
    let x = g.input("x", shapes[0].1.clone()).unwrap();
    let w = g.input("w", shapes[1].1.clone()).unwrap();
    let v = g.input("v", shapes[2].1.clone()).unwrap();
    let y = g.conv2d(x, w, ConvParams::new(1, 1, 1, 1)).unwrap();
    let y = g.relu(y).unwrap();
    let p = g.max_pool2d(y, PoolParams::new(2, 2, 0)).unwrap();
    let a = g.slice(p, 1, 0, width / 2, 1).unwrap();
    let b = g.slice(p, 1, width / 2, width, 1).unwrap();
    let ab = g.mul(a, b).unwrap();
    let ab = g.pad(ab, 1, 0, width - width / 2, 0).unwrap();
    let s = g.add2(p, ab).unwrap();
    let c = g.concat(&[s, p], 0).unwrap();
    let c = g.reshape(c, [4, width * 9]).unwrap();
    let logits = g.matmul(c, v).unwrap();
    let lp = g.log_softmax(logits, 1).unwrap();
    let sq = g.square(lp).unwrap();
    let loss = g.sum_all(sq).unwrap();
    let grads = grad(&mut g, loss, &[w, v]).unwrap();
    (g, vec![loss, grads[0], grads[1]], shapes)
}

fn feeds(shapes: &[(&str, Vec<usize>)], seed: u64) -> Feeds<f32> {
    let mut f = Feeds::new();
    for (k, (name, shape)) in shapes.iter().enumerate() {
        f.insert(*name, values(shape, seed * 31 + k as u64));
    }
    f
}

/// What a fresh executor computes (a recorded run, no tape before it).
fn fresh(g: &Graph, f: &Feeds<f32>, outs: &[NodeId]) -> Vec<ArrayD<f32>> {
    let mut gpu = GpuExecutor::new().unwrap();
    gpu.run(g, f, outs).unwrap()
}

/// The same graph with new feeds replays its tape (no build, no buffer created), and every
/// output equals a fresh executor's bit for bit; so do runs interleaved with other graphs.
#[test]
fn gpu_replayed_runs_equal_fresh_runs() {
    let Some(mut gpu) = common::gpu_executor("gpu_replayed_runs_equal_fresh_runs") else {
        return;
    };
    let (g, outs, shapes) = network(4);
    let (h, h_outs, h_shapes) = network(6);
    for seed in 0..3 {
        let f = feeds(&shapes, seed);
        let got = gpu.run(&g, &f, &outs).unwrap();
        let t = gpu.run_timing();
        assert_eq!(t.replayed, seed > 0, "seed {seed}: {t}");
        if seed > 0 {
            assert_eq!(t.fresh_buffers, 0, "{t}");
            assert_eq!(t.build, 0.0, "{t}");
        }
        assert_eq!(got, fresh(&g, &f, &outs), "graph g, seed {seed}");
        // Another graph in between: its tape must not write into g's buffers.
        let fh = feeds(&h_shapes, seed + 100);
        let got_h = gpu.run(&h, &fh, &h_outs).unwrap();
        assert_eq!(got_h, fresh(&h, &fh, &h_outs), "graph h, seed {seed}");
    }
}

/// Variables are bound by buffer: `set_var` of the same shape writes in place and a replay
/// reads the new value; a variable instead of a feed (or a fresh variable after `clear_vars`)
/// is a different tape. Each run equals a fresh executor's with the same values fed.
#[test]
fn gpu_tapes_follow_variables() {
    let Some(mut gpu) = common::gpu_executor("gpu_tapes_follow_variables") else {
        return;
    };
    let (g, outs, shapes) = network(4);
    let all = feeds(&shapes, 7);
    let w1 = values(&shapes[1].1, 11);
    let w2 = values(&shapes[1].1, 12);
    let mut x_only = Feeds::new();
    x_only.insert("x", all.get("x").unwrap().clone());
    x_only.insert("v", all.get("v").unwrap().clone());
    let with_w = |w: &ArrayD<f32>| {
        let mut f = x_only.clone();
        f.insert("w", w.clone());
        f
    };
    // w fed, then w a variable: two tapes.
    assert_eq!(gpu.run(&g, &all, &outs).unwrap(), fresh(&g, &all, &outs));
    gpu.set_var("w", &w1).unwrap();
    let got = gpu.run(&g, &x_only, &outs).unwrap();
    assert!(!gpu.run_timing().replayed);
    assert_eq!(got, fresh(&g, &with_w(&w1), &outs));
    // set_var in place: replayed, and the new value is read.
    gpu.set_var("w", &w2).unwrap();
    let got = gpu.run(&g, &x_only, &outs).unwrap();
    assert!(gpu.run_timing().replayed);
    assert_eq!(got, fresh(&g, &with_w(&w2), &outs));
    // A feed still wins over the variable, on the first tape.
    assert_eq!(gpu.run(&g, &all, &outs).unwrap(), fresh(&g, &all, &outs));
    assert!(gpu.run_timing().replayed);
    // A new variable buffer: recorded again.
    gpu.clear_vars();
    gpu.set_var("w", &w1).unwrap();
    let got = gpu.run(&g, &x_only, &outs).unwrap();
    assert!(!gpu.run_timing().replayed);
    assert_eq!(got, fresh(&g, &with_w(&w1), &outs));
    // A variable made after the tape, of the size of the network's values (the conv output
    // [2, 4, 6, 6] and others: buffers of every such size wait in the pool): replays of the
    // tape, which write those pooled buffers, must leave it as it was.
    for shape in [vec![2, 4, 6, 6], vec![2, 4, 3, 3], vec![4, 4]] {
        let z = values(&shape, 5);
        gpu.set_var("z", &z).unwrap();
        gpu.run(&g, &x_only, &outs).unwrap();
        assert!(gpu.run_timing().replayed);
        assert_eq!(gpu.var("z").unwrap(), z, "variable of shape {shape:?}");
        gpu.clear_vars();
        gpu.set_var("w", &w1).unwrap();
        gpu.run(&g, &x_only, &outs).unwrap();
    }
}

/// At most `TAPES_KEPT` tapes are cached, least recently used out: cycling through one graph
/// more than that records every run, and each still equals a fresh executor's (the dropped
/// tapes' buffers went back to the pool and are reused by the next ones).
#[test]
fn gpu_tape_cache_drops_the_least_recently_used() {
    let Some(mut gpu) = common::gpu_executor("gpu_tape_cache_drops_the_least_recently_used") else {
        return;
    };
    let graphs: Vec<_> = (0..=TAPES_KEPT).map(|k| network(2 + 2 * k)).collect();
    for round in 0..2 {
        for (k, (g, outs, shapes)) in graphs.iter().enumerate() {
            let f = feeds(shapes, (round * 10 + k) as u64);
            let got = gpu.run(g, &f, outs).unwrap();
            assert!(!gpu.run_timing().replayed, "round {round}, graph {k}");
            assert_eq!(got, fresh(g, &f, outs), "round {round}, graph {k}");
        }
    }
    // The most recent ones are still there.
    let (g, outs, shapes) = &graphs[TAPES_KEPT];
    let f = feeds(shapes, 99);
    assert_eq!(gpu.run(g, &f, outs).unwrap(), fresh(g, &f, outs));
    assert!(gpu.run_timing().replayed);
}

/// Profiling (timestamps written between dispatches) accounts for every dispatch of the run
/// under its kernel's name, with finite non-negative times, and changes no output bit. On an
/// adapter without timestamps inside passes `set_profile` says so and the run has no profile.
#[test]
fn gpu_profile_times_every_dispatch() {
    let Some(mut gpu) = common::gpu_executor("gpu_profile_times_every_dispatch") else {
        return;
    };
    let (g, outs, shapes) = network(4);
    let f = feeds(&shapes, 3);
    let plain = gpu.run(&g, &f, &outs).unwrap();
    assert!(gpu.run_timing().profile.is_empty());
    if !gpu.set_profile(true) {
        println!("gpu_profile_times_every_dispatch: the adapter writes no timestamps in passes");
        gpu.run(&g, &f, &outs).unwrap();
        assert!(gpu.run_timing().profile.is_empty());
        return;
    }
    // Chunks of 5 dispatches: the timestamps of several query sets, in order.
    gpu.set_submit_every(5);
    let profiled = gpu.run(&g, &f, &outs).unwrap();
    assert_eq!(profiled, plain);
    let t = gpu.run_timing();
    println!("{t}");
    let counted: usize = t.profile.iter().map(|p| p.1).sum();
    assert_eq!(counted, t.dispatches, "{t}");
    assert!(
        t.profile.iter().all(|p| p.2.is_finite() && p.2 >= 0.0),
        "{t}"
    );
    assert!(t.profile.iter().any(|p| p.0 == "conv.conv2d"), "{t}");
    assert!(t.profile.iter().any(|p| p.0.starts_with("fused")), "{t}");
    gpu.set_profile(false);
    gpu.run(&g, &f, &outs).unwrap();
    assert!(gpu.run_timing().profile.is_empty());
}
