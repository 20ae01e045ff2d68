//! Observability on a live run: the four pipelines under load, scraped by the local
//! stack's real Prometheus; every dashboard panel's query and every alert rule's
//! expression is evaluated there (valid, and each panel returns data); the consumer lag
//! salesflow reports agrees with the offsets Kafka holds for the group; and stopping
//! Cassandra turns readiness 503 until it is back.
//!
//! It stops and restarts the local stack's Cassandra, so it is the only test of its
//! binary (test binaries run one after another).

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.
#![allow(clippy::cast_possible_truncation)] // Offsets read back from metrics text.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sales::{CartSpec, Rng, Sales, order, post_accepted, post_batch};
use uuid::Uuid;

fn prometheus() -> String {
    std::env::var("SALESFLOW_PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".into())
}

async fn instant_query(client: &reqwest::Client, expr: &str) -> Value {
    client
        .get(format!("{}/api/v1/query", prometheus()))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every query of every dashboard panel: (dashboard, panel title, expression).
fn panel_queries() -> Vec<(String, String, String)> {
    salesflow_monitoring::panel_queries().unwrap()
}

/// Every alert rule's expression, as Prometheus loaded it.
async fn rule_queries(client: &reqwest::Client) -> Vec<(String, String)> {
    let rules: Value = client
        .get(format!("{}/api/v1/rules", prometheus()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push((
                rule["name"].as_str().unwrap().to_owned(),
                rule["query"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// The values of a metric family from a /metrics text, by its label set.
fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels[name.len()..].to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

fn localstack() -> PathBuf {
    // The test runs from <target>/debug/deps; localstack is built into <target>/debug.
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("localstack")
}

async fn ready_status(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_dashboards_alerts_and_readiness_on_a_live_run() {
    let client = reqwest::Client::new();
    let sales = Sales::new(BIN).await;
    let mut args = sales.overrides();
    for source in [
        "pipelines.domain.sources.orders",
        "pipelines.projections.sources.cart-events",
    ] {
        args.push("--set".into());
        args.push(format!("{source}.statistics_interval_ms=1000"));
    }
    args.push("run".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = support::Host::start(std::path::Path::new(BIN), &Sales::config(), &args);
    let address = host.address();
    let base = format!("http://{address}");

    // The real Prometheus of the local stack scrapes this process through file_sd.
    let targets = support::repo().join(format!("monitoring/targets/{}.json", sales.tag));
    std::fs::write(
        &targets,
        json!([{ "targets": [address], "labels": { "run": sales.tag } }]).to_string(),
    )
    .unwrap();

    // Load: valid orders over many carts, some invalid ones, and some that break a
    // cart's rule (dead letters), for ~20 s.
    let seed = Uuid::new_v4().as_u64_pair().0;
    println!("seed {seed}");
    let mut rng = Rng::new(seed);
    let carts: Vec<CartSpec> = (0..150)
        .map(|n| support::sales::cart(n, &mut rng))
        .collect();
    let started = Instant::now();
    let mut posted = 0;
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let batch: Vec<Value> = (0..40)
            .map(|k| {
                let i = (round * 40 + k) % carts.len();
                order(i, &carts[i], &mut rng, posted + k).json
            })
            .collect();
        post_accepted(&client, &base, &batch).await;
        posted += batch.len();
        let mut invalid = batch[0].clone();
        invalid["quantity"] = json!(0);
        assert_eq!(post_batch(&client, &base, &[invalid]).await.0, 400);
        if round % 5 == 0 {
            let mut breaker = order(
                round % carts.len(),
                &carts[round % carts.len()],
                &mut rng,
                900_000 + round,
            )
            .json;
            breaker["currency"] = json!("CHF");
            post_accepted(&client, &base, &[breaker]).await;
        }
        round += 1;
    }
    println!(
        "posted {posted} orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Sink concurrency: the Elasticsearch sink's lanes adapt (from 1, within their
    // maximum; they grow only with writes waiting, which this gentle load may not
    // leave); the Kafka sinks keep their fixed numbers (pipeline.toml's 256 for the
    // Command API and 2 for cart events).
    let text = support::get_text(&client, format!("{base}/metrics")).await;
    // The exposition of all four pipelines in one process, under load, is valid.
    support::assert_promtool_accepts(&text);
    let limits = |component: &str| -> Vec<f64> {
        series(&text, "salesflow_sink_concurrency_limit")
            .into_iter()
            .filter(|(labels, _)| label(labels, "component") == Some(component))
            .map(|(_, v)| v)
            .collect()
    };
    let search = limits("search-index");
    println!("search-index concurrency limits per lane: {search:?}");
    assert!(!search.is_empty(), "no limit for the search-index lanes");
    assert!(
        search.iter().all(|l| (1.0..=64.0).contains(l)),
        "{search:?}"
    );
    let orders_topic = limits("orders-topic");
    assert!(
        !orders_topic.is_empty() && orders_topic.iter().all(|l| (l - 256.0).abs() < 0.5),
        "{orders_topic:?}"
    );
    let cart_events = limits("cart-events");
    assert!(
        !cart_events.is_empty() && cart_events.iter().all(|l| (l - 2.0).abs() < 0.5),
        "{cart_events:?}"
    );

    // Prometheus has scraped it several times.
    let run = sales.tag.clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = instant_query(
            &client,
            &format!("count_over_time(up{{run=\"{run}\"}}[2m]) >= 4"),
        )
        .await;
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape {address}: {r}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Every panel's query is valid and returns data; every rule's expression is valid.
    let mut problems = Vec::new();
    let panels = panel_queries();
    for (dashboard, title, expr) in &panels {
        let r = instant_query(&client, expr).await;
        if r["status"] != "success" {
            problems.push(format!(
                "{dashboard} / {title}: invalid: {expr}: {}",
                r["error"]
            ));
        } else if r["data"]["result"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("{dashboard} / {title}: no data: {expr}"));
        }
    }
    let rules = rule_queries(&client).await;
    assert!(rules.len() >= 8, "{rules:?}");
    for (name, expr) in &rules {
        let r = instant_query(&client, expr).await;
        if r["status"] != "success" {
            problems.push(format!("rule {name}: invalid: {expr}: {}", r["error"]));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "{} panel queries returned data; {} alert expressions are valid",
        panels.len(),
        rules.len()
    );

    // The lag salesflow reports per partition agrees with the offsets Kafka holds for
    // the group (read with the admin API), once the stream is idle.
    let group = format!("domain-{}", sales.tag);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = support::get_text(&client, format!("{base}/metrics")).await;
        let (committed, end) = support::committed_and_end(&sales.orders, &group);
        let ours = |metric: &str| -> BTreeMap<i32, i64> {
            series(&text, metric)
                .into_iter()
                .filter(|(labels, _)| label(labels, "pipeline") == Some("domain"))
                .map(|(labels, v)| {
                    (
                        label(&labels, "partition").unwrap().parse().unwrap(),
                        v as i64,
                    )
                })
                .collect()
        };
        let (reported_committed, reported_lag) = (
            ours("salesflow_kafka_committed_offset"),
            ours("salesflow_kafka_consumer_lag"),
        );
        let expected_lag: BTreeMap<i32, i64> =
            end.iter().map(|(p, e)| (*p, e - committed[p])).collect();
        if reported_committed == committed && reported_lag == expected_lag {
            println!("lag per partition agrees with Kafka: committed {committed:?}, end {end:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag disagrees: reported committed {reported_committed:?} lag {reported_lag:?}; Kafka committed {committed:?} end {end:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // What each client asked of Kafka, by API: the domain's consumer fetched and
    // committed, the Command API's producer produced (each reported at least once by now:
    // the consumers every second, the producers every 5 s, over the ~20 s of load).
    let text = support::get_text(&client, format!("{base}/metrics")).await;
    let requests = |pipeline: &str, api: &str| -> f64 {
        series(&text, "salesflow_kafka_requests_total")
            .into_iter()
            .filter(|(labels, _)| {
                label(labels, "pipeline") == Some(pipeline) && label(labels, "request") == Some(api)
            })
            .map(|(_, v)| v)
            .sum()
    };
    for (pipeline, api) in [
        ("domain", "Fetch"),
        ("domain", "OffsetCommit"),
        ("domain", "Heartbeat"),
        ("command-api", "Produce"),
    ] {
        assert!(
            requests(pipeline, api) > 0.0,
            "no {api} requests reported for {pipeline}"
        );
    }
    assert!(
        requests("query-api", "Fetch").abs() < f64::EPSILON,
        "the Query API has no Kafka client"
    );

    // Cassandra stops: readiness turns 503, naming it; it comes back: 200 again.
    assert_eq!(ready_status(&client, &base).await.0, 200);
    let out = std::process::Command::new(localstack())
        .args(["down", "cassandra"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped = Instant::now();
    let down_after = loop {
        let (status, body) = ready_status(&client, &base).await;
        if status == 503 {
            let down: Vec<&Value> = body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["status"] == "down")
                .collect();
            assert!(
                down.iter()
                    .all(|c| c["name"].as_str().unwrap().contains("cassandra")),
                "{body}"
            );
            assert!(!down.is_empty());
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still ready 30 s after Cassandra stopped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let out = std::process::Command::new(localstack())
        .args(["up", "cassandra"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restarted = Instant::now();
    let up_after = loop {
        if ready_status(&client, &base).await.0 == 200 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "not ready 60 s after Cassandra came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "readiness: 503 {:.1} s after Cassandra stopped, 200 {:.1} s after it answered again",
        down_after.as_secs_f64(),
        up_after.as_secs_f64()
    );
    // And the gauge Prometheus alerts on went to 0 for the event store.
    let text = support::get_text(&client, format!("{base}/metrics")).await;
    assert!(
        series(&text, "salesflow_dependency_up")
            .keys()
            .any(|k| k.contains("cassandra"))
    );

    // Orders posted after the outage flow through.
    let cart = support::sales::cart(99_999, &mut rng);
    let o = order(0, &cart, &mut rng, 1);
    post_accepted(&client, &base, std::slice::from_ref(&o.json)).await;
    support::sales::cart_at(&client, &base, cart.id, 1, Duration::from_secs(60)).await;

    std::fs::remove_file(&targets).unwrap();
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}
