//! `crossbatch-server eval`, run as a user runs it: the table for int8 and bf16 beside
//! f32 on the parity pairs and a reranking set, each figure within its bound, and bad
//! input refused with a message and a non-zero exit.

use std::process::Command;

fn eval(args: &[&str]) -> std::process::Output {
    let model = crossbatch_model::standin::ensure_default().expect("offline stand-in");
    let shared = crossbatch_testkit::parity::reference_dir();
    Command::new(env!("CARGO_BIN_EXE_crossbatch-server"))
        .arg("eval")
        .arg("--model")
        .arg(&model)
        .arg("--parity")
        .arg(shared.join("parity-64.jsonl"))
        .arg("--rerank-input")
        .arg(shared.join("bench-800.jsonl"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn int8_and_bf16_accuracy_table_with_every_figure_in_bounds() {
    let dir = tempfile::tempdir().expect("tmp");
    let json = dir.path().join("eval.json");
    let out = eval(&[
        "--dtypes",
        "int8,bf16",
        "--queries",
        "6",
        "--passages",
        "16",
        "--json",
        json.to_str().expect("utf-8 path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| int8 | parity | 64 |"), "{stdout}");
    assert!(stdout.contains("| bf16 | rerank | 96 |"), "{stdout}");
    assert!(stdout.contains("6 queries × 16 passages"), "{stdout}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 3, "f32, then int8, then bf16");
    let (f32r, int8, bf16) = (&rows[0], &rows[1], &rows[2]);
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("number: {v}"));

    // f32 against itself is exact, and against HF f64 within its parity bound.
    assert_eq!(f32r["dtype"], "f32");
    assert_eq!(num(&f32r["parity"]["vs_f32"]["max"]), 0.0);
    assert!(
        num(&f32r["parity"]["vs_reference"]["max"]) <= 1e-5,
        "{f32r}"
    );
    assert_eq!(num(&f32r["ranking"]["spearman_min"]), 1.0);

    // int8: the bounds of model/tests/parity_cpu_int8.rs (measured 2026-12-07: parity
    // max 6.3e-3, mean 2.3e-3; cosine at least 0.991; Spearman 0.97, top-3 all kept),
    // and the ranking held.
    assert_eq!(int8["dtype"], "int8");
    assert!(
        int8["device"].as_str().is_some_and(|d| d.contains("int8")),
        "{int8}"
    );
    for set in ["parity", "rerank"] {
        let a = &int8[set];
        let (max, mean) = (num(&a["vs_f32"]["max"]), num(&a["vs_f32"]["mean"]));
        assert!(max > 0.0, "int8 moved nothing on {set}: not int8?");
        assert!(max <= 1e-2 && mean <= 3e-3 && mean <= max, "{set}: {a}");
        assert!(num(&a["cosine_min"]) >= 0.99, "{set}: {a}");
    }
    assert!(
        num(&int8["parity"]["vs_reference"]["max"]) <= 8e-3,
        "{int8}"
    );
    let r = &int8["ranking"];
    assert_eq!(
        (r["queries"].as_u64(), r["passages_per_query"].as_u64()),
        (Some(6), Some(16))
    );
    assert!(num(&r["spearman_mean"]) >= 0.95, "{r}");
    assert!(num(&r["top3_mean"]) >= 0.8, "{r}");

    // bf16: the bounds of model/tests/parity_cpu_lowp.rs (measured 2026-12-07 on Zen 4:
    // parity max 3.4e-4, mean 1.3e-4; reranking max 4.4e-4; cosine 0.99999; Spearman
    // 0.9998 mean, top-3 all kept), an order of magnitude inside int8's.
    assert_eq!(bf16["dtype"], "bf16");
    assert!(
        bf16["device"].as_str().is_some_and(|d| d.contains("bf16")),
        "{bf16}"
    );
    for set in ["parity", "rerank"] {
        let a = &bf16[set];
        let (max, mean) = (num(&a["vs_f32"]["max"]), num(&a["vs_f32"]["mean"]));
        assert!(max > 0.0, "bf16 moved nothing on {set}: not bf16?");
        assert!(max <= 6e-4 && mean <= 2e-4 && mean <= max, "{set}: {a}");
        assert!(num(&a["cosine_min"]) >= 0.9999, "{set}: {a}");
    }
    assert!(
        num(&bf16["parity"]["vs_reference"]["max"]) <= 6e-4,
        "{bf16}"
    );
    let r = &bf16["ranking"];
    assert!(num(&r["spearman_mean"]) >= 0.999, "{r}");
    assert!(num(&r["top3_mean"]) >= 0.95, "{r}");
}

#[test]
fn bad_input_gets_a_message_and_a_non_zero_exit() {
    let out = eval(&["--dtypes", "f16"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("f16 runs on wgpu only"), "{err}");

    let out = eval(&["--queries", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1"));
}
