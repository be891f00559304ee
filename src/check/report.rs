//! Gradient-check tables: plain text, Markdown and JSON.

use super::gradcheck::{Measure, Outcome};

/// Output format of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
    /// A standalone HTML fragment: one `<table>` with the summary and legend.
    Html,
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn cell(m: &Measure) -> String {
    format!("{:.1e} ({:.2})", m.rel_err, m.worst_ratio)
}

fn row(o: &Outcome) -> [String; 6] {
    [
        o.op.clone(),
        o.shapes.clone(),
        cell(&o.vjp_vs_fd),
        cell(&o.adjoint),
        o.second_order
            .as_ref()
            .map(cell)
            .unwrap_or_else(|| "n/a".into()),
        if o.pass() { "pass" } else { "FAIL" }.into(),
    ]
}

const HEADER: [&str; 6] = [
    "op",
    "shapes",
    "VJP vs FD",
    "adjoint",
    "2nd order",
    "result",
];

const LEGEND: &str = "Each check shows the max relative error and, in parentheses, the worst \
ratio of error to its derived tolerance (pass iff <= 1). VJP vs FD: gradient of <c, f(x)> \
against central differences (Richardson-estimated truncation + round-off bound). adjoint: \
<c, J t> = <t, J^T c> along one random tangent, with <c, J t> from the forward map (linear ops, \
gamma_K round-off) or from central differences of f along the tangent (Richardson + round-off \
bound), never from the VJP graph. 2nd order: exact H v against central \
differences of the gradient. Derivations: proofs/gradient-checking.md.";

/// Render outcomes in the chosen format.
pub fn render(outcomes: &[Outcome], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(outcomes).expect("plain data serialises"),
        Format::Html => {
            let mut s = String::from("<table class=\"gradcheck\">\n<thead><tr>");
            for h in HEADER {
                s += &format!("<th>{}</th>", html_escape(h));
            }
            s += "</tr></thead>\n<tbody>\n";
            for o in outcomes {
                let class = if o.pass() { "pass" } else { "fail" };
                s += &format!("<tr class=\"{class}\">");
                for c in row(o) {
                    s += &format!("<td>{}</td>", html_escape(&c));
                }
                s += "</tr>\n";
            }
            s += "</tbody>\n</table>\n";
            s += &format!("<p>{}</p>\n", html_escape(&summary(outcomes)));
            s += &format!("<p class=\"legend\">{}</p>\n", html_escape(LEGEND));
            s
        }
        Format::Markdown => {
            let mut s = format!(
                "| {} |\n|{}\n",
                HEADER.join(" | "),
                "---|".repeat(HEADER.len())
            );
            for o in outcomes {
                s += &format!("| {} |\n", row(o).join(" | "));
            }
            s += &format!("\n{}\n", summary(outcomes));
            s += &format!("\n{LEGEND}\n");
            s
        }
        Format::Text => {
            let rows: Vec<[String; 6]> = outcomes.iter().map(row).collect();
            let mut w = HEADER.map(|h| h.len());
            for r in &rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: &[String]| -> String {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
                    + "\n"
            };
            let mut s = line(&HEADER.map(String::from));
            for r in &rows {
                s += &line(r);
            }
            s += &format!("\n{}\n{LEGEND}\n", summary(outcomes));
            s
        }
    }
}

pub fn summary(outcomes: &[Outcome]) -> String {
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.pass())
        .map(|o| o.op.as_str())
        .collect();
    if failed.is_empty() {
        format!("{} checks, all passed.", outcomes.len())
    } else {
        format!(
            "{} checks, {} FAILED: {}",
            outcomes.len(),
            failed.len(),
            failed.join(", ")
        )
    }
}
