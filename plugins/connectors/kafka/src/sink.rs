//! The Kafka sink: an idempotent producer with `acks=all`. A write enqueues the batch's
//! messages in order (waiting while the producer queue is full) and its future resolves
//! once every message has its delivery report: the batch is acknowledged only then.
//!
//! A message Kafka can never take (larger than the topic or producer allows, an invalid
//! record) is refused for good: the write reports which, so that they become dead letters
//! (`<sink>.failed`) while the rest of the batch counts as written. Any other failure
//! (brokers unreachable past `delivery_timeout_ms`) fails the whole write, which its
//! source delivers again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use salesflow_plugin_api::json::top_level_field;
use salesflow_plugin_api::{Backpressure, Event, PluginError, Sink, WriteFuture, async_trait};
use tokio::sync::oneshot;
use tracing::warn;

use crate::config::KafkaSinkSettings;
use crate::metrics::SinkMetrics;
use crate::placement::{Placement, Route};

/// A Kafka producer of the sink: librdkafka's producer, and a thread of its own serving
/// its delivery reports (what rdkafka's `ThreadedProducer` does, but see [`POLL_WAIT`]).
/// Dereferences to the producer. The thread holds the only other reference: once this
/// is dropped it sees that within [`POLL_WAIT`], serving the reports that come
/// meanwhile, and destroys the producer (whose own drop purges what is still queued,
/// failing those writes); dropping this waits for nothing.
pub struct SinkProducer {
    producer: Arc<BaseProducer<DeliveryContext>>,
}

/// How long the delivery thread waits for reports per call. rdkafka's
/// `BaseProducer::poll` hands librdkafka the time left in whole milliseconds, so the
/// last fraction of a millisecond of every call is a busy loop (a wait of 0 returns at
/// once). `ThreadedProducer` calls it every 100 ms: about 1 % of a core per producer,
/// idle or busy (measured: 8-9 ms of CPU a second per idle producer, half of it in
/// `clock_gettime`). Waiting a second per call cuts that tenfold; reports still come
/// as they arrive.
pub const POLL_WAIT: Duration = Duration::from_secs(1);

impl SinkProducer {
    /// A producer made from `config`, with its delivery thread started.
    pub fn create(config: &ClientConfig, context: DeliveryContext) -> Result<Self, KafkaError> {
        let producer: Arc<BaseProducer<DeliveryContext>> =
            Arc::new(config.create_with_context(context)?);
        let polled = Arc::clone(&producer);
        std::thread::Builder::new()
            .name("kafka-delivery".into())
            .spawn(move || {
                // Until the `SinkProducer` is dropped; the producer is then destroyed
                // here with `polled`, off the async workers.
                while Arc::strong_count(&polled) > 1 {
                    polled.poll(POLL_WAIT);
                }
            })
            .map_err(|e| {
                KafkaError::ClientCreation(format!("starting the delivery thread: {e}"))
            })?;
        Ok(Self { producer })
    }
}

impl std::ops::Deref for SinkProducer {
    type Target = BaseProducer<DeliveryContext>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

/// The producer every lane of a sink shares, made afresh when its messages time out.
///
/// librdkafka 2.12 can leave a producer unable to deliver for good after a metadata
/// answer without a partition leader — what a single broker says while it shuts down
/// (`new leader-1 not found in cache`): its messages time out, a batch at a time, long
/// after the broker is back. A new producer asks for metadata afresh, so a write whose
/// messages timed out renews the producer; its source delivers that write again.
pub struct SharedProducer {
    current: std::sync::RwLock<Arc<SinkProducer>>,
    make: Box<dyn Fn() -> Result<SinkProducer, KafkaError> + Send + Sync>,
}

impl SharedProducer {
    /// A shared producer made by `make`, now and whenever it is renewed.
    pub fn new(
        make: Box<dyn Fn() -> Result<SinkProducer, KafkaError> + Send + Sync>,
    ) -> Result<Self, KafkaError> {
        let first = make()?;
        Ok(Self {
            current: std::sync::RwLock::new(Arc::new(first)),
            make,
        })
    }

    /// The producer to send with now.
    pub fn get(&self) -> Arc<SinkProducer> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces `stale` with a new producer, unless another lane already has. Blocking:
    /// making a producer starts its threads, so it runs off the async workers (the stale
    /// one's delivery thread destroys it once the last reference is gone). The lock is
    /// held only for the swap: other lanes' `get()` never wait for a producer being made;
    /// lanes that time out together may each make one, and all but the first are dropped
    /// unused.
    fn renew(&self, stale: &Arc<SinkProducer>) {
        if !Arc::ptr_eq(&self.get(), stale) {
            return;
        }
        let fresh = match (self.make)() {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => {
                warn!(
                    sink = %stale.context().name,
                    error = %e,
                    "messages timed out and a new producer could not be made; keeping the old one"
                );
                return;
            }
        };
        {
            let mut current = self
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !Arc::ptr_eq(&current, stale) {
                // Another lane renewed it meanwhile; this one's is dropped unused.
                return;
            }
            *current = fresh;
        }
        warn!(
            sink = %stale.context().name,
            "messages timed out: the producer is made afresh"
        );
        stale.context().metrics.renewed.inc();
    }
}

/// One write's outstanding deliveries: every message of the batch holds a reference, and
/// the last delivery report completes the write.
pub struct BatchDelivery {
    /// How the write's records were placed, held open until the last of them is settled.
    route: Route,
    remaining: AtomicUsize,
    state: Mutex<Failures>,
    done: Mutex<Option<oneshot::Sender<Failures>>>,
}

/// What went wrong in one write.
#[derive(Default)]
pub struct Failures {
    /// The first error that may pass if tried again.
    pub transient: Option<String>,
    /// Messages refused for good: their position in the write (when known) or their key
    /// and payload (a delivery report names its message, not its position), and why.
    pub refused: Vec<(Refusal, String)>,
    /// Some message was not delivered within `delivery_timeout_ms`.
    pub timed_out: bool,
}

/// Which message a permanent failure was about.
pub enum Refusal {
    At(usize),
    Message(Option<Vec<u8>>, Vec<u8>),
}

/// Errors that no retry can cure for the message they name.
pub fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::BadMessage
    )
}

impl BatchDelivery {
    fn new(messages: usize, route: Route) -> (Arc<Self>, oneshot::Receiver<Failures>) {
        let (tx, rx) = oneshot::channel();
        let delivery = Arc::new(Self {
            route,
            // One extra count for the write itself, released once every message is queued.
            remaining: AtomicUsize::new(messages + 1),
            state: Mutex::new(Failures::default()),
            done: Mutex::new(Some(tx)),
        });
        (delivery, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, reason: String) {
        let mut state = self.lock();
        if state.transient.is_none() {
            state.transient = Some(reason);
        }
    }

    fn refuse(&self, which: Refusal, reason: String) {
        self.lock().refused.push((which, reason));
    }

    /// One message (or the write itself) is settled.
    fn settle(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let failures = std::mem::take(&mut *self.lock());
            if let Some(tx) = self
                .done
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                let _ = tx.send(failures);
            }
        }
    }
}

/// Routes delivery reports to their batch: one reference count per message, no
/// allocation per message.
#[derive(Clone)]
pub struct DeliveryContext {
    pub(crate) name: String,
    pub(crate) metrics: Arc<SinkMetrics>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics
            .errors
            .get_or_create(&crate::metrics::KindLabels {
                kind: "client".into(),
            })
            .inc();
        warn!(sink = %self.name, %error, reason, "kafka client error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.observe(&statistics);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<BatchDelivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Arc<BatchDelivery>) {
        self.metrics.in_flight.dec();
        if let Err((e, message)) = result {
            self.metrics.failed.inc();
            match e.rdkafka_error_code() {
                Some(code) if is_permanent(code) => batch.refuse(
                    Refusal::Message(
                        message.key().map(<[u8]>::to_vec),
                        message.payload().unwrap_or_default().to_vec(),
                    ),
                    e.to_string(),
                ),
                code => {
                    if code == Some(RDKafkaErrorCode::MessageTimedOut) {
                        batch.lock().timed_out = true;
                    }
                    batch.fail(e.to_string());
                }
            }
        } else if let Ok(message) = result
            && message.offset() < 0
        {
            // See `UNCONFIRMED`: counted as failed, the write is delivered again.
            self.metrics.failed.inc();
            self.metrics
                .errors
                .get_or_create(&crate::metrics::KindLabels {
                    kind: "unconfirmed".into(),
                })
                .inc();
            batch.fail(format!(
                "{} [{}]: {UNCONFIRMED}",
                message.topic(),
                message.partition()
            ));
        } else {
            self.metrics.delivered.inc();
        }
        batch.settle();
    }
}

/// Why a delivery report of success without an offset fails its write.
///
/// With `acks=all` a broker's acknowledgement carries the offset it wrote the message
/// at. librdkafka also reports success *without* one ("implicit ack", offset -1001): a
/// produce request failed in a way it takes for "possibly written", and a later request
/// of the same partition succeeded, so it assumes the earlier messages were written too.
/// A broker holding no state yet for the producer on that partition accepts a first
/// batch at any sequence number, so on a partition just created (the topic grew) the
/// earlier messages may never have been written: reproduced with librdkafka 2.12.1 and
/// Kafka 4.1, the first produce to a new partition answered "not leader" (the broker had
/// announced the partition before creating its log), the next one written, and the
/// first one's messages reported delivered and missing from the log. So such a report
/// is not taken as delivered: the write fails and its source delivers it again (an
/// order posted again is a duplicate the domain drops; one written after all, the same).
const UNCONFIRMED: &str = "acknowledged without an offset (librdkafka's implicit \
     acknowledgement after a failed request); whether it was written is unknown, so it \
     is delivered again";

/// How long an ask for the topic's partition count waits for Kafka.
const METADATA_WAIT: Duration = Duration::from_secs(5);

/// One lane of the sink, writing through the producers every lane shares.
pub struct KafkaSink {
    /// The sink's producers (at least one); [`Placement`] picks one per record.
    pub(crate) producers: Arc<[Arc<SharedProducer>]>,
    pub(crate) placement: Arc<Placement>,
    pub(crate) lane: usize,
    pub(crate) settings: Arc<KafkaSinkSettings>,
    /// Raised when librdkafka's queue is full: the brokers take less than is produced.
    pub(crate) pressure: Backpressure,
}

#[async_trait]
impl Sink for KafkaSink {
    fn report_backpressure_to(&mut self, signal: Backpressure) {
        self.pressure = signal;
    }

    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        if self.placement.due() {
            self.ask_partitions();
        }
        // Placed by the partition count as it is now, once no write placed by an older
        // count is outstanding (see `placement`).
        let route = self.placement.route().await;
        // The producers this write sends through, as they are now.
        let mut used: Vec<Option<Arc<SinkProducer>>> = vec![None; self.producers.len()];
        let (batch, done) = BatchDelivery::new(events.len(), route);
        for (queued, event) in events.iter().enumerate() {
            let field_key = self
                .settings
                .key_field
                .as_deref()
                .and_then(|field| top_level_field(&event.payload, field));
            let key: Option<&[u8]> = match &field_key {
                Some(k) => Some(k.as_bytes()),
                None => event.key.as_deref(),
            };
            let index = batch.route.producer(key, self.lane);
            let producer = used[index].get_or_insert_with(|| self.producers[index].get());
            let mut record: BaseRecord<'_, [u8], [u8], Arc<BatchDelivery>> =
                BaseRecord::with_opaque_to(&self.settings.topic, Arc::clone(&batch))
                    .payload(event.payload.as_ref());
            if let Some(key) = key {
                record = record.key(key);
            }
            if self.settings.forward_headers && !event.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
                for (name, value) in &event.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value.as_ref()),
                    });
                }
                record = record.headers(headers);
            }
            if let Some(ts) = event.timestamp_ms {
                record = record.timestamp(ts);
            }
            // Wait for room when librdkafka's queue is full: backpressure, not an error.
            let mut backoff = Duration::from_micros(500);
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        producer.context().metrics.in_flight.inc();
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        self.pressure.signal();
                        record = back;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(20));
                    }
                    Err((KafkaError::MessageProduction(code), back)) if is_permanent(code) => {
                        // Refused before it was sent (librdkafka checks the size itself):
                        // this message only; the others go on.
                        drop(back);
                        batch.refuse(
                            Refusal::At(queued),
                            format!("producing to {}: {code}", self.settings.topic),
                        );
                        batch.settle();
                        break;
                    }
                    Err((e, back)) => {
                        // The messages queued so far still report; this one and the rest
                        // never will: the write fails.
                        drop(back);
                        batch.fail(format!("producing to {}: {e}", self.settings.topic));
                        for _ in queued..events.len() {
                            batch.settle();
                        }
                        batch.settle();
                        return Err(PluginError::context(
                            format!("producing to {}", self.settings.topic),
                            e,
                        ));
                    }
                }
            }
        }
        batch.settle();
        let topic = self.settings.topic.clone();
        let shared = Arc::clone(&self.producers);
        Ok(Box::pin(async move {
            let Ok(failures) = done.await else {
                return Err(PluginError::new(format!(
                    "delivery to {topic}: the producer went away before reporting"
                )));
            };
            if failures.timed_out {
                // Which producer's messages timed out is not reported: each one the
                // write used is renewed (unless another lane already has).
                let renewing = tokio::task::spawn_blocking(move || {
                    for (shared, producer) in shared.iter().zip(&used) {
                        if let Some(producer) = producer {
                            shared.renew(producer);
                        }
                    }
                });
                if let Err(e) = renewing.await {
                    warn!(error = %e, "renewing the producer failed");
                }
            } else {
                drop(used);
            }
            if let Some(reason) = failures.transient {
                return Err(PluginError::new(format!("delivery to {topic}: {reason}")));
            }
            if failures.refused.is_empty() {
                return Ok(());
            }
            let refused = locate(&events, failures.refused);
            Err(PluginError::refused(
                format!(
                    "{} of {} records refused by {topic}",
                    refused.len(),
                    events.len()
                ),
                refused,
            ))
        }))
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        for shared in self.producers.iter() {
            let producer = shared.get();
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
                .await
                .map_err(|e| PluginError::context("flushing the producer", e))?
                .map_err(|e| PluginError::context("flushing the producer", e))?;
        }
        Ok(())
    }
}

impl KafkaSink {
    /// Asks Kafka for the topic's partition count, off the async workers, for
    /// [`Placement`]; writes meanwhile go on with what it knew.
    fn ask_partitions(&self) {
        let producer = self.producers[0].get();
        let placement = Arc::clone(&self.placement);
        let topic = self.settings.topic.clone();
        tokio::task::spawn_blocking(move || {
            let count = producer
                .client()
                .fetch_metadata(Some(&topic), METADATA_WAIT)
                .ok()
                .and_then(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .and_then(|t| u32::try_from(t.partitions().len()).ok())
                });
            placement.learn(count);
        });
    }
}

/// The positions of refused messages: a delivery report names its message by content,
/// so it is matched to the first event of the write with that key and payload not yet
/// matched.
fn locate(events: &[Event], refused: Vec<(Refusal, String)>) -> Vec<(usize, String)> {
    let mut taken = vec![false; events.len()];
    let mut out = Vec::with_capacity(refused.len());
    for (which, why) in refused {
        let position = match which {
            Refusal::At(i) => Some(i),
            Refusal::Message(key, payload) => events.iter().enumerate().position(|(i, e)| {
                !taken[i]
                    && e.payload.as_ref() == payload.as_slice()
                    && e.key.as_deref() == key.as_deref()
            }),
        };
        if let Some(i) = position.filter(|i| *i < events.len()) {
            taken[i] = true;
            out.push((i, why));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use salesflow_plugin_api::json::top_level_field as key_from_field;
    use salesflow_plugin_api::{Settings, toml};

    use futures::FutureExt;

    use super::*;
    use crate::placement::partition_of;

    /// A sink (lane 1) writing through `producers` producers made from `config` (the
    /// settings' own, or one a test bends), each reporting to metrics of its own.
    fn sink_with(
        settings: KafkaSinkSettings,
        config: &rdkafka::ClientConfig,
        producers: usize,
    ) -> (KafkaSink, Vec<Arc<SinkMetrics>>, Vec<Arc<SharedProducer>>) {
        sink_of(settings, &vec![config.clone(); producers])
    }

    /// A sink (lane 1) writing through one producer made from each of `configs`.
    fn sink_of(
        settings: KafkaSinkSettings,
        configs: &[rdkafka::ClientConfig],
    ) -> (KafkaSink, Vec<Arc<SinkMetrics>>, Vec<Arc<SharedProducer>>) {
        let producers = configs.len();
        let (metrics, shared): (Vec<_>, Vec<_>) = configs
            .iter()
            .map(|config| {
                let metrics = Arc::new(SinkMetrics::register(
                    &mut prometheus_client::registry::Registry::default(),
                ));
                let context = DeliveryContext {
                    name: "test/sink".into(),
                    metrics: Arc::clone(&metrics),
                };
                let config = config.clone();
                let shared = Arc::new(
                    SharedProducer::new(Box::new(move || {
                        SinkProducer::create(&config, context.clone())
                    }))
                    .unwrap(),
                );
                (metrics, shared)
            })
            .unzip();
        let sink = KafkaSink {
            producers: shared.clone().into(),
            placement: Arc::new(Placement::new(
                producers,
                settings.placement,
                settings.partitioner,
                Duration::from_secs(30),
            )),
            lane: 1,
            settings: Arc::new(settings),
            pressure: Backpressure::default(),
        };
        (sink, metrics, shared)
    }

    /// [`sink_with`] one producer: the sink, its metrics and its shared producer.
    fn sink_over(
        settings: KafkaSinkSettings,
        config: &rdkafka::ClientConfig,
    ) -> (KafkaSink, Arc<SinkMetrics>, Arc<SharedProducer>) {
        let (sink, mut metrics, mut shared) = sink_with(settings, config, 1);
        (sink, metrics.remove(0), shared.remove(0))
    }

    fn settings(text: &str) -> KafkaSinkSettings {
        KafkaSinkSettings::from_table(&toml::from_str(text).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_write_whose_messages_time_out_renews_the_producer_once() {
        // Nothing listens there: the message waits for a broker until it times out.
        let address = salesflow_testkit::free_address().unwrap();
        let settings = settings(&format!(
            "bootstrap_servers = \"{address}\"\ntopic = \"t\"\ndelivery_timeout_ms = 1000"
        ));
        let config = settings.client_config();
        let (mut sink, metrics, shared) = sink_over(settings, &config);
        let first = shared.get();
        let events: Arc<[Event]> = vec![Event::new(&b"{}"[..])].into();
        let error = sink.write(events).await.unwrap().await.unwrap_err();
        assert!(error.to_string().contains("timed out"), "{error}");
        let second = shared.get();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the producer was not renewed"
        );
        assert_eq!(metrics.renewed.get(), 1);
        // A lane still holding the old producer does not renew the new one again.
        shared.renew(&first);
        assert!(Arc::ptr_eq(&second, &shared.get()));
        assert_eq!(metrics.renewed.get(), 1);
    }

    /// The guard against librdkafka's implicit acknowledgements, on the real broker: a
    /// producer with `acks=0` (which the sink's settings refuse, so it is made here
    /// directly) has every message reported delivered without an offset, as an implicit
    /// acknowledgement is; the write must fail, not count as written. The loss itself
    /// needs a partition created between two pipelined produce requests, see
    /// `examples/grow_topic.rs`.
    #[tokio::test]
    async fn a_delivery_reported_without_an_offset_fails_the_write() {
        let topic = salesflow_testkit::unique("sink-unconfirmed");
        salesflow_testkit::create_topic(&topic, 1).await;
        let settings = settings(&format!(
            "bootstrap_servers = \"{}\"\ntopic = \"{topic}\"",
            salesflow_testkit::bootstrap()
        ));
        let mut config = settings.client_config();
        config.set("acks", "0").set("enable.idempotence", "false");
        let (mut sink, metrics, _) = sink_over(settings, &config);
        let events: Arc<[Event]> = vec![Event::new(&b"{}"[..]), Event::new(&b"[]"[..])].into();
        let error = sink.write(events).await.unwrap().await.unwrap_err();
        assert!(
            error.to_string().contains("acknowledged without an offset"),
            "{error}"
        );
        assert_eq!(metrics.delivered.get(), 0);
        assert_eq!(metrics.failed.get(), 2);
        let unconfirmed = metrics
            .errors
            .get_or_create(&crate::metrics::KindLabels {
                kind: "unconfirmed".into(),
            })
            .get();
        assert_eq!(unconfirmed, 2);
        salesflow_testkit::delete_topics(&[&topic]).await;
    }

    /// On the real broker: with two producers, each keyed record of a write goes through
    /// its partition's producer once the sink knows the partition count (each producer
    /// here reports to metrics of its own), the write settles once both have delivered,
    /// and every key's records come back in the order written.
    #[tokio::test]
    async fn keyed_records_go_through_their_partitions_producer_and_keep_their_order() {
        let topic = salesflow_testkit::unique("sink-placement");
        salesflow_testkit::create_topic(&topic, 6).await;
        let settings = settings(&format!(
            "bootstrap_servers = \"{}\"\ntopic = \"{topic}\"\nkey_field = \"cart\"\nproducers = 2",
            salesflow_testkit::bootstrap()
        ));
        let config = settings.client_config();
        let (mut sink, metrics, _) = sink_with(settings, &config, 2);
        let placement = Arc::clone(&sink.placement);
        let event = |cart: usize, seq: usize| {
            Event::new(format!(r#"{{"cart":"cart-{cart}","seq":{seq}}}"#))
        };
        // The first write asks for the partition count; until it is known, the lane's
        // producer (1) takes every record. One record: none of its keys can change
        // producers halfway through it.
        sink.write(vec![event(0, 0)].into())
            .await
            .unwrap()
            .await
            .unwrap();
        let carts: Vec<String> = (0..12).map(|i| format!("cart-{i}")).collect();
        salesflow_testkit::wait_until(
            "the sink to learn the partition count",
            Duration::from_secs(10),
            || async { placement.partitions() == 6 },
        )
        .await;
        let before: Vec<u64> = metrics.iter().map(|m| m.delivered.get()).collect();
        let events: Vec<Event> = (1..=60).map(|seq| event(seq % 12, seq)).collect();
        sink.write(events.into()).await.unwrap().await.unwrap();
        let mut by_producer = [0_u64; 2];
        for seq in 1..=60 {
            by_producer[partition_of(carts[seq % 12].as_bytes(), 6) as usize % 2] += 1;
        }
        assert!(
            by_producer.iter().all(|n| *n > 0),
            "the keys fall on one producer"
        );
        let delivered: Vec<u64> = metrics
            .iter()
            .zip(&before)
            .map(|(m, b)| m.delivered.get() - b)
            .collect();
        assert_eq!(delivered, by_producer.to_vec());

        let records =
            salesflow_testkit::read_all(&topic, Duration::from_secs(20), |r| r.len() >= 61);
        assert_eq!(records.len(), 61);
        let mut seen = std::collections::BTreeMap::<String, Vec<u64>>::new();
        for r in &records {
            assert_eq!(
                u32::try_from(r.partition).unwrap(),
                partition_of(r.key.as_bytes(), 6),
                "{r:?}"
            );
            seen.entry(r.key.clone())
                .or_default()
                .push(r.payload["seq"].as_u64().unwrap());
        }
        assert_eq!(seen.len(), 12);
        for (key, seqs) in &seen {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{key}: {seqs:?}");
        }
        salesflow_testkit::delete_topics(&[&topic]).await;
    }

    /// On the real broker: a key whose first record went through the lane's producer,
    /// before the partition count was known, and whose next one goes through its
    /// partition's producer once it is, keeps its order although the first producer is
    /// the slower. The lane's producer lingers 3 s here, so the first record is still in
    /// it when the count is learnt; the next write waits for it.
    #[tokio::test]
    async fn a_key_keeps_its_order_when_the_partition_count_moves_it_to_another_producer() {
        let topic = salesflow_testkit::unique("sink-moved");
        salesflow_testkit::create_topic(&topic, 6).await;
        let settings = settings(&format!(
            "bootstrap_servers = \"{}\"\ntopic = \"{topic}\"\nkey_field = \"cart\"\nproducers = 2",
            salesflow_testkit::bootstrap()
        ));
        let config = settings.client_config();
        let mut slow = config.clone();
        slow.set("linger.ms", "3000");
        // Lane 1 writes through producer 1 (the slow one) until the count is known.
        let (mut sink, metrics, _) = sink_of(settings, &[config, slow]);
        let placement = Arc::clone(&sink.placement);
        let cart = (0..12)
            .map(|i| format!("cart-{i}"))
            .find(|c| partition_of(c.as_bytes(), 6).is_multiple_of(2))
            .unwrap();
        let event = |seq: usize| Event::new(format!(r#"{{"cart":"{cart}","seq":{seq}}}"#));
        let mut first = sink.write(vec![event(0)].into()).await.unwrap();
        salesflow_testkit::wait_until(
            "the sink to learn the partition count",
            Duration::from_secs(10),
            || async { placement.partitions() == 6 },
        )
        .await;
        assert!(
            (&mut first).now_or_never().is_none(),
            "the first record was delivered before the count was known"
        );
        let second = sink.write(vec![event(1)].into()).await.unwrap();
        first.await.unwrap();
        second.await.unwrap();
        let delivered: Vec<u64> = metrics.iter().map(|m| m.delivered.get()).collect();
        assert_eq!(delivered, [1, 1], "one record through each producer");
        let records =
            salesflow_testkit::read_all(&topic, Duration::from_secs(20), |r| r.len() >= 2);
        let mut seqs: Vec<(i64, u64)> = records
            .iter()
            .map(|r| (r.offset, r.payload["seq"].as_u64().unwrap()))
            .collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
            [0, 1],
            "{records:?}"
        );
        assert!(records.iter().all(|r| r.partition == records[0].partition));
        salesflow_testkit::delete_topics(&[&topic]).await;
    }

    #[test]
    fn refused_messages_are_found_by_content_in_order() {
        use salesflow_plugin_api::Event;

        use super::{Refusal, locate};
        let events = vec![
            Event::new("a").with_key("k"),
            Event::new("b"),
            Event::new("a").with_key("k"),
        ];
        let found = locate(
            &events,
            vec![
                (
                    Refusal::Message(Some(b"k".to_vec()), b"a".to_vec()),
                    "x".into(),
                ),
                (
                    Refusal::Message(Some(b"k".to_vec()), b"a".to_vec()),
                    "y".into(),
                ),
                (Refusal::At(1), "z".into()),
            ],
        );
        assert_eq!(
            found,
            vec![
                (0, "x".to_owned()),
                (1, "z".to_owned()),
                (2, "y".to_owned())
            ]
        );
    }

    #[test]
    fn keys_come_from_top_level_fields() {
        let p = br#"{"order_id":"o1","cart_id":"c-42","nested":{"cart_id":"no"},"n":7}"#;
        assert_eq!(key_from_field(p, "cart_id").as_deref(), Some("c-42"));
        assert_eq!(key_from_field(p, "n").as_deref(), Some("7"));
        assert_eq!(key_from_field(p, "missing"), None);
        assert_eq!(key_from_field(p, "nested"), None);
        assert_eq!(key_from_field(b"not json", "cart_id"), None);
        assert_eq!(key_from_field(br#"["cart_id"]"#, "cart_id"), None);
    }
}
