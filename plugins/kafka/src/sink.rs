//! The Kafka sink: an idempotent producer with `acks=all`. A write enqueues the batch's
//! messages in order (waiting while the producer queue is full) and its future resolves
//! once every message has its delivery report: the batch is acknowledged only then.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use salesflow_plugin_api::json::top_level_field;
use salesflow_plugin_api::{Event, PluginError, Sink, WriteFuture, async_trait};

use crate::config::KafkaSinkSettings;

/// One lane's handle on the shared producer.
pub struct KafkaSink {
    pub(crate) producer: FutureProducer,
    pub(crate) settings: Arc<KafkaSinkSettings>,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        let mut deliveries = Vec::with_capacity(events.len());
        for event in events.iter() {
            let field_key = self
                .settings
                .key_field
                .as_deref()
                .and_then(|field| top_level_field(&event.payload, field));
            let key: Option<&[u8]> = match &field_key {
                Some(k) => Some(k.as_bytes()),
                None => event.key.as_deref(),
            };
            let headers = if self.settings.forward_headers && !event.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
                for (name, value) in &event.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value.as_ref()),
                    });
                }
                Some(headers)
            } else {
                None
            };
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.settings.topic).payload(event.payload.as_ref());
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            if let Some(ts) = event.timestamp_ms {
                record = record.timestamp(ts);
            }
            // Wait for room when librdkafka's queue is full: backpressure, not an error.
            let mut backoff = Duration::from_millis(1);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(PluginError::context(
                            format!("producing to {}", self.settings.topic),
                            e,
                        ));
                    }
                }
            }
        }
        let topic = self.settings.topic.clone();
        Ok(Box::pin(async move {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        return Err(PluginError::context(format!("delivery to {topic}"), e));
                    }
                    Err(_) => {
                        return Err(PluginError::new(format!(
                            "delivery to {topic}: the producer went away before reporting"
                        )));
                    }
                }
            }
            Ok(())
        }))
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))
        })
        .await
        .map_err(|e| PluginError::context("flushing the producer", e))?
        .map_err(|e| PluginError::context("flushing the producer", e))
    }
}

#[cfg(test)]
mod tests {
    use salesflow_plugin_api::json::top_level_field as key_from_field;

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
