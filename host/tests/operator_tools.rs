//! The operator tools against a running host on the real Kafka.
//!
//! `salesflow top --once` against a running host on the real Kafka: one frame with a row
//! per component of the running pipeline and the consumer lag of the partitions it reads;
//! a process that does not answer is named, with a non-zero exit.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use salesflow_testkit as support;
use support::{Host, create_topic, produce, unique};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_each_component_and_the_lag_of_each_partition() {
    let (input, output) = (unique("top-in"), unique("top-out"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    produce(&input, 500, 4, |_| String::new()).await;
    let (_dir, config) = support::config(&format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{input}"

[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "{output}"
"#,
        bootstrap = support::bootstrap()
    ));
    let host = Host::start(Path::new(BIN), &config, &["run"]);
    let target = format!("http://{}", host.address());
    // The relay has read and committed its input once a lag series of the topic exists
    // (a partition's lag is known once the group has committed an offset of it).
    support::wait_for(
        "the lag of the input topic",
        Duration::from_secs(60),
        || {
            let ran = support::run(
                Path::new(BIN),
                &["top", "--once", "--interval", "200ms", "--target", &target],
                &[],
            );
            ran.ok && ran.stdout.contains(input.as_str())
        },
    );
    let ran = support::run(
        Path::new(BIN),
        &["top", "--once", "--interval", "1s", "--target", &target],
        &[],
    );
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    let frame = ran.stdout;
    assert!(frame.contains("IN/s") && frame.contains("LAG"), "{frame}");
    for component in ["in ", "batch ", "out "] {
        assert!(
            frame
                .lines()
                .any(|l| l.contains("relay") && l.contains(component)),
            "no row for {component}:\n{frame}"
        );
    }
    let lag_row = frame
        .lines()
        .find(|l| l.contains(input.as_str()))
        .unwrap_or_else(|| panic!("no lag row for {input}:\n{frame}"));
    let columns: Vec<&str> = lag_row.split_whitespace().collect();
    assert!(
        ["0", "1"].contains(&columns[4]) && columns[5].parse::<f64>().is_ok(),
        "{lag_row}"
    );

    // A process that does not answer: named, and the exit code says so.
    let ran = support::run(
        Path::new(BIN),
        &[
            "top",
            "--once",
            "--interval",
            "100ms",
            "--target",
            &format!("{target},http://127.0.0.1:1"),
        ],
        &[],
    );
    assert!(!ran.ok);
    assert!(
        ran.stdout.contains("127.0.0.1:1: not answering"),
        "{}",
        ran.stdout
    );
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&input, &output]).await;
}

/// A relay whose `batch` stage can be tapped (`tap` is the `[server.tap]` table's body).
fn tapped_relay(input: &str, output: &str, tap: &str) -> String {
    format!(
        r#"
[server.tap]
{tap}

[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{input}"

[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "{output}"
"#,
        bootstrap = support::bootstrap()
    )
}

/// `salesflow tap` while events flow: at most `--limit` events, each as a JSON line with
/// its payload and origin, never more per second than `max_events_per_second`; behind the
/// keys of `[server.tap] auth`; an unknown component is refused naming what can be tapped;
/// without `[server.tap] enabled` there is no tap at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_samples_live_events_within_its_limits() {
    const KEYS: &str = "SALESFLOW_TEST_TAP_KEYS";
    const KEY: &str = "tap-key-0123456789abcdef";
    let (input, output) = (unique("tap-in"), unique("tap-out"));
    create_topic(&input, 2).await;
    create_topic(&output, 1).await;
    let (_dir, config) = support::config(&tapped_relay(
        &input,
        &output,
        &format!(
            "enabled = true\nmax_events_per_second = 5\nauth = {{ api_keys_env = \"{KEYS}\" }}"
        ),
    ));
    let host = Host::start_with_env(Path::new(BIN), &config, &["run"], &[(KEYS, KEY)]);
    let target = format!("http://{}", host.address());

    // Events keep flowing while the taps watch.
    let flowing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (input, flowing) = (input.clone(), Arc::clone(&flowing));
        tokio::spawn(async move {
            while flowing.load(Ordering::SeqCst) {
                produce(&input, 50, 4, |_| String::new()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let tap = |target: &str, args: Vec<String>, env: Vec<(&'static str, &'static str)>| {
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["tap".to_owned()];
            all.extend(args);
            all.extend(["--target".to_owned(), target]);
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            support::run(Path::new(BIN), &args, &env)
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    // Without the key: refused.
    let refused = tap(&target, args(&["relay/batch", "--timeout", "2s"]), vec![])
        .await
        .unwrap();
    assert!(
        !refused.ok && refused.stderr.contains("401"),
        "{}",
        refused.stderr
    );

    // With it: three events, as they leave the stage.
    let ran = tap(
        &target,
        args(&[
            "relay/batch",
            "--limit",
            "3",
            "--timeout",
            "30s",
            "--api-key-env",
            KEYS,
        ]),
        vec![(KEYS, KEY)],
    )
    .await
    .unwrap();
    assert!(ran.ok, "{}", ran.stderr);
    let lines: Vec<serde_json::Value> = ran
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    for line in &lines {
        assert_eq!(line["from"], "relay/batch");
        assert!(line["payload"]["n"].is_u64(), "{line}");
        assert!(
            line["origin"].as_str().unwrap().starts_with(&input),
            "{line}"
        );
    }

    // The rate: 2 s of watching span at most 3 one-second windows of 5 events each.
    let ran = tap(
        &target,
        args(&[
            "relay/batch",
            "--limit",
            "1000",
            "--timeout",
            "2s",
            "--api-key-env",
            KEYS,
        ]),
        vec![(KEYS, KEY)],
    )
    .await
    .unwrap();
    assert!(ran.ok, "{}", ran.stderr);
    let seen = ran.stdout.lines().count();
    assert!((1..=15).contains(&seen), "{seen} events:\n{}", ran.stdout);

    // An unknown component: refused, naming what can be tapped.
    let ran = tap(
        &target,
        args(&["relay/nothing", "--api-key-env", KEYS]),
        vec![(KEYS, KEY)],
    )
    .await
    .unwrap();
    assert!(!ran.ok);
    assert!(
        ran.stderr.contains("404") && ran.stderr.contains("relay/batch"),
        "{}",
        ran.stderr
    );
    flowing.store(false, Ordering::SeqCst);
    producer.await.unwrap();
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");

    // Off by default: no tap route.
    let (_dir, config) = support::config(&tapped_relay(&input, &output, ""));
    let host = Host::start(Path::new(BIN), &config, &["run"]);
    let target = format!("http://{}", host.address());
    let ran = tap(&target, args(&["relay/batch", "--timeout", "1s"]), vec![])
        .await
        .unwrap();
    assert!(!ran.ok && ran.stderr.contains("404"), "{}", ran.stderr);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    support::delete_topics(&[&input, &output]).await;
}
