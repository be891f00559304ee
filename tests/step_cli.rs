//! `darts step` end to end: its npz contract, its reading of the optional optimiser state, and
//! its numbers: iteration 0 against the independent host oracle (src/check/oracle/) from the
//! same input state, within the one-step bound derived in tests/step_oracle.rs; every
//! iteration bit for bit against the same iterations run in process through the stepper (the
//! command must add nothing of its own to the step); and bad inputs rejected before any work
//! with a message naming the key or flag, writing nothing.

mod common;

use darts::check::oracle::step::OracleSearch;
use darts::darts::names;
use darts::darts::params::{read_npz, write_npz, State};
use darts::data::Batch;
use darts::exec::cpu::CpuExecutor;
use darts::exec::Scalar;
use darts::search::architect::Order;
use darts::search::step_graph::{OptimState, StepHyper};
use darts::search::stepper::Stepper;
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const STEPS: usize = 3;
const ETA: f64 = 0.025;

fn darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_darts"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-step-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The one-step bound of tests/step_oracle.rs: 2 gamma_N + 16 u.
fn step_bound(n: usize) -> f64 {
    let u = f64::UNIT_ROUNDOFF;
    let nu = n as f64 * u;
    2.0 * nu / (1.0 - nu) + 16.0 * u
}

fn labels(b: &Batch) -> ArrayD<f64> {
    b.onehot
        .map_axis(ndarray::Axis(1), |r| {
            r.iter().position(|&x| x == 1.0).unwrap() as f64
        })
        .into_dyn()
}

/// state.npz (tiny network, momentum buffers, Adam state of both alphas at step 3) and
/// batch.npz in `d`; returns the state, the optimiser state and the batches.
fn inputs(d: &Path) -> (State, OptimState, Batch, Batch) {
    let cfg = common::tiny(false);
    let st = common::state(&cfg, 8);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut arrays: BTreeMap<String, ArrayD<f64>> = BTreeMap::new();
    for (k, v) in &st.tensors {
        arrays.insert(format!("sd/{k}"), v.clone());
    }
    arrays.insert(names::ALPHA[0].into(), st.alpha_normal.clone());
    arrays.insert(names::ALPHA[1].into(), st.alpha_reduce.clone());
    let layout = cfg.layout().unwrap();
    let mut bufs = Vec::new();
    for (n, shape, _) in layout.weights() {
        let b = ArrayD::from_shape_simple_fn(IxDyn(shape), || 0.01 * (rng.random::<f64>() - 0.5));
        arrays.insert(format!("momentum_buffer/{n}"), b.clone());
        bufs.push(b);
    }
    let mut opt = OptimState {
        sgd_buf: Some(bufs),
        ..OptimState::default()
    };
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        let shape = st.alpha_normal.raw_dim();
        let m = ArrayD::from_shape_simple_fn(shape.clone(), || 1e-3 * (rng.random::<f64>() - 0.5));
        let v = ArrayD::from_shape_simple_fn(shape, || 1e-6 * rng.random::<f64>());
        arrays.insert(names::adam_m(cell), m.clone());
        arrays.insert(names::adam_v(cell), v.clone());
        opt.adam_m[c] = Some(m);
        opt.adam_v[c] = Some(v);
        opt.adam_t[c] = 3;
    }
    arrays.insert("adam_step".into(), ArrayD::from_elem(IxDyn(&[]), 3.0));
    write_npz(
        &d.join("state.npz"),
        arrays.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    let (t, v) = (common::batch(4, 8, 10, 1), common::batch(3, 8, 10, 2));
    let (yt, yv) = (labels(&t), labels(&v));
    write_npz(
        &d.join("batch.npz"),
        [
            ("x_train", &t.x),
            ("y_train", &yt),
            ("x_valid", &v.x),
            ("y_valid", &yv),
        ],
    )
    .unwrap();
    (st, opt, t, v)
}

fn run_step(d: &Path, extra: &[&str]) -> std::process::Output {
    darts()
        .arg("step")
        .arg("--state")
        .arg(d.join("state.npz"))
        .arg("--batch")
        .arg(d.join("batch.npz"))
        .arg("--out")
        .arg(d.join("out.npz"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn step_command_matches_the_oracle_and_the_stepper() {
    for order in [Order::First, Order::Second, Order::Exact] {
        let name = format!("{order:?}").to_lowercase();
        let d = dir(&name);
        let (st, opt, train, valid) = inputs(&d);
        let steps = STEPS.to_string();
        let o = run_step(&d, &["--order", &name, "--steps", &steps]);
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let got = read_npz(&d.join("out.npz")).unwrap();
        let cfg = common::tiny(false);
        // In process, the same iterations through the stepper: bit for bit.
        let mut s = Stepper::new(
            cfg,
            order,
            StepHyper::reference(),
            Box::new(CpuExecutor::<f64>::new()),
            st.clone(),
            opt.clone(),
        )
        .unwrap();
        for k in 0..STEPS {
            let rep = s.step(&train, &valid, ETA).unwrap();
            s.sync_host().unwrap();
            assert_eq!(got[&format!("iter{k}/loss_train")].sum(), rep.loss_train);
            assert_eq!(got[&format!("iter{k}/grad_norm")].sum(), rep.grad_norm);
            assert_eq!(got[&format!("iter{k}/alpha/normal")], s.state.alpha_normal);
            for (n, v) in &s.state.tensors {
                assert_eq!(&got[&format!("iter{k}/sd/{n}")], v, "{order:?} iter{k} {n}");
            }
        }
        let layout = cfg.layout().unwrap();
        for ((n, _, _), b) in layout.weights().zip(s.opt.sgd_buf.as_ref().unwrap()) {
            assert_eq!(&got[&format!("momentum_buffer/{n}")], b);
        }
        assert_eq!(got["adam_step/reduce"].sum(), 3.0 + STEPS as f64);
        assert_eq!(&got["adam_m/reduce"], s.opt.adam_m[1].as_ref().unwrap());
        // num_batches_tracked: int64, one per train-mode forward (first 2, second 4, exact 2
        // per iteration).
        let per = if order == Order::Second { 4.0 } else { 2.0 };
        let nbt = format!("iter{}/sd/stem.1.num_batches_tracked", STEPS - 1);
        assert_eq!(got[&nbt].sum(), per * STEPS as f64);
        // Iteration 0 against the oracle from the same input state and optimiser state.
        let mut h = StepHyper::reference();
        h.adam.lr = 3e-4;
        let shapes = (train.x.shape(), valid.x.shape());
        let mut oracle = OracleSearch::new(&cfg, order, &h, st.clone(), shapes).unwrap();
        oracle.sgd.buf = opt.sgd_buf.clone();
        oracle.adam.t = 3;
        oracle.adam.m = opt.adam_m.iter().map(|m| m.clone().unwrap()).collect();
        oracle.adam.v = opt.adam_v.iter().map(|v| v.clone().unwrap()).collect();
        oracle
            .step(&mut CpuExecutor::<f64>::new(), &train, &valid, ETA)
            .unwrap();
        let n: usize = layout
            .weights()
            .map(|(_, s, _)| s.iter().product::<usize>())
            .sum();
        let bound = step_bound(n);
        let check = |key: &str, want: &ArrayD<f64>| {
            let a = &got[key];
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
            let err = a
                .iter()
                .zip(want.iter())
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= bound * scale,
                "{order:?} {key}: {:e} > {bound:e}",
                err / scale
            );
        };
        check("iter0/alpha/normal", &oracle.state.alpha_normal);
        check("iter0/alpha/reduce", &oracle.state.alpha_reduce);
        for (name, _, _) in layout.weights() {
            check(&format!("iter0/sd/{name}"), &oracle.state.tensors[name]);
        }
    }
}

/// Bad inputs: an error naming the flag or key, a non-zero exit other than a panic's, and no
/// output file.
#[test]
fn step_command_rejects_bad_inputs_before_any_work() {
    let d = dir("bad");
    let (st, _, _, _) = inputs(&d);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--order", "first", "--steps", "0"], "--steps"),
        (vec!["--order", "first", "--eta", "nan"], "--eta"),
        (vec!["--order", "first", "--eta=-1"], "--eta"),
        (vec!["--order", "first", "--momentum", "1.5"], "--momentum"),
        (
            vec!["--order", "first", "--grad-clip", "inf"],
            "--grad-clip",
        ),
        (
            vec!["--order", "first", "--arch-weight-decay=-1"],
            "--arch-weight-decay",
        ),
    ];
    for (args, needle) in cases {
        let o = run_step(&d, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && o.status.code() != Some(101),
            "{args:?}: {err}"
        );
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!d.join("out.npz").exists(), "{args:?} wrote an output");
    }
    // An unknown key in the state file, and Adam moments without a step count.
    let mut arrays: BTreeMap<String, ArrayD<f64>> = read_npz(&d.join("state.npz")).unwrap();
    arrays.insert(
        "momentum_buffer/no.such.weight".into(),
        ArrayD::zeros(IxDyn(&[2])),
    );
    let bad = d.join("bad_state.npz");
    write_npz(&bad, arrays.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    let o = darts()
        .args(["step", "--order", "first", "--state"])
        .arg(&bad)
        .arg("--batch")
        .arg(d.join("batch.npz"))
        .arg("--out")
        .arg(d.join("out.npz"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("momentum_buffer/no.such.weight"),
        "{err}"
    );
    let mut arrays: BTreeMap<String, ArrayD<f64>> = read_npz(&d.join("state.npz")).unwrap();
    arrays.remove("adam_step");
    write_npz(&bad, arrays.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    let o = darts()
        .args(["step", "--order", "first", "--state"])
        .arg(&bad)
        .arg("--batch")
        .arg(d.join("batch.npz"))
        .arg("--out")
        .arg(d.join("out.npz"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("adam_step"), "{err}");
    assert!(!d.join("out.npz").exists());
    drop(st);
}
