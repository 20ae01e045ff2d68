//! Shared by the benchmark and fault suites: the local stack's addresses, salesflow as
//! child processes, topics, orders, and a closed-loop HTTP driver.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::{Value, json};
use uuid::Uuid;

/// The salesflow checkout the suites run in: the nearest folder at or above the current
/// one holding `pipeline.toml` and `schemas/kafka/topics.toml` (the scripts run from the
/// root), else the checkout this binary was built from. Found at run time: a target folder
/// shared by two checkouts (a fresh clone for CI and a working tree) keeps whichever
/// built last, and its compiled-in path may name the other one.
pub fn repo() -> PathBuf {
    static REPO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    REPO.get_or_init(|| {
        let is_checkout = |d: &Path| {
            d.join("pipeline.toml").is_file() && d.join("schemas/kafka/topics.toml").is_file()
        };
        std::env::current_dir()
            .ok()
            .and_then(|cwd| {
                cwd.ancestors()
                    .find(|d| is_checkout(d))
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
    })
    .clone()
}

pub fn bootstrap() -> String {
    std::env::var("SALESFLOW_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn es_url() -> String {
    std::env::var("SALESFLOW_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

pub fn cassandra_nodes() -> Vec<String> {
    std::env::var("SALESFLOW_CASSANDRA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

pub fn tag() -> String {
    format!("bench{}", &Uuid::new_v4().simple().to_string()[..10])
}

pub async fn create_topics(names: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()?;
    let new: Vec<_> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

pub async fn delete_topics(names: &[&str]) {
    if let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create::<AdminClient<DefaultClientContext>>()
    {
        let _ = admin.delete_topics(names, &AdminOptions::new()).await;
    }
}

/// The release `salesflow` beside this binary.
pub fn salesflow_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join("salesflow"))
        .unwrap_or_default()
}

/// A free loopback address (`127.0.0.1:port`).
pub fn free_address() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// A salesflow process.
pub struct Salesflow {
    child: Child,
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
        let mut command = Command::new(salesflow_bin());
        command
            .current_dir(repo())
            .arg("--config")
            .arg(repo().join("pipeline.toml"))
            .args([
                "--set",
                &format!("server.address={address}"),
                "--set",
                "log.level=warn",
            ]);
        for s in sets {
            command.args(["--set", s]);
        }
        command.arg("run");
        for p in pipelines {
            command.args(["--pipeline", p]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release -p salesflow)",
                    salesflow_bin().display()
                )
            })?;
        let mut me = Self {
            child,
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
            if let Ok(Some(status)) = me.child.try_wait() {
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
        self.child.id()
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits (without blocking the runtime) for the graceful shutdown; a
    /// process still running after `STOP_GRACE` is killed and the overrun reported.
    pub async fn stop(mut self) {
        const STOP_GRACE: Duration = Duration::from_secs(60);
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                eprintln!(
                    "salesflow (pid {}) still running {STOP_GRACE:?} after SIGTERM: killed",
                    self.child.id()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Salesflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `--set`s that give the default pipelines their own topics, groups and aliases.
pub fn isolated(tag: &str) -> Vec<String> {
    vec![
        format!("pipelines.command-api.sinks.orders-topic.topic=orders-{tag}"),
        format!("pipelines.domain.sources.orders.topics=[\"orders-{tag}\"]"),
        format!("pipelines.domain.sources.orders.group_id=domain-{tag}"),
        format!("pipelines.domain.sinks.cart-events.topic=cart-events-{tag}"),
        format!("pipelines.domain.sinks.dead-letters.topic=orders-dlq-{tag}"),
        format!("pipelines.projections.sources.cart-events.topics=[\"cart-events-{tag}\"]"),
        format!("pipelines.projections.sources.cart-events.group_id=projections-{tag}"),
        format!("pipelines.projections.sinks.dead-letters.topic=cart-events-dlq-{tag}"),
        format!("pipelines.projections.stages.read-models.detailed_alias=carts-detailed-{tag}"),
        format!("pipelines.projections.stages.read-models.summary_alias=carts-summary-{tag}"),
        format!(
            "pipelines.projections.sinks.search-index.aliases=[\"carts-detailed-{tag}\", \"carts-summary-{tag}\"]"
        ),
        format!("pipelines.query-api.sources.api.detailed_alias=carts-detailed-{tag}"),
        format!("pipelines.query-api.sources.api.summary_alias=carts-summary-{tag}"),
    ]
}

pub async fn isolated_topics(tag: &str) -> Result<()> {
    create_topics(
        &[&format!("orders-{tag}"), &format!("cart-events-{tag}")],
        12,
    )
    .await?;
    create_topics(
        &[
            &format!("orders-dlq-{tag}"),
            &format!("cart-events-dlq-{tag}"),
        ],
        1,
    )
    .await
}

pub async fn drop_isolated(tag: &str) {
    let names = [
        format!("orders-{tag}"),
        format!("cart-events-{tag}"),
        format!("orders-dlq-{tag}"),
        format!("cart-events-dlq-{tag}"),
    ];
    delete_topics(&names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let _ = reqwest::Client::new()
        .delete(format!(
            "{}/carts-detailed-{tag}*,carts-summary-{tag}*",
            es_url()
        ))
        .send()
        .await;
}

/// A valid order JSON for `cart` (same shape as the load generator's).
pub fn order(cart: Uuid, user: &str, n: u64) -> Value {
    json!({
        "order_id": Uuid::new_v4(),
        "cart_id": cart,
        "user_id": user,
        "product_name": "trail running shoes",
        "product_info": format!("lot {n}"),
        "quantity": 2,
        "payment_method": "card",
        "shipping_address": "12 Harbour Road, Leeds",
        "billing_address": "12 Mill Lane, York",
        "amount": "119.90",
        "discounts": "10.00",
        "tax_amount": "21.98",
        "subtotal": "251.78",
        "shipping_method": "standard",
        "currency": "EUR",
        "seller_info": "Acme Outdoor",
        "created_at": "2026-11-26T10:15:00Z",
    })
}

/// Latency and count of a closed-loop HTTP run.
pub struct Drive {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
}

impl Drive {
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
