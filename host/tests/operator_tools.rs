//! `salesflow top --once` against a running host on the real Kafka: one frame with a row
//! per component of the running pipeline and the consumer lag of the partitions it reads;
//! a process that does not answer is named, with a non-zero exit.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
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
