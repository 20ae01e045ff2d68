//! Hot reload of the sales system under load (`salesflow run --watch`): twenty edits of
//! pipeline.toml — Kafka fetch tuning, the projections' batch size, a stage added to and
//! removed from the domain chain, now and then the Command API producer's linger — each
//! applied while the load generator posts orders; then every accepted order is reconciled
//! against the event store and the read models, as the fault suite does. The Query API's
//! pipeline, never edited, never restarts; an invalid edit is refused and the running
//! topology goes on; SIGHUP reloads too; a pipeline added and then removed starts and stops
//! alone.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use salesflow_testkit as support;
use support::Host;
use support::sales::Sales;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

/// Lines of the repository's pipeline.toml that the edits change.
const FETCH_WAIT: &str = "fetch_wait_max_ms = 50";
const BATCH: &str = "max_events = 500";
const LINGER: &str = "linger_ms = 1";
const DOMAIN_SINK: &str = "inputs = [\"carts\"]\ntopic = \"cart-events\"";
const OPENAPI: &str = "openapi = \"schemas/openapi.json\"";

/// Orders and batches at a steady rate until interrupted, then reconciliation.
const PROFILE: &str = r#"
name = "reload"
description = "Orders at a steady rate while the configuration is reloaded; ended by SIGINT."
seed = 7

[data]
carts = 300
zipf_exponent = 1.1
batch_size = 10
duplicate_share = 0.05

[[scenarios]]
name = "post-order"
kind = "post-order"
weight = 80

[[scenarios]]
name = "post-batch"
kind = "post-batch"
weight = 20

[[steps]]
kind = "inject"
rate = 30
duration = "10m"

[reconcile]
enabled = true
settle_timeout = "60s"
"#;

/// The `n`-th version of the configuration (0: the repository's).
fn edit(original: &str, n: u32) -> String {
    let mut text = original
        .replace(FETCH_WAIT, &format!("fetch_wait_max_ms = {}", 50 + n))
        .replace(BATCH, &format!("max_events = {}", 500 - 10 * n));
    // The Command API's linger: changed at every fifth edit.
    text = text.replace(LINGER, &format!("linger_ms = {}", 1 + n / 5));
    if !n.is_multiple_of(2) {
        // A stage into the domain chain: carts -> pace -> cart-events.
        text = text.replace(DOMAIN_SINK, "inputs = [\"pace\"]\ntopic = \"cart-events\"");
        text.push_str(
            "\n[pipelines.domain.stages.pace]\ntype = \"batch\"\ninputs = [\"carts\"]\n\
             max_events = 200\nmax_wait = \"5ms\"\n",
        );
    }
    text
}

/// Replaces the file as editors do: a new file renamed over the old.
fn save(path: &Path, text: &str) {
    let new = path.with_extension("toml.new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// One series' value in an exposition, a count (0 when absent).
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // A count.
            let count = v.round() as u64;
            count
        })
}

/// The host's `/metrics`; if it does not answer, the end of its log says why.
async fn metrics(client: &reqwest::Client, base: &str) -> String {
    match client.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap(),
        Err(e) => {
            let log = LOG
                .get()
                .map(|l| l.lock().unwrap().clone())
                .unwrap_or_default();
            let tail: Vec<&str> = log
                .iter()
                .rev()
                .take(150)
                .rev()
                .map(String::as_str)
                .collect();
            panic!(
                "{base}/metrics: {e}\nthe host's log ends:\n{}",
                tail.join("\n")
            )
        }
    }
}

/// The host's log lines, for failure reports.
static LOG: std::sync::OnceLock<Arc<Mutex<Vec<String>>>> = std::sync::OnceLock::new();

/// Waits (up to two minutes) until `series` reaches `at_least`.
async fn wait_for_series(client: &reqwest::Client, base: &str, series: &str, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = metrics(client, base).await;
        if value(&text, series) >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn starts(metrics: &str, pipeline: &str) -> u64 {
    value(
        metrics,
        &format!("salesflow_pipeline_starts_total{{pipeline=\"{pipeline}\"}}"),
    )
}

const APPLIED: &str = "salesflow_config_reloads_total{result=\"applied\"}";
const INVALID: &str = "salesflow_config_reloads_total{result=\"invalid\"}";
const FAILED: &str = "salesflow_config_reloads_total{result=\"failed\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_and_duplicate_nothing_and_an_invalid_edit_changes_nothing()
{
    let sales = Sales::new(BIN).await;
    let repo = support::repo();
    let original = std::fs::read_to_string(Sales::config()).unwrap();
    for line in [FETCH_WAIT, BATCH, LINGER, DOMAIN_SINK, OPENAPI] {
        assert!(
            original.contains(line),
            "pipeline.toml changed: no {line:?}"
        );
    }
    let original = original.replace(
        OPENAPI,
        &format!(
            "openapi = \"{}\"",
            repo.join("schemas/openapi.json").display()
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    save(&config, &edit(&original, 0));
    let mut args = sales.overrides();
    args.extend(["run".to_owned(), "--watch".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start(Path::new(BIN), &config, &args);
    let _ = LOG.set(Arc::clone(&host.lines));
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;

    // The load, from its own folder (its reports go there), until interrupted.
    let reports = tempfile::tempdir().unwrap();
    let profile = reports.path().join("reload.toml");
    std::fs::write(&profile, PROFILE).unwrap();
    let mut load = Command::new(BIN)
        .current_dir(reports.path())
        .args(["load", &profile.display().to_string(), "--target", &base])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let output = Arc::clone(&output);
        let stdout = load.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                output.lock().unwrap().push(line);
            }
        })
    };
    let accepted_so_far = |client: reqwest::Client, base: String| async move {
        value(
            &metrics(&client, &base).await,
            "salesflow_http_requests_total{route=\"/orders\",method=\"POST\",status=\"202\"}",
        )
    };

    for n in 1..=20 {
        // Orders are flowing before each edit.
        let before = accepted_so_far(client.clone(), base.clone()).await;
        wait_for_series(
            &client,
            &base,
            "salesflow_http_requests_total{route=\"/orders\",method=\"POST\",status=\"202\"}",
            before + 5,
        )
        .await;
        save(&config, &edit(&original, n));
        wait_for_series(&client, &base, APPLIED, u64::from(n)).await;
    }
    let after_edits = metrics(&client, &base).await;
    assert_eq!(value(&after_edits, APPLIED), 20, "{after_edits}");
    assert_eq!(value(&after_edits, INVALID), 0);
    assert_eq!(value(&after_edits, FAILED), 0);
    // Only what changed restarted: the domain and projections at every edit, the Command
    // API at the four linger edits, the Query API never.
    assert_eq!(starts(&after_edits, "domain"), 21, "{after_edits}");
    assert_eq!(starts(&after_edits, "projections"), 21);
    assert_eq!(starts(&after_edits, "command-api"), 5);
    assert_eq!(starts(&after_edits, "query-api"), 1);

    // An invalid edit changes nothing: refused, said, counted, and everything runs on.
    let broken = edit(&original, 20).replace("max_events = 300", "max_events = \"many\"");
    assert_ne!(broken, edit(&original, 20));
    save(&config, &broken);
    wait_for_series(&client, &base, INVALID, 1).await;
    let after_invalid = metrics(&client, &base).await;
    assert_eq!(
        value(&after_invalid, "salesflow_config_last_reload_successful"),
        0
    );
    for pipeline in ["command-api", "domain", "projections", "query-api"] {
        assert_eq!(
            starts(&after_invalid, pipeline),
            starts(&after_edits, pipeline),
            "{pipeline} restarted on an invalid edit"
        );
    }
    let log = host.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(log.contains("max_events"), "the problem is named:\n{log}");
    let before = accepted_so_far(client.clone(), base.clone()).await;
    wait_for_series(
        &client,
        &base,
        "salesflow_http_requests_total{route=\"/orders\",method=\"POST\",status=\"202\"}",
        before + 5,
    )
    .await;

    // Put right, and then SIGHUP: both reload, neither restarts anything (nothing changed).
    save(&config, &edit(&original, 20));
    wait_for_series(&client, &base, APPLIED, 21).await;
    host.signal("HUP");
    wait_for_series(&client, &base, APPLIED, 22).await;
    let after_hup = metrics(&client, &base).await;
    assert_eq!(
        value(&after_hup, "salesflow_config_last_reload_successful"),
        1
    );
    assert_eq!(starts(&after_hup, "domain"), 21, "{after_hup}");

    // The load ends; every order it had accepted is in the stores, once.
    let status = Command::new("kill")
        .args(["-INT", &load.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = tokio::task::spawn_blocking(move || load.wait())
        .await
        .unwrap()
        .unwrap();
    reader.join().unwrap();
    let text = output.lock().unwrap().join("\n");
    println!("{text}");
    assert!(!ended.success(), "an interrupted run is not a pass");
    assert!(text.contains("interrupted (SIGINT)"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("reconciliation:"))
        .unwrap_or_else(|| panic!("no reconciliation:\n{text}"));
    assert!(line.contains("(lost 0, duplicated 0)"), "{line}");
    assert!(line.contains("carts out of order 0"), "{line}");
    let accepted: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accepted > 500, "{line}");

    // A pipeline added, then removed: it starts and stops alone, and leaves no series
    // behind that an alert would read as down.
    let spare = format!(
        "\n[pipelines.spare.sources.in]\ntype = \"http\"\npath = \"/spare\"\nbody = \"single\"\n\n\
         [pipelines.spare.sinks.out]\ntype = \"kafka\"\ninputs = [\"in\"]\ntopic = \"{}\"\n",
        sales.orders_dlq
    );
    save(&config, &(edit(&original, 20) + &spare));
    wait_for_series(&client, &base, APPLIED, 23).await;
    let added = metrics(&client, &base).await;
    assert_eq!(starts(&added, "spare"), 1, "{added}");
    assert_eq!(
        value(&added, "salesflow_pipeline_running{pipeline=\"spare\"}"),
        1
    );
    assert_eq!(starts(&added, "domain"), 21, "nothing else restarted");
    save(&config, &edit(&original, 20));
    wait_for_series(&client, &base, APPLIED, 24).await;
    let removed = metrics(&client, &base).await;
    assert!(
        !removed.contains("salesflow_pipeline_running{pipeline=\"spare\"}"),
        "{removed}"
    );
    assert_eq!(starts(&removed, "query-api"), 1);
    assert_eq!(
        value(&removed, "salesflow_config_last_reload_successful"),
        1
    );

    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}
