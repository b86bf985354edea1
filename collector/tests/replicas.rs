//! Two server replicas behind two drivers: their batch ids collide (each process
//! counts from 0) and both replicas' batches are kept; the report's Servers section
//! (markdown, HTML) and JSON give each replica its calls, share, server-side figures
//! and batches, the driver × replica matrix, replica `b` lost when it stopped
//! answering, and the drivers' retries and ejections.

mod otlp;

use crossbatch_collector::report::{Meta, build};
use crossbatch_collector::store::Store;
use crossbatch_proto::attrs as a;
use otlp::{
    Peer, call_on, export_resources, i, kv, replica, run_done, s, served, step_done, unnamed,
};
use serde_json::Value;

/// Calls 1–200, 10 ms apart (1 ms each): every third from driver d1, the rest from
/// d0; replica b answers the odd ones up to call 80 (0.8 s), a all the others.
fn who(n: u8) -> (&'static str, &'static str) {
    let driver = if n.is_multiple_of(3) { "d1" } else { "d0" };
    let replica = if n % 2 == 1 && n <= 80 { "b" } else { "a" };
    (driver, replica)
}

fn peer(driver: &str) -> Peer {
    Peer {
        driver_id: driver.into(),
        ..Peer::benign()
    }
}

fn run() -> Store {
    let mut driver_spans = Vec::new();
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    let (mut next_a, mut next_b) = (0i64, 0i64);
    for n in 1..=200u8 {
        let (driver, rep) = who(n);
        driver_spans.push(call_on(&peer(driver), n, 1000, rep));
        // Each replica numbers its own batches from 0: ids 0–39 exist on both.
        let (spans, next) = if rep == "a" {
            (&mut on_a, &mut next_a)
        } else {
            (&mut on_b, &mut next_b)
        };
        spans.extend(served(n, *next, 2));
        *next += 1;
    }
    let calls = |d: &str| (1..=200u8).filter(|&n| who(n).0 == d).count() as i64;
    let mut step = step_done(&peer("d0"), calls("d0"));
    step.attributes.extend([
        kv(a::RETRIES, i(2)),
        kv(a::EJECTIONS, i(1)),
        kv(
            a::ENDPOINTS,
            s(r#"[{"endpoint":"10.0.0.2:50051","instance":"b","calls_ok":27,"attempts_failed":3,"retries":2,"ejections":1,"codes":{"UNAVAILABLE":3},"ejected_at_end":true,"last_ok_unix_nano":1700000000791000000}]"#),
        ),
    ]);
    let mut run0 = run_done(&peer("d0"), calls("d0"));
    run0.attributes
        .extend([kv(a::RETRIES, i(2)), kv(a::EJECTIONS, i(1))]);
    driver_spans.extend([
        step,
        run0,
        step_done(&peer("d1"), calls("d1")),
        run_done(&peer("d1"), calls("d1")),
    ]);
    let mut store = Store::new(1_000_000);
    store.ingest_traces(&export_resources(vec![
        unnamed(driver_spans),
        replica("a", on_a),
        replica("b", on_b),
    ]));
    store
}

fn expected_matrix(rep: &str) -> Value {
    let mut m = serde_json::Map::new();
    for d in ["d0", "d1"] {
        let n = (1..=200u8).filter(|&n| who(n) == (d, rep)).count();
        m.insert(d.into(), n.into());
    }
    Value::Object(m)
}

#[test]
fn two_replicas_with_colliding_batch_ids_each_get_their_row() {
    let data = run().run_data("run1");
    assert_eq!(data.calls.len(), 200);
    let dir = tempfile::tempdir().expect("tmp");
    let report = build(
        &data,
        &Meta {
            title: "replicas".into(),
            description: None,
            partial: None,
            expect_drivers: 2,
            forward: None,
        },
    );
    let md_path =
        crossbatch_collector::output::write(dir.path(), "replicas", &report).expect("written");
    let md = std::fs::read_to_string(&md_path).expect("md");
    let html = std::fs::read_to_string(md_path.with_extension("html")).expect("html");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(md_path.with_extension("json")).expect("json"),
    )
    .expect("valid json");

    // Both replicas' batches are kept: 200 forward passes, ids 0–39 on both.
    let batches = json["batches"].as_array().expect("batches");
    assert_eq!(batches.len(), 200);
    for r in ["a", "b"] {
        assert!(
            batches
                .iter()
                .any(|b| b["instance"] == r && b["id"] == 0 && b["pairs"] == 2),
            "batch 0 of {r}"
        );
    }
    assert!(json["calls"].as_array().expect("calls").iter().all(|c| {
        let rep = c["instance"].as_str().unwrap_or_default();
        c["server"]["instance"] == rep && c["server"]["batch_ids"].as_array().is_some()
    }));

    // JSON: one object per replica, and the run's totals.
    let servers = json["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2, "{servers:?}");
    let (sa, sb) = (&servers[0], &servers[1]);
    assert_eq!(sa["instance"], "a");
    assert_eq!(
        (sa["calls"].as_u64(), sa["pairs_ok"].as_u64()),
        (Some(160), Some(320))
    );
    assert_eq!(sa["share"].as_f64(), Some(0.8));
    assert_eq!(
        (sa["lost"].as_bool(), &sa["lost_at_s"]),
        (Some(false), &Value::Null)
    );
    assert_eq!(sa["batches"].as_u64(), Some(160));
    assert_eq!(sa["calls_by_driver"], expected_matrix("a"));
    assert_eq!(sb["instance"], "b");
    assert_eq!(
        (sb["calls"].as_u64(), sb["pairs_ok"].as_u64()),
        (Some(40), Some(80))
    );
    assert_eq!(sb["share"].as_f64(), Some(0.2));
    assert_eq!(sb["lost"].as_bool(), Some(true));
    // Its last answer: call 79, sent 0.79 s into the run, 1 ms long.
    let at = sb["lost_at_s"].as_f64().expect("lost_at_s");
    assert!((at - 0.791).abs() < 1e-9, "{at}");
    assert_eq!(sb["batches"].as_u64(), Some(40));
    assert_eq!(sb["pairs_per_batch"].as_f64(), Some(2.0));
    assert_eq!(sb["calls_by_driver"], expected_matrix("b"));
    assert_eq!(
        (sb["attempts_failed"].as_u64(), sb["ejections"].as_u64()),
        (Some(3), Some(1))
    );
    for srv in servers {
        assert_eq!(srv["latency_p50_ms"].as_f64(), Some(0.8));
        assert_eq!(srv["latency_p95_ms"].as_f64(), Some(0.8));
        assert_eq!(srv["queue_p50_ms"].as_f64(), Some(0.1));
        assert_eq!(srv["inference_p50_ms"].as_f64(), Some(0.5));
    }
    let totals = &json["totals"];
    assert_eq!(totals["calls"].as_u64(), Some(200));
    assert_eq!(
        (totals["retries"].as_u64(), totals["ejections"].as_u64()),
        (Some(2), Some(1))
    );

    // Markdown: the section after the drivers, a row per replica, the matrix, the
    // lost replica and the retries.
    let section = md
        .split_once("## Servers\n")
        .map(|(before, after)| {
            assert!(before.contains("## Drivers"), "after the drivers");
            after.split("## Notes").next().unwrap_or_default()
        })
        .expect("a Servers section");
    let a_row = "| a | 160 | 320 | 80.0% | 0.8ms | 0.8ms | 0.1ms | 0.5ms | 160 | 2.0 | up |";
    let b_row =
        "| b | 40 | 80 | 20.0% | 0.8ms | 0.8ms | 0.1ms | 0.5ms | 40 | 2.0 | lost at 0.8 s |";
    for want in [
        "| Server | Calls | Pairs OK | Share | Lat P50 | Lat P95 | Queue P50 | Inference P50 | Batches | Pairs/Batch | State |",
        a_row,
        b_row,
        "**Lost replicas:** b at 0.8 s",
        "| Driver | a | b |",
        "**Retries:** 2 attempts retried on another endpoint; **Ejections:** 1 (b 1)",
    ] {
        assert!(section.contains(want), "`{want}` missing in:\n{section}");
    }
    for d in ["d0", "d1"] {
        let row = format!(
            "| {d} | {} | {} |",
            expected_matrix("a")[d],
            expected_matrix("b")[d]
        );
        assert!(section.contains(&row), "`{row}` missing in:\n{section}");
    }

    // The HTML report carries the same tables, and the snapshot the rows.
    assert!(
        html.contains("<h2>Servers</h2>"),
        "Servers heading in the HTML"
    );
    assert!(html.contains("<td>lost at 0.8 s</td>"));
    let snap = serde_json::to_value(crossbatch_collector::live::snapshot(&report, false, None))
        .expect("snapshot");
    assert_eq!(snap["servers"], json["servers"]);
    assert_eq!(snap["totals"]["retries"].as_u64(), Some(2));
}

#[test]
fn one_replica_keeps_the_section_short() {
    let p = Peer::benign();
    let mut store = Store::new(1_000_000);
    store.ingest_traces(&otlp::export(otlp::whole_run(&p, 4)));
    let report = build(
        &store.run_data(&p.run_id),
        &Meta {
            title: "one".into(),
            description: None,
            partial: None,
            expect_drivers: 1,
            forward: None,
        },
    );
    let md = crossbatch_collector::render::markdown(&report, &Default::default());
    let section = md
        .split_once("## Servers\n")
        .and_then(|(_, after)| after.split_once("## Notes"))
        .map(|(s, _)| s)
        .expect("a Servers section");
    assert!(
        section.contains("| replica-a | 4 | 8 | 100.0% | n/a | n/a | n/a | n/a | 0 | n/a | up |"),
        "{section}"
    );
    assert!(
        !section.contains("| Driver |") && !section.contains("Retries"),
        "{section}"
    );
    assert_eq!(report.servers.len(), 1);
    assert_eq!((report.totals.retries, report.totals.ejections), (0, 0));
}
