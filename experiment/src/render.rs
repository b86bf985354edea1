//! The experiment's report: the variants side by side in the seed report's shape
//! (Results Summary with a Variant column), a "Variants compared" table against
//! the first variant, per-config tables, and what was skipped or failed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crossbatch_collector::compare::{self, Comparison, Run};
use crossbatch_collector::compare_render;

use crate::run::{Finished, Outcome};
use crate::spec::Experiment;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Load(#[from] compare::CompareError),
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The variants that ran, as comparison runs labelled by variant name.
pub fn variant_runs(done: &Finished) -> Result<Vec<Run>, RenderError> {
    let mut runs = Vec::new();
    for (v, outcome) in &done.outcomes {
        if let Outcome::Ran(md) = outcome {
            let mut run = compare::load(md)?;
            run.label = v.name.clone();
            runs.push(run);
        }
    }
    Ok(runs)
}

fn cell(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "n/a".into())
}

pub fn markdown(
    exp: &Experiment,
    done: &Finished,
    c: &Comparison,
    svg: Option<&str>,
    pairs: usize,
) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "# {}\n", exp.name);
    let _ = writeln!(w, "*{}*\n", exp.description.trim());
    let date = crossbatch_collector::report::utc_timestamp(done.started_unix_s * 1_000_000_000);
    let s = &exp.sweep;
    let list = |v: &[usize]| {
        v.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(w, "**Date:** {date} UTC  ");
    let _ = writeln!(
        w,
        "**Machine:** {}, {} logical cores  ",
        crossbatch_model::backend::cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let _ = writeln!(
        w,
        "**Sweep:** batch {} × concurrency {}, {pairs} pairs per config{}{}  ",
        list(&s.batch),
        list(&s.concurrency),
        if s.warmup > 0 {
            format!(", {} warm-up calls", s.warmup)
        } else {
            String::new()
        },
        match s.rate {
            Some(r) => format!(
                ", open loop at {r} calls/s ({})",
                s.arrivals.as_deref().unwrap_or("uniform")
            ),
            None => ", closed loop".into(),
        }
    );
    let _ = writeln!(
        w,
        "**File:** `{}` · **Took:** {:.0} s\n",
        exp.path.display(),
        done.wall.as_secs_f64()
    );

    let _ = writeln!(w, "## Variants\n");
    let _ = writeln!(
        w,
        "| Variant | Server settings | Model | Backend | Device | Report |\n|---|---|---|---|---|---|"
    );
    for (v, outcome) in &done.outcomes {
        let settings = if v.settings.is_empty() {
            "defaults".to_string()
        } else {
            format!("`{}`", v.serve_flags().join(" "))
        };
        let run = c.runs.iter().find(|r| r.label == v.name);
        let (model, backend, device) = match run {
            Some(r) => (
                format!(
                    "{}{}",
                    r.summary.model,
                    if r.summary.stand_in {
                        " (stand-in)"
                    } else {
                        ""
                    }
                ),
                r.summary.backend.clone(),
                r.summary.device.clone(),
            ),
            None => Default::default(),
        };
        let report = match outcome {
            Outcome::Ran(p) => link(p, &done.dir),
            Outcome::Skipped(why) => format!("skipped: {why}"),
            Outcome::Failed(why) => format!("**failed:** {why}"),
        };
        let _ = writeln!(
            w,
            "| {} | {settings} | {model} | {backend} | {device} | {report} |",
            v.name
        );
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## Results Summary\n");
    let _ = writeln!(
        w,
        "| Variant | Batch Size | Concurrency | Pairs | Time (s) | Throughput (pairs/s) | Avg Latency (ms) | P50 (ms) | P95 (ms) | P99 (ms) | Errors |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &c.runs {
        for cfg in &r.summary.configs {
            let l = cfg.latency_ms;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} |",
                r.label,
                cfg.batch,
                cfg.concurrency,
                cfg.pairs,
                cfg.time_s,
                cfg.pairs_per_s,
                cell(l.map(|d| d.avg)),
                cell(l.map(|d| d.p50)),
                cell(l.map(|d| d.p95)),
                cell(l.map(|d| d.p99)),
                cfg.error_count()
            );
        }
    }
    let _ = writeln!(w);

    if c.runs.is_empty() {
        let _ = writeln!(w, "No variant ran; see the Variants table.\n");
        return w;
    }
    let _ = writeln!(w, "## Variants compared\n");
    let _ = writeln!(
        w,
        "Each variant's best config, and the change against the first variant (`{}`).\n",
        c.runs[0].label
    );
    compare_render::best_table(&mut w, c, "Variant");
    if let Some(warn) = compare_render::device_warning(c) {
        let _ = writeln!(w, "{warn}\n");
    }
    if c.runs.len() > 1 {
        let _ = writeln!(w, "## Per config\n");
        compare_render::metric_tables(&mut w, c, "###");
        compare_render::partial_table(&mut w, c, "##");
    }
    if let Some(f) = svg {
        let _ = writeln!(w, "![Throughput and latency per config and variant]({f})\n");
    }
    let _ = writeln!(w, "## Notes\n");
    let _ = writeln!(
        w,
        "- Every variant ran on this machine in this one run, one after the other, each on a fresh server process with the same workload and sweep; changes are against the first variant. Latency is the driver's; the per-variant reports hold every figure of the seed report (dashboard, time series, drivers)."
    );
    for r in c.runs.iter().filter(|r| r.summary.partial.is_some()) {
        let _ = writeln!(
            w,
            "- `{}` is partial: {}",
            r.label,
            r.summary.partial.as_deref().unwrap_or_default()
        );
    }
    w
}

fn link(path: &Path, base: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    format!("[{}]({})", rel.display(), rel.display())
}

/// Writes `<dir>/<name>.md`, `.svg` and `.json` (the comparison's runs); returns the
/// markdown's path.
pub fn write(exp: &Experiment, done: &Finished, pairs: usize) -> Result<PathBuf, RenderError> {
    let c = Comparison::of(variant_runs(done)?);
    let write = |name: String, text: String| {
        let path = done.dir.join(name);
        std::fs::write(&path, text).map_err(|source| RenderError::Write {
            path: path.clone(),
            source,
        })?;
        Ok::<_, RenderError>(path)
    };
    let svg = (!c.shared.is_empty()).then(|| format!("{}.svg", exp.name));
    if let Some(f) = &svg {
        write(f.clone(), compare_render::svg(&c))?;
    }
    let summary: Vec<_> = c
        .runs
        .iter()
        .map(|r| serde_json::json!({"variant": r.label, "report": r.path, "run": r.summary}))
        .collect();
    write(
        format!("{}.json", exp.name),
        serde_json::to_string_pretty(&serde_json::json!({
            "name": exp.name,
            "description": exp.description,
            "variants": summary,
        }))
        .unwrap_or_default(),
    )?;
    write(
        format!("{}.md", exp.name),
        markdown(exp, done, &c, svg.as_deref(), pairs),
    )
}
