//! Plain SVG plots for the report (no plotting dependency): latency histograms per
//! config, throughput against concurrency, and the time series. Text goes through
//! `escape::html`, figures through `figure::fig`.

use std::fmt::Write as _;

use crate::escape::html as esc;
use crate::figure::fig;
use crate::report::Report;

const W: f64 = 720.0;
const PANEL_H: f64 = 170.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 34.0;
pub(crate) const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn header(out: &mut String, height: f64) {
    svg_header(out, W, height);
}

/// The opening tag and a white background.
pub(crate) fn svg_header(out: &mut String, width: f64, height: f64) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
}

/// A nice upper bound for an axis (1, 2 or 5 × 10^k at or above `v`).
pub(crate) fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

/// Axes of one panel at vertical offset `y0`; returns the mapping of data to pixels.
struct Panel {
    y0: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn draw(
        out: &mut String,
        y0: f64,
        title: &str,
        x_label: &str,
        x_max: f64,
        y_max: f64,
    ) -> Panel {
        let p = Panel {
            y0,
            x_max: if x_max > 0.0 { x_max } else { 1.0 },
            y_max: nice_max(y_max),
        };
        let (x1, x2) = (LEFT, W - RIGHT);
        let (yt, yb) = (y0 + TOP, y0 + PANEL_H - BOTTOM);
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            y0 + 16.0,
            esc(title)
        );
        let _ = writeln!(
            out,
            r##"<path d="M{x1} {yt} V{yb} H{x2}" stroke="#333" fill="none"/>"##
        );
        for k in 0..=4 {
            let v = p.y_max * k as f64 / 4.0;
            let y = p.y(v);
            let _ = writeln!(
                out,
                r##"<line x1="{x1}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                x1 - 4.0,
                y + 4.0,
                fmt_tick(v)
            );
        }
        for k in 0..=4 {
            let v = p.x_max * k as f64 / 4.0;
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                p.x(v),
                yb + 14.0,
                fmt_tick(v)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            (x1 + x2) / 2.0,
            yb + 28.0,
            esc(x_label)
        );
        p
    }

    fn x(&self, v: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * (v / self.x_max).clamp(0.0, 1.0)
    }

    fn y(&self, v: f64) -> f64 {
        let (yt, yb) = (self.y0 + TOP, self.y0 + PANEL_H - BOTTOM);
        yb - (yb - yt) * (v / self.y_max).clamp(0.0, 1.0)
    }
}

pub(crate) fn fmt_tick(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        fig(v, 1)
    }
}

/// One histogram of successful-call latency per config.
pub fn latency(r: &Report) -> String {
    let mut out = String::new();
    let n = r.configs.len().max(1);
    header(&mut out, PANEL_H * n as f64);
    for (i, c) in r.configs.iter().enumerate() {
        let lat: Vec<f64> = r
            .calls
            .iter()
            .filter(|k| !k.client.warmup && k.client.status.is_ok() && k.client.step == c.step)
            .map(|k| k.client.latency_ms)
            .collect();
        let max = lat.iter().copied().fold(0.0, f64::max);
        let x_max = nice_max(max);
        const BINS: usize = 40;
        let mut counts = [0usize; BINS];
        for l in &lat {
            counts[((l / x_max * BINS as f64) as usize).min(BINS - 1)] += 1;
        }
        let top = counts.iter().copied().max().unwrap_or(0) as f64;
        let title = format!(
            "Config {}: batch={}, concurrency={} — latency of {} calls",
            c.index,
            c.batch,
            c.concurrency,
            lat.len()
        );
        let p = Panel::draw(
            &mut out,
            PANEL_H * i as f64,
            &title,
            "latency (ms)",
            x_max,
            top.max(1.0),
        );
        for (b, &k) in counts.iter().enumerate() {
            if k == 0 {
                continue;
            }
            let (xa, xb) = (
                p.x(x_max * b as f64 / BINS as f64),
                p.x(x_max * (b + 1) as f64 / BINS as f64),
            );
            let y = p.y(k as f64);
            let _ = writeln!(
                out,
                r#"<rect x="{xa:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                (xb - xa - 1.0).max(0.5),
                p.y(0.0) - y,
                COLORS[0]
            );
        }
        if let Some(d) = c.latency_ms {
            for (name, v) in [("p50", d.p50), ("p99", d.p99)] {
                let x = p.x(v);
                let _ = writeln!(
                    out,
                    r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#d62728" stroke-dasharray="4 3"/>"##,
                    p.y(p.y_max),
                    p.y(0.0)
                );
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" fill="#d62728">{name} {}</text>"##,
                    x + 3.0,
                    p.y(p.y_max) + 10.0,
                    fig(v, 1)
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// Pairs/s against total concurrency, one line per batch size.
pub fn throughput(r: &Report) -> String {
    let mut out = String::new();
    header(&mut out, PANEL_H + 40.0);
    let x_max = r
        .configs
        .iter()
        .map(|c| c.concurrency as f64)
        .fold(0.0, f64::max);
    let y_max = r.configs.iter().map(|c| c.pairs_per_s).fold(0.0, f64::max);
    let p = Panel::draw(
        &mut out,
        0.0,
        "Throughput (pairs/s) vs concurrency",
        "concurrency (all drivers)",
        nice_max(x_max),
        y_max,
    );
    let mut batches: Vec<usize> = r.configs.iter().map(|c| c.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    for (i, b) in batches.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = r
            .configs
            .iter()
            .filter(|c| c.batch == *b)
            .map(|c| (p.x(c.concurrency as f64), p.y(c.pairs_per_s)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &pts {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">batch={b}</text>"#,
            LEFT + 10.0 + 80.0 * i as f64,
            PANEL_H + 30.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The time series: throughput, latency, CPU and inference per interval.
pub fn series(r: &Report) -> String {
    type Get = fn(&crate::report::SeriesRow) -> Option<f64>;
    let panels: [(&str, Get); 4] = [
        ("Throughput (pairs/s)", |s| Some(s.throughput)),
        ("Latency (ms, average of calls completed)", |s| s.latency_ms),
        ("Server CPU (% of one core)", |s| s.cpu_pct),
        ("Inference (ms, average per batch)", |s| s.inference_ms),
    ];
    let mut out = String::new();
    header(&mut out, PANEL_H * panels.len() as f64);
    let x_max = r.series.len() as f64 * r.series_interval_s;
    for (i, (title, get)) in panels.iter().enumerate() {
        let y_max = r.series.iter().filter_map(get).fold(0.0, f64::max);
        let p = Panel::draw(
            &mut out,
            PANEL_H * i as f64,
            title,
            "seconds since the run started",
            x_max,
            y_max,
        );
        let pts: Vec<String> = r
            .series
            .iter()
            .filter_map(|s| {
                get(s).map(|v| {
                    format!(
                        "{:.1},{:.1}",
                        p.x(s.start_s + r.series_interval_s / 2.0),
                        p.y(v)
                    )
                })
            })
            .collect();
        if pts.is_empty() {
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" fill="#888">n/a</text>"##,
                W / 2.0,
                PANEL_H * i as f64 + PANEL_H / 2.0
            );
            continue;
        }
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            COLORS[i % COLORS.len()]
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(112.0), 200.0);
        assert_eq!(nice_max(0.3), 0.5);
        assert_eq!(nice_max(50.0), 50.0);
    }
}
