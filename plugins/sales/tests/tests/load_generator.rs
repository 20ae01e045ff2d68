//! The load generator against the sales system on the local stack: the smoke profile's
//! reconciliation finds every accepted order; a profile
//! whose threshold fails exits non-zero; the HTML report is self-contained.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::path::Path;
use std::time::Duration;

use support::sales::Sales;

/// The smoke profile's latency threshold, which the tests replace.
const LATENCY_THRESHOLD: &str = "below = \"500ms\"";

fn salesflow_load(profile: &Path, target: &str, reports: &Path) -> (bool, String) {
    let profile = profile.display().to_string();
    let metrics = format!("{target}/metrics");
    let ran = support::run_in(
        Path::new(BIN),
        reports,
        &["load", &profile, "--target", target, "--monitor", &metrics],
        &[],
    );
    (ran.ok, ran.both())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_profile_reconciles_every_order_and_a_broken_threshold_fails() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let target = format!("http://{}", host.address());
    let repo = support::repo();
    let reports = tempfile::tempdir().unwrap();

    // The smoke profile, unchanged but for its latency threshold: how fast this shared
    // machine answers is the benchmarks' business, not a test's. What must hold on any
    // machine is the rest: no errors, every accepted order reconciled.
    let smoke = std::fs::read_to_string(repo.join("load/profiles/smoke.toml")).unwrap();
    assert!(
        smoke.contains(LATENCY_THRESHOLD),
        "the smoke profile changed"
    );
    let lenient_path = reports.path().join("smoke.toml");
    std::fs::write(
        &lenient_path,
        smoke.replace(LATENCY_THRESHOLD, "below = \"1h\""),
    )
    .unwrap();
    let (ok, text) = salesflow_load(&lenient_path, &target, reports.path());
    println!("{text}");
    assert!(ok, "smoke failed:\n{text}");
    assert!(
        text.contains("threshold post-order p99 < 1h: passed"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("reconciliation:"))
        .unwrap();
    assert!(line.contains("(lost 0, duplicated 0)"), "{line}");
    assert!(line.contains("carts out of order 0"), "{line}");
    let accepted: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accepted > 100, "{line}");
    assert!(
        text.contains("invalid orders refused") && text.contains("accepted 0;"),
        "{text}"
    );

    // The reports: JSON that parses, and an HTML page with its charts inline.
    let files: Vec<_> = std::fs::read_dir(reports.path().join("load/reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let html = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "html"))
        .unwrap();
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.matches("<svg").count() >= 3, "charts are inline SVG");
    assert!(
        !page.contains("<script src") && !page.contains("href=\"http"),
        "self-contained"
    );
    let json = files
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(report["reconciliation"]["lost_event_store"], 0);
    // `--monitor`: the process's resident memory, sampled each second of the run.
    let memory = report["memory_mib"].as_array().unwrap();
    assert!(memory.len() >= 10, "{memory:?}");
    assert!(
        memory
            .iter()
            .all(|m| m[1].as_f64().is_some_and(|mib| mib > 1.0)),
        "{memory:?}"
    );

    // The same profile with a threshold no system meets fails, and says which.
    let strict = smoke.replace(LATENCY_THRESHOLD, "below = \"0.01ms\"");
    let strict_path = reports.path().join("strict.toml");
    std::fs::write(&strict_path, strict).unwrap();
    let (ok, text) = salesflow_load(&strict_path, &target, reports.path());
    assert!(!ok, "a broken threshold must fail the run:\n{text}");
    assert!(
        text.contains("threshold post-order p99 < 0.01ms: FAILED"),
        "{text}"
    );

    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}

/// tokio panics on a `TOKIO_WORKER_THREADS` that is not a whole number of at least 1;
/// `salesflow load` names the variable instead and sends nothing.
#[test]
fn a_bad_tokio_worker_threads_is_named_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../load/profiles/smoke.toml");
    let profile = profile.display().to_string();
    for bad in ["0", "two", ""] {
        let ran = support::run_in(
            Path::new(BIN),
            dir.path(),
            // Nothing listens on the target: a run that started would fail differently.
            &["load", &profile, "--target", "http://127.0.0.1:9"],
            &[("TOKIO_WORKER_THREADS", bad)],
        );
        let text = ran.both();
        assert!(!ran.ok, "TOKIO_WORKER_THREADS={bad:?} accepted:\n{text}");
        assert!(
            text.contains(&format!(
                "TOKIO_WORKER_THREADS={bad:?} is not a whole number of at least 1"
            )),
            "{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}
