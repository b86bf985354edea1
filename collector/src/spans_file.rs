//! `--spans-out`: every export kept as one OTLP JSON line (`{"resourceSpans": …}` or
//! `{"resourceMetrics": …}`, the OTLP file-exporter encoding), and read back by
//! `crossbatch-collector report --spans FILE`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SpansFileError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends lines, flushed after each so a killed collector leaves whole lines.
pub struct SpansWriter {
    out: BufWriter<File>,
}

impl SpansWriter {
    pub fn create(path: &Path) -> Result<Self, SpansFileError> {
        let f = File::create(path).map_err(|source| SpansFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            out: BufWriter::new(f),
        })
    }

    pub fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

/// What reading a spans file found.
#[derive(Debug, Default, PartialEq)]
pub struct ReadSummary {
    pub trace_exports: usize,
    pub metric_exports: usize,
    /// Lines that were neither (bad JSON, a truncated last line): skipped.
    pub bad_lines: Vec<usize>,
}

/// Feeds every export in `path` into `store`.
pub fn read_into(path: &Path, store: &mut Store) -> Result<ReadSummary, SpansFileError> {
    let io = |source| SpansFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let mut out = ReadSummary::default();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io)?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            out.bad_lines.push(i + 1);
            continue;
        };
        if v.get("resourceSpans").is_some() {
            match serde_json::from_value::<ExportTraceServiceRequest>(v) {
                Ok(r) => {
                    store.ingest_traces(&r);
                    out.trace_exports += 1;
                }
                Err(_) => out.bad_lines.push(i + 1),
            }
        } else if v.get("resourceMetrics").is_some() {
            match serde_json::from_value::<ExportMetricsServiceRequest>(v) {
                Ok(r) => {
                    store.ingest_metrics(&r);
                    out.metric_exports += 1;
                }
                Err(_) => out.bad_lines.push(i + 1),
            }
        } else {
            out.bad_lines.push(i + 1);
        }
    }
    Ok(out)
}
