//! The Penn Treebank reader against the facts of data/ptb/README.md and the reference's
//! rnn/data.py and rnn/utils.py: token counts, vocabulary, dictionary order, batchify and
//! get_batch layout, universal newlines, and errors that name the file and the line.

use darts::data::ptb::{batchify, get_batch, Corpus, EOS};
use std::path::PathBuf;

#[test]
fn embedded_corpus_has_the_readme_counts() {
    let c = Corpus::embedded().unwrap();
    // data/ptb/README.md: tokens including <eos> per line, and 10,000 distinct tokens.
    assert_eq!(c.train.len(), 929_589);
    assert_eq!(c.valid.len(), 73_760);
    assert_eq!(c.test.len(), 82_430);
    assert_eq!(c.vocab(), 10_000);
    // Ids by first appearance, train first: the first line (" aer banknote berlitz ...",
    // 24 words) gives ids 0..23 in order, and <eos> id 24 at its end.
    assert_eq!(c.words[0], "aer");
    assert_eq!(&c.train[..25], (0..25).collect::<Vec<u32>>().as_slice());
    assert_eq!(c.words[24], EOS);
    // The add-one unigram model's validation perplexity is finite and far above 1.
    let ppl = c.unigram_perplexity(&c.valid);
    println!("add-one unigram perplexity on valid: {ppl:.2}");
    assert!(ppl > 100.0 && ppl < 2000.0);
}

#[test]
fn batchify_lays_columns_out_contiguously_and_get_batch_trims_at_the_end() {
    let stream: Vec<u32> = (0..23).collect();
    let (data, rows) = batchify(&stream, 4);
    // 23 // 4 = 5 rows; column b holds stream[5b .. 5b + 5].
    assert_eq!(rows, 5);
    for b in 0..4 {
        for r in 0..5 {
            assert_eq!(data[r * 4 + b], (5 * b + r) as u32);
        }
    }
    let (x, y) = get_batch(&data, rows, 4, 1, 35);
    // L = min(35, rows - 1 - i) = 3.
    assert_eq!(x.shape(), [3, 4]);
    assert_eq!(x[[0, 2]], 11.0);
    assert_eq!(y[[0, 2]], 12.0);
    assert_eq!(y[[2, 3]], 19.0);
}

fn texts(train: &[u8], valid: &[u8], test: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![
        ("train.txt".into(), train.to_vec()),
        ("valid.txt".into(), valid.to_vec()),
        ("test.txt".into(), test.to_vec()),
    ]
}

#[test]
fn lines_end_at_any_newline_and_every_line_gets_eos() {
    let c = Corpus::from_texts(&texts(b" a b \r\n c\r d\n\n", b"b e\n", b"f")).unwrap();
    let w =
        |ids: &[u32]| -> Vec<String> { ids.iter().map(|&i| c.words[i as usize].clone()).collect() };
    assert_eq!(
        w(&c.train),
        ["a", "b", "<eos>", "c", "<eos>", "d", "<eos>", "<eos>"]
    );
    assert_eq!(w(&c.valid), ["b", "e", "<eos>"]);
    // A last line without a newline still counts.
    assert_eq!(w(&c.test), ["f", "<eos>"]);
    // The dictionary spans the three splits in order.
    assert_eq!(c.words, ["a", "b", "<eos>", "c", "d", "e", "f"]);
}

#[test]
fn bad_files_are_errors_naming_file_and_line() {
    let e = Corpus::from_texts(&texts(b"", b"x\n", b"y\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.txt") && e.contains("empty"), "{e}");
    let e = Corpus::from_texts(&texts(b"ok\nfine\n\xff\xfe\x00garbage\n", b"x\n", b"y\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.txt, line 3") && e.contains("UTF-8"),
        "{e}"
    );
    let e = Corpus::from_texts(&texts(b"a\n", b"b\nc\x00d\n", b"y\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("valid.txt, line 2") && e.contains("U+0000"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("darts-ptb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("train.txt"), "a b\n").unwrap();
    std::fs::write(dir.join("valid.txt"), "a\n").unwrap();
    let e = Corpus::from_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("test.txt") && e.contains("missing"), "{e}");
    std::fs::write(dir.join("ptb.test.txt.gz"), b"not gzip at all").unwrap();
    let e = Corpus::from_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("ptb.test.txt.gz") && e.contains("gzip"), "{e}");
    std::fs::write(dir.join("test.txt"), "b\n").unwrap();
    let c = Corpus::from_dir(&dir).unwrap();
    assert_eq!(c.words, ["a", "b", "<eos>"]);
    let e = Corpus::from_dir(&PathBuf::from("/nonexistent/ptb"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/ptb"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
