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

use salesflow_plugin_api::futures::FutureExt;
use salesflow_plugin_api::{BuildContext, async_trait};
use salesflow_sales::CartEvent;
use uuid::Uuid;

/// What the domain's cart stage needs of an event store: a cart's events, and fenced
/// appends. [`EventStore`] is the real one (Cassandra); the cart stage's own tests give it
/// one in memory that lets them play a second writer.
#[async_trait]
pub trait CartLog: Send + Sync + 'static {
    /// Every event of a cart, in order.
    async fn load(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError>;
    /// The same, seeing every append that was applied (after a conflict).
    async fn load_serial(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError>;
    /// Writes the `events_by_hour` rows of events of any carts (see [`EventStore::list`]).
    async fn list(&self, events: &[&CartEvent]) -> Result<(), StoreError>;
    /// Appends the cart's next events if it is at `expected`, once [`CartLog::list`] has
    /// listed them (see [`EventStore::append_listed`]).
    async fn append_listed(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError>;
    /// Lists, then appends (see [`EventStore::append`]).
    async fn append(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError> {
        store::check_sequence(cart_id, expected, events)?;
        self.list(&events.iter().collect::<Vec<_>>()).await?;
        self.append_listed(cart_id, expected, events).await
    }
    /// One event, by number.
    async fn event(&self, cart_id: Uuid, seq: u64) -> Result<Option<CartEvent>, StoreError>;
}

#[async_trait]
impl CartLog for EventStore {
    async fn load(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        EventStore::load(self, cart_id).await
    }
    async fn load_serial(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        EventStore::load_serial(self, cart_id).await
    }
    async fn list(&self, events: &[&CartEvent]) -> Result<(), StoreError> {
        EventStore::list(self, events).await
    }
    async fn append_listed(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError> {
        EventStore::append_listed(self, cart_id, expected, events).await
    }
    async fn event(&self, cart_id: Uuid, seq: u64) -> Result<Option<CartEvent>, StoreError> {
        EventStore::event(self, cart_id, seq).await
    }
}

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
        "Appends refused because the cart was not at the expected version (another writer appended first, or a cart the domain took to be new existed)",
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
