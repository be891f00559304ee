//! Every WGSL module the executor compiles, composed as it composes them (each scalar prelude
//! its executor uses: scalar_f32.wgsl, and scalar_f64.wgsl for the f64 executor; the kernel
//! files, some of which are pieces shared by several modules; for the fused kernels, a
//! generated part made by the fusion plan of a small graph), parses and validates with naga,
//! so a broken shader is caught by a plain `cargo test` on a machine without a GPU. Every file
//! in `shaders/` is part of some module checked here. The f32
//! modules validate without naga's FLOAT64 capability (no f64 anywhere); the f64 modules need
//! it, and call no f64 math builtin but sqrt and abs (SPIR-V defines exp, log, tanh, ... for
//! 32-bit floats only; the f64 prelude builds them from + - * /).

use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use std::path::Path;

/// The kernel files (every `.wgsl` but the preludes), sorted, with their sources, and the two
/// preludes.
fn shader_files() -> (Vec<(String, String)>, String, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    paths.sort();
    let read = |p: &Path| std::fs::read_to_string(p).expect("readable shader");
    let mut kernels = Vec::new();
    let (mut f32_prelude, mut f64_prelude) = (None, None);
    for p in paths {
        let name = p
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        match name.as_str() {
            "scalar_f32.wgsl" => f32_prelude = Some(read(&p)),
            "scalar_f64.wgsl" => f64_prelude = Some(read(&p)),
            _ => kernels.push((name, read(&p))),
        }
    }
    (
        kernels,
        f32_prelude.expect("shaders/scalar_f32.wgsl"),
        f64_prelude.expect("shaders/scalar_f64.wgsl"),
    )
}

/// The modules the executor compiles (without the prelude), by name; names ending in `_f64`
/// exist in f64 only. The fused ones carry the generated part of a small graph's plan: a map
/// over every unary op, a select, a broadcast and literals, and a reduction of such a map.
fn modules() -> Vec<(String, String)> {
    use darts::exec::gpu::fusion;
    use darts::exec::gpu::kernels as k;
    use darts::graph::{BinaryOp, Graph, UnaryOp};
    let mut g = Graph::new();
    let x = g.input("x", [2, 3]).unwrap();
    let y = g.input("y", [3]).unwrap();
    let mut acc = x;
    for op in UnaryOp::ALL {
        let u = g.unary(op, acc).unwrap();
        acc = g.binary(BinaryOp::Max, u, y).unwrap();
    }
    let yb = g.broadcast_to(y, [2, 3]).unwrap();
    let half = g.constant(0.5, [2, 3]).unwrap();
    let c = g.binary(BinaryOp::Greater, acc, half).unwrap();
    let map = g.select(c, acc, yb).unwrap();
    let d = g.sub(x, y).unwrap();
    let d2 = g.unary(UnaryOp::Square, d).unwrap();
    let red = g.reduce_sum(d2, &[0]).unwrap();
    // Reads through views (a plain slice, a bounded pad) and a reduction with an epilogue.
    let sl = g.slice(x, 1, 0, 3, 2).unwrap();
    let pd = g.pad(sl, 1, 1, 0, 0).unwrap();
    let xs = g.slice(x, 0, 1, 2, 1).unwrap(); // row 1, broadcast
    let views = g.add2(pd, xs).unwrap();
    let s = g.reduce_max(d2, &[1]).unwrap();
    let b = g.input("b", [2, 1]).unwrap();
    let epilogue = g.sub(s, b).unwrap();
    let needed = vec![true; g.len()];
    let plan = fusion::plan(
        &g,
        &needed,
        &[map, red, views, epilogue],
        |v| v,
        fusion::MAX_LEAVES,
        true,
    );
    assert!(plan.fused[&views.0].bounded.len() == 1 && plan.fused[&views.0].views.len() == 1);
    assert!(
        plan.fused[&epilogue.0].reduce.is_some(),
        "the epilogue fused"
    );
    let generated = |root: darts::graph::NodeId| plan.fused[&root.0].source.to_string();
    assert!(
        plan.fused[&map.0].ops > 20,
        "the map fused: {}",
        plan.fused[&map.0].ops
    );
    assert!(plan.fused[&red.0].reduce.is_some(), "the reduction fused");
    vec![
        ("elementwise".into(), k::ELEMENTWISE_WGSL.into()),
        ("reduce".into(), k::REDUCE_WGSL.into()),
        ("matmul".into(), k::MATMUL_WGSL.into()),
        ("movement".into(), k::MOVEMENT_WGSL.into()),
        ("conv".into(), k::CONV_WGSL.into()),
        ("pool".into(), k::POOL_WGSL.into()),
        ("gather".into(), k::GATHER_WGSL.into()),
        ("softmax".into(), k::SOFTMAX_WGSL.into()),
        ("probe_f64".into(), k::PROBE_F64_WGSL.into()),
        (
            "fused map".into(),
            format!("{}\n{}", k::FUSED_WGSL, generated(map)),
        ),
        (
            "fused reduction".into(),
            format!("{}\n{}", k::FUSED_REDUCE_WGSL, generated(red)),
        ),
        (
            "fused views".into(),
            format!("{}\n{}", k::FUSED_WGSL, generated(views)),
        ),
        (
            "fused reduction with an epilogue".into(),
            format!("{}\n{}", k::FUSED_REDUCE_WGSL, generated(epilogue)),
        ),
    ]
}

/// Parses and validates `prelude` + `src` (as the executor composes them), panicking with
/// naga's message (line numbers count the prelude first).
fn validate(
    what: &str,
    prelude: &str,
    src: &str,
    caps: Capabilities,
) -> (naga::Module, ModuleInfo) {
    let full = darts::exec::gpu::kernels::compose(prelude, src);
    let module = naga::front::wgsl::parse_str(&full)
        .unwrap_or_else(|e| panic!("{what} does not parse:\n{}", e.emit_to_string(&full)));
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what} does not validate:\n{}", e.emit_to_string(&full)));
    (module, info)
}

#[test]
fn every_shader_parses_and_validates() {
    let (files, f32_prelude, f64_prelude) = shader_files();
    // The preludes alone (no entry point).
    validate("scalar_f32.wgsl", &f32_prelude, "", Capabilities::default());
    validate("scalar_f64.wgsl", &f64_prelude, "", Capabilities::FLOAT64);
    let modules = modules();
    for (name, src) in &modules {
        if !name.ends_with("_f64") {
            let (m, _) = validate(
                &format!("{name} (f32)"),
                &f32_prelude,
                src,
                Capabilities::default(),
            );
            assert!(!m.entry_points.is_empty(), "{name} has no entry point");
        }
        let (m, _) = validate(
            &format!("{name} (f64)"),
            &f64_prelude,
            src,
            Capabilities::FLOAT64,
        );
        assert!(!m.entry_points.is_empty(), "{name} has no entry point");
    }
    // Every file is part of a module checked above.
    for (file, text) in &files {
        assert!(
            modules.iter().any(|(_, src)| src.contains(text.trim())),
            "shaders/{file} is in no module the executor compiles"
        );
    }
    assert!(files.len() >= 14, "only {} shader files found", files.len());
}

/// Every fused module and every single-op kernel, instanced for batched dispatches
/// (src/exec/gpu/batch.rs), parses and validates in f32 and f64 with the entry point alone,
/// one uniform array of the instances' parameters and each instance's storage bindings.
#[test]
fn batched_modules_validate() {
    use darts::exec::gpu::batch::instanced;
    use darts::exec::gpu::kernels as k;
    let (_, f32_prelude, f64_prelude) = shader_files();
    // (what, module source without prelude, entry point).
    let mut cases: Vec<(String, String, String)> = Vec::new();
    for (name, src) in modules().iter().filter(|(n, _)| n.starts_with("fused")) {
        let full = k::compose(&f32_prelude, src);
        let single = naga::front::wgsl::parse_str(&full).expect("the single module parses");
        for ep in &single.entry_points {
            cases.push((name.clone(), src.clone(), ep.name.clone()));
        }
    }
    for spec in k::ALL.iter() {
        cases.push((
            spec.name.to_string(),
            spec.source.to_string(),
            spec.entry.to_string(),
        ));
    }
    let mut checked = 0;
    for (name, src, entry) in &cases {
        let full = k::compose(&f32_prelude, src);
        let single = naga::front::wgsl::parse_str(&full).expect("the single module parses");
        let storage = single
            .global_variables
            .iter()
            .filter(|(_, v)| matches!(v.space, naga::AddressSpace::Storage { .. }))
            .count();
        // The parameters' size, as the executor's byte image of them has it.
        let (_, uniform) = single
            .global_variables
            .iter()
            .find(|(_, v)| v.space == naga::AddressSpace::Uniform)
            .expect("a uniform binding");
        let bytes = single.types[uniform.ty].inner.size(single.to_ctx()) as usize;
        for instances in [2, 3] {
            for (prelude, caps) in [
                (&f32_prelude, Capabilities::default()),
                (&f64_prelude, Capabilities::FLOAT64),
            ] {
                let code = k::compose(prelude, src);
                let (batched, numbers) = instanced(&code, instances, entry, bytes)
                    .unwrap_or_else(|e| panic!("{name}, {entry}: {e}"));
                assert_eq!(
                    numbers.len(),
                    storage,
                    "{name}: storage bindings per instance"
                );
                let what = format!("{name}, entry {entry}, {instances} instances");
                let (m, _) = validate(&what, "", &batched, caps);
                assert_eq!(m.entry_points.len(), 1, "{what}");
                assert_eq!(&m.entry_points[0].name, entry, "{what}");
                let bound = m
                    .global_variables
                    .iter()
                    .filter(|(_, v)| v.binding.is_some());
                assert_eq!(bound.count(), 1 + instances * storage, "{what}: bindings");
                checked += 1;
            }
        }
    }
    // Fused: two maps (1 entry point each) and two reductions (8 each); 28 single-op kernels;
    // 2 sizes, 2 preludes.
    assert_eq!(checked, (2 + 16 + 28) * 4, "instanced modules checked");
}

/// The f64 math builtins the f64 kernels may call: sqrt (IEEE 754 correctly rounded) and abs
/// (exact). Both are checked on the device by the f64 probe (src/exec/gpu/probe.rs).
const F64_BUILTINS_ALLOWED: [naga::MathFunction; 2] =
    [naga::MathFunction::Sqrt, naga::MathFunction::Abs];

/// Every math builtin applied to an f64 argument anywhere in `module`.
fn f64_math_calls(module: &naga::Module, info: &ModuleInfo) -> Vec<naga::MathFunction> {
    let mut found = Vec::new();
    let mut scan = |f: &naga::Function, fi: &naga::valid::FunctionInfo| {
        for (_, e) in f.expressions.iter() {
            if let naga::Expression::Math { fun, arg, .. } = e {
                let scalar = fi[*arg].ty.inner_with(&module.types).scalar();
                if scalar.is_some_and(|s| s.kind == naga::ScalarKind::Float && s.width == 8) {
                    found.push(*fun);
                }
            }
        }
    };
    for (h, f) in module.functions.iter() {
        scan(f, &info[h]);
    }
    for (i, ep) in module.entry_points.iter().enumerate() {
        scan(&ep.function, info.get_entry_point(i));
    }
    found
}

#[test]
fn f64_kernels_call_no_f64_transcendental_builtin() {
    let (_, _, f64_prelude) = shader_files();
    let mut all = Vec::new();
    for (name, src) in &modules() {
        let (module, info) = validate(name, &f64_prelude, src, Capabilities::FLOAT64);
        let calls = f64_math_calls(&module, &info);
        for fun in &calls {
            assert!(
                F64_BUILTINS_ALLOWED.contains(fun),
                "{name} (f64) calls the f64 builtin {fun:?}; only {F64_BUILTINS_ALLOWED:?} are \
                 allowed (see shaders/scalar_f64.wgsl)"
            );
        }
        all.extend(calls);
    }
    // The scan sees f64 builtins at all: the f64 elementwise kernels call sqrt and abs.
    for fun in F64_BUILTINS_ALLOWED {
        assert!(
            all.contains(&fun),
            "no f64 {fun:?} found: the scan is broken"
        );
    }
    // And it would see a forbidden one.
    let (module, info) = validate(
        "exp in f64",
        &f64_prelude,
        "fn bad(x: f64) -> f64 { return exp(x); }",
        Capabilities::FLOAT64,
    );
    let calls = f64_math_calls(&module, &info);
    assert!(calls.contains(&naga::MathFunction::Exp), "{calls:?}");
}
