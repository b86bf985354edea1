//! Small figures keep their digits: a measured 0.02 ms queue wait is `0.020` in the
//! report's tables (markdown and HTML), never `0.0`, which reads like the unmeasured
//! zero; a figure that is exactly zero stays `0.0`.

mod otlp;

use crossbatch_collector::report::{Meta, build};
use crossbatch_collector::store::Store;
use crossbatch_collector::{html, render};
use otlp::{Peer, export, stage, whole_run};

/// The cells of the markdown table row that starts with `| {first} |`.
fn row<'a>(md: &'a str, first: &str) -> Vec<&'a str> {
    let line = md
        .lines()
        .find(|l| l.starts_with(&format!("| {first} |")))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{md}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn sub_tenth_figures_show_two_significant_digits() {
    let p = Peer::benign();
    let mut spans = whole_run(&p, 4);
    // Every call queued 20 µs and tokenized 3.1 µs on the server.
    for n in 1..=4 {
        spans.push(stage("queue_wait", n, 20_000));
        spans.push(stage("tokenize", n, 3_100));
    }
    let mut store = Store::new(1_000_000);
    store.ingest_traces(&export(spans));
    let r = build(
        &store.run_data(&p.run_id),
        &Meta {
            title: "small".into(),
            description: None,
            partial: None,
            expect_drivers: 1,
            forward: None,
        },
    );
    let md = render::markdown(&r, &render::Plots::default());

    let queue = row(&md, "Queue Wait (ms)");
    assert_eq!(queue[1..], ["0.020"; 5], "avg min max p50 p95: {queue:?}");
    let tokenize = row(&md, "Tokenization (ms)");
    assert_eq!(tokenize[1], "0.0031", "{tokenize:?}");

    // The time series: the interval with the calls shows the queue wait, not 0.0.
    let series = md
        .lines()
        .skip_while(|l| !l.starts_with("| Index |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    assert!(
        series.iter().any(|cells| cells[8] == "0.020"),
        "a queue figure of 0.020: {series:?}"
    );
    assert!(
        series.iter().all(|cells| cells[8] != "0.0"),
        "no measured queue wait printed as zero: {series:?}"
    );

    // The HTML report carries the same tables.
    let page = html::report_html(&r, "small.md");
    assert!(page.contains("<td>0.020</td>"), "0.020 in the HTML tables");
    assert!(
        page.contains("<td>0.0031</td>"),
        "0.0031 in the HTML tables"
    );
}
