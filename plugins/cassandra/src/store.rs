//! The event store on Cassandra (`schemas/cql/002-event-store.cql`).
//!
//! Writes are idempotent upserts keyed by (cart, bucket, seq), grouped into one unlogged
//! batch per partition (a single-partition batch is one mutation on one replica set; the
//! driver routes it to that partition's replicas), run with bounded concurrency, each
//! retried with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures::{FutureExt, StreamExt, TryStreamExt};
use salesflow_sales::CartEvent;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tracing::warn;
use uuid::Uuid;

use crate::config::CassandraSettings;

/// Shards per hour of `events_by_hour`: an hour's writes spread over this many partitions.
pub const SHARDS: u32 = 16;

/// The hour and shard an event is listed under for replays.
pub fn hour_and_shard(event: &CartEvent) -> (DateTime<Utc>, i32) {
    let hour = event
        .recorded_at
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or(event.recorded_at);
    let shard = i32::try_from(event.cart_id.as_u128() % u128::from(SHARDS)).unwrap_or(0);
    (hour, shard)
}

/// A connected event store.
#[derive(Clone)]
pub struct EventStore {
    session: Arc<Session>,
    insert_event: PreparedStatement,
    insert_hour: PreparedStatement,
    select_bucket: PreparedStatement,
    select_hour: PreparedStatement,
    settings: Arc<CassandraSettings>,
    /// Counts retried partition writes (for the sink's metrics).
    retries: prometheus_client::metrics::counter::Counter,
}

#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn err(context: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{context}: {e}"))
}

impl EventStore {
    pub async fn connect(settings: &CassandraSettings) -> Result<Self, StoreError> {
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .request_timeout(Some(settings.request_timeout))
            .build()
            .into_handle();
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.nodes)
            .connection_timeout(settings.request_timeout)
            .default_execution_profile_handle(profile);
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.user(user, password.expose());
        }
        let session = builder.build().await.map_err(|e| {
            err(
                &format!("connecting to Cassandra at {}", settings.nodes.join(",")),
                e,
            )
        })?;
        let ks = &settings.keyspace;
        let prepare = |cql: String| {
            let session = &session;
            async move {
                let mut statement = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| err(&format!("preparing {cql}"), e))?;
                statement.set_is_idempotent(true);
                Ok::<_, StoreError>(statement)
            }
        };
        let insert_event = prepare(format!(
            "INSERT INTO {ks}.cart_events (cart_id, bucket, seq, order_id, created_at, recorded_at, event) \
             VALUES (?, ?, ?, ?, ?, ?, ?)"
        ))
        .await?;
        let insert_hour = prepare(format!(
            "INSERT INTO {ks}.events_by_hour (hour, shard, recorded_at, cart_id, seq) VALUES (?, ?, ?, ?, ?)"
        ))
        .await?;
        let select_bucket = prepare(format!(
            "SELECT event FROM {ks}.cart_events WHERE cart_id = ? AND bucket = ?"
        ))
        .await?;
        let select_hour = prepare(format!(
            "SELECT cart_id, seq FROM {ks}.events_by_hour WHERE hour = ? AND shard = ?"
        ))
        .await?;
        Ok(Self {
            session: Arc::new(session),
            insert_event,
            insert_hour,
            select_bucket,
            select_hour,
            settings: Arc::new(settings.clone()),
            retries: prometheus_client::metrics::counter::Counter::default(),
        })
    }

    /// The counter of retried writes, to register as a metric.
    pub fn retry_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.retries.clone()
    }

    /// Appends events (idempotently: writing one again changes nothing).
    pub async fn append(&self, events: &[CartEvent]) -> Result<(), StoreError> {
        type EventRow = (Uuid, i32, i64, Uuid, DateTime<Utc>, DateTime<Utc>, String);
        type HourRow = (DateTime<Utc>, i32, DateTime<Utc>, Uuid, i64);
        let mut by_cart: BTreeMap<(Uuid, i32), Vec<EventRow>> = BTreeMap::new();
        let mut by_hour: BTreeMap<(DateTime<Utc>, i32), Vec<HourRow>> = BTreeMap::new();
        for event in events {
            let seq = i64::try_from(event.seq).map_err(|e| err("seq", e))?;
            let json = serde_json::to_string(event).map_err(|e| err("encoding an event", e))?;
            by_cart
                .entry((event.cart_id, event.bucket()))
                .or_default()
                .push((
                    event.cart_id,
                    event.bucket(),
                    seq,
                    event.order.order_id,
                    event.order.created_at,
                    event.recorded_at,
                    json,
                ));
            let (hour, shard) = hour_and_shard(event);
            by_hour.entry((hour, shard)).or_default().push((
                hour,
                shard,
                event.recorded_at,
                event.cart_id,
                seq,
            ));
        }
        let mut writes = Vec::new();
        for rows in by_cart.into_values() {
            writes.push(self.write_partition(&self.insert_event, rows).boxed());
        }
        for rows in by_hour.into_values() {
            writes.push(self.write_partition(&self.insert_hour, rows).boxed());
        }
        futures::stream::iter(writes)
            .buffer_unordered(self.settings.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// One unlogged single-partition batch, retried with exponential backoff.
    async fn write_partition<V>(
        &self,
        statement: &PreparedStatement,
        rows: Vec<V>,
    ) -> Result<(), StoreError>
    where
        V: scylla::serialize::row::SerializeRow + Send + Sync,
    {
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(statement.clone());
        }
        batch.set_is_idempotent(true);
        let deadline = tokio::time::Instant::now() + self.settings.retry_timeout;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.session.batch(&batch, &rows).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    self.retries.inc();
                    warn!(attempt, error = %e, "event store write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(err(
                        &format!("writing to the event store ({attempt} attempts)"),
                        e,
                    ));
                }
            }
        }
    }

    /// [`EventStore::load`], retried with backoff for up to the retry timeout (the domain
    /// worker waits out an outage rather than fail).
    pub async fn load_retrying(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.settings.retry_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.load(cart_id).await {
                Ok(events) => return Ok(events),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    self.retries.inc();
                    warn!(error = %e, "reading a cart failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every event of a cart, in order.
    pub async fn load(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        let mut events = Vec::new();
        let mut bucket = 0;
        loop {
            let rows = self
                .session
                .execute_unpaged(&self.select_bucket, (cart_id, bucket))
                .await
                .map_err(|e| err(&format!("reading cart {cart_id}"), e))?
                .into_rows_result()
                .map_err(|e| err(&format!("reading cart {cart_id}"), e))?;
            let mut count = 0;
            for row in rows
                .rows::<(String,)>()
                .map_err(|e| err("reading rows", e))?
            {
                let (json,) = row.map_err(|e| err("reading a row", e))?;
                let event: CartEvent = serde_json::from_str(&json)
                    .map_err(|e| err(&format!("decoding an event of cart {cart_id}"), e))?;
                events.push(event);
                count += 1;
            }
            if count == 0 {
                break;
            }
            bucket += 1;
        }
        // Rows come in seq order within a bucket and buckets in order. A gap can only be
        // a write interrupted across a bucket boundary (each partition's batch is atomic):
        // the events after it were never acknowledged, their orders are redelivered and
        // decided again into the same numbers. The cart is what precedes the gap.
        if let Some(gap) = events
            .iter()
            .enumerate()
            .position(|(i, e)| e.seq != i as u64 + 1)
        {
            warn!(%cart_id, expected = gap + 1, found = events[gap].seq, "gap in a cart's events; later events ignored until rewritten");
            events.truncate(gap);
        }
        Ok(events)
    }

    /// The (hour, shard) partitions of `events_by_hour`, oldest hour first.
    pub async fn hours(&self) -> Result<Vec<(DateTime<Utc>, i32)>, StoreError> {
        let cql = format!(
            "SELECT DISTINCT hour, shard FROM {}.events_by_hour",
            self.settings.keyspace
        );
        let mut pager = self
            .session
            .query_iter(cql, &[])
            .await
            .map_err(|e| err("listing hours", e))?
            .rows_stream::<(DateTime<Utc>, i32)>()
            .map_err(|e| err("listing hours", e))?;
        let mut hours = Vec::new();
        while let Some(row) = pager.next().await {
            hours.push(row.map_err(|e| err("listing hours", e))?);
        }
        hours.sort();
        Ok(hours)
    }

    /// The carts (and event numbers) recorded in one hour shard, in time order.
    pub async fn carts_in(
        &self,
        hour: DateTime<Utc>,
        shard: i32,
    ) -> Result<Vec<(Uuid, u64)>, StoreError> {
        let mut pager = self
            .session
            .execute_iter(self.select_hour.clone(), (hour, shard))
            .await
            .map_err(|e| err("reading an hour", e))?
            .rows_stream::<(Uuid, i64)>()
            .map_err(|e| err("reading an hour", e))?;
        let mut out = Vec::new();
        while let Some(row) = pager.next().await {
            let (cart, seq) = row.map_err(|e| err("reading an hour", e))?;
            out.push((cart, u64::try_from(seq).unwrap_or_default()));
        }
        Ok(out)
    }

    /// Does what the store does: a prepared read on the keyspace.
    pub async fn healthcheck(&self) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.select_bucket, (Uuid::nil(), 0_i32))
            .await
            .map(drop)
            .map_err(|e| err("prepared read on the event store", e))
    }
}
