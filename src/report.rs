//! `darts report`: one self-contained HTML page of a search run, read from its log.jsonl
//! (epoch lines and `search --audit-every` / `darts audit` lines): losses and accuracies,
//! softmax(alpha) of every edge over the epochs, the number of parameter-free operations in
//! the derived cells, the dominant Hessian eigenvalue where it was tracked, every
//! hypergradient's error and cosine against the exact one, the eps V-curve with the kinks
//! crossed, and a gradient-check table. Plots are SVG drawn by plotters, inline; the page
//! needs no network. A script at its end checks, in the browser, that every figure holds the
//! polylines of its data series and records the result in `#self-check`.

use crate::check::report::html_escape;
use crate::darts::genotype::Genotype;
use crate::darts::PRIMITIVES;
use plotters::prelude::*;
use serde_json::Value;

/// One data series of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One plot.
#[derive(Clone, Debug)]
pub struct Plot {
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{file}, line {line}: {reason}")]
    Log {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("plot '{plot}': {reason}")]
    Plot { plot: String, reason: String },
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The finite points of a series (log axes also drop non-positive values).
fn usable(s: &Series, log_x: bool, log_y: bool) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .copied()
        .filter(|&(x, y)| {
            x.is_finite() && y.is_finite() && (!log_x || x > 0.0) && (!log_y || y > 0.0)
        })
        .collect()
}

fn range(v: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in v {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return if log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if log {
        (lo / 1.5, hi * 1.5)
    } else if hi - lo < 1e-12 * hi.abs().max(1.0) {
        (lo - 0.5, hi + 0.5)
    } else {
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    }
}

fn draw<X, Y>(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    plot: &Plot,
    data: &[(String, Vec<(f64, f64)>)],
    xr: X,
    yr: Y,
) -> Result<(), String>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(&plot.title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(xr, yr)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(&plot.x_label)
        .y_desc(&plot.y_label)
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (name, pts)) in data.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 3), (x + 14, y + 3)], color.filled()));
    }
    if data.len() > 1 {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 10))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))
}

/// The plot as an inline SVG, in a `<figure>` naming, for the self-check, each drawn series'
/// colour and point count (`data-colors`, `data-points`). Series are the only polylines in
/// those colours (legends are filled rectangles, axes black). A series with a single point is
/// drawn as a two-point segment of zero length so that it still has its polyline.
pub fn figure(plot: &Plot, width: u32, height: u32) -> Result<String, ReportError> {
    let data: Vec<(String, Vec<(f64, f64)>)> = plot
        .series
        .iter()
        .map(|s| {
            let mut p = usable(s, plot.log_x, plot.log_y);
            if p.len() == 1 {
                p.push(p[0]);
            }
            (s.name.clone(), p)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        let err = |reason: String| ReportError::Plot {
            plot: plot.id.clone(),
            reason,
        };
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let xr = range(
            data.iter().flat_map(|d| d.1.iter().map(|p| p.0)),
            plot.log_x,
        );
        let yr = range(
            data.iter().flat_map(|d| d.1.iter().map(|p| p.1)),
            plot.log_y,
        );
        let r = match (plot.log_x, plot.log_y) {
            (false, false) => draw(&root, plot, &data, xr.0..xr.1, yr.0..yr.1),
            (true, false) => draw(&root, plot, &data, (xr.0..xr.1).log_scale(), yr.0..yr.1),
            (false, true) => draw(&root, plot, &data, xr.0..xr.1, (yr.0..yr.1).log_scale()),
            (true, true) => draw(
                &root,
                plot,
                &data,
                (xr.0..xr.1).log_scale(),
                (yr.0..yr.1).log_scale(),
            ),
        };
        r.map_err(err)?;
    }
    let colors: Vec<String> = (0..data.len())
        .map(|i| {
            let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
            format!("#{r:02X}{g:02X}{b:02X}")
        })
        .collect();
    let points: Vec<String> = data.iter().map(|d| d.1.len().to_string()).collect();
    Ok(format!(
        "<figure class=\"plot\" id=\"{}\" data-series=\"{}\" data-colors=\"{}\" \
         data-points=\"{}\">{svg}</figure>\n",
        html_escape(&plot.id),
        data.len(),
        colors.join(","),
        points.join(",")
    ))
}

/// What a run's log.jsonl holds, split by kind of line.
#[derive(Default, Debug)]
pub struct RunLog {
    pub epochs: Vec<Value>,
    pub audits: Vec<Value>,
}

/// Parses `text` (one JSON object per line; `file` names it in errors).
pub fn parse_log(text: &str, file: &str) -> Result<RunLog, ReportError> {
    let mut log = RunLog::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| ReportError::Log {
            file: file.to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if v.get("audit").is_some() {
            log.audits.push(v);
        } else if v.get("train_loss").is_some() {
            log.epochs.push(v);
        }
    }
    Ok(log)
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn line_plot(id: &str, title: &str, x: &str, y: &str, series: Vec<Series>) -> Plot {
    Plot {
        id: id.into(),
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        log_x: false,
        log_y: false,
        series,
    }
}

/// Parameter-free operations (pooling, skip) in a genotype's normal and reduce cells.
pub fn parameter_free(g: &Genotype) -> [usize; 2] {
    let free = |ops: &[(String, usize)]| {
        ops.iter()
            .filter(|(o, _)| matches!(o.as_str(), "max_pool_3x3" | "avg_pool_3x3" | "skip_connect"))
            .count()
    };
    [free(&g.normal.ops), free(&g.reduce.ops)]
}

/// Every plot of the report, in page order, grouped under section titles. A recurrent run
/// (epoch lines with `softmax_alpha`) gets perplexities instead of accuracies and the
/// recurrent cell's edges; plots left without data are dropped.
pub fn plots(log: &RunLog) -> Vec<(String, Vec<Plot>)> {
    let recurrent = log
        .epochs
        .first()
        .is_some_and(|v| v.get("softmax_alpha").is_some());
    let epoch = |v: &Value| num(v, "epoch") + 1.0;
    let per_epoch = |key: &str| -> Vec<(f64, f64)> {
        log.epochs.iter().map(|v| (epoch(v), num(v, key))).collect()
    };
    let s = |name: &str, points: Vec<(f64, f64)>| Series {
        name: name.into(),
        points,
    };
    let mut out = Vec::new();
    out.push((
        "Training".to_string(),
        vec![
            line_plot(
                "loss",
                "loss",
                "epoch",
                "cross-entropy",
                vec![
                    s("train", per_epoch("train_loss")),
                    s("valid", per_epoch("valid_loss")),
                ],
            ),
            if recurrent {
                let mut p = line_plot(
                    "perplexity",
                    "perplexity",
                    "epoch",
                    "exp(cross-entropy)",
                    vec![
                        s("train", per_epoch("train_ppl")),
                        s("valid", per_epoch("valid_ppl")),
                        s("unigram (valid)", per_epoch("unigram_valid_ppl")),
                    ],
                );
                p.log_y = true;
                p
            } else {
                line_plot(
                    "accuracy",
                    "accuracy",
                    "epoch",
                    "fraction correct",
                    vec![
                        s("train", per_epoch("train_acc")),
                        s("valid", per_epoch("valid_acc")),
                    ],
                )
            },
        ],
    ));
    let free: Vec<[usize; 2]> = log
        .epochs
        .iter()
        .map(|v| {
            v.get("genotype")
                .and_then(Value::as_str)
                .and_then(|g| g.parse::<Genotype>().ok())
                .map_or([usize::MAX; 2], |g| parameter_free(&g))
        })
        .collect();
    let free_series = |c: usize| {
        log.epochs
            .iter()
            .zip(&free)
            .filter(|(_, f)| f[c] != usize::MAX)
            .map(|(v, f)| (epoch(v), f[c] as f64))
            .collect()
    };
    let mut arch = vec![line_plot(
        "parameter-free",
        "parameter-free ops in the derived cells",
        "epoch",
        "count of 8",
        vec![s("normal", free_series(0)), s("reduce", free_series(1))],
    )];
    let cells: Vec<(&str, String, &[&str])> = if recurrent {
        vec![(
            "recurrent",
            "softmax_alpha".into(),
            &crate::darts::rnn::PRIMITIVES[..],
        )]
    } else {
        ["normal", "reduce"]
            .into_iter()
            .map(|c| (c, format!("softmax_alpha_{c}"), &PRIMITIVES[..]))
            .collect()
    };
    for (cell, key, ops) in cells {
        let edges = log
            .epochs
            .first()
            .and_then(|v| v.get(&key))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for e in 0..edges {
            let series = ops
                .iter()
                .enumerate()
                .map(|(o, name)| {
                    let pts = log
                        .epochs
                        .iter()
                        .map(|v| (epoch(v), v[&key][e][o].as_f64().unwrap_or(f64::NAN)))
                        .collect();
                    s(name, pts)
                })
                .collect();
            arch.push(line_plot(
                &format!("softmax-{cell}-{e}"),
                &format!("{cell} edge {e}: softmax(alpha)"),
                "epoch",
                "weight",
                series,
            ));
        }
    }
    out.push(("The architecture over the run".into(), arch));
    let eig: Vec<(f64, f64)> = log
        .epochs
        .iter()
        .filter_map(|v| {
            v.get("hessian_dominant_eigenvalue")
                .and_then(Value::as_f64)
                .map(|x| (epoch(v), x))
        })
        .collect();
    if !eig.is_empty() {
        out.push((
            "Curvature of the validation loss in alpha".into(),
            vec![line_plot(
                "hessian",
                "dominant eigenvalue of the alpha-Hessian",
                "epoch",
                "eigenvalue",
                vec![s("lambda_max", eig)],
            )],
        ));
    }
    if !log.audits.is_empty() {
        let methods: Vec<String> = log.audits[0]["audit"]["methods"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| x["method"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let per_method = |field: &str| -> Vec<Series> {
            methods
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let pts = log
                        .audits
                        .iter()
                        .map(|a| (num(a, "step"), num(&a["audit"]["methods"][i], field)))
                        .collect();
                    s(m, pts)
                })
                .collect()
        };
        let mut err = line_plot(
            "hypergradient-error",
            "relative error against the exact unrolled gradient",
            "step",
            "||g - exact|| / ||exact||",
            per_method("rel_err"),
        );
        err.log_y = true;
        let cos = line_plot(
            "hypergradient-cosine",
            "cosine with the exact unrolled gradient",
            "step",
            "cosine",
            per_method("cosine"),
        );
        let sweep = |field: &str| -> Vec<Series> {
            log.audits
                .iter()
                .map(|a| {
                    let pts = a["audit"]["sweep"]
                        .as_array()
                        .map(|p| p.iter().map(|q| (num(q, "r"), num(q, field))).collect())
                        .unwrap_or_default();
                    s(&format!("step {}", num(a, "step")), pts)
                })
                .collect()
        };
        let mut v = line_plot(
            "eps-sweep",
            "finite-difference HVP against the exact one (R = r / ||v||)",
            "r",
            "||fd - exact|| / ||exact||",
            sweep("hvp_rel_err"),
        );
        (v.log_x, v.log_y) = (true, true);
        let mut k = line_plot(
            "kinks",
            "ReLU sign flips between w + Rv and w - Rv",
            "r",
            "flips",
            sweep("relu_flips"),
        );
        (k.log_x, k.log_y) = (true, true);
        out.push(("Hypergradient audit".into(), vec![err, cos, v, k]));
    }
    for (_, plots) in out.iter_mut() {
        plots.retain(|p| {
            p.series
                .iter()
                .any(|s| !usable(s, p.log_x, p.log_y).is_empty())
        });
    }
    out.retain(|(_, plots)| !plots.is_empty());
    out
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}\
figure.plot{display:inline-block;margin:4px;border:1px solid #ddd}\
table.gradcheck{border-collapse:collapse;font-size:12px}\
table.gradcheck td,table.gradcheck th{border:1px solid #ccc;padding:2px 6px}\
tr.fail{background:#fdd}.legend{font-size:11px;color:#555}";

/// The self-check: in every figure, series i (of `data-series`) must be drawn as a polyline
/// in its colour (`data-colors`) with its number of points (`data-points`); colours repeat
/// after ten series, so each (colour, points) pair must be matched by a distinct polyline.
/// The result goes to #self-check's data-ok (and its text).
const SELF_CHECK: &str = r#"<script>
(function () {
  var bad = [];
  var figs = document.querySelectorAll("figure.plot");
  figs.forEach(function (f) {
    var want = parseInt(f.getAttribute("data-series"), 10);
    var colors = (f.getAttribute("data-colors") || "").split(",");
    var points = (f.getAttribute("data-points") || "").split(",");
    var lines = Array.prototype.map.call(f.querySelectorAll("svg polyline"), function (p) {
      return { stroke: (p.getAttribute("stroke") || "").toUpperCase(),
               n: (p.getAttribute("points") || "").trim().split(/\s+/).length, used: false };
    });
    var found = 0;
    for (var i = 0; i < want; i++) {
      for (var j = 0; j < lines.length; j++) {
        var l = lines[j];
        if (!l.used && l.stroke === (colors[i] || "").toUpperCase() && l.n === parseInt(points[i], 10)) {
          l.used = true; found++; break;
        }
      }
    }
    if (!(want >= 1) || found < want) { bad.push(f.id + " (" + found + " of " + want + ")"); }
  });
  var out = document.getElementById("self-check");
  out.setAttribute("data-figures", String(figs.length));
  out.setAttribute("data-ok", bad.length === 0 && figs.length > 0 ? "true" : "false");
  out.textContent = bad.length === 0 ? "self-check: " + figs.length + " figures, every series drawn"
                                     : "self-check FAILED: " + bad.join(", ");
})();
</script>"#;

/// The page: a title, the run's settings, every section's figures, the gradient-check table
/// (already HTML), and the self-check.
pub fn page(
    title: &str,
    settings: &str,
    sections: &[(String, Vec<Plot>)],
    gradcheck_html: &str,
) -> Result<String, ReportError> {
    let mut body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n\
         <pre class=\"settings\">{}</pre>\n",
        html_escape(settings),
        t = html_escape(title)
    );
    for (name, plots) in sections {
        body += &format!("<h2>{}</h2>\n", html_escape(name));
        let small = plots.len() > 4;
        for p in plots {
            let (w, h) = if small { (270, 200) } else { (520, 320) };
            body += &figure(p, w, h)?;
        }
    }
    body += "<h2>Gradient checks</h2>\n";
    body += gradcheck_html;
    body += "<p id=\"self-check\" data-ok=\"pending\">self-check did not run</p>\n";
    body += SELF_CHECK;
    body += "\n</body></html>\n";
    Ok(body)
}
