//! Asking for the f64 GPU executor where no adapter offers `SHADER_F64` fails with
//! `ExecError::MissingGpuFeature` naming the adapters and the feature, while the f32 executor
//! still runs there. wgpu's GL backend never offers `SHADER_F64`, so this test restricts wgpu
//! to GL (`WGPU_BACKEND=gl`, set before any adapter is requested; this file holds this one test
//! so that the variable reaches no other test) and skips with a `SKIP` line when this machine
//! has no GL adapter (e.g. no EGL with Mesa llvmpipe).

use darts::exec::gpu::GpuExecutor;
use darts::exec::{ExecError, Executor, Feeds};
use darts::graph::Graph;
use ndarray::{ArrayD, IxDyn};

#[test]
fn f64_on_an_adapter_without_shader_f64_is_a_clear_error() {
    std::env::set_var("WGPU_BACKEND", "gl");
    let mut f32_gpu = match GpuExecutor::new() {
        Ok(g) => g,
        Err(e) => {
            println!(
                "SKIP f64_on_an_adapter_without_shader_f64_is_a_clear_error: no GL adapter ({e})"
            );
            return;
        }
    };
    if f32_gpu.supports_f64() {
        println!(
            "SKIP f64_on_an_adapter_without_shader_f64_is_a_clear_error: the GL adapter {} offers \
             SHADER_F64",
            f32_gpu.adapter_info()
        );
        return;
    }
    match GpuExecutor::new_f64() {
        Err(ExecError::MissingGpuFeature {
            adapter,
            feature,
            needed_for,
        }) => {
            assert_eq!(feature, "SHADER_F64");
            let name = f32_gpu.adapter_info();
            let short = name.split(" (").next().expect("adapter name");
            assert!(adapter.contains(short), "{adapter} does not name {short}");
            assert!(needed_for.contains("f64"), "{needed_for}");
        }
        Err(other) => panic!("expected MissingGpuFeature, got {other}"),
        Ok(g) => panic!(
            "{} offers SHADER_F64 but supports_f64 said no",
            g.adapter_info()
        ),
    }
    // The f32 executor on the same adapter is unaffected.
    let mut g = Graph::new();
    let x = g.input("x", [3]).expect("input");
    let y = g.exp(x).expect("exp");
    let mut feeds = Feeds::<f32>::new();
    feeds.insert(
        "x",
        ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0, 1.0, -1.0]).expect("shape"),
    );
    let out = f32_gpu.run(&g, &feeds, &[y]).expect("f32 run on GL");
    assert_eq!(out[0][[0]], 1.0);
}
