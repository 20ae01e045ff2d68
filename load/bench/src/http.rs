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
use crate::ab::{Figures, Pair};
use crate::common::{
    Build, Drive, Sales, Salesflow, drive, drop_isolated, free_address, isolated, isolated_topics,
    order, salesflow_bin, tag,
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

/// The bare server, in the driver: its URL, and its task (aborted when done).
async fn bare_server() -> Result<(String, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/orders", post(bare));
        axum::serve(listener, app).await
    });
    Ok((format!("http://{address}/orders"), server))
}

/// The orders every side is sent: the same 1000 carts, a new order each request.
fn bodies() -> impl Fn(u64) -> Value + Clone + Send + Sync + 'static {
    let carts: std::sync::Arc<Vec<Uuid>> =
        std::sync::Arc::new((0..1000).map(|_| Uuid::new_v4()).collect());
    move |n: u64| {
        let i = usize::try_from(n % 1000).unwrap_or(0);
        order(carts[i], &format!("user-{i}"), n)
    }
}

/// Where a turn on a Command API posts, and the processes doing its work: Kafka and the
/// Command API.
fn command_api_turn(api: &Salesflow) -> (String, Vec<Tracked>) {
    let mut processes = cpu::server(&["kafka"]);
    processes.push(Tracked::new("salesflow command-api", api.pid()));
    (format!("http://{}/orders", api.address), processes)
}

/// One side's turn: `clients` closed-loop clients on `url` for `slice`, with the CPU of
/// `tracked` (and the driver) measured over it, added to the side's requests and CPU.
async fn turn(
    url: &str,
    tracked: Vec<Tracked>,
    clients: usize,
    slice: Duration,
    body: impl Fn(u64) -> Value + Send + Sync + 'static,
    (total, cpu): &mut (Option<Drive>, Usage),
) -> Result<()> {
    let meter = Meter::start(tracked);
    let run = drive(url, clients, slice, body).await?;
    cpu.merge(&meter.stop());
    match total {
        Some(t) => t.merge(&run)?,
        None => *total = Some(run),
    }
    Ok(())
}

pub async fn run(clients: usize, duration: Duration) -> Result<Row> {
    let (bare_url, server) = bare_server().await?;
    let body = bodies();
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
            Side::Bare => (bare_url.clone(), Vec::new()),
            Side::Ours => command_api_turn(&salesflow),
            Side::OnePartition => command_api_turn(&single),
        };
        turn(
            &url,
            tracked,
            clients,
            slice,
            body.clone(),
            &mut sides[side as usize],
        )
        .await?;
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

/// A/B of the HTTP part: this build's Command API and another's (`base`), each on its own
/// topics of 12 partitions, and the bare server, taking turns in `rounds` rounds. In each
/// round every side has two turns of `duration / 4` (bare, one build, the other, bare, the
/// other, the one): the two builds' turns have the same mean place in the round, and each
/// follows the bare server once and the other build once, so neither a steady drift within
/// the round nor what a turn leaves behind favours one; which build comes first alternates
/// from round to round. A round is one pair of the report: each figure's this / base ratio is
/// taken within it, so the machine's moves between rounds cancel out.
pub async fn run_ab(
    base: &Build,
    this: &Build,
    rounds: u32,
    clients: usize,
    duration: Duration,
) -> Result<Vec<Pair>> {
    let (bare_url, server) = bare_server().await?;
    let body = bodies();
    let mut started = Vec::new();
    for build in [base, this] {
        let t = tag();
        isolated_topics(&t).await?;
        let api = Salesflow::launch(
            build,
            &free_address()?,
            &["command-api"],
            &isolated(&t),
            &[],
        )
        .await?;
        started.push((t, api));
    }
    let slice = duration / 4;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let base_first = round % 2 == 0;
        let (first, second) = if base_first { (0, 1) } else { (1, 0) };
        // Indexed: the base's Command API, this build's, then the bare server. Each build
        // follows the bare server once and the other build once. In the order this
        // replaced (bare, A, B, B, A, bare) only the first build ever followed the bare
        // server, and on one A/B the Command API's CPU per request followed the turn
        // order (this / base 0.84, 1.15, 1.04, 1.17, 0.92; the base first in rounds 1, 3, 5).
        let order = [2, first, second, 2, second, first];
        println!(
            "== HTTP A/B round {} of {rounds}: {} first",
            round + 1,
            if base_first { &base.label } else { &this.label }
        );
        let quiet = crate::settle().await.to_string();
        let mut sides: [(Option<Drive>, Usage); 3] = Default::default();
        for side in order {
            let (url, tracked) = match started.get(side) {
                Some((_, api)) => command_api_turn(api),
                None => (bare_url.clone(), Vec::new()),
            };
            turn(
                &url,
                tracked,
                clients,
                slice,
                body.clone(),
                &mut sides[side],
            )
            .await?;
        }
        let [
            (Some(base_run), base_cpu),
            (Some(this_run), this_cpu),
            (Some(ceiling), _),
        ] = sides
        else {
            anyhow::bail!("a side had no turn")
        };
        pairs.push(Pair {
            base: ab_figures(&base_run, &base_cpu, ceiling.rps()),
            this: ab_figures(&this_run, &this_cpu, ceiling.rps()),
            base_first,
            quiet: vec![quiet],
        });
    }
    server.abort();
    for (t, api) in started {
        api.stop().await;
        drop_isolated(&t).await;
    }
    Ok(pairs)
}

/// A Command API's figures over its turns in a round: its rate, that rate against the bare
/// server's in the same round, its p99, and the CPU per request of each process doing its
/// work (the driver's included: a slower server keeps the clients less busy).
fn ab_figures(run: &Drive, usage: &Usage, bare_rps: f64) -> Figures {
    let phase = Phase::new("", "request", run.ok(), usage.clone());
    let ms = |cpu: f64| phase.ms_per_unit(cpu);
    vec![
        ("requests/s".into(), run.rps()),
        ("of the bare server".into(), run.rps() / bare_rps),
        ("p99 ms".into(), run.p99_ms()),
        (
            "CPU ms/request: salesflow command-api".into(),
            ms(usage.salesflow()),
        ),
        (
            "CPU ms/request: kafka (without JIT)".into(),
            ms(usage.work("kafka")),
        ),
        (
            "CPU ms/request: driver".into(),
            ms(usage.named(cpu::DRIVER)),
        ),
        (
            "CPU ms/request: every process measured, without JIT".into(),
            ms(usage.total() - usage.jit_total()),
        ),
    ]
}
