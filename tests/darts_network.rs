//! The search network's structure against the reference: state_dict names, order and shapes,
//! and configuration errors.

use darts::darts::network::{ConfigError, SearchConfig};

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
        layers: 2,
        ..SearchConfig::paper()
    };
    assert!(matches!(
        cfg.validate(32, 32),
        Err(ConfigError::TooFewLayers(2))
    ));
    let e = SearchConfig::paper()
        .validate(30, 32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("30x32"), "{e}");
    let cfg = SearchConfig {
        c: 5,
        ..SearchConfig::paper()
    };
    assert!(matches!(
        cfg.validate(32, 32),
        Err(ConfigError::OddChannels(5))
    ));
}
