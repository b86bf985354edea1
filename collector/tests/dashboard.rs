//! The live dashboard during a real run (stand-in server on the CPU backend, the
//! driver library, the collector with `--dashboard`): `/api/snapshot` and `/events`
//! show the run as it goes, the final snapshot equals the report, and the HTML
//! report is written beside the markdown. In a real browser: `tests/browser.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{Rig, first_event, http_get, snapshot};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_a_real_run_and_ends_on_the_reports_figures() {
    let mut rig = Rig::collector("live").await;
    let dash = rig.dash.clone();

    // Before any run: the page, its assets, and a "waiting" snapshot.
    let (head, page) = http_get(&dash, "/").await;
    assert!(head.contains("text/html"), "{head}");
    assert!(
        page.contains("dashboard.js") && !page.contains("http"),
        "no CDN: {page}"
    );
    let (_, js) = http_get(&dash, "/dashboard.js").await;
    assert!(js.contains("EventSource"), "the script is served");
    assert_eq!(snapshot(&dash).await["state"], "waiting");

    rig.start_server().await;
    let driver = rig.spawn_driver("live-run", vec![1, 2, 4], 96).await;

    // While it runs: figures appear and grow.
    let mut seen: Vec<Value> = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    while !driver.is_finished() && Instant::now() < until {
        let s = snapshot(&dash).await;
        if s["state"] == "running" {
            seen.push(s);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(seen.len() >= 3, "several running snapshots: {}", seen.len());
    let first = &seen[0];
    let last = seen.last().unwrap();
    assert_eq!(last["run_id"], "live-run");
    let pairs = |s: &Value| s["tiles"]["pairs_ok"].as_u64().unwrap_or(0);
    assert!(
        pairs(last) > pairs(first),
        "pairs done grow: {} then {}",
        pairs(first),
        pairs(last)
    );
    assert!(
        last["tiles"]["latency_ms"]["p95"].as_f64().is_some(),
        "{last}"
    );
    assert_eq!(last["step"]["of"], 3, "{}", last["step"]);
    assert!(
        last["configs"][0]["latency_ms"]["p99"].as_f64().is_some(),
        "{last}"
    );
    assert_eq!(last["configs"][0]["batch"], 4);
    assert_eq!(last["drivers"][0]["state"], "running");
    // A browser connecting now gets the current state at once, not a second later.
    let (event, took) = first_event(&dash).await;
    assert!(event.starts_with("event: snapshot\ndata: {"), "{event}");
    assert!(took < Duration::from_millis(900), "{took:?}");

    driver.await.expect("driver task");

    // Done: the last snapshot is the report's.
    let done = rig.wait_done().await;
    // The server's facts come with the drivers' completion records.
    assert_eq!(done["backend"], "cpu");
    let md_path = std::path::PathBuf::from(done["report"].as_str().expect("report path"));
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(md_path.with_extension("json")).expect("report json"),
    )
    .expect("json");
    let cfgs = report["configs"].as_array().expect("configs");
    assert_eq!(cfgs.len(), 3);
    for (live, final_cfg) in done["configs"].as_array().unwrap().iter().zip(cfgs) {
        assert_eq!(live["batch"], final_cfg["batch"]);
        assert_eq!(live["concurrency"], final_cfg["concurrency"]);
        assert_eq!(live["pairs_ok"], final_cfg["pairs"]);
        for p in ["p50", "p95", "p99"] {
            assert_eq!(live["latency_ms"][p], final_cfg["latency_ms"][p], "{p}");
        }
    }
    assert_eq!(done["tiles"]["pairs_ok"], 3 * 96);
    assert_eq!(done["drivers"][0]["state"], "finished");

    // The HTML report: self-contained, with the tables and the embedded figures.
    let html = std::fs::read_to_string(md_path.with_extension("html")).expect("html report");
    assert!(html.contains("<table>") && html.contains("Results Summary"));
    assert!(html.contains(r#"<script type="application/json" id="snapshot">"#));
    assert!(html.contains("<svg"), "plots inline");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "offline"
    );

    rig.stop().await;
}
