//! The resident search step (one graph per step, all state in executor variables:
//! src/search/step_graph.rs) against the host step (gradients from the executor, PyTorch's
//! optimisers on the host: src/search/optim.rs), both in f64 on the CPU. They are two
//! independent implementations of the same step: every update formula is written twice, once
//! as ndarray code and once as graph nodes.
//!
//! Tolerance: the two compute the same operations in the same order (proofs/resident-search-
//! step.md) except a few sums whose summation order differs (||v|| for the FD radius, the clip
//! norm, the executor's reductions over differently shaped views): each is within n u of the
//! other (n <= 10^4 terms here, u = 2^-53 = 1.1e-16), so <= 1e-12 relative. A perturbation
//! delta of R changes the FD HVP only at O(delta R^2) (the O(R) term cancels in the central
//! difference), and one of the clip factor scales the weight update by (1 + delta). Three
//! steps do not amplify that by more than a small factor, so 1e-11 of each tensor's scale
//! bounds it (measured: 0 for the first step of first order, which is bit-identical; <= 2e-14
//! after three steps of every order); a missing or stale update, or a derivative flowing
//! through a value the host treats as a number, differs by >= 1e-5 of the scale here.

use darts::search::architect::Order;
use darts::search::run::{Dtype, Finish, Search, SearchOptions};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn tiny(order: Order) -> SearchOptions {
    SearchOptions {
        init_channels: 2,
        layers: 3,
        epochs: 1,
        batch_size: 16,
        max_images: Some(96),
        order,
        dtype: Dtype::F64,
        arch_learning_rate: 3e-2,
        learning_rate: 0.05,
        // Small enough that clipping is active in some steps (the factor path is exercised).
        grad_clip: 1.0,
        ..SearchOptions::paper()
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-resident-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(opts: SearchOptions, d: &Path, resident: bool) -> Search<f64> {
    let mut s = Search::<f64>::new(opts, d).unwrap().resident(resident);
    let done = s
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap();
    assert!(matches!(done, Finish::Done { .. }));
    s
}

/// max |a - b| / max(max |b|, tiny).
fn rel(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b.iter())
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn log(d: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Weights, BN buffers (running statistics and num_batches_tracked), alphas, the logged
/// losses and accuracies, and the checkpointed optimiser state agree for every order.
#[test]
fn resident_step_equals_host_step_f64() {
    for order in [Order::First, Order::Second, Order::Exact] {
        let (dh, dr) = (
            dir(&format!("host-{order:?}")),
            dir(&format!("res-{order:?}")),
        );
        let host = run(tiny(order), &dh, false);
        let res = run(tiny(order), &dr, true);
        let mut worst = (0f64, String::new());
        let mut check = |name: &str, a: &ArrayD<f64>, b: &ArrayD<f64>| {
            assert_eq!(a.shape(), b.shape(), "{name}");
            let r = rel(a, b);
            if r > worst.0 {
                worst = (r, name.to_string());
            }
            assert!(r <= 1e-11, "{order:?} {name}: relative difference {r:e}");
        };
        for (k, v) in &host.state.tensors {
            check(k, &res.state.tensors[k], v);
        }
        check(
            "alpha/normal",
            &res.state.alpha_normal,
            &host.state.alpha_normal,
        );
        check(
            "alpha/reduce",
            &res.state.alpha_reduce,
            &host.state.alpha_reduce,
        );
        // The checkpoints hold the optimiser state (SGD buffers, Adam moments).
        let (ah, _) = darts::search::checkpoint::read(&dh.join("checkpoint.npz")).unwrap();
        let (ar, _) = darts::search::checkpoint::read(&dr.join("checkpoint.npz")).unwrap();
        assert_eq!(
            ah.keys().collect::<Vec<_>>(),
            ar.keys().collect::<Vec<_>>(),
            "{order:?}: checkpoint entries"
        );
        for (k, v) in &ah {
            check(&format!("checkpoint {k}"), &ar[k], v);
        }
        let (lh, lr) = (log(&dh), log(&dr));
        for key in ["train_loss", "train_acc", "valid_loss", "valid_acc"] {
            let (a, b) = (lr[0][key].as_f64().unwrap(), lh[0][key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{order:?} {key}: {a} vs {b}"
            );
        }
        assert_eq!(lh[0]["genotype"], lr[0]["genotype"]);
        assert_eq!(lr[0]["timing"]["step"], "resident");
        println!(
            "{order:?}: worst relative difference {:.2e} ({})",
            worst.0, worst.1
        );
    }
}

/// A resident run interrupted after a few steps and resumed from its checkpoint ends exactly
/// where an uninterrupted resident run does (f64 state round-trips through the host exactly).
#[test]
fn resident_run_resumes_bit_identically() {
    let mut opts = tiny(Order::Second);
    opts.epochs = 2;
    let whole = dir("whole");
    let reference = run(opts.clone(), &whole, true);
    let part = dir("part");
    let mut s = Search::<f64>::new(opts, &part).unwrap().resident(true);
    let stop = AtomicBool::new(false);
    let mut steps = 0;
    let r = s
        .run(&stop, &mut |_, _, _, _| {
            steps += 1;
            if steps == 4 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(matches!(r, Finish::Interrupted { .. }));
    drop(s);
    let mut resumed = Search::<f64>::resume(&part).unwrap().resident(true);
    resumed
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap();
    assert_eq!(resumed.state, reference.state);
    assert_eq!(resumed.genotype(), reference.genotype());
}

/// A non-finite alpha stops a resident run with an error naming the step and the tensor.
#[test]
fn resident_step_reports_non_finite_values() {
    let d = dir("nan");
    let mut s = Search::<f64>::new(tiny(Order::First), &d)
        .unwrap()
        .resident(true);
    s.state.alpha_normal[[0, 1]] = f64::NAN;
    let e = s
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 0") && e.contains("alpha"), "{e}");
}

/// With 1 or 2 layers every cell reduces, so alphas_normal takes no part in the loss: PyTorch
/// leaves its .grad None and Adam skips it (no decay, no moments), while alphas_reduce moves.
/// Both steps (host and resident) reproduce that: alphas_normal and its Adam moments end
/// exactly as they began, and the two agree on everything else (tolerance as above). (The
/// reference's second order fails here on the missing gradient; ours gives alphas_normal the
/// same treatment, its implicit term being zero too.)
#[test]
fn reduction_only_networks_leave_alphas_normal_as_they_are() {
    for (layers, order) in [(1, Order::First), (2, Order::First), (2, Order::Second)] {
        let opts = SearchOptions {
            layers,
            ..tiny(order)
        };
        let (dh, dr) = (
            dir(&format!("host-l{layers}-{order:?}")),
            dir(&format!("res-l{layers}-{order:?}")),
        );
        let before = Search::<f64>::new(opts.clone(), &dh).unwrap().state.clone();
        let host = run(opts.clone(), &dh, false);
        let res = run(opts, &dr, true);
        for s in [&host, &res] {
            assert_eq!(s.state.alpha_normal, before.alpha_normal, "layers {layers}");
            assert!(rel(&s.state.alpha_reduce, &before.alpha_reduce) > 1e-6);
        }
        let (ah, _) = darts::search::checkpoint::read(&dh.join("checkpoint.npz")).unwrap();
        let (ar, _) = darts::search::checkpoint::read(&dr.join("checkpoint.npz")).unwrap();
        for (k, v) in &ah {
            if k.contains("adam_m/normal") || k.contains("adam_v/normal") {
                assert!(v.iter().all(|&x| x == 0.0), "{k}");
            }
            assert!(rel(&ar[k], v) <= 1e-11, "layers {layers} {k}");
        }
        assert!(rel(&res.state.alpha_reduce, &host.state.alpha_reduce) <= 1e-11);
    }
}
