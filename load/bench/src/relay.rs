//! The thinnest HTTP front of Kafka's own client, to set the Command API's time to 202
//! beside: an axum server whose `POST /orders` parses the body as JSON, sends it as it
//! came to the orders topic keyed by its `cart_id`, and answers 202 once Kafka has it
//! (400 when it is not a JSON object with a string `cart_id`, 503 when the send fails).
//! No validation, no stages, no channels, no metrics: what any HTTP service that waits
//! for Kafka's acknowledgement must spend. Its producers are the Command API's: as many,
//! with the same librdkafka settings, read from the build's `pipeline.toml`, each request
//! through the next producer in turn (the Command API's `placement = "lane"`). It runs on
//! a runtime of its own, with a worker per core as the Command API's process has, so the
//! load generator's tasks in the bench process do not run on its threads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use salesflow_plugin_api::Plugin;
use salesflow_plugin_kafka::{KafkaSinkPlugin, KafkaSinkSettings};
use serde_json::Value;

/// The Command API's producers as its `orders-topic` sink's settings make them: how many,
/// and the librdkafka configuration of each, built by the Kafka sink's own code from the
/// settings the host would give it.
#[derive(Clone, Debug)]
pub struct Producers {
    pub count: usize,
    settings: KafkaSinkSettings,
}

impl Producers {
    /// Read from `config`'s `pipelines.command-api.sinks.orders-topic` and its `[kafka]`
    /// section, as the host merges them, with the Kafka sink's defaults for what they
    /// leave out.
    pub fn of(config: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(config)
            .with_context(|| format!("reading {}", config.display()))?;
        let root: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
        let at = "pipelines.command-api.sinks.orders-topic";
        let sink = root
            .get("pipelines")
            .and_then(|p| p.get("command-api"))
            .and_then(|p| p.get("sinks"))
            .and_then(|s| s.get("orders-topic"))
            .and_then(toml::Value::as_table)
            .with_context(|| format!("{}: no table {at}", config.display()))?;
        let plugin = KafkaSinkPlugin;
        let settings: KafkaSinkSettings = salesflow_host::topology::plugin_settings(
            &root,
            sink,
            plugin.shared_section(),
            plugin.nested_shared_sections(),
        )
        .try_into()
        .with_context(|| format!("{}: {at} as the Kafka sink reads it", config.display()))?;
        Ok(Self {
            count: usize::from(settings.producers).max(1),
            settings,
        })
    }

    /// The sink's client configuration, to the stack's brokers, without the statistics
    /// the Command API reads for its metrics (the relay has none).
    pub fn config(&self) -> ClientConfig {
        let mut config = self.settings.client_config();
        config
            .set("bootstrap.servers", salesflow_testkit::bootstrap())
            .set("statistics.interval.ms", "0");
        config
    }
}

struct Shared {
    topic: String,
    producers: Vec<FutureProducer>,
    next: AtomicUsize,
}

async fn post_order(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let Ok(order) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(cart) = order.get("cart_id").and_then(Value::as_str) else {
        return StatusCode::BAD_REQUEST;
    };
    let turn = shared.next.fetch_add(1, Ordering::Relaxed) % shared.producers.len();
    let record = FutureRecord::to(&shared.topic).key(cart).payload(&body[..]);
    match shared.producers[turn]
        .send(record, Duration::from_secs(30))
        .await
    {
        Ok(_) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A running relay: its address, and how to stop it.
pub struct Relay {
    pub address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Relay {
    /// Starts a relay to `topic` on a free loopback port; returns once it listens and each
    /// producer has its connection and the topic's metadata, as a running Command API
    /// has them.
    pub fn start(topic: &str, producers: &Producers) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (topic, settings) = (topic.to_owned(), producers.clone());
        let thread = std::thread::Builder::new()
            .name("bare-relay".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("bare-relay-worker")
                    .build()?;
                runtime.block_on(async move {
                    let started = async {
                        let mut producers = Vec::new();
                        for _ in 0..settings.count {
                            let producer: FutureProducer =
                                settings.config().create().context("a relay producer")?;
                            // Nothing is sent ahead of the load: the topic is the
                            // pipelines' own, and its consumers would take a warm-up
                            // record for a bad order.
                            let (client, t) = (producer.clone(), topic.clone());
                            tokio::task::spawn_blocking(move || {
                                client
                                    .client()
                                    .fetch_metadata(Some(&t), Duration::from_secs(30))
                            })
                            .await?
                            .with_context(|| format!("a relay producer's metadata of {topic}"))?;
                            producers.push(producer);
                        }
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        anyhow::Ok((producers, listener))
                    };
                    let (producers, listener) = match started.await {
                        Ok(up) => up,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                            return Err(e);
                        }
                    };
                    let _ = ready_tx.send(Ok(listener.local_addr()?.to_string()));
                    let shared = Arc::new(Shared {
                        topic,
                        producers,
                        next: AtomicUsize::new(0),
                    });
                    let app = Router::new()
                        .route("/orders", post(post_order))
                        .with_state(Arc::clone(&shared));
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stop_rx.await;
                        })
                        .await?;
                    for producer in &shared.producers {
                        producer.flush(Duration::from_secs(10))?;
                    }
                    Ok(())
                })
            })?;
        let address = ready_rx
            .recv()
            .context("the relay's thread ended before it listened")??;
        Ok(Self {
            address,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops taking requests, lets those in flight finish, and joins the relay's thread.
    pub fn stop(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the relay's thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    #[test]
    fn the_command_apis_producers_are_read_from_pipeline_toml() {
        let committed = Producers::of(&salesflow_testkit::repo().join("pipeline.toml")).unwrap();
        assert_eq!(committed.count, 2);
        let config = committed.config();
        assert_eq!(config.get("linger.ms"), Some("1"));
        assert_eq!(config.get("statistics.interval.ms"), Some("0"));
        assert_eq!(config.get("acks"), Some("all"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(
            &path,
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[pipelines.command-api.sinks.orders-topic]\ntype = \"kafka\"\ninputs = [\"validate\"]\nlanes = 2\ntopic = \"orders\"\n",
        )
        .unwrap();
        // The Kafka sink's defaults, the host's keys left to the host.
        let defaults = Producers::of(&path).unwrap();
        assert_eq!(defaults.count, 1);
        let config = defaults.config();
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        // A key the sink does not know is named, as the host would name it.
        std::fs::write(
            &path,
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[pipelines.command-api.sinks.orders-topic]\ntype = \"kafka\"\ntopic = \"orders\"\nlingr_ms = 1\n",
        )
        .unwrap();
        let e = format!("{:#}", Producers::of(&path).unwrap_err());
        assert!(e.contains("lingr_ms"), "{e}");
        std::fs::write(&path, "[pipelines.domain]\n").unwrap();
        let e = Producers::of(&path).unwrap_err().to_string();
        assert!(
            e.contains("pipelines.command-api.sinks.orders-topic"),
            "{e}"
        );
    }

    /// Needs the local stack's Kafka (`scripts/stack up`).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_bare_relay_answers_202_once_the_order_is_in_kafka_keyed_by_cart() {
        let topic = format!("{}-relay", salesflow_bench::common::tag());
        salesflow_testkit::create_topics(&[&topic], 1).await;
        let producers = Producers::of(&salesflow_testkit::repo().join("pipeline.toml")).unwrap();
        let relay = Relay::start(&topic, &producers).unwrap();
        let url = format!("http://{}/orders", relay.address);
        let client = reqwest::Client::new();
        let order = r#"{"order_id":"o-1","cart_id":"cart-7","amount":"1.50"}"#;
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(
            status(client.post(&url).body(order).send().await.unwrap()),
            202
        );
        for refused in ["not json", r#"{"order_id":"o-2"}"#, r#"["cart_id"]"#] {
            let r = client.post(&url).body(refused).send().await.unwrap();
            assert_eq!(status(r), 400, "{refused}");
        }
        relay.stop().unwrap();
        // Read back: the one order accepted, as it came, keyed by its cart.
        let bootstrap = salesflow_testkit::bootstrap();
        let read = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .set("group.id", format!("{topic}-reader"))
                    .set("enable.auto.commit", "false")
                    .create()
                    .unwrap();
                let mut assignment = rdkafka::TopicPartitionList::new();
                assignment
                    .add_partition_offset(&topic, 0, rdkafka::Offset::Beginning)
                    .unwrap();
                consumer.assign(&assignment).unwrap();
                let mut records = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while records.is_empty() && std::time::Instant::now() < deadline {
                    if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                        let m = m.unwrap();
                        records.push((
                            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                            m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
                        ));
                    }
                }
                records
            }
        })
        .await
        .unwrap();
        salesflow_testkit::delete_topics(&[&topic]).await;
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0], (Some("cart-7".to_owned()), Some(order.to_owned())));
    }
}
