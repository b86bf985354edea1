//! A whole run on loopback: the real collector, the real server (stand-in, CPU
//! backend) exporting to it, the driver library sending two configs with client spans.
//! The report has every section, its latency percentiles equal the driver's own from
//! the same calls, and `report --spans` rebuilds the same figures offline.

mod common;

use std::time::Duration;

use crossbatch_collector::serve::{CollectConfig, serve};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_through_server_driver_and_collector_gives_the_full_report() {
    let dir = tempfile::tempdir().expect("tmp");
    let reports = dir.path().join("reports");
    let spans = dir.path().join("spans.jsonl");

    // The collector.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    let cfg = CollectConfig {
        grace: Duration::from_secs(15),
        once: true,
        spans_out: Some(spans.clone()),
        join_timeout: Duration::from_secs(60),
        ..CollectConfig::new(reports.clone(), "e2e")
    };
    let collector = tokio::spawn(serve(cfg, listener, std::future::pending()));

    // The server, exporting spans and resource samples to the collector.
    let telemetry = crossbatch_server::telemetry::init(
        "crossbatch-server",
        Some(&otlp),
        Duration::from_millis(200),
    )
    .expect("server telemetry");
    let (target, stop_server, server) =
        common::stand_in_server(&["--batch-timeout-ms", "5", "--sample-interval-ms", "100"]).await;
    // The driver: two configs, warm-up calls, spans to the collector.
    let result = common::drive(&target, &otlp, "e2e-run", vec![4], vec![1, 3], 48, 2, 40).await;

    let paths = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("the collector writes the report once the run is whole")
        .expect("collector task")
        .expect("collector");
    assert_eq!(paths.len(), 1, "{paths:?}");
    let md = std::fs::read_to_string(&paths[0]).expect("markdown");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(paths[0].with_extension("json")).expect("json"),
    )
    .expect("valid json");

    // Every section, in the example's order, and the header facts.
    let mut at = 0;
    for heading in [
        "# e2e\n",
        "**Timestamp:** ",
        "**Model:** `",
        "**Backend:** `cpu` | **Device:** `",
        // The default cap is measured at start-up on the CPU (--max-batch auto).
        "**Dynamic Batching:** enabled (max_batch=",
        ", timeout=5ms",
        "**Max batch set by:** auto: smallest batch within 5% of the best cost per pair",
        "## Results Summary",
        "| Batch | Conc | Pairs | Time(s) | Lat Avg | Lat P95 | Lat P99 | TP Avg | TP P95 | Errors |",
        "## Detailed Metrics",
        "### Config 1: batch=4, concurrency=1",
        "#### Latency (ms)",
        "#### Throughput (pairs/s)",
        "#### Latency vs Throughput Analysis",
        "**Correlation:**",
        "### Config 2: batch=4, concurrency=3",
        "## Overall Summary",
        "| Best Throughput",
        "## Dashboard Metrics Summary",
        "| GPU Memory (MB) | n/a",
        "| CPU Usage (%) |",
        "| Tokenization (ms) |",
        "| Inference (ms) |",
        "| Queue Wait (ms) |",
        "| Padding Waste (%) |",
        "## Dashboard Time-Series Data",
        "| Index | GPU Mem (MB) | GPU Util (%) | CPU (%) | Latency (ms) | Throughput | Tokenize (ms) | Inference (ms) | Queue (ms) | Padding (%) |",
        "## Drivers",
        "| d0 | localhost |",
        "[^pct]: Percentiles are nearest-rank",
    ] {
        let found = md[at..]
            .find(heading)
            .unwrap_or_else(|| panic!("`{heading}` missing (or out of order) in:\n{md}"));
        at += found + heading.len();
    }
    assert!(md.contains("offline stand-in"), "the stand-in is named");
    assert!(!md.contains("Partial report"), "{md}");
    assert!(
        md.contains("[^na1]: GPU Memory (MB): the CPU backend has no device memory"),
        "n/a is footnoted"
    );

    // Exact counts, and the driver's own percentiles from the same calls.
    let configs = json["configs"].as_array().expect("configs");
    assert_eq!(configs.len(), 2);
    assert_eq!(result.summaries.len(), 2);
    for (c, s) in configs.iter().zip(&result.summaries) {
        assert_eq!(c["pairs"], 48);
        assert_eq!(c["calls"], 12);
        assert_eq!(c["concurrency"].as_u64(), Some(s.concurrency as u64));
        let lat = &c["latency_ms"];
        for (k, want) in [
            ("p50", s.latency_ms.p50),
            ("p90", s.latency_ms.p90),
            ("p95", s.latency_ms.p95),
            ("p99", s.latency_ms.p99),
            ("max", s.latency_ms.max),
        ] {
            assert_eq!(lat[k].as_f64(), Some(want), "{k} of {c}");
        }
        let avg = lat["avg"].as_f64().expect("avg");
        assert!(
            (avg - s.latency_ms.avg).abs() < 1e-9,
            "{avg} vs {}",
            s.latency_ms.avg
        );
        assert!((c["time_s"].as_f64().expect("time") - s.wall_s).abs() < 1e-9);
        assert_eq!(c["buckets"].as_array().map(Vec::len), Some(4));
    }
    let notes = &json["notes"];
    assert_eq!(notes["warmup_calls"], 4);
    assert_eq!(notes["calls_without_server_spans"], 0, "every call joined");
    assert_eq!(notes["orphan_server_calls"], 0);
    let calls = json["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 28, "24 measured + 4 warm-up records");
    for c in calls.iter().filter(|c| c["warmup"] == false) {
        let s = &c["server"];
        assert!(s["tokenize_ms"].as_f64().is_some(), "{c}");
        assert!(s["inference_ms"].as_f64().is_some(), "{c}");
        assert!(!s["batch_ids"].as_array().expect("ids").is_empty());
    }
    let dash = json["dashboard"].as_array().expect("dashboard");
    let row = |name: &str| {
        dash.iter()
            .find(|r| r["metric"] == name)
            .unwrap_or_else(|| panic!("{name} row"))
    };
    assert!(row("GPU Memory (MB)")["dist"].is_null());
    for name in [
        "Host Memory (MB)",
        "CPU Usage (%)",
        "Tokenization (ms)",
        "Inference (ms)",
        "Queue Wait (ms)",
        "Padding Waste (%)",
    ] {
        assert!(row(name)["dist"].is_object(), "{name} measured");
    }
    for svg in ["latency", "throughput", "series"] {
        let p = paths[0].with_file_name(format!(
            "{}-{svg}.svg",
            paths[0].file_stem().and_then(|s| s.to_str()).expect("stem")
        ));
        let text = std::fs::read_to_string(&p).expect("svg");
        assert!(text.starts_with("<svg"), "{}", p.display());
        assert!(md.contains(&format!(
            "]({})",
            p.file_name().and_then(|f| f.to_str()).expect("name")
        )));
    }

    // Offline: the saved spans give the same figures.
    let again = dir.path().join("again");
    let offline = crossbatch_collector::offline_report(&spans, &again, "e2e", None, None, 1)
        .expect("offline");
    assert_eq!(offline.len(), 1);
    let json2: Value = serde_json::from_str(
        &std::fs::read_to_string(offline[0].with_extension("json")).expect("json"),
    )
    .expect("valid json");
    // Equal up to the last bit of a float that went through the JSON spans file.
    assert_same(&json2["configs"], &json["configs"], "configs");
    assert_eq!(json2["calls"].as_array().map(Vec::len), Some(28));

    let _ = stop_server.send(());
    let _ = server.await;
    drop(telemetry);
}

/// Structural equality, floats within a relative 1e-12 (JSON text round trips of
/// doubles may differ in the last bit).
fn assert_same(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_same(p, q, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: keys"
            );
            for (k, p) in x {
                assert_same(p, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}
