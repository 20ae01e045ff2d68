//! `type = "cart"`: the domain worker's stage — the actor of the original note.
//!
//! Each lane owns the carts of the partitions routed to it (run it with as many lanes as
//! the topic has partitions, and each partition has its own task and bounded channel).
//! A cart's state is rebuilt from the event store on first use, and again whenever its
//! partition comes back after being away (another process may have changed it). For
//! every order, in partition order:
//!
//! - a new order id becomes the cart's next event: the main output carries a
//!   `CartUpdated` (the event, and the cart after it on the last update of each cart in
//!   the batch), which the pipeline writes to the event store and publishes on
//!   `cart-events`;
//! - a repeated order id is a no-op; its stored event is emitted again (writing and
//!   publishing it again changes nothing downstream), so a crash between the two sinks
//!   heals on redelivery;
//! - an order breaking a rule (another currency or user than the cart's, a full cart), or
//!   that is not an order at all, leaves on the `rejected` output with the reason in the
//!   `salesflow.error` header and its origin in `salesflow.origin`.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::prometheus_client::metrics::counter::Counter;
use salesflow_plugin_api::prometheus_client::metrics::family::Family;
use salesflow_plugin_api::{
    Batch, BuildContext, Component, ComponentKind, ConfigError, Event, Origin, Plugin, PluginError,
    Settings, Stage, StageFactory, async_trait, schemars, toml,
};
use salesflow_plugin_cassandra::{CassandraSettings, EventStore};
use salesflow_sales::{CartState, CartUpdatedRef, Decision, OrderValidator};
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
    /// Carts a lane rebuilds from the event store at once.
    #[serde(default = "default_load_concurrency")]
    pub load_concurrency: usize,
}

fn default_max_carts() -> usize {
    100_000
}
fn default_load_concurrency() -> usize {
    16
}

const OWN_KEYS: [&str; 2] = ["max_carts", "load_concurrency"];

impl Settings for CartSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_carts == 0 {
            return Err(ConfigError::at(&["max_carts"], "must be at least 1"));
        }
        if self.load_concurrency == 0 {
            return Err(ConfigError::at(&["load_concurrency"], "must be at least 1"));
        }
        Ok(())
    }
}

fn split(settings: &toml::Table) -> Result<(CartSettings, CassandraSettings), ConfigError> {
    let (own, connection): (toml::Table, toml::Table) = settings
        .clone()
        .into_iter()
        .partition(|(k, _)| OWN_KEYS.contains(&k.as_str()));
    Ok((
        CartSettings::from_table(&own)?,
        CassandraSettings::from_table(&connection)?,
    ))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
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
        "Per-partition cart actors: rebuilds carts from the event store, applies the cart's \
         rules, emits cart updates; refused orders leave on `rejected`"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("cassandra")
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["rejected"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        let mut schema = schemars::schema_for!(CassandraSettings);
        let own = schemars::schema_for!(CartSettings);
        if let (Some(props), Some(own_props)) = (
            schema.get_mut("properties").and_then(|p| p.as_object_mut()),
            own.get("properties").and_then(|p| p.as_object()),
        ) {
            props.extend(own_props.clone());
        }
        schema
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
        let store = EventStore::connect(&connection)
            .await
            .map_err(|e| PluginError::new(e.to_string()))?;
        let outcomes = Family::<OutcomeLabel, Counter>::default();
        ctx.metrics.register(
            "salesflow_cart_orders",
            "Orders the cart actors handled, by outcome (accepted, duplicate, refused, invalid)",
            outcomes.clone(),
        );
        let loads = Counter::default();
        ctx.metrics.register(
            "salesflow_cart_rebuilds",
            "Carts rebuilt from the event store",
            loads.clone(),
        );
        Ok(Component::Stage(Arc::new(Factory {
            store,
            settings: own,
            validator: Arc::new(OrderValidator::new()),
            outcomes,
            loads,
        })))
    }
}

struct Factory {
    store: EventStore,
    settings: CartSettings,
    validator: Arc<OrderValidator>,
    outcomes: Family<OutcomeLabel, Counter>,
    loads: Counter,
}

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        let capacity = NonZeroUsize::new(self.settings.max_carts).unwrap_or(NonZeroUsize::MIN);
        let outcome = |name: &str| {
            self.outcomes
                .get_or_create(&OutcomeLabel {
                    outcome: name.to_owned(),
                })
                .clone()
        };
        let accepted = outcome("accepted");
        let duplicate = outcome("duplicate");
        let refused = outcome("refused");
        let invalid = outcome("invalid");
        Ok(Box::new(CartStage {
            store: self.store.clone(),
            validator: Arc::clone(&self.validator),
            carts: LruCache::new(capacity),
            load_concurrency: self.settings.load_concurrency,
            accepted,
            duplicate,
            refused,
            invalid,
            loads: self.loads.clone(),
        }))
    }
}

struct Cached {
    state: CartState,
    /// The partition assignment the state is valid for (None: not from Kafka).
    assignment: Option<u64>,
}

struct CartStage {
    store: EventStore,
    validator: Arc<OrderValidator>,
    carts: LruCache<Uuid, Cached>,
    load_concurrency: usize,
    accepted: Counter,
    duplicate: Counter,
    refused: Counter,
    invalid: Counter,
    loads: Counter,
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

#[async_trait]
impl Stage for CartStage {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        // Read every order; what is not one is refused outright.
        let mut orders = Vec::with_capacity(events.len());
        let mut rejected = Vec::new();
        for event in events {
            match self.validator.validate(&event.payload) {
                Ok(order) => orders.push((order, event)),
                Err(reasons) => {
                    self.invalid.inc();
                    rejected.push(refuse(
                        event,
                        &format!("not a valid order: {}", reasons.join("; ")),
                    ));
                }
            }
        }

        // Rebuild, concurrently, the carts not in memory or cached under an older
        // assignment of their partition.
        let mut wanted: HashMap<Uuid, Option<u64>> = HashMap::new();
        for (order, event) in &orders {
            let assignment = assignment_of(&event.origin);
            let fresh = self
                .carts
                .peek(&order.cart_id)
                .is_some_and(|c| c.assignment == assignment);
            if !fresh {
                wanted.insert(order.cart_id, assignment);
            }
        }
        let store = &self.store;
        let loaded: Vec<(Uuid, Option<u64>, CartState)> = futures::stream::iter(wanted)
            .map(|(cart, assignment)| async move {
                let events = store.load_retrying(cart).await?;
                Ok::<_, salesflow_plugin_cassandra::StoreError>((
                    cart,
                    assignment,
                    CartState::from_events(events),
                ))
            })
            .buffer_unordered(self.load_concurrency)
            .try_collect()
            .await
            .map_err(|e| PluginError::context("rebuilding carts", e))?;
        for (cart, assignment, state) in loaded {
            self.loads.inc();
            self.carts.put(cart, Cached { state, assignment });
        }

        // Apply in order.
        let now = Utc::now();
        let mut published = Vec::with_capacity(orders.len());
        for (order, event) in orders {
            let Some(cached) = self.carts.get_mut(&order.cart_id) else {
                return Err(PluginError::new(format!(
                    "cart {} was not loaded",
                    order.cart_id
                )));
            };
            let cart_event = match cached.state.decide(&order, now) {
                Decision::Accepted(cart_event) => {
                    self.accepted.inc();
                    cached.state.apply(cart_event.clone());
                    cart_event
                }
                Decision::Duplicate(cart_event) => {
                    self.duplicate.inc();
                    cart_event
                }
                Decision::Refused(refusal) => {
                    self.refused.inc();
                    rejected.push(refuse(event, &refusal.to_string()));
                    continue;
                }
            };
            published.push((cart_event, event));
        }

        // Encode: each event, and with the last one of each cart in the batch the cart as
        // it stands after the batch. The earlier ones of that cart leave it out: a later
        // record of the same partition carries it, so a hot cart costs one copy of the
        // cart per batch instead of one per order.
        let mut last_of_cart: HashMap<Uuid, usize> = HashMap::with_capacity(published.len());
        for (i, (cart_event, _)) in published.iter().enumerate() {
            last_of_cart.insert(cart_event.cart_id, i);
        }
        let mut updates = Vec::with_capacity(published.len());
        for (i, (cart_event, event)) in published.into_iter().enumerate() {
            let cart_id = cart_event.cart_id;
            let cart = if last_of_cart.get(&cart_id) == Some(&i) {
                Some(
                    self.carts
                        .peek(&cart_id)
                        .and_then(|c| c.state.cart.as_ref())
                        .ok_or_else(|| PluginError::new(format!("cart {cart_id} has no state")))?,
                )
            } else {
                None
            };
            let payload = serde_json::to_vec(&CartUpdatedRef {
                event: &cart_event,
                cart,
            })
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
