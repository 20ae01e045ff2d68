//! Healthchecks that ask Kafka what the component needs: metadata for its topics, every
//! partition with a leader.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::metadata::Metadata;
use rdkafka::producer::Producer;
use salesflow_plugin_api::HealthFn;
use salesflow_plugin_api::futures::FutureExt;

use crate::source::Shared;

const TIMEOUT: Duration = Duration::from_secs(3);

fn check_topic(metadata: &Metadata, topic: &str) -> Result<(), String> {
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(format!("topic {topic} is missing"));
    };
    if let Some(e) = t.error() {
        return Err(format!(
            "topic {topic}: {:?}",
            rdkafka::types::RDKafkaErrorCode::from(e)
        ));
    }
    if t.partitions().is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    if let Some(p) = t.partitions().iter().find(|p| p.leader() < 0) {
        return Err(format!("topic {topic} partition {} has no leader", p.id()));
    }
    Ok(())
}

/// The source's topics as its current consumer sees them, and the source's membership of
/// its group: a member stalled outside the group is not ready.
pub(crate) fn consumer_topics(source: Arc<Shared>, topics: Vec<String>) -> HealthFn {
    let topics = Arc::new(topics);
    Arc::new(move || {
        let source = Arc::clone(&source);
        let topics = Arc::clone(&topics);
        async move {
            tokio::task::spawn_blocking(move || {
                if let Some(reason) = source.stalled() {
                    return Err(reason);
                }
                let consumer = source
                    .current_consumer()
                    .ok_or("the consumer has stopped")?;
                for topic in topics.iter() {
                    let metadata = consumer
                        .fetch_metadata(Some(topic), TIMEOUT)
                        .map_err(|e| format!("metadata for {topic}: {e}"))?;
                    check_topic(&metadata, topic)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        }
        .boxed()
    })
}

pub fn producer_topic(producer: Arc<crate::sink::SharedProducer>, topic: String) -> HealthFn {
    Arc::new(move || {
        let producer = producer.get();
        let topic = topic.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(&topic), TIMEOUT)
                    .map_err(|e| format!("metadata for {topic}: {e}"))?;
                check_topic(&metadata, &topic)
            })
            .await
            .map_err(|e| e.to_string())?
        }
        .boxed()
    })
}
