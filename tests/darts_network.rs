//! The search network's structure against the reference: state_dict names, order and shapes,
//! and configuration errors.

use darts::darts::network::{ConfigError, SearchConfig};

mod common;

/// Every entry of the reference state_dict for C=4, layers=3 (dumped from the unmodified
/// reference with modern PyTorch, tests/data/state_dict_layout_C4_L3.txt), in module order,
/// with the same shapes.
#[test]
fn layout_matches_reference_state_dict() {
    let text = include_str!("data/state_dict_layout_C4_L3.txt");
    let want: Vec<(String, Vec<usize>)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once('\t').expect("name<TAB>shape");
            let dims = shape
                .trim()
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            (name.to_string(), dims)
        })
        .collect();
    let cfg = SearchConfig {
        c: 4,
        layers: 3,
        ..SearchConfig::paper()
    };
    let layout = cfg.layout().unwrap();
    let got: Vec<(String, Vec<usize>)> = layout
        .entries
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "entry {i}");
    }
    assert_eq!(got.len(), want.len());
}

/// The paper configuration has 1,930,618 weights and 4,186 state_dict entries
/// (REFERENCE_NOTES.md section 2).
#[test]
fn paper_config_size_matches_reference() {
    let layout = SearchConfig::paper().layout().unwrap();
    let weights: usize = layout
        .weights()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    assert_eq!(weights, 1_930_618);
    assert_eq!(layout.entries.len(), 4_186);
}

#[test]
fn unsupported_configurations_are_clear_errors() {
    let cfg = SearchConfig {
        layers: 0,
        ..SearchConfig::paper()
    };
    assert!(matches!(
        cfg.validate(32, 32),
        Err(ConfigError::Zero("layers"))
    ));
    // 1 and 2 layers run (every cell reduces), as in the reference.
    for layers in [1, 2] {
        let cfg = SearchConfig {
            layers,
            ..SearchConfig::paper()
        };
        cfg.validate(32, 32).unwrap();
        assert!(!cfg.has_normal_cells());
    }
    assert!(SearchConfig::paper().has_normal_cells());
    let e = SearchConfig::paper()
        .validate(30, 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("30x32"), "{e}");
}

/// An odd C is a configuration the reference runs: every FactorizedReduce comes at or after
/// the first reduction cell, where C_curr is already 2C (REFERENCE_NOTES 2), so its two halves
/// are whole. C = 3 validates, builds and gives a finite loss and gradients.
#[test]
fn odd_channel_counts_run_as_in_the_reference() {
    use darts::check::oracle::architect::{evaluate, NetGraph};
    use darts::exec::cpu::CpuExecutor;
    let cfg = SearchConfig {
        c: 3,
        ..common::tiny(false)
    };
    cfg.validate(8, 8).unwrap();
    let st = common::state(&cfg, 3);
    let net = NetGraph::build(&cfg, &[2, 3, 8, 8]).unwrap();
    let b = common::batch(2, 8, cfg.num_classes, 4);
    let mut exec = CpuExecutor::<f64>::new();
    let e = evaluate(&mut exec, &net, &common::point(&cfg, &st), &b, "C = 3").unwrap();
    assert!(e.loss.is_finite(), "{}", e.loss);
    assert!(e.grad_w.iter().all(|g| g.iter().all(|v| v.is_finite())));
    // The reduction cell's FactorizedReduce (skip_connect) has C_out = 2C = 6: halves of 3.
    assert!(st
        .tensors
        .iter()
        .any(|(n, t)| n.ends_with("conv_1.weight") && t.shape()[0] == 3));
}

/// The configuration read back from a state's shapes is the one that made it, over C (odd
/// included), layers (1 and 2: every cell reduces), steps, multiplier, stem multiplier and
/// classes; a stem multiplier or multiplier given that disagrees with the shapes is an error
/// naming both values.
#[test]
fn configuration_is_read_back_from_state_shapes() {
    let mut checked = 0;
    for (c, layers, steps, multiplier, stem, classes) in [
        (4, 3, 4, 4, 3, 10),
        (3, 1, 2, 2, 1, 7),
        (5, 2, 3, 1, 2, 10),
        (2, 5, 4, 3, 3, 4),
        (6, 4, 1, 1, 4, 2),
        (16, 8, 4, 4, 3, 10),
    ] {
        let cfg = SearchConfig {
            c,
            layers,
            steps,
            multiplier,
            stem_multiplier: stem,
            num_classes: classes,
            smooth: false,
        };
        cfg.validate(8, 8).unwrap();
        let layout = cfg.layout().unwrap();
        let shapes = || layout.entries.iter().map(|(n, s, _)| (n.as_str(), &s[..]));
        let read = SearchConfig::from_state_shapes(shapes(), cfg.k(), None, None).unwrap();
        assert_eq!(read, cfg);
        let given =
            SearchConfig::from_state_shapes(shapes(), cfg.k(), Some(stem), Some(multiplier));
        assert_eq!(given.unwrap(), cfg);
        let e = SearchConfig::from_state_shapes(shapes(), cfg.k(), None, Some(multiplier + 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("multiplier {} was given", multiplier + 1))
                && e.contains(&format!("say {multiplier}")),
            "{e}"
        );
        checked += 1;
    }
    assert_eq!(checked, 6);
    let e = SearchConfig::from_state_shapes(std::iter::empty(), 14, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cells.0.preprocess1"), "{e}");
}
