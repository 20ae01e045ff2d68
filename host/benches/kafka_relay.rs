//! Kafka topic -> salesflow (kafka source, batch stage, kafka sink) -> Kafka topic,
//! against a hand-written rdkafka consume-produce loop, on the same machine in the same
//! run, with the same messages and client settings.
//!
//! `cargo bench -p salesflow --bench kafka_relay` (the local stack must be up).
//! Environment: `BENCH_MESSAGES` (default 1000000), `BENCH_SIZE` (bytes, default 512),
//! `BENCH_ROUNDS` (default 3), `SALESFLOW_KAFKA_BOOTSTRAP`.
//!
//! Throughput is measured on the output topic by polling its end offsets: the steady
//! rate between 10 % and 90 % of the messages (start-up and tail excluded for both).
//! Rounds alternate hand-written and host; the medians and their ratio are printed, with
//! the host's peak resident memory.

#![allow(clippy::unwrap_used)] // A benchmark that cannot run panics.
#![allow(clippy::cast_precision_loss)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};

const PARTITIONS: i32 = 6;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bootstrap() -> String {
    std::env::var("SALESFLOW_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(prefix: &str) -> String {
    format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The producer settings both sides use (the host's kafka sink defaults).
fn producer_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000");
    c
}

fn topics(runtime: &tokio::runtime::Runtime, names: &[&str], delete: bool) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    runtime.block_on(async {
        if delete {
            let _ = admin.delete_topics(names, &options).await;
        } else {
            let new: Vec<_> = names
                .iter()
                .map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1)))
                .collect();
            for r in admin.create_topics(&new, &options).await.unwrap() {
                r.unwrap();
            }
        }
    });
}

fn preload(topic: &str, count: usize, size: usize) {
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config().create().unwrap();
    let filler = "x".repeat(size.saturating_sub(60));
    for i in 0..count {
        let key = format!("cart-{}", i % 1000);
        let payload = format!("{{\"n\":{i},\"cart_id\":\"{key}\",\"pad\":\"{filler}\"}}");
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn end_offsets(consumer: &BaseConsumer, topic: &str) -> i64 {
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .sum()
}

/// Waits for `count` messages on `topic`; returns the steady-state rate: the messages
/// between 10 % and 90 % of `count` divided by the time between those two points (the
/// start-up, the initial burst of a producer queue filling, and the tail are left out,
/// for both sides alike).
fn watch(topic: &str, count: usize, mut sample: impl FnMut()) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let total = i64::try_from(count).unwrap();
    let (low, high) = (total / 10, total * 9 / 10);
    let mut start: Option<(Instant, i64)> = None;
    loop {
        let n = end_offsets(&consumer, topic);
        let now = Instant::now();
        if n >= low && start.is_none() {
            start = Some((now, n));
        }
        if n >= high {
            let (t0, n0) = start.unwrap();
            #[allow(clippy::cast_precision_loss)]
            return (n - n0) as f64 / (now - t0).as_secs_f64();
        }
        assert!(
            now < deadline,
            "{topic}: only {n} of {count} after 10 minutes"
        );
        sample();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The hand-written loop, as a ceiling: consume and produce with the same settings, and
/// nothing else — no offset commits, no waiting for delivery until the end. (A loop that
/// flushes before each commit to be at-least-once stalls on every flush and runs at a
/// third of this.)
fn hand_written(input: &str, output: &str, count: usize) -> f64 {
    // Returns events/s (see `watch`).
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (input, output, stop) = (input.to_owned(), output.to_owned(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", unique("hand"))
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("fetch.wait.max.ms", "100")
                .create()
                .unwrap();
            consumer.subscribe(&[&input]).unwrap();
            let producer: ThreadedProducer<DefaultProducerContext> =
                producer_config().create().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = message.unwrap();
                let mut record = BaseRecord::to(&output)
                    .key(m.key().unwrap_or_default())
                    .payload(m.payload().unwrap_or_default());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
            }
            producer.flush(Duration::from_secs(30)).unwrap();
        })
    };
    let rate = watch(output, count, || {});
    wait_total(output, count);
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    rate
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until every message has arrived (nothing is lost on either side).
fn wait_total(topic: &str, count: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while end_offsets(&consumer, topic) < i64::try_from(count).unwrap() {
        assert!(
            Instant::now() < deadline,
            "{topic}: not every message arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host, as a separate process with a kafka -> batch -> kafka pipeline.
fn host(input: &str, output: &str, count: usize, max_batch: usize) -> (f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
level = "warn"

[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{group}"
max_batch_records = {max_batch}

[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]
max_events = {max_batch}
max_wait = "5ms"
lanes = {PARTITIONS}

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "{output}"
lanes = {PARTITIONS}
concurrency = 8
"#,
            bootstrap = bootstrap(),
            group = unique("host"),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_salesflow"))
        .arg("--config")
        .arg(&config)
        .args(["--set", "server.address=127.0.0.1:0", "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let rate = watch(output, count, || peak = peak.max(rss_kib(pid)));
    wait_total(output, count);
    peak = peak.max(rss_kib(pid));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the host did not stop cleanly: {status}");
    (rate, peak)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let count = env("BENCH_MESSAGES", 1_000_000);
    let size = env("BENCH_SIZE", 512);
    let rounds = env("BENCH_ROUNDS", 3);
    let max_batch = 500;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let input = unique("in");
    topics(&runtime, &[&input], false);
    println!("preloading {count} messages of {size} bytes into {input} ({PARTITIONS} partitions)");
    preload(&input, count, size);

    let mut hand_rates = Vec::new();
    let mut host_rates = Vec::new();
    let mut peaks = Vec::new();
    for round in 1..=rounds {
        let out_hand = unique("out-hand");
        let out_host = unique("out-host");
        topics(&runtime, &[&out_hand, &out_host], false);
        let hand = hand_written(&input, &out_hand, count);
        let (host, peak) = host(&input, &out_host, count, max_batch);
        println!(
            "round {round}: hand-written {hand:>9.0} ev/s   host {host:>9.0} ev/s   ratio {:.2}   host peak RSS {} MiB",
            host / hand,
            peak / 1024
        );
        hand_rates.push(hand);
        host_rates.push(host);
        peaks.push(peak);
        topics(&runtime, &[&out_hand, &out_host], true);
    }
    topics(&runtime, &[&input], true);
    let (hand, host) = (median(hand_rates), median(host_rates));
    println!(
        "median: hand-written {hand:.0} ev/s, host {host:.0} ev/s, ratio host/hand {:.2}; host peak RSS {} MiB; {} cores, load {}",
        host / hand,
        peaks.iter().max().unwrap() / 1024,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
