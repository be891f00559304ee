//! Keeps the derivations in proofs/ honest: every claim there ends with a line
//! `Checked by: tests/<file>.rs::<test>[, tests/<file>.rs::<test> ...]`, and every such
//! reference must name a test file that exists and defines `fn <test>(` (a plain `#[test]`,
//! a test inside a `proptest!` block, or a generic check `fn <test><E: ...>(` that a macro
//! instantiates per executor). A claim whose test is renamed or deleted fails here, with the
//! proof file and line of the broken link.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

/// The marker that opens a link line (after leading whitespace).
const MARKER: &str = "Checked by:";
/// The marker that opens a claim in a proof file.
const CLAIM: &str = "**Claim";

/// One `tests/<file>.rs::<name>` reference, or the reason an entry does not parse as one.
#[derive(Debug, PartialEq)]
enum Link {
    Test { file: String, name: String },
    Malformed(String),
}

/// Parses the entries after the marker of one link line: comma-separated references, with an
/// optional trailing full stop.
fn parse_links(rest: &str) -> Vec<Link> {
    rest.trim()
        .trim_end_matches('.')
        .split(',')
        .map(|e| {
            let e = e.trim().trim_matches('`');
            let parsed = e.split_once("::").and_then(|(path, name)| {
                let file = path.strip_prefix("tests/")?.strip_suffix(".rs")?;
                let ident = |s: &str| {
                    !s.is_empty()
                        && !s.starts_with(|c: char| c.is_ascii_digit())
                        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                (ident(file) && ident(name)).then(|| Link::Test {
                    file: file.to_string(),
                    name: name.to_string(),
                })
            });
            parsed.unwrap_or_else(|| Link::Malformed(e.to_string()))
        })
        .collect()
}

/// Every link line of a Markdown text: (1-based line number, parsed entries).
fn link_lines(text: &str) -> Vec<(usize, Vec<Link>)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            l.trim_start()
                .strip_prefix(MARKER)
                .map(|rest| (i + 1, parse_links(rest)))
        })
        .collect()
}

/// True when `src` defines a function `name`: the token `fn`, whitespace, the exact name, then
/// `(` or `<` (optionally after whitespace). Lines that are `//` comments do not count.
fn defines_fn(src: &str, name: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .any(|line| {
            let mut from = 0;
            while let Some(k) = line[from..].find("fn") {
                let at = from + k;
                from = at + 2;
                if line[..at].chars().next_back().is_some_and(is_ident) {
                    continue;
                }
                let after = &line[at + 2..];
                let rest = after.trim_start();
                if rest.len() == after.len() {
                    continue; // `fn` must be followed by whitespace
                }
                if let Some(tail) = rest.strip_prefix(name) {
                    if tail.trim_start().starts_with(['(', '<']) {
                        return true;
                    }
                }
            }
            false
        })
}

/// The broken links of one proof file, each as "proofs/<file>:<line>: <reason>".
/// `source` returns the text of tests/<file>.rs, or None if that file does not exist.
fn broken_links(
    proof: &str,
    text: &str,
    source: &mut impl FnMut(&str) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (line, links) in link_lines(text) {
        if links.is_empty() {
            out.push(format!("{proof}:{line}: `{MARKER}` names no test"));
        }
        for l in links {
            match l {
                Link::Malformed(e) => out.push(format!(
                    "{proof}:{line}: '{e}' is not of the form tests/<file>.rs::<test>"
                )),
                Link::Test { file, name } => match source(&file) {
                    None => out.push(format!(
                        "{proof}:{line}: tests/{file}.rs::{name}: tests/{file}.rs does not exist"
                    )),
                    Some(src) if !defines_fn(&src, &name) => out.push(format!(
                        "{proof}:{line}: tests/{file}.rs::{name}: no `fn {name}(` in tests/{file}.rs"
                    )),
                    Some(_) => {}
                },
            }
        }
    }
    out
}

/// Claims without a link: a `**Claim` marker must be followed by a link line before the next
/// claim (or the end of the file). Returns the 1-based lines of the unlinked claims.
fn unlinked_claims(text: &str) -> Vec<usize> {
    let mut open: Option<usize> = None;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if t.starts_with(CLAIM) {
            out.extend(open.replace(i + 1));
        } else if t.starts_with(MARKER) {
            open = None;
        }
    }
    out.extend(open);
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (file name, text) of every proofs/*.md, sorted by name.
fn proof_files() -> Vec<(String, String)> {
    let dir = root().join("proofs");
    let mut files: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (name, text)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_proof_claim_links_an_existing_test() {
    let tests_dir = root().join("tests");
    let mut cache: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut source = |file: &str| -> Option<String> {
        cache
            .entry(file.to_string())
            .or_insert_with(|| fs::read_to_string(tests_dir.join(format!("{file}.rs"))).ok())
            .clone()
    };
    let mut broken = Vec::new();
    let mut total = 0;
    for (name, text) in proof_files() {
        total += link_lines(&text)
            .iter()
            .map(|(_, l)| l.len())
            .sum::<usize>();
        broken.extend(broken_links(&format!("proofs/{name}"), &text, &mut source));
    }
    assert!(total > 0, "no `{MARKER}` links found under proofs/");
    assert!(
        broken.is_empty(),
        "{} of {total} proof links are broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_proof_file_has_claims() {
    let files = proof_files();
    assert!(
        files.iter().any(|(n, _)| n == "README.md"),
        "proofs/README.md is missing"
    );
    let readme = &files
        .iter()
        .find(|(n, _)| n == "README.md")
        .expect("checked")
        .1;
    let mut problems = Vec::new();
    for (name, text) in files.iter().filter(|(n, _)| n != "README.md") {
        let claims = text
            .lines()
            .filter(|l| l.trim_start().starts_with(CLAIM))
            .count();
        if claims == 0 {
            problems.push(format!("proofs/{name}: no `{CLAIM}` paragraphs"));
        }
        if link_lines(text).is_empty() {
            problems.push(format!("proofs/{name}: no `{MARKER}` lines"));
        }
        for line in unlinked_claims(text) {
            problems.push(format!(
                "proofs/{name}:{line}: claim has no `{MARKER}` line before the next claim"
            ));
        }
        if !readme.contains(&format!("({name})")) {
            problems.push(format!("proofs/README.md does not index {name}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself can fail: a synthetic proof with one good link, three broken ones (a
/// missing fn, a missing file, a malformed path) and one unlinked claim.
#[test]
fn checker_reports_broken_links_in_a_synthetic_proof() {
    let proof = "\
# Synthetic

**Claim 1.** Something true.

Checked by: tests/a.rs::good, tests/a.rs::gone
**Claim 2.** Something else.
  Checked by: tests/missing.rs::anything, src/a.rs::good
**Claim 3.** Unlinked.
";
    let a = "#[test]\nfn good() {}\n// fn gone() {}\nfn gone_too() {}\nproptest! { #[test] fn prop(x in 0..1) {} }\n";
    let mut source = |f: &str| (f == "a").then(|| a.to_string());
    let broken = broken_links("proofs/synthetic.md", proof, &mut source);
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].starts_with("proofs/synthetic.md:5:") && broken[0].contains("a.rs::gone"));
    assert!(
        broken[1].starts_with("proofs/synthetic.md:7:") && broken[1].contains("does not exist")
    );
    assert!(broken[2].contains("'src/a.rs::good' is not of the form"));
    assert_eq!(unlinked_claims(proof), vec![8]);

    assert!(defines_fn(a, "good") && defines_fn(a, "prop") && defines_fn(a, "gone_too"));
    assert!(!defines_fn(a, "gone"), "a commented-out fn must not count");
    assert!(defines_fn("fn check<E: Executor<f64>>(e: E) {}", "check"));
    assert!(!defines_fn("fn good_cpu() {}", "good"));
    assert!(!defines_fn("fn xgood() {}", "good"));
    assert_eq!(
        parse_links(" tests/hessian.rs::hvp_ok, tests/gradcheck.rs::unary_gradients."),
        vec![
            Link::Test {
                file: "hessian".into(),
                name: "hvp_ok".into()
            },
            Link::Test {
                file: "gradcheck".into(),
                name: "unary_gradients".into()
            },
        ]
    );
}
