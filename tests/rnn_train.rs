//! `darts train --space rnn`: the derived cell's language model learns from scratch (test
//! perplexity well below the uniform model's V), the parameter count is the reference's, the
//! NT-ASGD trigger is train.py's, and bad genotypes and flags are refused.

use darts::darts::rnn::genotype::named;
use darts::data::ptb::Corpus;
use darts::exec::{open_as, Backend, Dtype};
use darts::train::recurrent::{nt_asgd_switch, RnnTrainOptions, RnnTrainer};

#[test]
fn derived_cell_learns_from_scratch() {
    let corpus = Corpus::embedded().unwrap();
    let g = named("DARTS_V2").unwrap();
    let mut o = RnnTrainOptions::quick();
    o.nhid = 8;
    o.batch_size = 8;
    o.eval_batch_size = 8;
    o.test_batch_size = 8;
    o.bptt = 10;
    o.epochs = 3;
    o.nonmono = 1;
    o.max_train_rows = Some(300);
    o.max_eval_rows = Some(100);
    o.dtype = Dtype::F64;
    let mut t =
        RnnTrainer::<f64>::new(o, corpus.vocab(), &g, open_as::<f64>(Backend::Cpu).unwrap())
            .unwrap();
    let mut seen = 0;
    let r = t.run(&corpus, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 3);
    let uniform = corpus.vocab() as f64;
    println!(
        "valid ppl per epoch {:?}, test {:.1}",
        r.epochs.iter().map(|e| e.valid_ppl).collect::<Vec<_>>(),
        r.test_ppl
    );
    assert!(r.test_ppl < uniform / 3.0, "{} vs {uniform}", r.test_ppl);
    // sum(p.numel() for p in model.parameters()): V H + 4 H^2 + 8 (2 H^2) + V.
    assert_eq!(r.parameters, 10_000 * 8 + 4 * 64 + 8 * 2 * 64 + 10_000);
}

#[test]
fn nt_asgd_switches_as_train_py_does() {
    // More than nonmono losses recorded, and the new one above the minimum of all but the last
    // nonmono.
    assert!(!nt_asgd_switch(&[5.0, 4.0], 6.0, 2));
    assert!(nt_asgd_switch(&[5.0, 4.0, 3.0], 5.5, 2));
    assert!(!nt_asgd_switch(&[5.0, 4.0, 3.0], 4.9, 2));
    assert!(!nt_asgd_switch(&[5.0, 4.0, 3.0], 5.0, 2));
    assert!(nt_asgd_switch(&[5.0], 5.1, 0));
}

#[test]
fn train_rnn_refuses_bad_genotypes_and_flags() {
    let bin = env!("CARGO_BIN_EXE_darts");
    for (args, says) in [
        (vec!["--genotype", "NOPE"], "unknown recurrent genotype"),
        (
            vec![
                "--genotype",
                "Genotype(recurrent=[('conv', 0)], concat=range(1, 2))",
            ],
            "conv",
        ),
        (
            vec!["--genotype", "DARTS_V2", "--dropout", "1"],
            "--dropout",
        ),
        (vec!["--genotype", "DARTS_V2", "--layers", "3"], "--layers"),
        (vec!["--genotype", "DARTS_V2", "--bptt", "1"], "--bptt"),
        (
            vec!["--genotype", "DARTS_V2", "--learning-rate", "nan"],
            "--learning-rate",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .args(["train", "--space", "rnn"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = std::process::Command::new(bin)
        .args(["train", "--genotype", "DARTS_V2", "--nhid", "8"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nhid applies to --space rnn only"));
}
