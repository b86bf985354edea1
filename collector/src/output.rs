//! Writes a report to disk: `<dir>/<name>-<timestamp>.md`, its `.json` (every figure
//! and the per-call records), three SVG plots beside it, linked from the markdown, and
//! the self-contained `.html`.

use std::path::{Path, PathBuf};

use crate::render::{Plots, markdown};
use crate::report::Report;
use crate::svg;

#[derive(Debug, thiserror::Error)]
#[error("writing {path}")]
pub struct OutputError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes the report's files and returns the markdown's path.
pub fn write(dir: &Path, name: &str, r: &Report) -> Result<PathBuf, OutputError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OutputError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let base = format!("{name}-{}", crate::report::file_stamp(&r.timestamp));
    let plots = Plots {
        latency: Some(format!("{base}-latency.svg")),
        throughput: Some(format!("{base}-throughput.svg")),
        series: Some(format!("{base}-series.svg")),
    };
    for (file, text) in [
        (plots.latency.as_deref(), svg::latency(r)),
        (plots.throughput.as_deref(), svg::throughput(r)),
        (plots.series.as_deref(), svg::series(r)),
    ] {
        let p = dir.join(file.unwrap_or_default());
        std::fs::write(&p, text).map_err(err(&p))?;
    }
    let json = dir.join(format!("{base}.json"));
    let text = serde_json::to_string_pretty(r).map_err(|e| OutputError {
        path: json.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&json, text).map_err(err(&json))?;
    let md = dir.join(format!("{base}.md"));
    std::fs::write(&md, markdown(r, &plots)).map_err(err(&md))?;
    let html = dir.join(format!("{base}.html"));
    std::fs::write(&html, crate::html::report_html(r, &format!("{base}.md")))
        .map_err(err(&html))?;
    Ok(md)
}
