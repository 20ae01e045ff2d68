//! `salesflow-faults`: the fault suite. Each case runs the four pipelines as separate
//! processes (on run-tagged topics, groups and aliases), drives a steady load with the
//! load generator, injects a fault, removes it, waits for the pipelines to catch up, and
//! reconciles every accepted order against the event store and the read models — and
//! each cart's read model against a replay of its events.
//!
//! ```text
//! scripts/faults [--short] [--only CASE]... [--seed N]
//! ```
//!
//! Cases: SIGKILL of each pipeline process at random moments (restarted at once); the
//! Kafka broker, Cassandra and the Elasticsearch-API server stopped for a while and
//! started again; a consumer-group rebalance (a second domain process joins, then
//! leaves); ten times the steady rate for a while. The report (terminal, Markdown and
//! JSON under load/reports/) lists each case with accepted, stored, projected, lost and
//! duplicated counts, what was shed, when readiness went 503, how long recovery took,
//! and the peak memory of each process. The exit code is 0 only if every case lost and
//! duplicated nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::{RngExt, SeedableRng};
use salesflow_bench::common::{self, Salesflow};
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
}

const PIPELINES: [&str; 4] = ["command-api", "domain", "projections", "query-api"];

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL this pipeline's process at random moments; restart it at once.
    Kill(&'static str),
    /// Stop this local-stack server, wait, start it again.
    Server(&'static str),
    /// A second domain process joins the consumer group, then leaves.
    Rebalance,
    /// Ten times the steady rate.
    Overload,
}

const CASES: [(&str, Fault); 9] = [
    ("kill-command-api", Fault::Kill("command-api")),
    ("kill-domain", Fault::Kill("domain")),
    ("kill-projections", Fault::Kill("projections")),
    ("kill-query-api", Fault::Kill("query-api")),
    ("kafka-down", Fault::Server("kafka")),
    ("cassandra-down", Fault::Server("cassandra")),
    ("elasticsearch-down", Fault::Server("opensearch")),
    ("rebalance", Fault::Rebalance),
    ("overload", Fault::Overload),
];

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
}

impl Plan {
    fn new(short: bool) -> Self {
        if short {
            Self {
                rate: 60.0,
                before: Duration::from_secs(8),
                fault: Duration::from_secs(10),
                overload_steady: 200.0,
                overload: Duration::from_secs(15),
                after: Duration::from_secs(8),
                kills: 2,
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
            }
        }
    }

    fn steady(&self, fault: Fault) -> f64 {
        match fault {
            Fault::Overload => self.overload_steady,
            _ => self.rate,
        }
    }

    fn fault_length(&self, fault: Fault) -> Duration {
        match fault {
            Fault::Overload => self.overload,
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
    }
}

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
    async fn start() -> Result<Self> {
        let tag = common::tag();
        common::isolated_topics(&tag).await?;
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
    let out = tokio::process::Command::new(localstack())
        .current_dir(common::repo())
        .args([action, server])
        .output()
        .await
        .with_context(|| format!("running {} {action} {server}", localstack().display()))?;
    if !out.status.success() {
        bail!(
            "localstack {action} {server} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
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

/// The load profile of a case: steady, then the fault window (ten times the rate for
/// the overload), then steady again.
fn profile(cluster: &Cluster, plan: &Plan, fault: Fault, seed: u64, dir: &Path) -> String {
    let steady = plan.steady(fault);
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
settle_timeout = "300s"

[report]
dir = "{dir}"
"#,
        command = cluster.url("command-api"),
        query = cluster.url("query-api"),
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
) -> Result<CaseResult> {
    let mut result = CaseResult {
        case: name.to_owned(),
        fault: describe(fault, &plan),
        ..CaseResult::default()
    };
    let mut cluster = Cluster::start().await?;
    let watcher = watch(&cluster);
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, profile(&cluster, &plan, fault, seed, dir))?;
    let options = salesflow_load::Options::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let (load, injected) = tokio::join!(
        salesflow_load::run(&path, &options),
        inject(&mut cluster, plan, fault, &mut rng, t0)
    );
    watcher.stop.cancel();
    let log = watcher.task.await.unwrap_or_default();
    result.notes = injected.notes;
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
    cluster.stop().await;
    Ok(result)
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
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.1} s"))
}

fn markdown(results: &[CaseResult], plan: &Plan, seed: u64, short: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# salesflow fault suite\n\n{} — {} form, seed {seed}, steady {:.0} orders/s, {} cores, load average {}.\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        if short { "short" } else { "full" },
        plan.rate,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    out.push_str("| case | fault | accepted | stored | projected | lost | duplicated | read model ≠ replay | shed 429/503 | failed | not ready after | ready again after | recovery | peak RSS MiB | result |\n");
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
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.fault,
            r.accepted,
            r.stored,
            r.projected,
            r.lost(),
            r.duplicated(),
            r.replay_mismatches,
            r.shed,
            r.failed,
            opt(r.not_ready_after),
            opt(r.ready_again_after),
            opt(r.recovery),
            peak,
            if r.passed() { "passed" } else { "**FAILED**" }
        );
    }
    out.push_str(
        "\nlost and duplicated count accepted orders (2xx) missing from, or repeated in, the event store and the read models; failed requests were not accepted (refused connections while a process was down, timeouts, 504), so they are not lost; recovery is from the fault's end until an order posted then is queryable.\n",
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

async fn main_async(cli: Cli) -> Result<bool> {
    let plan = Plan::new(cli.short);
    let seed = cli
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..1_000_000));
    let cases: Vec<(&str, Fault)> = CASES
        .iter()
        .copied()
        .filter(|(name, _)| cli.only.is_empty() || cli.only.iter().any(|o| o == name))
        .collect();
    if cases.is_empty() {
        bail!(
            "no case matches {:?}; the cases are: {}",
            cli.only,
            CASES.map(|c| c.0).join(", ")
        );
    }
    println!(
        "fault suite: {} cases, {} form, seed {seed}",
        cases.len(),
        if cli.short { "short" } else { "full" }
    );
    let dir = tempfile::tempdir()?;
    let mut results = Vec::new();
    for (i, (name, fault)) in cases.iter().enumerate() {
        println!("\n== {name}: {}", describe(*fault, &plan));
        let case_seed = seed.wrapping_add(i as u64);
        let result = match run_case(name, *fault, plan, case_seed, dir.path()).await {
            Ok(r) => r,
            Err(e) => CaseResult {
                case: (*name).to_owned(),
                fault: describe(*fault, &plan),
                error: Some(format!("{e:#}")),
                ..CaseResult::default()
            },
        };
        println!(
            "== {name}: accepted {}, stored {}, projected {}, lost {}, duplicated {}, replay mismatches {}, recovery {} — {}",
            result.accepted,
            result.stored,
            result.projected,
            result.lost(),
            result.duplicated(),
            result.replay_mismatches,
            opt(result.recovery),
            if result.passed() { "passed" } else { "FAILED" }
        );
        results.push(result);
    }
    let md = markdown(&results, &plan, seed, cli.short);
    println!("\n{md}");
    std::fs::create_dir_all(&cli.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let base = cli.out.join(format!("faults-{stamp}"));
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "seed": seed,
            "short": cli.short,
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
        for n in &r.notes {
            eprintln!("salesflow-faults:   {}: {n}", r.case);
        }
    }
    Ok(results.iter().all(CaseResult::passed))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for (name, fault) in CASES {
            println!("{name:20} {}", describe(fault, &Plan::new(cli.short)));
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
