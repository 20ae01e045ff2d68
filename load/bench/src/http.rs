//! HTTP ingest: the Command API vs a bare hyper server answering the same requests.

use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use salesflow_testkit::create_topics;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Row;
use crate::common::{
    Drive, Sales, Salesflow, drive, drop_isolated, isolated, isolated_topics, order, salesflow_bin,
    tag,
};
use crate::cpu::{self, Meter, Phase, Tracked, Usage};
use crate::latency;

/// What a bare server does with an order: parse it and answer 202 with its id.
async fn bare(Json(order): Json<Value>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": 1, "ids": [order["order_id"]] })),
    )
}

/// The three sides of the HTTP part: the bare server, the Command API on the run's
/// `orders` topic (12 partitions, as the pipelines run on), and the same Command API on a
/// topic of one partition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Bare = 0,
    Ours = 1,
    OnePartition = 2,
}

/// The Command API's records acknowledged and Produce requests sent so far. librdkafka
/// counts requests in its statistics (every 5 s by default), records as they are
/// acknowledged: the counts agree once a report follows the last write.
async fn produce_counts(address: &str) -> Option<(f64, f64)> {
    let scrape = latency::scrape(address).await?;
    let (mut records, mut requests) = (0.0, 0.0);
    for s in &scrape.samples {
        if s.labels.get("component") != Some("orders-topic") {
            continue;
        }
        match s.metric.as_str() {
            "salesflow_kafka_produced_messages_total" => records += latency::number(s)?,
            "salesflow_kafka_requests_total" if s.labels.get("request") == Some("Produce") => {
                requests += latency::number(s)?;
            }
            _ => {}
        }
    }
    Some((records, requests))
}

/// Records per Produce request over the whole run, once librdkafka has reported the
/// requests of its last writes (waiting at most one statistics interval for that).
async fn records_per_request(address: &str) -> Option<f64> {
    let first = produce_counts(address).await?;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut counts = first;
    while Instant::now() < deadline && counts.1 <= first.1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        counts = produce_counts(address).await?;
    }
    (counts.1 > 0.0).then(|| counts.0 / counts.1)
}

pub async fn run(clients: usize, duration: Duration) -> Result<Row> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/orders", post(bare));
        axum::serve(listener, app).await
    });
    let carts: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let body = move |n: u64| {
        let i = usize::try_from(n % 1000).unwrap_or(0);
        order(carts[i], &format!("user-{i}"), n)
    };
    let t = tag();
    isolated_topics(&t).await?;
    let salesflow = Salesflow::start(&["command-api"], &isolated(&t)).await?;
    // The same Command API writing to a topic of one partition: librdkafka sends one
    // partition's batch per Produce request, so the orders, keyed by cart over 12
    // partitions, come to Kafka in requests a twelfth the size they would on one. This
    // side measures what that costs, in the same run.
    let one = tag();
    create_topics(&[&Sales::named(salesflow_bin(), &one).orders], 1).await;
    let single = Salesflow::start(&["command-api"], &isolated(&one)).await?;
    let tracked = |pid: u32| {
        let mut processes = cpu::server(&["kafka"]);
        processes.push(Tracked::new("salesflow command-api", pid));
        processes
    };

    // Side by side: the servers take turns in short slices, each measured on its own and
    // the slices summed; in each round every side goes first and last once as often (a
    // drift in what the shared machine gives us falls on all alike).
    let slice = duration / 4;
    // Each side's requests and CPU, summed over its turns; indexed by `Side as usize`.
    let mut sides: [(Option<Drive>, Usage); 3] = Default::default();
    let round = [
        Side::Bare,
        Side::Ours,
        Side::OnePartition,
        Side::OnePartition,
        Side::Ours,
        Side::Bare,
    ];
    for side in round.iter().chain(&round).copied() {
        let (url, tracked) = match side {
            // The bare server runs in the driver: its CPU is the driver's.
            Side::Bare => (format!("http://{bare_address}/orders"), Vec::new()),
            Side::Ours => (
                format!("http://{}/orders", salesflow.address),
                tracked(salesflow.pid()),
            ),
            Side::OnePartition => (
                format!("http://{}/orders", single.address),
                tracked(single.pid()),
            ),
        };
        let meter = Meter::start(tracked);
        let run = drive(&url, clients, slice, body.clone()).await?;
        let usage = meter.stop();
        let (total, cpu) = &mut sides[side as usize];
        cpu.merge(&usage);
        match total {
            Some(t) => t.merge(&run)?,
            None => *total = Some(run),
        }
    }
    let per_request = tokio::join!(
        records_per_request(&salesflow.address),
        records_per_request(&single.address)
    );
    let [(ceiling, bare_cpu), (ours, ours_cpu), (one_run, one_cpu)] = sides;
    let (Some(ceiling), Some(ours), Some(one_run)) = (ceiling, ours, one_run) else {
        anyhow::bail!("a server had no turn")
    };
    server.abort();
    salesflow.stop().await;
    single.stop().await;
    drop_isolated(&t).await;
    drop_isolated(&one).await;

    println!(
        "  bare hyper {:.0} req/s (p99 {:.1} ms); Command API {:.0} req/s (p99 {:.1} ms, {} errors); on one partition {:.0} req/s (p99 {:.1} ms, {} errors)",
        ceiling.rps(),
        ceiling.p99_ms(),
        ours.rps(),
        ours.p99_ms(),
        ours.errors,
        one_run.rps(),
        one_run.p99_ms(),
        one_run.errors
    );
    let mut row = Row::new(
        "HTTP ingest",
        "req/s",
        ours.rps(),
        ceiling.rps(),
        Some(0.6),
        "Command API: POST /orders -> validate -> Kafka acks=all",
        "bare hyper server, same requests",
    );
    let phases = [
        Phase::new(
            "ceiling: bare hyper (in the driver)",
            "request",
            ceiling.ok(),
            bare_cpu,
        ),
        Phase::new("salesflow: Command API", "request", ours.ok(), ours_cpu),
        Phase::new(
            "salesflow: Command API, orders on one partition",
            "request",
            one_run.ok(),
            one_cpu,
        ),
    ];
    let records = |r: Option<f64>| r.map_or_else(|| "?".to_owned(), |r| format!("{r:.1}"));
    row.note = format!(
        "{clients} closed-loop clients for {} s each, in turns of {} s; p99 {:.1} ms vs {:.1} \
         ms. {}. The same Command API on a topic of one partition: {:.0} req/s, {:.2} of the \
         bare server, {} records per Produce request against {} on the 12 partitions (librdkafka \
         sends one partition per request).",
        duration.as_secs(),
        slice.as_secs_f64(),
        ours.p99_ms(),
        ceiling.p99_ms(),
        cost_per_request(&phases),
        one_run.rps(),
        one_run.rps() / ceiling.rps(),
        records(per_request.1),
        records(per_request.0),
    );
    row.phases = phases.into();
    Ok(row)
}

/// Where a request's CPU went on each side, in ms: what the ratio's gap is made of.
fn cost_per_request(phases: &[Phase; 3]) -> String {
    let [bare, ours, one] = phases;
    let ms = |p: &Phase, cpu: f64| p.ms_per_unit(cpu);
    let side = |p: &Phase| {
        format!(
            "{:.3} ms = driver {:.3} + salesflow {:.3} + Kafka {:.3}",
            ms(p, p.usage.total() - p.usage.jit_total()),
            ms(p, p.usage.named(cpu::DRIVER)),
            ms(p, p.usage.salesflow()),
            ms(p, p.usage.work("kafka")),
        )
    };
    format!(
        "CPU per request (the JVM's JIT left out): bare {:.3} ms (the driver: clients and \
         server); Command API {}; on one partition {}",
        ms(bare, bare.usage.total()),
        side(ours),
        side(one),
    )
}
