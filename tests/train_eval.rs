//! Evaluation training (cnn/train.py): the learning-rate and drop-path schedules, a tiny
//! training run that learns, non-finite values stopping the run, option validation, and the
//! `darts train` command end to end (genotype text round trip, parameter count, bad input).

use darts::darts::eval_network::count_parameters;
use darts::darts::genotype::{derive, named};
use darts::data::embedded_subset;
use darts::train::{
    drop_path_prob_at, lr_at, train_on, Dtype, EpochRecord, Reporting, TrainError, TrainOptions,
};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::f64::consts::PI;
use std::path::PathBuf;
use std::process::Command;

fn darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_darts"))
}

/// A fresh, empty folder under the system temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-train-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A few-second configuration: C = 4, 3 cells (reductions at cells 1 and 2, the auxiliary head
/// on the last cell), batch 32 over the first 256 embedded training images.
fn tiny() -> TrainOptions {
    TrainOptions {
        batch_size: 32,
        epochs: 3,
        init_channels: 4,
        layers: 3,
        train_limit: Some(256),
        test_limit: Some(64),
        ..TrainOptions::reference()
    }
}

/// CosineAnnealingLR(T_max = E, eta_min = 0) stepped before each epoch:
/// lr_e = lr_0 (1 + cos(pi (e + 1) / E)) / 2, i.e. 0.0125 (1 + cos(pi / 600)) for the
/// reference's first epoch and exactly 0 in the last; drop path p e / E.
#[test]
fn lr_schedule_and_drop_path_ramp() {
    let first = lr_at(0.025, 0, 600);
    let want = 0.0125 * (1.0 + (PI / 600.0).cos());
    assert!(
        (first - want).abs() <= 4.0 * f64::EPSILON * want,
        "{first} vs {want}"
    );
    assert!((first - 0.0249998).abs() < 1e-7, "{first}");
    assert_eq!(lr_at(0.025, 599, 600), 0.0);
    // General lr_0 and E, including E = 1 (the only epoch is the last).
    for (lr0, e) in [(0.1, 7), (0.025, 3), (1.0, 1), (0.05, 50)] {
        let first = lr_at(lr0, 0, e);
        let want = lr0 / 2.0 * (1.0 + (PI / e as f64).cos());
        assert!(
            (first - want).abs() <= 4.0 * f64::EPSILON * lr0,
            "{first} vs {want}"
        );
        assert_eq!(lr_at(lr0, e - 1, e), 0.0, "lr0 {lr0}, E {e}");
        for k in 1..e {
            assert!(
                lr_at(lr0, k, e) < lr_at(lr0, k - 1, e),
                "not decreasing at {k}"
            );
        }
    }
    // Midpoint: cos(pi/2) = 0, so lr_0 / 2 (up to the rounding of cos near pi/2).
    assert!((lr_at(0.025, 299, 600) - 0.0125).abs() < 1e-17);
    assert_eq!(drop_path_prob_at(0.2, 0, 600), 0.0);
    assert!((drop_path_prob_at(0.2, 599, 600) - 0.2 * 599.0 / 600.0).abs() < 1e-16);
    assert!((drop_path_prob_at(0.2, 599, 600) - 0.19967).abs() < 1e-5);
    assert_eq!(drop_path_prob_at(0.2, 300, 600), 0.1);
}

fn check_schedule(recs: &[EpochRecord], o: &TrainOptions) {
    assert_eq!(recs.len(), o.epochs);
    for r in recs {
        assert_eq!(r.lr, lr_at(o.learning_rate, r.epoch, o.epochs));
        assert_eq!(
            r.drop_path_prob,
            drop_path_prob_at(o.drop_path_prob, r.epoch, o.epochs)
        );
    }
}

/// Three epochs with every training feature on (auxiliary head, cutout, drop path) in f32:
/// every reported figure is finite, the schedules are the reference's, the training loss of
/// the last epoch is below the first epoch's, the run folder holds one log line per epoch,
/// and the same seed gives the same run.
#[test]
fn tiny_training_run_learns_and_is_finite() {
    let (train, test) = embedded_subset();
    let o = TrainOptions {
        auxiliary: true,
        cutout: true,
        ..tiny()
    };
    let dir = temp_dir("tiny");
    let mut seen = Vec::new();
    let mut cb = |r: &EpochRecord| seen.push(r.clone());
    let rep = train_on(
        &o,
        &named("DARTS_V2").unwrap(),
        &train,
        &test,
        Reporting {
            run_dir: Some(dir.clone()),
            progress: false,
            on_epoch: Some(&mut cb),
        },
    )
    .unwrap();
    for r in &rep.epochs {
        println!("{r:?}");
        for v in [
            r.train_loss,
            r.train_acc,
            r.test_loss,
            r.test_acc,
            r.mean_grad_norm,
        ] {
            assert!(v.is_finite(), "{r:?}");
        }
        assert!((0.0..=100.0).contains(&r.train_acc) && (0.0..=100.0).contains(&r.test_acc));
        assert_eq!(r.steps, 8);
    }
    assert_eq!(seen, rep.epochs);
    check_schedule(&rep.epochs, &o);
    let (l0, l2) = (rep.epochs[0].train_loss, rep.epochs[2].train_loss);
    assert!(l2 < l0, "training loss did not fall: {l0} -> {l2}");
    assert_eq!(rep.final_test_acc, rep.epochs[2].test_acc);
    assert_eq!((rep.train_images, rep.test_images), (256, 64));
    let cfg = o.eval_config(&named("DARTS_V2").unwrap());
    assert_eq!(rep.parameters, count_parameters(&cfg.layout().unwrap()));
    assert!(rep.parameters_with_aux > rep.parameters);

    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    // serde_json's default float parsing may be off by an ulp, so compare the text.
    let want: Vec<String> = rep
        .epochs
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    assert_eq!(log.lines().collect::<Vec<_>>(), want);
    for f in ["options.json", "weights.npz", "summary.json"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let sd = darts::darts::params::read_npz(&dir.join("weights.npz")).unwrap();
    assert!(sd.contains_key("sd/auxiliary_head.classifier.weight"));
    assert_eq!(
        sd["sd/stem.1.num_batches_tracked"].sum(),
        (3 * rep.epochs[0].steps) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Same options and seed: the same run, figure for figure (seconds aside).
    let one = TrainOptions {
        epochs: 1,
        train_limit: Some(64),
        test_limit: Some(32),
        ..o
    };
    let mut runs = (0..2).map(|_| {
        let r = train_on(
            &one,
            &named("DARTS_V2").unwrap(),
            &train,
            &test,
            Reporting::default(),
        );
        let mut e = r.unwrap().epochs[0].clone();
        e.seconds = 0.0;
        e
    });
    assert_eq!(runs.next(), runs.next());
}

/// An absurd learning rate blows the weights up within a few steps; the run stops with an
/// error naming the epoch, the step and the tensor instead of training on NaN.
#[test]
fn non_finite_values_stop_training_with_epoch_step_and_tensor() {
    let (train, test) = embedded_subset();
    let o = TrainOptions {
        learning_rate: 1e38,
        epochs: 2,
        train_limit: Some(128),
        dtype: Dtype::F32,
        ..tiny()
    };
    {
        let err = train_on(
            &o,
            &named("DARTS_V1").unwrap(),
            &train,
            &test,
            Reporting::default(),
        )
        .unwrap_err();
        println!("{err}");
        match &err {
            TrainError::NonFinite {
                epoch,
                step,
                tensor,
                value,
                ..
            } => {
                assert_eq!(*epoch, 0);
                assert!(*step >= 1 && *step < 4, "step {step}");
                // The step reads back the loss and the total gradient norm, which is finite
                // only if every gradient is.
                assert!(tensor == "loss" || tensor == "||grad||", "{tensor}");
                assert!(!value.is_finite());
            }
            other => panic!("expected NonFinite, got {other}"),
        }
        let text = err.to_string();
        assert!(text.contains("epoch 0, step"), "{text}");
    }
}

/// Options the reference cannot run are errors naming the option or the network's problem.
#[test]
fn bad_options_are_errors() {
    let (train, test) = embedded_subset();
    let g = named("DARTS_V2").unwrap();
    let cases: Vec<(TrainOptions, &str)> = vec![
        (
            TrainOptions {
                batch_size: 0,
                ..tiny()
            },
            "batch_size",
        ),
        (
            TrainOptions {
                epochs: 0,
                ..tiny()
            },
            "epochs",
        ),
        (
            TrainOptions {
                momentum: 1.0,
                ..tiny()
            },
            "momentum",
        ),
        (
            TrainOptions {
                drop_path_prob: 1.0,
                ..tiny()
            },
            "drop_path_prob",
        ),
        (
            TrainOptions {
                grad_clip: 0.0,
                ..tiny()
            },
            "grad_clip",
        ),
        (
            TrainOptions {
                learning_rate: f64::NAN,
                ..tiny()
            },
            "learning_rate",
        ),
        (
            TrainOptions {
                train_limit: Some(0),
                ..tiny()
            },
            "train_limit",
        ),
        // One cell: the auxiliary head would read a 16x16 map, which does not pool to 2x2.
        (
            TrainOptions {
                layers: 1,
                auxiliary: true,
                ..tiny()
            },
            "auxiliary head",
        ),
    ];
    for (o, want) in cases {
        let err = train_on(&o, &g, &train, &test, Reporting::default()).unwrap_err();
        println!("{err}");
        assert!(err.to_string().contains(want), "{err} should name {want}");
    }
}

/// The text a search prints (`Genotype::to_string` of a genotype derived from random alphas)
/// goes into `darts train --genotype` unchanged: the run succeeds, echoes the same genotype,
/// prints the final test accuracy and the parameter count as count_parameters_in_MB does.
#[test]
fn genotype_text_round_trips_into_train_cli() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut alpha =
        || ArrayD::from_shape_simple_fn(IxDyn(&[14, 8]), || StandardNormal.sample(&mut rng));
    let g = derive(&alpha(), &alpha(), 4, 4);
    let text = g.to_string();
    assert_eq!(text.parse::<darts::darts::genotype::Genotype>().unwrap(), g);
    let dir = temp_dir("cli");
    let out = darts()
        .args(["train", "--genotype", &text])
        .args(["--init-channels", "4", "--layers", "3", "--epochs", "1"])
        .args([
            "--batch-size",
            "32",
            "--train-limit",
            "64",
            "--test-limit",
            "32",
        ])
        .args(["--dtype", "f32", "--auxiliary"])
        .arg("--run-dir")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    assert!(stdout.contains(&format!("genotype: {text}")), "{stdout}");
    assert!(stdout.contains("final test accuracy: "), "{stdout}");
    let o = TrainOptions {
        init_channels: 4,
        layers: 3,
        auxiliary: true,
        ..TrainOptions::reference()
    };
    let n = count_parameters(&o.eval_config(&g).layout().unwrap());
    let want = format!("{:.6} M parameters", n as f64 / 1e6);
    assert!(stdout.contains(&want), "{want} not in {stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.join("log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reference's published parameter count, printed for the paper preset's network
/// (DARTS_V2, C = 36, 20 cells): 3,349,342 parameters without the auxiliary head.
#[test]
fn paper_preset_counts_like_the_reference() {
    let o = TrainOptions::paper();
    assert!(o.auxiliary && o.cutout && o.epochs == 600 && o.batch_size == 96);
    assert_eq!((o.init_channels, o.layers), (36, 20));
    let layout = o.eval_config(&named("DARTS").unwrap()).layout().unwrap();
    assert_eq!(count_parameters(&layout), 3_349_342);
    assert_eq!(
        format!("{:.6} M parameters", 3_349_342.0 / 1e6),
        "3.349342 M parameters"
    );
    let q = TrainOptions::quick();
    assert_eq!(q.data, darts::train::DataSource::Embedded);
    assert!(!q.auxiliary && !q.cutout && q.drop_path_prob == 0.2);
}

/// Bad genotype text fails with a non-zero exit and an error that points at the token;
/// an unknown name or operation is named.
#[test]
fn bad_genotype_text_is_an_error_pointing_at_the_token() {
    let cases = [
        (
            "Genotype(normal=[('sep_conv_3x3', 0) ('sep_conv_3x3', 1)], normal_concat=[2], \
             reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])",
            "column 38 (near `(`)",
        ),
        ("DARTS_V3", "unknown genotype name 'DARTS_V3'"),
        (
            "Genotype(normal=[('sep_conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], \
             reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])",
            "'sep_conv_9x9'",
        ),
    ];
    for (text, want) in cases {
        let out = darts()
            .args(["train", "--genotype", text, "--epochs", "1"])
            .args(["--run-dir", "/nonexistent/never-created"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stderr}");
        assert!(!out.status.success(), "{text} was accepted");
        assert!(stderr.contains(want), "{want} not in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// The training step graph (src/train/graphs.rs: loss with the auxiliary head, gradients,
/// clip, SGD with momentum and weight decay, BN running statistics, all in executor
/// variables) against the host oracle (src/check/oracle/train.rs: the same updates as f64
/// ndarray arithmetic), in f64, over 5 steps, each from the oracle's state.
///
/// Tolerance ([`train_step_bound`]): forward and backward passes are the same graph on the
/// same executor, bit for bit given equal inputs; the two differ in the summation order of
/// the clip norm, a sum of N = (number of parameter elements) terms, within gamma_N relative,
/// which scales the update by 1 + gamma_N; the few elementwise operations after it (decay,
/// momentum, learning rate, BN averages: at most 8 in sequence) add at most u each. So every
/// tensor agrees to gamma_N + 8 u of its largest magnitude; the bound is asserted to be at
/// most 1e-2 of the change each step makes.
#[test]
fn training_step_graph_equals_oracle_f64() {
    use darts::check::oracle::train::OracleTrain;
    use darts::exec::cpu::CpuExecutor;
    use darts::exec::Scalar;
    use darts::step::optim::SgdHyper;
    use darts::train::trainer::Trainer;
    use rand::SeedableRng;
    fn train_step_bound(n: usize) -> f64 {
        let u = f64::UNIT_ROUNDOFF;
        let nu = n as f64 * u;
        nu / (1.0 - nu) + 8.0 * u
    }
    let (train, _) = embedded_subset();
    let o = TrainOptions {
        auxiliary: true,
        batch_size: 8,
        grad_clip: 0.5,
        ..tiny()
    };
    let cfg = o.eval_config(&named("DARTS_V2").unwrap());
    let layout = cfg.layout().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let st = darts::darts::init::init_state(&layout, 1, &mut rng);
    let n_params: usize = layout
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    let bound = train_step_bound(n_params);
    let sgd = SgdHyper {
        momentum: o.momentum,
        weight_decay: o.weight_decay,
        grad_clip: o.grad_clip,
    };
    let mut ours = Trainer::<f64>::new(
        cfg.clone(),
        st.tensors.clone(),
        sgd,
        (false, o.auxiliary_weight),
        Box::new(CpuExecutor::new()),
    )
    .unwrap();
    let mut oracle = OracleTrain::new(
        &cfg,
        st.tensors,
        (o.momentum, o.weight_decay, o.grad_clip),
        8,
        o.auxiliary_weight,
    )
    .unwrap();
    let mut exec = CpuExecutor::<f64>::new();
    let mut worst = 0f64;
    let lr = 0.05;
    for k in 0..5 {
        ours.set_state(oracle.state.clone(), oracle.sgd.buf.clone());
        let before = oracle.state.clone();
        let idx: Vec<usize> = (8 * k..8 * k + 8).collect();
        let batch = darts::data::make_batch(&train, &idx, None, &mut rng, 10).unwrap();
        let (loss, _, norm) = ours.step(&batch, lr, 1.0, &mut rng, 0, k).unwrap();
        ours.sync_host().unwrap();
        let (want_loss, want_norm) = oracle.step(&mut exec, &batch, lr).unwrap();
        assert!(
            (loss - want_loss).abs() <= bound * want_loss.abs(),
            "step {k}: loss"
        );
        assert!(
            (norm - want_norm).abs() <= bound * want_norm.abs(),
            "step {k}: norm"
        );
        let bufs = ours.sgd_buf.clone().unwrap();
        let want_bufs = oracle.sgd.buf.clone().unwrap();
        let pairs = ours
            .state
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.clone(),
                    oracle.state[k].clone(),
                    before.get(k).cloned(),
                )
            })
            .chain(
                bufs.into_iter()
                    .zip(want_bufs)
                    .enumerate()
                    .map(|(i, (a, b))| (format!("momentum buffer {i}"), a, b, None)),
            );
        for (name, a, b, old) in pairs {
            let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
            let err = a
                .iter()
                .zip(b.iter())
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                err <= bound * scale,
                "step {k} {name}: {:e} > {bound:e}",
                err / scale
            );
            worst = worst.max(err / scale);
            if let Some(old) = old.filter(|_| !name.ends_with("num_batches_tracked")) {
                let change = b
                    .iter()
                    .zip(old.iter())
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
                    / scale;
                if change > 0.0 {
                    assert!(
                        bound <= 1e-2 * change,
                        "{name}: bound {bound:e} vs change {change:e}"
                    );
                }
            }
        }
    }
    println!(
        "training step graph vs oracle: worst relative difference {worst:.2e} (bound {bound:.2e})"
    );
}
