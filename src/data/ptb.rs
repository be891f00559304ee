//! The Penn Treebank word-level corpus as the reference reads it (rnn/data.py `Corpus`,
//! rnn/utils.py `batchify`, `get_batch`; RNN_REFERENCE_NOTES.md section 6): every line split
//! on whitespace with `<eos>` appended, one dictionary built over train, valid and test in that
//! order (ids by first appearance), and each split as one stream of ids.
//!
//! The three splits are embedded (`data/ptb/ptb.{train,valid,test}.txt.gz`, 1.98 MB; source,
//! licence and checksums in `data/ptb/README.md`), or read from a folder holding
//! `train.txt`, `valid.txt`, `test.txt` (the reference's `data/penn/` layout) or
//! `ptb.{train,valid,test}.txt[.gz]`. Lines end at `\n`, `\r\n` or `\r` (Python's universal
//! newlines). A missing or empty file, or one that is not UTF-8 text, is an error naming the
//! file and the line.

use flate2::read::GzDecoder;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The end-of-sentence token appended to every line.
pub const EOS: &str = "<eos>";

/// The three splits, in the order the dictionary is built over them.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

const EMBEDDED: [&[u8]; 3] = [
    include_bytes!("../../data/ptb/ptb.train.txt.gz"),
    include_bytes!("../../data/ptb/ptb.valid.txt.gz"),
    include_bytes!("../../data/ptb/ptb.test.txt.gz"),
];

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("{file}, line {line}: {reason}")]
    Line {
        file: String,
        line: usize,
        reason: String,
    },
}

/// The corpus: the dictionary (id -> word), and each split as a stream of ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Corpus {
    pub words: Vec<String>,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
}

impl Corpus {
    /// The embedded Penn Treebank.
    pub fn embedded() -> Result<Corpus, CorpusError> {
        let mut texts = Vec::with_capacity(3);
        for (split, gz) in SPLITS.iter().zip(EMBEDDED) {
            let name = format!("(embedded) data/ptb/ptb.{split}.txt.gz");
            texts.push((name.clone(), gunzip(gz, &name)?));
        }
        Self::from_texts(&texts)
    }

    /// The splits in `dir`: `train.txt` etc., or `ptb.train.txt` etc., each optionally
    /// gzipped (`.gz`).
    pub fn from_dir(dir: &Path) -> Result<Corpus, CorpusError> {
        if !dir.is_dir() {
            return Err(CorpusError::File {
                file: dir.display().to_string(),
                reason: "not a folder (expected train.txt, valid.txt, test.txt or \
                         ptb.{train,valid,test}.txt[.gz] in it)"
                    .into(),
            });
        }
        let mut texts = Vec::with_capacity(3);
        for split in SPLITS {
            let candidates: Vec<PathBuf> = [
                format!("{split}.txt"),
                format!("ptb.{split}.txt"),
                format!("{split}.txt.gz"),
                format!("ptb.{split}.txt.gz"),
            ]
            .iter()
            .map(|n| dir.join(n))
            .collect();
            let path =
                candidates
                    .iter()
                    .find(|p| p.is_file())
                    .ok_or_else(|| CorpusError::File {
                        file: candidates[0].display().to_string(),
                        reason: format!(
                            "missing: the {split} split is read from {split}.txt or \
                         ptb.{split}.txt (optionally .gz) in {}",
                            dir.display()
                        ),
                    })?;
            let name = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| CorpusError::File {
                file: name.clone(),
                reason: e.to_string(),
            })?;
            let bytes = if name.ends_with(".gz") {
                gunzip(&bytes, &name)?
            } else {
                bytes
            };
            texts.push((name, bytes));
        }
        Self::from_texts(&texts)
    }

    /// The corpus of three (name, bytes) texts, train, valid and test.
    pub fn from_texts(texts: &[(String, Vec<u8>)]) -> Result<Corpus, CorpusError> {
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut words: Vec<String> = Vec::new();
        let mut streams: Vec<Vec<u32>> = Vec::with_capacity(3);
        for (name, bytes) in texts {
            let lines = lines(bytes, name)?;
            let mut ids = Vec::new();
            for line in lines {
                for w in line.split_whitespace().chain(std::iter::once(EOS)) {
                    let id = match index.get(w) {
                        Some(&id) => id,
                        None => {
                            let id = words.len() as u32;
                            index.insert(w.to_string(), id);
                            words.push(w.to_string());
                            id
                        }
                    };
                    ids.push(id);
                }
            }
            streams.push(ids);
        }
        let test = streams.pop().unwrap_or_default();
        let valid = streams.pop().unwrap_or_default();
        let train = streams.pop().unwrap_or_default();
        Ok(Corpus {
            words,
            train,
            valid,
            test,
        })
    }

    /// V, the dictionary's size.
    pub fn vocab(&self) -> usize {
        self.words.len()
    }

    /// The perplexity on `eval` of the add-one (Laplace) unigram model estimated on the train
    /// split: p(w) = (count_train(w) + 1) / (N_train + V), exp(-mean log p(w)) over `eval`.
    pub fn unigram_perplexity(&self, eval: &[u32]) -> f64 {
        let mut counts = vec![0u64; self.vocab()];
        for &w in &self.train {
            counts[w as usize] += 1;
        }
        let denom = (self.train.len() + self.vocab()) as f64;
        let nll: f64 = eval
            .iter()
            .map(|&w| -((counts[w as usize] + 1) as f64 / denom).ln())
            .sum();
        (nll / eval.len().max(1) as f64).exp()
    }
}

fn gunzip(bytes: &[u8], name: &str) -> Result<Vec<u8>, CorpusError> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| CorpusError::File {
            file: name.to_string(),
            reason: format!("not a readable gzip file: {e}"),
        })?;
    Ok(out)
}

/// The lines of a text file (universal newlines), checked: UTF-8, no NUL or other control
/// characters but tab and form feed, and at least one line.
fn lines<'a>(bytes: &'a [u8], name: &str) -> Result<Vec<&'a str>, CorpusError> {
    if bytes.is_empty() {
        return Err(CorpusError::File {
            file: name.to_string(),
            reason: "is empty (a split needs at least one line)".into(),
        });
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let push = |s: usize, e: usize, out: &mut Vec<&'a str>| -> Result<(), CorpusError> {
        let line_no = out.len() + 1;
        let raw = &bytes[s..e];
        let text = std::str::from_utf8(raw).map_err(|err| CorpusError::Line {
            file: name.to_string(),
            line: line_no,
            reason: format!(
                "not UTF-8 text (invalid byte at column {}): a binary file?",
                err.valid_up_to() + 1
            ),
        })?;
        if let Some((col, c)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\u{c}' | '\u{b}'))
        {
            return Err(CorpusError::Line {
                file: name.to_string(),
                line: line_no,
                reason: format!(
                    "control character U+{:04X} at column {}: not a text file?",
                    c as u32,
                    col + 1
                ),
            });
        }
        out.push(text);
        Ok(())
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                push(start, i, &mut out)?;
                start = i + 1;
            }
            b'\r' => {
                push(start, i, &mut out)?;
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        push(start, bytes.len(), &mut out)?;
    }
    Ok(out)
}

/// `batchify(stream, bsz)`: the stream trimmed to a multiple of `bsz` and laid out as
/// [rows, bsz], column b the contiguous chunk b (row-major: data[r * bsz + b] =
/// stream[b * rows + r]).
pub fn batchify(stream: &[u32], bsz: usize) -> (Vec<u32>, usize) {
    let rows = stream.len() / bsz.max(1);
    let mut data = vec![0u32; rows * bsz];
    for b in 0..bsz {
        for r in 0..rows {
            data[r * bsz + b] = stream[b * rows + r];
        }
    }
    (data, rows)
}

/// `get_batch(source, i, seq_len)`: x = source[i .. i + L], y = source[i + 1 .. i + 1 + L]
/// with L = min(seq_len, rows - 1 - i), each [L, bsz] row-major, as f64 ids.
pub fn get_batch(
    data: &[u32],
    rows: usize,
    bsz: usize,
    i: usize,
    seq_len: usize,
) -> (ndarray::ArrayD<f64>, ndarray::ArrayD<f64>) {
    let l = seq_len.min(rows.saturating_sub(1 + i));
    let take = |from: usize| {
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[l, bsz]), |ix| {
            data[(from + ix[0]) * bsz + ix[1]] as f64
        })
    };
    (take(i), take(i + 1))
}
