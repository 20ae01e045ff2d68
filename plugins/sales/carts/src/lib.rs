//! `type = "cart"`: the domain worker's stage — the actor of the original note, and the
//! only writer of the event store.
//!
//! Each lane owns the carts of the partitions routed to it. A cart's state (who owns it,
//! its currency, its totals, its order ids) is kept in memory once known. A cart that is
//! not (first use, its partition come back after being away, evicted) is first taken to
//! be new: its orders are decided on an empty cart and appended at version 0, which the
//! fence refuses if the cart's first event exists; then it is rebuilt from the event
//! store and decided again. Most carts a lane meets are new, so that saves a read per
//! cart; while most of the lane's recent unknown carts turned out to exist (after a
//! restart, a rebalance, a cache too small), it reads them first instead (see
//! [`ColdCarts`]). For every batch, the
//! orders of each cart are decided in partition order and the new events are appended to
//! the event store **fenced** by the version the decision was made on: when another
//! writer got there first (a producer with another partitioner put the cart on a second
//! partition, partitions were added, a revoked partition's write outlived its drain), the
//! append is refused, the cart is reloaded and its orders decided again — a known order
//! id becomes a no-op, a new one takes the next number. An event is never overwritten.
//!
//! Then, in input order:
//!
//! - an accepted order, or one already in the cart (redelivered, or posted twice), goes
//!   on the main output as a `CartUpdated`: its event and the cart's version and totals
//!   after it (the pipeline publishes it on `cart-events`; publishing it again changes
//!   nothing downstream);
//! - an order breaking a rule (another currency or user than the cart's, a full cart), or
//!   that is not an order at all, leaves on the `rejected` output with the reason in the
//!   `salesflow.error` header and its origin in `salesflow.origin`.
//!
//! A batch that cannot be stored (the store failed past its retries) fails whole: the
//! carts it touched are dropped from memory, and its orders come again.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use prometheus_client::encoding::EncodeLabelSet;
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::prometheus_client::metrics::counter::Counter;
use salesflow_plugin_api::prometheus_client::metrics::family::Family;
use salesflow_plugin_api::{
    Batch, BuildContext, CacheBudget, Component, ComponentKind, ConfigError, Event, Origin, Plugin,
    PluginError, Settings, SizedLru, Stage, StageFactory, async_trait, schemars, toml,
};
use salesflow_sales::{
    CartEvent, CartState, CartTotals, CartUpdated, Decision, Order, OrderValidator, Refusal,
};
use salesflow_sales_event_store::{AppendError, CartLog, CassandraSettings, EventStore};
use serde::Deserialize;
use uuid::Uuid;

/// The cart stage's own settings; the rest of its table is the `[cassandra]` connection.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CartSettings {
    /// Most carts a lane keeps in memory; the least recently used are dropped (and
    /// rebuilt from the event store when they come back).
    #[serde(default = "default_max_carts")]
    pub max_carts: usize,
    /// Most bytes the carts in memory take, all lanes together (a cart's state is a few
    /// dozen bytes per order).
    #[serde(default = "default_max_cache_bytes")]
    pub max_cache_bytes: usize,
    /// Carts a lane rebuilds or appends to at once.
    #[serde(default = "default_load_concurrency")]
    pub load_concurrency: usize,
    /// How many times a cart's orders are decided again after conflicting appends
    /// (another writer appending to the same cart) before the batch fails.
    #[serde(default = "default_max_conflicts")]
    pub max_conflicts: usize,
}

fn default_max_carts() -> usize {
    100_000
}
fn default_max_cache_bytes() -> usize {
    64 << 20
}
fn default_load_concurrency() -> usize {
    16
}
fn default_max_conflicts() -> usize {
    20
}

const OWN_KEYS: [&str; 4] = [
    "max_carts",
    "max_cache_bytes",
    "load_concurrency",
    "max_conflicts",
];

impl Settings for CartSettings {
    fn check(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("max_carts", self.max_carts),
            ("max_cache_bytes", self.max_cache_bytes),
            ("load_concurrency", self.load_concurrency),
            ("max_conflicts", self.max_conflicts),
        ] {
            if value == 0 {
                return Err(ConfigError::at(&[key], "must be at least 1"));
            }
        }
        Ok(())
    }
}

fn split(settings: &toml::Table) -> Result<(CartSettings, CassandraSettings), ConfigError> {
    salesflow_plugin_api::split_settings(settings, &OWN_KEYS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuessLabel {
    outcome: String,
}

/// Adds the cart stage.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(CartPlugin));
}

pub struct CartPlugin;

#[async_trait]
impl Plugin for CartPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        "cart"
    }

    fn summary(&self) -> &'static str {
        "Per-partition cart actors: rebuild carts from the event store, apply the cart's \
         rules, append the new events fenced by the cart's version (a conflict is decided \
         again, never overwritten), emit cart updates; refused orders leave on `rejected`"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("cassandra")
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["rejected"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        salesflow_plugin_api::merged_schema::<CartSettings, CassandraSettings>()
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        split(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let (own, connection) =
            split(&settings).map_err(|e| PluginError::context("cart settings", e))?;
        let store = EventStore::open(&connection)
            .await
            .map_err(|e| PluginError::context("the event store", e))?;
        salesflow_sales_event_store::register(&store, &connection, ctx);
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        ctx.metrics.register(
            "salesflow_cart_orders",
            "Orders the cart actors handled, by outcome (accepted, duplicate, refused, invalid)",
            outcomes.clone(),
        );
        let loads = Counter::default();
        ctx.metrics.register(
            "salesflow_cart_rebuilds",
            "Carts rebuilt from the event store (first use, a partition come back, a conflict)",
            loads.clone(),
        );
        let redecided = Counter::default();
        ctx.metrics.register(
            "salesflow_cart_redecided",
            "Times a cart's orders were decided again after another writer appended to it",
            redecided.clone(),
        );
        let guesses = Family::<GuessLabel, Counter>::default();
        ctx.metrics.register(
            "salesflow_cart_guesses",
            "Carts not in memory taken to be new and appended at version 0 without a read, \
             by how that came out (new; existing: refused by the fence, read and decided again)",
            guesses.clone(),
        );
        let budget = CacheBudget::new(own.max_cache_bytes);
        budget.register(ctx.metrics, "carts");
        Ok(Component::Stage(Arc::new(Factory {
            store: Arc::new(store),
            settings: own,
            validator: Arc::new(OrderValidator::new()),
            outcomes,
            loads,
            redecided,
            guesses,
            budget,
        })))
    }
}

struct Factory {
    store: Arc<dyn CartLog>,
    settings: CartSettings,
    validator: Arc<OrderValidator>,
    outcomes: Family<OutcomeLabel, Counter>,
    loads: Counter,
    redecided: Counter,
    guesses: Family<GuessLabel, Counter>,
    budget: Arc<CacheBudget>,
}

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        let outcome = |name: &str| {
            self.outcomes
                .get_or_create(&OutcomeLabel {
                    outcome: name.to_owned(),
                })
                .clone()
        };
        // Each guard is dropped inside its closure: a family's read guard held while
        // another label is created (a write) would deadlock.
        let guess = |name: &str| {
            self.guesses
                .get_or_create(&GuessLabel {
                    outcome: name.to_owned(),
                })
                .clone()
        };
        let counters = Counters {
            accepted: outcome("accepted"),
            duplicate: outcome("duplicate"),
            refused: outcome("refused"),
            invalid: outcome("invalid"),
            loads: self.loads.clone(),
            redecided: self.redecided.clone(),
            guessed_new: guess("new"),
            guessed_wrong: guess("existing"),
        };
        Ok(Box::new(CartStage {
            store: Arc::clone(&self.store),
            validator: Arc::clone(&self.validator),
            carts: SizedLru::new(self.settings.max_carts, Arc::clone(&self.budget)),
            load_concurrency: self.settings.load_concurrency,
            max_conflicts: self.settings.max_conflicts,
            cold: ColdCarts::default(),
            counters,
        }))
    }
}

#[derive(Clone)]
struct Counters {
    accepted: Counter,
    duplicate: Counter,
    refused: Counter,
    invalid: Counter,
    loads: Counter,
    redecided: Counter,
    guessed_new: Counter,
    guessed_wrong: Counter,
}

struct Cached {
    state: CartState,
    /// The partition assignment the state is valid for (None: not from Kafka).
    assignment: Option<u64>,
}

struct CartStage {
    store: Arc<dyn CartLog>,
    validator: Arc<OrderValidator>,
    carts: SizedLru<Uuid, Cached>,
    load_concurrency: usize,
    max_conflicts: usize,
    cold: ColdCarts,
    counters: Counters,
}

fn assignment_of(origin: &Origin) -> Option<u64> {
    match origin {
        Origin::Kafka { assignment, .. } => Some(*assignment),
        _ => None,
    }
}

fn refuse(event: Event, reason: &str) -> Event {
    event.dead_letter(reason, "domain cart stage")
}

/// What became of one order (one per order, held for the batch only).
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// A new event, appended.
    Stored(CartEvent, CartTotals),
    /// Already in the cart as its `seq`-th event.
    Known(u64, CartTotals),
    Refused(Refusal),
    /// The cart's stored history is not what salesflow writes: its orders cannot be
    /// decided (they go to the dead letters with the reason; nothing is written).
    Unreadable(String),
}

/// One cart's share of a batch: its orders (position in the batch, order) in order.
struct CartWork {
    cart_id: Uuid,
    state: Option<CartState>,
    assignment: Option<u64>,
    orders: Vec<(usize, Order)>,
}

/// How a lane treats carts it does not hold: taken to be new (decided on an empty cart,
/// appended fenced at version 0, which fails if the cart's first event exists) or read
/// first.
///
/// Guessing "new" costs a new cart nothing and an existing one a refused conditional
/// write before a serial read (and `events_by_hour` rows for seqs it may not have);
/// reading first costs every cart a read. The lane keeps a moving
/// share of its recent unknown carts that existed (each counts 1/16, so it follows the
/// last few dozen) and guesses while that share is under a half. Both ways tell whether
/// the cart existed, so the share stays current whichever way the lane reads.
#[derive(Debug, Default)]
struct ColdCarts {
    existing: f64,
}

impl ColdCarts {
    const WEIGHT: f64 = 1.0 / 16.0;

    fn guess_new(&self) -> bool {
        self.existing < 0.5
    }

    fn observe(&mut self, existed: bool) {
        let x = if existed { 1.0 } else { 0.0 };
        self.existing += (x - self.existing) * Self::WEIGHT;
    }
}

/// A cart's orders decided on its state, nothing written yet.
struct Decided {
    cart_id: Uuid,
    assignment: Option<u64>,
    orders: Vec<(usize, Order)>,
    /// The state after the new events.
    state: CartState,
    /// The version they were decided on: their append is fenced by it.
    base: u64,
    outcomes: Vec<(usize, Outcome)>,
    new_events: Vec<CartEvent>,
    /// Decided on a guessed empty cart, not yet confirmed by an append.
    guessed: bool,
    /// For a cart that was not in memory: whether it had events (None: it was in memory).
    existed: Option<bool>,
}

/// Every order of a cart decided on `state`, in order: the outcomes and the new events.
fn decide_all(
    state: &mut CartState,
    orders: &[(usize, Order)],
    now: DateTime<Utc>,
) -> (Vec<(usize, Outcome)>, Vec<CartEvent>) {
    let mut outcomes = Vec::with_capacity(orders.len());
    let mut new_events = Vec::new();
    for (position, order) in orders {
        let outcome = match state.decide(order, now) {
            Decision::Accepted(event) => {
                let totals = state.apply(&event);
                new_events.push(event.clone());
                Outcome::Stored(event, totals)
            }
            Decision::Duplicate { seq, totals } => Outcome::Known(seq, totals),
            Decision::Refused(refusal) => Outcome::Refused(refusal),
        };
        outcomes.push((*position, outcome));
    }
    (outcomes, new_events)
}

/// A cart whose stored history salesflow did not write: its orders are refused, naming it.
fn unreadable(
    cart_id: Uuid,
    assignment: Option<u64>,
    orders: &[(usize, Order)],
    e: &salesflow_sales_event_store::StoreError,
) -> Settled {
    Settled {
        cart_id,
        state: None,
        assignment,
        outcomes: orders
            .iter()
            .map(|(position, _)| (*position, Outcome::Unreadable(e.to_string())))
            .collect(),
        existed: None,
    }
}

/// Decides a cart's orders, writing nothing: on its state in memory, or (not in memory)
/// on an empty cart when `guess_new` (see [`ColdCarts`]), else on the cart read first.
/// A cart whose history cannot be read is settled here, its orders refused.
async fn decide(
    store: &dyn CartLog,
    work: CartWork,
    now: DateTime<Utc>,
    guess_new: bool,
    counters: &Counters,
) -> Result<Result<Decided, Settled>, PluginError> {
    let CartWork {
        cart_id,
        state,
        assignment,
        orders,
    } = work;
    let mut existed = None;
    let mut guessed = false;
    let mut state = match state {
        Some(state) => state,
        None if guess_new => {
            guessed = true;
            CartState::default()
        }
        None => {
            counters.loads.inc();
            match store.load(cart_id).await {
                Ok(events) => {
                    existed = Some(!events.is_empty());
                    CartState::from_events(&events)
                }
                Err(e) if e.is_corrupt() => {
                    return Ok(Err(unreadable(cart_id, assignment, &orders, &e)));
                }
                Err(e) => return Err(PluginError::context("rebuilding a cart", e)),
            }
        }
    };
    let mut base = state.version();
    let (mut outcomes, mut new_events) = decide_all(&mut state, &orders, now);
    if guessed && new_events.is_empty() {
        // Nothing to append, so nothing would confirm the guess. No rule refuses a cart's
        // first order today, so this is not reached; were one added, the refusal must
        // come from the stored cart: read it, decide again.
        guessed = false;
        counters.loads.inc();
        match store.load(cart_id).await {
            Ok(events) => {
                existed = Some(!events.is_empty());
                state = CartState::from_events(&events);
            }
            Err(e) if e.is_corrupt() => {
                return Ok(Err(unreadable(cart_id, assignment, &orders, &e)));
            }
            Err(e) => return Err(PluginError::context("rebuilding a cart", e)),
        }
        base = state.version();
        (outcomes, new_events) = decide_all(&mut state, &orders, now);
    }
    Ok(Ok(Decided {
        cart_id,
        assignment,
        orders,
        state,
        base,
        outcomes,
        new_events,
        guessed,
        existed,
    }))
}

/// Appends a decided cart's new events, fenced by the version they were decided on (the
/// first time without listing them when `listed`: the batch listed them already); on a
/// conflict, reloads the cart and decides again.
async fn settle(
    store: &dyn CartLog,
    decided: Decided,
    now: DateTime<Utc>,
    max_conflicts: usize,
    mut listed: bool,
    counters: &Counters,
) -> Result<Settled, PluginError> {
    let Decided {
        cart_id,
        assignment,
        orders,
        mut state,
        mut base,
        mut outcomes,
        mut new_events,
        mut guessed,
        mut existed,
    } = decided;
    let mut attempts = 0;
    loop {
        let appended = if listed {
            store.append_listed(cart_id, base, &new_events).await
        } else {
            store.append(cart_id, base, &new_events).await
        };
        // A decision made again is listed with its append.
        listed = false;
        match appended {
            Ok(()) => {
                if guessed {
                    // Seq 1 did not exist: the cart was new, as guessed.
                    counters.guessed_new.inc();
                    existed = Some(false);
                }
                return Ok(Settled {
                    cart_id,
                    state: Some(state),
                    assignment,
                    outcomes,
                    existed,
                });
            }
            Err(AppendError::Conflict { .. }) => {
                if guessed {
                    // Not new after all: read it and decide again (not a conflict with
                    // another writer, so it does not count against `max_conflicts`).
                    guessed = false;
                    counters.guessed_wrong.inc();
                    existed = Some(true);
                } else {
                    // Another writer appended first: what the cart is now, then decide
                    // again.
                    counters.redecided.inc();
                    attempts += 1;
                    if attempts > max_conflicts {
                        return Err(PluginError::new(format!(
                            "cart {cart_id}: appends conflicted {attempts} times in a row (other writers keep appending to it)"
                        )));
                    }
                }
                counters.loads.inc();
                match store.load_serial(cart_id).await {
                    Ok(events) => state = CartState::from_events(&events),
                    Err(e) if e.is_corrupt() => {
                        return Ok(unreadable(cart_id, assignment, &orders, &e));
                    }
                    Err(e) => {
                        return Err(PluginError::context("reloading a cart after a conflict", e));
                    }
                }
                base = state.version();
                (outcomes, new_events) = decide_all(&mut state, &orders, now);
            }
            Err(e) => return Err(PluginError::context("appending to the event store", e)),
        }
    }
}

/// What settling a cart's orders came to.
struct Settled {
    cart_id: Uuid,
    /// Its state after them (None: not to be kept).
    state: Option<CartState>,
    assignment: Option<u64>,
    outcomes: Vec<(usize, Outcome)>,
    /// For a cart that was not in memory: whether it had events (None: it was in memory,
    /// or its history could not be read).
    existed: Option<bool>,
}

#[async_trait]
impl Stage for CartStage {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        // Read every order; what is not one is refused outright.
        let mut orders: Vec<Option<Order>> = Vec::with_capacity(events.len());
        let mut invalid: HashMap<usize, String> = HashMap::new();
        for (position, event) in events.iter().enumerate() {
            match self.validator.decode(&event.payload) {
                Ok(order) => orders.push(Some(order)),
                Err(reasons) => {
                    self.counters.invalid.inc();
                    invalid.insert(
                        position,
                        format!("not a valid order: {}", reasons.join("; ")),
                    );
                    orders.push(None);
                }
            }
        }

        // Each cart's orders, in order, with its state when it is in memory for the
        // assignment that delivered them.
        let mut work: Vec<CartWork> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for (position, order) in orders.into_iter().enumerate() {
            let Some(order) = order else { continue };
            let slot = *index.entry(order.cart_id).or_insert_with(|| {
                work.push(CartWork {
                    cart_id: order.cart_id,
                    state: None,
                    assignment: assignment_of(&events[position].origin),
                    orders: Vec::new(),
                });
                work.len() - 1
            });
            work[slot].orders.push((position, order));
        }
        for cart in &mut work {
            // Taken out while the batch is settled: if it fails, the cart is not kept.
            if let Some(cached) = self.carts.take(&cart.cart_id)
                && cached.assignment == cart.assignment
            {
                cart.state = Some(cached.state);
            }
        }

        let now = Utc::now();
        let (store, counters, max_conflicts) =
            (self.store.as_ref(), &self.counters, self.max_conflicts);
        let guess_new = self.cold.guess_new();
        let decisions: Vec<_> = futures::stream::iter(work)
            .map(|cart| decide(store, cart, now, guess_new, counters))
            .buffer_unordered(self.load_concurrency)
            .try_collect()
            .await?;
        let mut decided = Vec::with_capacity(decisions.len());
        let mut settled = Vec::new();
        for decision in decisions {
            match decision {
                Ok(cart) => decided.push(cart),
                Err(unreadable) => settled.push(unreadable),
            }
        }
        // Every new event of the batch listed by hour first, in a few requests for all
        // its carts (replays find carts there; a listed event that is then not appended
        // only names a cart to read), then each cart's fenced append.
        let listing: Vec<&CartEvent> = decided.iter().flat_map(|d| &d.new_events).collect();
        store
            .list(&listing)
            .await
            .map_err(|e| PluginError::context("listing events by hour", e))?;
        settled.extend(
            futures::stream::iter(decided)
                .map(|cart| settle(store, cart, now, max_conflicts, true, counters))
                .buffer_unordered(self.load_concurrency)
                .try_collect::<Vec<_>>()
                .await?,
        );

        let mut outcomes: Vec<Option<(Uuid, Outcome)>> = (0..events.len()).map(|_| None).collect();
        for settled in settled {
            let Settled {
                cart_id,
                state,
                assignment,
                outcomes: cart_outcomes,
                existed,
            } = settled;
            if let Some(existed) = existed {
                self.cold.observe(existed);
            }
            if let Some(state) = state {
                let size = state.approximate_bytes();
                self.carts.put(cart_id, Cached { state, assignment }, size);
            }
            for (position, outcome) in cart_outcomes {
                outcomes[position] = Some((cart_id, outcome));
            }
        }

        // Orders already in their carts are published again with their stored events (an
        // earlier delivery may have stored them and failed to publish them).
        let mut stored_here: HashMap<(Uuid, u64), CartEvent> = HashMap::new();
        let mut wanted: Vec<(Uuid, u64)> = Vec::new();
        for (cart_id, outcome) in outcomes.iter().flatten() {
            match outcome {
                Outcome::Stored(event, _) => {
                    stored_here.insert((*cart_id, event.seq), event.clone());
                }
                Outcome::Known(seq, _) => wanted.push((*cart_id, *seq)),
                Outcome::Refused(_) | Outcome::Unreadable(_) => {}
            }
        }
        wanted.retain(|key| !stored_here.contains_key(key));
        wanted.sort_unstable();
        wanted.dedup();
        let fetched: Vec<((Uuid, u64), CartEvent)> = futures::stream::iter(wanted)
            .map(|(cart_id, seq)| async move {
                match store.event(cart_id, seq).await {
                    Ok(Some(event)) => Ok(((cart_id, seq), event)),
                    Ok(None) => Err(PluginError::new(format!(
                        "cart {cart_id}: event {seq} is counted but not stored"
                    ))),
                    Err(e) => Err(PluginError::context("reading a stored event", e)),
                }
            })
            .buffer_unordered(self.load_concurrency)
            .try_collect()
            .await?;
        stored_here.extend(fetched);

        let mut updates = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for (position, event) in events.into_iter().enumerate() {
            if let Some(reason) = invalid.remove(&position) {
                rejected.push(refuse(event, &reason));
                continue;
            }
            let Some((cart_id, outcome)) = outcomes[position].take() else {
                return Err(PluginError::new(format!(
                    "order {position} of the batch was not decided"
                )));
            };
            let update = match outcome {
                Outcome::Stored(cart_event, totals) => {
                    self.counters.accepted.inc();
                    CartUpdated {
                        event: cart_event,
                        cart: totals,
                    }
                }
                Outcome::Known(seq, totals) => {
                    self.counters.duplicate.inc();
                    let Some(cart_event) = stored_here.get(&(cart_id, seq)) else {
                        return Err(PluginError::new(format!(
                            "cart {cart_id}: event {seq} was not read back"
                        )));
                    };
                    CartUpdated {
                        event: cart_event.clone(),
                        cart: totals,
                    }
                }
                Outcome::Refused(refusal) => {
                    self.counters.refused.inc();
                    rejected.push(refuse(event, &refusal.to_string()));
                    continue;
                }
                Outcome::Unreadable(why) => {
                    self.counters.refused.inc();
                    rejected.push(refuse(event, &format!("the cart cannot be read: {why}")));
                    continue;
                }
            };
            let payload = serde_json::to_vec(&update)
                .map_err(|e| PluginError::context("encoding a cart update", e))?;
            updates.push(Event {
                key: Some(Bytes::from(cart_id.to_string())),
                payload: Bytes::from(payload),
                headers: Vec::new(),
                timestamp_ms: event.timestamp_ms,
                origin: event.origin,
            });
        }
        match (updates.is_empty(), rejected.is_empty()) {
            (_, true) => out.push(Batch::new(updates, acks, lane)),
            (true, false) => out.push(Batch::new(rejected, acks, lane).to_output("rejected")),
            (false, false) => {
                out.push(Batch::new(updates, acks.clone(), lane));
                out.push(Batch::new(rejected, acks, lane).to_output("rejected"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use chrono::DateTime;
    use salesflow_plugin_api::{AckSet, async_trait};
    use salesflow_sales_event_store::StoreError;

    use super::*;

    /// An event store in memory, with the fence of the real one (an append is refused
    /// when any of its seqs exists: `IF NOT EXISTS` per row), and a second writer that can
    /// slip an order in just before the stage's next append.
    #[derive(Default)]
    struct MemoryLog {
        carts: Mutex<HashMap<Uuid, Vec<CartEvent>>>,
        intruder: Mutex<Option<Order>>,
        down: AtomicBool,
        corrupt: Mutex<Option<Uuid>>,
        /// The (cart, seq) pairs listed by hour, and how many `list` calls listed them.
        listed: Mutex<(HashSet<(Uuid, u64)>, usize)>,
    }

    #[async_trait]
    impl CartLog for MemoryLog {
        async fn load(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("reading", "down"));
            }
            if *self.corrupt.lock().unwrap() == Some(cart_id) {
                return Err(StoreError::corrupt_history("reading", "seq 7 first"));
            }
            Ok(self
                .carts
                .lock()
                .unwrap()
                .get(&cart_id)
                .cloned()
                .unwrap_or_default())
        }

        async fn load_serial(&self, cart_id: Uuid) -> Result<Vec<CartEvent>, StoreError> {
            self.load(cart_id).await
        }

        async fn list(&self, events: &[&CartEvent]) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("listing", "down"));
            }
            let mut listed = self.listed.lock().unwrap();
            listed.0.extend(events.iter().map(|e| (e.cart_id, e.seq)));
            listed.1 += 1;
            Ok(())
        }

        async fn append_listed(
            &self,
            cart_id: Uuid,
            expected: u64,
            events: &[CartEvent],
        ) -> Result<(), AppendError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("appending", "down").into());
            }
            // As the event store's: an event is listed by hour before it is appended.
            let listed = &self.listed.lock().unwrap().0;
            if let Some(e) = events
                .iter()
                .find(|e| !listed.contains(&(e.cart_id, e.seq)))
            {
                return Err(AppendError::Invalid {
                    cart_id,
                    why: format!("seq {} was not listed by hour", e.seq),
                });
            }
            let mut carts = self.carts.lock().unwrap();
            let stored = carts.entry(cart_id).or_default();
            if let Some(order) = self.intruder.lock().unwrap().take() {
                stored.push(CartEvent {
                    cart_id,
                    seq: stored.len() as u64 + 1,
                    recorded_at: Utc::now(),
                    order,
                });
            }
            let taken = |seq: u64| stored.iter().any(|e| e.seq == seq);
            if (1..=events.len() as u64).any(|i| taken(expected + i)) {
                return Err(AppendError::Conflict { cart_id, expected });
            }
            stored.extend(events.iter().cloned());
            stored.sort_by_key(|e| e.seq);
            Ok(())
        }

        async fn event(&self, cart_id: Uuid, seq: u64) -> Result<Option<CartEvent>, StoreError> {
            Ok(self.carts.lock().unwrap().get(&cart_id).and_then(|events| {
                events
                    .get(usize::try_from(seq).unwrap().wrapping_sub(1))
                    .cloned()
            }))
        }
    }

    fn order(cart: Uuid, n: u128, currency: &str) -> Order {
        Order {
            order_id: Uuid::from_u128(n),
            cart_id: cart,
            user_id: "u1".into(),
            product_name: format!("product {n}"),
            product_info: String::new(),
            quantity: 1,
            payment_method: "card".into(),
            shipping_address: "a".into(),
            billing_address: "b".into(),
            amount: "2.50".parse().unwrap(),
            discounts: "0".parse().unwrap(),
            tax_amount: "0.50".parse().unwrap(),
            subtotal: "3.00".parse().unwrap(),
            shipping_method: "post".into(),
            currency: currency.into(),
            seller_info: "s".into(),
            created_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }
    }

    fn stage(log: Arc<MemoryLog>) -> CartStage {
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        let counter = |name: &str| {
            outcomes
                .get_or_create(&OutcomeLabel {
                    outcome: name.into(),
                })
                .clone()
        };
        CartStage {
            store: log,
            validator: Arc::new(OrderValidator::new()),
            carts: SizedLru::new(100, CacheBudget::new(1 << 20)),
            load_concurrency: 4,
            max_conflicts: 3,
            counters: Counters {
                accepted: counter("accepted"),
                duplicate: counter("duplicate"),
                refused: counter("refused"),
                invalid: counter("invalid"),
                loads: Counter::default(),
                redecided: Counter::default(),
                guessed_new: Counter::default(),
                guessed_wrong: Counter::default(),
            },
            cold: ColdCarts::default(),
        }
    }

    /// One batch of orders (and raw payloads) through the stage: its main and rejected
    /// outputs' events.
    async fn run(
        stage: &mut CartStage,
        payloads: Vec<Vec<u8>>,
    ) -> Result<(Vec<CartUpdated>, Vec<Event>), PluginError> {
        let events = payloads.into_iter().map(Event::new).collect();
        let mut out = Vec::new();
        stage
            .process(Batch::new(events, AckSet::none(), 0), &mut out)
            .await?;
        let mut updates = Vec::new();
        let mut rejected = Vec::new();
        for batch in out {
            if batch.output == Some("rejected") {
                rejected.extend(batch.events);
            } else {
                for e in batch.events {
                    updates.push(serde_json::from_slice(&e.payload).unwrap());
                }
            }
        }
        Ok((updates, rejected))
    }

    fn json(order: &Order) -> Vec<u8> {
        serde_json::to_vec(order).unwrap()
    }

    #[tokio::test]
    async fn orders_become_numbered_events_and_repeats_are_published_again() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let cart = Uuid::from_u128(1);
        let (a, b) = (order(cart, 10, "EUR"), order(cart, 11, "EUR"));
        let (updates, rejected) = run(
            &mut stage,
            vec![
                json(&a),
                b"not json".to_vec(),
                json(&b),
                json(&order(cart, 12, "USD")),
            ],
        )
        .await
        .unwrap();
        let seqs: Vec<u64> = updates.iter().map(|u| u.event.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(updates[1].cart.subtotal.to_string(), "6.00");
        assert_eq!(rejected.len(), 2, "not an order, another currency");
        // The same order again (a redelivery): no new event; its stored one is published
        // with the totals after it.
        let (again, _) = run(&mut stage, vec![json(&a)]).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].event.seq, 1);
        assert_eq!(again[0].cart.subtotal.to_string(), "3.00");
        assert_eq!(log.carts.lock().unwrap()[&cart].len(), 2);
    }

    /// A batch's new events, of all its carts, are listed by hour in one call before any
    /// is appended (the log refuses an append of an event not listed); an event decided
    /// again after a conflict is listed with its own append.
    #[tokio::test]
    async fn a_batch_is_listed_by_hour_once_before_its_appends() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let carts: Vec<Uuid> = (100..110).map(Uuid::from_u128).collect();
        let payloads = carts
            .iter()
            .enumerate()
            .flat_map(|(i, cart)| {
                let n = 1000 + 2 * i as u128;
                [
                    json(&order(*cart, n, "EUR")),
                    json(&order(*cart, n + 1, "EUR")),
                ]
            })
            .collect();
        let (updates, rejected) = run(&mut stage, payloads).await.unwrap();
        assert_eq!((updates.len(), rejected.len()), (20, 0));
        let (listed, calls) = log.listed.lock().unwrap().clone();
        assert_eq!(calls, 1, "one listing for the whole batch");
        let stored: HashSet<(Uuid, u64)> = log
            .carts
            .lock()
            .unwrap()
            .values()
            .flatten()
            .map(|e| (e.cart_id, e.seq))
            .collect();
        assert_eq!(stored.len(), 20);
        assert_eq!(listed, stored);

        // Another writer's event on the first cart: the stage's append conflicts, and the
        // order decided again (seq 4, not the 3 listed with the batch) is listed too.
        *log.intruder.lock().unwrap() = Some(order(carts[0], 2000, "EUR"));
        let (updates, _) = run(&mut stage, vec![json(&order(carts[0], 2001, "EUR"))])
            .await
            .unwrap();
        assert_eq!(updates[0].event.seq, 4);
        let (listed, calls) = log.listed.lock().unwrap().clone();
        assert_eq!(
            calls, 3,
            "the batch's listing, then the append decided again"
        );
        assert!(listed.contains(&(carts[0], 4)));
    }

    /// Another writer appends to the cart between the stage's decision and its append:
    /// the append is refused, the cart reloaded and the order decided again — it takes
    /// the next number, and the other writer's event is never overwritten.
    #[tokio::test]
    async fn a_conflicting_append_is_decided_again_never_overwritten() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let cart = Uuid::from_u128(2);
        run(&mut stage, vec![json(&order(cart, 20, "EUR"))])
            .await
            .unwrap();
        *log.intruder.lock().unwrap() = Some(order(cart, 21, "EUR"));
        let (updates, _) = run(&mut stage, vec![json(&order(cart, 22, "EUR"))])
            .await
            .unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].event.seq, 3, "after the other writer's 2");
        assert_eq!(updates[0].cart.order_count, 3);
        let stored: Vec<u128> = log.carts.lock().unwrap()[&cart]
            .iter()
            .map(|e| e.order.order_id.as_u128())
            .collect();
        assert_eq!(stored, vec![20, 21, 22]);
        assert_eq!(stage.counters.redecided.get(), 1);

        // The other writer stored the very order the stage holds: it is a duplicate.
        *log.intruder.lock().unwrap() = Some(order(cart, 23, "EUR"));
        let (updates, _) = run(&mut stage, vec![json(&order(cart, 23, "EUR"))])
            .await
            .unwrap();
        assert_eq!(updates[0].event.seq, 4);
        assert_eq!(log.carts.lock().unwrap()[&cart].len(), 4, "stored once");
    }

    #[tokio::test]
    async fn a_cart_whose_history_cannot_be_read_refuses_its_orders() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let (broken, fine) = (Uuid::from_u128(3), Uuid::from_u128(4));
        *log.corrupt.lock().unwrap() = Some(broken);
        // Something else wrote seq 1 and 3 of the cart: the stage's first append (taking
        // the cart to be new, seq 1) is refused by the fence, and the read finds the
        // history unreadable. (A foreign history without seq 1 would take the guessed
        // append, and be found unreadable at the cart's next read: see ARCHITECTURE.)
        log.carts.lock().unwrap().insert(
            broken,
            [1, 3]
                .into_iter()
                .map(|seq| CartEvent {
                    cart_id: broken,
                    seq,
                    recorded_at: Utc::now(),
                    order: order(broken, 28 + u128::from(seq), "EUR"),
                })
                .collect(),
        );
        let (updates, rejected) = run(
            &mut stage,
            vec![
                json(&order(broken, 30, "EUR")),
                json(&order(fine, 31, "EUR")),
            ],
        )
        .await
        .unwrap();
        assert_eq!(updates.len(), 1);
        assert_eq!(rejected.len(), 1);
        let why = String::from_utf8_lossy(rejected[0].header("salesflow.error").unwrap());
        assert!(
            why.contains("cannot be read") && why.contains("seq 7 first"),
            "{why}"
        );
        assert_eq!(log.carts.lock().unwrap()[&broken].len(), 2, "nothing added");
    }

    /// A cart not in memory is taken to be new: a new cart costs no read, an existing one
    /// a refused append, then a read, and its orders decided on what it holds.
    #[tokio::test]
    async fn a_cart_not_in_memory_is_appended_without_a_read_unless_it_exists() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let (new, old) = (Uuid::from_u128(6), Uuid::from_u128(7));
        let (updates, _) = run(&mut stage, vec![json(&order(new, 60, "EUR"))])
            .await
            .unwrap();
        assert_eq!(updates[0].event.seq, 1);
        assert_eq!(stage.counters.loads.get(), 0, "a new cart is not read");
        assert_eq!(stage.counters.guessed_new.get(), 1);

        // A cart with history the stage does not hold (another lane wrote it, or it was
        // evicted): an order it already has stays a duplicate, a new one takes seq 3,
        // and another currency is refused by the stored cart's rules.
        let first = order(old, 70, "EUR");
        log.carts.lock().unwrap().insert(
            old,
            [first.clone(), order(old, 71, "EUR")]
                .into_iter()
                .enumerate()
                .map(|(i, order)| CartEvent {
                    cart_id: old,
                    seq: i as u64 + 1,
                    recorded_at: Utc::now(),
                    order,
                })
                .collect(),
        );
        let (updates, rejected) = run(
            &mut stage,
            vec![
                json(&first),
                json(&order(old, 72, "EUR")),
                json(&order(old, 73, "USD")),
            ],
        )
        .await
        .unwrap();
        let seqs: Vec<u64> = updates.iter().map(|u| u.event.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(updates[1].cart.order_count, 3);
        assert_eq!(rejected.len(), 1, "another currency than the stored cart's");
        assert_eq!(stage.counters.guessed_wrong.get(), 1);
        assert_eq!(stage.counters.redecided.get(), 0, "not another writer");
        assert_eq!(log.carts.lock().unwrap()[&old].len(), 3);

        // Only a repeat of an order the cart holds (evicted meanwhile): the guessed
        // append is refused, the cart read, and the order published again, never stored
        // twice.
        let (repeat, known) = (Uuid::from_u128(8), order(Uuid::from_u128(8), 80, "EUR"));
        run(&mut stage, vec![json(&known)]).await.unwrap();
        stage.carts.take(&repeat);
        let loads = stage.counters.loads.get();
        let (updates, _) = run(&mut stage, vec![json(&known)]).await.unwrap();
        assert_eq!(updates[0].event.seq, 1);
        assert_eq!(log.carts.lock().unwrap()[&repeat].len(), 1);
        assert_eq!(stage.counters.loads.get(), loads + 1);
    }

    /// While most of the carts a lane does not hold turn out to exist (after a restart),
    /// it reads them first; once most are new again, it goes back to guessing.
    #[test]
    fn a_lane_guesses_new_carts_while_most_unknown_carts_are_new() {
        let mut cold = ColdCarts::default();
        assert!(cold.guess_new());
        let mut existing = 0;
        while cold.guess_new() {
            cold.observe(true);
            existing += 1;
        }
        assert!((10..=12).contains(&existing), "{existing}");
        let mut new = 0;
        while !cold.guess_new() {
            cold.observe(false);
            new += 1;
        }
        assert!((1..=12).contains(&new), "{new}");
    }

    /// A store that does not answer fails the batch (its source reads it again later)
    /// and the carts it touched are not kept: the next try reloads them.
    #[tokio::test]
    async fn a_store_outage_fails_the_batch_and_keeps_nothing() {
        let log = Arc::new(MemoryLog::default());
        let mut stage = stage(Arc::clone(&log));
        let cart = Uuid::from_u128(5);
        log.down.store(true, Ordering::SeqCst);
        assert!(
            run(&mut stage, vec![json(&order(cart, 50, "EUR"))])
                .await
                .is_err()
        );
        assert!(stage.carts.is_empty());
        log.down.store(false, Ordering::SeqCst);
        let (updates, _) = run(&mut stage, vec![json(&order(cart, 50, "EUR"))])
            .await
            .unwrap();
        assert_eq!(updates[0].event.seq, 1);
    }
}
