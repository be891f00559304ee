//! (e) Genotype derivation on hand-made alpha matrices (ties included), the reference's text
//! form, and parse errors.

use darts::darts::genotype::{derive, named, parse_cell, Genotype};
use ndarray::{ArrayD, IxDyn};

/// A [14, 8] alpha matrix with given (row, column, value) entries and zeros elsewhere.
fn alpha(entries: &[(usize, usize, f64)]) -> ArrayD<f64> {
    let mut a = ArrayD::zeros(IxDyn(&[14, 8]));
    for &(r, c, v) in entries {
        a[[r, c]] = v;
    }
    a
}

#[test]
fn derivation_ranks_edges_by_strongest_non_none_weight() {
    // Node 0 (rows 0, 1): row 1 prefers sep_conv_3x3 (4) strongly, row 0 dil_conv_5x5 (7).
    // `none` is huge on row 0 but is ignored for ranking and for the op choice.
    // Node 1 (rows 2..4): row 4 (j = 2) strongest with skip_connect, then row 2 (j = 0).
    let a = alpha(&[
        (0, 0, 9.0),
        (0, 7, 1.0),
        (1, 4, 3.0),
        (2, 2, 1.5),
        (4, 3, 2.0),
    ]);
    let cell = parse_cell(&a, 4, 4);
    assert_eq!(cell.ops[0], ("sep_conv_3x3".to_string(), 1));
    assert_eq!(cell.ops[1], ("dil_conv_5x5".to_string(), 0));
    assert_eq!(cell.ops[2], ("skip_connect".to_string(), 2));
    assert_eq!(cell.ops[3], ("avg_pool_3x3".to_string(), 0));
    assert_eq!(cell.concat, vec![2, 3, 4, 5]);
}

#[test]
fn ties_go_to_the_smaller_index() {
    // All-zero alphas: every probability ties. Edges keep order (j = 0 then 1), ops take the
    // lowest non-none index (max_pool_3x3), as the reference's stable sort and strict '>'.
    let cell = parse_cell(&alpha(&[]), 4, 4);
    for (i, (op, j)) in cell.ops.iter().enumerate() {
        assert_eq!(op, "max_pool_3x3");
        assert_eq!(*j, i % 2);
    }
    // Tie between edges 1 and 2 of node 1 (rows 3, 4) above edge 0: keep j = 1 first.
    let cell = parse_cell(&alpha(&[(3, 5, 1.0), (4, 6, 1.0)]), 4, 4);
    assert_eq!(cell.ops[2], ("sep_conv_5x5".to_string(), 1));
    assert_eq!(cell.ops[3], ("dil_conv_3x3".to_string(), 2));
}

#[test]
fn text_form_round_trips_and_matches_reference_repr() {
    let g = derive(&alpha(&[(1, 4, 3.0)]), &alpha(&[(0, 1, 2.0)]), 4, 4);
    let text = g.to_string();
    assert!(text.starts_with("Genotype(normal=[('sep_conv_3x3', 1), ('max_pool_3x3', 0), "));
    assert!(text.contains("normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "));
    assert!(text.ends_with("reduce_concat=range(2, 6))"));
    let back: Genotype = text.parse().unwrap();
    assert_eq!(back, g);
    // The published genotypes use plain lists for the concat.
    let v2 = named("DARTS_V2").unwrap();
    assert_eq!(v2.normal.ops[7], ("dil_conv_3x3".to_string(), 2));
    assert_eq!(v2.reduce.concat, vec![2, 3, 4, 5]);
    assert_eq!(named("DARTS").unwrap(), v2);
    assert_eq!(v2.to_string().parse::<Genotype>().unwrap(), v2);
}

#[test]
fn malformed_genotypes_point_at_the_offending_token() {
    let good = named("DARTS_V1").unwrap().to_string();
    let bad = good.replacen("sep_conv_3x3", "sep_conv_4x4", 1);
    let e = bad.parse::<Genotype>().unwrap_err();
    assert!(e.reason.contains("unknown operation 'sep_conv_4x4'"), "{e}");
    assert_eq!(e.column, bad.find("'sep_conv_4x4'").unwrap() + 1);
    let bad = good.replacen("('skip_connect', 0)", "('skip_connect', 7)", 1);
    let e = bad.parse::<Genotype>().unwrap_err();
    assert!(e.reason.contains("input index 7"), "{e}");
    assert_eq!(e.near, "7");
    let e = "Genotype(normal=[('sep_conv_3x3', 0)"
        .parse::<Genotype>()
        .unwrap_err();
    assert!(e.to_string().contains("end of input"), "{e}");
    let e = "Genotype(normal=[], foo=1)"
        .parse::<Genotype>()
        .unwrap_err();
    assert!(e.to_string().contains("two (op, input) entries"), "{e}");
}

#[test]
fn a_field_given_twice_is_an_error_at_its_second_occurrence() {
    let good = named("DARTS_V2").unwrap().to_string();
    let v2 = named("DARTS_V2").unwrap();
    let ops = |c: &darts::darts::genotype::CellGenes| {
        let items: Vec<String> = c.ops.iter().map(|(o, j)| format!("('{o}', {j})")).collect();
        format!("[{}]", items.join(", "))
    };
    for (field, value) in [
        ("normal", ops(&v2.normal)),
        ("normal_concat", "range(2, 6)".to_string()),
        ("reduce", ops(&v2.reduce)),
        ("reduce_concat", "[2, 3, 4, 5]".to_string()),
    ] {
        let bad = format!("{}, {field}={value})", &good[..good.len() - 1]);
        let e = bad.parse::<Genotype>().unwrap_err();
        assert_eq!(e.reason, format!("field '{field}' is given twice"), "{bad}");
        assert_eq!(e.near, field);
        assert_eq!(e.column, bad.rfind(&format!(" {field}=")).unwrap() + 2);
    }
}
