//! The sales system end to end on the local stack: orders posted to the Command API come
//! back from the Query API as carts — items, exact totals, currency, addresses — with
//! invalid orders nowhere and duplicates counted once; each cart's event stream in
//! Cassandra is complete and in order; a replay rebuilds identical read models; and two
//! domain workers share the partitions and survive one being killed.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_possible_wrap,
    clippy::similar_names,
    clippy::needless_range_loop
)]

use salesflow_testkit as support;
use support::es_url;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::sales::{
    CartSpec, OrderSpec, Rng, Sales, cart_at, cassandra, check_cart, dec, documents,
    expected_carts, order, post_accepted, post_all, post_batch,
};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_become_carts_exactly_and_replay_rebuilds_them() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let session = cassandra().await;

    // Carts are new on every run (the keyspace outlives tests): a fresh seed, printed.
    let seed = Uuid::new_v4().as_u64_pair().0;
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let carts: Vec<CartSpec> = (0..300)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let mut valid: Vec<OrderSpec> = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        for _ in 0..(5 + rng.below(11)) {
            let seq = valid.len();
            valid.push(order(i, cart, &mut rng, seq));
        }
    }
    // Invalid orders, each with one defect the schema catches.
    let mut invalid = Vec::new();
    for k in 0..100 {
        let mut o = order(
            k % carts.len(),
            &carts[k % carts.len()],
            &mut rng,
            100_000 + k,
        )
        .json;
        match k % 6 {
            0 => o["quantity"] = json!(0),
            1 => o["currency"] = json!("XXX"),
            2 => o["amount"] = json!("-1.00"),
            3 => o["order_id"] = json!("not-a-uuid"),
            4 => {
                o.as_object_mut().unwrap().remove("seller_info");
            }
            _ => o["created_at"] = json!("last tuesday"),
        }
        invalid.push(o);
    }

    // Requests of 1 to 40 orders; a tenth of the orders are posted a second time.
    let mut bodies: Vec<Value> = valid.iter().map(|o| o.json.clone()).collect();
    for i in (0..valid.len()).step_by(10) {
        bodies.push(valid[i].json.clone());
    }
    let mut requests = Vec::new();
    let mut rest = bodies;
    while !rest.is_empty() {
        let take = (1 + rng.below(40) as usize).min(rest.len());
        let at = rest.len() - take;
        requests.push(rest.split_off(at));
    }

    // A batch with invalid orders is refused whole, naming each of them; nothing of it is
    // kept. The client then resends the valid ones.
    let mut mixed = requests.pop().unwrap();
    let clean = mixed.clone();
    let invalid_positions: Vec<usize> = (0..3).map(|k| k * 2).collect();
    for (k, &at) in invalid_positions.iter().enumerate() {
        mixed.insert(at.min(mixed.len()), invalid[k].clone());
    }
    let (status, body) = post_batch(&client, &base, &mixed).await;
    assert_eq!(status, 400, "{body}");
    let named: Vec<u64> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(named.len(), 3, "{body}");
    for d in body["details"].as_array().unwrap() {
        assert!(!d["reasons"].as_array().unwrap().is_empty());
    }
    requests.push(clean);
    // The other invalid orders, alone and in NDJSON, are refused too.
    for o in &invalid[3..] {
        let r = client
            .post(format!("{base}/orders"))
            .json(o)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }

    let started = Instant::now();
    let total_posts = requests.iter().map(Vec::len).sum::<usize>();
    post_all(&base, requests, 8).await;
    let posted = started.elapsed();

    let expected = expected_carts(&valid);
    for (i, orders) in &expected {
        cart_at(
            &client,
            &base,
            carts[*i].id,
            orders.len() as u64,
            Duration::from_secs(180),
        )
        .await;
    }
    let queryable = started.elapsed();
    for (i, orders) in &expected {
        check_cart(&client, &base, &session, &carts[*i], orders).await;
    }
    println!(
        "{} orders ({} posts incl. duplicates) over {} carts: posted in {:.1} s, all queryable after {:.1} s: {:.0} orders/s end to end",
        valid.len(),
        total_posts,
        carts.len(),
        posted.as_secs_f64(),
        queryable.as_secs_f64(),
        valid.len() as f64 / queryable.as_secs_f64()
    );

    // Orders that break a cart's rule (another currency) are accepted by the API and
    // dead-lettered by the domain worker, with the reason; the carts do not change.
    let mut breakers = Vec::new();
    for i in 0..20 {
        let cart = &carts[i];
        let mut o = order(i, cart, &mut rng, 200_000 + i).json;
        o["currency"] = json!(if cart.currency == "EUR" { "CHF" } else { "EUR" });
        breakers.push(o);
    }
    post_accepted(&client, &base, &breakers).await;
    let dlq = tokio::task::spawn_blocking({
        let topic = sales.orders_dlq.clone();
        move || support::read_all(&topic, Duration::from_secs(60), |r| r.len() >= 20)
    })
    .await
    .unwrap();
    assert_eq!(dlq.len(), 20);
    for r in &dlq {
        assert!(
            r.headers["salesflow.error"].contains("currency"),
            "{:?}",
            r.headers
        );
        assert!(
            r.headers["salesflow.origin"].starts_with(&sales.orders),
            "{:?}",
            r.headers
        );
    }
    for i in 0..20 {
        let doc = cart_at(
            &client,
            &base,
            carts[i].id,
            expected[&i].len() as u64,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(doc["currency"], carts[i].currency.as_str());
    }

    // Search by user, and page through every cart with search_after.
    let page: Value = support::get_json(&client, format!("{base}/carts?user_id=user-5")).await;
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["cart_id"], carts[5].id.to_string());
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    let mut last_created = String::from("9999");
    loop {
        let url = match &after {
            None => format!("{base}/carts?size=37"),
            Some(a) => format!("{base}/carts?size=37&after={a}"),
        };
        let page: Value = support::get_json(&client, url).await;
        for item in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(item["cart_id"].as_str().unwrap().to_owned()),
                "a cart twice"
            );
            let created = item["created_at"].as_str().unwrap().to_owned();
            assert!(created <= last_created, "newest first");
            last_created = created;
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), carts.len());

    // Freshness: single orders, each timed from POST to queryable.
    let mut latencies = Vec::new();
    for k in 0..100 {
        let cart = support::sales::cart(10_000 + k, &mut rng);
        let o = order(0, &cart, &mut rng, 300_000 + k);
        let t = Instant::now();
        let r = client
            .post(format!("{base}/orders"))
            .json(&o.json)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        cart_at(&client, &base, cart.id, 1, Duration::from_secs(30)).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "POST to queryable, one order at a time: p50 {:.0} ms, p99 {:.0} ms (max {:.0} ms)",
        latencies[49], latencies[98], latencies[99]
    );

    // Replay: delete the read models, rebuild them from the event store: identical.
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let aliases = [sales.detailed.as_str(), sales.summary.as_str()];
    let ours: BTreeSet<String> = carts.iter().map(|c| c.id.to_string()).collect();
    let before = documents(&es_url(), &aliases, &ours).await;
    assert_eq!(before.len(), 2 * carts.len());
    let deleted = reqwest::Client::new()
        .delete(format!(
            "{}/{}-*,{}-*",
            es_url(),
            sales.detailed,
            sales.summary
        ))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let mut args = sales.overrides();
    args.push("replay".into());
    let out = std::process::Command::new(BIN)
        .arg("--config")
        .arg(Sales::config())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let after_replay = documents(&es_url(), &aliases, &ours).await;
    for (key, doc) in &before {
        assert_eq!(
            after_replay.get(key),
            Some(doc),
            "{key:?} differs after replay"
        );
    }
    sales.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_domain_workers_share_partitions_and_survive_a_kill() {
    let sales = Sales::new(BIN).await;
    let front = sales.start(&["command-api", "projections", "query-api"]);
    let first = sales.start(&["domain"]);
    let second = sales.start(&["domain"]);
    let base = format!("http://{}", front.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;

    // The group splits the 12 partitions between the two workers.
    // What a worker owns now: its assignments minus its revocations, in log order.
    let assigned = |host: &support::Host| -> BTreeSet<i64> {
        let mut owned = BTreeSet::new();
        for line in host.lines.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(p) = v["partition"].as_i64() else {
                continue;
            };
            if v["message"] == "partition assigned" {
                owned.insert(p);
            } else if v["message"] == "partition revoked and drained" {
                owned.remove(&p);
            }
        }
        owned
    };
    support::wait_for(
        "both workers to own partitions",
        Duration::from_secs(60),
        || {
            let (a, b) = (assigned(&first), assigned(&second));
            !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == 12
        },
    );
    let (a, b) = (assigned(&first), assigned(&second));
    println!("worker 1 owns {a:?}, worker 2 owns {b:?}");

    let seed = Uuid::new_v4().as_u64_pair().0;
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let carts: Vec<CartSpec> = (0..200)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let mut valid = Vec::new();
    for round in 0..10 {
        for (i, cart) in carts.iter().enumerate() {
            let seq = valid.len();
            let _ = round;
            valid.push(order(i, cart, &mut rng, seq));
        }
    }
    let requests: Vec<Vec<Value>> = valid
        .chunks(25)
        .map(|c| c.iter().map(|o| o.json.clone()).collect())
        .collect();
    let (early, late) = requests.split_at(requests.len() / 2);
    post_all(&base, early.to_vec(), 4).await;
    // Mid-load: one worker is killed; its partitions move to the other, which rebuilds
    // their carts from the event store.
    let poster = {
        let base = base.clone();
        let late = late.to_vec();
        tokio::spawn(async move { post_all(&base, late, 4).await })
    };
    let log = second.kill();
    poster.await.unwrap();

    let session = cassandra().await;
    let expected = expected_carts(&valid);
    for (i, orders) in &expected {
        check_cart(&client, &base, &session, &carts[*i], orders).await;
    }
    assert!(log.contains("partition assigned"));
    for host in [front, first] {
        let (status, log) = host.stop(Duration::from_secs(60));
        assert!(status.success(), "{log}");
    }
    sales.cleanup().await;
}

/// `salesflow replay` while orders flow: projections keep writing to the old indices until
/// the aliases switch, so a cart can move on there while its new document is written.
/// The load stops as soon as the replay returns: carts whose last orders were projected
/// into the old indices during the replay are exactly what its catch-up must rebuild.
/// Afterwards every cart is its event store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_load_leaves_no_cart_behind() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = support::sales::fresh_rng("replay-under-load");
    let carts: Vec<CartSpec> = (0..150)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let mut first = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        first.push(order(i, cart, &mut rng, i));
    }
    let requests: Vec<Vec<Value>> = first
        .chunks(10)
        .map(|c| c.iter().map(|o| o.json.clone()).collect())
        .collect();
    post_all(&base, requests, 4).await;

    let replaying = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poster = {
        let (base, replaying, carts) = (base.clone(), replaying.clone(), carts.clone());
        let mut rng = Rng::new(rng.next());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut accepted = Vec::new();
            let mut n = 1000;
            // A bounded load, as a shop sends it: at most 50 orders a second and 3000 in
            // all. Unpaced, the poster outruns a replay starved of CPU, and the replay (and
            // the lag it leaves) grows with every order posted meanwhile.
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while replaying.load(std::sync::atomic::Ordering::SeqCst) && accepted.len() < 3000 {
                pace.tick().await;
                let i = rng.below(carts.len() as u64) as usize;
                let o = order(i, &carts[i], &mut rng, n);
                post_accepted(&client, &base, std::slice::from_ref(&o.json)).await;
                accepted.push(o);
                n += 1;
            }
            accepted
        })
    };
    let mut args = sales.overrides();
    args.push("replay".into());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("--config")
            .arg(Sales::config())
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    replaying.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let during = poster.await.unwrap();
    println!("{} orders accepted while the replay ran", during.len());
    assert!(!during.is_empty(), "the replay must run under load");
    first.extend(during);
    let session = cassandra().await;
    for (i, orders) in &expected_carts(&first) {
        check_cart(&client, &base, &session, &carts[*i], orders).await;
    }
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}

/// A cart's money as the tests expect it from what was posted.
struct Expected {
    id: Uuid,
    user: String,
    currency: String,
    created_at: chrono::DateTime<chrono::Utc>,
    orders: u64,
    subtotal: Decimal,
    tax: Decimal,
    discounts: Decimal,
}

/// Every page of a search, following `next`: the hits' cart ids in order.
async fn all_pages(client: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut url = format!("{base}/carts?{query}");
    loop {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let page: Value = response.json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(next) => url = format!("{base}/carts?{query}&after={next}"),
            None => return items,
        }
    }
}

/// Money in the read models can be queried exactly: subtotal ranges (bounds included),
/// sorting by subtotal across pages, and each currency's totals over many carts —
/// including carts whose subtotals are past 2^53 ten-thousandths, where a sum in
/// doubles (Elasticsearch's `sum`) would lose the cents of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_filtered_sorted_and_totalled_exactly() {
    let sales = Sales::new(BIN).await;
    let host = sales.start(&[]);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let mut rng = support::sales::fresh_rng("money");
    let carts: Vec<CartSpec> = (0..60).map(|n| support::sales::cart(n, &mut rng)).collect();
    let mut orders: Vec<OrderSpec> = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        for _ in 0..=rng.below(4) {
            let seq = orders.len();
            let mut o = order(i, cart, &mut rng, seq);
            if i % 20 == 7 {
                // Three carts at the largest subtotal an order may have.
                o.subtotal = "999999999999.9999".parse().unwrap();
                o.json["subtotal"] = json!("999999999999.9999");
            }
            orders.push(o);
        }
    }
    for chunk in orders.chunks(20) {
        let body: Vec<Value> = chunk.iter().map(|o| o.json.clone()).collect();
        post_accepted(&client, &base, &body).await;
    }
    let by_cart = expected_carts(&orders);
    let expected: Vec<Expected> = by_cart
        .iter()
        .map(|(i, list)| Expected {
            id: carts[*i].id,
            user: carts[*i].user.clone(),
            currency: carts[*i].currency.clone(),
            created_at: list
                .iter()
                .map(|o| o.json["created_at"].as_str().unwrap().parse().unwrap())
                .min()
                .unwrap(),
            orders: list.len() as u64,
            subtotal: list.iter().map(|o| o.subtotal).sum(),
            tax: list.iter().map(|o| o.tax).sum(),
            discounts: list.iter().map(|o| o.discounts).sum(),
        })
        .collect();
    for e in &expected {
        cart_at(&client, &base, e.id, e.orders, Duration::from_secs(120)).await;
    }
    // The summaries are searched after their refresh: wait until every cart is found.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = support::get_json(&client, format!("{base}/carts?size=1")).await;
        if page["total"].as_u64() == Some(expected.len() as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every summary is searchable: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A subtotal range, both bounds carts' own subtotals: both are in it.
    let mut subtotals: Vec<Decimal> = expected.iter().map(|e| e.subtotal).collect();
    subtotals.sort();
    let (low, high) = (subtotals[10], subtotals[40]);
    let found: BTreeSet<String> = all_pages(
        &client,
        &base,
        &format!("min_subtotal={low}&max_subtotal={high}&size=9"),
    )
    .await
    .iter()
    .map(|s| s["cart_id"].as_str().unwrap().to_owned())
    .collect();
    let wanted: BTreeSet<String> = expected
        .iter()
        .filter(|e| (low..=high).contains(&e.subtotal))
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(found, wanted, "carts with subtotals from {low} to {high}");

    // Largest first, page after page, ties by cart id.
    let mut by_size: Vec<&Expected> = expected.iter().collect();
    by_size.sort_by(|a, b| {
        b.subtotal
            .cmp(&a.subtotal)
            .then(a.id.to_string().cmp(&b.id.to_string()))
    });
    let sorted: Vec<String> = all_pages(&client, &base, "sort=-subtotal&size=7")
        .await
        .iter()
        .map(|s| s["cart_id"].as_str().unwrap().to_owned())
        .collect();
    let wanted: Vec<String> = by_size.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(sorted, wanted, "carts by subtotal, largest first");
    // Totals per currency: all carts, one user's, and a time range's.
    let check_totals = |totals: Value, selected: Vec<&Expected>, what: &str| {
        let mut wanted: BTreeMap<&str, (u64, u64, Decimal, Decimal, Decimal)> = BTreeMap::new();
        for e in &selected {
            let t = wanted.entry(e.currency.as_str()).or_default();
            t.0 += 1;
            t.1 += e.orders;
            t.2 += e.subtotal;
            t.3 += e.tax;
            t.4 += e.discounts;
        }
        assert_eq!(
            totals["carts"].as_u64(),
            Some(selected.len() as u64),
            "{what}: {totals}"
        );
        let got: BTreeMap<&str, (u64, u64, Decimal, Decimal, Decimal)> = totals["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["currency"].as_str().unwrap(),
                    (
                        c["carts"].as_u64().unwrap(),
                        c["orders"].as_u64().unwrap(),
                        dec(&c["subtotal"]),
                        dec(&c["tax_amount"]),
                        dec(&c["discounts"]),
                    ),
                )
            })
            .collect();
        assert_eq!(got, wanted, "{what}: {totals}");
    };
    let all: Value = support::get_json(&client, format!("{base}/carts/totals")).await;
    check_totals(all.clone(), expected.iter().collect(), "every cart");
    let huge = expected
        .iter()
        .find(|e| e.subtotal > Decimal::from(1_000_000_000))
        .unwrap();
    assert!(
        all["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["currency"] == huge.currency.as_str()
                && dec(&c["subtotal"]) > Decimal::from(900_000_000_000_u64)),
        "a currency's total past 2^53 ten-thousandths: {all}"
    );
    let one = &expected[3];
    let mine: Value =
        support::get_json(&client, format!("{base}/carts/totals?user_id={}", one.user)).await;
    check_totals(
        mine,
        expected.iter().filter(|e| e.user == one.user).collect(),
        "one user's carts",
    );
    let mut times: Vec<_> = expected.iter().map(|e| e.created_at).collect();
    times.sort();
    let (from, to) = (times[5], times[30]);
    let ranged: Value = support::get_json(
        &client,
        format!(
            "{base}/carts/totals?from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .await;
    check_totals(
        ranged,
        expected
            .iter()
            .filter(|e| (from..=to).contains(&e.created_at))
            .collect(),
        "a time range's carts",
    );
    let response = client
        .get(format!("{base}/carts/totals?min_subtotal=1e3"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}
