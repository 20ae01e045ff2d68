//! Every accepted order kept exactly once, whoever writes to Kafka and however big the
//! cart, on the local stack's real servers. Each test reconciles the event store and the
//! read models with what was accepted: every order once, event numbers 1..n, the read
//! model holding the event store's history in its order, totals exact.
//!
//! - orders of one cart produced alternately over HTTP and with Kafka's Java console
//!   producer, with the default partitioner (one partition per cart) and with another
//!   (two lanes writing one cart: the appends are fenced);
//! - the `orders` topic grown from 12 to 24 partitions under load;
//! - a partition revoked while its Cassandra write is stalled past the drain timeout;
//! - the largest legal cart, and 45 orders with 4 KiB fields to one cart, while every
//!   pipeline keeps serving.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]

use salesflow_testkit as support;
use support::es_url;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use support::sales::{
    CartSpec, OrderSpec, Rng, Sales, cassandra, check_cart, expected_carts, fresh_rng,
    java_console_produce, order, post_accepted, post_all,
};
use support::{Host, bootstrap};
use uuid::Uuid;

/// `salesflow run` of the test's sales system with extra `--set`s.
fn start(sales: &Sales, pipelines: &[&str], sets: &[String]) -> Host {
    let mut args = sales.overrides();
    for set in sets {
        args.push("--set".into());
        args.push(set.clone());
    }
    args.push("run".into());
    for p in pipelines {
        args.push("--pipeline".into());
        args.push((*p).into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Host::start(std::path::Path::new(BIN), &Sales::config(), &args)
}

/// The partitions of `orders` each cart's records went to.
fn partitions_by_cart(sales: &Sales, expected: usize) -> BTreeMap<String, BTreeSet<i32>> {
    let records = support::read_all(&sales.orders, Duration::from_secs(60), |r| {
        r.len() >= expected
    });
    assert_eq!(records.len(), expected, "records on {}", sales.orders);
    let mut by_cart: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for r in records {
        by_cart.entry(r.key).or_default().insert(r.partition);
    }
    by_cart
}

/// Every cart checked in the read models and the event store.
async fn reconcile(base: &str, carts: &[CartSpec], orders: &[OrderSpec]) {
    let client = reqwest::Client::new();
    let session = cassandra().await;
    for (i, cart_orders) in &expected_carts(orders) {
        check_cart(&client, base, &session, &carts[*i], cart_orders).await;
    }
}

/// Carts whose orders go alternately through the Command API and Kafka's Java console
/// producer, round by round; returns whether some cart's records landed on more than
/// one partition of `orders`.
async fn http_and_java_alternate(partitioner: &str) -> bool {
    let sales = Sales::new(BIN).await;
    let host = start(
        &sales,
        &[],
        &[format!(
            "pipelines.command-api.sinks.orders-topic.partitioner={partitioner}"
        )],
    );
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = fresh_rng(partitioner);
    let carts: Vec<CartSpec> = (0..24).map(|n| support::sales::cart(n, &mut rng)).collect();
    let mut all = Vec::new();
    for round in 0..6 {
        let this: Vec<OrderSpec> = carts
            .iter()
            .enumerate()
            .map(|(i, cart)| order(i, cart, &mut rng, round * 100 + i))
            .collect();
        if round % 2 == 0 {
            for o in &this {
                post_accepted(&client, &base, std::slice::from_ref(&o.json)).await;
            }
        } else {
            let lines: Vec<(String, String)> = this
                .iter()
                .map(|o| (carts[o.cart].id.to_string(), o.json.to_string()))
                .collect();
            let topic = sales.orders.clone();
            tokio::task::spawn_blocking(move || java_console_produce(&topic, &lines))
                .await
                .unwrap();
        }
        all.extend(this);
    }
    reconcile(&base, &carts, &all).await;
    let total = all.len();
    let by_cart = {
        let sales = sales.clone();
        tokio::task::spawn_blocking(move || partitions_by_cart(&sales, total))
            .await
            .unwrap()
    };
    let spread = by_cart.values().filter(|p| p.len() > 1).count();
    println!(
        "{partitioner}: {} carts, {spread} of them over two partitions",
        by_cart.len()
    );
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
    spread > 0
}

/// With the default partitioner salesflow places a cart's records where Kafka's Java
/// clients do: one partition per cart, whoever produced them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carts_orders_from_http_and_the_java_producer_share_its_partition_and_are_kept_once() {
    assert!(
        !http_and_java_alternate("murmur2_random").await,
        "murmur2 puts each cart on the partition Java's producer uses"
    );
}

/// With librdkafka's old default (CRC32) a cart's HTTP orders and Java orders land on two
/// partitions, so two lanes append to one cart: the appends are fenced, and every order
/// is kept once, in both stores alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_written_from_two_partitions_is_still_kept_exactly_once() {
    assert!(
        http_and_java_alternate("consistent_random").await,
        "the test must put some cart on two partitions"
    );
}

/// What partitions a host's Kafka source was assigned (from its log).
fn assigned_partitions(host: &Host) -> BTreeSet<i64> {
    host.lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "partition assigned")
        .filter_map(|v| v["partition"].as_i64())
        .collect()
}

/// Requests of `size` orders, one order per cart per round, rounds in order.
fn rounds(
    carts: &[CartSpec],
    rng: &mut Rng,
    rounds: std::ops::Range<usize>,
    size: usize,
) -> (Vec<OrderSpec>, Vec<Vec<Value>>) {
    let mut orders = Vec::new();
    for round in rounds {
        for (i, cart) in carts.iter().enumerate() {
            orders.push(order(i, cart, rng, round * 10_000 + i));
        }
    }
    let requests = orders
        .chunks(size)
        .map(|c| c.iter().map(|o| o.json.clone()).collect())
        .collect();
    (orders, requests)
}

/// Partitions added to `orders` while orders flow: keys move to other partitions, so a
/// cart's old and new records sit on two partitions at once for a while. The domain's
/// lanes follow the new partitions, and nothing is lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_the_orders_topic_under_load_loses_and_duplicates_nothing() {
    let sales = Sales::new(BIN).await;
    let host = start(
        &sales,
        &[],
        &[
            "pipelines.command-api.sinks.orders-topic.metadata_refresh_ms=1000".into(),
            "pipelines.domain.sources.orders.metadata_refresh_ms=1000".into(),
        ],
    );
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = fresh_rng("grow");
    let carts: Vec<CartSpec> = (0..120)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let (mut orders, before) = rounds(&carts, &mut rng, 0..3, 6);
    let (during_orders, during) = rounds(&carts, &mut rng, 3..6, 3);
    let (after_orders, after) = rounds(&carts, &mut rng, 6..8, 6);
    post_all(&base, before, 4).await;

    // Load goes on while the topic grows.
    let poster = {
        let base = base.clone();
        tokio::spawn(async move { post_all(&base, during, 2).await })
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let grown = admin
        .create_partitions(
            &[NewPartitions::new(&sales.orders, 24)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let grown_at = Instant::now();
    support::wait_for(
        "the domain to be assigned the new partitions",
        Duration::from_secs(90),
        || assigned_partitions(&host).iter().any(|p| *p >= 12),
    );
    println!(
        "new partitions assigned {:.1} s after the topic grew",
        grown_at.elapsed().as_secs_f64()
    );
    poster.await.unwrap();
    post_all(&base, after, 4).await;
    orders.extend(during_orders);
    orders.extend(after_orders);

    reconcile(&base, &carts, &orders).await;
    let total = orders.len();
    let topic = sales.orders.clone();
    let by_cart = tokio::task::spawn_blocking(move || {
        let records = support::read_all(&topic, Duration::from_secs(60), |r| r.len() >= total);
        let mut by_cart: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for r in records {
            by_cart.entry(r.key).or_default().insert(r.partition);
        }
        by_cart
    })
    .await
    .unwrap();
    let moved = by_cart.values().filter(|p| p.len() > 1).count();
    println!(
        "{moved} of {} carts have records on two partitions",
        by_cart.len()
    );
    assert!(moved > 0, "growing the topic must move some carts");
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}

/// Resumes a process stopped with SIGSTOP when dropped, whatever happens in between.
struct Paused(u32);

impl Paused {
    fn cassandra() -> Self {
        let root = support::repo();
        let pid: u32 = std::fs::read_to_string(root.join(".stack/run/cassandra.pid"))
            .expect("the local stack's Cassandra pid file")
            .trim()
            .parse()
            .unwrap();
        Self::signal(pid, "STOP");
        Self(pid)
    }

    fn signal(pid: u32, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        Self::signal(self.0, "CONT");
    }
}

/// A domain worker leaves while Cassandra stalls its writes: its partitions' drain times
/// out and they go to the other worker, which decides the same orders again — while the
/// leaving worker's appends may still be queued in Cassandra. Fenced appends make the
/// two writers agree on every cart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_its_write_is_stalled_leaves_no_unfenced_writer() {
    let sales = Sales::new(BIN).await;
    let front = start(&sales, &["command-api", "projections", "query-api"], &[]);
    let staying = start(&sales, &["domain"], &[]);
    let leaving = start(
        &sales,
        &["domain"],
        &[
            "pipelines.domain.sources.orders.drain_timeout=2s".into(),
            "server.shutdown_grace=5s".into(),
        ],
    );
    let base = format!("http://{}", front.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    support::wait_for(
        "both workers to own partitions",
        Duration::from_secs(60),
        || !assigned_partitions(&staying).is_empty() && !assigned_partitions(&leaving).is_empty(),
    );
    let mut rng = fresh_rng("revoke");
    let carts: Vec<CartSpec> = (0..100)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let (mut orders, first) = rounds(&carts, &mut rng, 0..2, 10);
    let (later, second) = rounds(&carts, &mut rng, 2..8, 5);
    post_all(&base, first, 4).await;
    let retries = "salesflow_cassandra_retries_total";
    let leaving_address = leaving.address();
    let retried_before = support::metric_total(&client, &leaving_address, retries).await;
    let paused = Paused::cassandra();
    // Orders keep flowing into Kafka (the Command API does not need Cassandra); the
    // domain's appends stall.
    let poster = {
        let base = base.clone();
        tokio::spawn(async move { post_all(&base, second, 2).await })
    };
    // A request of the leaving worker to the stopped Cassandra timed out: it holds a
    // write that cannot finish before its drain does.
    support::wait_until(
        "a Cassandra request of the leaving worker to time out",
        Duration::from_secs(60),
        || async {
            support::metric_total(&client, &leaving_address, retries).await > retried_before
        },
    )
    .await;
    leaving.signal("TERM");
    let mut leaving = leaving;
    let status = tokio::task::spawn_blocking(move || {
        let status = leaving.wait(Duration::from_secs(60));
        (status, leaving.log())
    })
    .await
    .unwrap();
    let (_, leaving_log) = status;
    assert!(
        leaving_log.contains("drain timeout"),
        "the leaving worker's writes were not stalled past its drain:\n{leaving_log}"
    );
    drop(paused);
    poster.await.unwrap();
    orders.extend(later);
    reconcile(&base, &carts, &orders).await;
    let metrics = client
        .get(format!("http://{}/metrics", staying.address()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let conflicts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("salesflow_cart_redecided_total"))
        .collect();
    println!("after the stall: {conflicts:?}");
    for host in [front, staying] {
        let (status, log) = host.stop(Duration::from_secs(60));
        assert!(status.success(), "{log}");
    }
    sales.cleanup().await;
}

/// A string of `n` characters that JSON escapes worst (`\u0001`: six bytes each).
fn worst(n: usize) -> String {
    "\u{1}".repeat(n)
}

/// An order at every field's longest, in characters JSON escapes to six bytes.
fn largest_order(cart: Uuid, user: &str, n: usize) -> Value {
    json!({
        "order_id": Uuid::new_v4(),
        "cart_id": cart,
        "user_id": user,
        "product_name": format!("{n:06}{}", worst(250)),
        "product_info": worst(4096),
        "quantity": 10_000,
        "payment_method": worst(64),
        "shipping_address": worst(1024),
        "billing_address": worst(1024),
        "amount": "999999999999.9999",
        "discounts": "0.0001",
        "tax_amount": "0.5",
        "subtotal": "1.0001",
        "shipping_method": worst(64),
        "currency": "EUR",
        "seller_info": worst(256),
        "created_at": "2026-11-30T10:15:00.123456Z",
    })
}

/// The version of a cart's detailed document in Elasticsearch (0 when there is none),
/// without fetching the document.
async fn indexed_version(alias: &str, cart: Uuid) -> u64 {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/{alias}/_doc/{cart}?_source=false", es_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["_version"].as_u64().unwrap_or(0)
}

/// The documents in the index behind `alias` (`_count`) and the Lucene documents its
/// primary shards hold (index stats, which count each nested object as one), after a
/// refresh.
async fn detailed_documents(alias: &str) -> (u64, u64) {
    let client = reqwest::Client::new();
    let es = es_url();
    let refreshed = client
        .post(format!("{es}/{alias}/_refresh"))
        .send()
        .await
        .unwrap();
    assert!(refreshed.status().is_success());
    let mut answers = Vec::new();
    for path in ["_count", "_stats/docs"] {
        let body: Value = client
            .get(format!("{es}/{alias}/{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answers.push(body);
    }
    (
        answers[0]["count"].as_u64().unwrap(),
        answers[1]["_all"]["primaries"]["docs"]["count"]
            .as_u64()
            .unwrap(),
    )
}

/// The largest legal cart (1000 orders, every field at its longest, in characters that
/// escape worst) and a cart of 45 orders with 4 KiB fields flow end to end; a canary
/// order posted every half second meanwhile keeps becoming queryable, and readiness stays
/// up: no record grows with its cart, and nothing stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legal_cart_flows_and_every_pipeline_keeps_serving() {
    let sales = Sales::new(BIN).await;
    let host = start(&sales, &[], &[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let user = worst(128);
    let big = Uuid::new_v4();
    let wide = Uuid::new_v4();
    let big_orders: Vec<Value> = (0..1000).map(|n| largest_order(big, &user, n)).collect();
    let mut wide_orders = Vec::new();
    for n in 0..45 {
        let mut o = largest_order(wide, "user-wide", n);
        o["product_info"] = json!(worst(4096));
        o["quantity"] = json!(2);
        wide_orders.push(o);
    }

    // A canary: one small order every half second to its own cart, each queryable soon.
    let stop = tokio_util::sync::CancellationToken::new();
    let canary = {
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = Rng::new(7 + Uuid::new_v4().as_u64_pair().0);
            let mut slowest = Duration::ZERO;
            let mut count = 0;
            while !stop.is_cancelled() {
                let cart = support::sales::cart(count, &mut rng);
                let o = order(0, &cart, &mut rng, count);
                let t = Instant::now();
                post_accepted(&client, &base, std::slice::from_ref(&o.json)).await;
                support::sales::cart_at(&client, &base, cart.id, 1, Duration::from_secs(60)).await;
                let ready = client
                    .get(format!("{base}/health/ready"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(ready, 200, "readiness dropped while the big carts flowed");
                slowest = slowest.max(t.elapsed());
                count += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (count, slowest)
        })
    };

    let started = Instant::now();
    for chunk in wide_orders.chunks(20) {
        post_accepted(&client, &base, chunk).await;
    }
    for chunk in big_orders.chunks(20) {
        post_accepted(&client, &base, chunk).await;
    }
    println!(
        "1045 orders of {} KiB accepted in {:.1} s",
        big_orders[0].to_string().len() / 1024,
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    for (cart, n) in [(wide, 45), (big, 1000)] {
        while indexed_version(&sales.detailed, cart).await < n {
            assert!(
                Instant::now() < deadline,
                "cart {cart} not at version {n} in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "both carts queryable {:.1} s after the first post",
        started.elapsed().as_secs_f64()
    );
    stop.cancel();
    let (canaries, slowest) = canary.await.unwrap();
    println!("{canaries} canary orders, the slowest queryable after {slowest:?}");
    assert!(canaries > 0);

    // Both stores hold every order once, in the same order.
    let session = cassandra().await;
    for (cart, posted) in [(wide, &wide_orders), (big, &big_orders)] {
        let (doc, in_store) =
            support::sales::model_is_store(&client, &base, &session, cart, posted.len() as u64)
                .await;
        let ids: BTreeSet<String> = posted
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect();
        let stored: BTreeSet<String> = in_store.iter().map(Uuid::to_string).collect();
        assert_eq!(stored, ids);
        assert_eq!(doc["order_count"].as_u64(), Some(posted.len() as u64));
    }
    // Nor does the detailed index: each cart is one Lucene document, its items kept in
    // `_source` and not indexed (as nested objects, the big cart was 1001 documents that
    // every one of its updates deleted and wrote again).
    let (documents, lucene) = detailed_documents(&sales.detailed).await;
    assert_eq!(lucene, documents, "Lucene documents against carts");

    // The cart is full: the 1001st order is accepted by the API and refused by the cart,
    // with the reason.
    let extra = largest_order(big, &user, 1000);
    post_accepted(&client, &base, std::slice::from_ref(&extra)).await;
    let topic = sales.orders_dlq.clone();
    let letters = tokio::task::spawn_blocking(move || {
        support::read_all(&topic, Duration::from_secs(60), |r| !r.is_empty())
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].headers["salesflow.error"].contains("already holds 1000 orders"),
        "{:?}",
        letters[0].headers
    );
    let (status, log) = host.stop(Duration::from_secs(120));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}

/// Sets `index.blocks.write` on the index behind `alias`.
async fn block_writes(alias: &str, blocked: bool) {
    let response = reqwest::Client::new()
        .put(format!("{}/{alias}/_settings", es_url()))
        .json(&json!({ "index.blocks.write": blocked }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// The projections fold a cart's event into memory before its documents are written.
/// When the write fails past the sink's retries (the index refuses writes for a while),
/// the batch goes back to its source and comes again with an event the projection
/// already holds: its documents are still owed, and are written then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_write_that_failed_is_made_when_its_events_come_again() {
    let sales = Sales::new(BIN).await;
    let host = start(
        &sales,
        &[],
        &["pipelines.projections.sinks.search-index.retry_timeout=1s".into()],
    );
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = fresh_rng("owed");
    let carts = vec![support::sales::cart(0, &mut rng)];
    let first = order(0, &carts[0], &mut rng, 1);
    post_accepted(&client, &base, std::slice::from_ref(&first.json)).await;
    support::sales::cart_at(&client, &base, carts[0].id, 1, Duration::from_secs(60)).await;

    block_writes(&sales.detailed, true).await;
    let second = order(0, &carts[0], &mut rng, 2);
    post_accepted(&client, &base, std::slice::from_ref(&second.json)).await;
    support::wait_for(
        "the read models' write to fail back to its source",
        Duration::from_secs(60),
        || {
            host.log()
                .contains("sink write failed; the batch goes back to its source")
        },
    );
    block_writes(&sales.detailed, false).await;

    reconcile(&base, &carts, &[first, second]).await;
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}
