//! The dashboard and the HTML report in a real browser (headless Chromium, installed
//! by `make test`): during a real run the live page shows figures and they change;
//! after it the HTML report, opened from disk, shows the report's numbers. Screenshots
//! land in the test's temp dir (printed) for a person to look at.

mod common;

use common::Rig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Chromium, or a loud line saying the browser tests did not run (a failure where
/// `CROSSBATCH_REQUIRE_BROWSER=1`, as in CI).
fn chromium_or_say() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let msg = "browser tests DID NOT RUN: no chromium (make test installs Debian's chromium)";
    if std::env::var("CROSSBATCH_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("{msg}, and CROSSBATCH_REQUIRE_BROWSER=1");
    }
    eprintln!("{msg}");
    None
}

fn headless(chromium: &Path, extra: &[&str], url: &str) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // At most this long for the page (its script run, its first server-sent
            // event rendered) before the DOM is dumped or the screenshot taken. A
            // virtual-time budget would wait forever on the open event stream.
            "--timeout=3000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

/// The rendered page's DOM.
async fn dom(chromium: &Path, url: &str) -> String {
    let (c, u) = (chromium.to_path_buf(), url.to_string());
    let out = tokio::task::spawn_blocking(move || headless(&c, &["--dump-dom"], &u))
        .await
        .expect("task");
    let html = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        html.contains("<html"),
        "chromium printed no page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    html
}

async fn screenshot(chromium: &Path, url: &str, png: &Path) {
    let (c, u) = (chromium.to_path_buf(), url.to_string());
    let arg = format!("--screenshot={}", png.display());
    tokio::task::spawn_blocking(move || headless(&c, &[&arg, "--window-size=1400,1600"], &u))
        .await
        .expect("task");
    assert!(png.is_file(), "no screenshot at {}", png.display());
    eprintln!("screenshot: {}", png.display());
}

/// The tiles the page rendered: label → value text.
fn tiles(dom: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-tile=\"") {
        let tail = &rest[i + 11..];
        let Some(q) = tail.find('"') else { break };
        let label = tail[..q].to_string();
        let Some(gt) = tail.find('>') else { break };
        let Some(lt) = tail[gt..].find('<') else {
            break;
        };
        out.insert(label, tail[gt + 1..gt + lt].trim().to_string());
        rest = &tail[gt + lt..];
    }
    out
}

fn number(s: &str) -> f64 {
    s.split_whitespace()
        .next()
        .unwrap_or("")
        .replace(',', "")
        .parse()
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_live_page_and_the_html_report_in_a_real_browser() {
    let Some(chromium) = chromium_or_say() else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let mut rig = Rig::collector_expecting("browser", 2).await;
    let url = format!("http://{}/", rig.dash);
    let waiting = dom(&chromium, &url).await;
    assert!(waiting.contains("Waiting for a run"), "{waiting}");

    rig.start_server().await;
    // A driver that sends nothing holds the run between steps: the page is looked at
    // with the run at known points, not after guessed sleeps.
    let mut holder = rig.holder("browser-run", 3).await;
    let driver = rig
        .spawn_coordinated_driver("browser-run", vec![1, 2, 4], 128)
        .await;
    holder.started(0).await;
    let held_at = |n: u64| {
        move |s: &serde_json::Value| {
            s["state"] == "running" && s["tiles"]["pairs_ok"].as_u64() == Some(n)
        }
    };
    rig.wait_snapshot("step 1 whole", held_at(128)).await;

    // During the run: figures on the page, and after the next step larger ones.
    let first = dom(&chromium, &url).await;
    let t1 = tiles(&first);
    assert!(first.contains("badge running"), "the page says running");
    let pairs1 = number(&t1["Pairs done"]);
    assert_eq!(pairs1, 128.0, "{t1:?}");
    assert!(number(&t1["Latency p95"]) > 0.0, "{t1:?}");
    assert!(first.contains("Step "), "the step in progress");
    assert!(
        first.contains("data-chart=\"Latency percentiles\"") && first.contains("<path d=\"M"),
        "charts drawn"
    );
    screenshot(&chromium, &url, &shots.join("live.png")).await;
    holder.release(0).await;
    holder.started(1).await;
    rig.wait_snapshot("step 2 whole", held_at(256)).await;
    let t2 = tiles(&dom(&chromium, &url).await);
    let pairs2 = number(&t2["Pairs done"]);
    assert!(pairs2 > pairs1, "figures change: {pairs1} then {pairs2}");
    assert_eq!(pairs2, 256.0, "{t2:?}");
    drop(holder);

    driver.await.expect("driver");
    let done = rig.wait_done().await;
    let md = PathBuf::from(done["report"].as_str().expect("report"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(md.with_extension("json")).expect("json"))
            .expect("report json");

    // The HTML report from disk: the report's numbers, its tables and plots.
    let file_url = format!("file://{}", md.with_extension("html").display());
    let page = dom(&chromium, &file_url).await;
    let t = tiles(&page);
    let total: u64 = report["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pairs"].as_u64().unwrap())
        .sum();
    assert_eq!(number(&t["Pairs done"]) as u64, total, "{t:?}");
    let p95 = report["configs"][0]["latency_ms"]["p95"].as_f64().unwrap();
    assert!(page.contains("Results Summary") && page.contains("<table>"));
    assert!(page.contains("badge done"));
    assert!(
        page.contains(&format!("{p95:.2}")) || page.contains(&format!("{p95:.1}")),
        "config 1's p95 {p95} on the page"
    );
    screenshot(&chromium, &file_url, &shots.join("report.png")).await;
    rig.stop().await;
}
