//! `darts report RUN_DIR --out report.html`: the run's log (and `darts audit`'s audit.jsonl,
//! where present) as one self-contained HTML page with SVG plots ([`darts::report`]), plus a
//! gradient-check table computed now.

use anyhow::{bail, Context, Result};
use darts::check::report::{render, Format};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run folder (its log.jsonl; config.json, genotype.txt and audit.jsonl when present).
    pub run_dir: PathBuf,
    /// The HTML file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Leave out the gradient-check table (about a second of checks).
    #[arg(long)]
    pub no_gradcheck: bool,
}

pub fn run(a: Args) -> Result<()> {
    darts::io::check_output_path(&a.out, "--out")?;
    let log_path = a.run_dir.join("log.jsonl");
    if !log_path.is_file() {
        bail!(
            "{}: no log.jsonl (give the folder of a `darts search` run)",
            a.run_dir.display()
        );
    }
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let mut log = darts::report::parse_log(&text, &log_path.display().to_string())?;
    let audit_path = a.run_dir.join("audit.jsonl");
    if audit_path.is_file() {
        let text = std::fs::read_to_string(&audit_path)?;
        let extra = darts::report::parse_log(&text, &audit_path.display().to_string())?;
        log.audits.extend(extra.audits);
        log.audits.sort_by(|x, y| {
            let s = |v: &serde_json::Value| v["step"].as_u64().unwrap_or(0);
            s(x).cmp(&s(y))
        });
        log.audits.dedup_by(|x, y| x["step"] == y["step"]);
    }
    if log.epochs.is_empty() && log.audits.is_empty() {
        bail!(
            "{}: no finished epoch and no audit to report yet",
            log_path.display()
        );
    }
    let mut settings = std::fs::read_to_string(a.run_dir.join("config.json")).unwrap_or_default();
    if let Ok(g) = std::fs::read_to_string(a.run_dir.join("genotype.txt")) {
        settings = format!("genotype: {}\n{settings}", g.trim());
    }
    let gradcheck = if a.no_gradcheck {
        "<p>(left out with --no-gradcheck)</p>\n".to_string()
    } else {
        let (_, outcomes) = darts::check::gradcheck::run_suite(0, false, None)
            .context("running the gradient-check suite")?;
        render(&outcomes, Format::Html)
    };
    let sections = darts::report::plots(&log);
    let title = format!("DARTS search {}", a.run_dir.display());
    let html = darts::report::page(&title, &settings, &sections, &gradcheck)?;
    darts::io::write_atomically(&a.out, |sink| {
        sink.write_all(html.as_bytes()).map_err(|e| e.to_string())
    })?;
    let figures: usize = sections.iter().map(|s| s.1.len()).sum();
    println!(
        "wrote {} ({} figures: {} epochs, {} audits; {} bytes)",
        a.out.display(),
        figures,
        log.epochs.len(),
        log.audits.len(),
        html.len()
    );
    Ok(())
}
