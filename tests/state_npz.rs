//! (d) State npz import/export: round trip, and errors naming the key and both shapes.

mod common;

use darts::darts::params::{State, StateError};
use ndarray::{ArrayD, IxDyn};

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("darts-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn state_round_trips_through_npz() {
    let cfg = common::tiny(false);
    let st = common::state(&cfg, 3);
    let path = tmp("roundtrip.npz");
    st.to_npz(&path).unwrap();
    let back = State::from_npz(&path, &cfg.layout().unwrap(), cfg.k()).unwrap();
    assert_eq!(back, st);
}

#[test]
fn missing_extra_and_misshaped_keys_are_named() {
    let cfg = common::tiny(false);
    let layout = cfg.layout().unwrap();
    let st = common::state(&cfg, 3);

    let mut bad = st.clone();
    bad.tensors.remove("cells.0.preprocess1.op.1.weight");
    let p = tmp("missing.npz");
    bad.to_npz(&p).unwrap();
    let e = State::from_npz(&p, &layout, cfg.k()).unwrap_err();
    assert!(
        matches!(e, StateError::Missing { ref key, .. } if key == "sd/cells.0.preprocess1.op.1.weight"),
        "{e}"
    );

    let mut bad = st.clone();
    bad.tensors
        .insert("cells.0.bogus".into(), ArrayD::zeros(IxDyn(&[2])));
    let p = tmp("extra.npz");
    bad.to_npz(&p).unwrap();
    let e = State::from_npz(&p, &layout, cfg.k()).unwrap_err();
    assert!(e.to_string().contains("sd/cells.0.bogus"), "{e}");

    let mut bad = st.clone();
    bad.tensors
        .insert("classifier.weight".into(), ArrayD::zeros(IxDyn(&[10, 3])));
    let p = tmp("shape.npz");
    bad.to_npz(&p).unwrap();
    let e = State::from_npz(&p, &layout, cfg.k())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("classifier.weight") && e.contains("[10, 3]") && e.contains("[10, 64]"),
        "{e}"
    );

    let mut bad = st.clone();
    bad.alpha_normal[[0, 0]] = f64::NAN;
    let p = tmp("nan.npz");
    bad.to_npz(&p).unwrap();
    let e = State::from_npz(&p, &layout, cfg.k())
        .unwrap_err()
        .to_string();
    assert!(e.contains("alpha/normal") && e.contains("NaN"), "{e}");

    let e = State::from_npz(&tmp("does-not-exist.npz"), &layout, cfg.k())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does-not-exist.npz"), "{e}");
}
