//! The live dashboard during a real run (stand-in server on the CPU backend, the
//! driver library, the collector with `--dashboard`): `/api/snapshot` and `/events`
//! show the run as it goes, the final snapshot equals the report, and the HTML
//! report is written beside the markdown. In a real browser: `tests/browser.rs`.

mod common;

use common::{Rig, first_event, http_get, snapshot};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_follows_a_real_run_and_ends_on_the_reports_figures() {
    let mut rig = Rig::collector_expecting("live", 2).await;
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
    // A second driver that sends nothing holds the run at the end of each step, so
    // the test sees the run at known points instead of guessing when to look.
    let mut holder = rig.holder("live-run", 3).await;
    let driver = rig
        .spawn_coordinated_driver("live-run", vec![1, 2, 4], 96)
        .await;
    holder.started(0).await;

    // While it runs: figures appear, then grow.
    let pairs = |s: &Value| s["tiles"]["pairs_ok"].as_u64().unwrap_or(0);
    let running = |s: &Value, n: u64| s["state"] == "running" && pairs(s) == n;
    let first = rig.wait_snapshot("step 1 whole", |s| running(s, 96)).await;
    assert_eq!(first["run_id"], "live-run");
    assert_eq!(first["step"]["of"], 3, "{}", first["step"]);
    assert!(
        first["configs"][0]["latency_ms"]["p99"].as_f64().is_some(),
        "{first}"
    );
    assert_eq!(first["configs"][0]["batch"], 4);
    assert_eq!(first["drivers"][0]["state"], "running");
    holder.release(0).await;
    holder.started(1).await;
    let last = rig.wait_snapshot("step 2 whole", |s| running(s, 192)).await;
    assert!(
        pairs(&last) > pairs(&first),
        "pairs done grow: {} then {}",
        pairs(&first),
        pairs(&last)
    );
    assert!(
        last["tiles"]["latency_ms"]["p95"].as_f64().is_some(),
        "{last}"
    );
    assert_eq!(last["configs"].as_array().map(Vec::len), Some(2));
    assert_eq!(last["step"]["index"], 2, "{}", last["step"]);
    // Gone, the holder is lost; the run finishes with the real driver.
    drop(holder);

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
    assert!(
        report["partial"]
            .as_str()
            .is_some_and(|p| p.contains("lost driver(s): holder")),
        "{}",
        report["partial"]
    );

    // A browser connecting now gets the current state at once: nothing changes after
    // the report, so an event arrives only if the current snapshot is sent first.
    let event = first_event(&dash).await;
    let data = event
        .strip_prefix("event: snapshot\ndata: ")
        .unwrap_or_else(|| panic!("{event}"));
    let sent: Value = serde_json::from_str(data.trim_end()).expect("snapshot json");
    assert_eq!(sent, snapshot(&dash).await);

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
