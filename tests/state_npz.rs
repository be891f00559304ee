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

/// Every key of a state file must be known: an unknown `momentum_buffer/<name>` is an error
/// like an unknown `sd/` key, and so is any other stray key; momentum buffers are all or none.
#[test]
fn unknown_keys_are_errors_everywhere_and_momentum_is_all_or_none() {
    use darts::darts::params::write_npz;
    let cfg = common::tiny(false);
    let layout = cfg.layout().unwrap();
    let st = common::state(&cfg, 3);
    let mut items: Vec<(String, ArrayD<f64>)> = st
        .tensors
        .iter()
        .map(|(k, v)| (format!("sd/{k}"), v.clone()))
        .collect();
    items.push(("alpha/normal".into(), st.alpha_normal.clone()));
    items.push(("alpha/reduce".into(), st.alpha_reduce.clone()));
    let write = |name: &str, extra: &[(String, ArrayD<f64>)]| {
        let p = tmp(name);
        let all: Vec<(&str, &ArrayD<f64>)> = items
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        write_npz(&p, all).unwrap();
        p
    };
    let buffers: Vec<(String, ArrayD<f64>)> = layout
        .weights()
        .map(|(n, s, _)| (format!("momentum_buffer/{n}"), ArrayD::zeros(IxDyn(s))))
        .collect();

    let p = write("with-momentum.npz", &buffers);
    let (back, m) = State::read_with_momentum(&p, &layout, cfg.k()).unwrap();
    assert_eq!(back, st);
    assert_eq!(m.unwrap().len(), layout.weights().count());
    let (_, m) =
        State::read_with_momentum(&write("no-momentum.npz", &[]), &layout, cfg.k()).unwrap();
    assert!(m.is_none());

    let bogus = [(
        "momentum_buffer/cells.0.bogus".to_string(),
        ArrayD::zeros(IxDyn(&[2])),
    )];
    let e = State::from_npz(&write("bogus-momentum.npz", &bogus), &layout, cfg.k()).unwrap_err();
    assert!(
        matches!(e, StateError::Extra { ref key, .. } if key == "momentum_buffer/cells.0.bogus"),
        "{e}"
    );
    let stray = [("notes".to_string(), ArrayD::zeros(IxDyn(&[1])))];
    let e = State::from_npz(&write("stray.npz", &stray), &layout, cfg.k()).unwrap_err();
    assert!(
        matches!(e, StateError::Extra { ref key, .. } if key == "notes"),
        "{e}"
    );

    let e = State::from_npz(
        &write("partial-momentum.npz", &buffers[1..]),
        &layout,
        cfg.k(),
    )
    .unwrap_err();
    assert!(
        matches!(e, StateError::Missing { ref key, .. } if *key == buffers[0].0),
        "{e}"
    );
    let mut wrong = buffers.clone();
    wrong[0].1 = ArrayD::zeros(IxDyn(&[1]));
    let e = State::from_npz(&write("wrong-momentum.npz", &wrong), &layout, cfg.k()).unwrap_err();
    assert!(
        matches!(e, StateError::Shape { ref key, .. } if *key == buffers[0].0),
        "{e}"
    );
}

/// A state file whose keys lack the `sd/` prefix is reported as such, not as missing the
/// first key it does hold.
#[test]
fn a_state_without_the_sd_prefix_is_reported_as_such() {
    use darts::darts::params::write_npz;
    let cfg = common::tiny(false);
    let layout = cfg.layout().unwrap();
    let st = common::state(&cfg, 3);
    let mut all: Vec<(&str, &ArrayD<f64>)> =
        st.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.push(("alpha/normal", &st.alpha_normal));
    all.push(("alpha/reduce", &st.alpha_reduce));
    let p = tmp("no-prefix.npz");
    write_npz(&p, all).unwrap();
    let e = State::from_npz(&p, &layout, cfg.k()).unwrap_err();
    assert!(matches!(e, StateError::NoPrefix { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("'sd/' prefix") && msg.contains("no-prefix.npz"),
        "{msg}"
    );
    assert!(!msg.contains("missing"), "{msg}");
}

/// A flipped bit inside a member is corruption (named with the member), not "an unsupported
/// dtype"; a well-formed array of another dtype is the one case that says dtype.
#[test]
fn corruption_and_unsupported_dtypes_are_told_apart() {
    let cfg = common::tiny(false);
    let layout = cfg.layout().unwrap();
    let st = common::state(&cfg, 3);
    let p = tmp("flip.npz");
    st.to_npz(&p).unwrap();
    let mut bytes = std::fs::read(&p).unwrap();
    // The classifier weight is the largest member; flip one bit in the middle of its data.
    let name = b"sd/classifier.weight.npy";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("member name in the local header");
    bytes[at + name.len() + 400] ^= 0x10;
    let q = tmp("flipped.npz");
    std::fs::write(&q, &bytes).unwrap();
    let e = State::from_npz(&q, &layout, cfg.k())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sd/classifier.weight") && e.contains("corrupt"),
        "{e}"
    );
    assert!(!e.contains("dtype"), "{e}");

    let r = tmp("int32.npz");
    let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&r).unwrap());
    w.add_array("alpha/normal", &ndarray::Array2::<i32>::zeros((14, 8)))
        .unwrap();
    w.finish().unwrap();
    let e = darts::darts::params::read_npz(&r).unwrap_err().to_string();
    assert!(
        e.contains("alpha/normal") && e.contains("dtype '<i4' is not supported"),
        "{e}"
    );

    let t = tmp("truncated.npz");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let e = State::from_npz(&t, &layout, cfg.k())
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated.npz") && !e.contains("dtype"), "{e}");
}

/// The batch file: the four keys exactly, shapes that agree, labels that are class indices.
#[test]
fn batch_files_are_read_strictly() {
    use darts::darts::batch_file::read_batch_npz;
    use darts::darts::params::write_npz;
    let x = ArrayD::from_elem(IxDyn(&[2, 3, 4, 4]), 0.5);
    let y = ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0, 9.0]).unwrap();
    let write = |name: &str, extra: Vec<(&'static str, &ArrayD<f64>)>| {
        let p = tmp(name);
        let mut all = vec![
            ("x_train", &x),
            ("y_train", &y),
            ("x_valid", &x),
            ("y_valid", &y),
        ];
        all.extend(extra);
        write_npz(&p, all).unwrap();
        p
    };
    let b = read_batch_npz(&write("batch.npz", vec![]), 10).unwrap();
    assert_eq!(b.train.onehot[[1, 9]], 1.0);
    let e = read_batch_npz(&write("batch-extra.npz", vec![("x_test", &x)]), 10).unwrap_err();
    assert!(
        matches!(e, StateError::Extra { ref key, .. } if key == "x_test"),
        "{e}"
    );
    let e = read_batch_npz(&write("batch-classes.npz", vec![]), 5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("y_train") && e.contains("9 is not a class index in 0..5"),
        "{e}"
    );
}
