//! The README's teaching walk, at a small size: `init` writes inputs that `gradients`,
//! `step` and `compare` accept, and the dump compared with itself agrees.

use std::process::Command;

fn darts() -> Command {
    Command::new(env!("CARGO_BIN_EXE_darts"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_readme_walk_runs_from_init_to_compare() {
    let d = std::env::temp_dir().join(format!("darts-walk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let p = |f: &str| d.join(f).display().to_string();
    let text = ok(darts()
        .args([
            "init",
            "--init-channels",
            "2",
            "--batch-size",
            "4",
            "--out-dir",
        ])
        .arg(&d));
    assert!(text.contains("14 edges x 8 candidate ops"), "{text}");
    ok(darts().args(["gradcheck", "--no-network", "--filter", "relu"]));
    ok(darts().args([
        "step",
        "--order",
        "second",
        "--steps",
        "2",
        "--state",
        &p("state.npz"),
        "--batch",
        &p("batch.npz"),
        "--out",
        &p("steps.npz"),
    ]));
    let text = ok(darts().args([
        "gradients",
        "--state",
        &p("state.npz"),
        "--batch",
        &p("batch.npz"),
        "--out",
        &p("grads.npz"),
    ]));
    assert!(text.contains("second-order(FD) vs exact"), "{text}");
    let text = ok(darts().args(["compare", &p("grads.npz"), &p("grads.npz")]));
    assert!(text.contains("agree: all"), "{text}");
    std::fs::remove_dir_all(&d).ok();
}
