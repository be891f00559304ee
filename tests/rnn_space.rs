//! The recurrent search space's bookkeeping against the reference: state_dict names, order
//! and shapes (rnn_state_dict_layout_V50_H8.txt, copied from shared/reference), parameter
//! counts, genotype derivation with the reference's tie rules, and the genotype text form.

use darts::darts::params::Kind;
use darts::darts::rnn::genotype::{derive, named, RnnGenotype};
use darts::darts::rnn::state::{RnnConfig, RnnState};
use darts::darts::rnn::{row_offset, ROWS};
use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;

#[test]
fn search_layout_equals_the_reference_state_dict() {
    let text = include_str!("data/rnn_state_dict_layout_V50_H8.txt");
    let expected: Vec<(String, Vec<usize>)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once('\t').unwrap();
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
    let cfg = RnnConfig {
        ntoken: 50,
        nhid: 8,
    };
    let got: Vec<(String, Vec<usize>)> = cfg
        .search_layout()
        .entries
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    assert_eq!(got, expected);
    // named_parameters(): the tied tensor once, as encoder.weight, and decoder.bias last.
    let layout = cfg.search_layout();
    let params: Vec<&str> = layout.weights().map(|e| e.0.as_str()).collect();
    assert_eq!(params.len(), 11);
    assert_eq!(params[0], "encoder.weight");
    assert_eq!(params[10], "decoder.bias");
    assert!(layout
        .entries
        .iter()
        .any(|e| e.0 == "decoder.weight" && e.2 == Kind::Tied));
}

#[test]
fn parameter_counts_are_the_references() {
    // The notes' figures: 1,730 (V 50, H 8), 4.81M (PTB search, H 300), 22.96M (final, H 850).
    assert_eq!(
        RnnConfig {
            ntoken: 50,
            nhid: 8
        }
        .parameter_count(8),
        1_730
    );
    assert_eq!(
        RnnConfig {
            ntoken: 10_000,
            nhid: 300
        }
        .parameter_count(8),
        4_810_000
    );
    assert_eq!(
        RnnConfig {
            ntoken: 10_000,
            nhid: 850
        }
        .parameter_count(8),
        22_960_000
    );
}

#[test]
fn init_ties_the_decoder_to_the_encoder_and_follows_the_reference_ranges() {
    let cfg = RnnConfig {
        ntoken: 20,
        nhid: 4,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let st = RnnState::init(&cfg.search_layout(), true, &mut rng);
    assert_eq!(st.tensors["encoder.weight"], st.tensors["decoder.weight"]);
    assert!(st.tensors["rnns.0._W0"].iter().all(|x| x.abs() < 0.04));
    assert!(st.tensors["decoder.bias"].iter().all(|&x| x == 0.0));
    assert!(st.tensors["rnns.0.bn.running_var"]
        .iter()
        .all(|&x| x == 1.0));
    assert_eq!(st.alpha.shape(), [ROWS, 5]);
    assert!(st.alpha.iter().all(|x| x.abs() < 1e-2));
}

/// alpha whose softmax rows are chosen through logits: log(p) per column.
fn alpha_from_probs(rows: &[[f64; 5]]) -> ArrayD<f64> {
    let mut a = ArrayD::zeros(IxDyn(&[ROWS, 5]));
    for (r, p) in rows.iter().enumerate() {
        for k in 0..5 {
            a[[r, k]] = p[k].ln();
        }
    }
    a
}

#[test]
fn genotype_ties_follow_the_reference() {
    let uniform = [0.2; 5];
    let mut rows = vec![uniform; ROWS];
    // Node 1: rows 1 (from s_0) and 2 (from s_1) tie on their best non-none probability:
    // the smaller predecessor wins; on row 1, relu and sigmoid tie: the lower column wins.
    rows[row_offset(1)] = [0.1, 0.1, 0.3, 0.3, 0.2];
    rows[row_offset(1) + 1] = [0.1, 0.3, 0.2, 0.2, 0.2];
    // Node 2: a none-dominated row (none 0.6) whose best non-none (0.25) beats the others'
    // (0.21) still wins.
    rows[row_offset(2)] = [0.16, 0.21, 0.21, 0.21, 0.21];
    rows[row_offset(2) + 1] = [0.6, 0.05, 0.05, 0.25, 0.05];
    rows[row_offset(2) + 2] = [0.16, 0.21, 0.21, 0.21, 0.21];
    let g = derive(&alpha_from_probs(&rows));
    assert_eq!(g.recurrent[1], ("relu".to_string(), 0));
    assert_eq!(g.recurrent[2], ("sigmoid".to_string(), 1));
    // Uniform rows everywhere else: predecessor 0, op tanh (the lowest non-none column).
    assert_eq!(g.recurrent[0], ("tanh".to_string(), 0));
    assert_eq!(g.recurrent[7], ("tanh".to_string(), 0));
    assert_eq!(g.concat, (1..=8).collect::<Vec<_>>());
}

#[test]
fn genotype_text_round_trips_and_bad_text_is_refused() {
    let v2 = named("DARTS_V2").unwrap();
    let text = v2.to_string();
    assert_eq!(
        text,
        "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))"
    );
    assert_eq!(text.parse::<RnnGenotype>().unwrap(), v2);
    assert_eq!(named("DARTS").unwrap(), v2);
    assert_ne!(named("DARTS_V1").unwrap(), v2);
    for (bad, says) in [
        (
            "Genotype(recurrent=[('conv', 0)], concat=range(1, 2))",
            "unknown operation 'conv'",
        ),
        (
            "Genotype(recurrent=[('relu', 1)], concat=range(1, 2))",
            "input index 1",
        ),
        (
            "Genotype(recurrent=[('relu', 0)], concat=range(1, 3))",
            "concat index 2",
        ),
        (
            "Genotype(recurrent=[('relu', 0)])",
            "missing field 'concat'",
        ),
    ] {
        let e = bad.parse::<RnnGenotype>().unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
