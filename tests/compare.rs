//! `darts compare` and the bug zoo (issue 18, items 4 and 5): porting mistakes found in public
//! DARTS ports, each built as a deliberately wrong variant of our architect
//! (darts::check::bug_zoo), must be flagged by `darts compare` against our own dump, which
//! must name the first quantity, in dependency order, that the mistake changes. Mistakes
//! whose effect shows only after the weight step are caught from `darts step` dumps.
//!
//! The controls: a dump compared with itself and with a second run agrees; the f32 dump of the
//! same inputs agrees at f32's unit roundoff and is rejected at f64's (the bounds are not
//! vacuous); the three reference dumps of the recurrent half (tests/data/rnn, the
//! unmodified reference in float64) agree with ours at every key they share.

mod common;

use darts::check::bug_zoo::Bug;
use darts::darts::names;
use darts::darts::params::{read_npz, write_npz, State};
use darts::data::Batch;
use darts::exec::{open_as, Backend};
use darts::search::architect::{Order, Paper, Pieces};
use darts::search::gradients::GradientsGraph;
use darts::search::step_graph::{OptimState, StepHyper};
use darts::search::stepper::Stepper;
use darts::step::optim::{AdamHyper, SgdHyper};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_darts"))
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-compare-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const ETA: f64 = 0.025;
const WEIGHT_DECAY: f64 = 3e-4;
const MOMENTUM: f64 = 0.9;

fn hyper() -> StepHyper {
    StepHyper {
        sgd: SgdHyper {
            momentum: MOMENTUM,
            weight_decay: WEIGHT_DECAY,
            grad_clip: 5.0,
        },
        adam: AdamHyper::architect(3e-4, 1e-3),
    }
}

/// A tiny search state with non-zero momentum buffers and Adam moments (so that leaving the
/// momentum out changes w', and Adam's update is not the sign-like first step), its two
/// batches, written to `d` as state.npz and batch.npz.
struct Inputs {
    cfg: darts::darts::network::SearchConfig,
    state: State,
    opt: OptimState,
    train: Batch,
    valid: Batch,
}

fn inputs(d: &Path) -> Inputs {
    let cfg = common::tiny(false);
    let state = common::state(&cfg, 8);
    let mut rng = ChaCha8Rng::seed_from_u64(81);
    let mut noise = |shape: &[usize], s: f64| {
        ArrayD::from_shape_simple_fn(IxDyn(shape), || s * rng.sample::<f64, _>(StandardNormal))
    };
    let layout = cfg.layout().unwrap();
    let bufs: Vec<ArrayD<f64>> = layout
        .weights()
        .map(|(_, shape, _)| noise(shape, 0.05))
        .collect();
    let k = cfg.k();
    let m = [noise(&[k, 8], 1e-3), noise(&[k, 8], 1e-3)];
    let v = [
        noise(&[k, 8], 1e-3).mapv(|x| x * x),
        noise(&[k, 8], 1e-3).mapv(|x| x * x),
    ];
    let mut arrays: BTreeMap<String, ArrayD<f64>> = state
        .tensors
        .iter()
        .map(|(n, a)| (format!("sd/{n}"), a.clone()))
        .collect();
    arrays.insert(names::ALPHA[0].into(), state.alpha_normal.clone());
    arrays.insert(names::ALPHA[1].into(), state.alpha_reduce.clone());
    for ((n, _, _), b) in layout.weights().zip(&bufs) {
        arrays.insert(format!("momentum_buffer/{n}"), b.clone());
    }
    for (c, cell) in names::CELLS.into_iter().enumerate() {
        arrays.insert(names::adam_m(cell), m[c].clone());
        arrays.insert(names::adam_v(cell), v[c].clone());
    }
    arrays.insert("adam_step".into(), ArrayD::from_elem(IxDyn(&[]), 3.0));
    write_npz(
        &d.join("state.npz"),
        arrays.iter().map(|(k, v)| (k.as_str(), v)),
    )
    .unwrap();
    let (train, valid) = (common::batch(2, 8, 10, 1), common::batch(3, 8, 10, 2));
    let labels = |b: &Batch| {
        b.onehot
            .map_axis(ndarray::Axis(1), |r| {
                r.iter().position(|&x| x == 1.0).unwrap() as f64
            })
            .into_dyn()
    };
    write_npz(
        &d.join("batch.npz"),
        [
            ("x_train", &train.x),
            ("y_train", &labels(&train)),
            ("x_valid", &valid.x),
            ("y_valid", &labels(&valid)),
        ],
    )
    .unwrap();
    let opt = OptimState {
        sgd_buf: Some(bufs),
        adam_m: [Some(m[0].clone()), Some(m[1].clone())],
        adam_v: [Some(v[0].clone()), Some(v[1].clone())],
        adam_t: [3, 3],
    };
    Inputs {
        cfg,
        state,
        opt,
        train: Batch {
            x: train.x,
            onehot: train.onehot,
        },
        valid: Batch {
            x: valid.x,
            onehot: valid.onehot,
        },
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `darts gradients` (f64 unless `extra` says otherwise) on the inputs in `d`, to `out`.
fn gradients(d: &Path, out: &str, extra: &[&str]) {
    run_ok(
        darts()
            .arg("gradients")
            .arg("--state")
            .arg(d.join("state.npz"))
            .arg("--batch")
            .arg(d.join("batch.npz"))
            .arg("--out")
            .arg(d.join(out))
            .args(extra),
    );
}

/// `darts step --order second --steps 1` on the inputs in `d`, to `out`.
fn step(d: &Path, out: &str) {
    run_ok(
        darts()
            .args(["step", "--order", "second", "--state"])
            .arg(d.join("state.npz"))
            .arg("--batch")
            .arg(d.join("batch.npz"))
            .arg("--out")
            .arg(d.join(out)),
    );
}

/// `darts compare a b [extra]`: (agrees, stdout + stderr).
fn compare(d: &Path, a: &str, b: &str, extra: &[&str]) -> (bool, String) {
    let out = darts()
        .arg("compare")
        .arg(d.join(a))
        .arg(d.join(b))
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The key named on the "first disagreement" line.
fn first_key(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("first disagreement: "))
        .unwrap_or_else(|| panic!("no disagreement line:\n{text}"));
    line["first disagreement: ".len()..]
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

/// The gradients dump of the architect `pieces` at the inputs (no recorded inputs, as
/// another implementation's dump), written to `d/out`.
fn zoo_gradients(d: &Path, inp: &Inputs, pieces: &dyn Pieces, out: &str) {
    let gg = GradientsGraph::build_with(
        pieces,
        &inp.cfg,
        inp.train.x.shape(),
        inp.valid.x.shape(),
        MOMENTUM,
        WEIGHT_DECAY,
    )
    .unwrap();
    let mut ex = open_as::<f64>(Backend::Cpu).unwrap();
    let e = gg
        .evaluate(
            ex.as_mut(),
            &inp.cfg,
            &inp.state,
            &inp.opt,
            &inp.train,
            &inp.valid,
            ETA,
        )
        .unwrap();
    write_npz(&d.join(out), e.arrays.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
}

/// The one-iteration step dump of the architect variant `bug`, written to `d/out`.
fn zoo_step(d: &Path, inp: &Inputs, bug: Bug, out: &str) {
    let ex = open_as::<f64>(Backend::Cpu).unwrap();
    let mut s = Stepper::new(
        inp.cfg,
        Order::Second,
        hyper(),
        ex,
        inp.state.clone(),
        inp.opt.clone(),
    )
    .unwrap()
    .with_pieces(Box::new(bug))
    .reporting_restored();
    let rep = s.step(&inp.train, &inp.valid, ETA).unwrap();
    s.sync_host().unwrap();
    let mut arrays = s.iteration_arrays(0, &rep);
    arrays.extend(s.optimiser_arrays());
    write_npz(&d.join(out), arrays.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
}

/// The stage (dump-key prefix) each mistake must first change, in a gradients dump and in a
/// step dump. In a step dump a mistake in the architecture gradient changes alpha' and all
/// that follows; the bound on alpha' multiplies the finite difference's 1/R amplification
/// into a model whose M is the largest value upstream, loose enough that the first key
/// flagged may be a later one of the same iteration, so only the iteration is asserted there.
fn expected_stage(bug: Bug) -> (&'static str, &'static str) {
    match bug {
        Bug::Precedence | Bug::FdAtUnrolled => ("hvp_fd/", "iter0/"),
        Bug::NoWeightDecay | Bug::NoMomentum | Bug::ClippedUnrolled { .. } => {
            ("unrolled_w/", "iter0/")
        }
        Bug::WrongNorm => ("fd_r", "iter0/"),
        Bug::RestoreAlongOther => ("", "iter0/w_restored/"),
    }
}

#[test]
fn compare_names_the_first_quantity_each_porting_mistake_changes() {
    let d = dir("zoo");
    let inp = inputs(&d);
    gradients(&d, "ours.npz", &[]);
    step(&d, "ours_step.npz");
    // A clip the unrolled step's gradient exceeds: half its norm.
    let ours = read_npz(&d.join("ours.npz")).unwrap();
    let gnorm = ours
        .iter()
        .filter(|(k, _)| k.starts_with("grad_w_train/"))
        .flat_map(|(_, v)| v.iter().map(|x| x * x).collect::<Vec<_>>())
        .sum::<f64>()
        .sqrt();
    for bug in Bug::all(gnorm / 2.0) {
        let name = bug.name().to_string();
        let (grad_stage, step_stage) = expected_stage(bug);
        zoo_gradients(&d, &inp, &bug, &format!("{name}.npz"));
        let (agree, text) = compare(&d, "ours.npz", &format!("{name}.npz"), &[]);
        if bug.shows_in_gradients() {
            assert!(!agree, "{name}: not flagged in the gradients dump\n{text}");
            let key = first_key(&text);
            assert!(
                key.starts_with(grad_stage),
                "{name}: first disagreement at {key}, expected {grad_stage}*\n{text}"
            );
            println!("{name}: gradients dump first disagrees at {key}");
        } else {
            assert!(agree, "{name}: its gradients dump is the paper's\n{text}");
        }
        zoo_step(&d, &inp, bug, &format!("{name}_step.npz"));
        let (agree, text) = compare(&d, "ours_step.npz", &format!("{name}_step.npz"), &[]);
        if bug.shows_in_gradients() {
            // Reported, not required: the gradients dump has named the stage; through Adam
            // the change to alpha' may stay inside the step dump's looser bounds.
            match agree {
                true => println!("{name}: step dump within its bounds"),
                false => {
                    let key = first_key(&text);
                    assert!(key.starts_with(step_stage), "{name}: {key}\n{text}");
                    println!("{name}: step dump first disagrees at {key}");
                }
            }
            continue;
        }
        assert!(!agree, "{name}: not flagged in the step dump\n{text}");
        let key = first_key(&text);
        assert!(
            key.starts_with(step_stage),
            "{name}: first step disagreement at {key}, expected {step_stage}*\n{text}"
        );
        println!("{name}: step dump first disagrees at {key}");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn compare_accepts_agreeing_dumps_and_its_bounds_are_not_vacuous() {
    let d = dir("controls");
    let inp = inputs(&d);
    gradients(&d, "a.npz", &[]);
    gradients(&d, "f32.npz", &["--dtype", "f32"]);
    // The library's own evaluation, written without recorded inputs (as another
    // implementation's dump would be): compared against ours, which records them.
    zoo_gradients(&d, &inp, &Paper, "lib.npz");
    for (a, b) in [
        ("a.npz", "a.npz"),
        ("a.npz", "lib.npz"),
        ("lib.npz", "a.npz"),
    ] {
        let (agree, text) = compare(&d, a, b, &[]);
        assert!(agree, "{a} vs {b}\n{text}");
        assert!(text.contains("agree: all"), "{text}");
    }
    // Round-off of f32 is within the f32 bounds and beyond the f64 ones.
    let (agree, text) = compare(&d, "a.npz", "f32.npz", &["--dtype", "f32"]);
    assert!(agree, "{text}");
    let (agree, text) = compare(&d, "a.npz", "f32.npz", &["--dtype", "f64"]);
    assert!(!agree, "f32 round-off passed f64 bounds\n{text}");
    println!(
        "f32 round-off first exceeds the f64 bounds at {}",
        first_key(&text)
    );
    // Step dumps: itself agrees.
    step(&d, "s.npz");
    let (agree, text) = compare(&d, "s.npz", "s.npz", &[]);
    assert!(agree, "{text}");
    // Neither dump records its inputs: a clear refusal.
    let (agree, text) = compare(&d, "lib.npz", "lib.npz", &[]);
    assert!(!agree && text.contains("records the inputs"), "{text}");
    std::fs::remove_dir_all(&d).ok();
}

/// The unmodified reference's float64 dumps of the recurrent half agree with ours at every
/// shared key, through the command itself.
#[test]
fn compare_agrees_with_the_reference_dumps() {
    let d = dir("reference");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn");
    for (case, eta, clip, wd) in [
        ("clip_active", "20", "0.25", "5e-7"),
        ("clip_inactive", "2", "50", "1e-3"),
        ("paper_init", "20", "0.25", "5e-7"),
    ] {
        let f = fixtures.join(case);
        let out = d.join(format!("{case}.npz"));
        run_ok(
            darts()
                .args(["gradients", "--space", "rnn", "--eta", eta, "--clip", clip])
                .args(["--weight-decay", wd, "--state"])
                .arg(f.join("state.npz"))
                .arg("--batch")
                .arg(f.join("batch.npz"))
                .arg("--out")
                .arg(&out),
        );
        let text = run_ok(
            darts()
                .arg("compare")
                .arg(&out)
                .arg(f.join("reference.npz")),
        );
        assert!(text.contains("agree: all"), "{case}\n{text}");
        assert!(!text.contains("not judged\n"), "{case}\n{text}");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// A second, independent implementation of the convolutional half: PyTorch in float64
/// (benches/conv_gradients_dump.py on benches/pytorch_step.py's network, written from the
/// reference notes), dumped once into tests/data/cnn/pytorch/ at a state with momentum
/// buffers and alphas away from uniform. Ours agrees with it at every key within the derived
/// bounds, through the command.
#[test]
fn compare_agrees_with_an_independent_pytorch_dump() {
    let d = dir("pytorch");
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cnn/pytorch");
    let out = d.join("ours.npz");
    run_ok(
        darts()
            .arg("gradients")
            .arg("--state")
            .arg(f.join("state.npz"))
            .arg("--batch")
            .arg(f.join("batch.npz"))
            .arg("--out")
            .arg(&out),
    );
    let text = run_ok(darts().arg("compare").arg(&out).arg(f.join("pytorch.npz")));
    assert!(text.contains("agree: all 1663 judged keys"), "{text}");
    assert!(!text.contains("only in B"), "{text}");
    std::fs::remove_dir_all(&d).ok();
}
