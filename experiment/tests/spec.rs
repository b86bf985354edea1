//! Experiment files: a good one read whole, each kind of bad one refused with the
//! file, the line and the key; and every shipped experiment valid.

use std::path::Path;

use crossbatch_experiment::spec::{self, SpecError};

const GOOD: &str = r#"
name = "demo"
description = "two policies"

[sweep]
batch = [8, 32]
concurrency = [1, 4]
pairs = 96
warmup = 2
rate = 10.0
arrivals = "poisson"
deadline_ms = 500

[server]
backend = "cpu"
batch_timeout_ms = 5

[[variant]]
name = "deadline"
batch_policy = "deadline"

[[variant]]
name = "eager"
description = "no waiting"
batch_policy = "eager"
batch_timeout_ms = 1
group_by_length = false
"#;

fn parse(text: &str) -> Result<spec::Experiment, SpecError> {
    spec::parse(Path::new("experiments/demo.toml"), text)
}

/// The error's message, which must name the file, the line and the key.
fn refused(text: &str, line: usize, key: &str) -> String {
    refused_at(text, &[line], key)
}

/// As [`refused`], where the error may point at any of `lines` (a table's header
/// or its first key).
fn refused_at(text: &str, lines: &[usize], key: &str) -> String {
    let err = parse(text).expect_err("must be refused");
    let msg = err.to_string();
    assert!(msg.starts_with("experiments/demo.toml"), "file: {msg}");
    assert!(
        lines
            .iter()
            .any(|l| msg.contains(&format!(":{l}:")) || msg.contains(&format!("line {l}"))),
        "line {lines:?}: {msg}"
    );
    assert!(msg.contains(key), "key {key}: {msg}");
    msg
}

#[test]
fn a_good_file_is_read_whole() {
    let e = parse(GOOD).expect("valid");
    assert_eq!(e.name, "demo");
    assert_eq!(e.sweep.batch, vec![8, 32]);
    assert_eq!(e.sweep.concurrency, vec![1, 4]);
    assert_eq!(e.sweep.pairs, 96);
    assert_eq!(e.sweep.warmup, 2);
    assert_eq!(e.sweep.rate, Some(10.0));
    assert_eq!(e.sweep.arrivals.as_deref(), Some("poisson"));
    assert_eq!(e.sweep.deadline_ms, Some(500));
    assert_eq!(e.variants.len(), 2);
    let eager = &e.variants[1];
    assert_eq!(eager.description.as_deref(), Some("no waiting"));
    // Shared settings apply to every variant; a variant's own override them.
    assert_eq!(eager.setting("backend"), Some("cpu"));
    assert_eq!(eager.setting("batch_timeout_ms"), Some("1"));
    assert_eq!(e.variants[0].setting("batch_timeout_ms"), Some("5"));
    let flags = eager.serve_flags();
    for pair in [
        ["--backend", "cpu"],
        ["--batch-policy", "eager"],
        ["--batch-timeout-ms", "1"],
        ["--group-by-length", "false"],
    ] {
        assert!(flags.windows(2).any(|w| w == pair), "{pair:?} in {flags:?}");
    }
}

#[test]
fn unknown_keys_are_refused_with_file_line_and_key() {
    // At the top level and in the sweep: the TOML reader names them.
    refused(
        &GOOD.replace("description = \"two", "colour = 1\ndescription = \"two"),
        3,
        "colour",
    );
    refused(&GOOD.replace("warmup = 2", "warm_up = 2"), 9, "warm_up");
    // A serve setting that does not exist, shared or per variant.
    let msg = refused(
        &GOOD.replace("backend = \"cpu\"", "backnd = \"cpu\""),
        15,
        "backnd",
    );
    assert!(
        msg.contains("not a `crossbatch-server serve` setting"),
        "{msg}"
    );
    refused(
        &GOOD.replace("group_by_length = false", "group_by_lenght = false"),
        27,
        "group_by_lenght",
    );
}

#[test]
fn bad_values_are_refused_with_file_line_and_key() {
    // serve's own parser judges serve values.
    let msg = refused(
        &GOOD.replace("\"eager\"\nbatch_timeout", "\"sometimes\"\nbatch_timeout"),
        25,
        "batch_policy",
    );
    assert!(msg.contains("sometimes"), "{msg}");
    refused(
        &GOOD.replace("batch_timeout_ms = 1", "batch_timeout_ms = -1"),
        26,
        "batch_timeout_ms",
    );
    refused(
        &GOOD.replace("batch_timeout_ms = 5", "batch_timeout_ms = [5]"),
        16,
        "batch_timeout_ms",
    );
    // The sweep's own checks.
    refused(
        &GOOD.replace("batch = [8, 32]", "batch = [8, 0]"),
        6,
        "sweep.batch",
    );
    refused(
        &GOOD.replace("concurrency = [1, 4]", "concurrency = []"),
        7,
        "sweep.concurrency",
    );
    refused(&GOOD.replace("pairs = 96", "pairs = 0"), 8, "sweep.pairs");
    refused(
        &GOOD.replace("rate = 10.0", "rate = -1.0"),
        10,
        "sweep.rate",
    );
    refused(
        &GOOD.replace("\"poisson\"", "\"bursty\""),
        11,
        "sweep.arrivals",
    );
    // A type the reader cannot take.
    refused(&GOOD.replace("pairs = 96", "pairs = \"many\""), 8, "pairs");
}

#[test]
fn variants_need_unique_safe_names_and_no_runner_settings() {
    let msg = refused(
        &GOOD.replace("name = \"eager\"", "name = \"deadline\""),
        23,
        "variant.name",
    );
    assert!(msg.contains("used twice"), "{msg}");
    refused(
        &GOOD.replace("name = \"eager\"", "name = \"../eager\""),
        23,
        "variant.name",
    );
    refused_at(
        &GOOD.replace("name = \"eager\"\n", ""),
        &[22, 23],
        "variant.name",
    );
    let msg = refused(
        &GOOD.replace("group_by_length = false", "listen = \"0.0.0.0:1\""),
        27,
        "listen",
    );
    assert!(msg.contains("set by the experiment runner"), "{msg}");
    let none = GOOD.split("[[variant]]").next().unwrap().to_string();
    refused(&none, 1, "variant");
}

#[test]
fn every_shipped_experiment_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("experiments/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let e = spec::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                path.file_stem().unwrap().to_string_lossy(),
                e.name,
                "file name = experiment name"
            );
            names.push(e.name);
        }
    }
    names.sort();
    for required in [
        "backends",
        "batch-size",
        "batch-timeout",
        "concurrency",
        "dynamic-batching",
        "max-batch",
        "max-length",
        "padding",
        "queue-stress",
        "tokenizer-workers",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "{required} in {names:?}"
        );
    }
}
