//! The monitoring profile's config against a real server: every metric the Grafana
//! dashboard queries exists in the server's `/metrics`, and Prometheus scrapes the
//! port compose gives the server. (`make test` also runs `promtool check config`.)

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Server, free_addr, scrape};
use crossbatch_proto::v1::{Pair, ScoreRequest};

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `crossbatch_…` name in the dashboard's queries.
fn queried_metrics() -> BTreeSet<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&repo("deploy/grafana/dashboards/crossbatch.json")).expect("json");
    let mut names = BTreeSet::new();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 12, "{} panels", panels.len());
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("crossbatch_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let metrics = free_addr();
    let server = Server::start(&["--metrics-addr", &metrics, "--batch-timeout-ms", "1"]).await;
    server
        .client()
        .await
        .score(ScoreRequest {
            pairs: vec![Pair {
                query: "q".into(),
                passage: "p".into(),
            }],
            raw_scores: true,
        })
        .await
        .expect("one call, so every histogram has a sample");
    let body = scrape(&metrics).await;
    let exported: BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queried = queried_metrics();
    assert!(queried.len() >= 8, "{queried:?}");
    for name in &queried {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export:\n{body}"
        );
    }
    server.stop().await;

    // Prometheus finds every replica of compose's `server` service by DNS, on the port
    // compose makes each one's metrics listen on.
    let prom = repo("deploy/prometheus/prometheus.yml");
    let compose = repo("docker-compose.yml");
    let server_job = prom
        .split("- job_name:")
        .find(|j| j.trim_start().starts_with("crossbatch-server"))
        .unwrap_or_else(|| panic!("no crossbatch-server job in {prom}"));
    for line in ["names: [\"server\"]", "type: A", "port: 9464"] {
        assert!(server_job.contains(line), "{line} in {server_job}");
    }
    assert!(compose.contains("CROSSBATCH_METRICS_ADDR: 0.0.0.0:9464"));
    assert!(compose.contains("profiles: [\"monitoring\"]"));
}
