//! `type = "kafka"`: the Kafka source and the Kafka sink.

mod config;
pub mod dlq;
mod group;
mod health;
mod metrics;
mod placement;
mod sink;
mod source;

pub use config::{
    Compression, KafkaConnection, KafkaSinkSettings, KafkaSourceSettings, OffsetReset, Partitioner,
    redacted,
};

/// Adds the kafka source and sink, and `salesflow dlq`.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(KafkaSourcePlugin));
    registrar.plugin(Arc::new(KafkaSinkPlugin));
    registrar.command(Arc::new(dlq::DlqCommand));
}

use std::sync::Arc;
use std::time::Duration;

use salesflow_plugin_api::{
    BuildContext, Component, ComponentKind, ConfigError, Plugin, PluginError, Settings, Sink,
    SinkFactory, async_trait, schemars, toml,
};
use tracing::info;

/// The Kafka source plugin.
pub struct KafkaSourcePlugin;

#[async_trait]
impl Plugin for KafkaSourcePlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Source
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn summary(&self) -> &'static str {
        "Consumes topics as a consumer group member: partitions in parallel, each in order; \
         offsets committed only after every sink acknowledged"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("kafka")
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(KafkaSourceSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        KafkaSourceSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = KafkaSourceSettings::from_table(&settings)
            .map_err(|e| PluginError::context("kafka source settings", e))?;
        info!(
            pipeline = ctx.pipeline,
            component = ctx.component,
            bootstrap = %settings.bootstrap_servers,
            properties = %redacted(&settings.properties),
            "building kafka source"
        );
        let topics = settings.topics.clone();
        let metrics = Arc::new(metrics::SourceMetrics::register(ctx.metrics));
        let source = source::KafkaSource::new(
            format!("{}/{}", ctx.pipeline, ctx.component),
            settings,
            metrics,
        )?;
        ctx.add_healthcheck(
            &format!("kafka topics {}", topics.join(",")),
            health::consumer_topics(Arc::clone(&source.shared), topics),
        );
        Ok(Component::Source(Box::new(source)))
    }
}

/// The Kafka sink plugin.
pub struct KafkaSinkPlugin;

#[async_trait]
impl Plugin for KafkaSinkPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Sink
    }

    fn name(&self) -> &'static str {
        "kafka"
    }

    fn summary(&self) -> &'static str {
        "Produces to a topic with an idempotent producer and acks=all; a batch is \
         acknowledged once every message has its delivery report"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("kafka")
    }

    /// The producer batches what it is handed and bounds itself (its queue, its requests
    /// in flight, back-pressure as a full queue), so round trips say little about room:
    /// how many writes to hand it depends on what a write is (see pipeline.toml: an HTTP
    /// request awaiting its ack, or a stage's batch), and each holds its events in memory
    /// until acknowledged.
    fn default_concurrency(&self) -> Option<usize> {
        Some(4)
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(KafkaSinkSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        KafkaSinkSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = KafkaSinkSettings::from_table(&settings)
            .map_err(|e| PluginError::context("kafka sink settings", e))?;
        info!(
            pipeline = ctx.pipeline,
            component = ctx.component,
            topic = %settings.topic,
            properties = %redacted(&settings.properties),
            "building kafka sink"
        );
        let config = settings.client_config();
        let context = sink::DeliveryContext {
            name: format!("{}/{}", ctx.pipeline, ctx.component),
            metrics: Arc::new(metrics::SinkMetrics::register(ctx.metrics)),
        };
        let producers = (0..settings.producers)
            .map(|_| {
                let (config, context) = (config.clone(), context.clone());
                sink::SharedProducer::new(Box::new(move || {
                    sink::SinkProducer::create(&config, context.clone())
                }))
                .map(Arc::new)
                .map_err(|e| PluginError::context("creating the Kafka producer", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Every producer reaches the same brokers: the first one answers for the topic.
        ctx.add_healthcheck(
            &format!("kafka topic {}", settings.topic),
            health::producer_topic(Arc::clone(&producers[0]), settings.topic.clone()),
        );
        let placement = Arc::new(placement::Placement::new(
            producers.len(),
            settings.placement,
            settings.partitioner,
            Duration::from_millis(u64::from(settings.metadata_refresh_ms)),
        ));
        Ok(Component::Sink(Arc::new(SinkMaker {
            producers: producers.into(),
            placement,
            settings: Arc::new(settings),
        })))
    }
}

struct SinkMaker {
    /// `producers` of them (at least one), every lane writing through each.
    producers: Arc<[Arc<sink::SharedProducer>]>,
    placement: Arc<placement::Placement>,
    settings: Arc<KafkaSinkSettings>,
}

impl SinkFactory for SinkMaker {
    fn create(&self, lane: usize) -> Result<Box<dyn Sink>, PluginError> {
        Ok(Box::new(sink::KafkaSink {
            producers: Arc::clone(&self.producers),
            placement: Arc::clone(&self.placement),
            lane,
            settings: Arc::clone(&self.settings),
            pressure: salesflow_plugin_api::Backpressure::default(),
        }))
    }
}
