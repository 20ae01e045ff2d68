//! Shared by the benchmark and fault suites: the local stack's addresses, salesflow as
//! child processes, topics, orders, and a closed-loop HTTP driver.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
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

/// OpenSearch's work counters, summed over its nodes (zeros when it does not answer).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenSearchWrites {
    /// Documents indexed.
    pub docs: f64,
    /// Write-pool tasks completed. A bulk request's part for each shard is a task (the raw
    /// loop's bulks of 250 into one index read 250.0 documents per task; OpenSearch 2.19
    /// keeps no bulk statistics), so the documents per task between two readings are the
    /// size of the shard-level bulks OpenSearch worked with; its CPU per document falls
    /// as they grow.
    pub tasks: f64,
    /// Shard refreshes, internal ones included: scheduled, asked for, made by a
    /// real-time GET of a document not yet refreshed, or an indexing buffer written out.
    pub refreshes: f64,
    /// Shard searches (a `_count` of two single-shard aliases is two): a shard searched
    /// within 30 s keeps refreshing every second while written; one nobody searches
    /// skips its scheduled refreshes.
    pub searches: f64,
    /// Documents read by id (`GET /{index}/_doc/{id}`: the Query API's cart reads, as the
    /// half-rate run's followers make them), apart from searches.
    pub gets: f64,
    /// Seconds the shards spent merging segments (all merge threads together).
    pub merge_seconds: f64,
    /// Seconds the shards spent refreshing, real-time GETs' refreshes included.
    pub refresh_seconds: f64,
}

impl std::ops::Sub for OpenSearchWrites {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            docs: self.docs - before.docs,
            tasks: self.tasks - before.tasks,
            refreshes: self.refreshes - before.refreshes,
            searches: self.searches - before.searches,
            gets: self.gets - before.gets,
            merge_seconds: self.merge_seconds - before.merge_seconds,
            refresh_seconds: self.refresh_seconds - before.refresh_seconds,
        }
    }
}

/// [`OpenSearchWrites`] now.
pub async fn opensearch_writes() -> OpenSearchWrites {
    let url = format!("{}/_nodes/stats/indices,thread_pool", es_url());
    let Ok(response) = reqwest::get(&url).await else {
        return OpenSearchWrites::default();
    };
    let Ok(stats) = response.json::<Value>().await else {
        return OpenSearchWrites::default();
    };
    let nodes = stats["nodes"]
        .as_object()
        .into_iter()
        .flat_map(|n| n.values());
    let number = |v: &Value| v.as_f64().unwrap_or(0.0);
    nodes.fold(OpenSearchWrites::default(), |sum, node| {
        let indices = &node["indices"];
        OpenSearchWrites {
            docs: sum.docs + number(&indices["indexing"]["index_total"]),
            tasks: sum.tasks + number(&node["thread_pool"]["write"]["completed"]),
            refreshes: sum.refreshes + number(&indices["refresh"]["total"]),
            searches: sum.searches + number(&indices["search"]["query_total"]),
            gets: sum.gets + number(&indices["get"]["total"]),
            merge_seconds: sum.merge_seconds
                + number(&indices["merges"]["total_time_in_millis"]) / 1000.0,
            refresh_seconds: sum.refresh_seconds
                + number(&indices["refresh"]["total_time_in_millis"]) / 1000.0,
        }
    })
}

/// Merges running on OpenSearch's nodes now (`None` when it does not answer).
async fn merges_running() -> Option<f64> {
    let url = format!("{}/_nodes/stats/indices/merge", es_url());
    let stats: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    Some(
        stats["nodes"]
            .as_object()?
            .values()
            .filter_map(|n| n["indices"]["merges"]["current"].as_f64())
            .sum(),
    )
}

/// What [`read_models_caught_up`] found and did before a latency run.
#[derive(Clone, Copy, Debug)]
pub struct CaughtUp {
    /// Seconds the refresh of the run's read models took.
    pub refresh: f64,
    /// Seconds waited for OpenSearch's running merges to end.
    pub merges: f64,
    /// Merges still running when the wait gave up (0: none).
    pub left: f64,
}

impl std::fmt::Display for CaughtUp {
    /// As the report words it: "refreshed in 0.42 s, merges done after 3 s".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "read models refreshed in {:.2} s, ", self.refresh)?;
        if self.left > 0.0 {
            write!(
                f,
                "{:.0} merges still running after {:.0} s",
                self.left, self.merges
            )
        } else {
            write!(f, "no merge running after {:.0} s", self.merges)
        }
    }
}

/// Starts a latency run on read models that owe OpenSearch nothing from the phases before
/// it: refreshes `indices` (what a saturating phase left unrefreshed on search-idle
/// shards, which the run's first real-time GETs would otherwise pay for: 1.2 s for the
/// first two in one run, about 0.1 s each after), then waits up to `limit` for the
/// segment merges running on the node to end. The shards stay as search-idle as they
/// were: a refresh is not a search (an idle shard written for 5 s after a `_refresh` made
/// no scheduled refresh; after one search, or one real-time GET, it made 5).
pub async fn read_models_caught_up(indices: &[&str], limit: Duration) -> Result<CaughtUp> {
    let started = Instant::now();
    let url = format!("{}/{}/_refresh", es_url(), indices.join(","));
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("refreshing {}", indices.join(", ")))?;
    anyhow::ensure!(
        response.status().is_success(),
        "refreshing {}: {}",
        indices.join(", "),
        response.text().await.unwrap_or_default()
    );
    let refresh = started.elapsed().as_secs_f64();
    let waiting = Instant::now();
    let mut left = merges_running().await.unwrap_or(0.0);
    while left > 0.0 && waiting.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = merges_running().await.unwrap_or(0.0);
    }
    Ok(CaughtUp {
        refresh,
        merges: waiting.elapsed().as_secs_f64(),
        left,
    })
}

/// Which salesflow a suite runs: a binary and the pipeline.toml it reads. The suites run
/// this checkout's ([`Build::this`]); `salesflow-bench --base-binary` sets another beside
/// it, so two builds or two configurations are measured in one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Build {
    /// How the report names it.
    pub label: String,
    pub binary: PathBuf,
    pub config: PathBuf,
}

impl Build {
    /// The release `salesflow` beside this binary, with this checkout's pipeline.toml.
    pub fn this() -> Self {
        Self {
            label: "this".into(),
            binary: salesflow_bin(),
            config: repo().join("pipeline.toml"),
        }
    }
}

/// A salesflow process of the suites: a build's pipeline.toml on a given address,
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
        Self::launch(&Build::this(), address, pipelines, sets, &[]).await
    }

    /// `build`'s binary and configuration on a given address, with `env` set.
    pub async fn launch(
        build: &Build,
        address: &str,
        pipelines: &[&str],
        sets: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let binary = &build.binary;
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
        let mut me = Self {
            host: Host::launch(&Launch {
                address: Some(address),
                capture: false,
                env,
                ..Launch::new(binary, &build.config, &args)
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

/// Creates the run's topics as the single-node stack holds them: one copy each.
pub async fn isolated_topics(tag: &str) -> Result<()> {
    let sales = Sales::named(salesflow_bin(), tag);
    create_topics(&[&sales.orders, &sales.cart_events], 12).await;
    create_topics(&[&sales.orders_dlq, &sales.cart_events_dlq], 1).await;
    Ok(())
}

/// How a run's topics are replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// The single-node stack: one copy ([`isolated_topics`]).
    Single,
    /// A cluster: `factor` copies, of which `min_insync` must have a record before it is
    /// acknowledged (`acks=all`), so that losing one broker loses nothing acknowledged.
    Replicated { factor: i32, min_insync: i32 },
}

impl Replication {
    /// The local stack's cluster profile (`schemas/environments/cluster.toml`).
    pub const CLUSTER: Self = Self::Replicated {
        factor: 3,
        min_insync: 2,
    };
}

/// Creates the run's topics with `replication`; replicated ones are checked afterwards
/// (every partition has a leader and `factor` in-sync replicas, and the topic says
/// `min.insync.replicas`), so a run never goes on with fewer copies than it claims.
pub async fn isolated_topics_with(tag: &str, replication: Replication) -> Result<()> {
    let Replication::Replicated { factor, min_insync } = replication else {
        return isolated_topics(tag).await;
    };
    let sales = Sales::named(salesflow_bin(), tag);
    let topics = [
        (sales.orders.as_str(), 12),
        (sales.cart_events.as_str(), 12),
        (sales.orders_dlq.as_str(), 1),
        (sales.cart_events_dlq.as_str(), 1),
    ];
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .context("a Kafka admin client")?;
    let min_isr = min_insync.to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(factor))
                .set("min.insync.replicas", &min_isr)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    for result in admin.create_topics(&new, &options).await? {
        if let Err((name, code)) = result {
            bail!("creating topic {name} ({factor} replicas): {code}");
        }
    }
    let names: Vec<String> = topics.iter().map(|(n, _)| (*n).to_owned()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let short = under_replicated(&names, factor).await?;
        if short.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "topics not fully replicated 60 s after creation: {}",
                short.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let resources: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|(name, _)| ResourceSpecifier::Topic(name))
        .collect();
    for resource in admin
        .describe_configs(&resources, &AdminOptions::new())
        .await?
    {
        let resource = resource.map_err(|code| anyhow::anyhow!("describing topics: {code}"))?;
        let value = resource
            .get("min.insync.replicas")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if value != min_isr {
            bail!(
                "topic {:?}: min.insync.replicas is {value:?}, not {min_isr}",
                resource.specifier
            );
        }
    }
    Ok(())
}

/// The partitions of `topics` (all their partitions; `factor` replicas each when given)
/// that lack a leader, a replica or an in-sync replica, as `topic/partition: why`; empty
/// when every one is fully replicated and in sync. Read from the cluster's metadata.
pub async fn under_replicated(
    topics: &[String],
    factor: impl Into<Option<i32>>,
) -> Result<Vec<String>> {
    let factor = factor.into();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .context("a Kafka client for metadata")?;
        let mut short = Vec::new();
        for topic in &topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .with_context(|| format!("metadata of {topic}"))?;
            for t in metadata.topics() {
                if let Some(e) = t.error() {
                    short.push(format!("{topic}: {e:?}"));
                    continue;
                }
                if t.partitions().is_empty() {
                    short.push(format!("{topic}: no partitions yet"));
                }
                for p in t.partitions() {
                    let replicas = p.replicas().len();
                    let isr = p.isr().len();
                    let wanted = factor.map_or(replicas, |f| usize::try_from(f).unwrap_or(0));
                    if p.leader() < 0 || replicas < wanted || isr < replicas {
                        short.push(format!(
                            "{topic}/{}: leader {}, {replicas} replicas, {isr} in sync",
                            p.id(),
                            p.leader()
                        ));
                    }
                }
            }
        }
        Ok(short)
    })
    .await?
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
