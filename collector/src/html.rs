//! The report as one self-contained HTML file beside the markdown: the dashboard's
//! tiles and charts on the final figures (script and styles inlined, the snapshot
//! embedded as JSON), every table of the markdown report, and the SVG plots inline.
//! It opens from disk with no network.

use crate::dashboard::{SCRIPT, STYLE};
use crate::live::snapshot;
use crate::render::{Plots, markdown};
use crate::report::Report;
use crate::svg::{self, esc};

/// `<` → `\u003c` keeps embedded JSON from closing its `<script>` element.
fn json_for_script(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
}

/// The HTML report of `r`; `md_name` is the markdown file it sits beside.
pub fn report_html(r: &Report, md_name: &str) -> String {
    let snap = snapshot(r, false, Some(md_name.to_string()));
    let md = markdown(
        r,
        &Plots {
            latency: None,
            throughput: None,
            series: None,
        },
    );
    let mut body = String::new();
    let parser = pulldown_cmark::Parser::new_ext(
        &md,
        pulldown_cmark::Options::ENABLE_TABLES | pulldown_cmark::Options::ENABLE_FOOTNOTES,
    );
    pulldown_cmark::html::push_html(&mut body, parser);
    let plots = [svg::latency(r), svg::throughput(r), svg::series(r)]
        .into_iter()
        .map(|s| format!("<figure>{s}</figure>"))
        .collect::<String>();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — crossbatch report</title>
<style>{STYLE}
figure {{ margin: 0 0 12px; }} figure svg {{ max-width: 100%; height: auto; background: white; border-radius: 6px; }}
</style>
<script>{SCRIPT}</script>
<script type="application/json" id="snapshot">{json}</script>
</head>
<body>
<div id="app"></div>
<main class="report">
{body}
<h2>Plots</h2>
{plots}
</main>
<footer>Written by crossbatch-collector from run {run}; the same figures as {md}.</footer>
</body>
</html>
"#,
        title = esc(&r.title),
        json = json_for_script(&snap),
        run = esc(&r.run_id),
        md = esc(md_name),
    )
}
