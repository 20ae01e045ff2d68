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
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use salesflow_plugin_api::json::top_level_field;
use salesflow_plugin_api::{Backpressure, Event, PluginError, Sink, WriteFuture, async_trait};
use tokio::sync::oneshot;
use tracing::warn;

use crate::config::KafkaSinkSettings;
use crate::metrics::SinkMetrics;

/// The producer every lane of a sink shares.
pub type SinkProducer = ThreadedProducer<DeliveryContext>;

/// One write's outstanding deliveries: every message of the batch holds a reference, and
/// the last delivery report completes the write.
pub struct BatchDelivery {
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
    fn new(messages: usize) -> (Arc<Self>, oneshot::Receiver<Failures>) {
        let (tx, rx) = oneshot::channel();
        let delivery = Arc::new(Self {
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
                _ => batch.fail(e.to_string()),
            }
        } else {
            self.metrics.delivered.inc();
        }
        batch.settle();
    }
}

/// One lane's handle on the shared producer.
pub struct KafkaSink {
    pub(crate) producer: Arc<SinkProducer>,
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
        let (batch, done) = BatchDelivery::new(events.len());
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
                match self.producer.send(record) {
                    Ok(()) => {
                        self.producer.context().metrics.in_flight.inc();
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
        Ok(Box::pin(async move {
            let Ok(failures) = done.await else {
                return Err(PluginError::new(format!(
                    "delivery to {topic}: the producer went away before reporting"
                )));
            };
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
        let producer = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| PluginError::context("flushing the producer", e))?
            .map_err(|e| PluginError::context("flushing the producer", e))
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
    use salesflow_plugin_api::json::top_level_field as key_from_field;

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
