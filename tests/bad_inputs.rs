//! The binary on bad inputs, from a table: every row must exit non-zero (and not with a
//! panic's 101, nor print "panicked"), name its cause (the flag, file, key or shape) in its
//! message, and leave no file created, changed or left behind, neither in the working
//! directory (where default run folders would go) nor beside the input files.

mod common;

use darts::darts::params::{read_npz, write_npz};
use ndarray::{ArrayD, IxDyn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Every file under `dir` with its length and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
        }
    }
    out
}

/// The arrays of an npz file by key.
type Arrays = BTreeMap<String, ArrayD<f64>>;

struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A copy of `state.npz` edited by `edit`, saved as `name`.
    fn state_variant(&self, name: &str, edit: impl FnOnce(&mut BTreeMap<String, ArrayD<f64>>)) {
        let mut a = read_npz(&self.dir.join("state.npz")).unwrap();
        edit(&mut a);
        write_npz(&self.dir.join(name), a.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    }

    fn batch_variant(&self, name: &str, edit: impl FnOnce(&mut BTreeMap<String, ArrayD<f64>>)) {
        let mut a = read_npz(&self.dir.join("batch.npz")).unwrap();
        edit(&mut a);
        write_npz(&self.dir.join(name), a.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    }
}

fn fixtures() -> Fixtures {
    let dir = std::env::temp_dir().join(format!("darts-bad-inputs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = common::tiny(false);
    let st = common::state(&cfg, 8);
    st.to_npz(&dir.join("state.npz")).unwrap();
    let (t, v) = (common::batch(2, 8, 10, 1), common::batch(3, 8, 10, 2));
    let label = |b: &darts::data::Batch| {
        b.onehot
            .map_axis(ndarray::Axis(1), |r| {
                r.iter().position(|&x| x == 1.0).unwrap() as f64
            })
            .into_dyn()
    };
    let (yt, yv) = (label(&t), label(&v));
    write_npz(
        &dir.join("batch.npz"),
        [
            ("x_train", &t.x),
            ("y_train", &yt),
            ("x_valid", &v.x),
            ("y_valid", &yv),
        ],
    )
    .unwrap();
    let f = Fixtures { dir };
    let first_weight = "sd/cells.0._ops.0._ops.4.op.1.weight";
    f.state_variant("no_prefix.npz", |a| {
        let keys: Vec<String> = a.keys().cloned().collect();
        for k in keys {
            if let Some(n) = k.strip_prefix("sd/") {
                let v = a.remove(&k).unwrap();
                a.insert(n.to_string(), v);
            }
        }
    });
    f.state_variant("unknown_key.npz", |a| {
        a.insert("extra/thing".into(), ArrayD::zeros(IxDyn(&[3])));
    });
    f.state_variant("unknown_momentum.npz", |a| {
        a.insert(
            "momentum_buffer/no.such.weight".into(),
            ArrayD::zeros(IxDyn(&[3])),
        );
    });
    f.state_variant("alpha_shape.npz", |a| {
        a.insert("alpha/reduce".into(), ArrayD::zeros(IxDyn(&[14, 7])));
    });
    f.state_variant("nan_weight.npz", |a| {
        a.get_mut(first_weight).unwrap().as_slice_mut().unwrap()[0] = f64::NAN;
    });
    f.state_variant("weight_shape.npz", |a| {
        a.insert(first_weight.into(), ArrayD::zeros(IxDyn(&[2, 2])));
    });
    f.state_variant("one_momentum.npz", |a| {
        let w = a[first_weight].clone();
        a.insert(format!("momentum_buffer/{}", &first_weight[3..]), w);
    });
    f.state_variant("adam_no_step.npz", |a| {
        a.insert("adam_m/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert("adam_v/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
    });
    f.state_variant("adam_step_zero.npz", |a| {
        a.insert("adam_m/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert("adam_v/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert("adam_step/reduce".into(), ArrayD::zeros(IxDyn(&[])));
    });
    f.state_variant("adam_step_frac.npz", |a| {
        a.insert("adam_m/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert("adam_v/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert(
            "adam_step/reduce".into(),
            ArrayD::from_elem(IxDyn(&[]), 1.5),
        );
    });
    f.state_variant("adam_unknown.npz", |a| {
        a.insert("adam_x/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
    });
    f.state_variant("adam_shape.npz", |a| {
        a.insert("adam_m/reduce".into(), ArrayD::zeros(IxDyn(&[14, 9])));
        a.insert("adam_v/reduce".into(), ArrayD::zeros(IxDyn(&[14, 8])));
        a.insert("adam_step".into(), ArrayD::from_elem(IxDyn(&[]), 2.0));
    });
    f.batch_variant("no_y_train.npz", |a| {
        a.remove("y_train");
    });
    f.batch_variant("bad_label.npz", |a| {
        a.insert("y_train".into(), ArrayD::from_elem(IxDyn(&[2]), 12.0));
    });
    f.batch_variant("nan_pixel.npz", |a| {
        a.get_mut("x_valid").unwrap().as_slice_mut().unwrap()[5] = f64::INFINITY;
    });
    f.batch_variant("extra_batch_key.npz", |a| {
        a.insert("x_test".into(), ArrayD::zeros(IxDyn(&[1, 3, 8, 8])));
    });
    f.batch_variant("label_count.npz", |a| {
        a.insert("y_valid".into(), ArrayD::zeros(IxDyn(&[5])));
    });
    f.batch_variant("x_rank.npz", |a| {
        a.insert("x_train".into(), ArrayD::zeros(IxDyn(&[2, 3, 8])));
    });
    // The recurrent space: the reference fixture and its variants.
    let rnn = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rnn/clip_active");
    std::fs::copy(rnn.join("state.npz"), f.dir.join("rnn_state.npz")).unwrap();
    std::fs::copy(rnn.join("batch.npz"), f.dir.join("rnn_batch.npz")).unwrap();
    let rnn_variant = |from: &str, name: &str, edit: &dyn Fn(&mut Arrays)| {
        let mut a = read_npz(&f.dir.join(from)).unwrap();
        edit(&mut a);
        write_npz(&f.dir.join(name), a.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    };
    rnn_variant("rnn_state.npz", "rnn_untied.npz", &|a| {
        a.get_mut("sd/decoder.weight")
            .unwrap()
            .as_slice_mut()
            .unwrap()[3] += 1e-9;
    });
    rnn_variant("rnn_state.npz", "rnn_alpha_shape.npz", &|a| {
        a.insert("alpha/recurrent".into(), ArrayD::zeros(IxDyn(&[36, 8])));
    });
    rnn_variant("rnn_state.npz", "rnn_no_alpha.npz", &|a| {
        a.remove("alpha/recurrent");
    });
    rnn_variant("rnn_state.npz", "rnn_no_decoder.npz", &|a| {
        a.remove("sd/decoder.weight");
    });
    rnn_variant("rnn_batch.npz", "rnn_b1.npz", &|a| {
        for k in ["x_train", "y_train"] {
            a.insert(k.into(), ArrayD::zeros(IxDyn(&[5, 1])));
        }
        a.insert("hidden_train".into(), ArrayD::zeros(IxDyn(&[1, 1, 8])));
    });
    rnn_variant("rnn_batch.npz", "rnn_bad_token.npz", &|a| {
        a.get_mut("y_valid").unwrap().as_slice_mut().unwrap()[2] = 50.0;
    });
    rnn_variant("rnn_batch.npz", "rnn_frac_token.npz", &|a| {
        a.get_mut("x_train").unwrap().as_slice_mut().unwrap()[0] = 1.5;
    });
    rnn_variant("rnn_batch.npz", "rnn_hidden_shape.npz", &|a| {
        a.insert("hidden_train".into(), ArrayD::zeros(IxDyn(&[1, 3, 7])));
    });
    rnn_variant("rnn_batch.npz", "rnn_nan_hidden.npz", &|a| {
        a.get_mut("hidden_valid").unwrap().as_slice_mut().unwrap()[1] = f64::NAN;
    });
    rnn_variant("rnn_batch.npz", "rnn_y_shape.npz", &|a| {
        a.insert("y_train".into(), ArrayD::zeros(IxDyn(&[4, 3])));
    });
    std::fs::write(f.dir.join("empty.npz"), b"").unwrap();
    std::fs::write(f.dir.join("text.npz"), b"this is not an npz archive\n").unwrap();
    let bytes = std::fs::read(f.dir.join("state.npz")).unwrap();
    std::fs::write(f.dir.join("truncated.npz"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::create_dir_all(f.dir.join("a_directory")).unwrap();
    // A valid genotype with its normal= field given twice.
    let g = darts::darts::genotype::named("DARTS_V2")
        .unwrap()
        .to_string();
    let (a, b) = (
        g.find("normal=").unwrap(),
        g.find(", normal_concat").unwrap(),
    );
    let twice = format!("{}, {}{}", &g[..b], &g[a..b], &g[b..]);
    std::fs::write(f.dir.join("bad_genotype.txt"), twice).unwrap();
    f
}

#[test]
fn bad_inputs_are_clear_errors_that_write_nothing() {
    let f = fixtures();
    let p = |n: &str| f.path(n);
    let out = p("out.npz");
    let grad = |state: &str, batch: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["gradients", "--state", &p(state), "--batch", &p(batch)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(["--out".to_string(), out.clone()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let rgrad = |state: &str, batch: &str, extra: &[&str]| -> Vec<String> {
        let mut v = grad(state, batch, extra);
        v.extend(["--space".to_string(), "rnn".to_string()]);
        v
    };
    let step = |state: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "step",
            "--order",
            "first",
            "--state",
            &p(state),
            "--batch",
            &p("batch.npz"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(["--out".to_string(), out.clone()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = |a: &[&str]| -> Vec<String> { a.iter().map(|s| s.to_string()).collect() };
    let tiny_search = [
        "search",
        "--epochs",
        "1",
        "--max-images",
        "16",
        "--batch-size",
        "4",
    ];
    let search = |extra: &[&str]| -> Vec<String> {
        let mut v = args(&tiny_search);
        v.extend(args(extra));
        v
    };
    let rsearch = |extra: &[&str]| -> Vec<String> {
        let mut v = args(&["search", "--space", "rnn", "--epochs", "1"]);
        v.extend(args(extra));
        v
    };
    let train = |extra: &[&str]| -> Vec<String> {
        let mut v = args(&["train", "--genotype", "DARTS_V2", "--epochs", "1"]);
        v.extend(args(extra));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        // search: every flag's range, before any work.
        (search(&["--learning-rate", "nan"]), "--learning-rate"),
        (search(&["--learning-rate", "inf"]), "--learning-rate"),
        (search(&["--learning-rate=-1"]), "--learning-rate"),
        (search(&["--learning-rate", "0"]), "--learning-rate"),
        (search(&["--learning-rate-min=-1"]), "--learning-rate-min"),
        (search(&["--momentum", "nan"]), "--momentum"),
        (search(&["--momentum", "1"]), "--momentum"),
        (search(&["--weight-decay=-1"]), "--weight-decay"),
        (search(&["--weight-decay", "inf"]), "--weight-decay"),
        (
            search(&["--arch-learning-rate", "nan"]),
            "--arch-learning-rate",
        ),
        (
            search(&["--arch-learning-rate", "inf"]),
            "--arch-learning-rate",
        ),
        (
            search(&["--arch-weight-decay", "nan"]),
            "--arch-weight-decay",
        ),
        (search(&["--grad-clip=-1"]), "--grad-clip"),
        (search(&["--grad-clip", "nan"]), "--grad-clip"),
        (search(&["--train-portion", "1"]), "--train-portion"),
        (search(&["--train-portion", "2"]), "--train-portion"),
        (search(&["--train-portion", "0"]), "--train-portion"),
        (search(&["--train-portion", "nan"]), "--train-portion"),
        (search(&["--train-portion", "0.01"]), "--train-portion"),
        (search(&["--max-images", "0"]), "--max-images"),
        (search(&["--max-images", "1"]), "--max-images"),
        (search(&["--init-channels", "0"]), "--init-channels"),
        (search(&["--init-channels", "100000000"]), "--init-channels"),
        (search(&["--layers", "100000000"]), "--layers"),
        (
            search(&["--init-channels", "4000", "--layers", "1000"]),
            "MemAvailable",
        ),
        (search(&["--epochs", "0"]), "--epochs"),
        (search(&["--batch-size", "0"]), "--batch-size"),
        (search(&["--cutout", "0"]), "--cutout"),
        (
            search(&["--data-dir", "/nonexistent/cifar"]),
            "/nonexistent/cifar",
        ),
        (
            args(&["search", "--resume", "/nonexistent/run"]),
            "/nonexistent/run",
        ),
        // search --space rnn: flags of the recurrent search, and the other space's.
        (rsearch(&["--nhid", "0"]), "--nhid"),
        (rsearch(&["--dropout", "1"]), "--dropout"),
        (rsearch(&["--dropouth=-0.1"]), "--dropouth"),
        (rsearch(&["--bptt", "1"]), "--bptt"),
        (rsearch(&["--batch-size", "1"]), "--batch-size"),
        (rsearch(&["--beta", "nan"]), "--beta"),
        (rsearch(&["--learning-rate", "inf"]), "--learning-rate"),
        (rsearch(&["--layers", "3"]), "--layers"),
        (
            rsearch(&["--batch-size", "100000", "--bptt", "1000"]),
            "MemAvailable",
        ),
        (rsearch(&["--max-train-rows", "2"]), "--max-train-rows"),
        (
            rsearch(&["--data-dir", "/nonexistent/ptb"]),
            "/nonexistent/ptb",
        ),
        (search(&["--nhid", "8"]), "--nhid"),
        (
            args(&["search", "--space", "rnn", "--resume", "/nonexistent/run"]),
            "/nonexistent/run",
        ),
        // The audit's flags.
        (search(&["--audit-every", "0"]), "--audit-every"),
        (search(&["--neumann-terms", "0"]), "--neumann-terms"),
        (search(&["--neumann-terms", "1000"]), "--neumann-terms"),
        (rsearch(&["--audit-every", "5"]), "--audit-every"),
        // The alpha-Hessian flags (--track-hessian, DARTS-ES).
        (search(&["--es-window", "3"]), "--es-window"),
        (
            search(&["--early-stop-hessian", "--es-window", "0"]),
            "--es-window",
        ),
        (
            search(&["--early-stop-hessian", "--es-factor", "1"]),
            "--es-factor",
        ),
        (
            search(&["--early-stop-hessian", "--es-factor", "nan"]),
            "--es-factor",
        ),
        (
            search(&["--early-stop-hessian", "--es-start-epoch", "2000000"]),
            "--es-start-epoch",
        ),
        (search(&["--early-stop-hessian"]), "--early-stop-hessian"),
        (search(&["--hessian-hvps", "5"]), "--hessian-hvps"),
        (
            search(&["--track-hessian", "--hessian-hvps", "0"]),
            "--hessian-hvps",
        ),
        (
            search(&["--track-hessian", "--hessian-hvps", "225"]),
            "--hessian-hvps",
        ),
        (
            search(&["--track-hessian", "--hessian-tol=-1"]),
            "--hessian-tol",
        ),
        (
            search(&["--track-hessian", "--hessian-tol", "inf"]),
            "--hessian-tol",
        ),
        (rsearch(&["--track-hessian"]), "--track-hessian"),
        (rsearch(&["--early-stop-hessian"]), "--early-stop-hessian"),
        (
            args(&["search", "--resume", "/nonexistent/run", "--track-hessian"]),
            "--track-hessian",
        ),
        (
            args(&["audit", "--run", "/nonexistent/run"]),
            "/nonexistent/run",
        ),
        (args(&["audit", "--run", "/tmp", "--every", "0"]), "--every"),
        (
            args(&["audit", "--run", "/tmp", "--neumann-terms", "0"]),
            "--neumann-terms",
        ),
        // init: flags.
        (
            args(&["init", "--out-dir", &p("init"), "--init-channels", "0"]),
            "--init-channels",
        ),
        (
            args(&["init", "--out-dir", &p("init"), "--batch-size", "5000"]),
            "--batch-size",
        ),
        // report: the run folder.
        (
            args(&["report", "/nonexistent/run", "--out", &out]),
            "/nonexistent/run",
        ),
        (args(&["report", &p(""), "--out", &out]), "log.jsonl"),
        // compare: files, dumps and flags, before any graph is built.
        (
            args(&["compare", &p("missing.npz"), &p("state.npz")]),
            "missing.npz",
        ),
        (
            args(&["compare", &p("nan_weight.npz"), &p("state.npz")]),
            "nan_weight.npz",
        ),
        (
            args(&["compare", &p("alpha_shape.npz"), &p("state.npz")]),
            "alpha/reduce",
        ),
        (
            args(&["compare", &p("state.npz"), &p("state.npz")]),
            "records the inputs",
        ),
        (
            args(&["compare", &p("state.npz"), &p("batch.npz")]),
            "no key in common",
        ),
        (
            args(&[
                "compare",
                "--dtype",
                "f16",
                &p("state.npz"),
                &p("state.npz"),
            ]),
            "--dtype",
        ),
        // gradients: files and flags.
        (grad("missing.npz", "batch.npz", &[]), "missing.npz"),
        (grad("empty.npz", "batch.npz", &[]), "empty.npz"),
        (grad("text.npz", "batch.npz", &[]), "text.npz"),
        (grad("truncated.npz", "batch.npz", &[]), "truncated.npz"),
        (grad("no_prefix.npz", "batch.npz", &[]), "sd/"),
        (grad("unknown_key.npz", "batch.npz", &[]), "extra/thing"),
        (
            grad("unknown_momentum.npz", "batch.npz", &[]),
            "momentum_buffer/no.such.weight",
        ),
        (grad("alpha_shape.npz", "batch.npz", &[]), "alpha/reduce"),
        (
            grad("nan_weight.npz", "batch.npz", &[]),
            "cells.0._ops.0._ops.4.op.1.weight",
        ),
        (
            grad("weight_shape.npz", "batch.npz", &[]),
            "cells.0._ops.0._ops.4.op.1.weight",
        ),
        (grad("one_momentum.npz", "batch.npz", &[]), "momentum"),
        (grad("state.npz", "no_y_train.npz", &[]), "y_train"),
        (grad("state.npz", "bad_label.npz", &[]), "y_train"),
        (grad("state.npz", "nan_pixel.npz", &[]), "x_valid"),
        (grad("state.npz", "extra_batch_key.npz", &[]), "x_test"),
        (grad("state.npz", "label_count.npz", &[]), "y_valid"),
        (grad("state.npz", "x_rank.npz", &[]), "x_train"),
        (
            grad("state.npz", "missing_batch.npz", &[]),
            "missing_batch.npz",
        ),
        (grad("state.npz", "batch.npz", &["--eta", "nan"]), "--eta"),
        (grad("state.npz", "batch.npz", &["--eta=-1"]), "--eta"),
        (
            grad("state.npz", "batch.npz", &["--weight-decay", "inf"]),
            "--weight-decay",
        ),
        (
            grad("state.npz", "batch.npz", &["--momentum", "1.5"]),
            "--momentum",
        ),
        (
            grad("state.npz", "batch.npz", &["--multiplier", "3"]),
            "multiplier",
        ),
        // gradients --space rnn: files and flags.
        (
            rgrad("rnn_untied.npz", "rnn_batch.npz", &[]),
            "decoder.weight",
        ),
        (
            rgrad("rnn_untied.npz", "rnn_batch.npz", &[]),
            "encoder.weight",
        ),
        (
            rgrad("rnn_alpha_shape.npz", "rnn_batch.npz", &[]),
            "alpha/recurrent",
        ),
        (
            rgrad("rnn_no_alpha.npz", "rnn_batch.npz", &[]),
            "alpha/recurrent",
        ),
        (
            rgrad("rnn_no_decoder.npz", "rnn_batch.npz", &[]),
            "sd/decoder.weight",
        ),
        (
            rgrad("state.npz", "rnn_batch.npz", &[]),
            "sd/encoder.weight",
        ),
        (rgrad("rnn_state.npz", "rnn_b1.npz", &[]), "B = 1"),
        (rgrad("rnn_state.npz", "rnn_bad_token.npz", &[]), "y_valid"),
        (rgrad("rnn_state.npz", "rnn_frac_token.npz", &[]), "x_train"),
        (
            rgrad("rnn_state.npz", "rnn_hidden_shape.npz", &[]),
            "hidden_train",
        ),
        (
            rgrad("rnn_state.npz", "rnn_nan_hidden.npz", &[]),
            "hidden_valid",
        ),
        (rgrad("rnn_state.npz", "rnn_y_shape.npz", &[]), "y_train"),
        (rgrad("rnn_state.npz", "batch.npz", &[]), "x_train"),
        (
            rgrad("rnn_state.npz", "rnn_batch.npz", &["--clip", "0"]),
            "--clip",
        ),
        (
            rgrad("rnn_state.npz", "rnn_batch.npz", &["--clip", "nan"]),
            "--clip",
        ),
        (
            rgrad("rnn_state.npz", "rnn_batch.npz", &["--eta=-20"]),
            "--eta",
        ),
        (
            rgrad("rnn_state.npz", "rnn_batch.npz", &["--momentum", "0.9"]),
            "--momentum",
        ),
        (
            rgrad("rnn_state.npz", "rnn_batch.npz", &["--multiplier", "4"]),
            "--multiplier",
        ),
        (
            grad("state.npz", "batch.npz", &["--clip", "0.25"]),
            "--clip",
        ),
        // step: its flags, the optimiser state, the output path.
        (step("state.npz", &["--steps", "0"]), "--steps"),
        (step("state.npz", &["--eta", "nan"]), "--eta"),
        (step("state.npz", &["--grad-clip", "inf"]), "--grad-clip"),
        (
            step("state.npz", &["--arch-learning-rate", "0"]),
            "--arch-learning-rate",
        ),
        (step("adam_no_step.npz", &[]), "adam_step"),
        (step("adam_step_zero.npz", &[]), "adam_step/reduce"),
        (step("adam_step_frac.npz", &[]), "adam_step/reduce"),
        (step("adam_unknown.npz", &[]), "adam_x/reduce"),
        (step("adam_shape.npz", &[]), "adam_m/reduce"),
        (
            step("unknown_momentum.npz", &[]),
            "momentum_buffer/no.such.weight",
        ),
        // train: options and genotypes.
        (args(&["train", "--genotype", "NOPE"]), "NOPE"),
        (
            args(&["train", "--genotype-file", "/nonexistent/g.txt"]),
            "/nonexistent/g.txt",
        ),
        (
            args(&["train", "--genotype-file", &p("bad_genotype.txt")]),
            "normal",
        ),
        (train(&["--learning-rate", "nan"]), "learning_rate"),
        (train(&["--momentum", "1"]), "momentum"),
        (train(&["--drop-path-prob", "1"]), "drop_path_prob"),
        (train(&["--grad-clip", "0"]), "grad_clip"),
        (train(&["--epochs", "0"]), "epochs"),
        (train(&["--batch-size", "0"]), "batch_size"),
        (train(&["--train-limit", "0"]), "train_limit"),
        (
            train(&["--init-channels", "4000", "--layers", "600"]),
            "MemAvailable",
        ),
        // gradcheck: a filter that selects nothing is an error, not "all passed".
        (args(&["gradcheck", "--filter", "no_such_op"]), "--filter"),
    ];
    // Output paths: a directory and a missing directory, checked before any work.
    let mut cases = cases;
    let mut with_out = |base: Vec<String>, out: &str, needle: &'static str| {
        let mut v = base;
        let i = v.iter().position(|a| a == "--out").unwrap();
        v[i + 1] = out.to_string();
        cases.push((v, needle));
    };
    with_out(
        grad("state.npz", "batch.npz", &[]),
        &p("a_directory"),
        "--out",
    );
    with_out(
        grad("state.npz", "batch.npz", &[]),
        &p("no/such/dir/out.npz"),
        "--out",
    );
    with_out(step("state.npz", &[]), &p("a_directory"), "--out");
    println!(
        "{} bad inputs, each a clear error that writes nothing",
        cases.len()
    );
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let before = snapshot(&f.dir);
    for (i, (argv, needle)) in cases.iter().enumerate() {
        let cwd = std::env::temp_dir().join(format!("darts-bad-cwd-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cwd);
        std::fs::create_dir_all(&cwd).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_darts"))
            .args(argv)
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let code = o.status.code();
        assert!(
            !o.status.success() && code != Some(101) && code.is_some(),
            "{argv:?}: exit {code:?}\n{err}"
        );
        assert!(!err.contains("panicked"), "{argv:?}: {err}");
        assert!(
            err.contains(needle),
            "{argv:?}: message does not name '{needle}': {err}"
        );
        assert!(
            std::fs::read_dir(&cwd).unwrap().next().is_none(),
            "{argv:?} left files in the working directory"
        );
        assert_eq!(
            snapshot(&f.dir),
            before,
            "{argv:?} changed the input folder"
        );
        let _ = std::fs::remove_dir_all(&cwd);
    }
}
