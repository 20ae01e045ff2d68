//! `type = "cassandra"`: the event store sink. Each event is a `CartUpdated` (as the
//! domain worker emits); its event is written to `cart_events` and listed in
//! `events_by_hour`. [`EventStore`] also serves the reads: a cart's events for the
//! domain worker and the Query API, and history by hour for replays.

mod config;
mod store;

pub use config::CassandraSettings;
pub use store::{EventStore, SHARDS, StoreError, hour_and_shard};

use std::sync::Arc;

use salesflow_plugin_api::futures::FutureExt;
use salesflow_plugin_api::{
    BuildContext, Component, ComponentKind, ConfigError, Event, Plugin, PluginError, Settings,
    Sink, SinkFactory, WriteFuture, async_trait, schemars, toml,
};
use salesflow_sales::CartEvent;
use serde::Deserialize;

pub struct CassandraSinkPlugin;

#[async_trait]
impl Plugin for CassandraSinkPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Sink
    }

    fn name(&self) -> &'static str {
        "cassandra"
    }

    fn summary(&self) -> &'static str {
        "Appends cart events to the Cassandra event store: idempotent upserts, one unlogged \
         batch per partition, bounded concurrency, retries with backoff"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("cassandra")
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(CassandraSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        CassandraSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = CassandraSettings::from_table(&settings)
            .map_err(|e| PluginError::context("cassandra settings", e))?;
        let store = EventStore::connect(&settings)
            .await
            .map_err(|e| PluginError::new(e.to_string()))?;
        ctx.metrics.register(
            "salesflow_cassandra_write_retries",
            "Event store partition writes retried after a failure",
            store.retry_counter(),
        );
        let check = store.clone();
        ctx.add_healthcheck(
            &format!("cassandra keyspace {}", settings.keyspace),
            Arc::new(move || {
                let store = check.clone();
                async move { store.healthcheck().await.map_err(|e| e.to_string()) }.boxed()
            }),
        );
        Ok(Component::Sink(Arc::new(Factory { store })))
    }
}

struct Factory {
    store: EventStore,
}

impl SinkFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Sink>, PluginError> {
        Ok(Box::new(EventStoreSink {
            store: self.store.clone(),
        }))
    }
}

/// What the sink reads of each payload: the event of a `CartUpdated`.
#[derive(Deserialize)]
struct Updated {
    event: CartEvent,
}

struct EventStoreSink {
    store: EventStore,
}

#[async_trait]
impl Sink for EventStoreSink {
    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        let mut cart_events = Vec::with_capacity(events.len());
        for event in events.iter() {
            let updated: Updated = serde_json::from_slice(&event.payload)
                .map_err(|e| PluginError::context("the event store takes cart updates", e))?;
            cart_events.push(updated.event);
        }
        let store = self.store.clone();
        Ok(async move {
            store
                .append(&cart_events)
                .await
                .map_err(|e| PluginError::new(e.to_string()))
        }
        .boxed())
    }
}
