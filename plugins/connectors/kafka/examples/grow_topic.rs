//! Grows topics under produce load and checks every acknowledged message against the log:
//! the reproduction of librdkafka's implicit acknowledgement losing messages on a new
//! partition, which the Kafka sink guards against (see `UNCONFIRMED` in `src/sink.rs`).
//!
//! ```text
//! cargo run --example grow_topic -p salesflow-plugin-kafka -- --rounds 20
//! ```
//!
//! Each round creates a topic with `--from` partitions, produces with an idempotent
//! producer (`acks=all`, linger 1 ms, the sink's settings) from `--workers` tasks that
//! do not wait for one batch's acknowledgements before sending the next, to the last
//! `--hot` partitions the topic will have, grows it to `--to` partitions, goes on for a
//! while, then reads the topic back. The broker announces new partitions before it has
//! created their logs, so the first produce requests to them fail ("not leader"); when a
//! pipelined request succeeds after one failed, librdkafka reports the failed one's
//! messages delivered too, without an offset, and the broker may never have written them.
//!
//! It prints, per round, the messages acknowledged, those acknowledged without an offset,
//! and those acknowledged but not in the log. Exit code 1 if any message acknowledged
//! *with* an offset is missing (a loss the sink's guard would not catch). Bounded: every
//! round lasts about three seconds and deletes its topic. The broker is the local
//! stack's (`SALESFLOW_KAFKA_BOOTSTRAP`, else 127.0.0.1:9092); loopback brokers only.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use salesflow_testkit::bootstrap;

#[derive(Parser)]
struct Cli {
    /// Rounds (one topic each).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Partitions at creation.
    #[arg(long, default_value_t = 1)]
    from: i32,
    /// Partitions after growing: the more, the longer the broker takes to create their
    /// logs after announcing them.
    #[arg(long, default_value_t = 200)]
    to: i32,
    /// How many of the new partitions (the last ones) are written to.
    #[arg(long, default_value_t = 100)]
    hot: i32,
    /// Producing tasks, each sending a batch of three messages every millisecond.
    #[arg(long, default_value_t = 100)]
    workers: i32,
}

/// A message acknowledged at (partition, offset).
type Acked = (String, i32, i64);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let (mut unconfirmed_lost, mut confirmed_lost) = (0, 0);
    for round in 0..cli.rounds {
        let topic = format!("grow-topic-{}-{round}", std::process::id());
        salesflow_testkit::create_topic(&topic, cli.from).await;
        let acked = produce_while_growing(&cli, &admin, &options, &topic).await;
        let stored = read_back(&topic, acked.len());
        let without_offset = acked.iter().filter(|(_, _, o)| *o < 0).count();
        let lost: Vec<&Acked> = acked.iter().filter(|a| !stored.contains(&a.0)).collect();
        let lost_with_offset = lost.iter().filter(|(_, _, o)| *o >= 0).count();
        for (key, partition, offset) in &lost {
            println!("  lost {key}: acknowledged at partition {partition} offset {offset}");
        }
        println!(
            "round {round}: {} acknowledged, {without_offset} without an offset, {} not in the log ({lost_with_offset} of them with an offset)",
            acked.len(),
            lost.len(),
        );
        unconfirmed_lost += lost.len() - lost_with_offset;
        confirmed_lost += lost_with_offset;
        salesflow_testkit::delete_topics(&[&topic]).await;
    }
    println!(
        "{} rounds: {unconfirmed_lost} lost after an acknowledgement without an offset, {confirmed_lost} after one with an offset",
        cli.rounds
    );
    if confirmed_lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Produces for 0.3 s, grows the topic, produces 1.5 s more; every acknowledgement.
async fn produce_while_growing(
    cli: &Cli,
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    topic: &str,
) -> Vec<Acked> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("socket.nagle.disable", "true")
        .set("linger.ms", "1")
        .set("topic.metadata.refresh.interval.ms", "20")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..cli.workers {
        let (producer, acked, stop) = (producer.clone(), Arc::clone(&acked), Arc::clone(&stop));
        let (topic, partition) = (topic.to_owned(), cli.to - 1 - worker % cli.hot);
        workers.push(tokio::spawn(async move {
            let mut waiting = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                for i in 0..3 {
                    let key = format!("{worker}-{n}-{i}");
                    // A JSON string, as the readers of this repository expect.
                    let payload = format!("\"{key}\"");
                    let mut record = FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .partition(partition);
                    // The partition is unknown to the producer until the topic grows.
                    let delivery = loop {
                        match producer.send_result(record) {
                            Ok(delivery) => break delivery,
                            Err((_, back)) => {
                                record = back;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    };
                    batch.push((key, delivery));
                }
                // Acknowledgements are awaited apart: the next batch does not wait.
                let acked = Arc::clone(&acked);
                waiting.push(tokio::spawn(async move {
                    for (key, delivery) in batch {
                        // A delivery failed for good (say, sent before the producer
                        // knew the partition) was not acknowledged: nothing to check.
                        if let Ok(d) = delivery.await.expect("delivery future") {
                            acked
                                .lock()
                                .expect("lock")
                                .push((key, d.partition, d.offset));
                        }
                    }
                }));
                n += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for w in waiting {
                w.await.expect("waiter");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = admin
        .create_partitions(
            &[NewPartitions::new(
                topic,
                usize::try_from(cli.to).expect("--to"),
            )],
            options,
        )
        .await
        .expect("create partitions");
    assert!(grown[0].is_ok(), "{grown:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    std::mem::take(&mut *acked.lock().expect("lock"))
}

/// The keys in the topic, read from the beginning of every partition.
fn read_back(topic: &str, expected: usize) -> HashSet<String> {
    salesflow_testkit::read_all(topic, Duration::from_secs(20), |read| {
        read.len() >= expected
    })
    .into_iter()
    .map(|record| record.key)
    .collect()
}
