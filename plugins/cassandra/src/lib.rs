//! The cart event store on Cassandra: fenced appends (a cart's next events, written only if
//! the cart is at the version the writer expects), a cart's events for the domain worker,
//! the projections and the Query API, and history by hour for replays. The domain's `cart`
//! stage appends through it; nothing else writes `cart_events`.

mod config;
mod store;

pub use config::{CassandraSettings, ConsistencySetting, SerialSetting};
pub use store::{
    AppendError, EventStore, MAX_APPEND_BYTES, MAX_APPEND_EVENTS, SHARDS, StoreError,
    hour_and_shard,
};

use std::sync::Arc;

use salesflow_plugin_api::BuildContext;
use salesflow_plugin_api::futures::FutureExt;

/// Registers the store's metrics and its readiness check (a prepared read) for a
/// component that uses it.
pub fn register(store: &EventStore, settings: &CassandraSettings, ctx: &mut BuildContext<'_>) {
    ctx.metrics.register(
        "salesflow_cassandra_retries",
        "Event store requests retried after a failure",
        store.retry_counter(),
    );
    ctx.metrics.register(
        "salesflow_cassandra_append_conflicts",
        "Appends refused because the cart was not at the expected version (another writer appended first)",
        store.conflict_counter(),
    );
    let check = store.clone();
    ctx.add_healthcheck(
        &format!("cassandra keyspace {}", settings.keyspace),
        Arc::new(move || {
            let store = check.clone();
            async move { store.healthcheck().await.map_err(|e| e.to_string()) }.boxed()
        }),
    );
}
