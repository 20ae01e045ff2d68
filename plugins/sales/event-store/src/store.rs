//! The event store on Cassandra (`schemas/cql/002-event-store.cql`).
//!
//! Appends are fenced: an append states the version the cart is expected to be at, and
//! its events (seq = version + 1, + 2, ...) are written with `INSERT ... IF NOT EXISTS`
//! in one conditional batch per partition (a lightweight transaction). Events of a cart
//! are numbered densely from 1, so "seq version + 1 does not exist yet" holds exactly when
//! the cart is at `version`: a second writer of the same cart, whatever it read, can never
//! overwrite an event — its append answers [`AppendError::Conflict`]. `cart_events` rows
//! are written only this way (never mixed with plain writes, whose timestamps differ from
//! Paxos ones).
//!
//! An append that crosses a bucket boundary (or is too large for one mutation) is split
//! into several conditional batches, written in order: each extends the stored prefix, so
//! the store never holds a gap; if a later one conflicts, the earlier ones stay, and the
//! caller reloads the cart anyway.
//!
//! `events_by_hour` rows are written first, plainly (idempotent upserts, one unlogged
//! batch per `(hour, shard)` partition: [`EventStore::list`], which the domain calls once
//! for a whole batch of carts before their [`EventStore::append_listed`]): an append that
//! then conflicts leaves rows naming a cart that exists, with seqs it may not have yet (a
//! cart the domain took to be new appends from seq 1) — replays read that table only to
//! find which carts to rebuild, once each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt};
use salesflow_plugin_api::RetryPolicy;
use salesflow_sales::{BUCKET_SIZE, CartEvent, bucket_of};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::OnceCell;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::CassandraSettings;

/// Shards per hour of `events_by_hour`: an hour's writes spread over this many partitions.
pub const SHARDS: u32 = 16;

/// Most events in one conditional batch.
pub const MAX_APPEND_EVENTS: usize = 100;
/// Most bytes of event JSON in one conditional batch: far below Cassandra's largest
/// mutation (half the commit log segment, 16 MiB by default).
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// The hour and shard an event is listed under for replays.
pub fn hour_and_shard(event: &CartEvent) -> (DateTime<Utc>, i32) {
    let hour = event
        .recorded_at
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or(event.recorded_at);
    let shard = i32::try_from(event.cart_id.as_u128() % u128::from(SHARDS)).unwrap_or(0);
    (hour, shard)
}

/// The event store. Connected now ([`EventStore::connect`]), or at first use when
/// Cassandra did not answer at the start ([`EventStore::open`]): every request waits for
/// the connection within its retry timeout, as it waits out a node that is down.
#[derive(Clone)]
pub struct EventStore {
    /// The session and its prepared statements, once made: made once, by the first
    /// request or readiness check that finds Cassandra answering.
    connection: Arc<OnceCell<Connection>>,
    settings: Arc<CassandraSettings>,
    /// Counts retried requests (for metrics).
    retries: prometheus_client::metrics::counter::Counter,
    /// Counts appends refused because the cart was not at the expected version.
    conflicts: prometheus_client::metrics::counter::Counter,
}

/// A session to Cassandra and the store's prepared statements.
struct Connection {
    session: Session,
    insert_event: PreparedStatement,
    insert_hour: PreparedStatement,
    select_bucket: PreparedStatement,
    select_bucket_serial: PreparedStatement,
    select_event: PreparedStatement,
    select_hour: PreparedStatement,
}

/// A failure of the event store (after its retries), with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct StoreError {
    context: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
    corrupt: bool,
}

impl StoreError {
    fn new(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            context: context.into(),
            source: source.into(),
            corrupt: false,
        }
    }

    /// The stored data is not what salesflow writes (a cart's events that are not seq
    /// 1, 2, 3, ..., an event that does not decode): reading again cannot help.
    pub fn is_corrupt(&self) -> bool {
        self.corrupt
    }

    fn corrupt(mut self) -> Self {
        self.corrupt = true;
        self
    }

    /// A stored history that is not what salesflow writes (for other implementations of
    /// [`crate::CartLog`]).
    pub fn corrupt_history(context: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(context, why.into()).corrupt()
    }

    /// A store that could not answer (for other implementations of [`crate::CartLog`]).
    pub fn unavailable(context: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(context, why.into())
    }
}

fn err(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::new(context, e)
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The cart is not at the expected version: another writer appended to it. Nothing
    /// was overwritten; reload the cart and decide again.
    #[error("cart {cart_id} is not at version {expected}: another writer appended to it")]
    Conflict { cart_id: Uuid, expected: u64 },
    /// The events are not the cart's next ones (a caller's mistake; nothing was written).
    #[error("cart {cart_id}: {why}")]
    Invalid { cart_id: Uuid, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

type EventRow = (Uuid, i32, i64, Uuid, DateTime<Utc>, DateTime<Utc>, String);
type HourRow = (DateTime<Utc>, i32, DateTime<Utc>, Uuid, i64);

impl Connection {
    /// One attempt at a session and the prepared statements. Transient unless Cassandra
    /// refused a statement or the settings cannot work. A login Cassandra refuses is
    /// transient here: the driver reports it inside its connection errors, so the
    /// process stays not ready, saying why, rather than exiting.
    async fn open(settings: &CassandraSettings) -> Result<Self, Failure> {
        // A local data centre: its replicas only (LOCAL_QUORUM means that data centre's
        // quorum). A cluster of one data centre may still use SimpleStrategy, which the
        // driver cannot place in data centres: there the preference alone is kept.
        let profile = |datacenter: Option<&str>, failover: bool| {
            let mut policy = DefaultPolicy::builder().token_aware(true);
            if let Some(dc) = datacenter {
                policy = policy
                    .prefer_datacenter(dc.to_owned())
                    .permit_dc_failover(failover);
            }
            ExecutionProfile::builder()
                .consistency(settings.consistency.to_driver())
                .serial_consistency(Some(settings.serial_consistency.to_driver()))
                .request_timeout(Some(settings.request_timeout))
                .load_balancing_policy(policy.build())
                .build()
        };
        let mut builder = SessionBuilder::new()
            .known_nodes(&settings.nodes)
            .connection_timeout(settings.request_timeout)
            .default_execution_profile_handle(
                profile(settings.local_datacenter.as_deref(), false).into_handle(),
            );
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.user(user, password.expose());
        }
        let session = builder.build().await.map_err(Failure::session)?;
        if settings.local_datacenter.is_none() {
            // DC-aware routing by default: the data centre of the contact points, as the
            // drivers that infer it do.
            let (dc, only_one) = local_datacenter(&session, &settings.nodes)
                .await
                .map_err(Failure::lasting)?;
            info!(datacenter = %dc, "Cassandra local data centre (from the contact points)");
            session
                .get_default_execution_profile_handle()
                .clone()
                .map_to_another_profile(profile(Some(&dc), only_one));
        }
        let ks = &settings.keyspace;
        let prepare = |cql: String, idempotent: bool| {
            let session = &session;
            async move {
                let mut statement = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| Failure::prepare(&cql, &e))?;
                statement.set_is_idempotent(idempotent);
                Ok::<_, Failure>(statement)
            }
        };
        // Conditional: retried by `append` itself, which reads the outcome.
        let insert_event = prepare(
            format!(
                "INSERT INTO {ks}.cart_events (cart_id, bucket, seq, order_id, created_at, recorded_at, event) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ),
            false,
        )
        .await?;
        let insert_hour = prepare(
            format!(
                "INSERT INTO {ks}.events_by_hour (hour, shard, recorded_at, cart_id, seq) VALUES (?, ?, ?, ?, ?)"
            ),
            true,
        )
        .await?;
        let select_bucket = prepare(
            format!("SELECT event FROM {ks}.cart_events WHERE cart_id = ? AND bucket = ?"),
            true,
        )
        .await?;
        let mut select_bucket_serial = select_bucket.clone();
        select_bucket_serial.set_consistency(settings.serial_consistency.as_read());
        let select_event = prepare(
            format!(
                "SELECT event FROM {ks}.cart_events WHERE cart_id = ? AND bucket = ? AND seq = ?"
            ),
            true,
        )
        .await?;
        let select_hour = prepare(
            format!("SELECT cart_id, seq FROM {ks}.events_by_hour WHERE hour = ? AND shard = ?"),
            true,
        )
        .await?;
        Ok(Self {
            session,
            insert_event,
            insert_hour,
            select_bucket,
            select_bucket_serial,
            select_event,
            select_hour,
        })
    }
}

impl EventStore {
    /// Connects now: fails when Cassandra does not answer (for commands that run once).
    pub async fn connect(settings: &CassandraSettings) -> Result<Self, StoreError> {
        match Connection::open(settings).await {
            Ok(connection) => Ok(Self::with(settings, Some(connection))),
            Err(e) => Err(err(&connecting(settings), e)),
        }
    }

    /// Connects now if Cassandra answers, else at first use: a pipeline starts (not
    /// ready, saying why) while Cassandra is away. A refusal (a statement Cassandra
    /// refuses, such as a table that does not exist; settings that cannot work) still
    /// fails, with the reason.
    pub async fn open(settings: &CassandraSettings) -> Result<Self, StoreError> {
        match Connection::open(settings).await {
            Ok(connection) => Ok(Self::with(settings, Some(connection))),
            Err(e) if e.transient => {
                warn!(
                    error = %e,
                    nodes = %settings.nodes.join(","),
                    "Cassandra is unavailable; the event store will connect at first use"
                );
                Ok(Self::with(settings, None))
            }
            Err(e) => Err(err(&connecting(settings), e)),
        }
    }

    fn with(settings: &CassandraSettings, connection: Option<Connection>) -> Self {
        Self {
            connection: Arc::new(OnceCell::new_with(connection)),
            settings: Arc::new(settings.clone()),
            retries: prometheus_client::metrics::counter::Counter::default(),
            conflicts: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    /// The connection, made now if it was not yet: one attempt at a time; a transient
    /// failure is tried again with the retry policy, like any request.
    async fn connection(&self) -> Result<&Connection, StoreError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection);
        }
        self.retrying(&connecting(&self.settings), || self.connect_once())
            .await
    }

    async fn connect_once(&self) -> Result<&Connection, Failure> {
        self.connection
            .get_or_try_init(|| Connection::open(&self.settings))
            .await
    }

    /// The counter of retried requests, to register as a metric.
    pub fn retry_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.retries.clone()
    }

    /// The counter of conflicting appends, to register as a metric.
    pub fn conflict_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.conflicts.clone()
    }

    /// Appends a cart's next events, if the cart is at version `expected`: `events` are
    /// that cart's, numbered `expected + 1` on without a gap. On
    /// [`AppendError::Conflict`] nothing of this append was written over anything (some
    /// leading events may have been appended when the append spans several batches).
    pub async fn append(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError> {
        check_sequence(cart_id, expected, events)?;
        if events.is_empty() {
            return Ok(());
        }
        self.list(&events.iter().collect::<Vec<_>>()).await?;
        self.write_events(cart_id, expected, events).await
    }

    /// Writes the `events_by_hour` rows of `events`, of any carts: one unlogged batch per
    /// (hour, shard) partition (at most [`MAX_APPEND_EVENTS`] rows each), so the domain
    /// lists a whole batch of orders in a few requests instead of one per cart. Plain,
    /// idempotent upserts; a row may name a seq its cart never gets (the append that
    /// follows may conflict), which replays tolerate.
    pub async fn list(&self, events: &[&CartEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|event| {
                let seq = i64::try_from(event.seq).map_err(|e| err("seq", e))?;
                let (hour, shard) = hour_and_shard(event);
                Ok((hour, shard, event.recorded_at, event.cart_id, seq))
            })
            .collect::<Result<Vec<HourRow>, StoreError>>()?;
        let batches = hour_batches(rows);
        futures::stream::iter(batches)
            .map(|rows| self.write_hour(rows))
            .buffer_unordered(self.settings.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// [`EventStore::append`] of events whose `events_by_hour` rows [`EventStore::list`]
    /// has already written: the conditional batches only.
    pub async fn append_listed(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError> {
        check_sequence(cart_id, expected, events)?;
        if events.is_empty() {
            return Ok(());
        }
        self.write_events(cart_id, expected, events).await
    }

    /// The conditional batches of a checked, non-empty append.
    async fn write_events(
        &self,
        cart_id: Uuid,
        expected: u64,
        events: &[CartEvent],
    ) -> Result<(), AppendError> {
        let mut rows: Vec<(EventRow, usize)> = Vec::with_capacity(events.len());
        for event in events {
            let seq = i64::try_from(event.seq).map_err(|e| err("seq", e))?;
            let json = serde_json::to_string(event).map_err(|e| err("encoding an event", e))?;
            let size = json.len();
            rows.push((
                (
                    cart_id,
                    event.bucket(),
                    seq,
                    event.order.order_id,
                    event.order.created_at,
                    event.recorded_at,
                    json,
                ),
                size,
            ));
        }
        for chunk in chunks(rows) {
            if !self.write_conditional(chunk).await? {
                self.conflicts.inc();
                return Err(AppendError::Conflict { cart_id, expected });
            }
        }
        Ok(())
    }

    /// One conditional single-partition batch; whether it was applied. Retried with
    /// backoff on errors: a retry after an uncertain outcome (a timeout) may find its own
    /// rows and answer "not applied", which the caller resolves by reloading the cart.
    async fn write_conditional(&self, rows: Vec<EventRow>) -> Result<bool, StoreError> {
        let connection = self.connection().await?;
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(connection.insert_event.clone());
        }
        let what = format!(
            "appending to cart {} ({} events from seq {})",
            rows[0].0,
            rows.len(),
            rows[0].2
        );
        let result = self
            .retrying(&what, || async {
                connection
                    .session
                    .batch(&batch, &rows)
                    .await
                    .map_err(Failure::of)
            })
            .await?;
        let rows_result = result
            .into_rows_result()
            .map_err(|e| err(&format!("{what}: reading the outcome"), e))?;
        // The first column of a conditional result is `[applied]`; when not applied, the
        // existing rows' columns follow.
        let row: scylla::value::Row = rows_result
            .first_row()
            .map_err(|e| err(&format!("{what}: reading the outcome"), e))?;
        match row.columns.first() {
            Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
            other => Err(err(
                &format!("{what}: reading the outcome"),
                format!("the first column is {other:?}, not [applied]"),
            )),
        }
    }

    async fn write_hour(&self, rows: Vec<HourRow>) -> Result<(), StoreError> {
        let connection = self.connection().await?;
        let mut batch = Batch::new(BatchType::Unlogged);
        for _ in &rows {
            batch.append_statement(connection.insert_hour.clone());
        }
        batch.set_is_idempotent(true);
        self.retrying("listing events by hour", || async {
            connection
                .session
                .batch(&batch, &rows)
                .await
                .map_err(Failure::of)
        })
        .await
        .map(drop)
    }

    /// Runs `op` with the shared retry policy: transient failures (timeouts, nodes down,
    /// overload) retried with jittered exponential backoff from 50 ms to 5 s apart, until
    /// the retry timeout; a request Cassandra refuses is not retried.
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        RetryPolicy::new(
            Duration::from_millis(50),
            Duration::from_secs(5),
            self.settings.retry_timeout,
        )
        .run(what, op, |f| f.transient, &self.retries)
        .await
        .map_err(|e| err(what, e))
    }

    /// Every event of a cart, in order; retried with backoff for up to the retry timeout
    /// (the domain worker waits out an outage rather than fail).
    pub async fn load(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        self.load_with(cart_id, false).await
    }

    /// [`EventStore::load`] at serial consistency: sees every conditional append that
    /// was applied, even one whose Paxos round another writer left unfinished. After a
    /// conflict, this is what the cart is.
    pub async fn load_serial(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
        self.load_with(cart_id, true).await
    }

    async fn load_with(&self, cart_id: Uuid, serial: bool) -> Result<Vec<CartEvent>, StoreError> {
        let what = format!("reading cart {cart_id}");
        let connection = self.connection().await?;
        let statement = if serial {
            &connection.select_bucket_serial
        } else {
            &connection.select_bucket
        };
        let mut events: Vec<CartEvent> = Vec::new();
        let mut bucket: i32 = 0;
        loop {
            let rows = self
                .retrying(&what, || async {
                    let result = connection
                        .session
                        .execute_unpaged(statement, (cart_id, bucket))
                        .await
                        .map_err(Failure::of)?;
                    let rows = result.into_rows_result().map_err(Failure::lasting)?;
                    let mut jsons = Vec::new();
                    for row in rows.rows::<(String,)>().map_err(Failure::lasting)? {
                        jsons.push(row.map_err(Failure::lasting)?.0);
                    }
                    Ok(jsons)
                })
                .await?;
            for json in rows {
                let event: CartEvent = serde_json::from_str(&json).map_err(|e| {
                    err(&format!("decoding an event of cart {cart_id}"), e).corrupt()
                })?;
                events.push(event);
            }
            // A bucket is full when it holds its last number; only then can the next one
            // hold events.
            let last_of_bucket = (u64::try_from(bucket).unwrap_or(0) + 1) * BUCKET_SIZE - 1;
            if events.last().is_none_or(|e| e.seq != last_of_bucket) {
                break;
            }
            bucket += 1;
        }
        // Appends extend a dense prefix, so a gap means rows written by something else.
        if let Some(gap) = events
            .iter()
            .enumerate()
            .position(|(i, e)| e.seq != i as u64 + 1 || e.cart_id != cart_id)
        {
            return Err(err(
                &what,
                format!(
                    "event {} holds seq {} of cart {}: the stored events are not seq 1, 2, 3, ... of this cart",
                    gap + 1,
                    events[gap].seq,
                    events[gap].cart_id
                ),
            )
            .corrupt());
        }
        Ok(events)
    }

    /// One event of a cart, by its number.
    pub async fn event(&self, cart_id: Uuid, seq: u64) -> Result<Option<CartEvent>, StoreError> {
        let what = format!("reading event {seq} of cart {cart_id}");
        let seq_i64 = i64::try_from(seq).map_err(|e| err(&what, e))?;
        let connection = self.connection().await?;
        let json = self
            .retrying(&what, || async {
                let result = connection
                    .session
                    .execute_unpaged(&connection.select_event, (cart_id, bucket_of(seq), seq_i64))
                    .await
                    .map_err(Failure::of)?;
                let rows = result.into_rows_result().map_err(Failure::lasting)?;
                let row = rows
                    .maybe_first_row::<(String,)>()
                    .map_err(Failure::lasting)?;
                Ok(row.map(|r| r.0))
            })
            .await?;
        json.map(|json| {
            serde_json::from_str(&json).map_err(|e| err(&format!("decoding {what}"), e).corrupt())
        })
        .transpose()
    }

    /// The (hour, shard) partitions of `events_by_hour`, oldest hour first.
    pub async fn hours(&self) -> Result<Vec<(DateTime<Utc>, i32)>, StoreError> {
        let cql = format!(
            "SELECT DISTINCT hour, shard FROM {}.events_by_hour",
            self.settings.keyspace
        );
        let mut pager = self
            .connection()
            .await?
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
        let connection = self.connection().await?;
        let mut pager = connection
            .session
            .execute_iter(connection.select_hour.clone(), (hour, shard))
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

    /// Does what the store does: a prepared read on the keyspace, after one attempt at
    /// connecting if the store is not connected yet (no retries: readiness answers now).
    pub async fn healthcheck(&self) -> Result<(), StoreError> {
        let connection = self
            .connect_once()
            .await
            .map_err(|e| err(&connecting(&self.settings), e))?;
        connection
            .session
            .execute_unpaged(&connection.select_bucket, (Uuid::nil(), 0_i32))
            .await
            .map(drop)
            .map_err(|e| err("prepared read on the event store", e))
    }
}

/// A failed request, classified: whether trying it again can help.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
struct Failure {
    #[source]
    error: Box<dyn std::error::Error + Send + Sync>,
    transient: bool,
}

impl Failure {
    /// A request that failed: transient unless Cassandra refused it for what it is
    /// (syntax, an invalid request, no permission, a schema that disagrees).
    fn of(error: ExecutionError) -> Self {
        let refused = match &error {
            ExecutionError::BadQuery(_) => true,
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => refuses(db),
            _ => false,
        };
        Self {
            error: Box::new(error),
            transient: !refused,
        }
    }

    /// A session that could not be made: transient (no node answered, a name that did
    /// not resolve, a node that failed the handshake) unless the settings cannot work.
    fn session(error: NewSessionError) -> Self {
        let transient = !matches!(
            error,
            NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_)
        );
        Self {
            error: Box::new(error),
            transient,
        }
    }

    /// A statement that could not be prepared: refused when Cassandra answered that it
    /// is wrong (a keyspace or table that does not exist, no permission).
    fn prepare(cql: &str, error: &PrepareError) -> Self {
        let refused = matches!(
            error,
            PrepareError::AllAttemptsFailed {
                first_attempt: RequestAttemptError::DbError(db, _)
            } if refuses(db)
        );
        Self {
            error: format!("preparing {cql}: {error}").into(),
            transient: !refused,
        }
    }

    /// A failure that asking again cannot mend: an answer that does not read as
    /// expected, a cluster the settings do not fit.
    fn lasting(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            error: Box::new(error),
            transient: false,
        }
    }
}

/// What connecting is called in errors.
fn connecting(settings: &CassandraSettings) -> String {
    format!("connecting to Cassandra at {}", settings.nodes.join(","))
}

/// Whether Cassandra refused a request for what it is (syntax, an invalid request such as
/// a table that does not exist, no permission, a schema that disagrees): asking again
/// gets the same answer.
fn refuses(db: &DbError) -> bool {
    matches!(
        db,
        DbError::SyntaxError
            | DbError::Invalid
            | DbError::Unauthorized
            | DbError::AuthenticationError
            | DbError::ConfigError
            | DbError::AlreadyExists { .. }
            | DbError::FunctionFailure { .. }
    )
}

/// The contact points' data centre (or the only one the cluster has), and whether the
/// cluster has only that one.
async fn local_datacenter(
    session: &Session,
    nodes: &[String],
) -> Result<(String, bool), StoreError> {
    let mut contact_ips = Vec::new();
    for node in nodes {
        if let Ok(addresses) = tokio::net::lookup_host(node.as_str()).await {
            contact_ips.extend(addresses.map(|a| a.ip()));
        }
    }
    let state = session.get_cluster_state();
    let all: std::collections::BTreeSet<String> = state
        .get_nodes_info()
        .iter()
        .filter_map(|n| n.datacenter.clone())
        .collect();
    let of_contacts: std::collections::BTreeSet<String> = state
        .get_nodes_info()
        .iter()
        .filter(|n| contact_ips.contains(&n.address.ip()))
        .filter_map(|n| n.datacenter.clone())
        .collect();
    let candidates = if of_contacts.is_empty() {
        &all
    } else {
        &of_contacts
    };
    match candidates.len() {
        1 => Ok((
            candidates.iter().next().cloned().unwrap_or_default(),
            all.len() == 1,
        )),
        0 => Err(err(
            "choosing the local data centre",
            "no node reported its data centre; set [cassandra] local_datacenter",
        )),
        _ => Err(err(
            "choosing the local data centre",
            format!(
                "the contact points are in several data centres ({}); set [cassandra] local_datacenter",
                candidates.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// That `events` are `cart_id`'s, numbered `expected + 1` on without a gap: what every
/// append asks of its events, checked before anything of them is written.
pub fn check_sequence(
    cart_id: Uuid,
    expected: u64,
    events: &[CartEvent],
) -> Result<(), AppendError> {
    match events
        .iter()
        .enumerate()
        .find(|(i, e)| e.cart_id != cart_id || e.seq != expected + 1 + *i as u64)
    {
        None => Ok(()),
        Some((i, e)) => Err(AppendError::Invalid {
            cart_id,
            why: format!(
                "event {i} is seq {} of cart {}, expected seq {} of this cart",
                e.seq,
                e.cart_id,
                expected + 1 + i as u64
            ),
        }),
    }
}

/// Groups `events_by_hour` rows into unlogged batches: one (hour, shard) partition each,
/// at most [`MAX_APPEND_EVENTS`] rows.
fn hour_batches(rows: Vec<HourRow>) -> Vec<Vec<HourRow>> {
    let mut by_hour: BTreeMap<(DateTime<Utc>, i32), Vec<HourRow>> = BTreeMap::new();
    for row in rows {
        by_hour.entry((row.0, row.1)).or_default().push(row);
    }
    let mut batches = Vec::with_capacity(by_hour.len());
    for mut rows in by_hour.into_values() {
        while rows.len() > MAX_APPEND_EVENTS {
            let rest = rows.split_off(MAX_APPEND_EVENTS);
            batches.push(std::mem::replace(&mut rows, rest));
        }
        batches.push(rows);
    }
    batches
}

/// Splits a cart's rows into conditional batches: one partition (bucket) each, at most
/// [`MAX_APPEND_EVENTS`] events and [`MAX_APPEND_BYTES`] of JSON (a single larger event
/// goes alone).
fn chunks(rows: Vec<(EventRow, usize)>) -> Vec<Vec<EventRow>> {
    let mut out: Vec<Vec<EventRow>> = Vec::new();
    let mut bytes = 0;
    for (row, size) in rows {
        let start_new = match out.last() {
            None => true,
            Some(current) => {
                current[0].1 != row.1
                    || current.len() >= MAX_APPEND_EVENTS
                    || bytes + size > MAX_APPEND_BYTES
            }
        };
        if start_new {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(current) = out.last_mut() {
            current.push(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(bucket: i32, seq: i64) -> (EventRow, usize) {
        (
            (
                Uuid::nil(),
                bucket,
                seq,
                Uuid::nil(),
                DateTime::UNIX_EPOCH,
                DateTime::UNIX_EPOCH,
                String::new(),
            ),
            10,
        )
    }

    #[test]
    fn hour_rows_batch_per_partition_and_size() {
        let hour = DateTime::UNIX_EPOCH;
        let later = hour + TimeDelta::hours(1);
        let mut rows: Vec<HourRow> = (0..230)
            .map(|seq| (hour, 3, hour, Uuid::nil(), seq))
            .collect();
        rows.push((hour, 4, hour, Uuid::nil(), 0));
        rows.push((later, 3, later, Uuid::nil(), 0));
        let batches = hour_batches(rows);
        let shape: Vec<(i64, i32, usize)> = batches
            .iter()
            .map(|b| {
                assert!(b.iter().all(|r| (r.0, r.1) == (b[0].0, b[0].1)));
                (b[0].0.timestamp(), b[0].1, b.len())
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 3, 100),
                (0, 3, 100),
                (0, 3, 30),
                (0, 4, 1),
                (3600, 3, 1)
            ]
        );
        let seqs: Vec<i64> = batches[..3].iter().flatten().map(|r| r.4).collect();
        assert_eq!(
            seqs,
            (0..230).collect::<Vec<_>>(),
            "every row once, in order"
        );
    }

    #[test]
    fn appends_split_at_buckets_and_sizes() {
        let rows: Vec<_> = (998_u64..1003)
            .map(|s| row(bucket_of(s), i64::try_from(s).unwrap()))
            .collect();
        let split = chunks(rows);
        let seqs: Vec<Vec<i64>> = split
            .iter()
            .map(|c| c.iter().map(|r| r.2).collect())
            .collect();
        assert_eq!(seqs, vec![vec![998, 999], vec![1000, 1001, 1002]]);

        let rows: Vec<_> = (1..=250).map(|s| row(0, s)).collect();
        let sizes: Vec<usize> = chunks(rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);

        let mut big = vec![row(0, 1), row(0, 2), row(0, 3)];
        big[1].1 = MAX_APPEND_BYTES;
        let sizes: Vec<usize> = chunks(big).iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![1, 1, 1],
            "an event as large as the limit goes alone"
        );
    }
}
