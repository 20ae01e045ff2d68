//! Kafka: a Kafka -> batch -> Kafka pipeline's produce rate vs `ProducerPerformance`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::Row;
use crate::common::{bootstrap, create_topics, delete_topics, repo, salesflow_bin, tag};
use crate::cpu::{self, Meter, Phase, Tracked, Usage};

const RECORDS: usize = 600_000;
const SIZE: usize = 600;
const PARTITIONS: i32 = 6;
/// Records one at a time: the rate and count of the `ProducerPerformance` run shaped like
/// the Command API's single orders (linger 1 ms).
const SHAPED_RATE: u32 = 1000;
const SHAPED_RECORDS: usize = 15_000;
/// Its phase in the report (the accounting finds it by this name).
pub const SHAPED_PHASE: &str =
    "one record at a time: ProducerPerformance at 1000 records/s, linger 1 ms";
/// The pipelines' Kafka traffic carried by Kafka's own Java clients
/// (`load/bench/java/PipelineShape.java`): orders in bursts of a batch POST, keyed by
/// cart over the `orders` topic's partitions, produced with the Command API's linger,
/// relayed to a second topic as the domain does and read as the projections do.
struct Shape {
    orders_per_s: u32,
    burst: u32,
    seconds: u32,
    carts: u32,
}
/// About the end-to-end sustained rate, over as many partitions as `orders` has.
const PIPELINE: Shape = Shape {
    orders_per_s: 3000,
    burst: 20,
    seconds: 30,
    carts: 20_000,
};
const PIPELINE_PARTITIONS: i32 = 12;
/// How its phase in the report is named (the accounting finds it by this start; the
/// shape follows).
pub const PIPELINE_PHASE: &str = "the pipelines' traffic by Kafka's Java clients";

/// Each partition's end offset (0 where Kafka did not answer).
fn partition_ends(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |w| w.1)
        })
        .collect()
}

fn end_offsets(consumer: &BaseConsumer, topic: &str) -> i64 {
    partition_ends(consumer, topic, PARTITIONS).iter().sum()
}

/// `java` with the local stack's Kafka classpath: Kafka's own tools and clients.
fn kafka_java() -> Result<Command> {
    let classpath = std::fs::read_to_string(repo().join(".stack/classpath/kafka.cp"))
        .context("the local stack's Kafka classpath (scripts/stack up)")?;
    let mut java = Command::new("java");
    java.args(["-Xmx512m", "-cp", classpath.trim()]);
    Ok(java)
}

/// Runs `java` (named `what` in errors) to completion, and gives the last line of its
/// output that `wanted` accepts: an error with everything it printed when it failed or
/// printed no such line.
fn last_line(mut java: Command, what: &str, wanted: impl Fn(&str) -> bool) -> Result<String> {
    let out = java.output().with_context(|| format!("running {what}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find(|l| wanted(l))
        .filter(|_| out.status.success())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{what} failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// What `ProducerPerformance` reports: records/s, and the p50 and p99 of its send to
/// acknowledged latency in ms (when it printed them).
struct Perf {
    rate: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

/// Kafka's own producer benchmark, with the sink's settings, for `records` records: as
/// fast as it goes (`throughput` None, linger 5 ms: the raw ceiling), or at a fixed rate
/// with a given linger (records arriving one at a time, as single orders do).
fn producer_performance(
    topic: &str,
    records: usize,
    throughput: Option<u32>,
    linger_ms: u32,
) -> Result<Perf> {
    let mut java = kafka_java()?;
    java.arg("org.apache.kafka.tools.ProducerPerformance")
        .args([
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--record-size",
            &SIZE.to_string(),
        ])
        .args([
            "--throughput",
            &throughput.map_or_else(|| "-1".to_owned(), |t| t.to_string()),
            "--producer-props",
        ])
        .arg(format!("bootstrap.servers={}", bootstrap()))
        .args([
            "acks=all",
            "enable.idempotence=true",
            &format!("linger.ms={linger_ms}"),
            "batch.size=1000000",
            "compression.type=lz4",
        ]);
    // "600000 records sent, 123456.7 records/sec (70.6 MB/sec), 2.1 ms avg latency,
    // 90.0 ms max latency, 1 ms 50th, 4 ms 95th, 9 ms 99th, 40 ms 99.9th."
    let line = last_line(java, "ProducerPerformance", |l| l.contains("records sent"))?;
    let rate = line
        .split(',')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("parsing the rate")?;
    let percentile = |name: &str| {
        line.split(',')
            .find(|part| part.trim_end_matches('.').ends_with(name))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Ok(Perf {
        rate,
        p50: percentile(" 50th"),
        p99: percentile(" 99th"),
    })
}

/// What `PipelineShape.java` carried: orders produced, relayed and read back.
#[derive(Debug, PartialEq)]
struct Carried {
    produced: u64,
    relayed: u64,
    read: u64,
}

/// Runs `PipelineShape.java` on the two topics, in `shape`.
fn pipeline_shape(orders: &str, events: &str, shape: &Shape) -> Result<Carried> {
    let mut java = kafka_java()?;
    java.arg(repo().join("load/bench/java/PipelineShape.java"))
        .args([&bootstrap(), orders, events])
        .args(
            [
                shape.orders_per_s,
                shape.burst,
                shape.seconds,
                shape.carts,
                u32::try_from(SIZE)?,
            ]
            .map(|n| n.to_string()),
        );
    // "produced 90000 relayed 90000 read 90000 seconds 31.204"
    let line = last_line(java, "PipelineShape.java", |l| l.starts_with("produced "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = |name: &str| -> Result<u64> {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {name} count in {line:?}"))
    };
    Ok(Carried {
        produced: count("produced")?,
        relayed: count("relayed")?,
        read: count("read")?,
    })
}

fn preload(topic: &str) -> Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let pad = "x".repeat(SIZE - 60);
    for i in 0..RECORDS {
        let key = format!("cart-{}", i % 1000);
        let payload = format!("{{\"n\":{i},\"cart_id\":\"{key}\",\"pad\":\"{pad}\"}}");
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
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// The relay pipeline's steady output rate (10 % to 90 % of the records), and what Kafka
/// and the relay spent until 90 % were out (with the records out by then).
fn relay(input: &str, output: &str) -> Result<(f64, Usage, f64)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
level = "warn"

[kafka]
bootstrap_servers = "{b}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{input}-relay"
max_batch_records = 500

[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]
max_events = 500
max_wait = "5ms"
lanes = {PARTITIONS}

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "{output}"
lanes = {PARTITIONS}
concurrency = 8
"#,
            b = bootstrap()
        ),
    )?;
    let binary = salesflow_bin();
    let child = salesflow_testkit::Host::launch(&salesflow_testkit::Launch {
        capture: false,
        ..salesflow_testkit::Launch::new(&binary, &config, &["run"])
    });
    let mut processes = cpu::server(&["kafka"]);
    processes.push(Tracked::new("salesflow relay", child.pid()));
    let meter = Meter::start(processes);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let total = i64::try_from(RECORDS)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut start = None;
    let (rate, out) = loop {
        let n = end_offsets(&consumer, output);
        let now = Instant::now();
        if n >= total / 10 && start.is_none() {
            start = Some((now, n));
        }
        if n >= total * 9 / 10 {
            let (t0, n0) = start.context("no start")?;
            #[allow(clippy::cast_precision_loss)]
            break ((n - n0) as f64 / (now - t0).as_secs_f64(), n as f64);
        }
        if now > deadline {
            child.kill();
            bail!("the relay did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let usage = meter.stop();
    let _ = child.stop(Duration::from_secs(60));
    Ok((rate, usage, out))
}

pub async fn run() -> Result<Row> {
    let t = tag();
    let (perf, input, output) = (format!("{t}-perf"), format!("{t}-in"), format!("{t}-out"));
    create_topics(&[&perf, &input, &output], PARTITIONS).await;
    // Warm the broker up first, unmeasured: the first run after a start measured 0.0028
    // CPU ms per record, a run after a warm-up 0.0008.
    tokio::task::spawn_blocking({
        let perf = perf.clone();
        move || producer_performance(&perf, RECORDS / 4, None, 5)
    })
    .await??;
    // ProducerPerformance runs as the driver's child: counted once it is reaped.
    let meter = Meter::start(cpu::server(&["kafka"]));
    let ceiling = tokio::task::spawn_blocking({
        let perf = perf.clone();
        move || producer_performance(&perf, RECORDS, None, 5)
    })
    .await??
    .rate;
    let ceiling_cpu = meter.stop();
    // The same records one at a time, as the Command API produces single orders: a
    // produce request carries what arrived within the linger, so Kafka's cost per record
    // is its cost per request. The end-to-end run is held against this as well.
    let meter = Meter::start(cpu::server(&["kafka"]));
    let one_at_a_time = tokio::task::spawn_blocking({
        let perf = perf.clone();
        move || producer_performance(&perf, SHAPED_RECORDS, Some(SHAPED_RATE), 1)
    })
    .await??;
    let shaped_cpu = meter.stop();
    // The pipelines' whole Kafka traffic at about the end-to-end rate, by Kafka's own
    // clients: Kafka's cost per record for that shape of work, whoever the client.
    let (orders, events) = (format!("{t}-orders"), format!("{t}-events"));
    create_topics(&[&orders, &events], PIPELINE_PARTITIONS).await;
    let meter = Meter::start(cpu::server(&["kafka"]));
    let carried = tokio::task::spawn_blocking({
        let (orders, events) = (orders.clone(), events.clone());
        move || pipeline_shape(&orders, &events, &PIPELINE)
    })
    .await??;
    let pipeline_cpu = meter.stop();
    delete_topics(&[&orders, &events]).await;
    tokio::task::spawn_blocking({
        let input = input.clone();
        move || preload(&input)
    })
    .await??;
    let (ours, ours_cpu, relayed) = tokio::task::spawn_blocking({
        let (input, output) = (input.clone(), output.clone());
        move || relay(&input, &output)
    })
    .await??;
    delete_topics(&[&perf, &input, &output]).await;
    println!("  ProducerPerformance {ceiling:.0} rec/s; salesflow relay produce {ours:.0} rec/s");
    let mut row = Row::new(
        "Kafka produce",
        "records/s",
        ours,
        ceiling,
        None,
        "kafka -> batch -> kafka pipeline",
        "ProducerPerformance",
    );
    row.note = format!(
        "{RECORDS} records of {SIZE} bytes, {PARTITIONS} partitions, acks=all, idempotent, lz4, linger 5 ms; \
         the pipeline also consumes what it produces{}",
        match (one_at_a_time.p50, one_at_a_time.p99) {
            (Some(p50), Some(p99)) => format!(
                "; Kafka's own latency one record at a time ({SHAPED_RATE}/s, linger 1 ms, \
                 send to acknowledged, nothing else running): p50 {p50:.0} ms, p99 {p99:.0} ms \
                 — the floor under the Command API's time to 202"
            ),
            _ => String::new(),
        }
    );
    #[allow(clippy::cast_precision_loss)]
    let records = RECORDS as f64;
    #[allow(clippy::cast_precision_loss)]
    let shaped = SHAPED_RECORDS as f64;
    // Two records per order, as end to end: the order, and its relayed event.
    #[allow(clippy::cast_precision_loss)]
    let carried_records = (carried.produced + carried.relayed) as f64;
    row.phases = vec![
        Phase::new(
            "ceiling: ProducerPerformance",
            "record",
            records,
            ceiling_cpu,
        ),
        Phase::new(SHAPED_PHASE, "record", shaped, shaped_cpu),
        Phase::new(
            format!(
                "{PIPELINE_PHASE}: {} orders/s in bursts of {} over {PIPELINE_PARTITIONS} partitions, produced, relayed, read",
                PIPELINE.orders_per_s, PIPELINE.burst
            ),
            "record",
            carried_records,
            pipeline_cpu,
        ),
        Phase::new(
            "salesflow: kafka -> kafka relay",
            "record",
            relayed,
            ours_cpu,
        ),
    ];
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the local stack's Kafka (`scripts/stack up`) and a JDK.
    #[tokio::test(flavor = "multi_thread")]
    async fn kafkas_java_clients_carry_every_order_of_the_pipeline_shape() {
        let t = tag();
        let (orders, events) = (format!("{t}-orders"), format!("{t}-events"));
        create_topics(&[&orders, &events], PIPELINE_PARTITIONS).await;
        let shape = Shape {
            orders_per_s: 400,
            burst: 20,
            seconds: 2,
            carts: 100,
        };
        let carried = tokio::task::spawn_blocking({
            let (orders, events) = (orders.clone(), events.clone());
            move || pipeline_shape(&orders, &events, &shape)
        })
        .await
        .unwrap()
        .unwrap();
        // What Kafka holds, read apart from the program's own counts: every partition's
        // end offset, on both topics.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let (in_orders, in_events) = (
            partition_ends(&consumer, &orders, PIPELINE_PARTITIONS),
            partition_ends(&consumer, &events, PIPELINE_PARTITIONS),
        );
        delete_topics(&[&orders, &events]).await;
        assert_eq!(
            carried,
            Carried {
                produced: 800,
                relayed: 800,
                read: 800
            }
        );
        assert_eq!(in_orders.iter().sum::<i64>(), 800, "{in_orders:?}");
        assert_eq!(in_events.iter().sum::<i64>(), 800, "{in_events:?}");
        // Keyed by cart: 100 carts spread over every partition, and each event on its
        // order's partition.
        assert!(in_orders.iter().all(|n| *n > 0), "{in_orders:?}");
        assert_eq!(in_orders, in_events);
    }
}
