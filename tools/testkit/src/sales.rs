//! The sales system on the local stack, isolated per test or benchmark run: its own
//! topics, consumer groups and index aliases (the keyspace is shared; carts are fresh
//! UUIDs), run from the repository's pipeline.toml with `--set` overrides, as an operator
//! would; its orders (from the load generator's one order builder) and their
//! reconciliation against the event store and the read models.

#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Host, create_topic, unique};

#[derive(Clone)]
pub struct Sales {
    /// The `salesflow` binary the system runs on.
    pub binary: PathBuf,
    pub tag: String,
    pub orders: String,
    pub cart_events: String,
    pub orders_dlq: String,
    pub cart_events_dlq: String,
    pub detailed: String,
    pub summary: String,
}

impl Sales {
    /// A new isolated system: its topics are created.
    pub async fn new(binary: impl Into<PathBuf>) -> Self {
        let s = Self::named(binary, &unique("t").replace('-', ""));
        create_topic(&s.orders, 12).await;
        create_topic(&s.cart_events, 12).await;
        create_topic(&s.orders_dlq, 1).await;
        create_topic(&s.cart_events_dlq, 1).await;
        s
    }

    /// The names of a system tagged `tag` (nothing created).
    pub fn named(binary: impl Into<PathBuf>, tag: &str) -> Self {
        let tag = tag.to_owned();
        Self {
            binary: binary.into(),
            orders: format!("orders-{tag}"),
            cart_events: format!("cart-events-{tag}"),
            orders_dlq: format!("orders-dlq-{tag}"),
            cart_events_dlq: format!("cart-events-dlq-{tag}"),
            detailed: format!("carts-detailed-{tag}"),
            summary: format!("carts-summary-{tag}"),
            tag,
        }
    }

    pub fn config() -> PathBuf {
        super::repo().join("pipeline.toml")
    }

    /// The overrides that point the default pipelines at this system's topics and
    /// aliases, as `--set` arguments.
    pub fn overrides(&self) -> Vec<String> {
        self.sets()
            .into_iter()
            .flat_map(|s| ["--set".to_owned(), s])
            .collect()
    }

    /// The same overrides, as `key=value`.
    pub fn sets(&self) -> Vec<String> {
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
        .into()
    }

    /// Deletes the system's topics and indices.
    pub async fn cleanup(&self) {
        super::delete_topics(&[
            &self.orders,
            &self.cart_events,
            &self.orders_dlq,
            &self.cart_events_dlq,
        ])
        .await;
        let _ = reqwest::Client::new()
            .delete(format!(
                "{}/{}*,{}*",
                super::es_url(),
                self.detailed,
                self.summary
            ))
            .send()
            .await;
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
        Host::start(&self.binary, &Self::config(), &args)
    }
}

/// A small deterministic generator (xorshift), so that a failure reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    /// The next number (not an `Iterator`: it never ends, and the tests call it by name).
    #[allow(clippy::should_implement_trait)]
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

/// A cart's fixed traits, shared by all its orders: the load generator's cart.
pub type CartSpec = salesflow_load::data::Cart;

pub const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];

/// The `n`-th cart of a test: user `user-{n}`, currencies in turn, a fresh id.
pub fn cart(n: usize, rng: &mut Rng) -> CartSpec {
    CartSpec::new(
        n,
        Uuid::from_u64_pair(rng.next(), rng.next()),
        format!("user-{n}"),
        CURRENCIES[n % CURRENCIES.len()].to_owned(),
    )
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

/// The `seq`-th order of a test, for the cart at `cart_index`: random amounts (discounts
/// never above the goods), a product named after `seq`, and one order in seven with its
/// amounts as JSON numbers instead of strings.
pub fn order(cart_index: usize, cart: &CartSpec, rng: &mut Rng, seq: usize) -> OrderSpec {
    let quantity = u32::try_from(1 + rng.below(5)).unwrap();
    let amount = money(rng, 50_000);
    let discounts = money(rng, 500).min(amount * Decimal::from(quantity));
    let tax = money(rng, 5_000);
    let products = salesflow_load::data::PRODUCTS;
    let product = format!(
        "{} {}",
        products[rng.below(products.len() as u64) as usize],
        seq
    );
    let order_id = Uuid::from_u64_pair(rng.next(), rng.next());
    let line = salesflow_load::data::Line {
        product: &product,
        info: "colour: green",
        quantity,
        amount,
        discounts,
        tax,
    };
    let created_at = format!(
        "2026-11-{:02}T{:02}:{:02}:00Z",
        1 + seq % 28,
        seq % 24,
        seq % 60
    );
    let json =
        salesflow_load::data::order_body(cart, order_id, &line, &created_at, seq.is_multiple_of(7));
    OrderSpec {
        order_id,
        cart: cart_index,
        subtotal: line.subtotal(),
        product,
        quantity,
        amount,
        discounts,
        tax,
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
        let status = response.status();
        let last = if status == 200 {
            let doc: Value = response.json().await.unwrap();
            if doc["version"].as_u64() == Some(version) {
                return doc;
            }
            assert!(
                doc["version"].as_u64().unwrap_or(0) <= version,
                "cart {id} went past {version}: {doc}"
            );
            format!("version {}", doc["version"])
        } else {
            format!("{status} {}", response.text().await.unwrap_or_default())
        };
        assert!(
            Instant::now() < deadline,
            "cart {id} did not reach version {version} in {timeout:?}: the Query API last \
             answered {last}"
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

pub fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

pub async fn cassandra() -> scylla::client::session::Session {
    scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(super::cassandra_nodes())
        .build()
        .await
        .unwrap()
}

/// The event stream of a cart as Cassandra holds it: (seq, order id), in order.
pub async fn stored_events(
    session: &scylla::client::session::Session,
    cart: Uuid,
) -> Vec<(i64, Uuid)> {
    let mut out = Vec::new();
    for bucket in 0..10_i32 {
        let rows = session
            .query_unpaged(
                "SELECT seq, order_id FROM salesflow.cart_events WHERE cart_id = ? AND bucket = ?",
                (cart, bucket),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        let part: Vec<(i64, Uuid)> = rows
            .rows::<(i64, Uuid)>()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if part.is_empty() {
            break;
        }
        out.extend(part);
    }
    out
}

/// Checks one cart everywhere against what was posted.
pub async fn check_cart(
    client: &reqwest::Client,
    base: &str,
    session: &scylla::client::session::Session,
    spec: &CartSpec,
    orders: &[&OrderSpec],
) {
    let n = orders.len() as u64;
    let doc = cart_at(client, base, spec.id, n, Duration::from_secs(180)).await;
    assert_eq!(doc["user_id"], spec.user.as_str());
    assert_eq!(doc["currency"], spec.currency);
    assert_eq!(doc["shipping_address"], spec.shipping_address.as_str());
    assert_eq!(doc["billing_address"], spec.billing_address.as_str());
    assert_eq!(doc["order_count"].as_u64(), Some(n));
    let items: BTreeMap<String, &Value> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["order_id"].as_str().unwrap().to_owned(), i))
        .collect();
    assert_eq!(items.len(), orders.len(), "cart {}: items", spec.id);
    for o in orders {
        let item = items
            .get(&o.order_id.to_string())
            .unwrap_or_else(|| panic!("order {} missing from cart {}", o.order_id, spec.id));
        assert_eq!(item["product_name"], o.product.as_str());
        assert_eq!(item["quantity"].as_u64(), Some(u64::from(o.quantity)));
        assert_eq!(
            dec(&item["amount"]),
            o.amount,
            "order {} amount: {item}",
            o.order_id
        );
        assert_eq!(
            dec(&item["subtotal"]),
            o.subtotal,
            "order {} subtotal: {item}",
            o.order_id
        );
        assert_eq!(
            dec(&item["tax_amount"]),
            o.tax,
            "order {} tax: {item}",
            o.order_id
        );
        assert_eq!(
            dec(&item["discounts"]),
            o.discounts,
            "order {} discounts: {item}",
            o.order_id
        );
    }
    let sum = |f: fn(&OrderSpec) -> Decimal| orders.iter().map(|o| f(o)).sum::<Decimal>();
    assert_eq!(
        dec(&doc["subtotal"]),
        sum(|o| o.subtotal),
        "cart {} subtotal",
        spec.id
    );
    assert_eq!(
        dec(&doc["tax_amount"]),
        sum(|o| o.tax),
        "cart {} tax",
        spec.id
    );
    assert_eq!(
        dec(&doc["discounts"]),
        sum(|o| o.discounts),
        "cart {} discounts",
        spec.id
    );
    let summary: Value = crate::get_json(client, format!("{base}/carts/{}/summary", spec.id)).await;
    assert_eq!(summary["subtotal"], doc["subtotal"]);
    for o in orders {
        assert!(summary["products"].as_str().unwrap().contains(&o.product));
    }
    // The event stream: 1..n, every order once, in the read model's order.
    let (_, in_store) = model_is_store(client, base, session, spec.id, n).await;
    let seqs: Vec<i64> = (1..=n as i64).collect();
    let ids: BTreeSet<Uuid> = in_store.iter().copied().collect();
    let expected: BTreeSet<Uuid> = orders.iter().map(|o| o.order_id).collect();
    assert_eq!(ids, expected, "cart {} events", spec.id);
    // The API's view of the stream agrees, in order.
    let api: Value = crate::get_json(client, format!("{base}/carts/{}/events", spec.id)).await;
    let api_seqs: Vec<i64> = api["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(api_seqs, seqs);
}

/// A cart's read model is its event store: events 1..n, and the model's items the
/// store's orders in the same order. Returns the document and the stored order ids.
pub async fn model_is_store(
    client: &reqwest::Client,
    base: &str,
    session: &scylla::client::session::Session,
    cart: Uuid,
    n: u64,
) -> (Value, Vec<Uuid>) {
    let doc: Value = crate::get_json(client, format!("{base}/carts/{cart}")).await;
    let events = stored_events(session, cart).await;
    assert_eq!(
        events.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=n as i64).collect::<Vec<_>>(),
        "cart {cart} event numbers"
    );
    let in_model: Vec<Uuid> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Uuid::parse_str(i["order_id"].as_str().unwrap()).unwrap())
        .collect();
    let in_store: Vec<Uuid> = events.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        in_model, in_store,
        "cart {cart}: read model and event store disagree"
    );
    (doc, in_store)
}

/// Every document of the two read models, by index alias and id.
/// The documents of `ids` under each alias. (A replay indexes every cart of the shared
/// event store, so the test looks only at its own.)
pub async fn documents(
    es: &str,
    aliases: &[&str],
    ids: &BTreeSet<String>,
) -> BTreeMap<(String, String), Value> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for alias in aliases {
        let _ = client.post(format!("{es}/{alias}/_refresh")).send().await;
        let body: Value = client
            .post(format!("{es}/{alias}/_search"))
            .json(&json!({ "size": ids.len(), "query": { "ids": { "values": ids } } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for hit in body["hits"]["hits"].as_array().unwrap() {
            out.insert(
                ((*alias).to_owned(), hit["_id"].as_str().unwrap().to_owned()),
                hit["_source"].clone(),
            );
        }
    }
    out
}

/// Posts requests from a shared queue with `workers` concurrent clients.
pub async fn post_all(base: &str, requests: Vec<Vec<Value>>, workers: usize) {
    let queue = Arc::new(Mutex::new(requests));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(request) = next else { break };
                post_accepted(&client, &base, &request).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Produces `key|value` lines with Kafka's own Java console producer (the kafka-tools jar
/// the local stack resolved), as a user with Kafka's tools would: it hashes keys with
/// murmur2, as every Java client does. Returns once the producer has exited.
pub fn java_console_produce(topic: &str, records: &[(String, String)]) {
    use std::io::Write as _;
    let root = super::repo();
    let classpath = std::fs::read_to_string(root.join(".stack/classpath/kafka.cp"))
        .expect("the local stack's Kafka classpath (scripts/stack up)");
    let mut child = std::process::Command::new("java")
        .args(["-Xmx256m", "-cp", classpath.trim()])
        .arg("org.apache.kafka.tools.ConsoleProducer")
        .args(["--bootstrap-server", &super::bootstrap(), "--topic", topic])
        .args(["--property", "parse.key=true"])
        .args(["--property", "key.separator=|"])
        .args(["--producer-property", "acks=all"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start java");
    {
        let mut stdin = child.stdin.take().unwrap();
        for (key, value) in records {
            assert!(!value.contains('\n') && !key.contains('|'));
            writeln!(stdin, "{key}|{value}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ConsoleProducer failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
