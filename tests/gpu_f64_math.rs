//! Every f64 operation the f64 GPU kernels use, alone on the device, against the host's IEEE 754
//! f64 (`darts::exec::gpu::probe`): + - * / and sqrt must give the host's bits (IEEE 754
//! requires them correctly rounded), so must abs, the comparisons, the conversions and the
//! exact helpers (pow2, split); exp, expm1, log1p, log and tanh (built from those in
//! shaders/scalar_f64.wgsl) must stay within the bounds derived in proofs/gpu-f64-math.md plus
//! the host libm's error. Each probe runs on its edge cases and 20000 seeded random inputs.
//!
//! The tests skip with a `SKIP` line when no adapter offers `SHADER_F64` (f64 is optional),
//! also under `DARTS_REQUIRE_GPU=1`; with `DARTS_REQUIRE_GPU=1` they fail when there is no
//! adapter at all, or when an adapter offers f64 but the f64 executor fails otherwise.

mod common;

use darts::exec::gpu::probe::{self, Probe};

/// Every probe within its bound on 20000 random inputs and its edge cases; prints the worst
/// |device - host| / bound per probe, and for the inexact ones the worst error in units of
/// u |host| (the host's own error included).
#[test]
fn gpu_f64_probes_match_host() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_probes_match_host") else {
        return;
    };
    let sub = gpu
        .probe(Probe::Mul, &[5e-324, 1e-310], &[1.0, 1.0])
        .expect("probe runs");
    println!(
        "f64 subnormals on this adapter: {}",
        if sub == [5e-324, 1e-310] {
            "preserved"
        } else {
            "flushed to zero (allowed: Vulkan without denorm preservation)"
        }
    );
    let worst = gpu
        .check_probes(20_000, 2024)
        .unwrap_or_else(|e| panic!("{e}"));
    for (op, w) in worst {
        let inputs = op.inputs(20_000, 2024);
        let (a, b): (Vec<f64>, Vec<f64>) = inputs.iter().copied().unzip();
        let got = gpu.probe(op, &a, &b).expect("probe runs");
        let in_u = got
            .iter()
            .zip(&inputs)
            .map(|(&g, &(x, y))| {
                let want = op.reference(x, y);
                if want.is_finite() && want.abs() >= f64::MIN_POSITIVE && g.is_finite() {
                    (g - want).abs() / (probe::U * want.abs())
                } else {
                    0.0
                }
            })
            .fold(0.0f64, f64::max);
        println!(
            "{:<16} {:<26} {:>6} inputs: worst error / bound {w:.3}, worst error {in_u:.2} u",
            format!("{op:?}"),
            op.wgsl(),
            inputs.len()
        );
    }
}

/// The device computes what the probe claims: a wrong result is caught and reported with the
/// operation, the input and both values. (Exercised through `error_ratio` on the device's own
/// results: exp's result scaled by 1 + 16 u is outside the bound, by 1 + 4 u inside.)
#[test]
fn gpu_f64_probe_bounds_are_tight_enough_to_fail() {
    let Some(mut gpu) = common::gpu_f64_executor("gpu_f64_probe_bounds_are_tight_enough_to_fail")
    else {
        return;
    };
    let xs = [0.5, 1.0, -3.0, 100.0];
    let got = gpu.probe(Probe::Exp, &xs, &[0.0; 4]).expect("probe runs");
    for (&x, &g) in xs.iter().zip(&got) {
        assert!(Probe::Exp.error_ratio(x, 0.0, g) <= 1.0, "exp({x}) = {g}");
        assert!(Probe::Exp.error_ratio(x, 0.0, x.exp() * (1.0 + 16.0 * probe::U)) > 1.0);
    }
    // sqrt must be exact: one ulp off fails.
    let got = gpu.probe(Probe::Sqrt, &[2.0], &[0.0]).expect("probe runs");
    assert_eq!(got[0], 2f64.sqrt());
    assert!(Probe::Sqrt.error_ratio(2.0, 0.0, f64::from_bits(got[0].to_bits() + 1)) > 1.0);
}
