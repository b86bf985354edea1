//! A small real experiment (two variants of the stand-in on the CPU backend, over
//! loopback, through the real binaries), then `crossbatch-collector compare` on its
//! two variant reports: configs that match, and configs only one run has.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXPERIMENT: &str = r#"
name = "tiny"
description = "two policies, a few pairs"

[sweep]
batch = [4]
concurrency = [1, 2]
pairs = 24
workload = "synthetic"

[server]
backend = "cpu"
tokenizer_workers = 1

[[variant]]
name = "none"
batch_policy = "none"

[[variant]]
name = "eager"
batch_policy = "eager"
"#;

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_crossbatch-experiment"))
        .parent()
        .expect("bin dir")
        .join(name)
}

fn stdout_path(out: &std::process::Output, prefix: &str) -> PathBuf {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(prefix) || prefix.is_empty())
        .unwrap_or_else(|| panic!("no output line: {text}"));
    PathBuf::from(line.trim_start_matches(prefix).trim())
}

/// `crossbatch-collector compare` on `runs`: the comparison's markdown and stderr.
fn compare(runs: &[PathBuf], name: &str, out: &Path) -> (String, String) {
    let o = Command::new(bin("crossbatch-collector"))
        .arg("compare")
        .args(runs)
        .args(["--name", name, "--out"])
        .arg(out)
        .output()
        .expect("compare");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let md = std::fs::read_to_string(stdout_path(&o, "")).expect("comparison");
    (md, stderr)
}

#[test]
fn two_variants_run_end_to_end_and_compare_side_by_side() {
    for b in [
        "crossbatch-server",
        "crossbatch-driver",
        "crossbatch-collector",
    ] {
        assert!(bin(b).is_file(), "{} is built", bin(b).display());
    }
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("tiny.toml");
    std::fs::write(&file, EXPERIMENT).expect("write experiment");
    let out = Command::new(env!("CARGO_BIN_EXE_crossbatch-experiment"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--model",
            "stand-in",
            "--out",
        ])
        .arg(dir.path().join("reports"))
        .output()
        .expect("run the experiment");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "experiment failed:\n{stderr}");
    assert!(stderr.contains("variant 1/2 `none`"), "{stderr}");
    let md_path = stdout_path(&out, "report: ");
    let md = std::fs::read_to_string(&md_path).expect("experiment report");

    // The seed's shape with the variants side by side.
    let sections = [
        "# tiny",
        "## Variants",
        "## Results Summary",
        "## Variants compared",
        "## Per config",
        "## Notes",
    ];
    let mut at = 0;
    for s in sections {
        let i = md[at..]
            .find(s)
            .unwrap_or_else(|| panic!("{s} in order:\n{md}"));
        at += i;
    }
    assert!(
        md.contains("| Variant | Batch Size | Concurrency | Pairs |"),
        "{md}"
    );
    for variant in ["none", "eager"] {
        for conc in [1, 2] {
            let row = format!("| {variant} | 4 | {conc} | 24 |");
            assert!(md.contains(&row), "{row} in\n{md}");
        }
    }
    assert!(
        md.contains("`--backend cpu --tokenizer-workers 1 --batch-policy none`"),
        "{md}"
    );
    assert!(
        md.contains("| Variant | Best throughput (pairs/s) | vs first |"),
        "{md}"
    );
    assert!(
        md.contains("| none |") && md.contains("| ±0.0% |"),
        "baseline row: {md}"
    );
    assert!(
        md.contains("### Throughput (pairs/s, higher is better)"),
        "{md}"
    );
    assert!(!md.contains("failed"), "{md}");

    // Each variant's own full report sits beside it.
    let exp_dir = md_path.parent().expect("dir");
    let reports: Vec<PathBuf> = ["none", "eager"]
        .iter()
        .map(|v| {
            std::fs::read_dir(exp_dir)
                .expect("dir")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    let n = p.file_name().unwrap().to_string_lossy().into_owned();
                    n.starts_with(&format!("{v}-")) && n.ends_with(".json")
                })
                .unwrap_or_else(|| panic!("{v}'s report JSON in {}", exp_dir.display()))
        })
        .collect();
    let none: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reports[0]).unwrap()).unwrap();
    assert_eq!(none["batch_policy"], "none");
    assert_eq!(none["configs"].as_array().unwrap().len(), 2);
    assert!(none["configs"][0]["inference_ms"]["p50"].as_f64().is_some());

    // compare, matching configs.
    let cmp_dir = dir.path().join("cmp");
    let (cmp, _) = compare(&reports, "policies", &cmp_dir);
    assert!(cmp.contains("# policies"), "{cmp}");
    assert!(cmp.contains("(baseline)"), "{cmp}");
    for conc in [1, 2] {
        assert!(cmp.contains(&format!("| 4 | {conc} |")), "{cmp}");
    }
    assert!(cmp.contains("vs baseline"), "{cmp}");
    assert!(!cmp.contains("Configs not in every run"), "{cmp}");
    let svg = std::fs::read_dir(&cmp_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "svg"))
        .expect("svg");
    assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));

    // compare, configs only one run has: eager's report without its concurrency-2 row.
    let mut eager: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reports[1]).unwrap()).unwrap();
    eager["configs"].as_array_mut().unwrap().remove(1);
    let fewer = dir.path().join("eager-fewer.json");
    std::fs::write(&fewer, serde_json::to_string(&eager).unwrap()).unwrap();
    let (cmp, stderr) = compare(&[reports[0].clone(), fewer], "uneven", &cmp_dir);
    assert!(stderr.contains("not in every run"), "{stderr}");
    assert!(cmp.contains("## Configs not in every run"), "{cmp}");
    let none_label = reports[0]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        cmp.contains(&format!("| 4 | 2 | {none_label} | eager-fewer |")),
        "{cmp}"
    );

    // Bad input: one report, and a file that is not a report.
    let out = Command::new(bin("crossbatch-collector"))
        .args(["compare"])
        .arg(&reports[0])
        .output()
        .expect("compare");
    assert!(!out.status.success());
    let out = Command::new(bin("crossbatch-collector"))
        .arg("compare")
        .arg(&reports[0])
        .arg(&file)
        .output()
        .expect("compare");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a crossbatch report"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
