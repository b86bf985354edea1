//! Nothing a peer sends becomes markup. Every string a peer chooses (run id, driver
//! id, host, model, backend, device, policy, a server replica's instance id; and the
//! report's title, description and partial note) is set to hostile values — script tags, `onerror=`, `<svg onload>`,
//! backticks, pipes, newlines, a 10 kB string — and the report must hold exactly the
//! elements and attributes it holds with benign values, its markdown tables must keep
//! their shape, and each value must read back as the text it was.

mod otlp;

use std::collections::BTreeSet;

use crossbatch_collector::compare::{Comparison, Run, RunSummary};
use crossbatch_collector::report::{Meta, Report, build};
use crossbatch_collector::serve::{CollectConfig, serve};
use crossbatch_collector::store::Store;
use crossbatch_collector::{compare_render, html, live, render, svg};
use crossbatch_proto::attrs as a;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use otlp::{Peer, answered_by, export_resources, replica, served, unnamed, whole_run};
use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

fn hostile_values() -> Vec<String> {
    vec![
        "<script>alert(1)</script>".into(),
        "<img src=x onerror=alert(1)>".into(),
        "<svg onload=alert(1)>".into(),
        "\"><b onmouseover='alert(1)'>x</b>".into(),
        "`code` | pipe | *em* _u_ [l](javascript:alert(1)) # &amp; ~~s~~ \\".into(),
        "line1\nline2\r\n| a | b |\n|---|---|\n<script>alert(3)</script>".into(),
        format!("{}<script>alert(4)</script>", "A".repeat(10_000)),
    ]
}

/// The report of one run whose peer strings are `p`, named `name`: calls 1–2
/// answered by replica `p.instance`, 3–4 by `replica-b` (so the Servers section has
/// its driver × replica matrix), each replica's spans under its resource's instance id.
fn report(p: &Peer, name: &str) -> Report {
    let mut store = Store::new(1_000_000);
    let mut spans = whole_run(p, 4);
    for s in spans
        .iter_mut()
        .filter(|s| s.name == a::CLIENT_SPAN && s.trace_id[0] >= 3)
    {
        answered_by(s, "replica-b");
    }
    store.ingest_traces(&export_resources(vec![
        unnamed(spans),
        replica(&p.instance, [served(1, 0, 2), served(2, 1, 2)].concat()),
        replica("replica-b", [served(3, 0, 2), served(4, 1, 2)].concat()),
    ]));
    let data = store.run_data(&p.run_id);
    assert_eq!(data.calls.len(), 4, "the spans were read");
    build(
        &data,
        &Meta {
            title: name.into(),
            description: Some(name.into()),
            partial: Some(name.into()),
            expect_drivers: 1,
            forward: None,
        },
    )
}

/// Every (element, attribute) of an HTML or SVG text, with `(element, "")` for each
/// element; the insides of `<script>` and `<style>` are skipped as the browser does.
fn markup(html: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let b = html.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'<' || i + 1 >= b.len() || !b[i + 1].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' && b[j] != b'/' {
            j += 1;
        }
        let tag = html[start..j].to_ascii_lowercase();
        out.insert((tag.clone(), String::new()));
        // Attributes up to the tag's end, quoted values skipped.
        loop {
            while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'/') {
                j += 1;
            }
            if j >= b.len() || b[j] == b'>' {
                break;
            }
            let a0 = j;
            while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'=' && b[j] != b'>' {
                j += 1;
            }
            out.insert((tag.clone(), html[a0..j].to_ascii_lowercase()));
            if j < b.len() && b[j] == b'=' {
                j += 1;
                match b.get(j) {
                    Some(&q @ (b'"' | b'\'')) => {
                        j += 1;
                        while j < b.len() && b[j] != q {
                            j += 1;
                        }
                        j += 1;
                    }
                    _ => {
                        while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                            j += 1;
                        }
                    }
                }
            }
        }
        i = j;
        if tag == "script" || tag == "style" {
            let close = format!("</{tag}");
            i = html[i..].find(&close).map_or(b.len(), |k| i + k);
        }
    }
    out
}

/// The scripts' bodies (inline JSON included), to check none holds a `<`.
fn script_bodies(html: &str) -> Vec<&str> {
    html.split("<script")
        .skip(1)
        .filter_map(|s| s.split_once('>'))
        .filter_map(|(_, rest)| rest.split_once("</script>").map(|(body, _)| body))
        .collect()
}

/// `|` not escaped by a backslash.
fn unescaped_pipes(line: &str) -> usize {
    let mut n = 0;
    let mut backslashes = 0;
    for c in line.chars() {
        if c == '|' && backslashes % 2 == 0 {
            n += 1;
        }
        backslashes = if c == '\\' { backslashes + 1 } else { 0 };
    }
    n
}

/// Every table of `md` keeps its shape: each row has its header's unescaped pipes.
/// Returns the number of table rows seen.
fn assert_tables_keep_shape(md: &str) -> usize {
    let lines: Vec<&str> = md.lines().collect();
    let mut rows = 0;
    let mut k = 0;
    while k + 1 < lines.len() {
        let is_table = lines[k].starts_with('|') && lines[k + 1].starts_with("|--");
        if !is_table {
            k += 1;
            continue;
        }
        let want = unescaped_pipes(lines[k]);
        let mut r = k + 1;
        while r < lines.len() && lines[r].starts_with('|') {
            assert_eq!(
                unescaped_pipes(lines[r]),
                want,
                "table row {r} lost its shape:\n{}\n{}",
                lines[k],
                lines[r]
            );
            rows += 1;
            r += 1;
        }
        k = r;
    }
    rows
}

/// The text of every table cell, as a markdown reader sees it.
fn cells(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cell: Option<String> = None;
    for e in Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES) {
        match e {
            Event::Start(Tag::TableCell) => cell = Some(String::new()),
            Event::End(TagEnd::TableCell) => out.extend(cell.take()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(c) = cell.as_mut() {
                    c.push_str(&t);
                }
            }
            _ => {}
        }
    }
    out
}

/// The markdown's text outside tables (headings, paragraphs, code spans).
fn text(md: &str) -> String {
    let mut out = String::new();
    for e in Parser::new_ext(md, Options::ENABLE_TABLES | Options::ENABLE_FOOTNOTES) {
        match e {
            Event::Text(t) | Event::Code(t) => out.push_str(&t),
            Event::Html(t) | Event::InlineHtml(t) => panic!("raw HTML in the markdown: {t}"),
            _ => out.push(' '),
        }
    }
    out
}

fn comparison(a: &Report, b: &Report, label: &str) -> Comparison {
    let run = |r: &Report, label: String| Run {
        path: Some(std::path::PathBuf::from(format!("/tmp/{label}(1) |x.json"))),
        label,
        summary: serde_json::from_value::<RunSummary>(serde_json::to_value(r).expect("json"))
            .expect("summary"),
    };
    Comparison::new(vec![
        run(a, format!("{label}-a")),
        run(b, format!("{label}-b")),
    ])
    .expect("comparison")
}

/// Everything the collector writes from one report, as text: markdown, HTML, the
/// three SVG plots, the live snapshot's JSON, and a comparison's markdown and SVG.
struct Outputs {
    md: String,
    html: String,
    svgs: Vec<String>,
    compare_md: String,
    compare_svg: String,
}

fn outputs(p: &Peer, name: &str) -> Outputs {
    let r = report(p, name);
    let md = render::markdown(
        &r,
        &render::Plots {
            latency: Some(format!("{name}-latency.svg")),
            throughput: None,
            series: None,
        },
    );
    let c = comparison(&r, &r, name);
    Outputs {
        html: html::report_html(&r, &format!("{name}.md")),
        svgs: vec![svg::latency(&r), svg::throughput(&r), svg::series(&r)],
        compare_md: compare_render::markdown(&c, name, Some(&format!("{name}.svg"))),
        compare_svg: compare_render::svg(&c),
        md,
    }
}

#[test]
fn hostile_values_in_every_field_add_no_markup_and_keep_the_tables() {
    let benign = outputs(&Peer::benign(), "bench");
    let benign_markup = markup(&benign.html);
    assert!(
        benign_markup.contains(&("table".into(), String::new())),
        "the tokenizer sees the report's tables"
    );
    let benign_rows = assert_tables_keep_shape(&benign.md);
    let benign_compare_rows = assert_tables_keep_shape(&benign.compare_md);
    assert!(benign_rows > 10 && benign_compare_rows > 5);

    for value in hostile_values() {
        let out = outputs(&Peer::all(&value), &value);
        let shown = crossbatch_collector::escape::one_line(&value);

        // HTML: the same elements and attributes as with benign values, nothing else.
        let got = markup(&out.html);
        let extra: Vec<_> = got.difference(&benign_markup).collect();
        assert!(extra.is_empty(), "{value:?} added markup: {extra:?}");
        assert_eq!(
            out.html.matches("<script").count(),
            benign.html.matches("<script").count(),
            "{value:?}"
        );
        for body in script_bodies(&out.html) {
            assert!(
                !body.contains("</") && !body.contains("<!--"),
                "{value:?}: a script body could end early"
            );
        }
        for svg in out.svgs.iter().chain([&out.compare_svg]) {
            let tags = markup(svg);
            assert!(
                tags.iter().all(|(t, a)| [
                    "svg", "rect", "text", "path", "line", "polyline", "circle", "title"
                ]
                .contains(&t.as_str())
                    && !a.starts_with("on")),
                "{value:?}: {tags:?}"
            );
        }

        // Markdown: no raw HTML, tables in shape, each value read back as its text.
        for md in [&out.md, &out.compare_md] {
            let prose = text(md);
            assert!(prose.contains(&shown), "{value:?} not shown as text");
        }
        assert_eq!(assert_tables_keep_shape(&out.md), benign_rows, "{value:?}");
        assert_eq!(
            assert_tables_keep_shape(&out.compare_md),
            benign_compare_rows,
            "{value:?}"
        );
        let driver_row = cells(&out.md);
        assert!(
            driver_row.iter().filter(|c| **c == shown).count() >= 2,
            "driver id and host in their own cells: {value:?}"
        );
        // The instance id: its Servers row, and its column of the matrix.
        let servers = out
            .md
            .split_once("## Servers")
            .and_then(|(_, s)| s.split_once("## Notes"))
            .map(|(s, _)| s)
            .expect("a Servers section");
        assert_eq!(
            cells(servers).iter().filter(|c| **c == shown).count(),
            3,
            "instance row and matrix column, driver row: {value:?}"
        );
        // Model, backend, device and policy, each in its own cell, for both runs.
        let compare_cells = cells(&out.compare_md);
        assert!(
            compare_cells.iter().filter(|c| **c == shown).count() >= 8,
            "{value:?}: {compare_cells:?}"
        );
        assert!(
            out.md.len() < benign.md.len() + 40 * 1000,
            "a 10 kB value is capped, not repeated in full"
        );
    }
}

#[test]
fn the_live_snapshot_embeds_hostile_values_as_json_text() {
    for value in hostile_values() {
        let r = report(&Peer::all(&value), &value);
        let json = serde_json::to_string(&live::snapshot(&r, true, None)).expect("json");
        // The page and the HTML report put this JSON inside a <script>; the script
        // renders it as text nodes only (no innerHTML anywhere).
        let back: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(back["drivers"][0]["driver_id"], value.as_str());
        let servers = back["servers"].as_array().expect("servers");
        assert!(
            servers.iter().any(|s| s["instance"] == value.as_str()),
            "{value:?}"
        );
        assert!(
            servers
                .iter()
                .any(|s| s["calls_by_driver"][value.as_str()] == 2),
            "{value:?}"
        );
    }
    let js = crossbatch_collector::dashboard::SCRIPT;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
    ] {
        assert!(!js.contains(sink), "dashboard.js uses {sink}");
    }
}

/// A driver started with `--driver-id '<script>alert(2)</script>'` and a collector
/// with a hostile `--description`, over real OTLP/gRPC: the report's HTML holds no
/// script beyond the template's and no element or attribute a peer chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_driver_id_over_otlp_adds_no_script_to_the_html_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let cfg = CollectConfig {
        once: true,
        grace: std::time::Duration::from_millis(200),
        description: Some("<svg onload=alert(1)>".into()),
        ..CollectConfig::new(dir.path(), "hostile")
    };
    let task = tokio::spawn(serve(cfg, listener, std::future::pending()));
    let peer = Peer {
        driver_id: "<script>alert(2)</script>".into(),
        host: "<img src=x onerror=alert(3)>".into(),
        instance: "<svg onload=alert(5)>".into(),
        ..Peer::benign()
    };
    let served_all = (1..=4).flat_map(|n| served(n, i64::from(n), 2)).collect();
    TraceServiceClient::connect(url)
        .await
        .expect("connect")
        .export(export_resources(vec![
            unnamed(whole_run(&peer, 4)),
            replica(&peer.instance, served_all),
        ]))
        .await
        .expect("export accepted");
    let paths = tokio::time::timeout(std::time::Duration::from_secs(60), task)
        .await
        .expect("report in time")
        .expect("task")
        .expect("collector");
    let html = std::fs::read_to_string(paths[0].with_extension("html")).expect("html");
    assert_eq!(
        html.matches("<script").count(),
        2,
        "the template's two scripts only"
    );
    let tags = markup(&html);
    assert!(
        !tags.iter().any(|(t, a)| t == "img" || a.starts_with("on")),
        "{tags:?}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"),
        "shown as text"
    );
    let md = std::fs::read_to_string(&paths[0]).expect("md");
    assert!(md.contains(r"| \<script\>alert(2)\</script\> | \<img src=x onerror=alert(3)\> |"));
    assert!(
        md.contains(r"| \<svg onload=alert(5)\> | 4 | 8 | 100.0% |"),
        "{md}"
    );
    assert!(
        html.contains("&lt;svg onload=alert(5)&gt;"),
        "the instance shown as text"
    );
}
