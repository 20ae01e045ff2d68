//! HTTP ingest: the Command API vs a bare hyper server answering the same requests.

use std::time::Duration;

use anyhow::Result;
use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Row;
use crate::common::{
    Drive, Salesflow, drive, drop_isolated, isolated, isolated_topics, order, tag,
};
use crate::cpu::{self, Meter, Phase, Tracked, Usage};

/// What a bare server does with an order: parse it and answer 202 with its id.
async fn bare(Json(order): Json<Value>) -> (StatusCode, Json<Value>) {
    (
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": 1, "ids": [order["order_id"]] })),
    )
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
    let mut processes = cpu::server(&["kafka"]);
    processes.push(Tracked::new("salesflow command-api", salesflow.pid()));

    // Side by side: the two servers take turns in short slices, bare-ours-ours-bare twice
    // (a drift in what the shared machine gives us falls on both alike), each slice
    // measured on its own and the slices summed.
    let slice = duration / 4;
    let (mut ceiling, mut bare_cpu) = (None::<Drive>, Usage::default());
    let (mut ours, mut ours_cpu) = (None::<Drive>, Usage::default());
    for bare_turn in [true, false, false, true, true, false, false, true] {
        let (url, tracked) = if bare_turn {
            // The bare server runs in the driver: its CPU is the driver's.
            (format!("http://{bare_address}/orders"), Vec::new())
        } else {
            (
                format!("http://{}/orders", salesflow.address),
                processes.clone(),
            )
        };
        let meter = Meter::start(tracked);
        let run = drive(&url, clients, slice, body.clone()).await?;
        let usage = meter.stop();
        let (total, cpu) = if bare_turn {
            (&mut ceiling, &mut bare_cpu)
        } else {
            (&mut ours, &mut ours_cpu)
        };
        cpu.merge(&usage);
        match total {
            Some(t) => t.merge(&run)?,
            None => *total = Some(run),
        }
    }
    let (Some(ceiling), Some(ours)) = (ceiling, ours) else {
        anyhow::bail!("a server had no turn")
    };
    server.abort();
    salesflow.stop().await;
    drop_isolated(&t).await;

    println!(
        "  bare hyper {:.0} req/s (p99 {:.1} ms); Command API {:.0} req/s (p99 {:.1} ms, {} errors)",
        ceiling.rps(),
        ceiling.p99_ms(),
        ours.rps(),
        ours.p99_ms(),
        ours.errors
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
    row.note = format!(
        "{clients} closed-loop clients for {} s each, in turns of {} s (bare, ours, ours, \
         bare, twice); p99 {:.1} ms vs {:.1} ms",
        duration.as_secs(),
        slice.as_secs_f64(),
        ours.p99_ms(),
        ceiling.p99_ms()
    );
    row.phases = vec![
        Phase::new(
            "ceiling: bare hyper (in the driver)",
            "request",
            ceiling.ok(),
            bare_cpu,
        ),
        Phase::new("salesflow: Command API", "request", ours.ok(), ours_cpu),
    ];
    Ok(row)
}
