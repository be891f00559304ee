//! Every WGSL file in `shaders/` parses and validates with naga, so a broken shader is caught
//! by a plain `cargo test` on a machine without a GPU.

use std::path::Path;

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut checked = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    entries.sort();
    for path in entries {
        let src = std::fs::read_to_string(&path).expect("readable shader");
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
            panic!(
                "{} does not parse:\n{}",
                path.display(),
                e.emit_to_string(&src)
            )
        });
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| {
            panic!(
                "{} does not validate:\n{}",
                path.display(),
                e.emit_to_string(&src)
            )
        });
        assert!(
            !module.entry_points.is_empty(),
            "{} has no entry point",
            path.display()
        );
        checked.push(path.file_name().expect("file name").to_owned());
    }
    for want in ["elementwise.wgsl", "matmul.wgsl", "reduce.wgsl"] {
        assert!(
            checked.iter().any(|c| c == want),
            "shaders/{want} was not found among {checked:?}"
        );
    }
}
