//! The `darts` binary end to end: gradcheck tables and exit codes, and the gradients job's
//! npz contract.

mod common;

use darts::darts::params::{read_npz, write_npz};
use std::process::Command;

fn darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_darts"))
}

/// Run `cmd`, assert it succeeded (showing stdout and stderr if not), return its stdout.
fn stdout_of_success(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn gradcheck_prints_every_format_and_passes() {
    let out = darts()
        .args(["gradcheck", "--format", "markdown", "--no-network"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("| conv2d_weight_grad |"), "{text}");
    assert!(text.contains("all passed"), "{text}");
    let out = darts()
        .args(["gradcheck", "--format", "json", "--filter", "max_pool"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.as_array().unwrap().len() >= 2);
    assert!(v[0]["vjp_vs_fd"]["pass"].as_bool().unwrap());
}

const KEYS: [&str; 13] = [
    "loss_train",
    "loss_valid",
    "grad_w_train/",
    "grad_alpha_first/",
    "unrolled_w/",
    "loss_valid_unrolled",
    "v/",
    "grad_alpha_unrolled_partial/",
    "hvp_fd/",
    "hvp_fd_at_unrolled/",
    "hvp_exact/",
    "grad_alpha_second/",
    "grad_alpha_unrolled_exact/",
];

/// The gradients job's inputs in `dir`: `state.npz` (tiny network, seed 8) and the two
/// batches, returned with their integer labels.
fn gradients_inputs(
    dir: &std::path::Path,
) -> (
    darts::check::oracle::architect::Batch,
    darts::check::oracle::architect::Batch,
    ndarray::ArrayD<f64>,
    ndarray::ArrayD<f64>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = common::tiny(false);
    let st = common::state(&cfg, 8);
    st.to_npz(&dir.join("state.npz")).unwrap();
    let (t, v) = (common::batch(2, 8, 10, 1), common::batch(3, 8, 10, 2));
    let label = |b: &darts::check::oracle::architect::Batch| {
        b.onehot
            .map_axis(ndarray::Axis(1), |r| {
                r.iter().position(|&x| x == 1.0).unwrap() as f64
            })
            .into_dyn()
    };
    let (yt, yv) = (label(&t), label(&v));
    (t, v, yt, yv)
}

/// Write `batch` in `dir` (with training labels `y_train`) and run the gradients job on it
/// with the extra arguments.
fn run_gradients(
    dir: &std::path::Path,
    (t, v, yv): (
        &darts::check::oracle::architect::Batch,
        &darts::check::oracle::architect::Batch,
        &ndarray::ArrayD<f64>,
    ),
    batch: &str,
    y_train: &ndarray::ArrayD<f64>,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    write_npz(
        &dir.join(batch),
        [
            ("x_train", &t.x),
            ("y_train", y_train),
            ("x_valid", &v.x),
            ("y_valid", yv),
        ],
    )
    .unwrap();
    darts()
        .args(["gradients", "--state"])
        .arg(dir.join("state.npz"))
        .arg("--batch")
        .arg(dir.join(batch))
        .arg("--out")
        .arg(dir.join(out))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn gradients_job_writes_every_documented_array() {
    let dir = std::env::temp_dir().join(format!("darts-cli-{}", std::process::id()));
    let (t, v, yt, yv) = gradients_inputs(&dir);
    let gradients = |batch: &str, y_train: &ndarray::ArrayD<f64>, out: &str| {
        run_gradients(&dir, (&t, &v, &yv), batch, y_train, out, &[])
    };
    let out = gradients("batch.npz", &yt, "out.npz");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("second-order(FD) vs exact"), "{text}");
    let got = read_npz(&dir.join("out.npz")).unwrap();
    for k in KEYS {
        assert!(got.keys().any(|g| g.starts_with(k)), "missing {k}");
    }
    assert!(got.contains_key("grad_w_train/cells.0._ops.0._ops.4.op.1.weight"));
    assert_eq!(got["hvp_exact/normal"].shape(), &[14, 8]);

    // A mislabelled batch is an error naming the file and the entry.
    let bad = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2]), 12.0);
    let out = gradients("bad.npz", &bad, "out2.npz");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("y_train") && err.contains("12"), "{err}");
}

/// `gradcheck --backend gpu` adds a GPU-vs-CPU table (skips without an adapter unless
/// DARTS_REQUIRE_GPU=1).
#[test]
fn gradcheck_gpu_backend_adds_agreement_table() {
    if common::gpu_executor("gradcheck_gpu_backend_adds_agreement_table").is_none() {
        return;
    }
    let text = stdout_of_success(darts().args([
        "gradcheck",
        "--backend",
        "gpu",
        "--no-network",
        "--filter",
        "conv2d",
    ]));
    assert!(text.contains("GPU-vs-CPU checks, all passed"), "{text}");
}

/// `train --backend gpu` trains on the wgpu executor (skips without an adapter unless
/// DARTS_REQUIRE_GPU=1).
#[test]
fn train_runs_on_the_gpu_backend() {
    if common::gpu_executor("train_runs_on_the_gpu_backend").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("darts-cli-gpu-train-{}", std::process::id()));
    let text = stdout_of_success(
        darts()
            .args([
                "train",
                "--genotype",
                "DARTS_V2",
                "--backend",
                "gpu",
                "--init-channels=2",
                "--layers=3",
                "--epochs=1",
                "--train-limit=16",
                "--test-limit=8",
                "--batch-size=8",
            ])
            .arg("--run-dir")
            .arg(&dir),
    );
    assert!(text.contains("final test accuracy"), "{text}");
}

/// `search --backend gpu` runs resident steps by default (state on the device), writes its
/// checkpoints from the device state, and `--resume` reloads them onto the GPU (skips without
/// an adapter unless DARTS_REQUIRE_GPU=1).
#[test]
fn search_runs_resident_on_the_gpu_backend_and_resumes() {
    if common::gpu_executor("search_runs_resident_on_the_gpu_backend_and_resumes").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("darts-cli-gpu-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let text = stdout_of_success(
        darts()
            .args([
                "search",
                "--backend",
                "gpu",
                "--init-channels=2",
                "--layers=3",
                "--batch-size=8",
                "--max-images=16",
                "--epochs=2",
            ])
            .arg("--run-dir")
            .arg(&dir),
    );
    assert!(text.contains("| gpu"), "{text}");
    assert!(text.contains("genotype ="), "{text}");
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    // The checkpoint holds the device state: the optimiser moments start at zero and are
    // non-zero after a step only if the device values came back.
    let (arrays, _) = darts::search::checkpoint::read(&dir.join("checkpoint.npz")).unwrap();
    for k in ["adam_m/normal", "adam_v/reduce", "sgd_buf/stem.0.weight"] {
        let a = &arrays[k];
        assert!(a.iter().any(|v| *v != 0.0), "{k} is all zero");
    }
    // Resuming the finished run reloads it onto the GPU and ends at once.
    let out = darts()
        .args(["search", "--backend", "gpu", "--resume"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("| gpu") && text.contains("genotype ="),
        "{text}"
    );
}

/// `gradients --backend gpu --dtype f64` (where the adapter offers SHADER_F64 and passes the
/// f64 self-check, as Mesa lavapipe does; skips otherwise) writes the same arrays as the CPU
/// f64 run. Bound: both are f64 evaluations of the same graphs; the whole-network evaluation
/// bound gamma_{K depth}(2^-53) M is below 1e-9 of each array's scale here (K <= 10^3 terms,
/// depth <= 10^3 nodes), and the FD arrays divide a difference of two such values by
/// 2R = 0.02 / ||v||, which multiplies that by ||v|| / 0.02 (< 10^3 on this network):
/// 1e-6 for them.
#[test]
fn gradients_job_runs_in_f64_on_the_gpu() {
    if common::gpu_executor("gradients_job_runs_in_f64_on_the_gpu").is_none() {
        return;
    }
    if common::gpu_f64_executor("gradients_job_runs_in_f64_on_the_gpu").is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("darts-cli-f64gpu-{}", std::process::id()));
    let (t, v, yt, yv) = gradients_inputs(&dir);
    let mut runs = Vec::new();
    for (out, extra) in [
        ("cpu.npz", &["--dtype", "f64"][..]),
        ("gpu.npz", &["--dtype", "f64", "--backend", "gpu"][..]),
    ] {
        let o = run_gradients(&dir, (&t, &v, &yv), "batch.npz", &yt, out, extra);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        runs.push(read_npz(&dir.join(out)).unwrap());
    }
    let (cpu, gpu) = (&runs[0], &runs[1]);
    assert_eq!(
        cpu.keys().collect::<Vec<_>>(),
        gpu.keys().collect::<Vec<_>>()
    );
    for (k, want) in cpu {
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
        let err = gpu[k]
            .iter()
            .zip(want.iter())
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        let fd = k.starts_with("hvp_fd") || k.starts_with("grad_alpha_second");
        let tol = if fd { 1e-6 } else { 1e-9 };
        assert!(
            err <= tol * scale,
            "{k}: |gpu - cpu| {err:e} > {tol:e} x {scale:e}"
        );
    }
}
