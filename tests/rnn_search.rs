//! The recurrent search loop: it learns (the validation loss falls well below the uniform
//! model's log V), every order runs, and an interrupted run resumes bit-identically, both in
//! process (stop flag) and through the CLI after SIGKILL, with the resume continuing (not
//! restarting) from the checkpoint.

use darts::data::ptb::Corpus;
use darts::exec::{open_as, Backend, Dtype};
use darts::search::architect::Order;
use darts::search::checkpoint;
use darts::search::recurrent_run::{RnnFinish, RnnSearch, RnnSearchOptions, CHECKPOINT, LOG};
use darts::search::recurrent_step::Dropouts;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A search of seconds: H 8, batch 4, bptt 8, 120 train rows, 60 eval rows, f64 on the CPU.
fn tiny(order: Order, epochs: usize) -> RnnSearchOptions {
    let mut o = RnnSearchOptions::quick();
    o.nhid = 8;
    o.batch_size = 4;
    o.eval_batch_size = 4;
    o.bptt = 8;
    o.epochs = epochs;
    o.order = order;
    o.max_train_rows = Some(120);
    o.max_eval_rows = Some(60);
    o.checkpoint_every = 4;
    o.dtype = Dtype::F64;
    o.hyper.dropouts = Dropouts {
        output: 0.1,
        h: 0.1,
        x: 0.1,
        input: 0.1,
        embedding: 0.1,
    };
    o
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-rnn-search-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn search(o: RnnSearchOptions, corpus: &Corpus, d: &Path) -> RnnSearch<f64> {
    RnnSearch::<f64>::new(o, corpus, d, open_as::<f64>(Backend::Cpu).unwrap()).unwrap()
}

#[test]
fn recurrent_search_learns_and_every_order_runs() {
    let corpus = Corpus::embedded().unwrap();
    let d = dir("learns");
    let mut s = search(tiny(Order::First, 3), &corpus, &d);
    let stop = AtomicBool::new(false);
    let RnnFinish::Done { valid_ppl, .. } = s.run(&stop, &mut |_, _, _, _| {}).unwrap() else {
        panic!("not interrupted");
    };
    let after = valid_ppl.ln();
    let uniform = (corpus.vocab() as f64).ln();
    println!("valid loss after 3 epochs {after:.4} (uniform model: log V = {uniform:.4})");
    // (Before training the eval-mode model is no baseline: its BN running statistics are
    // still 0 and 1, and the identity paths then grow the states by orders of magnitude per
    // time step.) Training must beat the uniform model by a clear margin.
    assert!(after < uniform - 1.0, "{after} vs {uniform}");
    let log = std::fs::read_to_string(d.join(LOG)).unwrap();
    assert_eq!(log.lines().count(), 3);
    std::fs::remove_dir_all(&d).ok();
    for order in [Order::Second, Order::Exact] {
        let d = dir(&format!("{order:?}"));
        let mut o = tiny(order, 1);
        o.max_train_rows = Some(30);
        let mut s = search(o, &corpus, &d);
        let r = s.run(&stop, &mut |_, _, _, _| {}).unwrap();
        assert!(matches!(r, RnnFinish::Done { valid_ppl, .. } if valid_ppl.is_finite()));
        std::fs::remove_dir_all(&d).ok();
    }
}

/// Every array of a checkpoint and its progress record, for bitwise comparison.
fn final_state(
    d: &Path,
) -> (
    std::collections::BTreeMap<String, ndarray::ArrayD<f64>>,
    serde_json::Value,
) {
    let (a, meta) = checkpoint::read(&d.join(CHECKPOINT)).unwrap();
    (a, meta)
}

/// log.jsonl without the timing fields (wall-clock times differ between runs).
fn log_without_timing(d: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.join(LOG))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("timing");
            v
        })
        .collect()
}

#[test]
fn recurrent_search_resumes_bit_identically_in_process() {
    let corpus = Corpus::embedded().unwrap();
    let (da, db) = (dir("whole"), dir("stopped"));
    let mut a = search(tiny(Order::Second, 2), &corpus, &da);
    a.run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap();
    let total = a.progress.global_step;
    let mut b = search(tiny(Order::Second, 2), &corpus, &db);
    let stop = AtomicBool::new(false);
    let mut seen = 0;
    let r = b
        .run(&stop, &mut |_, _, _, _| {
            seen += 1;
            if seen == 23 {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(
        matches!(r, RnnFinish::Interrupted { epoch: 1, .. }),
        "{r:?}"
    );
    let stopped_at = b.progress.global_step;
    assert!(
        stopped_at > 0 && stopped_at < total,
        "mid-run: {stopped_at} of {total}"
    );
    drop(b);
    let mut c =
        RnnSearch::<f64>::resume(&db, &corpus, open_as::<f64>(Backend::Cpu).unwrap()).unwrap();
    // A resume, not a restart: it starts where the checkpoint stopped.
    assert_eq!(c.progress.global_step, stopped_at);
    let mut resumed_steps = 0;
    c.run(&AtomicBool::new(false), &mut |_, _, _, _| {
        resumed_steps += 1
    })
    .unwrap();
    assert_eq!(stopped_at + resumed_steps, total);
    let ((arr_a, meta_a), (arr_c, meta_c)) = (final_state(&da), final_state(&db));
    assert_eq!(arr_a, arr_c, "final tensors differ");
    assert_eq!(
        meta_a["progress"]["global_step"],
        meta_c["progress"]["global_step"]
    );
    assert_eq!(meta_a["rng"], meta_c["rng"]);
    assert_eq!(log_without_timing(&da), log_without_timing(&db));
    // Negative control: a restart (a fresh run into a fresh folder, stopped at the same step,
    // then run on without its checkpoint) is told apart by its step counter.
    let dr = dir("restart");
    let r = search(tiny(Order::Second, 2), &corpus, &dr);
    assert_eq!(r.progress.global_step, 0);
    assert_ne!(r.progress.global_step, stopped_at);
    for d in [da, db, dr] {
        std::fs::remove_dir_all(&d).ok();
    }
}

#[test]
fn recurrent_search_resumes_bit_identically_after_sigkill() {
    let bin = env!("CARGO_BIN_EXE_darts");
    let args = |d: &Path| -> Vec<String> {
        [
            "search",
            "--space",
            "rnn",
            "--nhid",
            "8",
            "--batch-size",
            "4",
            "--eval-batch-size",
            "4",
            "--bptt",
            "8",
            "--epochs",
            "2",
            "--max-train-rows",
            "200",
            "--max-eval-rows",
            "40",
            "--checkpoint-every",
            "2",
            "--dtype",
            "f64",
            "--order",
            "first",
            "--run-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([d.display().to_string()])
        .collect()
    };
    let (da, db) = (dir("cli-whole"), dir("cli-killed"));
    let ok = std::process::Command::new(bin)
        .args(args(&da))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut child = std::process::Command::new(bin)
        .args(args(&db))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a mid-run checkpoint exists (some steps done, the run not finished).
    let started = std::time::Instant::now();
    loop {
        if let Ok((_, meta)) = checkpoint::read(&db.join(CHECKPOINT)) {
            if meta["progress"]["global_step"].as_u64().unwrap_or(0) >= 6 {
                break;
            }
        }
        assert!(started.elapsed().as_secs() < 300, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed while running");
    assert!(
        !db.join("genotype.txt").exists(),
        "the run had not finished"
    );
    let (_, meta) = checkpoint::read(&db.join(CHECKPOINT)).unwrap();
    let at = meta["progress"]["global_step"].as_u64().unwrap();
    let out = std::process::Command::new(bin)
        .args(["search", "--space", "rnn", "--resume"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ((arr_a, meta_a), (arr_b, meta_b)) = (final_state(&da), final_state(&db));
    assert_eq!(
        arr_a, arr_b,
        "final tensors differ after a kill at step {at}"
    );
    assert_eq!(meta_a["rng"], meta_b["rng"]);
    assert_eq!(log_without_timing(&da), log_without_timing(&db));
    assert_eq!(
        std::fs::read_to_string(da.join("genotype.txt")).unwrap(),
        std::fs::read_to_string(db.join("genotype.txt")).unwrap()
    );
    for d in [da, db] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// A diverging run stops with an error naming the step and the tensor, and keeps its last
/// checkpoint.
#[test]
fn recurrent_search_reports_nan_naming_step_and_tensor() {
    let corpus = Corpus::embedded().unwrap();
    let d = dir("nan");
    let mut o = tiny(Order::First, 1);
    o.lr = 1e30;
    o.hyper.clip = 1e30;
    o.checkpoint_every = 1;
    let mut s = search(o, &corpus, &d);
    let e = s
        .run(&AtomicBool::new(false), &mut |_, _, _, _| {})
        .unwrap_err()
        .to_string();
    println!("{e}");
    assert!(e.contains("step ") && e.contains("row "), "{e}");
    assert!(
        ["L_train", "L_val", "||grad_w||", "alpha/recurrent"]
            .iter()
            .any(|t| e.contains(t)),
        "{e}"
    );
    // The last checkpoint is the state before the failing step, and it is finite.
    let (arrays, meta) = checkpoint::read(&d.join(CHECKPOINT)).unwrap();
    let step: u64 = e["step ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(meta["progress"]["global_step"].as_u64(), Some(step));
    assert!(arrays.values().all(|a| a.iter().all(|x| x.is_finite())));
    std::fs::remove_dir_all(&d).ok();
}
