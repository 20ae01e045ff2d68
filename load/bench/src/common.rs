//! Shared by the benchmark and fault suites: the local stack's addresses, salesflow as
//! child processes, topics, orders, and a closed-loop HTTP driver.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use salesflow_testkit::{Host, Launch};
use serde_json::Value;
use uuid::Uuid;

pub use salesflow_testkit::sales::Sales;
pub use salesflow_testkit::{
    bootstrap, cassandra_nodes, create_topics, delete_topics, es_url, free_address, repo, rss_mib,
};

pub fn tag() -> String {
    format!("bench{}", &Uuid::new_v4().simple().to_string()[..10])
}

/// The release `salesflow` beside this binary.
pub fn salesflow_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("salesflow"))
        .unwrap_or_default()
}

/// A salesflow process of the suites: the default pipeline.toml on a given address,
/// logging warnings to the suite's stderr.
pub struct Salesflow {
    host: Host,
    pub address: String,
}

impl Salesflow {
    /// Runs the default pipeline.toml with `sets` (`key=value`) on a free port; waits until
    /// it is ready.
    pub async fn start(pipelines: &[&str], sets: &[String]) -> Result<Self> {
        Self::start_at(&free_address()?, pipelines, sets).await
    }

    /// The same on a given address (a restarted API keeps its address).
    pub async fn start_at(address: &str, pipelines: &[&str], sets: &[String]) -> Result<Self> {
        let binary = salesflow_bin();
        if !binary.is_file() {
            bail!(
                "{} is missing (build it: cargo build --release -p salesflow)",
                binary.display()
            );
        }
        let mut args: Vec<&str> = Vec::new();
        for s in sets {
            args.extend(["--set", s]);
        }
        args.push("run");
        for p in pipelines {
            args.extend(["--pipeline", p]);
        }
        let config = repo().join("pipeline.toml");
        let mut me = Self {
            host: Host::launch(&Launch {
                address: Some(address),
                capture: false,
                ..Launch::new(&binary, &config, &args)
            }),
            address: address.to_owned(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client
                .get(format!("http://{}/health/ready", me.address))
                .send()
                .await
                && r.status() == 200
            {
                return Ok(me);
            }
            if let Some(status) = me.exited() {
                bail!(
                    "salesflow ({}) exited while starting: {status}",
                    pipelines.join(", ")
                );
            }
            if Instant::now() > deadline {
                bail!("salesflow did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.host.pid()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(self) {
        let _ = self.host.kill();
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.host.status()
    }

    /// SIGTERM, then waits (without blocking the runtime) for the graceful shutdown.
    pub async fn stop(self) {
        let _ = self.host.stop_async(Duration::from_secs(60)).await;
    }
}

/// The `--set`s that give the default pipelines their own topics, groups and aliases.
pub fn isolated(tag: &str) -> Vec<String> {
    Sales::named(salesflow_bin(), tag).sets()
}

pub async fn isolated_topics(tag: &str) -> Result<()> {
    let sales = Sales::named(salesflow_bin(), tag);
    create_topics(&[&sales.orders, &sales.cart_events], 12).await;
    create_topics(&[&sales.orders_dlq, &sales.cart_events_dlq], 1).await;
    Ok(())
}

pub async fn drop_isolated(tag: &str) {
    Sales::named(salesflow_bin(), tag).cleanup().await;
}

/// A valid order for `cart` (the one order builder's, with fixed amounts).
pub fn order(cart: Uuid, user: &str, n: u64) -> Value {
    let cart = salesflow_load::data::Cart::new(0, cart, user.to_owned(), "EUR".to_owned());
    let info = format!("lot {n}");
    let line = salesflow_load::data::Line {
        product: "trail running shoes",
        info: &info,
        quantity: 2,
        amount: Decimal::new(11_990, 2),
        discounts: Decimal::new(1_000, 2),
        tax: Decimal::new(2_198, 2),
    };
    salesflow_load::data::order_body(&cart, Uuid::new_v4(), &line, "2026-11-26T10:15:00Z", false)
}

/// Latency and count of a closed-loop HTTP run.
pub struct Drive {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
}

impl Drive {
    /// Requests answered with success.
    #[allow(clippy::cast_precision_loss)]
    pub fn ok(&self) -> f64 {
        (self.requests - self.errors) as f64
    }
    /// Adds another run's counts, time and latencies to this one.
    pub fn merge(&mut self, other: &Drive) -> Result<()> {
        self.requests += other.requests;
        self.errors += other.errors;
        self.seconds += other.seconds;
        self.latency.add(&other.latency)?;
        Ok(())
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn rps(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.seconds
    }
    #[allow(clippy::cast_precision_loss)]
    pub fn p99_ms(&self) -> f64 {
        self.latency.value_at_quantile(0.99) as f64 / 1000.0
    }
}

/// `clients` connections each posting `body()` to `url` back to back for `duration`.
pub async fn drive(
    url: &str,
    clients: usize,
    duration: Duration,
    body: impl Fn(u64) -> Value + Send + Sync + 'static,
) -> Result<Drive> {
    let body = Arc::new(body);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, body, stop, counter) = (
            url.to_owned(),
            Arc::clone(&body),
            Arc::clone(&stop),
            Arc::clone(&counter),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let (mut requests, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let payload = body(n);
                let t = Instant::now();
                let ok = client
                    .post(&url)
                    .json(&payload)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                requests += 1;
                if ok {
                    let _ = latency.record(
                        u64::try_from(t.elapsed().as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                } else {
                    errors += 1;
                }
            }
            (requests, errors, latency)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let mut total = Drive {
        requests: 0,
        errors: 0,
        seconds,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for t in tasks {
        let (r, e, l) = t.await?;
        total.requests += r;
        total.errors += e;
        total.latency.add(&l)?;
    }
    Ok(total)
}
