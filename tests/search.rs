//! The search loop end to end on tiny configurations: it learns, alphas move, runs repeat
//! exactly for a seed, and an interrupted (even SIGKILLed) run resumed from its checkpoint
//! ends with bit-identical alphas and genotype, having run only the steps its checkpoint
//! had not (a restart from scratch would end in the same state, so `resume_failures` tells
//! the two apart by step counters, the random generator's position and the log's lines).

use darts::exec::cpu::CpuExecutor;
use darts::exec::Executor;
use darts::search::architect::Order;
use darts::search::run::{Dtype, Finish, Progress, Search, SearchOptions};

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

/// Search steps per epoch: the weights' half of the images in batches (the last one short).
fn steps_per_epoch(o: &SearchOptions) -> usize {
    let n = o.max_images.expect("tests cap the images");
    darts::data::search_split(n, o.train_portion)
        .0
        .len()
        .div_ceil(o.batch_size)
}

fn log_lines(d: &Path) -> Vec<String> {
    std::fs::read_to_string(d.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn progress(d: &Path) -> Progress {
    let (_, meta) = darts::search::checkpoint::read(&d.join("checkpoint.npz")).unwrap();
    serde_json::from_value(meta).unwrap()
}

/// A run folder as its process left it when stopped (killed or interrupted): the progress
/// record of its checkpoint and its log lines, timings included.
struct Stopped {
    progress: Progress,
    log: Vec<String>,
}

fn stopped(d: &Path) -> Stopped {
    Stopped {
        progress: progress(d),
        log: log_lines(d),
    }
}

/// What the process that went on with a stopped run reports about itself.
#[derive(Debug)]
struct Continued {
    /// It loaded the checkpoint (rather than starting afresh).
    resumed: bool,
    /// Steps already done when it started, and its generator's keystream position then.
    start_step: usize,
    start_rng_word_pos: u128,
    /// Steps it ran, and the global step it ended at.
    steps_run: usize,
    end_step: usize,
}

/// `Continued` from the stdout of `darts search`: its "starting|resuming at global step G
/// (...), rng word position W" line and its "done ... at global step G (K steps run in this
/// process)" line.
fn continued_from_stdout(text: &str) -> Continued {
    let number_after = |line: &str, key: &str| -> u128 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key}: {text}")) + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or_else(|_| panic!("{key}: {text}"))
    };
    let start = text
        .lines()
        .find(|l| l.contains(" at global step ") && l.contains("rng word position"))
        .unwrap_or_else(|| panic!("no start line: {text}"));
    let done = text
        .lines()
        .find(|l| l.starts_with("done in "))
        .unwrap_or_else(|| panic!("no done line: {text}"));
    Continued {
        resumed: start.starts_with("resuming"),
        start_step: number_after(start, " at global step ") as usize,
        start_rng_word_pos: number_after(start, "rng word position "),
        steps_run: number_after(done, " (") as usize,
        end_step: number_after(done, " at global step ") as usize,
    }
}

/// Why the run in `dir`, finished by the process `cont` after `before` was stopped, is not a
/// resume of it (empty when it is). A resume, unlike a restart from scratch with the same
/// seed, which reaches the same final state:
/// - starts from a stop in the middle of the run (some steps checkpointed, not all);
/// - loads the checkpoint, and starts at its global step and its generator position;
/// - runs exactly the steps the checkpoint lacked, none twice, and ends at the last step;
/// - keeps the log lines written before the stop byte for byte (their timings too, so they
///   were not recomputed), and adds one line per remaining epoch, each epoch once, in order,
///   with the global step counter at its end, equal (timings aside) to `whole`'s;
/// - ends with the step counters, generator and sampler state of the uninterrupted run.
fn resume_failures(
    before: &Stopped,
    cont: &Continued,
    dir: &Path,
    whole: &Path,
    opts: &SearchOptions,
) -> Vec<String> {
    let per_epoch = steps_per_epoch(opts);
    let total = per_epoch * opts.epochs;
    let p = &before.progress;
    let mut why = Vec::new();
    if !(0 < p.global_step && p.global_step < total && p.epoch < opts.epochs) {
        why.push(format!(
            "not stopped mid-run: checkpoint at step {} of {total}, epoch {}",
            p.global_step, p.epoch
        ));
    }
    if !cont.resumed {
        why.push("the process started afresh instead of loading the checkpoint".into());
    }
    if cont.start_step != p.global_step {
        why.push(format!(
            "started at global step {}, the checkpoint was at {}",
            cont.start_step, p.global_step
        ));
    }
    if cont.start_rng_word_pos != p.rng.word_pos {
        why.push(format!(
            "started at rng word position {}, the checkpoint's is {}",
            cont.start_rng_word_pos, p.rng.word_pos
        ));
    }
    if cont.steps_run != total - p.global_step || cont.end_step != total {
        why.push(format!(
            "ran {} steps ending at {}; the checkpoint lacked {} of {total}",
            cont.steps_run,
            cont.end_step,
            total - p.global_step
        ));
    }
    let log = log_lines(dir);
    let kept = p.log_lines.min(before.log.len());
    if log.len() < kept || log[..kept] != before.log[..kept] {
        why.push(format!(
            "the {kept} log lines written before the stop were rewritten"
        ));
    }
    let epochs: Vec<(u64, u64)> = log
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["epoch"].as_u64().unwrap(),
                v["global_step"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = (0..opts.epochs)
        .map(|e| (e as u64, ((e + 1) * per_epoch) as u64))
        .collect();
    if epochs != expected {
        why.push(format!(
            "log (epoch, global step) {epochs:?}, expected {expected:?}"
        ));
    }
    if log_without_timing(dir) != log_without_timing(whole) {
        why.push("the log differs from the uninterrupted run's".into());
    }
    let (a, b) = (progress(dir), progress(whole));
    if (
        a.epoch,
        a.global_step,
        a.adam_t,
        a.log_lines,
        &a.rng,
        &a.sampler,
    ) != (
        b.epoch,
        b.global_step,
        b.adam_t,
        b.log_lines,
        &b.rng,
        &b.sampler,
    ) {
        why.push("the final counters or random state differ from the uninterrupted run's".into());
    }
    why
}

/// `resume_failures` must report every one of `wanted` (substrings) for a restart.
fn assert_rejected(why: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(
            why.iter().any(|r| r.contains(w)),
            "a restart was not rejected for '{w}': {why:?}"
        );
    }
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
/// uninterrupted run's exactly, and the resumed run ran only the steps after the checkpoint,
/// from its generator position (`resume_failures`). Negative control: the uninterrupted run
/// is also a restart from scratch (same seed, fresh folder) that ends in the resumed run's
/// final state, so the final-state comparison alone cannot tell the two apart, but
/// `resume_failures` rejects it as a continuation of the stopped run.
#[test]
fn interrupted_and_resumed_run_is_bit_identical() {
    let opts = tiny(Order::Second);
    let whole = dir("whole");
    let mut whole_steps = Vec::new();
    let mut reference = Search::<f64>::new(opts.clone(), &whole, cpu()).unwrap();
    let (start_step, start_rng_word_pos) = (
        reference.progress.global_step,
        reference.rng_position().word_pos,
    );
    reference
        .run(&AtomicBool::new(false), &mut |e, s, _, _| {
            whole_steps.push((e, s))
        })
        .unwrap();
    let restarted = Continued {
        resumed: false,
        start_step,
        start_rng_word_pos,
        steps_run: whole_steps.len(),
        end_step: reference.progress.global_step,
    };

    let part = dir("part");
    let mut s = Search::<f64>::new(opts.clone(), &part, cpu()).unwrap();
    let stop = AtomicBool::new(false);
    let mut part_steps = Vec::new();
    let r = s
        .run(&stop, &mut |e, step, _, _| {
            part_steps.push((e, step));
            if part_steps.len() == 5 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
    assert!(matches!(r, Finish::Interrupted { .. }));
    drop(s);
    let before = stopped(&part);
    // For the second negative control: a folder holding this mid-run checkpoint and the
    // uninterrupted run's log with its first epoch's line written twice.
    let repeated = dir("repeated");
    std::fs::create_dir_all(&repeated).unwrap();
    std::fs::copy(part.join("checkpoint.npz"), repeated.join("checkpoint.npz")).unwrap();

    let mut resumed = Search::<f64>::resume(&part, cpu()).unwrap();
    let mut resumed_steps = Vec::new();
    let mut cont = Continued {
        resumed: true,
        start_step: resumed.progress.global_step,
        start_rng_word_pos: resumed.rng_position().word_pos,
        steps_run: 0,
        end_step: 0,
    };
    let done = resumed
        .run(&AtomicBool::new(false), &mut |e, s, _, _| {
            resumed_steps.push((e, s))
        })
        .unwrap();
    let Finish::Done { genotype } = done else {
        panic!("resumed run did not finish")
    };
    cont.steps_run = resumed_steps.len();
    cont.end_step = resumed.progress.global_step;
    assert_eq!(*resumed.state().unwrap(), *reference.state().unwrap());
    assert_eq!(genotype, reference.genotype());
    let why = resume_failures(&before, &cont, &part, &whole, &opts);
    assert!(why.is_empty(), "{why:?}");
    // (epoch, step in epoch) of every step: the two processes together ran the whole run's
    // steps once each, in order.
    assert_eq!([part_steps, resumed_steps].concat(), whole_steps);

    // Negative control: the restart from scratch.
    let why = resume_failures(&before, &restarted, &whole, &whole, &opts);
    eprintln!("restart instead of resume rejected for: {why:#?}");
    assert_rejected(
        &why,
        &[
            "started afresh",
            "started at global step",
            "rng word position",
            "steps ending",
            "were rewritten",
        ],
    );
    // Negative controls of the folder checks, with the resumed process's own report: a log
    // that repeats an epoch, with final counters short of the end; and a "stop" after the
    // run had finished.
    let mut log = log_lines(&whole);
    log.insert(1, log[0].clone());
    std::fs::write(repeated.join("log.jsonl"), log.join("\n") + "\n").unwrap();
    let why = resume_failures(&before, &cont, &repeated, &whole, &opts);
    assert_rejected(
        &why,
        &[
            "log (epoch, global step)",
            "differs from the",
            "final counters",
        ],
    );
    let why = resume_failures(&stopped(&whole), &cont, &part, &whole, &opts);
    assert_rejected(&why, &["not stopped mid-run"]);
}

/// SIGKILL in the middle of a run: the child is killed by the signal before it finished
/// (checkpoint of an early epoch, no genotype.txt), the last checkpoint survives, and
/// `--resume` finishes with the same final alphas and genotype as an uninterrupted run,
/// running only the steps after that checkpoint (`resume_failures`, from the resumed
/// process's own report). Negative control: the uninterrupted `darts search`, a restart from
/// scratch with the same flags, reaches the same genotype but is rejected as a continuation
/// of the killed run.
#[test]
fn sigkilled_run_resumes_to_the_same_result() {
    use std::os::unix::process::ExitStatusExt;
    let bin = env!("CARGO_BIN_EXE_darts");
    // The options the flags below set (`SearchOptions::quick` with these overrides).
    let opts = SearchOptions {
        init_channels: 2,
        layers: 3,
        epochs: 3,
        batch_size: 16,
        max_images: Some(96),
        dtype: Dtype::F64,
        ..SearchOptions::quick()
    };
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
    let run_ok = |cmd: &mut std::process::Command| -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let whole = dir("cli-whole");
    let text = run_ok(std::process::Command::new(bin).args(args(&whole)));
    assert_eq!(progress(&whole).options, opts, "the flags set `opts`");
    let total = steps_per_epoch(&opts) * opts.epochs;
    let fresh = continued_from_stdout(&text);
    assert!(
        !fresh.resumed && fresh.start_step == 0 && fresh.steps_run == total,
        "{fresh:?}"
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
    let status = child.wait().unwrap();
    // Killed by the signal (not exited on its own just before), with the run unfinished.
    assert_eq!(status.signal(), Some(9), "{status:?}");
    assert!(!killed.join("genotype.txt").exists());
    assert!(ck.exists());
    let before = stopped(&killed);
    let text = run_ok(
        std::process::Command::new(bin)
            .args(["search", "--resume"])
            .arg(&killed),
    );
    let why = resume_failures(
        &before,
        &continued_from_stdout(&text),
        &killed,
        &whole,
        &opts,
    );
    assert!(why.is_empty(), "{why:?}\n{text}");
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

    // Negative control: the restart from scratch, which reached the same genotype.
    let why = resume_failures(&before, &fresh, &whole, &whole, &opts);
    eprintln!("CLI restart instead of resume rejected for: {why:#?}");
    assert_rejected(
        &why,
        &[
            "started afresh",
            "started at global step",
            "rng word position",
            "steps ending",
            "were rewritten",
        ],
    );

    // Ctrl-C (SIGINT): the current step finishes, the checkpoint is written, the exit status
    // is 130 (as shells report SIGINT) with "epoch E of N, step S of M", and --resume ends
    // where the uninterrupted run does, running only the steps after the interrupted one.
    let stopped_dir = dir("cli-sigint");
    let child = std::process::Command::new(bin)
        .args(args(&stopped_dir))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ck = stopped_dir.join("checkpoint.npz");
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
    let before = stopped(&stopped_dir);
    assert!(
        text.contains(&format!("({} steps in all,", before.progress.global_step)),
        "the checkpoint holds the step the message names: {text}"
    );
    let text = run_ok(
        std::process::Command::new(bin)
            .args(["search", "--resume"])
            .arg(&stopped_dir),
    );
    let why = resume_failures(
        &before,
        &continued_from_stdout(&text),
        &stopped_dir,
        &whole,
        &opts,
    );
    assert!(why.is_empty(), "{why:?}\n{text}");
    assert_eq!(g(&stopped_dir), g(&whole));
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
