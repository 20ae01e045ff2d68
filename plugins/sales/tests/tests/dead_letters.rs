//! Poison messages against the real pipelines: records that cannot be parsed or break a
//! rule go to the dead-letter topic with their reason and source position while their
//! partition moves on; documents the index refuses go there too after the sink gives up;
//! `salesflow dlq list` shows them and `salesflow dlq replay` sends them back after a
//! fix, idempotently.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use support::bootstrap;
use support::sales::{Sales, order};
use uuid::Uuid;

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .create()
        .unwrap()
}

/// Produces one record; returns its (partition, offset).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut hs = OwnedHeaders::new();
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(hs);
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    (delivery.partition, delivery.offset)
}

/// `salesflow --config pipeline.toml <sales overrides> <args>`: (success, stdout, stderr).
fn salesflow(sales: &Sales, args: &[&str]) -> (bool, String, String) {
    let config = Sales::config().display().to_string();
    let overrides = sales.overrides();
    let mut all = vec!["--config", config.as_str()];
    all.extend(overrides.iter().map(String::as_str));
    all.extend(args);
    let ran = support::run(std::path::Path::new(BIN), &all, &[]);
    (ran.ok, ran.stdout, ran.stderr)
}

/// The dead letters of `topic`, as `salesflow dlq list --json` prints them.
fn dead_letters(sales: &Sales, topic: &str) -> Vec<Value> {
    let (ok, out, err) = salesflow(sales, &["dlq", "list", "--topic", topic, "--json"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn cart_items(client: &reqwest::Client, base: &str, cart: Uuid) -> Option<Vec<String>> {
    let r = client
        .get(format!("{base}/carts/{cart}"))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let doc: Value = r.json().await.ok()?;
    Some(
        doc["items"]
            .as_array()?
            .iter()
            .map(|i| i["order_id"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

async fn wait_for_items(
    client: &reqwest::Client,
    base: &str,
    cart: Uuid,
    items: &[String],
    host: &support::Host,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = cart_items(client, base, cart).await;
        if got.as_deref() == Some(items) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cart {cart}: {got:?}, expected {items:?}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    let producer = producer();

    let mut rng = support::sales::fresh_rng("poison");
    let cart = support::sales::cart(1, &mut rng);
    let key = cart.id.to_string();
    let first = order(1, &cart, &mut rng, 1);
    let second = order(1, &cart, &mut rng, 2);
    let mut wrong_user = order(1, &cart, &mut rng, 3).json;
    wrong_user["user_id"] = "someone-else".into();

    // All on the cart's key, so one partition: valid, garbage, invalid, a rule broken,
    // valid again.
    let json = |v: &Value| serde_json::to_vec(v).unwrap();
    send(&producer, &sales.orders, &key, &json(&first.json), &[]).await;
    let garbage = send(&producer, &sales.orders, &key, b"\x00\xffnot json", &[]).await;
    let mut invalid = first.json.clone();
    invalid["quantity"] = (-2).into();
    invalid["order_id"] = Uuid::new_v4().to_string().into();
    let bad = send(&producer, &sales.orders, &key, &json(&invalid), &[]).await;
    let refused = send(&producer, &sales.orders, &key, &json(&wrong_user), &[]).await;
    send(&producer, &sales.orders, &key, &json(&second.json), &[]).await;

    // The partition moved on: both valid orders are in the cart, in order.
    let ids = vec![first.order_id.to_string(), second.order_id.to_string()];
    wait_for_items(&client, &base, cart.id, &ids, &host).await;

    // Three dead letters, each with its reason and where it came from.
    let mut letters = Vec::new();
    support::wait_for("three dead letters", Duration::from_secs(30), || {
        letters = dead_letters(&sales, &sales.orders_dlq);
        letters.len() >= 3
    });
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let expectations = [
        (garbage, "not a valid order"),
        (bad, "quantity"),
        (refused, "user_id: the cart belongs to"),
    ];
    for (letter, ((partition, offset), reason)) in letters.iter().zip(expectations) {
        let h = &letter["headers"];
        assert_eq!(h["salesflow.source.topic"], sales.orders.as_str());
        assert_eq!(h["salesflow.source.partition"], partition.to_string());
        assert_eq!(h["salesflow.source.offset"], offset.to_string());
        assert_eq!(h["salesflow.failed.by"], "domain cart stage");
        assert!(
            h["salesflow.failed.at"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        let error = h["salesflow.error"].as_str().unwrap();
        assert!(error.contains(reason), "{error}");
    }
    let (ok, table, _) = salesflow(&sales, &["dlq", "list", "--topic", &sales.orders_dlq]);
    assert!(ok);
    assert!(table.contains("user_id: the cart belongs to"), "{table}");
    assert!(table.contains("3 dead letters"), "{table}");

    // A dead letter whose order became acceptable (simulated: a letter of a valid order,
    // as an outage that has since ended would leave), replayed twice: stored once.
    let third = order(1, &cart, &mut rng, 4);
    let (p, o) = send(
        &producer,
        &sales.orders_dlq,
        &key,
        &json(&third.json),
        &[
            ("salesflow.error", "the event store was down"),
            ("salesflow.source.topic", &sales.orders),
        ],
    )
    .await;
    for _ in 0..2 {
        let (ok, out, err) = salesflow(
            &sales,
            &[
                "dlq",
                "replay",
                "--topic",
                &sales.orders_dlq,
                "--offset",
                &format!("{p}:{o}"),
            ],
        );
        assert!(ok, "{out}{err}");
        assert!(out.contains("1 of 1 dead letters replayed"), "{out}");
    }
    let ids = vec![
        first.order_id.to_string(),
        second.order_id.to_string(),
        third.order_id.to_string(),
    ];
    wait_for_items(&client, &base, cart.id, &ids, &host).await;
    // Asking for what is not there is an error that says so.
    let (ok, _, err) = salesflow(
        &sales,
        &[
            "dlq",
            "replay",
            "--topic",
            &sales.orders_dlq,
            "--offset",
            "0:999999",
        ],
    );
    assert!(!ok);
    assert!(err.contains("no dead letter"), "{err}");
    let (ok, _, err) = salesflow(
        &sales,
        &[
            "dlq",
            "replay",
            "--topic",
            &sales.orders_dlq,
            "--offset",
            "zero",
        ],
    );
    assert!(!ok);
    assert!(err.contains("expected PARTITION:OFFSET"), "{err}");
    drop(host);
}

/// The projections' index refuses every detailed document (a wrong mapping): after its
/// retries the sink sends them to `cart-events-dlq`, the offsets move on, and after the
/// fix `salesflow dlq replay` re-reads their source records from `cart-events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_the_index_refuses_are_dead_lettered_and_replayed_after_a_fix() {
    let sales = Sales::new(BIN).await;
    let es = std::env::var("SALESFLOW_ELASTICSEARCH_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let http = reqwest::Client::new();
    // The broken index behind the detailed alias: cart ids are not integers.
    let index = format!("{}-000001", sales.detailed);
    let created = http
        .put(format!("{es}/{index}"))
        .json(&serde_json::json!({
            "mappings": { "properties": { "cart_id": { "type": "integer" } } },
            "aliases": { (sales.detailed.clone()): { "is_write_index": true } }
        }))
        .send()
        .await
        .unwrap();
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap()
    );

    let retry = "pipelines.projections.sinks.search-index.retry_timeout=1s".to_owned();
    let mut args = sales.overrides();
    args.extend(["--set".to_owned(), retry.clone(), "run".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = support::Host::start(std::path::Path::new(BIN), &Sales::config(), &args);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();

    let mut rng = support::sales::fresh_rng("refused documents");
    let cart = support::sales::cart(2, &mut rng);
    let orders: Vec<_> = (0..3).map(|n| order(2, &cart, &mut rng, n)).collect();
    for o in &orders {
        let r = client
            .post(format!("{base}/orders"))
            .json(&o.json)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // The updates end up dead letters: refused by the index, with their source position
    // (a batch keeps only the newest version of a cart, which holds every order).
    let deadline = Instant::now() + Duration::from_secs(60);
    let letters = loop {
        let letters = dead_letters(&sales, &sales.cart_events_dlq);
        let positions: std::collections::BTreeSet<String> = letters
            .iter()
            .map(|l| l["headers"]["salesflow.source.offset"].to_string())
            .collect();
        if !positions.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "the refused documents never became dead letters: {letters:#?}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for l in &letters {
        let h = &l["headers"];
        assert_eq!(h["salesflow.payload"], "transformed");
        assert_eq!(h["salesflow.source.topic"], sales.cart_events.as_str());
        assert!(
            h["salesflow.error"].as_str().unwrap().contains("cart_id"),
            "{h}"
        );
    }
    // The pipeline kept going: the process is healthy, nothing is stuck.
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(cart_items(&client, &base, cart.id).await.is_none());

    // The fix: the broken index goes; the sink makes a proper one when it starts again.
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let deleted = http.delete(format!("{es}/{index}")).send().await.unwrap();
    assert!(deleted.status().is_success());
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());

    // Replayed twice: the cart is whole, each order once.
    for _ in 0..2 {
        let (ok, out, err) = salesflow(
            &sales,
            &["dlq", "replay", "--topic", &sales.cart_events_dlq, "--all"],
        );
        assert!(ok, "{out}{err}");
    }
    let ids: Vec<String> = orders.iter().map(|o| o.order_id.to_string()).collect();
    wait_for_items(&client, &base, cart.id, &ids, &host).await;
    drop(host);
}

/// The first record of `topic`, exactly as stored: key, payload and headers in order.
type RawRecord = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

fn raw_records(topic: &str, count: usize) -> Vec<RawRecord> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Headers as _;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", support::unique("raw"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < count {
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {count} records",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    out
}

/// A record that is not even text — a binary key, a payload that is not UTF-8, a header
/// name given twice with binary values — is dead-lettered and replayed byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_replayed_byte_for_byte() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&["domain"]);
    let key: &[u8] = &[0xff, 0x00, 0x80, b'k'];
    let payload: &[u8] = b"\x00\xfe not an order \xff";
    let trace: &[u8] = &[0x01, 0xff, 0x00];
    let record = FutureRecord::to(&sales.orders)
        .key(key)
        .payload(payload)
        .headers(
            OwnedHeaders::new()
                .insert(Header {
                    key: "trace",
                    value: Some(trace),
                })
                .insert(Header {
                    key: "trace",
                    value: Some(b"second".as_slice()),
                }),
        );
    producer()
        .send(record, Duration::from_secs(10))
        .await
        .unwrap();
    let mut letters = Vec::new();
    support::wait_for("the dead letter", Duration::from_secs(60), || {
        letters = dead_letters(&sales, &sales.orders_dlq);
        !letters.is_empty()
    });
    assert_eq!(letters[0]["key"]["base64"], "/wCAaw==", "{:?}", letters[0]);
    let listed: Vec<&Value> = letters[0]["header_list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "trace")
        .collect();
    assert_eq!(listed.len(), 2, "{:?}", letters[0]);

    let target = support::unique("replayed");
    support::create_topic(&target, 1).await;
    let (ok, out, err) = salesflow(
        &sales,
        &[
            "dlq",
            "replay",
            "--topic",
            &sales.orders_dlq,
            "--all",
            "--to",
            &target,
        ],
    );
    assert!(ok, "{out}{err}");
    let replayed = tokio::task::spawn_blocking({
        let target = target.clone();
        move || raw_records(&target, 1)
    })
    .await
    .unwrap();
    let (got_key, got_payload, got_headers) = &replayed[0];
    assert_eq!(got_key.as_deref(), Some(key));
    assert_eq!(got_payload.as_deref(), Some(payload));
    let kept: Vec<(String, Option<Vec<u8>>)> = got_headers
        .iter()
        .filter(|(name, _)| !name.starts_with("salesflow."))
        .cloned()
        .collect();
    assert_eq!(
        kept,
        vec![
            ("trace".to_owned(), Some(trace.to_vec())),
            ("trace".to_owned(), Some(b"second".to_vec())),
        ]
    );
    assert!(
        got_headers
            .iter()
            .any(|(name, _)| name == "salesflow.replayed.from"),
        "{got_headers:?}"
    );
    drop(host);
    support::delete_topics(&[
        &target,
        &sales.orders,
        &sales.cart_events,
        &sales.orders_dlq,
        &sales.cart_events_dlq,
    ])
    .await;
}
