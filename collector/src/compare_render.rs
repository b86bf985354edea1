//! A [`Comparison`] as markdown tables and a grouped-bar SVG, and the files
//! `crossbatch-collector compare` writes. The pieces are public so that an
//! experiment's report can use the same tables. Labels and the runs' facts (model,
//! backend, device, policy) go through `escape`, figures through `figure::fig`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::compare::{Comparison, Metric, best, change_pct, fmt_change};
use crate::escape::{html as esc, md, md_url};
use crate::figure::fig;
use crate::svg::{COLORS, fmt_tick, nice_max, svg_header};

fn cell(v: Option<f64>) -> String {
    match v {
        Some(x) if x >= 100.0 => fig(x, 1),
        Some(x) => fig(x, 2),
        None => "n/a".into(),
    }
}

/// A warning when the runs ran on different backends or devices: then the table
/// compares machines, not settings.
pub fn device_warning(c: &Comparison) -> Option<String> {
    let mut devices: Vec<String> = c
        .runs
        .iter()
        .map(|r| format!("{} on {}", md(&r.summary.backend), md(&r.summary.device)))
        .collect();
    devices.sort();
    devices.dedup();
    (devices.len() > 1).then(|| {
        format!(
            "**Different devices:** {}. Figures from different machines or devices are not a comparison of settings; measure both in one run on one machine.",
            devices.join("; ")
        )
    })
}

/// One table per figure: a row per shared config, each run's value and its change
/// against the first. Figures no run has are left out, with a line saying so.
pub fn metric_tables(w: &mut String, c: &Comparison, heading: &str) {
    let mut absent = Vec::new();
    for metric in Metric::ALL {
        let rows: Vec<_> = c.shared.iter().map(|&k| (k, c.row(k, metric))).collect();
        if rows.iter().all(|(_, v)| v.iter().all(Option::is_none)) {
            absent.push(metric.title());
            continue;
        }
        let _ = writeln!(w, "{heading} {}\n", metric.title());
        let mut head = String::from("| Batch | Concurrency |");
        let mut rule = String::from("|---|---|");
        for (i, r) in c.runs.iter().enumerate() {
            if i == 0 {
                let _ = write!(head, " {} (baseline) |", md(&r.label));
                rule.push_str("---|");
            } else {
                let _ = write!(head, " {} | vs baseline |", md(&r.label));
                rule.push_str("---|---|");
            }
        }
        let _ = writeln!(w, "{head}\n{rule}");
        for (k, values) in rows {
            let mut line = format!("| {} | {} |", k.batch, k.concurrency);
            let base = values[0];
            for (i, v) in values.iter().enumerate() {
                let _ = write!(line, " {} |", cell(*v));
                if i > 0 {
                    let change = base.zip(*v).and_then(|(b, x)| change_pct(b, x));
                    let _ = write!(line, " {} |", fmt_change(change));
                }
            }
            let _ = writeln!(w, "{line}");
        }
        let _ = writeln!(w);
    }
    if c.shared.is_empty() {
        let _ = writeln!(w, "No config (batch × concurrency) is in every run.\n");
    } else if !absent.is_empty() {
        let _ = writeln!(
            w,
            "Not in these reports (no server spans were joined): {}.\n",
            absent.join("; ")
        );
    }
}

/// Configs only some runs have, with where they are missing.
pub fn partial_table(w: &mut String, c: &Comparison, heading: &str) {
    if c.partial.is_empty() {
        return;
    }
    let _ = writeln!(w, "{heading} Configs not in every run\n");
    let _ = writeln!(
        w,
        "| Batch | Concurrency | In | Missing from |\n|---|---|---|---|"
    );
    for (k, having) in &c.partial {
        let missing: Vec<String> = c
            .runs
            .iter()
            .map(|r| r.label.as_str())
            .filter(|l| !having.iter().any(|h| h == l))
            .map(md)
            .collect();
        let having: Vec<String> = having.iter().map(|h| md(h)).collect();
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            k.batch,
            k.concurrency,
            having.join(", "),
            missing.join(", ")
        );
    }
    let _ = writeln!(w);
}

/// Each run's best throughput and best median latency, with the change against the
/// first run's.
pub fn best_table(w: &mut String, c: &Comparison, what: &str) {
    let bests: Vec<_> = c.runs.iter().map(best).collect();
    let base = bests.first().copied().unwrap_or_default();
    let _ = writeln!(
        w,
        "| {what} | Best throughput (pairs/s) | vs first | at | Best P50 latency (ms) | vs first | at |\n|---|---|---|---|---|---|---|"
    );
    for (r, b) in c.runs.iter().zip(&bests) {
        let tp_change = base
            .throughput
            .zip(b.throughput)
            .and_then(|(x, y)| change_pct(x.0, y.0));
        let lat_change = base
            .latency_p50
            .zip(b.latency_p50)
            .and_then(|(x, y)| change_pct(x.0, y.0));
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md(&r.label),
            cell(b.throughput.map(|t| t.0)),
            fmt_change(tp_change),
            b.throughput.map(|t| t.1.to_string()).unwrap_or_default(),
            cell(b.latency_p50.map(|t| t.0)),
            fmt_change(lat_change),
            b.latency_p50.map(|t| t.1.to_string()).unwrap_or_default(),
        );
    }
    let _ = writeln!(w);
}

/// The markdown of `crossbatch-collector compare`.
pub fn markdown(c: &Comparison, title: &str, svg_file: Option<&str>) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "# {}\n", md(title));
    let _ = writeln!(
        w,
        "*{} runs side by side; the first is the baseline and every change is against it.*\n",
        c.runs.len()
    );
    let _ = writeln!(
        w,
        "| Run | Date | Model | Backend | Device | Policy | Max batch | Timeout (ms) |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &c.runs {
        let s = &r.summary;
        let label = match &r.path {
            // The comparison is written elsewhere: link each report where it is.
            Some(p) => format!(
                "[{}]({})",
                md(&r.label),
                md_url(
                    &std::fs::canonicalize(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                )
            ),
            None => md(&r.label),
        };
        let _ = writeln!(
            w,
            "| {label} | {} | {}{} | {} | {} | {} | {} | {} |",
            md(&s.timestamp),
            md(&s.model),
            if s.stand_in { " (stand-in)" } else { "" },
            md(&s.backend),
            md(&s.device),
            md(&s.batch_policy),
            s.max_batch.map(|m| m.to_string()).unwrap_or_default(),
            s.batch_timeout_ms
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
    }
    let _ = writeln!(w);
    if let Some(warn) = device_warning(c) {
        let _ = writeln!(w, "{warn}\n");
    }
    for r in c.runs.iter().filter(|r| r.summary.partial.is_some()) {
        let _ = writeln!(
            w,
            "**{} is partial:** {}\n",
            md(&r.label),
            md(r.summary.partial.as_deref().unwrap_or_default())
        );
    }
    let _ = writeln!(w, "## Best of each run\n");
    best_table(&mut w, c, "Run");
    let _ = writeln!(w, "## Per config\n");
    metric_tables(&mut w, c, "###");
    partial_table(&mut w, c, "##");
    if let Some(f) = svg_file {
        let _ = writeln!(w, "![Throughput and latency per config]({})\n", md_url(f));
    }
    w
}

const W: f64 = 720.0;
const PANEL: f64 = 200.0;
const LEFT: f64 = 64.0;

/// Grouped bars per shared config: throughput, then median latency; a bar per run.
pub fn svg(c: &Comparison) -> String {
    let mut out = String::new();
    let height = 2.0 * PANEL + 40.0;
    svg_header(&mut out, W, height);
    for (panel, metric) in [Metric::Throughput, Metric::LatencyP50]
        .into_iter()
        .enumerate()
    {
        let y0 = panel as f64 * PANEL;
        let values: Vec<Vec<Option<f64>>> = c.shared.iter().map(|&k| c.row(k, metric)).collect();
        let y_max = nice_max(
            values
                .iter()
                .flatten()
                .flatten()
                .copied()
                .fold(0.0, f64::max),
        );
        let (top, bottom) = (y0 + 28.0, y0 + PANEL - 34.0);
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y0 + 16.0,
            esc(metric.title())
        );
        let _ = writeln!(
            out,
            r##"<path d="M{LEFT} {top} V{bottom} H{}" stroke="#333" fill="none"/>"##,
            W - 16.0
        );
        for k in 0..=4 {
            let v = y_max * k as f64 / 4.0;
            let y = bottom - (bottom - top) * k as f64 / 4.0;
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - 16.0,
                LEFT - 4.0,
                y + 4.0,
                fmt_tick(v)
            );
        }
        let groups = c.shared.len().max(1) as f64;
        let group_w = (W - LEFT - 16.0) / groups;
        let bar_w = (group_w * 0.8 / c.runs.len().max(1) as f64).min(40.0);
        for (g, (key, vals)) in c.shared.iter().zip(&values).enumerate() {
            // The group's bars centred under its label.
            let gx = LEFT + group_w * (g as f64 + 0.5) - bar_w * c.runs.len() as f64 / 2.0;
            for (i, v) in vals.iter().enumerate() {
                let Some(v) = v else { continue };
                let h = (bottom - top) * (v / y_max).clamp(0.0, 1.0);
                let _ = writeln!(
                    out,
                    r#"<rect x="{:.1}" y="{:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    gx + bar_w * i as f64,
                    bottom - h,
                    COLORS[i % COLORS.len()],
                    esc(&c.runs[i].label),
                    fig(*v, 1)
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">b{} × c{}</text>"#,
                LEFT + group_w * (g as f64 + 0.5),
                bottom + 14.0,
                key.batch,
                key.concurrency
            );
        }
    }
    for (i, r) in c.runs.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 150.0 * i as f64,
            height - 22.0,
            COLORS[i % COLORS.len()],
            LEFT + 14.0 + 150.0 * i as f64,
            height - 13.0,
            esc(&r.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes `<dir>/<name>-<stamp>.md` and its `.svg`; returns the markdown's path.
pub fn write(dir: &Path, name: &str, stamp: &str, c: &Comparison) -> Result<PathBuf, WriteError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let base = format!("{name}-{stamp}");
    let svg_file = format!("{base}.svg");
    let svg_path = dir.join(&svg_file);
    std::fs::write(&svg_path, svg(c)).map_err(err(&svg_path))?;
    let md = dir.join(format!("{base}.md"));
    std::fs::write(&md, markdown(c, name, Some(&svg_file))).map_err(err(&md))?;
    Ok(md)
}
