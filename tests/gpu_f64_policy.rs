//! The GPU f64 policy of the tests (tests/common/mod.rs, `gpu_f64_policy`): an adapter that
//! fails the f64 self-check is refused with `ExecError::F64SelfCheck` naming the probe; the f64
//! tests then skip with a `SKIP <test>: f64 self-check refused adapter <info>: <probe>` line,
//! also under `DARTS_REQUIRE_GPU=1`, while the f32 executor still runs; under
//! `DARTS_EXPECT_GPU_F64=1` the refusal fails the test.
//!
//! The refusal is forced with the test-only `DARTS_GPU_F64_FORCE_REFUSE` (it replaces the first
//! device result of the probe it names). The variables are set in this process, so this file
//! holds one test: no other test can see them. Skips with a `SKIP` line where no adapter offers
//! `SHADER_F64` (the self-check is never reached there); without any adapter it skips, or
//! fails under `DARTS_REQUIRE_GPU=1`.

mod common;

use common::F64Outcome;
use darts::exec::gpu::probe::{forced_refusal, Probe, FORCE_REFUSE_VAR};
use darts::exec::gpu::GpuExecutor;
use darts::exec::{ExecError, Executor, Feeds};
use darts::graph::Graph;
use ndarray::{ArrayD, IxDyn};

fn f32_exp_runs(gpu: &mut GpuExecutor) {
    let mut g = Graph::new();
    let x = g.input("x", [3]).expect("input");
    let y = g.exp(x).expect("exp");
    let mut feeds = Feeds::<f32>::new();
    feeds.insert(
        "x",
        ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0, 1.0, -1.0]).expect("shape"),
    );
    let out = gpu.run(&g, &feeds, &[y]).expect("f32 run");
    assert_eq!(out[0][[0]], 1.0);
}

#[test]
fn f64_self_check_refusal_skips_unless_f64_is_expected() {
    const TEST: &str = "f64_self_check_refusal_skips_unless_f64_is_expected";
    // The variable's values (no GPU needed).
    std::env::remove_var(FORCE_REFUSE_VAR);
    assert_eq!(forced_refusal().unwrap(), None);
    std::env::set_var(FORCE_REFUSE_VAR, "0");
    assert_eq!(forced_refusal().unwrap(), None);
    std::env::set_var(FORCE_REFUSE_VAR, "1");
    assert_eq!(forced_refusal().unwrap(), Some(Probe::Add));
    std::env::set_var(FORCE_REFUSE_VAR, "ToI32");
    assert_eq!(forced_refusal().unwrap(), Some(Probe::ToI32));
    std::env::set_var(FORCE_REFUSE_VAR, "yes");
    let e = forced_refusal().unwrap_err().to_string();
    assert!(
        e.contains(FORCE_REFUSE_VAR) && e.contains("\"yes\"") && e.contains("ToI32"),
        "{e}"
    );
    std::env::remove_var(FORCE_REFUSE_VAR);

    let Some(mut f32_gpu) = common::gpu_executor(TEST) else {
        return;
    };
    if !f32_gpu.supports_f64() {
        println!(
            "SKIP {TEST}: adapter {} offers no SHADER_F64, so the f64 self-check is never reached",
            f32_gpu.adapter_info()
        );
        return;
    }

    std::env::set_var(FORCE_REFUSE_VAR, "1");
    std::env::set_var("DARTS_REQUIRE_GPU", "1");
    std::env::remove_var("DARTS_EXPECT_GPU_F64");

    // The executor's own error names the probe.
    match GpuExecutor::new_f64() {
        Err(ExecError::F64SelfCheck {
            adapter,
            probe,
            failure,
        }) => {
            assert_eq!(probe, Probe::Add);
            assert!(!adapter.is_empty());
            assert!(failure.contains(Probe::Add.wgsl()), "{failure}");
            assert!(failure.contains(FORCE_REFUSE_VAR), "{failure}");
        }
        Err(other) => panic!("expected F64SelfCheck, got {other}"),
        Ok(g) => panic!("{FORCE_REFUSE_VAR}=1 but {} was accepted", g.adapter_info()),
    }

    // DARTS_REQUIRE_GPU=1 alone: a skip, with the probe on the SKIP line.
    match common::gpu_f64_policy(TEST) {
        Ok(F64Outcome::Skip(line)) => {
            println!("{line}");
            assert!(
                line.starts_with(&format!("SKIP {TEST}: f64 self-check refused adapter ")),
                "{line}"
            );
            assert!(line.contains(Probe::Add.wgsl()), "{line}");
        }
        Ok(F64Outcome::Run(g)) => panic!("forced refusal but {} ran", g.adapter_info()),
        Err(why) => panic!("a refusal without DARTS_EXPECT_GPU_F64 must skip: {why}"),
    }
    assert!(common::gpu_f64_executor(TEST).is_none());

    // The f32 executor still runs.
    f32_exp_runs(&mut f32_gpu);
    let mut fresh = GpuExecutor::new().expect("f32 executor after an f64 refusal");
    f32_exp_runs(&mut fresh);

    // DARTS_EXPECT_GPU_F64=1: the same refusal fails, naming the probe.
    std::env::set_var("DARTS_EXPECT_GPU_F64", "1");
    match common::gpu_f64_policy(TEST) {
        Err(why) => {
            assert!(why.contains("DARTS_EXPECT_GPU_F64=1"), "{why}");
            assert!(why.contains(Probe::Add.wgsl()), "{why}");
        }
        Ok(F64Outcome::Skip(line)) => panic!("DARTS_EXPECT_GPU_F64=1 but skipped: {line}"),
        Ok(F64Outcome::Run(g)) => panic!("forced refusal but {} ran", g.adapter_info()),
    }
    // The helper panics (quietly here: the message was checked above).
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let helper = std::panic::catch_unwind(|| common::gpu_f64_executor(TEST).is_some());
    std::panic::set_hook(hook);
    assert!(helper.is_err(), "the helper must fail the test here");

    std::env::remove_var("DARTS_EXPECT_GPU_F64");
    std::env::remove_var(FORCE_REFUSE_VAR);
}
