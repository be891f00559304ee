//! The search loop end to end on tiny configurations: it learns, alphas move, runs repeat
//! exactly for a seed, and an interrupted (even SIGKILLed) run resumed from its checkpoint
//! ends with bit-identical alphas and genotype.

use darts::exec::cpu::CpuExecutor;
use darts::exec::Executor;
use darts::search::architect::Order;
use darts::search::run::{Dtype, Finish, Search, SearchOptions};

fn cpu() -> Box<dyn Executor<f64>> {
    Box::new(CpuExecutor::new())
}
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn tiny(order: Order) -> SearchOptions {
    SearchOptions {
        init_channels: 2,
        layers: 3,
        epochs: 3,
        batch_size: 16,
        max_images: Some(96),
        order,
        dtype: Dtype::F64,
        arch_learning_rate: 3e-2,
        learning_rate: 0.05,
        ..SearchOptions::paper()
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-search-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run_to_end(opts: SearchOptions, d: &Path) -> Search<f64> {
    let mut s = Search::<f64>::new(opts, d, cpu()).unwrap();
    let done = s
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap();
    assert!(matches!(done, Finish::Done { .. }));
    s
}

fn log_without_timing(d: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("timing");
            v
        })
        .collect()
}

/// A tiny search learns: the training loss falls from the first to the last epoch and the
/// alphas leave their near-uniform start (1e-3 N(0, 1)), for every gradient order.
#[test]
fn tiny_search_learns_and_alphas_leave_uniform() {
    for order in [Order::First, Order::Second, Order::Exact] {
        let d = dir(&format!("learn-{order:?}"));
        let mut s = run_to_end(tiny(order), &d);
        let log = log_without_timing(&d);
        assert_eq!(log.len(), 3);
        let first = log[0]["train_loss"].as_f64().unwrap();
        let last = log[2]["train_loss"].as_f64().unwrap();
        assert!(last < first, "{order:?}: train loss {first} -> {last}");
        let spread = s
            .state()
            .unwrap()
            .alpha_normal
            .iter()
            .fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            spread > 1e-2,
            "{order:?}: alphas stayed near zero ({spread})"
        );
        assert!(d.join("genotype.txt").exists());
    }
}

/// Same seed, same logs (timings aside), bit for bit on the CPU.
#[test]
fn same_seed_gives_identical_logs() {
    let (a, b) = (dir("same-a"), dir("same-b"));
    let mut sa = run_to_end(tiny(Order::First), &a);
    let mut sb = run_to_end(tiny(Order::First), &b);
    assert_eq!(log_without_timing(&a), log_without_timing(&b));
    assert_eq!(*sa.state().unwrap(), *sb.state().unwrap());
}

/// Interrupt after a few steps (the Ctrl-C path: finish the step, checkpoint, return),
/// resume from the folder, and finish: alphas, weights, BN buffers and genotype equal an
/// uninterrupted run's exactly.
#[test]
fn interrupted_and_resumed_run_is_bit_identical() {
    let whole = dir("whole");
    let mut reference = run_to_end(tiny(Order::Second), &whole);

    let part = dir("part");
    let mut s = Search::<f64>::new(tiny(Order::Second), &part, cpu()).unwrap();
    let stop = AtomicBool::new(false);
    let mut steps = 0;
    let r = s
        .run(&stop, &mut |_, _, _, _| {
            steps += 1;
            if steps == 5 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(matches!(r, Finish::Interrupted { .. }));
    drop(s);
    let mut resumed = Search::<f64>::resume(&part, cpu()).unwrap();
    let done = resumed
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap();
    let Finish::Done { genotype } = done else {
        panic!("resumed run did not finish")
    };
    assert_eq!(*resumed.state().unwrap(), *reference.state().unwrap());
    assert_eq!(genotype, reference.genotype());
    assert_eq!(log_without_timing(&part), log_without_timing(&whole));
}

/// SIGKILL in the middle of a run: the last checkpoint (end of an epoch) survives, and
/// `--resume` finishes with the same final alphas and genotype as an uninterrupted run.
#[test]
fn sigkilled_run_resumes_to_the_same_result() {
    let bin = env!("CARGO_BIN_EXE_darts");
    let args = |d: &Path| {
        vec![
            "search".to_string(),
            "--init-channels=2".into(),
            "--layers=3".into(),
            "--epochs=3".into(),
            "--batch-size=16".into(),
            "--max-images=96".into(),
            "--dtype=f64".into(),
            format!("--run-dir={}", d.display()),
        ]
    };
    let whole = dir("cli-whole");
    let out = std::process::Command::new(bin)
        .args(args(&whole))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let killed = dir("cli-killed");
    let mut child = std::process::Command::new(bin)
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first end-of-epoch checkpoint, then kill without warning.
    let ck = killed.join("checkpoint.npz");
    let t = std::time::Instant::now();
    while !ck.exists() && t.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before it could be killed mid-run"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ck.exists());
    let out = std::process::Command::new(bin)
        .args(["search", "--resume"])
        .arg(&killed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = |d: &Path| std::fs::read_to_string(d.join("genotype.txt")).unwrap();
    assert_eq!(g(&killed), g(&whole));
    let a = darts::search::checkpoint::read(&whole.join("checkpoint.npz"))
        .unwrap()
        .0;
    let b = darts::search::checkpoint::read(&killed.join("checkpoint.npz"))
        .unwrap()
        .0;
    assert_eq!(a["alpha/normal"], b["alpha/normal"]);
    assert_eq!(a["alpha/reduce"], b["alpha/reduce"]);
    assert_eq!(a, b);

    // Ctrl-C (SIGINT): the current step finishes, the checkpoint is written, the exit status
    // is 130 (as shells report SIGINT) with "epoch E of N, step S of M", and --resume ends
    // where the uninterrupted run does.
    let stopped = dir("cli-sigint");
    let child = std::process::Command::new(bin)
        .args(args(&stopped))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ck = stopped.join("checkpoint.npz");
    let t = std::time::Instant::now();
    while !ck.exists() && t.elapsed().as_secs() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{text}");
    assert!(
        text.contains("interrupted in epoch") && text.contains(" of 3, step "),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .args(["search", "--resume"])
        .arg(&stopped)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(g(&stopped), g(&whole));
}

/// A non-finite value stops the run with an error naming the step and the tensor, and the
/// last good checkpoint stays in place.
#[test]
fn nan_stops_the_run_naming_step_and_tensor() {
    let d = dir("nan");
    let mut opts = tiny(Order::First);
    opts.epochs = 2;
    let mut s = Search::<f64>::new(opts.clone(), &d, cpu()).unwrap();
    // Finish epoch 1 (checkpoint written), then poison the learning rate to make the next
    // weight step overflow.
    let stop = AtomicBool::new(false);
    let mut n = 0;
    let per_epoch = 3; // 48 training images / batch 16
    s.run(&stop, &mut |_, _, _, _| {
        n += 1;
        if n == per_epoch + 1 {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .unwrap();
    let good = std::fs::read(d.join("checkpoint.npz")).unwrap();
    let mut s = Search::<f64>::resume(&d, cpu()).unwrap();
    let mut st = s.state().unwrap().clone();
    st.alpha_normal[[0, 1]] = f64::INFINITY;
    s.set_state(st).unwrap();
    let e = s
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("step") && e.contains("alpha"), "{e}");
    assert_eq!(std::fs::read(d.join("checkpoint.npz")).unwrap(), good);
}
