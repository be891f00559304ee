//! Executor variables (named tensors kept between runs, on the device for the GPU): reads
//! fall back from feeds to variables, `run_assign` updates after every read, and misuse is
//! named. The same script runs on the CPU (f32 and f64) and on the GPU, and the GPU's
//! variables must equal the CPU's bit for bit (elementwise f32 arithmetic is correctly
//! rounded on both, and the update below has no reduction).

mod common;

use darts::exec::cpu::CpuExecutor;
use darts::exec::{ExecError, Executor, Feeds, Scalar};
use darts::graph::Graph;
use ndarray::{ArrayD, IxDyn};

fn arr<T: Scalar>(shape: &[usize], f: impl Fn(usize) -> f64) -> ArrayD<T> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| T::of(f(i))).collect()).unwrap()
}

/// Momentum SGD as one graph: buf <- mu buf + g, w <- w - lr buf, with g fed and lr fed.
/// Three steps through `run_assign`; returns the final (w, buf) read back from variables and
/// the loss outputs, which must see the weights *before* each step.
fn sgd_script<T: Scalar, E: Executor<T> + ?Sized>(exec: &mut E) -> (ArrayD<T>, ArrayD<T>, Vec<T>) {
    let mut g = Graph::new();
    let w = g.input("w", [2, 3]).unwrap();
    let buf = g.input("buf", [2, 3]).unwrap();
    let grad = g.input("g", [2, 3]).unwrap();
    let lr = g.input("lr", [] as [usize; 0]).unwrap();
    let mu = g.scalar(0.9).unwrap();
    let mb = g.mul(mu, buf).unwrap();
    let nb = g.add2(mb, grad).unwrap();
    let step = g.mul(lr, nb).unwrap();
    let nw = g.sub(w, step).unwrap();
    let sq = g.square(w).unwrap();
    let loss = g.sum_all(sq).unwrap();
    exec.clear_vars();
    exec.set_var("w", &arr(&[2, 3], |i| i as f64 - 2.5))
        .unwrap();
    exec.set_var("buf", &arr(&[2, 3], |_| 0.0)).unwrap();
    let mut losses = Vec::new();
    for step in 0..3 {
        let mut f = Feeds::<T>::new();
        f.insert("g", arr(&[2, 3], |i| (i as f64 + 1.0) * 0.25 + step as f64));
        f.insert("lr", arr(&[], |_| 0.125));
        let out = exec
            .run_assign(
                &g,
                &f,
                &[loss],
                &[(nw, "w".to_string()), (nb, "buf".to_string())],
            )
            .unwrap();
        losses.push(out[0].iter().copied().next().unwrap());
    }
    (exec.var("w").unwrap(), exec.var("buf").unwrap(), losses)
}

/// The same three steps on the host, in f64.
fn sgd_host() -> (ArrayD<f64>, ArrayD<f64>, Vec<f64>) {
    let mut w: ArrayD<f64> = arr(&[2, 3], |i| i as f64 - 2.5);
    let mut buf: ArrayD<f64> = arr(&[2, 3], |_| 0.0);
    let mut losses = Vec::new();
    for step in 0..3 {
        losses.push(w.iter().map(|v| v * v).sum());
        let g: ArrayD<f64> = arr(&[2, 3], |i| (i as f64 + 1.0) * 0.25 + step as f64);
        buf = &buf * 0.9 + &g;
        w = &w - &(&buf * 0.125);
    }
    (w, buf, losses)
}

#[test]
fn run_assign_updates_after_every_read_cpu_f64() {
    let (w, buf, losses) = sgd_script(&mut CpuExecutor::<f64>::new());
    let (hw, hb, hl) = sgd_host();
    // The updates are the same elementwise operations in the same order: equal bit for bit.
    assert_eq!(w, hw);
    assert_eq!(buf, hb);
    // The loss is a 6-term sum whose order may differ: |error| <= 5 u sum |terms| = 5 u loss.
    for (a, b) in losses.iter().zip(&hl) {
        assert!(
            ((a - b) / b).abs() <= 5.0 * f64::UNIT_ROUNDOFF,
            "{a} vs {b}"
        );
    }
}

#[test]
fn feeds_win_over_variables_and_misuse_is_named() {
    let mut exec = CpuExecutor::<f64>::new();
    let mut g = Graph::new();
    let x = g.input("x", [2]).unwrap();
    let y = g.scale(x, 2.0).unwrap();
    exec.set_var("x", &arr(&[2], |i| i as f64)).unwrap();
    let from_var = exec.run(&g, &Feeds::new(), &[y]).unwrap();
    assert_eq!(from_var[0].as_slice().unwrap(), &[0.0, 2.0]);
    let mut f = Feeds::new();
    f.insert("x", arr(&[2], |_| 5.0));
    let from_feed = exec.run(&g, &f, &[y]).unwrap();
    assert_eq!(from_feed[0].as_slice().unwrap(), &[10.0, 10.0]);
    // A variable of the wrong shape is named as a variable.
    exec.set_var("x", &arr(&[3], |_| 1.0)).unwrap();
    let e = exec.run(&g, &Feeds::new(), &[y]).unwrap_err();
    assert!(e.to_string().contains("x (variable)"), "{e}");
    // Assigning a node of another shape to an existing variable is refused before any work.
    let e = exec
        .run_assign(&g, &f, &[], &[(y, "x".to_string())])
        .unwrap_err();
    assert!(matches!(e, ExecError::Assign { .. }), "{e}");
    assert!(e.to_string().contains("'x'"), "{e}");
    // Twice in one run.
    let e = exec
        .run_assign(&g, &f, &[], &[(y, "z".into()), (x, "z".into())])
        .unwrap_err();
    assert!(e.to_string().contains("assigned twice"), "{e}");
    // Reading a missing variable, and running with neither feed nor variable.
    assert!(matches!(exec.var("nope"), Err(ExecError::NoVar(_))));
    exec.clear_vars();
    assert!(exec.var_shape("x").is_none());
    let e = exec.run(&g, &Feeds::new(), &[y]).unwrap_err();
    assert!(matches!(e, ExecError::MissingFeed { .. }), "{e}");
}

#[test]
fn gpu_variables_match_cpu_bit_for_bit() {
    let Some(mut gpu) = common::gpu_executor("gpu_variables_match_cpu_bit_for_bit") else {
        return;
    };
    let (gw, gb, gl) = sgd_script(&mut gpu);
    let (cw, cb, cl) = sgd_script(&mut CpuExecutor::<f32>::new());
    assert_eq!(gw, cw);
    assert_eq!(gb, cb);
    // The loss is a 6-term sum of squares whose order may differ: each result is within
    // 5 u of the exact sum (all terms positive), so they differ by at most 10 u relative.
    for (g, c) in gl.iter().zip(&cl) {
        assert!(
            ((g - c) / c).abs() <= 10.0 * f32::UNIT_ROUNDOFF as f32,
            "{g} vs {c}"
        );
    }
    // Variables survive between runs and are refused after clear_vars.
    assert_eq!(gpu.var_shape("w"), Some(vec![2, 3]));
    gpu.clear_vars();
    assert!(matches!(gpu.var("w"), Err(ExecError::NoVar(_))));
}

/// Assignments act after every read of the run, all at once: two variables swapped through one
/// run, one value assigned to two variables (which then live apart), and an output reading a
/// variable the same run assigns (it sees the old value). The run is made twice (the GPU
/// replays its tape the second time, src/exec/gpu/tape.rs) and then a second graph updates
/// one of the two copies. Returns the outputs and variables in order.
fn assignment_script<T: Scalar, E: Executor<T> + ?Sized>(exec: &mut E) -> Vec<Vec<f64>> {
    let mut g = Graph::new();
    let a = g.input("a", [3]).unwrap();
    let b = g.input("b", [3]).unwrap();
    let s = g.add2(a, b).unwrap();
    let assign = [
        (b, "a".to_string()),
        (a, "b".to_string()),
        (s, "c".to_string()),
        (s, "d".to_string()),
    ];
    let mut h = Graph::new();
    let c = h.input("c", [3]).unwrap();
    let c2 = h.scale(c, 2.0).unwrap();
    exec.clear_vars();
    exec.set_var("a", &arr(&[3], |i| i as f64 + 1.0)).unwrap();
    exec.set_var("b", &arr(&[3], |i| 10.0 * (i as f64 + 1.0)))
        .unwrap();
    let mut seen = Vec::new();
    let flat = |v: ArrayD<T>| v.iter().map(|x| x.as_f64()).collect::<Vec<f64>>();
    for _ in 0..2 {
        let out = exec.run_assign(&g, &Feeds::new(), &[a], &assign).unwrap();
        seen.push(flat(out[0].clone()));
        for name in ["a", "b", "c", "d"] {
            seen.push(flat(exec.var(name).unwrap()));
        }
    }
    exec.run_assign(&h, &Feeds::new(), &[], &[(c2, "c".to_string())])
        .unwrap();
    seen.push(flat(exec.var("c").unwrap()));
    seen.push(flat(exec.var("d").unwrap()));
    seen
}

#[test]
fn assignments_swap_alias_and_see_old_values() {
    let (one, ten, sum) = (
        vec![1.0, 2.0, 3.0],
        vec![10.0, 20.0, 30.0],
        vec![11.0, 22.0, 33.0],
    );
    let want = vec![
        one.clone(),
        ten.clone(),
        one.clone(),
        sum.clone(),
        sum.clone(),
        ten.clone(),
        one.clone(),
        ten.clone(),
        sum.clone(),
        sum.clone(),
        vec![22.0, 44.0, 66.0],
        sum.clone(),
    ];
    assert_eq!(assignment_script(&mut CpuExecutor::<f64>::new()), want);
    let Some(mut gpu) = common::gpu_executor("assignments_swap_alias_and_see_old_values") else {
        return;
    };
    assert_eq!(assignment_script(&mut gpu), want);
}
