//! The Kubernetes autoscaler's metric against the server. prometheus-adapter's rule
//! (`deploy/k8s/prometheus-adapter/rules.yaml`) computes the per-pod custom metric the
//! HorizontalPodAutoscaler (`deploy/k8s/base/autoscaling.yaml`) scales on, from
//! Prometheus series of the server's `/metrics`. A renamed metric would leave the
//! query empty and the autoscaler blind without a word, so: every `crossbatch_…`
//! series the rule's queries name must be in the text the server's metrics registry
//! renders, as the sum or count of a histogram, and the HPA must ask for the metric
//! the rule serves. (`scripts/check-k8s.sh` renders and validates the manifests and
//! runs the query in promtool; this checks the names against the server's code.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crossbatch_server::metrics::Metrics;

fn k8s(path: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s")
        .join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, text)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The text of every `key:` in a YAML file: the rest of its line and the lines
/// indented deeper below it (a block scalar or a folded query), comments left out.
fn values_of(yaml: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        // A key after list dashes (`- key:`) is indented by the dashes too.
        let mut t = line.trim_start();
        let mut key_indent = indent(line);
        while let Some(after) = t.strip_prefix("- ") {
            t = after.trim_start();
            key_indent = line.len() - t.len();
        }
        let Some(rest) = t.strip_prefix(key).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let mut value = rest.to_string();
        for next in &lines[i + 1..] {
            if next.trim().is_empty() {
                continue;
            }
            if indent(next) <= key_indent {
                break;
            }
            if !next.trim_start().starts_with('#') {
                value.push('\n');
                value.push_str(next);
            }
        }
        out.push(value);
    }
    out
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches(|c| c == '"' || c == '\'')
}

/// Every `crossbatch_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crossbatch_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        // A name, not the end of a longer identifier.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The server's `/metrics` text, each histogram with one observation so that its
/// series carry a value.
fn rendered() -> String {
    let m = Metrics::default();
    m.request_done(tonic::Code::Ok, std::time::Duration::from_millis(30));
    m.tokenize_seconds.observe(0.001);
    m.queue_seconds.observe(0.004);
    m.inference_seconds.observe(0.025);
    m.batch_pairs.observe(8.0);
    m.batch_tokens.observe(300.0);
    m.batch_padded_tokens.observe(512.0);
    m.render()
}

#[test]
fn every_series_the_hpa_metric_is_computed_from_is_exported_by_the_server() {
    let (rules_path, rules) = k8s("prometheus-adapter/rules.yaml");
    let queries: Vec<String> = values_of(&rules, "seriesQuery")
        .into_iter()
        .chain(values_of(&rules, "metricsQuery"))
        .collect();
    assert!(
        queries.len() >= 2,
        "{}: no seriesQuery/metricsQuery found",
        rules_path.display()
    );
    let queried: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();

    let text = rendered();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();

    // The queue/compute ratio reads both histograms' sums and counts.
    for expected in [
        "crossbatch_queue_duration_seconds_sum",
        "crossbatch_queue_duration_seconds_count",
        "crossbatch_inference_duration_seconds_sum",
        "crossbatch_inference_duration_seconds_count",
    ] {
        assert!(
            queried.contains(expected),
            "{}: the rule no longer reads {expected} (queried: {queried:?}); if the ratio \
             changed on purpose, change this test with it",
            rules_path.display()
        );
    }
    for name in &queried {
        assert!(
            exported.contains(name.as_str()),
            "{}: the prometheus-adapter rule queries {name}, which the server does not export \
             (server/src/metrics.rs). Exported: {exported:?}",
            rules_path.display()
        );
        let base = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or_else(|| panic!("{name}: the rule reads a histogram's _sum or _count"));
        assert!(
            histograms.contains(base),
            "{name}: {base} is not a histogram in the server's /metrics (histograms: {histograms:?})"
        );
    }
}

#[test]
fn the_hpa_scales_on_the_metric_the_adapter_rule_serves() {
    let (rules_path, rules) = k8s("prometheus-adapter/rules.yaml");
    let served: Vec<String> = values_of(&rules, "as")
        .iter()
        .map(|v| unquote(v).to_string())
        .collect();
    assert_eq!(
        served.len(),
        1,
        "{}: want one rule naming one metric (name.as), found {served:?}",
        rules_path.display()
    );

    let (hpa_path, hpa) = k8s("base/autoscaling.yaml");
    let hpa_doc = hpa
        .split("\n---")
        .find(|d| d.contains("kind: HorizontalPodAutoscaler"))
        .unwrap_or_else(|| panic!("{}: no HorizontalPodAutoscaler", hpa_path.display()));
    assert!(
        hpa_doc.contains("type: Pods"),
        "{}: the HPA has no per-pod (Pods) metric",
        hpa_path.display()
    );
    // `metric:` then its `name:` (the only `metric:` key in an HPA with one Pods metric).
    let metric_blocks = values_of(hpa_doc, "metric");
    assert_eq!(
        metric_blocks.len(),
        1,
        "{}: want one Pods metric",
        hpa_path.display()
    );
    let asked = values_of(&metric_blocks[0], "name");
    assert_eq!(
        asked.iter().map(|v| unquote(v)).collect::<Vec<_>>(),
        vec![served[0].as_str()],
        "{}: the HPA's metric is not the one {} serves",
        hpa_path.display(),
        rules_path.display()
    );
}

#[test]
fn the_yaml_reading_finds_what_it_should() {
    let y = "a:\n  - seriesQuery: crossbatch_s{pod!=\"\"}\n    metricsQuery: >-\n      rate(crossbatch_x_sum[1m])\n      # crossbatch_not_this\n      / crossbatch_y_count\n    name: z\n";
    let s = values_of(y, "seriesQuery");
    assert_eq!(s.len(), 1);
    assert_eq!(
        metric_names(&s[0]),
        ["crossbatch_s"].map(String::from).into()
    );
    let q = values_of(y, "metricsQuery");
    assert_eq!(q.len(), 1);
    assert_eq!(
        metric_names(&q[0]),
        ["crossbatch_x_sum", "crossbatch_y_count"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        values_of(y, "name")
            .iter()
            .map(|v| unquote(v))
            .collect::<Vec<_>>(),
        ["z"]
    );
    assert!(metric_names("my_crossbatch_x").is_empty());
}
