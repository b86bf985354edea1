//! The report's "Servers" section in markdown: one row per replica, the driver ×
//! replica matrix of calls, lost replicas, and the drivers' retries and ejections.
//! With one replica and nothing retried it is the table alone. Instance names and
//! driver ids are a peer's strings: every one goes through `escape::md`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::escape::md;
use crate::figure::fig;
use crate::report::Report;
use crate::servers::ServerRow;

/// A replica's name as the tables show it: `-` for calls no replica claimed.
fn name(instance: &str) -> String {
    if instance.is_empty() {
        "-".into()
    } else {
        md(instance)
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{}ms", fig(x, 1)))
        .unwrap_or_else(|| "n/a".into())
}

fn state(s: &ServerRow) -> String {
    match s.lost_at_s {
        Some(t) => format!("lost at {} s", fig(t, 1)),
        None if s.instance.is_empty() => "-".into(),
        None => "up".into(),
    }
}

/// Appends the section to `w`.
pub fn section(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## Servers\n");
    let _ = writeln!(
        w,
        "| Server | Calls | Pairs OK | Share | Lat P50 | Lat P95 | Queue P50 | Inference P50 | Batches | Pairs/Batch | State |"
    );
    let _ = writeln!(
        w,
        "|--------|-------|----------|-------|---------|---------|-----------|---------------|---------|-------------|-------|"
    );
    for s in &r.servers {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {}% | {} | {} | {} | {} | {} | {} | {} |",
            name(&s.instance),
            s.calls,
            s.pairs_ok,
            fig(s.share * 100.0, 1),
            ms(s.latency_p50_ms),
            ms(s.latency_p95_ms),
            ms(s.queue_p50_ms),
            ms(s.inference_p50_ms),
            s.batches,
            s.pairs_per_batch
                .map(|p| fig(p, 1))
                .unwrap_or_else(|| "n/a".into()),
            state(s)
        );
    }
    let _ = writeln!(
        w,
        "\nEach replica's measured calls (any status) and pairs of its OK calls, by the replica that answered (its `service.instance.id`, else the one its driver heard; `-`: no replica claimed the call); Share is of the run's {} measured calls. Latency is the server's own (its RPC span), queue wait and inference per OK call; percentiles nearest-rank.\n",
        r.totals.calls
    );

    let lost: Vec<String> = r
        .servers
        .iter()
        .filter_map(|s| {
            Some(format!(
                "{} at {} s",
                name(&s.instance),
                fig(s.lost_at_s?, 1)
            ))
        })
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(
            w,
            "**Lost replicas:** {} — no answer after that time (seconds from the run's start) while the drivers it had answered sent calls for at least 1 s more: at least 5 calls, and too many to have all missed it by chance (under 1 in 1000 at its earlier share of their calls).\n",
            lost.join(", ")
        );
    }

    if r.servers.len() > 1 {
        let drivers: BTreeSet<&str> = r
            .servers
            .iter()
            .flat_map(|s| s.calls_by_driver.keys().map(String::as_str))
            .collect();
        let _ = writeln!(w, "**Calls by driver and replica:**\n");
        let head: Vec<String> = r.servers.iter().map(|s| name(&s.instance)).collect();
        let _ = writeln!(w, "| Driver | {} |", head.join(" | "));
        let _ = writeln!(w, "|--------|{}", "-----|".repeat(head.len()));
        for d in drivers {
            let cells: Vec<String> = r
                .servers
                .iter()
                .map(|s| s.calls_by_driver.get(d).copied().unwrap_or(0).to_string())
                .collect();
            let _ = writeln!(w, "| {} | {} |", md(d), cells.join(" | "));
        }
        let _ = writeln!(w);
    }

    let t = &r.totals;
    if r.servers.len() > 1 || t.retries > 0 || t.ejections > 0 {
        let ejected: Vec<String> = r
            .servers
            .iter()
            .filter(|s| s.ejections > 0)
            .map(|s| format!("{} {}", name(&s.instance), s.ejections))
            .collect();
        let by = if ejected.is_empty() {
            String::new()
        } else {
            format!(" ({})", ejected.join(", "))
        };
        let _ = writeln!(
            w,
            "**Retries:** {} attempts retried on another endpoint; **Ejections:** {}{by} — the drivers' counts.\n",
            t.retries, t.ejections
        );
    }
}
