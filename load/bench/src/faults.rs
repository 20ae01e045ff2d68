//! `salesflow-faults`: the fault suite. Each case runs the four pipelines as separate
//! processes (on run-tagged topics, groups and aliases), drives a steady load with the
//! load generator, injects a fault, removes it, waits for the pipelines to catch up, and
//! reconciles every accepted order against the event store and the read models — and
//! each cart's read model against a replay of its events.
//!
//! ```text
//! scripts/faults [--short] [--only CASE]... [--seed N]
//! scripts/faults-cluster [--short] [--only CASE]... [--seed N]   (salesflow-faults --cluster)
//! ```
//!
//! Cases: SIGKILL of each pipeline process at random moments (restarted at once); the
//! Kafka broker, Cassandra and the Elasticsearch-API server stopped for a while and
//! started again; the Elasticsearch-API server stalled (SIGSTOP: it holds its
//! connections and answers nothing) under a higher rate, then resumed; a consumer-group rebalance (a second domain process joins, then
//! leaves); ten times the steady rate for a while. The report (terminal, Markdown and
//! JSON under load/reports/) lists each case with accepted, stored, projected, lost and
//! duplicated counts, what was shed, when readiness went 503, how long recovery took,
//! and the peak memory of each process. The exit code is 0 only if every case lost and
//! duplicated nothing and kept every process under 256 MiB resident.
//!
//! `--cluster` runs the cluster cases on the local stack's cluster profile
//! (`localstack up --cluster`: 3 Kafka brokers, 3 Cassandra nodes, 2 OpenSearch nodes),
//! the run's topics created with the cluster's replication (3 replicas, 2 in sync): one
//! node of each server killed (SIGKILL) under load and started again, a rolling restart of each
//! server (every node in turn stopped and started, the cluster back in sync before the
//! next), and the domain and the projections scaled 1 -> 3 -> 1 processes, several times.
//!
//! Beside the load, a sentinel posts one order every 100 ms and records how each was
//! answered: how long ingest shed (429/503) or failed (refused connections, timeouts,
//! other 5xx) comes from its answers; its accepted orders are reconciled too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::{RngExt, SeedableRng};
use salesflow_bench::common::{self, Replication, Salesflow};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(
    name = "salesflow-faults",
    about = "The fault suite: process and server failures under load, reconciled"
)]
struct Cli {
    /// The short form (CI): shorter load and outages, fewer kills.
    #[arg(long)]
    short: bool,
    /// Only these cases (see --list).
    #[arg(long = "only")]
    only: Vec<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// Seeds the random kill moments (printed; give it again to reproduce a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Where the report goes.
    #[arg(long, default_value = "load/reports")]
    out: PathBuf,
    /// The cluster cases, on the local stack's cluster profile (`localstack up --cluster`;
    /// salesflow's environment from compose/local/cluster.env).
    #[arg(long)]
    cluster: bool,
}

const PIPELINES: [&str; 4] = ["command-api", "domain", "projections", "query-api"];

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL this pipeline's process at random moments; restart it at once.
    Kill(&'static str),
    /// Stop this local-stack server, wait, start it again.
    Server(&'static str),
    /// SIGSTOP this local-stack server's process, wait, SIGCONT: it keeps its
    /// connections and answers nothing, so requests time out instead of being refused
    /// (a hung node, a long GC pause), while the backlog for it builds up in Kafka and in
    /// the pipelines' bounded buffers.
    Stall(&'static str),
    /// A second domain process joins the consumer group, then leaves.
    Rebalance,
    /// Ten times the steady rate.
    Overload,
    /// SIGKILL one node of this server of the cluster (chosen at random) under load;
    /// started again after the fault window.
    KillNode(&'static str),
    /// Each node of this server of the cluster in turn: stopped (`localstack down`),
    /// started again, and the cluster back in sync before the next.
    RollingRestart(&'static str),
    /// This pipeline scaled from 1 to 3 processes (sharing the consumer group) and back
    /// to 1, several times.
    Scale(&'static str),
}

const CASES: [(&str, Fault); 10] = [
    ("kill-command-api", Fault::Kill("command-api")),
    ("kill-domain", Fault::Kill("domain")),
    ("kill-projections", Fault::Kill("projections")),
    ("kill-query-api", Fault::Kill("query-api")),
    ("kafka-down", Fault::Server("kafka")),
    ("cassandra-down", Fault::Server("cassandra")),
    ("elasticsearch-down", Fault::Server("opensearch")),
    ("elasticsearch-stalled", Fault::Stall("opensearch")),
    ("rebalance", Fault::Rebalance),
    ("overload", Fault::Overload),
];

/// The cases of `--cluster` (OpenSearch last).
const CLUSTER_CASES: [(&str, Fault); 8] = [
    ("kill-kafka-broker", Fault::KillNode("kafka")),
    ("rolling-restart-kafka", Fault::RollingRestart("kafka")),
    ("kill-cassandra-node", Fault::KillNode("cassandra")),
    (
        "rolling-restart-cassandra",
        Fault::RollingRestart("cassandra"),
    ),
    ("scale-domain", Fault::Scale("domain")),
    ("scale-projections", Fault::Scale("projections")),
    ("kill-opensearch-node", Fault::KillNode("opensearch")),
    (
        "rolling-restart-opensearch",
        Fault::RollingRestart("opensearch"),
    ),
];

fn cases(cluster: bool) -> &'static [(&'static str, Fault)] {
    if cluster { &CLUSTER_CASES } else { &CASES }
}

/// The nodes of each server in the cluster profile (the estimates of a rolling restart's
/// length; the suite restarts the nodes `localstack status` lists).
fn cluster_nodes(server: &str) -> u32 {
    match server {
        "opensearch" => 2,
        _ => 3,
    }
}

/// About how long one node of `server` takes to stop, start and be back in sync on a
/// busy 2-core machine (idle: 10-25 s; under load the first restart of a case took up
/// to 160 s): the load's fault step is this long so that the restarts happen under load
/// (the report says when the fault outlasted the load; the reconciliation waits for the
/// fault's end all the same, see [`gated_query_api`]).
fn restart_estimate(server: &str) -> Duration {
    Duration::from_secs(match server {
        "cassandra" => 75,
        _ => 60,
    })
}

/// How long each part of a case lasts.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Steady orders per second.
    rate: f64,
    /// Steady load before the fault.
    before: Duration,
    /// How long the fault lasts (a server down, the second domain process in the group,
    /// the window in which kills happen).
    fault: Duration,
    /// The steady rate of the overload case (its overload is ten times this): high enough
    /// that ten times it is more than the system takes, so the excess must be shed.
    overload_steady: f64,
    /// How long the overload lasts.
    overload: Duration,
    /// Steady load after the fault.
    after: Duration,
    /// Kills per kill case.
    kills: usize,
    /// How long a scaled pipeline stays at 3 processes, and at 1 again, per cycle.
    scale_hold: Duration,
    /// Scale cycles (1 -> 3 -> 1) per scale case.
    scale_cycles: u32,
}

impl Plan {
    /// The plan of the single-node or the cluster suite. The cluster's steady rate is
    /// lower: on one machine each record is written by 3 brokers and each append is a
    /// Paxos round among 3 Cassandra nodes, and the steady load must fit before the fault
    /// so that what is shed or fails is the fault's doing.
    fn for_mode(short: bool, cluster: bool) -> Self {
        let plan = Self::new_single(short);
        if cluster {
            Self {
                rate: if short { 30.0 } else { 50.0 },
                ..plan
            }
        } else {
            plan
        }
    }

    fn new_single(short: bool) -> Self {
        if short {
            Self {
                rate: 60.0,
                before: Duration::from_secs(8),
                fault: Duration::from_secs(10),
                overload_steady: 200.0,
                overload: Duration::from_secs(15),
                after: Duration::from_secs(8),
                kills: 2,
                scale_hold: Duration::from_secs(8),
                scale_cycles: 2,
            }
        } else {
            Self {
                rate: 100.0,
                before: Duration::from_secs(15),
                fault: Duration::from_secs(30),
                overload_steady: 250.0,
                overload: Duration::from_secs(60),
                after: Duration::from_secs(20),
                kills: 3,
                scale_hold: Duration::from_secs(15),
                scale_cycles: 3,
            }
        }
    }

    fn steady(&self, fault: Fault) -> f64 {
        match fault {
            // A stall's backlog should be worth holding: the memory bound is what it tests.
            Fault::Overload | Fault::Stall(_) => self.overload_steady,
            _ => self.rate,
        }
    }

    /// How long the load's fault step lasts.
    fn fault_length(&self, fault: Fault) -> Duration {
        match fault {
            Fault::Overload => self.overload,
            Fault::KillNode(server) => self.fault + restart_estimate(server) * 2,
            Fault::RollingRestart(server) => restart_estimate(server) * cluster_nodes(server),
            // Two processes to start (a few seconds) per cycle.
            Fault::Scale(_) => (self.scale_hold * 2 + Duration::from_secs(6)) * self.scale_cycles,
            _ => self.fault,
        }
    }
}

/// One case's result: a row of the report.
#[derive(Clone, Debug, Default, Serialize)]
struct CaseResult {
    case: String,
    fault: String,
    /// Orders the APIs answered 2xx for.
    accepted: u64,
    /// Accepted orders found in the event store.
    stored: u64,
    /// Accepted orders found in the read models.
    projected: u64,
    lost_event_store: u64,
    lost_read_model: u64,
    duplicated_event_store: u64,
    duplicated_read_model: u64,
    out_of_order_carts: u64,
    /// Carts whose read model differs from a replay of their events.
    replay_mismatches: u64,
    /// Requests answered 429 or 503 (refused, nothing kept).
    shed: u64,
    /// Requests that failed otherwise (timeouts, connection refused while a process
    /// was down, 504): not accepted, so not counted as lost.
    failed: u64,
    /// How long ingest shed (429/503), from the sentinel's answers: seconds of sentinel
    /// orders (one per 100 ms) answered so.
    shed_seconds: f64,
    /// How long ingest failed (refused connections, timeouts, 408 and other 5xx), the
    /// same way.
    failed_seconds: f64,
    /// Sentinel orders sent, and accepted (reconciled with the load's: in `accepted`).
    sentinel_sent: u64,
    sentinel_accepted: u64,
    /// Seconds from the fault's start until a process reported not ready.
    not_ready_after: Option<f64>,
    /// Seconds from the fault's end until every process was ready again.
    ready_again_after: Option<f64>,
    /// Seconds from the fault's end until an order posted then was queryable.
    recovery: Option<f64>,
    /// Peak resident memory of each pipeline process (MiB).
    peak_rss_mib: BTreeMap<String, f64>,
    notes: Vec<String>,
    error: Option<String>,
}

impl CaseResult {
    fn lost(&self) -> u64 {
        self.lost_event_store + self.lost_read_model
    }
    fn duplicated(&self) -> u64 {
        self.duplicated_event_store + self.duplicated_read_model
    }
    fn passed(&self) -> bool {
        self.error.is_none()
            && self.accepted > 0
            && self.lost() == 0
            && self.duplicated() == 0
            && self.out_of_order_carts == 0
            && self.replay_mismatches == 0
            && self.over_memory().is_empty()
    }

    /// The processes whose peak resident memory reached [`RSS_LIMIT_MIB`].
    fn over_memory(&self) -> Vec<String> {
        self.peak_rss_mib
            .iter()
            .filter(|(_, mib)| **mib >= RSS_LIMIT_MIB)
            .map(|(process, mib)| format!("{process} {mib:.0} MiB"))
            .collect()
    }
}

/// Each pipeline process's resident memory stays below this, whatever the fault (the
/// benchmark's target for every process at peak).
const RSS_LIMIT_MIB: f64 = 256.0;

/// The four pipelines as processes, at fixed addresses.
struct Cluster {
    tag: String,
    sets: Vec<String>,
    addresses: BTreeMap<&'static str, String>,
    processes: BTreeMap<&'static str, Salesflow>,
    /// The pids to sample memory from (a restarted process has a new one).
    pids: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Cluster {
    async fn start(replication: Replication) -> Result<Self> {
        let tag = common::tag();
        common::isolated_topics_with(&tag, replication).await?;
        let mut sets = common::isolated(&tag);
        for source in [
            "pipelines.domain.sources.orders",
            "pipelines.projections.sources.cart-events",
        ] {
            sets.push(format!("{source}.statistics_interval_ms=1000"));
        }
        let mut cluster = Self {
            tag,
            sets,
            addresses: BTreeMap::new(),
            processes: BTreeMap::new(),
            pids: Arc::default(),
        };
        for pipeline in PIPELINES {
            let address = common::free_address()?;
            cluster.addresses.insert(pipeline, address);
            cluster.launch(pipeline).await?;
        }
        Ok(cluster)
    }

    async fn launch(&mut self, pipeline: &'static str) -> Result<()> {
        let process = Salesflow::start_at(&self.addresses[pipeline], &[pipeline], &self.sets)
            .await
            .with_context(|| format!("starting {pipeline}"))?;
        lock(&self.pids).insert(pipeline.to_owned(), process.pid());
        self.processes.insert(pipeline, process);
        Ok(())
    }

    fn url(&self, pipeline: &str) -> String {
        format!("http://{}", self.addresses[pipeline])
    }

    /// The run's topics, and the consumer groups' offsets topic: what must be back in
    /// sync after a broker restarts.
    fn topics(&self) -> Vec<String> {
        let sales = common::Sales::named(common::salesflow_bin(), &self.tag);
        vec![
            sales.orders,
            sales.cart_events,
            sales.orders_dlq,
            sales.cart_events_dlq,
            "__consumer_offsets".to_owned(),
        ]
    }

    /// Processes that died on their own (not killed by the suite).
    fn deaths(&mut self) -> Vec<String> {
        self.processes
            .iter_mut()
            .filter_map(|(name, p)| p.exited().map(|status| format!("{name} exited: {status}")))
            .collect()
    }

    async fn stop(self) {
        for (_, process) in self.processes {
            process.stop().await;
        }
        common::drop_isolated(&self.tag).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Samples every process's memory and readiness every 250 ms until stopped.
struct Watch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<WatchLog>,
}

#[derive(Default)]
struct WatchLog {
    peak_rss: BTreeMap<String, f64>,
    /// (when, every process ready).
    ready: Vec<(Instant, bool)>,
}

fn watch(cluster: &Cluster) -> Watch {
    let stop = tokio_util::sync::CancellationToken::new();
    let pids = Arc::clone(&cluster.pids);
    let urls: Vec<String> = PIPELINES.iter().map(|p| cluster.url(p)).collect();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let mut log = WatchLog::default();
        while !token.is_cancelled() {
            let now: Vec<(String, u32)> = lock(&pids).clone().into_iter().collect();
            for (name, pid) in now {
                let rss = common::rss_mib(pid);
                let peak = log.peak_rss.entry(name).or_default();
                *peak = peak.max(rss);
            }
            let mut all = true;
            for url in &urls {
                let ok = client
                    .get(format!("{url}/health/ready"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                all &= ok;
            }
            log.ready.push((Instant::now(), all));
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        log
    });
    Watch { stop, task }
}

/// The `localstack` binary (`scripts/stack` builds it).
fn localstack() -> PathBuf {
    if let Ok(path) = std::env::var("LOCALSTACK") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(|target| target.join("debug/localstack"))
        .unwrap_or_default()
}

async fn stack(action: &str, server: &str) -> Result<()> {
    localstack_run(&[action, server]).await.map(drop)
}

/// Every node `localstack status --json` lists. Its exit code is not success while a
/// node is unhealthy; the nodes are read all the same, and the caller judges them.
async fn localstack_status() -> Result<Vec<Value>> {
    let out = tokio::process::Command::new(localstack())
        .current_dir(common::repo())
        .args(["status", "--json"])
        .output()
        .await
        .with_context(|| format!("running {} status --json", localstack().display()))?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "reading localstack status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The process id of the single-node stack's `server`, from `localstack status --json`.
async fn server_pid(server: &str) -> Result<u32> {
    localstack_status()
        .await?
        .iter()
        .find(|node| node["server"] == server && node["healthy"] == true)
        .and_then(|node| node["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .with_context(|| format!("no healthy {server} in localstack status"))
}

/// A server process stopped with SIGSTOP; dropped (the case ended, failed or panicked),
/// it is resumed with SIGCONT, so that no run leaves a server frozen.
struct Stalled(u32);

impl Stalled {
    fn stop(pid: u32) -> Result<Self> {
        signal(pid, "STOP")?;
        Ok(Self(pid))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        if let Err(e) = signal(self.0, "CONT") {
            eprintln!("salesflow-faults: could not resume pid {}: {e:#}", self.0);
        }
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .with_context(|| format!("running kill -{name} {pid}"))?;
    if !status.success() {
        bail!("kill -{name} {pid} failed: {status}");
    }
    Ok(())
}

/// Runs `localstack ARGS...` to its end; its stdout when it succeeds.
async fn localstack_run(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(localstack())
        .current_dir(common::repo())
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} {}", localstack().display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "localstack {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nodes of the cluster profile, by server (`kafka`: `kafka-1`, ...), with their
/// addresses, from `localstack status --json`; fails unless the cluster profile runs
/// and every node is healthy.
#[derive(Clone, Debug, Default)]
struct Nodes(BTreeMap<String, Vec<(String, String)>>);

impl Nodes {
    async fn read() -> Result<Self> {
        let status = localstack_status().await?;
        let mut nodes = Self::default();
        let mut unhealthy = Vec::new();
        for node in &status {
            let text = |k: &str| node[k].as_str().unwrap_or_default().to_owned();
            if text("profile") != "cluster" {
                bail!(
                    "the local stack runs the {:?} profile, not the cluster: \
                     scripts/stack down && scripts/stack up --cluster",
                    text("profile")
                );
            }
            if node["healthy"] != true {
                unhealthy.push(format!("{} ({})", text("node"), text("error")));
            }
            nodes
                .0
                .entry(text("server"))
                .or_default()
                .push((text("node"), text("address")));
        }
        if !unhealthy.is_empty() {
            bail!("cluster nodes not healthy: {}", unhealthy.join(", "));
        }
        for server in ["kafka", "cassandra", "opensearch"] {
            if nodes.of(server).len() < 2 {
                bail!("the cluster profile runs fewer than 2 {server} nodes");
            }
        }
        Ok(nodes)
    }

    fn of(&self, server: &str) -> Vec<String> {
        self.0
            .get(server)
            .map(|nodes| nodes.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    fn addresses(&self, server: &str) -> Vec<String> {
        self.0
            .get(server)
            .map(|nodes| nodes.iter().map(|(_, a)| a.clone()).collect())
            .unwrap_or_default()
    }
}

/// Starts a stopped or killed node of the cluster again and waits until the cluster is
/// whole: `localstack up` returns once the node answers and sees every other node; then
/// Kafka's partitions of the run (and the groups' offsets) are all in sync again, or
/// OpenSearch is green again.
async fn node_up(node: &str, server: &str, nodes: &Nodes, cluster: &Cluster) -> Result<()> {
    localstack_run(&["up", "--cluster", "--no-schemas", node]).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    match server {
        "kafka" => {
            let topics = cluster.topics();
            loop {
                let short = common::under_replicated(&topics, None)
                    .await
                    .unwrap_or_else(|e| vec![format!("{e:#}")]);
                if short.is_empty() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "{node} up, but partitions still out of sync after 300 s: {}",
                        short.join("; ")
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        "opensearch" => {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            loop {
                for address in nodes.addresses(server) {
                    if let Ok(r) = client
                        .get(format!(
                            "http://{address}/_cluster/health?wait_for_status=green&timeout=5s"
                        ))
                        .send()
                        .await
                        && let Ok(health) = r.json::<Value>().await
                        && health["status"] == "green"
                    {
                        return Ok(());
                    }
                }
                if Instant::now() > deadline {
                    bail!("{node} up, but OpenSearch not green after 300 s");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        _ => Ok(()),
    }
}

/// An order posted at the fault's end, followed until queryable: the time it takes is
/// the recovery time (it queues behind whatever backlog the fault left).
async fn probe(cluster: &Cluster, deadline: Duration) -> Result<Duration> {
    let started = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let cart = Uuid::new_v4();
    let body = common::order(cart, "probe", 0);
    let order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
    let command = format!("{}/orders", cluster.url("command-api"));
    loop {
        let accepted = client
            .post(&command)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if accepted {
            break;
        }
        if started.elapsed() > deadline {
            bail!("the Command API accepted no order within {deadline:?} of the fault's end");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let query = format!("{}/carts/{cart}", cluster.url("query-api"));
    loop {
        if let Ok(r) = client.get(&query).send().await
            && r.status() == 200
            && let Ok(doc) = r.json::<Value>().await
            && doc["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i["order_id"] == order_id.as_str()))
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            bail!("the probe order was not queryable within {deadline:?} of the fault's end");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Query API as the load generator sees it in the cluster cases: passed through,
/// except that once the load's steps are over and while the fault still lasts it answers
/// 503. The load's reconciliation waits (retrying) until the read models show every
/// accepted order before it reads the event store, so it reads after the fault's end, as
/// in the single-node cases: a restart can outlast the load on a busy machine, and a
/// read a Cassandra node refuses as it shuts down would fail the reconciliation.
async fn gated_query_api(
    target: String,
    load_ends: Instant,
    fault_over: Arc<std::sync::atomic::AtomicBool>,
) -> Result<String> {
    use axum::body::Body;
    use axum::http::{Response, StatusCode, header};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, target, fault_over) =
            (client.clone(), target.clone(), Arc::clone(&fault_over));
        async move {
            let plain = |status: StatusCode| {
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap_or_default()
            };
            if Instant::now() >= load_ends && !fault_over.load(std::sync::atomic::Ordering::SeqCst)
            {
                return plain(StatusCode::SERVICE_UNAVAILABLE);
            }
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", axum::http::uri::PathAndQuery::as_str)
                .to_owned();
            let mut forward = client.get(format!("{target}{path}"));
            if let Some(key) = request.headers().get(header::AUTHORIZATION) {
                forward = forward.header(header::AUTHORIZATION, key.as_bytes());
            }
            match forward.send().await {
                Ok(answer) => {
                    let status = StatusCode::from_u16(answer.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    let kind = answer.headers().get(header::CONTENT_TYPE).cloned();
                    let body = answer.bytes().await.unwrap_or_default();
                    let mut response = Response::builder().status(status);
                    if let Some(kind) = kind {
                        response = response.header(header::CONTENT_TYPE, kind.as_bytes());
                    }
                    response.body(Body::from(body)).unwrap_or_default()
                }
                Err(_) => plain(StatusCode::BAD_GATEWAY),
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{address}"))
}

/// How the sentinel's orders are sent.
const SENTINEL_EVERY: Duration = Duration::from_millis(100);
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(15);

/// How ingest answered a sentinel order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Accepted,
    /// 429 or 503.
    Shed,
    /// No answer (refused connection, reset, timeout), 408 or another 5xx.
    Failed,
    /// Another 4xx: the order was refused as invalid (never expected).
    Refused,
}

impl Answer {
    fn of(response: &reqwest::Result<reqwest::Response>) -> Self {
        match response.as_ref().map(reqwest::Response::status) {
            Ok(status) if status.is_success() => Self::Accepted,
            Ok(status) if matches!(status.as_u16(), 429 | 503) => Self::Shed,
            Ok(status) if status.is_client_error() && status.as_u16() != 408 => Self::Refused,
            _ => Self::Failed,
        }
    }
}

/// What the sentinel saw: when each order was sent (seconds since the load started) and
/// how it was answered, and the orders accepted (order id -> cart id).
#[derive(Default)]
struct SentinelLog {
    answers: Vec<(f64, Answer)>,
    accepted: HashMap<Uuid, Uuid>,
}

impl SentinelLog {
    /// Seconds of sentinel orders answered so (each stands for its 100 ms).
    fn seconds(&self, answer: Answer) -> f64 {
        let n = self.answers.iter().filter(|(_, a)| *a == answer).count();
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        n * SENTINEL_EVERY.as_secs_f64()
    }

    /// Seconds of orders answered so among those sent before `at` (seconds since the
    /// load started).
    fn seconds_before(&self, answer: Answer, at: f64) -> f64 {
        let n = self
            .answers
            .iter()
            .filter(|(sent, a)| *a == answer && *sent < at)
            .count();
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        n * SENTINEL_EVERY.as_secs_f64()
    }

    /// The stretches of orders answered so, as `from-to s` (seconds since the load
    /// started; `at X s` for a single order): a stretch ends at an order answered
    /// otherwise. At most `most`, then how many more.
    fn stretches(&self, answer: Answer, most: usize) -> Vec<String> {
        let mut answers = self.answers.clone();
        answers.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out: Vec<(f64, f64, usize)> = Vec::new();
        let mut open = false;
        for (at, a) in answers {
            if a == answer {
                match out.last_mut() {
                    Some(last) if open => {
                        last.1 = at;
                        last.2 += 1;
                    }
                    _ => out.push((at, at, 1)),
                }
                open = true;
            } else {
                open = false;
            }
        }
        let mut text: Vec<String> = out
            .iter()
            .take(most)
            .map(|(from, to, n)| {
                if n == &1 {
                    format!("at {from:.1} s")
                } else {
                    format!("{from:.1}-{to:.1} s ({n} orders)")
                }
            })
            .collect();
        if out.len() > most {
            text.push(format!("and {} more", out.len() - most));
        }
        text
    }
}

/// Posts one order every 100 ms to the Command API from the load's start until `until`,
/// each on its own (a slow answer delays no other) and for a new cart, and records how
/// each was answered.
struct Sentinel {
    task: tokio::task::JoinHandle<SentinelLog>,
}

fn sentinel(command_api: String, t0: Instant, until: Instant) -> Sentinel {
    let task = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(SENTINEL_TIMEOUT)
            .build()
            .unwrap_or_default();
        let url = format!("{command_api}/orders");
        let log = Arc::new(Mutex::new(SentinelLog::default()));
        let mut requests = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval_at(t0, SENTINEL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for n in 0u64.. {
            let sent = tick.tick().await;
            if sent >= until {
                break;
            }
            // A cart each, so that the orders sample every partition alike (a cart's
            // orders all go to one).
            let cart = Uuid::new_v4();
            let body = common::order(cart, &format!("sentinel-{}", cart.simple()), n);
            let order: Option<Uuid> = body["order_id"].as_str().and_then(|o| o.parse().ok());
            let (client, url, log) = (client.clone(), url.clone(), Arc::clone(&log));
            requests.spawn(async move {
                let answer = Answer::of(&client.post(&url).json(&body).send().await);
                let mut log = lock(&log);
                log.answers.push(((sent - t0).as_secs_f64(), answer));
                if answer == Answer::Accepted
                    && let Some(order) = order
                {
                    log.accepted.insert(order, cart);
                }
            });
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
        std::mem::take(&mut *lock(&log))
    });
    Sentinel { task }
}

/// The load profile of a case: steady, then the fault window (ten times the rate for
/// the overload), then steady again.
fn profile(
    cluster: &Cluster,
    plan: &Plan,
    fault: Fault,
    seed: u64,
    dir: &Path,
    cassandra: Option<&[String]>,
    query_api: Option<&str>,
) -> String {
    let steady = plan.steady(fault);
    // The reconciliation reads the event store from every node of a cluster.
    let cassandra = cassandra.map_or_else(String::new, |nodes| {
        format!(
            "cassandra = {}\n",
            serde_json::to_string(nodes).unwrap_or_default()
        )
    });
    let fault_rate = match fault {
        Fault::Overload => steady * 10.0,
        _ => steady,
    };
    format!(
        r#"
name = "faults"
description = "Steady load around an injected fault."
seed = {seed}

[target]
command_api = "{command}"
query_api = "{query}"
request_timeout = "15s"
max_in_flight = 8192
{cassandra}
[data]
carts = 4000
zipf_exponent = 1.0
batch_size = 10

[[scenarios]]
name = "post-order"
kind = "post-order"
weight = 8

[[scenarios]]
name = "post-batch"
kind = "post-batch"
weight = 1

[[scenarios]]
name = "get-cart"
kind = "get-cart"
weight = 1

[[steps]]
kind = "inject"
rate = {rate}
duration = "{before}s"

[[steps]]
kind = "inject"
rate = {fault_rate}
duration = "{fault_len}s"

[[steps]]
kind = "inject"
rate = {rate}
duration = "{after}s"

[freshness]
sample_every = 0

[reconcile]
enabled = true
settle_timeout = "{settle}s"

[report]
dir = "{dir}"
"#,
        command = cluster.url("command-api"),
        query = query_api.map_or_else(|| cluster.url("query-api"), str::to_owned),
        settle = if query_api.is_some() { 900 } else { 300 },
        rate = steady,
        before = plan.before.as_secs(),
        fault_len = plan.fault_length(fault).as_secs(),
        after = plan.after.as_secs(),
        dir = dir.display(),
    )
}

/// What the fault script saw.
#[derive(Default)]
struct Injected {
    started: Option<Instant>,
    ended: Option<Instant>,
    recovery: Option<Duration>,
    notes: Vec<String>,
    error: Option<String>,
}

/// Injects the fault on the load's timeline (the load started at `t0`).
async fn inject(
    cluster: &mut Cluster,
    plan: Plan,
    fault: Fault,
    rng: &mut rand::rngs::StdRng,
    t0: Instant,
    nodes: &Nodes,
) -> Injected {
    let mut seen = Injected::default();
    let window = plan.fault_length(fault);
    let result: Result<()> = async {
        match fault {
            Fault::Kill(pipeline) => {
                let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
                let mut moments: Vec<u64> = (0..plan.kills)
                    .map(|_| rng.random_range(0..window_ms))
                    .collect();
                moments.sort_unstable();
                seen.started = Some(t0 + plan.before);
                for at in moments {
                    tokio::time::sleep_until(t0 + plan.before + Duration::from_millis(at)).await;
                    let process = cluster
                        .processes
                        .remove(pipeline)
                        .context("the process to kill")?;
                    let killed = Instant::now();
                    process.kill();
                    cluster.launch(pipeline).await?;
                    seen.notes.push(format!(
                        "SIGKILL at {:.1} s, ready again {:.1} s later",
                        (killed - t0).as_secs_f64(),
                        killed.elapsed().as_secs_f64()
                    ));
                }
                seen.ended = Some(Instant::now());
            }
            Fault::Server(server) => {
                tokio::time::sleep_until(t0 + plan.before).await;
                seen.started = Some(Instant::now());
                stack("down", server).await?;
                tokio::time::sleep(window).await;
                let restarting = Instant::now();
                stack("up", server).await?;
                seen.notes.push(format!(
                    "{server} down {:.1} s (restart took {:.1} s)",
                    (Instant::now() - seen.started.unwrap_or(restarting)).as_secs_f64(),
                    restarting.elapsed().as_secs_f64()
                ));
                seen.ended = Some(Instant::now());
            }
            Fault::Stall(server) => {
                tokio::time::sleep_until(t0 + plan.before).await;
                let pid = server_pid(server).await?;
                seen.started = Some(Instant::now());
                let stalled = Stalled::stop(pid)?;
                tokio::time::sleep(window).await;
                drop(stalled);
                seen.notes.push(format!(
                    "{server} (pid {pid}) stalled {:.1} s",
                    seen.started.map_or(0.0, |s| s.elapsed().as_secs_f64())
                ));
                seen.ended = Some(Instant::now());
            }
            Fault::Rebalance => {
                tokio::time::sleep_until(t0 + plan.before).await;
                seen.started = Some(Instant::now());
                let second = Salesflow::start(&["domain"], &cluster.sets).await?;
                lock(&cluster.pids).insert("domain (second)".into(), second.pid());
                seen.notes.push(format!(
                    "a second domain process joined at {:.1} s",
                    (Instant::now() - t0).as_secs_f64()
                ));
                tokio::time::sleep_until(t0 + plan.before + window).await;
                lock(&cluster.pids).remove("domain (second)");
                second.stop().await;
                seen.notes.push(format!(
                    "and left at {:.1} s",
                    (Instant::now() - t0).as_secs_f64()
                ));
                seen.ended = Some(Instant::now());
            }
            Fault::Overload => {
                seen.started = Some(t0 + plan.before);
                tokio::time::sleep_until(t0 + plan.before + window).await;
                seen.ended = Some(Instant::now());
            }
            Fault::KillNode(server) => {
                let candidates = nodes.of(server);
                let node = candidates[rng.random_range(0..candidates.len())].clone();
                tokio::time::sleep_until(t0 + plan.before).await;
                let killed = Instant::now();
                seen.started = Some(killed);
                localstack_run(&["kill", &node]).await?;
                tokio::time::sleep(plan.fault).await;
                let restarting = Instant::now();
                node_up(&node, server, nodes, cluster).await?;
                seen.notes.push(format!(
                    "{node} SIGKILLed at {:.1} s, started again {:.1} s later, back in the \
                     cluster (in sync) {:.1} s after that",
                    (killed - t0).as_secs_f64(),
                    (restarting - killed).as_secs_f64(),
                    restarting.elapsed().as_secs_f64()
                ));
                seen.ended = Some(Instant::now());
            }
            Fault::RollingRestart(server) => {
                tokio::time::sleep_until(t0 + plan.before).await;
                seen.started = Some(Instant::now());
                for node in nodes.of(server) {
                    let stopping = Instant::now();
                    localstack_run(&["down", &node]).await?;
                    let starting = Instant::now();
                    node_up(&node, server, nodes, cluster).await?;
                    seen.notes.push(format!(
                        "{node} stopped at {:.1} s (in {:.1} s), back in the cluster {:.1} s later",
                        (stopping - t0).as_secs_f64(),
                        (starting - stopping).as_secs_f64(),
                        starting.elapsed().as_secs_f64()
                    ));
                }
                seen.ended = Some(Instant::now());
            }
            Fault::Scale(pipeline) => {
                tokio::time::sleep_until(t0 + plan.before).await;
                seen.started = Some(Instant::now());
                for cycle in 1..=plan.scale_cycles {
                    let growing = Instant::now();
                    let pipelines = [pipeline];
                    let (second, third) = tokio::join!(
                        Salesflow::start(&pipelines, &cluster.sets),
                        Salesflow::start(&pipelines, &cluster.sets)
                    );
                    let extra = [
                        second.with_context(|| format!("starting a second {pipeline}"))?,
                        third.with_context(|| format!("starting a third {pipeline}"))?,
                    ];
                    for (i, p) in extra.iter().enumerate() {
                        lock(&cluster.pids)
                            .insert(format!("{pipeline} ({})", ["second", "third"][i]), p.pid());
                    }
                    let grown = Instant::now();
                    tokio::time::sleep(plan.scale_hold).await;
                    let shrinking = Instant::now();
                    let mut extra = extra;
                    for (i, p) in extra.iter_mut().enumerate() {
                        if let Some(status) = p.exited() {
                            seen.notes.push(format!(
                                "the {} {pipeline} exited: {status}",
                                ["second", "third"][i]
                            ));
                        }
                    }
                    let [second, third] = extra;
                    tokio::join!(second.stop(), third.stop());
                    for name in ["second", "third"] {
                        lock(&cluster.pids).remove(&format!("{pipeline} ({name})"));
                    }
                    seen.notes.push(format!(
                        "cycle {cycle}: 3 {pipeline} processes at {:.1} s (started in {:.1} s), \
                         1 again at {:.1} s (stopped in {:.1} s)",
                        (grown - t0).as_secs_f64(),
                        (grown - growing).as_secs_f64(),
                        (Instant::now() - t0).as_secs_f64(),
                        shrinking.elapsed().as_secs_f64()
                    ));
                    tokio::time::sleep(plan.scale_hold).await;
                }
                seen.ended = Some(Instant::now());
            }
        }
        let recovery = probe(cluster, Duration::from_secs(300)).await?;
        seen.recovery = Some(recovery);
        Ok(())
    }
    .await;
    if let Err(e) = result {
        seen.error = Some(format!("{e:#}"));
    }
    seen
}

async fn run_case(
    name: &str,
    fault: Fault,
    plan: Plan,
    seed: u64,
    dir: &Path,
    nodes: Option<&Nodes>,
) -> Result<CaseResult> {
    let mut result = CaseResult {
        case: name.to_owned(),
        fault: describe(fault, &plan),
        ..CaseResult::default()
    };
    let replication = if nodes.is_some() {
        Replication::CLUSTER
    } else {
        Replication::Single
    };
    let mut cluster = Cluster::start(replication).await?;
    let watcher = watch(&cluster);
    let path = dir.join(format!("{name}.toml"));
    let cassandra = nodes.map(|_| common::cassandra_nodes());
    let t0 = Instant::now();
    let load_ends = t0 + plan.before + plan.fault_length(fault) + plan.after;
    let fault_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gated = match nodes {
        Some(_) => Some(
            gated_query_api(cluster.url("query-api"), load_ends, Arc::clone(&fault_over)).await?,
        ),
        None => None,
    };
    std::fs::write(
        &path,
        profile(
            &cluster,
            &plan,
            fault,
            seed,
            dir,
            cassandra.as_deref(),
            gated.as_deref(),
        ),
    )?;
    let options = salesflow_load::Options::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sentinel = sentinel(cluster.url("command-api"), t0, load_ends);
    let no_nodes = Nodes::default();
    let (load, injected) = tokio::join!(salesflow_load::run(&path, &options), async {
        let injected = inject(
            &mut cluster,
            plan,
            fault,
            &mut rng,
            t0,
            nodes.unwrap_or(&no_nodes),
        )
        .await;
        fault_over.store(true, std::sync::atomic::Ordering::SeqCst);
        injected
    });
    watcher.stop.cancel();
    let log = watcher.task.await.unwrap_or_default();
    let sentinel = sentinel.task.await.unwrap_or_default();
    result.notes = injected.notes;
    if let Some(ended) = injected.ended
        && ended > load_ends
    {
        result.notes.push(format!(
            "the fault outlasted the load by {:.1} s (the last of it without load; the \
             reconciliation waited for its end)",
            (ended - load_ends).as_secs_f64()
        ));
    }
    result.notes.extend(cluster.deaths());
    result.error = injected.error;
    result.recovery = injected.recovery.map(|d| d.as_secs_f64());
    result.peak_rss_mib = log.peak_rss;
    if let (Some(started), Some(ended)) = (injected.started, injected.ended) {
        result.not_ready_after = log
            .ready
            .iter()
            .find(|(at, ready)| *at >= started && !ready)
            .map(|(at, _)| (*at - started).as_secs_f64());
        result.ready_again_after = log
            .ready
            .iter()
            .find(|(at, ready)| *at >= ended && *ready)
            .map(|(at, _)| (*at - ended).as_secs_f64());
    }
    match load {
        Ok(outcome) => {
            let report = outcome.report;
            let total = &report.total;
            let outcome_count = |k: &str| total.outcomes.get(k).copied().unwrap_or(0);
            result.shed = outcome_count("shed");
            result.failed = total.requests - total.ok - result.shed - outcome_count("rejected");
            if outcome_count("rejected") > 0 {
                result.notes.push(format!(
                    "{} requests refused with another 4xx",
                    outcome_count("rejected")
                ));
            }
            match &report.reconciliation {
                Some(r) => {
                    let n = |k: &str| r[k].as_u64().unwrap_or(0);
                    result.accepted = n("accepted");
                    result.stored = n("stored");
                    result.projected = n("projected");
                    result.lost_event_store = n("lost_event_store");
                    result.lost_read_model = n("lost_read_model");
                    result.duplicated_event_store = n("duplicated_event_store");
                    result.duplicated_read_model = n("duplicated_read_model");
                    result.out_of_order_carts = n("out_of_order_carts");
                    result.replay_mismatches = n("read_model_mismatches");
                    for e in r["examples"].as_array().into_iter().flatten() {
                        result.notes.push(e.as_str().unwrap_or_default().to_owned());
                    }
                }
                None => {
                    result
                        .error
                        .get_or_insert_with(|| "no reconciliation".into());
                }
            }
        }
        Err(e) => {
            result.error.get_or_insert(format!("the load run: {e:#}"));
        }
    }
    let fault_start = injected
        .started
        .map_or(plan.before.as_secs_f64(), |s| (s - t0).as_secs_f64());
    if let Err(e) = add_sentinel(&mut result, &sentinel, &path, fault_start).await {
        result
            .error
            .get_or_insert(format!("reconciling the sentinel's orders: {e:#}"));
    }
    cluster.stop().await;
    Ok(result)
}

/// Adds the sentinel's orders to the case: how long ingest shed or failed, and its
/// accepted orders reconciled as the load's are (same profile: Query API, event store).
async fn add_sentinel(
    result: &mut CaseResult,
    sentinel: &SentinelLog,
    profile: &Path,
    fault_start: f64,
) -> Result<()> {
    result.sentinel_sent = sentinel.answers.len() as u64;
    result.sentinel_accepted = sentinel.accepted.len() as u64;
    result.shed_seconds = sentinel.seconds(Answer::Shed);
    result.failed_seconds = sentinel.seconds(Answer::Failed);
    for (answer, what) in [(Answer::Shed, "shed"), (Answer::Failed, "failed")] {
        let stretches = sentinel.stretches(answer, 8);
        if !stretches.is_empty() {
            result.notes.push(format!(
                "ingest {what} {:.1} s, of which {:.1} s before the fault (began at \
                 {fault_start:.1} s); sentinel orders sent {}",
                sentinel.seconds(answer),
                sentinel.seconds_before(answer, fault_start),
                stretches.join(", ")
            ));
        }
    }
    let refused = sentinel
        .answers
        .iter()
        .filter(|(_, a)| *a == Answer::Refused)
        .count();
    if refused > 0 {
        result
            .notes
            .push(format!("{refused} sentinel orders refused with a 4xx"));
    }
    if sentinel.accepted.is_empty() {
        return Ok(());
    }
    let profile = salesflow_load::profile::Profile::load(profile)?;
    let r = salesflow_load::reconcile::reconcile(&profile, &sentinel.accepted).await?;
    let n = |v: usize| v as u64;
    result.accepted += n(r.accepted);
    result.stored += n(r.stored);
    result.projected += n(r.projected);
    result.lost_event_store += n(r.lost_event_store);
    result.lost_read_model += n(r.lost_read_model);
    result.duplicated_event_store += n(r.duplicated_event_store);
    result.duplicated_read_model += n(r.duplicated_read_model);
    result.out_of_order_carts += n(r.out_of_order_carts);
    result.replay_mismatches += n(r.read_model_mismatches);
    for e in r.examples {
        result.notes.push(format!("sentinel: {e}"));
    }
    Ok(())
}

fn describe(fault: Fault, plan: &Plan) -> String {
    let secs = |d: Duration| d.as_secs();
    match fault {
        Fault::Kill(p) => format!(
            "SIGKILL {p} {} times within {} s, restarted at once",
            plan.kills,
            secs(plan.fault)
        ),
        Fault::Server(s) => format!("{s} stopped for {} s, then started", secs(plan.fault)),
        Fault::Stall(s) => format!(
            "{s} stalled (SIGSTOP) for {} s at {:.0}/s, then resumed",
            secs(plan.fault),
            plan.overload_steady
        ),
        Fault::Rebalance => format!(
            "a second domain process in the group for {} s",
            secs(plan.fault)
        ),
        Fault::Overload => format!(
            "{:.0}/s (10x the {:.0}/s steady rate) for {} s",
            plan.overload_steady * 10.0,
            plan.overload_steady,
            secs(plan.overload)
        ),
        Fault::KillNode(s) => format!(
            "SIGKILL one {s} node (chosen at random), started again after {} s",
            secs(plan.fault)
        ),
        Fault::RollingRestart(s) => format!(
            "rolling restart of {s}: each node stopped, started, back in sync before the next"
        ),
        Fault::Scale(p) => format!(
            "{p} scaled 1 -> 3 -> 1 processes {} times ({} s at 3, {} s at 1)",
            plan.scale_cycles,
            secs(plan.scale_hold),
            secs(plan.scale_hold)
        ),
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

fn markdown(results: &[CaseResult], plan: &Plan, seed: u64, short: bool, cluster: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# salesflow {}fault suite\n\n{} — {} form, seed {seed}, steady {:.0} orders/s, {} cores, load average {}.\n",
        if cluster {
            "cluster (3 Kafka brokers, 3 Cassandra nodes, 2 OpenSearch nodes) "
        } else {
            ""
        },
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        if short { "short" } else { "full" },
        plan.rate,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    out.push_str("| case | fault | accepted | stored | projected | lost | duplicated | read model ≠ replay | shed 429/503 (for) | failed (for) | not ready after | ready again after | recovery | peak RSS MiB | result |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    for r in results {
        let peak = r
            .peak_rss_mib
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({:.1} s) | {} ({:.1} s) | {} | {} | {} | {} | {} |",
            r.case,
            r.fault,
            r.accepted,
            r.stored,
            r.projected,
            r.lost(),
            r.duplicated(),
            r.replay_mismatches,
            r.shed,
            r.shed_seconds,
            r.failed,
            r.failed_seconds,
            opt(r.not_ready_after),
            opt(r.ready_again_after),
            opt(r.recovery),
            peak,
            if r.passed() { "passed" } else { "**FAILED**" }
        );
    }
    out.push_str(
        "\nlost and duplicated count accepted orders (2xx) missing from, or repeated in, the event store and the read models (the load's and a sentinel's: one order every 100 ms, reconciled the same way); failed requests were not accepted (refused connections while a process was down, timeouts, 504), so they are not lost; shed and failed give the load's requests answered so and, in brackets, for how long ingest shed or failed (the sentinel's orders answered so, 100 ms each); recovery is from the fault's end until an order posted then is queryable.\n",
    );
    for r in results {
        if !r.notes.is_empty() || r.error.is_some() {
            let _ = writeln!(out, "\n{}:", r.case);
            for n in &r.notes {
                let _ = writeln!(out, "- {n}");
            }
            if let Some(e) = &r.error {
                let _ = writeln!(out, "- error: {e}");
            }
        }
    }
    out
}

/// Before a cluster run: the cluster profile runs whole, and salesflow takes the
/// environment it is given (compose/local/cluster.env) — a refused configuration says
/// why once, instead of failing every case.
async fn cluster_preflight() -> Result<Nodes> {
    let nodes = Nodes::read().await?;
    let sets = common::isolated(&common::tag());
    let mut args: Vec<&str> = Vec::new();
    for s in &sets {
        args.extend(["--set", s]);
    }
    let config = common::repo().join("pipeline.toml");
    let config = config.to_string_lossy();
    args.extend(["--config", &config, "check"]);
    let out = tokio::process::Command::new(common::salesflow_bin())
        .current_dir(common::repo())
        .args(&args)
        .output()
        .await
        .context("running salesflow check")?;
    if !out.status.success() {
        bail!(
            "salesflow check refuses the configuration with this environment: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, value) in std::env::vars() {
        if name.starts_with("SALESFLOW__") {
            println!("  {name}={value}");
        }
    }
    Ok(nodes)
}

async fn main_async(cli: Cli) -> Result<bool> {
    let plan = Plan::for_mode(cli.short, cli.cluster);
    let seed = cli
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..1_000_000));
    let all = cases(cli.cluster);
    let cases: Vec<(&str, Fault)> = all
        .iter()
        .copied()
        .filter(|(name, _)| cli.only.is_empty() || cli.only.iter().any(|o| o == name))
        .collect();
    if cases.is_empty() {
        bail!(
            "no case matches {:?}; the cases are: {}",
            cli.only,
            all.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "{}fault suite: {} cases, {} form, seed {seed}",
        if cli.cluster { "cluster " } else { "" },
        cases.len(),
        if cli.short { "short" } else { "full" }
    );
    let nodes = if cli.cluster {
        Some(cluster_preflight().await?)
    } else {
        None
    };
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for (i, (name, fault)) in cases.iter().enumerate() {
        println!("\n== {name}: {}", describe(*fault, &plan));
        let case_seed = seed.wrapping_add(i as u64);
        let result = match run_case(name, *fault, plan, case_seed, dir.path(), nodes.as_ref()).await
        {
            Ok(r) => r,
            Err(e) => CaseResult {
                case: (*name).to_owned(),
                fault: describe(*fault, &plan),
                error: Some(format!("{e:#}")),
                ..CaseResult::default()
            },
        };
        println!(
            "== {name}: accepted {}, stored {}, projected {}, lost {}, duplicated {}, replay mismatches {}, ingest shed {:.1} s, failed {:.1} s, recovery {} — {}",
            result.accepted,
            result.stored,
            result.projected,
            result.lost(),
            result.duplicated(),
            result.replay_mismatches,
            result.shed_seconds,
            result.failed_seconds,
            opt(result.recovery),
            if result.passed() { "passed" } else { "FAILED" }
        );
        results.push(result);
    }
    let md = markdown(&results, &plan, seed, cli.short, cli.cluster);
    println!("\n{md}");
    std::fs::create_dir_all(&cli.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let base = cli.out.join(format!(
        "faults-{}{stamp}",
        if cli.cluster { "cluster-" } else { "" }
    ));
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "seed": seed,
            "short": cli.short,
            "cluster": cli.cluster,
            "cases": results,
        }))?,
    )?;
    println!("report: {}.md", base.display());
    // The failures again, last, so that a log's tail says what went wrong.
    for r in results.iter().filter(|r| !r.passed()) {
        eprintln!(
            "salesflow-faults: {} FAILED: accepted {}, lost {} (event store {}, read models {}), duplicated {}, carts out of order {}, replay mismatches {}{}",
            r.case,
            r.accepted,
            r.lost(),
            r.lost_event_store,
            r.lost_read_model,
            r.duplicated(),
            r.out_of_order_carts,
            r.replay_mismatches,
            r.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        let over = r.over_memory();
        if !over.is_empty() {
            eprintln!(
                "salesflow-faults:   {}: resident memory at or above {RSS_LIMIT_MIB:.0} MiB: {}",
                r.case,
                over.join(", ")
            );
        }
        for n in &r.notes {
            eprintln!("salesflow-faults:   {}: {n}", r.case);
        }
    }
    Ok(results.iter().all(CaseResult::passed))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for &(name, fault) in cases(cli.cluster) {
            println!(
                "{name:26} {}",
                describe(fault, &Plan::for_mode(cli.short, cli.cluster))
            );
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match salesflow_plugin_api::multi_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("salesflow-faults: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("salesflow-faults: a case lost or duplicated orders, or failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("salesflow-faults: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(answers: &[(f64, Answer)]) -> SentinelLog {
        SentinelLog {
            answers: answers.to_vec(),
            accepted: HashMap::new(),
        }
    }

    #[test]
    fn the_sentinel_says_how_long_and_when_ingest_shed_or_failed() {
        use Answer::{Accepted as A, Failed as F, Shed as S};
        // Out of order, as concurrent answers arrive.
        let log = log(&[
            (10.3, F),
            (10.0, A),
            (10.1, F),
            (10.2, F),
            (10.4, A),
            (11.0, S),
            (12.0, F),
        ]);
        assert!((log.seconds(F) - 0.4).abs() < 1e-9);
        assert!((log.seconds(S) - 0.1).abs() < 1e-9);
        assert!((log.seconds(A) - 0.2).abs() < 1e-9);
        assert_eq!(log.stretches(F, 8), ["10.1-10.3 s (3 orders)", "at 12.0 s"]);
        assert_eq!(
            log.stretches(F, 1),
            ["10.1-10.3 s (3 orders)", "and 1 more"]
        );
        assert_eq!(log.stretches(S, 8), ["at 11.0 s"]);
        assert!(log.stretches(Answer::Refused, 8).is_empty());
        assert!((log.seconds_before(F, 11.0) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn each_mode_has_its_cases_with_unique_names() {
        for cluster in [false, true] {
            let names: std::collections::BTreeSet<&str> =
                cases(cluster).iter().map(|c| c.0).collect();
            assert_eq!(names.len(), cases(cluster).len());
        }
        assert!(cases(true).iter().all(|(_, f)| matches!(
            f,
            Fault::KillNode(_) | Fault::RollingRestart(_) | Fault::Scale(_)
        )));
        assert!(cases(false).iter().all(|(_, f)| !matches!(
            f,
            Fault::KillNode(_) | Fault::RollingRestart(_) | Fault::Scale(_)
        )));
    }

    #[test]
    fn the_load_lasts_through_every_scale_cycle_and_restart() {
        for short in [true, false] {
            let plan = Plan::for_mode(short, false);
            let scale = plan.fault_length(Fault::Scale("domain"));
            assert!(scale >= plan.scale_hold * 2 * plan.scale_cycles);
            for server in ["kafka", "cassandra", "opensearch"] {
                assert!(plan.fault_length(Fault::KillNode(server)) > plan.fault);
                assert!(
                    plan.fault_length(Fault::RollingRestart(server))
                        >= restart_estimate(server) * cluster_nodes(server)
                );
            }
            // The single-node cases' windows are as they were.
            assert_eq!(plan.fault_length(Fault::Server("kafka")), plan.fault);
            assert_eq!(plan.fault_length(Fault::Overload), plan.overload);
        }
    }
}
