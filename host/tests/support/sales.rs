//! The sales system on the local stack, isolated per test: its own topics, consumer
//! groups and index aliases (the keyspace is shared; carts are fresh UUIDs), run from the
//! repository's pipeline.toml with `--set` overrides, as an operator would.

#![allow(dead_code)]
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Host, create_topic, unique};

pub struct Sales {
    pub tag: String,
    pub orders: String,
    pub cart_events: String,
    pub orders_dlq: String,
    pub cart_events_dlq: String,
    pub detailed: String,
    pub summary: String,
}

impl Sales {
    pub async fn new() -> Self {
        let tag = unique("t").replace('-', "");
        let s = Self {
            orders: format!("orders-{tag}"),
            cart_events: format!("cart-events-{tag}"),
            orders_dlq: format!("orders-dlq-{tag}"),
            cart_events_dlq: format!("cart-events-dlq-{tag}"),
            detailed: format!("carts-detailed-{tag}"),
            summary: format!("carts-summary-{tag}"),
            tag,
        };
        create_topic(&s.orders, 12).await;
        create_topic(&s.cart_events, 12).await;
        create_topic(&s.orders_dlq, 1).await;
        create_topic(&s.cart_events_dlq, 1).await;
        s
    }

    pub fn config() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml")
    }

    /// The overrides that point the default pipelines at this test's topics and aliases.
    pub fn overrides(&self) -> Vec<String> {
        let t = &self.tag;
        [
            format!(
                "pipelines.command-api.sinks.orders-topic.topic={}",
                self.orders
            ),
            format!(
                "pipelines.domain.sources.orders.topics=[\"{}\"]",
                self.orders
            ),
            format!("pipelines.domain.sources.orders.group_id=domain-{t}"),
            format!(
                "pipelines.domain.sinks.cart-events.topic={}",
                self.cart_events
            ),
            format!(
                "pipelines.domain.sinks.dead-letters.topic={}",
                self.orders_dlq
            ),
            format!(
                "pipelines.projections.sources.cart-events.topics=[\"{}\"]",
                self.cart_events
            ),
            format!("pipelines.projections.sources.cart-events.group_id=projections-{t}"),
            format!(
                "pipelines.projections.sinks.dead-letters.topic={}",
                self.cart_events_dlq
            ),
            format!(
                "pipelines.projections.stages.read-models.detailed_alias={}",
                self.detailed
            ),
            format!(
                "pipelines.projections.stages.read-models.summary_alias={}",
                self.summary
            ),
            format!(
                "pipelines.projections.sinks.search-index.aliases=[\"{}\", \"{}\"]",
                self.detailed, self.summary
            ),
            format!(
                "pipelines.query-api.sources.api.detailed_alias={}",
                self.detailed
            ),
            format!(
                "pipelines.query-api.sources.api.summary_alias={}",
                self.summary
            ),
        ]
        .into_iter()
        .flat_map(|s| ["--set".to_owned(), s])
        .collect()
    }

    /// `salesflow run` of the named pipelines (all when empty).
    pub fn start(&self, pipelines: &[&str]) -> Host {
        let mut args: Vec<String> = self.overrides();
        args.push("run".into());
        for p in pipelines {
            args.push("--pipeline".into());
            args.push((*p).into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Host::start(&Self::config(), &args)
    }
}

/// A small deterministic generator (xorshift), so that a failure reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A cart's fixed traits, shared by all its orders.
#[derive(Clone, Debug)]
pub struct CartSpec {
    pub id: Uuid,
    pub user: String,
    pub currency: &'static str,
    pub shipping: String,
    pub billing: String,
}

pub const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];

impl CartSpec {
    pub fn new(n: usize, rng: &mut Rng) -> Self {
        Self {
            id: Uuid::from_u64_pair(rng.next(), rng.next()),
            user: format!("user-{n}"),
            currency: CURRENCIES[n % CURRENCIES.len()],
            shipping: format!("{n} Harbour Road, Portsmouth"),
            billing: format!("{n} Mill Lane, Leeds"),
        }
    }
}

/// One order as posted, with its exact amounts.
#[derive(Clone, Debug)]
pub struct OrderSpec {
    pub order_id: Uuid,
    pub cart: usize,
    pub product: String,
    pub quantity: u32,
    pub amount: Decimal,
    pub discounts: Decimal,
    pub tax: Decimal,
    pub subtotal: Decimal,
    pub json: Value,
}

fn money(rng: &mut Rng, max_cents: u64) -> Decimal {
    Decimal::new(i64::try_from(rng.below(max_cents)).unwrap(), 2)
}

const PRODUCTS: [&str; 8] = [
    "trail running shoes",
    "wool socks",
    "rain jacket",
    "water bottle",
    "head torch",
    "camping stove",
    "sleeping bag",
    "map case",
];

pub fn order(cart_index: usize, cart: &CartSpec, rng: &mut Rng, seq: usize) -> OrderSpec {
    let quantity = u32::try_from(1 + rng.below(5)).unwrap();
    let amount = money(rng, 50_000);
    // Discounts never exceed the goods: the subtotal stays positive.
    let discounts = money(rng, 500).min(amount * Decimal::from(quantity));
    let tax = money(rng, 5_000);
    let subtotal = amount * Decimal::from(quantity) - discounts + tax;
    let product = format!("{} {}", PRODUCTS[rng.below(8) as usize], seq);
    let order_id = Uuid::from_u64_pair(rng.next(), rng.next());
    // Some amounts go as JSON numbers, the rest as strings: both are read exactly.
    let as_number = seq.is_multiple_of(7);
    let m = |d: Decimal| -> Value {
        if as_number {
            serde_json::from_str(&d.to_string()).unwrap()
        } else {
            json!(d.to_string())
        }
    };
    let json = json!({
        "order_id": order_id,
        "cart_id": cart.id,
        "user_id": cart.user,
        "product_name": product,
        "product_info": "colour: green",
        "quantity": quantity,
        "payment_method": "card",
        "shipping_address": cart.shipping,
        "billing_address": cart.billing,
        "amount": m(amount),
        "discounts": m(discounts),
        "tax_amount": m(tax),
        "subtotal": m(subtotal),
        "shipping_method": "standard",
        "currency": cart.currency,
        "seller_info": "Acme Outdoor",
        "created_at": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + seq % 28, seq % 24, seq % 60),
    });
    OrderSpec {
        order_id,
        cart: cart_index,
        product,
        quantity,
        amount,
        discounts,
        tax,
        subtotal,
        json,
    }
}

/// Posts a batch; returns the status and body.
pub async fn post_batch(client: &reqwest::Client, base: &str, orders: &[Value]) -> (u16, Value) {
    let response = client
        .post(format!("{base}/orders/batch"))
        .json(&orders)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Posts until accepted, retrying 429/503 (after Retry-After) as a client should.
pub async fn post_accepted(client: &reqwest::Client, base: &str, orders: &[Value]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = post_batch(client, base, orders).await;
        match status {
            202 => return,
            429 | 503 | 504 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("posting {} orders: {status} {body}", orders.len()),
        }
    }
}

/// The detailed document of a cart, once its version reaches `version`.
pub async fn cart_at(
    client: &reqwest::Client,
    base: &str,
    id: Uuid,
    version: u64,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let response = client
            .get(format!("{base}/carts/{id}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            let doc: Value = response.json().await.unwrap();
            if doc["version"].as_u64() == Some(version) {
                return doc;
            }
            assert!(
                doc["version"].as_u64().unwrap_or(0) <= version,
                "cart {id} went past {version}: {doc}"
            );
        }
        assert!(
            Instant::now() < deadline,
            "cart {id} did not reach version {version}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a cart must hold: its orders by id.
pub fn expected_carts(orders: &[OrderSpec]) -> BTreeMap<usize, Vec<&OrderSpec>> {
    let mut carts: BTreeMap<usize, Vec<&OrderSpec>> = BTreeMap::new();
    for o in orders {
        carts.entry(o.cart).or_default().push(o);
    }
    carts
}

/// A generator seeded afresh for each run (cart ids must not meet carts an earlier run
/// left in the shared event store); the seed is printed so that a failure reproduces.
pub fn fresh_rng(test: &str) -> Rng {
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    println!("{test}: seed {seed}");
    Rng::new(seed)
}
