//! crossbatch-collector: receives the spans and metrics of the server and the drivers
//! over OTLP/gRPC, joins them by trace id into one record per call, and writes the
//! benchmark report (markdown, SVG plots, JSON).

pub mod compare;
pub mod compare_render;
pub mod coordinate;
pub mod dashboard;
pub mod escape;
pub mod figure;
pub mod forward;
pub mod html;
pub mod live;
pub mod output;
pub mod receiver;
pub mod render;
pub mod render_servers;
pub mod report;
pub mod serve;
pub mod servers;
pub mod spans_file;
pub mod stats;
pub mod store;
pub mod svg;

use std::path::{Path, PathBuf};

use crate::report::{Meta, build};
use crate::store::Store;

/// `crossbatch-collector report`: rebuilds reports from a saved spans file, one per
/// run (or only `run_id`). A run without every expected completion record is marked
/// partial. Returns the markdown paths.
pub fn offline_report(
    spans: &Path,
    out_dir: &Path,
    name: &str,
    description: Option<String>,
    run_id: Option<&str>,
    expect_drivers: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut store = Store::new(usize::MAX);
    let read = spans_file::read_into(spans, &mut store)?;
    if !read.bad_lines.is_empty() {
        eprintln!(
            "warning: {}: skipped {} unreadable lines (first: line {})",
            spans.display(),
            read.bad_lines.len(),
            read.bad_lines[0]
        );
    }
    let runs: Vec<String> = match run_id {
        Some(id) => vec![id.to_string()],
        None => store.run_ids(),
    };
    if runs.is_empty() {
        anyhow::bail!(
            "{}: no crossbatch run in it ({} trace exports, {} metric exports)",
            spans.display(),
            read.trace_exports,
            read.metric_exports
        );
    }
    let mut paths = Vec::new();
    for run in runs {
        let data = store.run_data(&run);
        if data.calls.is_empty() && data.runs.is_empty() {
            anyhow::bail!("{}: no spans of run {run}", spans.display());
        }
        let partial = data
            .runs
            .is_empty()
            .then(|| "no driver completion record in the saved spans".to_string());
        let meta = Meta {
            title: name.to_string(),
            description: description.clone(),
            partial,
            expect_drivers,
            forward: None,
        };
        let report = build(&data, &meta);
        paths.push(output::write(out_dir, name, &report)?);
    }
    Ok(paths)
}
