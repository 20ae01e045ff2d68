//! The host on the real Kafka of the local stack: a Kafka -> batch -> Kafka pipeline,
//! changed by editing TOML only, run as one process or split across two, killed with
//! SIGKILL mid-stream without losing a message, and extended by a run-time plugin.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow");

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Host, Record, committed_and_end, create_topic, produce, read_all, unique};

fn relay(input: &str, output: &str, group: &str, middle: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{group}"
max_batch_records = 200
commit_interval = "200ms"
{middle}
[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["{last}"]
topic = "{output}"
lanes = 2
"#,
        bootstrap = support::bootstrap(),
        last = if middle.contains("stages.filter") {
            "filter"
        } else {
            "batch"
        },
    )
}

const BATCH: &str = r#"
[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]
max_events = 500
max_wait = "20ms"
lanes = 2
"#;

/// Waits (up to 30 s) until `group` has committed every record of `topic`.
fn wait_all_committed(topic: &str, group: &str) {
    support::wait_for(
        "the source to commit everything",
        Duration::from_secs(30),
        || {
            let (committed, end) = committed_and_end(topic, group);
            committed == end
        },
    );
}

/// The process's `/metrics` text.
async fn metrics_of(host: &Host) -> String {
    reqwest::get(format!("http://{}/metrics", host.address()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn numbers(records: &[Record]) -> Vec<i64> {
    records
        .iter()
        .map(|r| r.payload["n"].as_i64().unwrap())
        .collect()
}

/// Every key's records are in the order they were produced (by chunk, then number).
fn assert_key_order(records: &[Record]) {
    let mut last: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for list in by_partition.values_mut() {
        list.sort_by_key(|r| r.offset);
        for r in list.iter() {
            let n = (
                r.payload["chunk"].as_i64().unwrap_or(0),
                r.payload["n"].as_i64().unwrap(),
            );
            if let Some(previous) = last.insert(r.key.clone(), n) {
                assert!(previous < n, "key {}: {n:?} after {previous:?}", r.key);
            }
        }
    }
}

/// What the kernel says of a process's transparent huge pages (`THP_enabled` in
/// `/proc/<pid>/status`: 0 when the process turned them off).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map_or_else(
            || panic!("no THP_enabled line in /proc/{pid}/status:\n{status}"),
            |v| v.trim().to_owned(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_its_heap_off_huge_pages_unless_mimalloc_is_told_otherwise() {
    let (input, output) = (unique("thp-in"), unique("thp-out"));
    create_topic(&input, 1).await;
    create_topic(&output, 1).await;
    let (_dir, config) = support::config(&relay(&input, &output, &unique("thp"), BATCH));
    let bin = std::path::Path::new(BIN);
    // By default the process turns huge pages off for itself before anything runs.
    let plain = Host::start(bin, &config, &["run"]);
    plain.address();
    assert_eq!(thp_enabled(plain.pid()), "0", "{}", plain.log());
    // With mimalloc's own variable set, the choice is left to mimalloc and the system.
    let told = Host::start_with_env(bin, &config, &["run"], &[("MIMALLOC_ALLOW_THP", "1")]);
    told.address();
    assert_eq!(thp_enabled(told.pid()), "1", "{}", told.log());
    for host in [plain, told] {
        let (status, log) = host.stop(Duration::from_secs(30));
        assert!(status.success(), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_everything_in_key_order_and_commits_after_the_sink() {
    let (input, output, group) = (unique("relay-in"), unique("relay-out"), unique("relay"));
    create_topic(&input, 4).await;
    create_topic(&output, 4).await;
    produce(&input, 3000, 30, |_| String::new()).await;

    // Two producers under the sink's two lanes: a key's partition keeps one lane, so
    // one producer, and its order.
    let config = relay(&input, &output, &group, BATCH).replace(
        &format!("topic = \"{output}\"\nlanes = 2\n"),
        &format!("topic = \"{output}\"\nlanes = 2\nproducers = 2\n"),
    );
    assert!(config.contains("producers = 2"), "{config}");
    let (_dir, config) = support::config(&config);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let records = tokio::task::spawn_blocking({
        let output = output.clone();
        move || read_all(&output, Duration::from_secs(60), |r| r.len() >= 3000)
    })
    .await
    .unwrap();
    // Each idempotent producer asked for its id once; both are counted (from their
    // statistics, which come every interval).
    let wanted = "salesflow_kafka_requests_total{pipeline=\"relay\",component=\"out\",request=\"InitProducerId\"} 2\n";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = metrics_of(&host).await;
        if metrics.contains(wanted) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted} in {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");

    let got: BTreeSet<i64> = numbers(&records).into_iter().collect();
    assert_eq!(got.len(), 3000, "every message once");
    assert_eq!(records.len(), 3000, "no duplicates in a clean run");
    assert_key_order(&records);
    for r in &records {
        assert_eq!(
            r.key,
            r.payload["key"].as_str().unwrap(),
            "keys travel with the message"
        );
    }
    // Everything was acknowledged, so everything is committed.
    let (committed, end) = committed_and_end(&input, &group);
    assert_eq!(committed, end);
    support::delete_topics(&[&input, &output]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_changes_by_editing_only_toml() {
    let plugins = support::build_example_plugin(&[]);
    let (input, output) = (unique("edit-in"), unique("edit-out"));
    create_topic(&input, 2).await;
    create_topic(&output, 2).await;
    produce(&input, 400, 8, |i| {
        if i % 4 == 0 {
            ",\"status\":\"test\"".into()
        } else {
            ",\"status\":\"live\"".into()
        }
    })
    .await;

    // First as a plain relay: everything arrives.
    let (_dir, config) = support::config(&relay(&input, &output, &unique("edit-a"), BATCH));
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let first = read_all(&output, Duration::from_secs(60), |r| r.len() >= 400);
    assert!(host.stop(Duration::from_secs(30)).0.success());
    assert_eq!(first.len(), 400);

    // Then, by editing the TOML only, with the run-time filter plugin between batch and
    // sink: the same binary drops the test orders and stamps the rest.
    let filtered_output = unique("edit-filtered");
    create_topic(&filtered_output, 2).await;
    let middle = format!(
        "{BATCH}\n[pipelines.relay.stages.filter]\ntype = \"example-filter\"\ninputs = [\"batch\"]\n\
         drop_field = \"status\"\ndrop_value = \"test\"\nheader = \"filtered-by\"\n"
    );
    let text = format!(
        "[plugins]\ndir = \"{}\"\n{}",
        plugins.path().display(),
        relay(&input, &filtered_output, &unique("edit-b"), &middle)
    );
    let (_dir2, config2) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config2, &["run"]);
    let second = read_all(&filtered_output, Duration::from_secs(60), |r| {
        r.len() >= 300
    });
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(
        log.contains("example-filter"),
        "the plugin was loaded:\n{log}"
    );
    assert_eq!(second.len(), 300, "a quarter were test orders");
    assert!(second.iter().all(|r| r.payload["status"] == "live"));
    assert!(
        second
            .iter()
            .all(|r| r.headers.get("filtered-by").map(String::as_str) == Some("example-filter"))
    );
    assert_key_order(&second);
    support::delete_topics(&[&input, &output, &filtered_output]).await;
}

fn two_stage(input: &str, middle: &str, output: &str, tag: &str) -> String {
    format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.first.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "first-{tag}"

[pipelines.first.stages.batch]
type = "batch"
inputs = ["in"]

[pipelines.first.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "{middle}"

[pipelines.second.sources.in]
type = "kafka"
topics = ["{middle}"]
group_id = "second-{tag}"

[pipelines.second.sinks.out]
type = "kafka"
inputs = ["in"]
topic = "{output}"
"#,
        bootstrap = support::bootstrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_topology_runs_in_one_process_or_two() {
    for split in [false, true] {
        let tag = unique(if split { "split" } else { "joined" });
        let (input, middle, output) = (
            format!("{tag}-in"),
            format!("{tag}-mid"),
            format!("{tag}-out"),
        );
        for t in [&input, &middle, &output] {
            create_topic(t, 3).await;
        }
        produce(&input, 1500, 15, |_| String::new()).await;
        let (_dir, config) = support::config(&two_stage(&input, &middle, &output, &tag));
        let hosts = if split {
            vec![
                // Split, each process on one worker thread: the deployment the
                // README suggests for pipelines that mostly wait on the servers.
                Host::start(
                    std::path::Path::new(BIN),
                    &config,
                    &[
                        "--set",
                        "runtime.worker_threads=1",
                        "run",
                        "--pipeline",
                        "first",
                    ],
                ),
                Host::start(
                    std::path::Path::new(BIN),
                    &config,
                    &[
                        "--set",
                        "runtime.worker_threads=1",
                        "run",
                        "--pipeline",
                        "second",
                    ],
                ),
            ]
        } else {
            vec![Host::start(std::path::Path::new(BIN), &config, &["run"])]
        };
        let records = read_all(&output, Duration::from_secs(90), |r| r.len() >= 1500);
        let workers = if split {
            1
        } else {
            std::thread::available_parallelism().unwrap().get()
        };
        for host in &hosts {
            let metrics = metrics_of(host).await;
            assert!(
                metrics.contains(&format!("\nsalesflow_runtime_worker_threads {workers}\n")),
                "split = {split}: not {workers} worker thread(s):\n{metrics}"
            );
        }
        let mut logs = String::new();
        for host in hosts {
            let (status, log) = host.stop(Duration::from_secs(30));
            assert!(status.success(), "{log}");
            logs.push_str(&log);
        }
        let got: BTreeSet<i64> = numbers(&records).into_iter().collect();
        assert_eq!(got.len(), 1500, "split = {split}; the hosts said:\n{logs}");
        assert_key_order(&records);
        support::delete_topics(&[&input, &middle, &output]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing() {
    const PER_CHUNK: usize = 1000;
    let (input, output, group) = (unique("kill-in"), unique("kill-out"), unique("kill"));
    create_topic(&input, 4).await;
    create_topic(&output, 4).await;
    let (_dir, config) = support::config(&relay(&input, &output, &group, BATCH));

    // A backlog, and more input arriving while the host is killed and restarted.
    for chunk in 0..20 {
        produce(&input, PER_CHUNK, 50, move |i| {
            format!(",\"chunk\":{chunk},\"i\":{i}")
        })
        .await;
    }
    // More input keeps arriving, a chunk every 300 ms, until the restart is done.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let input = input.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut chunk = 20;
            while !stop.load(Ordering::SeqCst) {
                produce(&input, PER_CHUNK, 50, move |i| {
                    format!(",\"chunk\":{chunk},\"i\":{i}")
                })
                .await;
                chunk += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            chunk
        })
    };
    let slow = [
        "run",
        "--set",
        "pipelines.relay.sources.in.max_batch_records=50",
        "--set",
        "pipelines.relay.stages.batch.max_events=50",
        "--set",
        "pipelines.relay.sinks.out.linger_ms=100",
        "--set",
        "pipelines.relay.sinks.out.concurrency=1",
    ];
    let host = Host::start(std::path::Path::new(BIN), &config, &slow);
    let seen = read_all(&output, Duration::from_secs(60), |r| r.len() >= 3000);
    let killed_at = seen.len();
    assert!(
        killed_at >= 3000,
        "the slowed relay made no progress:\n{}",
        host.log()
    );
    let (committed_at_kill, _) = committed_and_end(&input, &group);
    let log = host.kill();
    assert!(
        !producer.is_finished(),
        "killed mid-stream, while input was still arriving"
    );
    let committed_at_kill: i64 = committed_at_kill.values().filter(|o| **o > 0).sum();
    assert!(
        committed_at_kill < 20_000,
        "the backlog was not yet through when killed ({committed_at_kill} committed)"
    );

    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    stop.store(true, Ordering::SeqCst);
    let chunks = producer.await.unwrap();
    // Every input message, identified by (chunk, i), reaches the output.
    let per_chunk = i64::try_from(PER_CHUNK).unwrap();
    let expected: BTreeSet<(i64, i64)> = (0..chunks)
        .flat_map(|c| (0..per_chunk).map(move |i| (c, i)))
        .collect();
    let ids = |records: &[Record]| -> BTreeSet<(i64, i64)> {
        records
            .iter()
            .map(|r| {
                (
                    r.payload["chunk"].as_i64().unwrap(),
                    r.payload["i"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let records = read_all(&output, Duration::from_secs(120), |r| {
        ids(r).len() >= expected.len()
    });
    let (status, log2) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log2}");
    let got = ids(&records);
    let lost: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(
        lost.is_empty(),
        "lost {} messages, e.g. {lost:?}\nfirst run:\n{log}",
        expected.len() - got.len()
    );
    let duplicates = records.len() - got.len();
    println!(
        "killed after {killed_at} outputs ({committed_at_kill} input offsets committed); \
         {} in, {} out, {duplicates} redelivered",
        expected.len(),
        records.len()
    );
    assert_key_order(&dedup(&records));
    let (committed, end) = committed_and_end(&input, &group);
    assert_eq!(committed, end, "after a clean stop everything is committed");
    support::delete_topics(&[&input, &output]).await;
}

/// The first copy of each message, for order checks across a redelivery.
fn dedup(records: &[Record]) -> Vec<Record> {
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for list in by_partition.values_mut() {
        list.sort_by_key(|r| r.offset);
        for r in list.iter() {
            if seen.insert((r.payload["chunk"].as_i64(), r.payload["i"].as_i64())) {
                out.push((*r).clone());
            }
        }
    }
    out
}

/// `salesflow check` with the example plugin built with `feature`: it must fail; its
/// stderr.
fn check_refuses_plugin_built_with(feature: &str) -> String {
    let plugins = support::build_example_plugin(&[feature]);
    let text = format!(
        "[plugins]\ndir = \"{}\"\n{}",
        plugins.path().display(),
        relay("a", "b", "g", BATCH)
    );
    let (_dir, config) = support::config(&text);
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_plugin_of_another_abi_version_is_refused() {
    let (major, minor) = (
        salesflow_plugin_abi::ABI_VERSION,
        salesflow_plugin_abi::ABI_MINOR,
    );
    let stderr = check_refuses_plugin_built_with("wrong-abi");
    let expected = format!(
        "built for plugin ABI version {}.0, but this host speaks version {major}.{minor}",
        major + 1
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("plugins.dir"), "{stderr}");

    // A newer minor version than the host's is refused too, saying so.
    let stderr = check_refuses_plugin_built_with("newer-minor");
    let expected = format!(
        "built for plugin ABI version {major}.{}, newer than this host's {major}.{minor}",
        minor + 1
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_plugin_comes_back_as_an_error() {
    let plugins = support::build_example_plugin(&[]);
    let output = unique("panic-out");
    create_topic(&output, 1).await;
    let text = format!(
        r#"
[plugins]
dir = "{dir}"

[pipelines.api.sources.in]
type = "http"
path = "/events"

[pipelines.api.stages.filter]
type = "example-filter"
inputs = ["in"]
drop_field = "status"
drop_value = "test"
panic_on = "boom"

[pipelines.api.sinks.out]
type = "kafka"
inputs = ["filter"]
bootstrap_servers = "{bootstrap}"
topic = "{output}"
"#,
        dir = plugins.path().display(),
        bootstrap = support::bootstrap()
    );
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let url = format!("http://{}/events", host.address());
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let response = post(r#"{"say":"boom"}"#).await.unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("panicked") && body.contains("asked to panic"),
        "{body}"
    );

    // The host is still serving, and the plugin still works.
    let response = post(r#"{"say":"hello"}"#).await.unwrap();
    assert_eq!(response.status(), 202);
    let records = read_all(&output, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload["say"], "hello");
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&output]).await;
}

/// A Kafka -> Kafka pipeline without stages: `sink` adds keys to the sink's table,
/// `more` adds tables.
fn straight(input: &str, output: &str, group: &str, sink: &str, more: &str) -> String {
    format!(
        r#"
[pipelines.relay.sources.in]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topics = ["{input}"]
group_id = "{group}"
commit_interval = "200ms"

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["in"]
bootstrap_servers = "{bootstrap}"
topic = "{output}"
{sink}
{more}
"#,
        bootstrap = support::bootstrap()
    )
}

/// Records Kafka can never take (larger than the producer allows) become dead letters
/// with the reason; the rest of their batches is written, and the source moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_kafka_refuses_for_good_become_dead_letters_and_the_rest_flows() {
    let (input, output, dead, group) = (
        unique("refuse-in"),
        unique("refuse-out"),
        unique("refuse-dlq"),
        unique("refuse"),
    );
    create_topic(&input, 2).await;
    create_topic(&output, 2).await;
    create_topic(&dead, 1).await;
    let big = "x".repeat(5000);
    produce(&input, 200, 10, |i| {
        if i % 10 == 3 {
            format!(",\"pad\":\"{big}\"")
        } else {
            String::new()
        }
    })
    .await;
    let text = straight(
        &input,
        &output,
        &group,
        r#"properties = { "message.max.bytes" = "3000" }"#,
        &format!(
            "[pipelines.relay.sinks.dead]\ntype = \"kafka\"\ninputs = [\"out.failed\"]\nbootstrap_servers = \"{}\"\ntopic = \"{dead}\"\n",
            support::bootstrap()
        ),
    );
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let letters = tokio::task::spawn_blocking({
        let dead = dead.clone();
        move || read_all(&dead, Duration::from_secs(60), |r| r.len() >= 20)
    })
    .await
    .unwrap();
    let written = tokio::task::spawn_blocking({
        let output = output.clone();
        move || read_all(&output, Duration::from_secs(60), |r| r.len() >= 180)
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 20, "the 20 large records");
    for letter in &letters {
        assert_eq!(letter.payload["n"].as_i64().unwrap() % 10, 3);
        let why = &letter.headers["salesflow.error"];
        assert!(why.contains("too large"), "{why}");
        assert_eq!(letter.headers["salesflow.source.topic"], input);
    }
    let small: BTreeSet<i64> = numbers(&written).into_iter().collect();
    assert_eq!(small.len(), 180);
    assert!(small.iter().all(|n| n % 10 != 3));
    wait_all_committed(&input, &group);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&input, &output, &dead]).await;
}

/// A sink that keeps failing (its topic does not exist yet) does not stop the process:
/// the batch goes back to its partition, which reads it again after a backoff; once the
/// topic exists, everything arrives and is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_is_read_again_later_and_the_process_stays_up() {
    let (input, output, group) = (unique("retry-in"), unique("retry-out"), unique("retry"));
    create_topic(&input, 1).await;
    produce(&input, 100, 5, |_| String::new()).await;
    let text = straight(&input, &output, &group, "delivery_timeout_ms = 1000", "");
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    support::wait_for(
        "a failed batch to be read again",
        Duration::from_secs(60),
        || {
            host.log()
                .contains("reading the partition again from it after a backoff")
        },
    );
    support::wait_for("a second attempt", Duration::from_secs(60), || {
        host.log()
            .matches("reading the partition again from it after a backoff")
            .count()
            >= 2
    });
    create_topic(&output, 1).await;
    let records = tokio::task::spawn_blocking({
        let output = output.clone();
        move || {
            read_all(&output, Duration::from_secs(90), |r| {
                numbers(r).into_iter().collect::<BTreeSet<_>>().len() >= 100
            })
        }
    })
    .await
    .unwrap();
    let got: BTreeSet<i64> = numbers(&records).into_iter().collect();
    assert_eq!(got.len(), 100, "every record once the topic exists");
    wait_all_committed(&input, &group);
    let metrics = metrics_of(&host).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("salesflow_kafka_redeliveries_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&input, &output]).await;
}

/// A source kept out of its group while the coordinator answers (here: another member
/// holds the group with an assignor salesflow does not speak) is declared stalled after
/// `group_stall_timeout`: it replaces its consumer, says why, and counts it. Once the
/// group can be joined, the replacement reads everything, and commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_kept_out_of_its_group_is_replaced_and_reads_everything_once_it_can_join() {
    let (input, output, group) = (unique("stall-in"), unique("stall-out"), unique("stall"));
    create_topic(&input, 2).await;
    create_topic(&output, 2).await;
    produce(&input, 100, 10, |_| String::new()).await;
    let holder = {
        let (group, input) = (group.clone(), input.clone());
        tokio::task::spawn_blocking(move || support::GroupHolder::join(&group, &input))
            .await
            .unwrap()
    };
    let text = straight(&input, &output, &group, "", "").replace(
        "commit_interval = \"200ms\"",
        "commit_interval = \"200ms\"\nstatistics_interval_ms = 200\ngroup_stall_timeout = \"3s\"",
    );
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    support::wait_for(
        "the stalled consumer to be replaced twice",
        Duration::from_secs(60),
        || host.log().matches("replacing the stalled consumer").count() >= 2,
    );
    let log = host.log();
    assert!(
        log.contains("out of its group for") && log.contains("group_stall_timeout = 3 s"),
        "the reason names the state and the limit: {log}"
    );
    let metrics = metrics_of(&host).await;
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("salesflow_kafka_consumer_replacements_total") && !l.ends_with(" 0")
        }),
        "{metrics}"
    );
    // Nothing was read while the member was outside.
    let (committed, _) = committed_and_end(&input, &group);
    assert!(committed.values().all(|&c| c < 0), "{committed:?}");
    tokio::task::spawn_blocking(move || drop(holder))
        .await
        .unwrap();

    let records = tokio::task::spawn_blocking({
        let output = output.clone();
        move || read_all(&output, Duration::from_secs(90), |r| r.len() >= 100)
    })
    .await
    .unwrap();
    let got: BTreeSet<i64> = numbers(&records).into_iter().collect();
    assert_eq!(got.len(), 100, "every record once the group can be joined");
    assert_eq!(records.len(), 100, "nothing twice");
    assert_key_order(&records);
    wait_all_committed(&input, &group);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&input, &output]).await;
}

/// `/metrics` is a valid exposition although several components register the same
/// metrics (two HTTP sources, two Kafka sinks): `promtool check metrics` parses it, and
/// its only remarks are the `_total` samples of OpenMetrics counters, whose help is on the
/// family name (`promtool` reads the older text format).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_repeated_components_are_one_family_each() {
    let (one, two) = (unique("expo-one"), unique("expo-two"));
    create_topic(&one, 1).await;
    create_topic(&two, 1).await;
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.a.sources.one]
type = "http"
path = "/one"
body = "single"

[pipelines.a.sources.two]
type = "http"
path = "/two"
body = "single"

[pipelines.a.sinks.k1]
type = "kafka"
inputs = ["one"]
topic = "{one}"

[pipelines.a.sinks.k2]
type = "kafka"
inputs = ["two"]
topic = "{two}"
"#,
        bootstrap = support::bootstrap()
    );
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let client = reqwest::Client::new();
    support::ready(&client, &format!("http://{}", host.address())).await;
    for path in ["one", "two"] {
        let status = client
            .post(format!("http://{}/{path}", host.address()))
            .json(&serde_json::json!({ "n": 1 }))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202, "{path}");
    }
    let metrics = metrics_of(&host).await;
    assert_eq!(
        metrics
            .matches("# HELP salesflow_kafka_produced_messages ")
            .count(),
        1,
        "{metrics}"
    );
    support::assert_promtool_accepts(&metrics);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&one, &two]).await;
}

/// Run-time plugins beyond a stateless stage, on the real Kafka: a stateless stage that
/// panics on every tenth record sends exactly those to the dead letters and everything
/// else through, once; a timer-driven window holding events across batches (its input
/// committed only once its summaries are out) feeding a Kafka sink and a run-time file
/// sink; the same window panicking on every tenth record while it holds events still
/// dead-letters each of them once and reads its input to the end. The plugins' own
/// metrics show in `/metrics` and their health in `/health/ready`: a file sink that
/// cannot write (`/dev/full`) says why there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_time_stages_and_sinks_hold_emit_on_timers_and_dead_letter_what_they_panic_on() {
    const COUNT: usize = 600;
    let filter = support::build_example_plugin(&[]);
    let window = support::build_plugin("salesflow-example-window", &[]);
    let plugins = tempfile::tempdir().unwrap();
    for dir in [filter.path(), window.path()] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, plugins.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let input = unique("rt-in");
    let [out1, dead1, out2, out3, dead3] =
        ["rt-out1", "rt-dead1", "rt-out2", "rt-out3", "rt-dead3"].map(unique);
    create_topic(&input, 3).await;
    for topic in [&out1, &dead1, &out2, &out3, &dead3] {
        create_topic(topic, 1).await;
    }
    produce(&input, COUNT, 6, |_| String::new()).await;
    let files = tempfile::tempdir().unwrap();
    let lines = files.path().join("summaries.jsonl");
    let tag = unique("rt");
    let source = |pipeline: &str| {
        format!(
            "[pipelines.{pipeline}.sources.in]\ntype = \"kafka\"\ntopics = [\"{input}\"]\n\
             group_id = \"{tag}-{pipeline}\"\nmax_batch_records = 50\ncommit_interval = \"200ms\"\n"
        )
    };
    let sink = |pipeline: &str, name: &str, from: &str, topic: &str| {
        format!(
            "[pipelines.{pipeline}.sinks.{name}]\ntype = \"kafka\"\ninputs = [\"{from}\"]\n\
             topic = \"{topic}\"\n"
        )
    };
    let text = format!(
        r#"
[plugins]
dir = "{dir}"

[kafka]
bootstrap_servers = "{bootstrap}"

{filter_source}
[pipelines.filter.stages.check]
type = "example-filter"
inputs = ["in"]
drop_field = "drop"
drop_value = true
panic_every = 10
{filter_out}{filter_dead}
{window_source}
[pipelines.window.stages.window]
type = "example-window"
inputs = ["in"]
window_ms = 300
seq_field = "n"
{window_out}
[pipelines.window.sinks.file]
type = "example-file"
inputs = ["window"]
path = "{lines}"

{poison_source}
[pipelines.poison.stages.window]
type = "example-window"
inputs = ["in"]
window_ms = 300
seq_field = "n"
panic_every = 10
{poison_out}{poison_dead}
{full_source}
[pipelines.full.sinks.file]
type = "example-file"
inputs = ["in"]
path = "/dev/full"
"#,
        dir = plugins.path().display(),
        bootstrap = support::bootstrap(),
        filter_source = source("filter"),
        filter_out = sink("filter", "out", "check", &out1),
        filter_dead = sink("filter", "dead", "check.failed", &dead1),
        window_source = source("window"),
        window_out = sink("window", "out", "window", &out2),
        lines = lines.display(),
        poison_source = source("poison"),
        poison_out = sink("poison", "out", "window", &out3),
        poison_dead = sink("poison", "dead", "window.failed", &dead3),
        full_source = source("full"),
    );
    let (_dir, config) = support::config(&text);
    let host = Host::start(std::path::Path::new(BIN), &config, &["run"]);
    let all = i64::try_from(COUNT).unwrap();
    let poisoned: BTreeSet<i64> = (0..all).filter(|n| n % 10 == 0).collect();
    let survivors = all - i64::try_from(poisoned.len()).unwrap();
    let total = |records: &[Record]| -> i64 {
        records
            .iter()
            .map(|r| r.payload["count"].as_i64().unwrap())
            .sum()
    };

    // Every pipeline reads its input to the end and commits it: none stopped on a panic,
    // and the windows released what they held.
    for pipeline in ["filter", "window", "poison"] {
        wait_all_committed(&input, &format!("{tag}-{pipeline}"));
    }

    // The plugins' own metrics, beside the built-in ones; their health in readiness.
    let metrics = metrics_of(&host).await;
    let series = |name: &str, pipeline: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("{name}{{"))
                    && l.contains(&format!("pipeline=\"{pipeline}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} of {pipeline}:\n{metrics}"))
    };
    assert!(series("salesflow_plugin_window_events_total", "window") >= 600.0);
    assert!(series("salesflow_plugin_window_summaries_total", "window") >= 6.0);
    assert!(series("salesflow_plugin_file_lines_total", "window") >= 6.0);
    assert!(
        metrics.contains("# HELP salesflow_plugin_window_held_events Events in the open window")
    );
    support::assert_promtool_accepts(&metrics);
    let client = reqwest::Client::new();
    let ready_url = format!("http://{}/health/ready", host.address());
    let mut readiness = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        readiness = support::get_json(&client, &ready_url).await;
        let full = readiness["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "full/file: plugin")
            .cloned();
        if full.is_some_and(|c| c["status"] == "down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let check = |name: &str| {
        readiness["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no check {name}: {readiness}"))
    };
    let full = check("full/file: plugin");
    assert_eq!(full["status"], "down", "{readiness}");
    assert!(
        full["error"].as_str().unwrap().contains("/dev/full"),
        "{readiness}"
    );
    assert_eq!(check("window/file: plugin")["status"], "up", "{readiness}");
    assert_eq!(readiness["status"], "not ready");

    // The stateless stage: the tenth records are dead letters, with the reason; the rest
    // went through, each once.
    let dead = read_all(&dead1, Duration::from_secs(30), |r| {
        r.len() >= poisoned.len()
    });
    let passed = read_all(&out1, Duration::from_secs(30), |r| {
        r.len() >= COUNT - poisoned.len()
    });
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert_eq!(
        numbers(&dead).into_iter().collect::<BTreeSet<_>>(),
        poisoned,
        "{log}"
    );
    assert_eq!(dead.len(), poisoned.len(), "each dead letter once");
    for letter in &dead {
        assert!(
            letter.headers["salesflow.error"].contains("asked to panic"),
            "{:?}",
            letter.headers
        );
        assert_eq!(letter.headers["salesflow.failed.by"], "filter/check");
    }
    let passed_numbers = numbers(&passed);
    assert_eq!(passed_numbers.len(), COUNT - poisoned.len(), "each once");
    assert!(passed_numbers.iter().all(|n| !poisoned.contains(n)));

    // The window: summaries covering every event exactly once (no panics there), the same
    // in Kafka and in the run-time file sink.
    let summaries = read_all(&out2, Duration::from_secs(10), |r| total(r) >= all);
    assert_eq!(total(&summaries), all, "{summaries:?}");
    let mut in_kafka: Vec<String> = summaries.iter().map(|r| r.payload.to_string()).collect();
    let mut in_file: Vec<String> = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .to_string()
        })
        .collect();
    in_kafka.sort();
    in_file.sort();
    assert_eq!(in_kafka, in_file);

    // The window that panics while holding events: its held events were read again
    // (at least once each), each poisoned event dead-lettered exactly once.
    let dead = read_all(&dead3, Duration::from_secs(10), |r| {
        r.len() >= poisoned.len()
    });
    assert_eq!(
        numbers(&dead).into_iter().collect::<BTreeSet<_>>(),
        poisoned
    );
    assert_eq!(dead.len(), poisoned.len(), "each dead letter once");
    let summaries = read_all(&out3, Duration::from_secs(10), |r| total(r) >= survivors);
    assert!(total(&summaries) >= survivors);
    support::delete_topics(&[&input, &out1, &dead1, &out2, &out3, &dead3]).await;
}
