//! `type = "read-models"`: folds the events of `cart-events` into each cart's detailed
//! and summary documents, addressed (index alias, id = cart id, external version = cart
//! version) for the Elasticsearch sink. [`replay`] rebuilds both read models from the
//! event store into new indices and then switches the aliases.
//!
//! A `cart-events` record carries one event and the cart's totals after it, never the
//! whole cart. Each lane keeps the carts of its partitions in memory (bounded in bytes)
//! and folds each cart's next event into it; a cart not in memory starts from its first
//! event when that is the first it gets (a new cart: nothing to read back). A cart not in
//! memory otherwise, an event that is not the next one (a gap: the cart's events came
//! through two partitions, or a record was dead-lettered), or totals that disagree with
//! the fold make the lane rebuild the cart from the event store — the domain appends an
//! event before publishing it, so the store always holds it. (That trusts `cart-events`
//! to be the domain's alone: see the trust boundary under invariant 7 in
//! ARCHITECTURE.md.) An older event than the cart's version is already in it. One pair of
//! documents per cart and batch: its state after the batch — written even when every
//! event of the batch was already folded in, because the memory runs ahead of the
//! writes: a batch whose documents were never written (the sink failed it, or it was
//! dropped) comes back with events the cart in memory already holds, and its documents
//! are owed. Elasticsearch answers a document it already holds 409, which costs little.

mod replay;

pub use replay::{ReplayCommand, ReplayReport, replay};

/// The stage's type name in `pipeline.toml`.
pub const STAGE_TYPE: &str = "read-models";

/// Adds the read-models stage and `salesflow replay`.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(ReadModelsPlugin));
    registrar.command(Arc::new(ReplayCommand));
}

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::event::headers;
use salesflow_plugin_api::prometheus_client::metrics::counter::Counter;
use salesflow_plugin_api::{
    Batch, BuildContext, CacheBudget, Component, ComponentKind, ConfigError, Event, Plugin,
    PluginError, Settings, SizedLru, Stage, StageFactory, async_trait, schemars, toml,
};
use salesflow_sales::{Cart, CartEvent, CartTotals, read_model};
use salesflow_sales_event_store::{CassandraSettings, EventStore};
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

/// Settings of the read-models stage. `cassandra` defaults to the top-level
/// `[cassandra]` table.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadModelSettings {
    /// The alias the detailed documents are written to.
    #[serde(default = "default_detailed")]
    pub detailed_alias: String,
    /// The alias the summary documents are written to.
    #[serde(default = "default_summary")]
    pub summary_alias: String,
    /// The event store, read to rebuild a cart that is not in memory.
    pub cassandra: CassandraSettings,
    /// Most carts a lane keeps in memory.
    #[serde(default = "default_max_carts")]
    pub max_carts: usize,
    /// Most bytes the carts in memory take, all lanes together (a cart holds every order).
    #[serde(default = "default_max_cache_bytes")]
    pub max_cache_bytes: usize,
    /// Carts a lane rebuilds from the event store at once.
    #[serde(default = "default_load_concurrency")]
    pub load_concurrency: usize,
}

fn default_detailed() -> String {
    read_model::DETAILED.into()
}
fn default_summary() -> String {
    read_model::SUMMARY.into()
}
fn default_max_carts() -> usize {
    50_000
}
fn default_max_cache_bytes() -> usize {
    64 << 20
}
fn default_load_concurrency() -> usize {
    16
}

impl Settings for ReadModelSettings {
    fn check(&self) -> Result<(), ConfigError> {
        self.cassandra.check().map_err(|mut e| {
            e.path.insert(0, "cassandra".into());
            e
        })?;
        for (key, value) in [
            ("max_carts", self.max_carts),
            ("max_cache_bytes", self.max_cache_bytes),
            ("load_concurrency", self.load_concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError::at(&[key], "must be at least 1"));
            }
        }
        Ok(())
    }
}

pub struct ReadModelsPlugin;

#[async_trait]
impl Plugin for ReadModelsPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        STAGE_TYPE
    }

    fn summary(&self) -> &'static str {
        "Folds cart events into the detailed and summary read models (carts kept in memory, \
         rebuilt from the event store), addressed for the elasticsearch sink (id = cart id, \
         external version = cart version)"
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["rejected"]
    }

    fn nested_shared_sections(&self) -> &'static [&'static str] {
        &["cassandra"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(ReadModelSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        ReadModelSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = ReadModelSettings::from_table(&settings)
            .map_err(|e| PluginError::context("read-models settings", e))?;
        let store = EventStore::open(&settings.cassandra)
            .await
            .map_err(|e| PluginError::context("the event store", e))?;
        salesflow_sales_event_store::register(&store, &settings.cassandra, ctx);
        let rebuilds = Counter::default();
        ctx.metrics.register(
            "salesflow_read_model_rebuilds",
            "Carts the projections rebuilt from the event store (not in memory, a gap, or totals that disagreed)",
            rebuilds.clone(),
        );
        let stale = Counter::default();
        ctx.metrics.register(
            "salesflow_read_model_stale_events",
            "Cart events already folded into their cart (redelivered, or older than a rebuild)",
            stale.clone(),
        );
        let budget = CacheBudget::new(settings.max_cache_bytes);
        budget.register(ctx.metrics, "carts");
        Ok(Component::Stage(Arc::new(Factory {
            budget,
            settings: Arc::new(settings),
            store,
            rebuilds,
            stale,
        })))
    }
}

struct Factory {
    settings: Arc<ReadModelSettings>,
    store: EventStore,
    budget: Arc<CacheBudget>,
    rebuilds: Counter,
    stale: Counter,
}

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        Ok(Box::new(ReadModels {
            settings: Arc::clone(&self.settings),
            store: self.store.clone(),
            carts: SizedLru::new(self.settings.max_carts, Arc::clone(&self.budget)),
            rebuilds: self.rebuilds.clone(),
            stale: self.stale.clone(),
        }))
    }
}

struct ReadModels {
    settings: Arc<ReadModelSettings>,
    store: EventStore,
    carts: SizedLru<Uuid, Cart>,
    rebuilds: Counter,
    stale: Counter,
}

/// What the stage reads of a `cart-events` record: the event, and the totals after it
/// when they are there in a form it knows (they are only checked).
#[derive(Deserialize)]
struct Update {
    event: CartEvent,
    #[serde(default, deserialize_with = "lenient")]
    cart: Option<CartTotals>,
}

fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CartTotals>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// A document event for the elasticsearch sink.
pub fn document(index: &str, cart: &Cart, source: Vec<u8>, like: &Event) -> Event {
    Event {
        key: like.key.clone(),
        payload: Bytes::from(source),
        headers: vec![
            (headers::DOC_INDEX.into(), Bytes::from(index.to_owned())),
            (
                headers::DOC_ID.into(),
                Bytes::from(cart.cart_id.to_string()),
            ),
            (
                headers::DOC_VERSION.into(),
                Bytes::from(cart.version.to_string()),
            ),
        ],
        timestamp_ms: like.timestamp_ms,
        origin: like.origin.clone(),
    }
}

/// One cart's share of a batch.
struct CartWork {
    cart_id: Uuid,
    cart: Option<Cart>,
    /// Its updates, in order: (position in the batch, event, totals).
    updates: Vec<(usize, CartEvent, Option<CartTotals>)>,
}

/// What folding a cart's updates came to.
struct Folded {
    cart_id: Uuid,
    cart: Option<Cart>,
    /// Positions of updates the event store does not hold (a record not from the domain).
    unknown: Vec<(usize, String)>,
    /// The last update's position: the documents take their origin from it.
    last: usize,
}

/// Folds updates into a cart held in memory, in order: an event at or below its version
/// is skipped (already in it), the next one is applied and its totals checked. Returns
/// whether the cart must be rebuilt from the store instead (an event that is not the next
/// one, or totals that disagree), and how many events were skipped.
fn fold_in_memory(
    cart: &mut Cart,
    updates: &[(usize, CartEvent, Option<CartTotals>)],
) -> (bool, u64) {
    let mut skipped = 0;
    for (_, event, totals) in updates {
        if event.seq <= cart.version {
            skipped += 1;
            continue;
        }
        if cart.apply(event).is_err() || totals.as_ref().is_some_and(|t| *t != cart.totals()) {
            return (true, skipped);
        }
    }
    (false, skipped)
}

/// A cart not in memory whose updates start at its first event: that event alone, checked
/// against the totals it came with — nothing to read back, the rest of its updates fold
/// onto it as onto a cart in memory. (Most carts a busy shop's projections meet are new;
/// reading each back cost the event store a partition read per cart.)
fn new_cart(updates: &[(usize, CartEvent, Option<CartTotals>)]) -> Option<Cart> {
    let (_, first, totals) = updates.first().filter(|(_, e, _)| e.seq == 1)?;
    let cart = Cart::new(first);
    totals
        .as_ref()
        .is_none_or(|t| *t == cart.totals())
        .then_some(cart)
}

/// Folds a cart's updates in order; rebuilds it from the event store when it is not in
/// memory (and they do not start at its first event) or an update is not its next event.
async fn fold(
    store: &EventStore,
    work: CartWork,
    rebuilds: &Counter,
    stale: &Counter,
) -> Result<Folded, PluginError> {
    let cart_id = work.cart_id;
    let last = work.updates.last().map_or(0, |u| u.0);
    // Updates already in the cart: none of a cart in memory, the first of a new one.
    let (mut cart, folded) = if work.cart.is_some() {
        (work.cart, 0)
    } else {
        let cart = new_cart(&work.updates);
        let folded = usize::from(cart.is_some());
        (cart, folded)
    };
    let rebuild = match cart.as_mut() {
        None => true,
        Some(current) => {
            let (rebuild, skipped) = fold_in_memory(current, &work.updates[folded..]);
            stale.inc_by(skipped);
            rebuild
        }
    };
    if !rebuild {
        return Ok(Folded {
            cart_id,
            cart,
            unknown: Vec::new(),
            last,
        });
    }
    rebuilds.inc();
    let highest = work.updates.iter().map(|u| u.1.seq).max().unwrap_or(0);
    let unreadable = |e: &salesflow_sales_event_store::StoreError| Folded {
        cart_id,
        cart: None,
        unknown: work
            .updates
            .iter()
            .map(|(position, _, _)| (*position, format!("the cart cannot be read: {e}")))
            .collect(),
        last,
    };
    let mut events = match store.load(cart_id).await {
        Ok(events) => events,
        Err(e) if e.is_corrupt() => return Ok(unreadable(&e)),
        Err(e) => return Err(PluginError::context("rebuilding a cart's read model", e)),
    };
    if (events.len() as u64) < highest {
        // A quorum read can miss an append whose Paxos round is unfinished: ask serially.
        events = match store.load_serial(cart_id).await {
            Ok(events) => events,
            Err(e) if e.is_corrupt() => return Ok(unreadable(&e)),
            Err(e) => return Err(PluginError::context("rebuilding a cart's read model", e)),
        };
    }
    let from_store = Cart::from_events(&events);
    let version = from_store.as_ref().map_or(0, |c| c.version);
    let mut unknown = Vec::new();
    for (position, event, _) in &work.updates {
        let stored = events
            .get(
                usize::try_from(event.seq)
                    .unwrap_or(usize::MAX)
                    .wrapping_sub(1),
            )
            .filter(|e| e.order.order_id == event.order.order_id);
        if event.seq > version || stored.is_none() {
            unknown.push((
                *position,
                format!(
                    "cart {cart_id} event {}: the event store {}",
                    event.seq,
                    if event.seq > version {
                        format!("holds the cart only up to version {version}")
                    } else {
                        "holds another order under that number".to_owned()
                    }
                ),
            ));
        }
    }
    Ok(Folded {
        cart_id,
        cart: from_store,
        unknown,
        last,
    })
}

#[async_trait]
impl Stage for ReadModels {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        let mut rejected: HashMap<usize, String> = HashMap::new();
        let mut work: Vec<CartWork> = Vec::new();
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        for (position, event) in events.iter().enumerate() {
            match serde_json::from_slice::<Update>(&event.payload) {
                Ok(Update { event: e, cart }) => {
                    let slot = *index.entry(e.cart_id).or_insert_with(|| {
                        work.push(CartWork {
                            cart_id: e.cart_id,
                            cart: None,
                            updates: Vec::new(),
                        });
                        work.len() - 1
                    });
                    work[slot].updates.push((position, e, cart));
                }
                Err(e) => {
                    rejected.insert(position, format!("not a cart update: {e}"));
                }
            }
        }
        for cart in &mut work {
            cart.cart = self.carts.take(&cart.cart_id);
        }
        let (store, rebuilds, stale) = (&self.store, &self.rebuilds, &self.stale);
        let folded: Vec<Folded> = futures::stream::iter(work)
            .map(|cart| fold(store, cart, rebuilds, stale))
            .buffer_unordered(self.settings.load_concurrency)
            .try_collect()
            .await?;

        let mut docs = Vec::with_capacity(folded.len() * 2);
        let mut folded = folded;
        folded.sort_by_key(|f| f.last);
        for f in folded {
            for (position, why) in f.unknown {
                rejected.insert(position, why);
            }
            let Some(cart) = f.cart else { continue };
            // Even when nothing was new: see the module documentation.
            let like = &events[f.last];
            let (detailed, summary) = read_model::documents(&cart)
                .map_err(|e| PluginError::context("serializing a read model", e))?;
            docs.push(document(
                &self.settings.detailed_alias,
                &cart,
                detailed,
                like,
            ));
            docs.push(document(&self.settings.summary_alias, &cart, summary, like));
            let size = cart.approximate_bytes();
            self.carts.put(f.cart_id, cart, size);
        }
        let rejected: Vec<Event> = events
            .into_iter()
            .enumerate()
            .filter_map(|(position, event)| {
                rejected
                    .remove(&position)
                    .map(|why| event.dead_letter(&why, "read-models stage"))
            })
            .collect();
        if rejected.is_empty() {
            out.push(Batch::new(docs, acks, lane));
        } else {
            if !docs.is_empty() {
                out.push(Batch::new(docs, acks.clone(), lane));
            }
            out.push(Batch::new(rejected, acks, lane).to_output("rejected"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use salesflow_sales::{CartState, Decision, Order};
    use serde_json::json;

    use super::*;

    fn events(cart: Uuid, n: u32) -> Vec<(CartEvent, CartTotals)> {
        let mut state = CartState::default();
        (1..=n)
            .map(|i| {
                let order = Order {
                    order_id: Uuid::from_u128(u128::from(i)),
                    cart_id: cart,
                    user_id: "u".into(),
                    product_name: format!("p{i}"),
                    product_info: String::new(),
                    quantity: 1,
                    payment_method: "card".into(),
                    shipping_address: "a".into(),
                    billing_address: "b".into(),
                    amount: "1.00".parse().unwrap(),
                    discounts: "0".parse().unwrap(),
                    tax_amount: "0.20".parse().unwrap(),
                    subtotal: "1.20".parse().unwrap(),
                    shipping_method: "post".into(),
                    currency: "EUR".into(),
                    seller_info: "s".into(),
                    created_at: DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap(),
                };
                let Decision::Accepted(event) = state.decide(&order, Utc::now()) else {
                    panic!("refused")
                };
                let totals = state.apply(&event);
                (event, totals)
            })
            .collect()
    }

    fn updates(list: &[(CartEvent, CartTotals)]) -> Vec<(usize, CartEvent, Option<CartTotals>)> {
        list.iter()
            .enumerate()
            .map(|(i, (e, t))| (i, e.clone(), Some(t.clone())))
            .collect()
    }

    #[test]
    fn next_events_fold_and_older_ones_are_skipped() {
        let cart = Uuid::from_u128(1);
        let all = events(cart, 5);
        let mut folded = Cart::new(&all[0].0);
        // 1 again (redelivered), then 2 and 3.
        assert_eq!(
            fold_in_memory(&mut folded, &updates(&all[0..3])),
            (false, 1)
        );
        assert_eq!(folded.version, 3);
        assert_eq!(folded.totals(), all[2].1);
        // 5 without 4: a gap, rebuilt from the store.
        assert!(fold_in_memory(&mut folded, &updates(&all[4..5])).0);
    }

    #[test]
    fn totals_that_disagree_force_a_rebuild() {
        let cart = Uuid::from_u128(2);
        let all = events(cart, 2);
        let mut folded = Cart::new(&all[0].0);
        let mut forged = updates(&all[1..2]);
        forged[0].2.as_mut().unwrap().subtotal += rust_decimal::Decimal::ONE;
        assert!(fold_in_memory(&mut folded, &forged).0);
    }

    #[test]
    fn a_new_cart_starts_from_its_first_event_without_the_store() {
        let cart = Uuid::from_u128(4);
        let all = events(cart, 3);
        let fresh = new_cart(&updates(&all)).expect("starts at seq 1");
        assert_eq!(fresh.version, 1);
        assert_eq!(fresh.totals(), all[0].1);
        // Not from its first event: the cart must be read back.
        assert!(new_cart(&updates(&all[1..])).is_none());
        // Totals that disagree with the first event: read back too.
        let mut forged = updates(&all[..1]);
        forged[0].2.as_mut().unwrap().subtotal += rust_decimal::Decimal::ONE;
        assert!(new_cart(&forged).is_none());
    }

    #[test]
    fn records_are_read_with_or_without_known_totals() {
        let cart = Uuid::from_u128(3);
        let all = events(cart, 1);
        let event = serde_json::to_value(&all[0].0).unwrap();
        for record in [
            json!({ "event": event, "cart": all[0].1 }),
            json!({ "event": event }),
            // The record of earlier versions: the whole cart, which has no order_count.
            json!({ "event": event, "cart": { "cart_id": cart, "items": [] } }),
        ] {
            let update: Update = serde_json::from_value(record.clone()).unwrap();
            assert_eq!(update.event, all[0].0, "{record}");
        }
        assert!(serde_json::from_value::<Update>(json!({ "cart": all[0].1 })).is_err());
    }
}
