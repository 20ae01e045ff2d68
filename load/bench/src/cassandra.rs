//! Cassandra: the event store's fenced appends (what the domain's cart stage does for each
//! cart of a batch: its `events_by_hour` row, then its events with `INSERT ... IF NOT
//! EXISTS`, a lightweight transaction) vs latte running the same statements with the same
//! number of requests in flight.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use salesflow_sales::{CartEvent, Order};
use salesflow_sales_event_store::{CassandraSettings, EventStore};
use uuid::Uuid;

use crate::Row;
use crate::common::{cassandra_nodes, repo};
use crate::cpu::{self, Meter, Phase};

/// Requests in flight, for both.
const IN_FLIGHT: usize = 64;
/// Events per append (a domain batch reaching the sink).
const BATCH: usize = 50;
/// Rounds of turns (latte, ours, ours, latte) in one measurement.
const ROUNDS: usize = 2;

/// Cassandra's CPU milliseconds per event in one turn, its JIT compiler left out (as the
/// comparisons leave it out).
fn cassandra_ms_per(usage: &cpu::Usage, events: f64) -> f64 {
    let cpu = usage.cpu.get("cassandra").copied().unwrap_or(0.0)
        - usage.jit.get("cassandra").copied().unwrap_or(0.0);
    1000.0 * cpu / events.max(1.0)
}

fn latte() -> std::path::PathBuf {
    std::env::var_os("LATTE").map_or_else(
        || {
            std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default()
                .join(".cache/salesflow/tools/bin/latte")
        },
        std::path::PathBuf::from,
    )
}

/// Carts each writer task appends to, in turn (one event per cart per append, as a
/// domain batch spread over many carts does).
const CARTS_PER_TASK: u64 = 12_500;
/// Writer tasks.
const TASKS: u64 = 8;

fn event(cart: Uuid, seq: u64, n: u64) -> CartEvent {
    CartEvent {
        cart_id: cart,
        seq,
        recorded_at: Utc::now(),
        order: Order {
            order_id: Uuid::new_v4(),
            cart_id: cart,
            user_id: "user-17".into(),
            product_name: "trail running shoes".into(),
            product_info: format!("lot {n}"),
            quantity: 2,
            payment_method: "card".into(),
            shipping_address: "12 Harbour Road, Leeds".into(),
            billing_address: "12 Mill Lane, York".into(),
            amount: "119.90".parse().unwrap_or_default(),
            discounts: "10.00".parse().unwrap_or_default(),
            tax_amount: "21.98".parse().unwrap_or_default(),
            subtotal: "251.78".parse().unwrap_or_default(),
            shipping_method: "standard".into(),
            currency: "EUR".into(),
            seller_info: "Acme Outdoor".into(),
            created_at: Utc::now(),
        },
    }
}

async fn ours(duration: Duration) -> Result<f64> {
    let settings: CassandraSettings = toml::from_str(&format!("nodes = {:?}", cassandra_nodes()))?;
    let store = EventStore::connect(&settings)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Carts of this run only: the keyspace keeps earlier runs' carts.
    let run = Uuid::new_v4().as_u64_pair().0;
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    // TASKS appends of BATCH events in flight, each of up to IN_FLIGHT / TASKS carts at
    // once: IN_FLIGHT requests in flight, as latte has.
    for t in 0..TASKS {
        let (store, written, stop) = (store.clone(), Arc::clone(&written), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut versions = vec![0_u64; usize::try_from(CARTS_PER_TASK).unwrap_or(0)];
            let mut next = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let mut work = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    let i = next % CARTS_PER_TASK;
                    next += 1;
                    let slot = usize::try_from(i).unwrap_or(0);
                    versions[slot] += 1;
                    let cart = Uuid::from_u64_pair(run, t * CARTS_PER_TASK + i);
                    work.push((cart, versions[slot], next));
                }
                futures::stream::iter(work)
                    .map(|(cart, seq, n)| {
                        let store = &store;
                        async move {
                            store
                                .append(cart, seq - 1, &[event(cart, seq, n)])
                                .await
                                .map_err(|e| anyhow::anyhow!("{e}"))
                        }
                    })
                    .buffer_unordered(IN_FLIGHT / usize::try_from(TASKS).unwrap_or(1))
                    .try_collect::<Vec<()>>()
                    .await?;
                written.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn run_latte(duration: Duration) -> Result<f64> {
    let workload = repo().join("load/bench/latte/event_store.rn");
    let node = cassandra_nodes()[0]
        .split(':')
        .next()
        .unwrap_or("127.0.0.1")
        .to_owned();
    let dir = tempfile::tempdir()?;
    let status = Command::new(latte())
        .current_dir(dir.path())
        .arg("schema")
        .arg(&workload)
        .arg(&node)
        .status()
        .with_context(|| {
            format!(
                "running {} (install: cargo install latte-cli --root ~/.cache/salesflow/tools)",
                latte().display()
            )
        })?;
    anyhow::ensure!(status.success(), "latte schema failed");
    let report = dir.path().join("latte.json");
    let out = Command::new(latte())
        .current_dir(dir.path())
        .arg("run")
        .arg(&workload)
        .args([
            "-P",
            &format!("run={}", Uuid::new_v4().as_u64_pair().0 >> 24),
            "-d",
            &format!("{}s", duration.as_secs()),
            "-t",
            "1",
            "-p",
            &IN_FLIGHT.to_string(),
            "-o",
        ])
        .arg(&report)
        .arg(&node)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "latte run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    json["result"]["cycle_throughput"]["value"]
        .as_f64()
        .context("latte's report has no throughput")
}

pub async fn run(duration: Duration) -> Result<Row> {
    // Side by side: latte and the event store take turns (latte, ours, ours, latte), each
    // for half the duration, so a drift in what the shared machine gives falls on both.
    // Cassandra's CPU per event swings by turn (compactions and flushes come when they
    // come), and the composite ceiling rests mostly on latte's: the turns go round
    // `ROUNDS` times, and the report gives latte's CPU per event turn by turn.
    let slice = Duration::from_secs((duration.as_secs() / 2).max(1));
    let (mut latte_events, mut ceiling_cpu) = (0.0, cpu::Usage::default());
    let (mut our_events, mut ours_cpu) = (0.0, cpu::Usage::default());
    let mut latte_turns: Vec<f64> = Vec::new();
    for latte_turn in [true, false, false, true].repeat(ROUNDS) {
        let meter = Meter::start(cpu::server(&["cassandra"]));
        if latte_turn {
            let rate = tokio::task::spawn_blocking(move || run_latte(slice)).await??;
            let usage = meter.stop();
            let events = rate * slice.as_secs_f64();
            latte_turns.push(cassandra_ms_per(&usage, events));
            latte_events += events;
            ceiling_cpu.merge(&usage);
        } else {
            let rate = ours(slice).await?;
            let usage = meter.stop();
            our_events += rate * usage.seconds;
            ours_cpu.merge(&usage);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let latte_seconds = latte_turns.len() as f64 * slice.as_secs_f64();
    let ceiling = latte_events / latte_seconds;
    let rate = our_events / ours_cpu.seconds.max(f64::EPSILON);
    println!("  latte {ceiling:.0} events/s; event store appends {rate:.0} events/s");
    let mut row = Row::new(
        "Cassandra writes",
        "events/s",
        rate,
        ceiling,
        Some(0.9),
        "fenced appends (the cart stage's writes)",
        "latte, same statements",
    );
    row.note = format!(
        "an event is an events_by_hour row, then a cart_events row (~600 bytes of JSON) written with INSERT ... IF NOT EXISTS \
         (a lightweight transaction); {IN_FLIGHT} requests in flight for both; one event per cart per append; \
         in turns of {} s (latte, ours, ours, latte; {ROUNDS} rounds); Cassandra's CPU per event under latte by turn, JIT left out: {} ms",
        slice.as_secs(),
        latte_turns
            .iter()
            .map(|ms| format!("{ms:.3}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    // Units from each side's own rate over its own measured time.
    row.phases = vec![
        Phase::new("ceiling: latte", "event", latte_events, ceiling_cpu),
        Phase::new(
            "salesflow: event store appends",
            "event",
            our_events,
            ours_cpu,
        ),
    ];
    Ok(row)
}
