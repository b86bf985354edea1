//! The report as one self-contained HTML file beside the markdown: the dashboard's
//! tiles and charts on the final figures (script and styles inlined, the snapshot
//! embedded as JSON), every table of the markdown report, and the SVG plots inline.
//! It opens from disk with no network.

use crate::dashboard::{SCRIPT, STYLE};
use crate::escape::html as esc;
use crate::live::snapshot;
use crate::render::{Plots, markdown};
use crate::report::Report;
use crate::svg;

/// `<` → `\u003c` keeps embedded JSON from closing its `<script>` element.
fn json_for_script(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c")
}

/// The markdown's events with any raw HTML turned into text. The report's markdown
/// holds none of its own, so raw HTML here could only be a peer's value that escaping
/// missed: shown as text, it stays visible and inert.
fn without_raw_html(md: &str) -> impl Iterator<Item = pulldown_cmark::Event<'_>> {
    use pulldown_cmark::{Event, Options, Parser};
    Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES).map(|e| match e {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    })
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
    pulldown_cmark::html::push_html(&mut body, without_raw_html(&md));
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

#[cfg(test)]
mod tests {
    use super::without_raw_html;

    #[test]
    fn raw_html_is_rendered_as_text() {
        let md = "<script>alert(1)</script>\n\nA <img src=x onerror=alert(2)> and <b>b</b>.\n";
        let mut out = String::new();
        pulldown_cmark::html::push_html(&mut out, without_raw_html(md));
        assert!(!out.contains("<script") && !out.contains("<img") && !out.contains("<b>"));
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
        assert!(out.contains("&lt;img src=x onerror=alert(2)&gt;"), "{out}");
    }
}
