//! End to end: sustained orders/s from POST to queryable, with every lag drained, against
//! the composite ceiling (what the servers could do if each spent on an order only what
//! it spends at its raw ceiling); latency at half the sustainable rate; salesflow's memory;
//! every process's CPU over the sustained and the single-order phases.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use salesflow_plugin_elasticsearch::{Client, ElasticsearchSettings};

use serde_json::Value;
use uuid::Uuid;

use crate::ab::median;
use crate::common::{
    Build, CaughtUp, OpenSearchWrites, Replication, Sales, Salesflow, drive, drop_isolated, es_url,
    free_address, isolated, isolated_topics_with, opensearch_writes, order, read_models_caught_up,
    rss_mib, salesflow_bin, tag,
};
use crate::cpu::{self, Meter, Phase, ServerCost, Tracked};
use crate::{Row, latency};

/// OpenSearch's `index.search.idle.after` (its default, which the templates keep): a shard
/// nobody has searched for this long skips its scheduled refreshes while it is written. A
/// new shard counts as searched when it is made.
const SEARCH_IDLE_AFTER: Duration = Duration::from_secs(30);

/// A run's names (topics, groups, read-model aliases) and, when made ahead, the moment its
/// read models were made. The end-to-end run's read models stand for a production index
/// that has lived longer than the run and that nobody searches: made ahead and waited on
/// until search-idle, they skip their scheduled refreshes as such an index does. Made by
/// the projections at launch (the warm-up rounds, the cluster profile), they are younger
/// than 30 s during the run and refresh every second.
pub struct ReadModels {
    tag: String,
    made: Option<Instant>,
}

impl ReadModels {
    /// Read models the run's projections make when they start.
    pub fn at_launch() -> Self {
        Self {
            tag: tag(),
            made: None,
        }
    }

    /// Read models made now, through the projection sink's own `ensure_alias` (the index
    /// behind each alias, from the stack's templates), so that a run later on the same
    /// names finds them already search-idle.
    pub async fn ahead() -> Result<Self> {
        let tag = tag();
        let settings: ElasticsearchSettings = toml::from_str(&format!("url = \"{}\"", es_url()))?;
        let client = Client::new(&settings)?;
        let sales = Sales::named(salesflow_bin(), &tag);
        for alias in [&sales.detailed, &sales.summary] {
            client
                .ensure_alias(alias)
                .await
                .with_context(|| format!("making the run's read model {alias} ahead"))?;
        }
        Ok(Self {
            tag,
            made: Some(Instant::now()),
        })
    }

    /// Waits out what is left of the search-idle time since the read models were made;
    /// how old they are then (`None` for read models made at launch).
    async fn idle(&self) -> Option<Duration> {
        let made = self.made?;
        let idle_at = made + SEARCH_IDLE_AFTER + Duration::from_secs(1);
        let now = Instant::now();
        if idle_at > now {
            println!(
                "  waiting {:.0} s for the run's read models to go search-idle ({} s without a search)",
                (idle_at - now).as_secs_f64(),
                SEARCH_IDLE_AFTER.as_secs()
            );
            tokio::time::sleep(idle_at - now).await;
        }
        Some(made.elapsed())
    }
}

/// The p99 POST to 202 the half-rate run is held to, in ms.
const P99_TO_202_MS: f64 = 10.0;

/// The p99 POST to queryable the half-rate run is held to, in ms.
const P99_TO_QUERYABLE_MS: f64 = 1000.0;

/// How long the ramp that finds the highest rate holding the 202 target climbs.
const HELD_RAMP: Duration = Duration::from_secs(40);

/// The load profile of [`held_to`]: single orders ramped from a tenth of `half` to `half`
/// over [`HELD_RAMP`], as the half-rate run sends them (1 in 50 followed to queryable),
/// with the 202 target as its p99 threshold, which the load generator's knee (the best
/// 5 s window with a p99 under it) reads. Its first rate, and the profile's text.
fn held_profile(half: f64) -> (f64, String) {
    let from = (half / 10.0).max(1.0);
    let text = single_orders_profile(
        "ramp-to-202-target",
        "Single orders ramped up to half the sustainable rate: the highest rate with p99 POST to 202 under the target.",
        &format!(
            "kind = \"ramp-inject\"\nfrom = {from:.1}\nto = {half:.1}\nduration = \"{}s\"",
            HELD_RAMP.as_secs()
        ),
        &format!(
            "[reconcile]\nenabled = false\n[[thresholds]]\nmetric = \"p99\"\nbelow = \"{P99_TO_202_MS}ms\""
        ),
    );
    (from, text)
}

/// A load profile of the latency runs: single orders over 5000 carts after a 2 s warm-up,
/// 1 in 50 followed to queryable; `step` is its one `[[steps]]` table's body, `rest` the
/// tables after `[freshness]` (reconciliation, thresholds).
fn single_orders_profile(name: &str, description: &str, step: &str, rest: &str) -> String {
    format!(
        r#"
name = "{name}"
description = "{description}"
warmup = "2s"
[data]
carts = 5000
[[scenarios]]
name = "post-order"
kind = "post-order"
weight = 1
[[steps]]
{step}
[freshness]
sample_every = 50
{rest}
"#
    )
}

/// What a missed 202 target is made of, from Kafka's own floors: a bare producer on the
/// quiet machine (`quiet_p99`, when measured) and beside the run (`beside_p99`). A floor
/// at or above the target is a miss no client of this broker avoids at that load; under
/// it, the Command API's time above the floor is ours. Empty when the target was met.
fn whose_202_miss(p99: f64, quiet_p99: Option<f64>, beside_p99: f64, niceness: &str) -> String {
    if p99 < P99_TO_202_MS {
        return String::new();
    }
    match quiet_p99 {
        Some(quiet) if quiet >= P99_TO_202_MS => format!(
            " (Kafka's own p99 on the quiet machine, {quiet:.1} ms, is above the target: no client gets under it with the servers at this niceness, {niceness})"
        ),
        _ if beside_p99 >= P99_TO_202_MS => format!(
            " (Kafka's own p99 beside the run, a bare producer's, was {beside_p99:.1} ms: at this load the broker's acknowledgement alone misses the target; the Command API's p99 is {:.1}x that)",
            p99 / beside_p99
        ),
        _ => format!(
            " (Kafka's own p99 beside the run, a bare producer's, was {beside_p99:.1} ms, under the target: the time above it is the Command API's)"
        ),
    }
}

/// The highest rate at which POST to 202 holds its target, from a ramp up to `half`
/// ([`held_profile`]). The ramp's first rate, and the knee (`None`: no window held).
async fn held_to(
    dir: &std::path::Path,
    options: &salesflow_load::Options,
    half: f64,
) -> Result<(f64, Option<f64>)> {
    let (from, text) = held_profile(half);
    let profile = dir.join("held.toml");
    std::fs::write(&profile, text)?;
    let outcome = salesflow_load::run(&profile, options)
        .await
        .context("the ramp to the 202 target")?;
    Ok((from, outcome.report.knee_rps))
}

/// `profile` run by the load generator against the bare relay ([`crate::relay`]) in place
/// of the Command API, into the run's orders `topic`, through `producers` (the Command
/// API's); the queries, followers and reconciliation as `options` has them. Its report.
async fn through_relay(
    producers: &crate::relay::Producers,
    topic: &str,
    profile: &std::path::Path,
    options: &salesflow_load::Options,
) -> Result<salesflow_load::report::RunReport> {
    let (topic, producers) = (topic.to_owned(), producers.clone());
    let relay = tokio::task::spawn_blocking(move || crate::relay::Relay::start(&topic, &producers))
        .await??;
    let options = salesflow_load::Options {
        target: Some(format!("http://{}", relay.address)),
        ..options.clone()
    };
    let outcome = salesflow_load::run(profile, &options).await;
    tokio::task::spawn_blocking(move || relay.stop()).await??;
    Ok(outcome?.report)
}

/// The turns beside the relay, in order: three pairs, the first two ABBA (relay, Command
/// API, Command API, relay) and a third as the first, so that neither a drift over the
/// turns nor one pair hit by a long merge decides the figure.
const TURNS: [Front; 6] = [
    Front::Relay,
    Front::CommandApi,
    Front::CommandApi,
    Front::Relay,
    Front::Relay,
    Front::CommandApi,
];

/// The longest a latency run waits for OpenSearch's running merges to end before it
/// starts; warm, one merge of the sustained phase's segments took up to about 20 s.
const MERGE_WAIT: Duration = Duration::from_secs(60);

/// One half-rate turn beside the relay: which front, how quiet the servers were and what
/// OpenSearch owed before it, OpenSearch's merging and refreshing during it, its report.
struct Turn {
    front: Front,
    settled: crate::Quiet,
    caught: CaughtUp,
    opensearch: OpenSearchWrites,
    report: salesflow_load::report::RunReport,
}

/// Which HTTP front a half-rate turn beside the relay went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Front {
    CommandApi,
    Relay,
}

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::CommandApi => "the Command API",
            Front::Relay => "the bare relay",
        }
    }
}

/// The Command API's p99 to 202 over the relay's in each pair of turns, a pair being two
/// turns in a row (1-2, 3-4, ...) through one front each, in either order; `p99` gives
/// each turn's front and p99. Pairs without both fronts are skipped.
fn front_ratios(p99: &[(Front, f64)]) -> Vec<f64> {
    p99.chunks(2)
        .filter_map(|pair| {
            let of = |front| pair.iter().find(|(f, _)| *f == front).map(|(_, p)| *p);
            Some(of(Front::CommandApi)? / of(Front::Relay)?)
        })
        .collect()
}

/// A load run's reconciliation, as the report gives it.
fn reconciled(report: &salesflow_load::report::RunReport) -> String {
    let r = report.reconciliation.clone().unwrap_or_default();
    format!(
        "{} accepted, lost {} / {}, duplicated {} / {}",
        r["accepted"],
        r["lost_read_model"],
        r["lost_event_store"],
        r["duplicated_read_model"],
        r["duplicated_event_store"]
    )
}

/// How long the half-rate run injects orders (after its 2 s warm-up).
const HALF_INJECTION: Duration = Duration::from_secs(20);

/// The half-rate run's CPU is metered from this moment of the run for this long: inside
/// its injection, after its warm-up.
const HALF_WINDOW: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(18));

/// How many of a server's units one order costs: a Kafka record on `orders` and one on
/// `cart-events`; one event in the event store; two documents (detailed and summary).
pub fn units_per_order(server: &str) -> f64 {
    match server {
        "kafka" | "opensearch" => 2.0,
        _ => 1.0,
    }
}

/// Per component: seconds spent processing (stages) or writing (sinks), and seconds
/// its producers waited for room in its channels, from salesflow's own metrics.
async fn busy(address: &str) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut out = std::collections::BTreeMap::new();
    let Some(scrape) = latency::scrape(address).await else {
        return out;
    };
    for sample in &scrape.samples {
        let key = || {
            Some(format!(
                "{}/{}",
                sample.labels.get("pipeline")?,
                sample.labels.get("component")?
            ))
        };
        let Some(v) = latency::number(sample) else {
            continue;
        };
        let slot = match sample.metric.as_str() {
            "salesflow_processing_seconds_sum" => 0,
            "salesflow_send_wait_seconds_total" => 1,
            _ => continue,
        };
        if let Some(k) = key() {
            let entry = out.entry(k).or_insert((0.0, 0.0));
            if slot == 0 {
                entry.0 += v;
            } else {
                entry.1 += v;
            }
        }
    }
    out
}

/// The counters of `scrapes` whose names start with `metric`, summed by pipeline and by
/// the value of their `by` label (or, with none, under `name`).
fn counters(
    scrapes: &[prometheus_parse::Scrape],
    metric: &str,
    by: Option<&str>,
    name: &str,
) -> std::collections::BTreeMap<(String, String), f64> {
    let mut out = std::collections::BTreeMap::new();
    for sample in scrapes.iter().flat_map(|s| &s.samples) {
        if !sample.metric.starts_with(metric) {
            continue;
        }
        let key = match by {
            Some(label) => sample.labels.get(label).map(str::to_owned),
            None => Some(name.to_owned()),
        };
        let (Some(pipeline), Some(key), Some(v)) =
            (sample.labels.get("pipeline"), key, latency::number(sample))
        else {
            continue;
        };
        *out.entry((pipeline.to_owned(), key)).or_insert(0.0) += v;
    }
    out
}

/// Requests each pipeline's Kafka clients sent, by pipeline and Kafka API (librdkafka's
/// counts, as of each client's last statistics report); and the carts each pipeline read
/// back from the event store (one partition read each), from one scrape of each process.
async fn kafka_and_store(
    addresses: &[&str],
) -> [std::collections::BTreeMap<(String, String), f64>; 2] {
    let mut scrapes = Vec::new();
    for address in addresses {
        scrapes.extend(latency::scrape(address).await);
    }
    let mut reads = counters(&scrapes, "salesflow_cart_rebuilds", None, "cart read");
    reads.extend(counters(
        &scrapes,
        "salesflow_read_model_rebuilds",
        None,
        "cart read",
    ));
    [
        counters(&scrapes, "salesflow_kafka_requests", Some("request"), ""),
        reads,
    ]
}

/// Counts per order between two scrapes, the largest first, and the total.
fn requests_per_order(
    before: &std::collections::BTreeMap<(String, String), f64>,
    after: &std::collections::BTreeMap<(String, String), f64>,
    orders: f64,
) -> (Vec<(String, f64)>, f64) {
    let mut per: Vec<(String, f64)> = after
        .iter()
        .map(|((pipeline, api), v)| {
            let d = v - before
                .get(&(pipeline.clone(), api.clone()))
                .copied()
                .unwrap_or(0.0);
            (format!("{pipeline} {api}"), d / orders.max(1.0))
        })
        .filter(|(_, d)| *d > 0.0)
        .collect();
    per.sort_by(|a, b| b.1.total_cmp(&a.1));
    // A fold from +0.0: `sum` of no floats is -0.0, which prints as "-0.000".
    let total = per.iter().fold(0.0, |total, (_, d)| total + d);
    (per, total)
}

async fn busy_all(addresses: &[&str]) -> std::collections::BTreeMap<String, (f64, f64)> {
    let mut all = std::collections::BTreeMap::new();
    for a in addresses {
        all.extend(busy(a).await);
    }
    all
}

/// Waits until every consumer's lag is 0 (twice in a row).
async fn drained(consumers: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut zero = 0;
    while zero < 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut total = 0.0;
        let mut known = true;
        for c in consumers {
            match lag(c).await {
                Some(l) => total += l,
                None => known = false,
            }
        }
        zero = if known && total == 0.0 { zero + 1 } else { 0 };
        anyhow::ensure!(Instant::now() < deadline, "the pipelines did not catch up");
    }
    Ok(())
}

/// The projections' progress from one scrape of their `/metrics`: cart events into the
/// read models, documents out of them, and documents indexed (the search-index sink
/// observes one age per document it has written).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Progress {
    events: f64,
    documents: f64,
    indexed: f64,
}

impl Progress {
    async fn read(projections: &str) -> Option<Self> {
        let scrape = latency::scrape(projections).await?;
        let mut out = Self::default();
        for sample in &scrape.samples {
            let component = sample.labels.get("component");
            match (sample.metric.as_str(), component, &sample.value) {
                ("salesflow_events_in_total", Some("read-models"), _) => {
                    out.events += latency::number(sample)?;
                }
                ("salesflow_events_out_total", Some("read-models"), _) => {
                    out.documents += latency::number(sample)?;
                }
                (
                    "salesflow_sink_event_age_seconds",
                    Some("search-index"),
                    prometheus_parse::Value::Histogram(buckets),
                ) => out.indexed += buckets.last().map_or(0.0, |b| b.count),
                _ => {}
            }
        }
        Some(out)
    }

    /// Since `before`: every one of `orders` cart events went into the read models, and
    /// every document they made is indexed, so readable by id (a GET by id is real time).
    fn done(&self, before: &Self, orders: f64) -> bool {
        self.events - before.events >= orders
            && self.indexed - before.indexed >= self.documents - before.documents
    }
}

/// When the projections had made every one of `orders` queryable by id: the first of two
/// readings 100 ms apart that both say so and are equal (no document made or indexed
/// between them, so none was half way). `None` if that is not seen within 300 s.
///
/// This is the end of a POST-to-queryable run. Consumer lag reaches 0 later: offsets are
/// committed every `commit_interval` (1 s) and librdkafka reports them every
/// `statistics_interval_ms` (1 s), a delay of the metric, not work the machine does.
async fn all_indexed(projections: &str, before: &Progress, orders: f64) -> Option<Instant> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last: Option<(Instant, Progress)> = None;
    while Instant::now() < deadline {
        let at = Instant::now();
        let now = Progress::read(projections).await;
        match (now, last) {
            (Some(now), Some((first, seen))) if now == seen && now.done(before, orders) => {
                return Some(first);
            }
            (Some(now), Some((_, seen))) if now == seen => {}
            (Some(now), _) => last = Some((at, now)),
            (None, _) => last = None,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What a rate's figure adds when the run's end was the lag's, not the moment every order
/// was seen indexed.
fn lag_end(indexed: Option<Instant>) -> &'static str {
    if indexed.is_none() {
        " (all queryable not seen: the lag's end)"
    } else {
        ""
    }
}

async fn lag(address: &str) -> Option<f64> {
    let scrape = latency::scrape(address).await?;
    let lags: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "salesflow_kafka_consumer_lag")
        .filter_map(latency::number)
        .collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

/// The sustained phase's name in the row (batches of 20 orders per request).
pub const SUSTAINED_PHASE: &str = "end to end: batches of 20";
/// The single-order phase's name in the row (one order per request).
pub const SINGLE_PHASE: &str = "end to end: single orders";
/// The longest the end to end waits for quiet servers between its phases: warm, the
/// single-node stack's servers took 2-27 s there.
const PHASE_SETTLE: Duration = Duration::from_secs(30);
/// How the half-rate latency phase's name starts (the rate follows).
pub const HALF_RATE_PHASE: &str = "latency: single orders at ";

/// The environment of `pipeline`'s process. The domain and the projections mostly wait on
/// the servers: on one worker thread they cost 0.83x and 0.90x the CPU per order of one
/// worker per core, at 1.02x the orders/s (A/B; README, "The host and pipeline.toml").
/// Set through tokio's own variable rather than `runtime.worker_threads`, which builds
/// before it would refuse: an A/B runs older builds the same way.
pub fn runtime_env(pipeline: &str) -> &'static [(&'static str, &'static str)] {
    match pipeline {
        "domain" | "projections" => &[("TOKIO_WORKER_THREADS", "1")],
        _ => &[],
    }
}

/// What a run of the end to end is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// Measured: each later phase starts on quiet servers, and Kafka's floor on the quiet
    /// machine is measured before the half-rate run.
    Measured,
    /// Load to warm the servers' JIT compilers up, its figures unused: the phases follow
    /// each other without waiting for quiet servers (up to a minute a round) and without
    /// the 10 s floor probe.
    WarmUp,
}

/// `build` is the salesflow run, `extra` are `--set` overrides for every salesflow process
/// (the cluster profile's addresses), `replication` that of the run's topics.
#[allow(clippy::too_many_arguments)] // each is a different axis of the run, set by its callers
pub async fn run(
    build: &Build,
    clients: usize,
    duration: Duration,
    costs: &[ServerCost],
    extra: &[String],
    replication: Replication,
    models: ReadModels,
    round: Round,
) -> Result<(Row, Vec<(String, String)>)> {
    let t = models.tag.clone();
    isolated_topics_with(&t, replication).await?;
    let mut sets = isolated(&t);
    sets.extend(extra.iter().cloned());
    for source in [
        "pipelines.domain.sources.orders",
        "pipelines.projections.sources.cart-events",
    ] {
        sets.push(format!("{source}.statistics_interval_ms=1000"));
    }
    for sink in [
        "pipelines.command-api.sinks.orders-topic",
        "pipelines.domain.sinks.cart-events",
    ] {
        sets.push(format!("{sink}.statistics_interval_ms=1000"));
    }
    // As in production: one process per pipeline, deployed as the README says for a
    // machine shared with the servers.
    let mut processes = Vec::new();
    for pipeline in ["command-api", "domain", "projections", "query-api"] {
        processes.push((
            pipeline,
            Salesflow::launch(
                build,
                &free_address()?,
                &[pipeline],
                &sets,
                runtime_env(pipeline),
            )
            .await?,
        ));
    }
    let address = processes[0].1.address.clone();
    let query = processes[3].1.address.clone();
    let consumers = [
        processes[1].1.address.clone(),
        processes[2].1.address.clone(),
    ];
    let pids: Vec<(&str, u32)> = processes.iter().map(|(p, s)| (*p, s.pid())).collect();
    let ours: Vec<Tracked> = pids
        .iter()
        .map(|(p, pid)| Tracked::new(format!("{} {p}", cpu::SALESFLOW), *pid))
        .collect();
    let everything = move || {
        let mut all = cpu::servers();
        all.extend(ours.iter().cloned());
        all
    };
    let mut figures = Vec::new();

    // Sustained: batches of 20 orders over 5000 carts, back to back, then drain.
    let carts: Vec<Uuid> = (0..5000).map(|_| Uuid::new_v4()).collect();
    let batch = move |n: u64| -> Value {
        let orders: Vec<Value> = (0..20)
            .map(|k| {
                let i = usize::try_from((n * 20 + k) % 5000).unwrap_or(0);
                order(carts[i], &format!("user-{i}"), n * 20 + k)
            })
            .collect();
        Value::Array(orders)
    };
    let sampler = tokio::spawn(async move {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); pids.len()];
        loop {
            let now: Vec<f64> = pids.iter().map(|(_, pid)| rss_mib(*pid)).collect();
            if now.iter().all(|m| *m == 0.0) {
                return (pids, samples);
            }
            for (s, m) in samples.iter_mut().zip(now) {
                if m > 0.0 {
                    s.push(m);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let models_age = models.idle().await;
    let before = busy_all(&[&address, &consumers[0], &consumers[1]]).await;
    let [kafka_before, reads_before] =
        kafka_and_store(&[&address, &consumers[0], &consumers[1]]).await;
    let writes_before = opensearch_writes().await;
    let progress = Progress::read(&consumers[1]).await.unwrap_or_default();
    let meter = Meter::start(everything());
    let started = Instant::now();
    // A capacity too, so the offered load must exceed it, as for single orders below:
    // `batch_clients` closed-loop clients offer at most 20 * batch_clients / latency
    // orders/s. A quarter of `clients` (9) offered 2900-3700/s against the 60-180 ms a
    // saturated machine answers a batch in, barely above what the pipelines drain: the
    // lag stayed shallow, and the figure followed how far ahead the Command API got (a
    // deeper lag fills the domain's batches, which append a cart's orders together).
    let batch_clients = clients;
    let posted = drive(
        &format!("http://{address}/orders/batch"),
        batch_clients,
        duration,
        batch,
    )
    .await?;
    let orders = (posted.requests - posted.errors) * 20;
    let post_seconds = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let indexed = all_indexed(&consumers[1], &progress, orders as f64).await;
    // The CPU up to the end of the work (read 100 ms after it: the second reading).
    let sustained_cpu = meter.stop();
    drained(&consumers).await?;
    // Until the lag metric read 0 twice, 0.5 s apart: the end as the lag sees it.
    let drained_seconds = started.elapsed().as_secs_f64() - 0.5;
    let total_seconds = indexed.map_or(drained_seconds, |at| (at - started).as_secs_f64());
    // Where the time went: each component's busy time per second of the run (over all
    // its lanes), and how long its upstream waited for room in its channels.
    let after = busy_all(&[&address, &consumers[0], &consumers[1]]).await;
    let [kafka_sustained, reads_sustained] =
        kafka_and_store(&[&address, &consumers[0], &consumers[1]]).await;
    let writes_sustained = opensearch_writes().await;
    let limits = latency::sink_limits(&[&address, &consumers[0], &consumers[1]]).await;
    println!("  sink concurrency limits per lane: {}", limits.join("; "));
    let mut shares: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(k, (p, w))| {
            let (p0, w0) = before.get(k).copied().unwrap_or((0.0, 0.0));
            (
                k.clone(),
                (p - p0) / total_seconds,
                (w - w0) / total_seconds,
            )
        })
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    let bottleneck: Vec<String> = shares
        .iter()
        .take(4)
        .map(|(k, p, w)| format!("{k} busy {p:.2} s/s, upstream waited {w:.2} s/s"))
        .collect();
    println!("  busiest: {}", bottleneck.join("; "));
    #[allow(clippy::cast_precision_loss)]
    let sustained = orders as f64 / total_seconds;
    #[allow(clippy::cast_precision_loss)]
    let sustained_drained = orders as f64 / drained_seconds;
    #[allow(clippy::cast_precision_loss)]
    let offered = orders as f64 / post_seconds;
    println!(
        "  {orders} orders posted in {post_seconds:.1} s, all queryable after {total_seconds:.1} s{}: {sustained:.0} orders/s end to end (lag 0 after {drained_seconds:.1} s: {sustained_drained:.0}/s)",
        lag_end(indexed)
    );

    // Single orders back to back, then drained: what the whole system sustains with
    // single orders (the Command API alone takes them faster than the rest keeps up).
    // A capacity, so the offered load must exceed it: each closed-loop client waits for
    // its 202, so `clients` of them offer at most clients / latency orders/s — with 32
    // and the 20-40 ms a saturated machine answers in, less than the system sustains.
    let single_clients = clients * 4;
    // Each phase starts on quiet servers, as each part of the bench does: a phase started
    // while Cassandra compacts and OpenSearch merges what the last one wrote is charged for
    // that work, and at half the rate it fills the CPU the latency figures need.
    let settle = || async {
        match round {
            Round::Measured => Some(crate::settle_within(PHASE_SETTLE).await),
            Round::WarmUp => None,
        }
    };
    let settled_single = settle().await;
    let single_carts: Vec<Uuid> = (0..5000).map(|_| Uuid::new_v4()).collect();
    let progress = Progress::read(&consumers[1]).await.unwrap_or_default();
    let meter = Meter::start(everything());
    let started = Instant::now();
    let single = drive(
        &format!("http://{address}/orders"),
        single_clients,
        Duration::from_secs(10),
        move |n| {
            let i = usize::try_from(n % 5000).unwrap_or(0);
            order(single_carts[i], &format!("single-{i}"), n)
        },
    )
    .await?;
    #[allow(clippy::cast_precision_loss)]
    let accepted = (single.requests - single.errors) as f64;
    let single_indexed = all_indexed(&consumers[1], &progress, accepted).await;
    let single_cpu = meter.stop();
    drained(&consumers).await?;
    let single_drained = accepted / (started.elapsed().as_secs_f64() - 0.5);
    let [kafka_single, reads_single] =
        kafka_and_store(&[&address, &consumers[0], &consumers[1]]).await;
    let writes_single = opensearch_writes().await;
    let single_sustained =
        single_indexed.map_or(single_drained, |at| accepted / (at - started).as_secs_f64());
    let half = (single_sustained / 2.0).max(1.0);
    println!(
        "  single orders ({single_clients} clients): accepted {:.0}/s ({} refused), {single_sustained:.0}/s POST to queryable; latency at half: {half:.0}/s",
        single.rps(),
        single.errors
    );

    // Latency at half the sustainable single-order rate, with the load generator.
    let dir = tempfile::tempdir()?;
    let profile = dir.path().join("half.toml");
    std::fs::write(
        &profile,
        single_orders_profile(
            "half-rate",
            "Single orders at half the sustainable rate.",
            &format!(
                "kind = \"inject\"\nrate = {half:.1}\nduration = \"{}s\"",
                HALF_INJECTION.as_secs()
            ),
            "[reconcile]\nenabled = true\nsettle_timeout = \"60s\"",
        ),
    )?;
    let options = salesflow_load::Options {
        target: Some(format!("http://{address}")),
        query: Some(format!("http://{query}")),
        report_dir: Some(dir.path().to_path_buf()),
        ..salesflow_load::Options::default()
    };
    let settled_half = settle().await;
    // Kafka's own floor on the quiet machine: the same bare producer, 10 s at 200 sends a
    // second, with the servers settled and the pipelines idle. What no Kafka client here
    // gets under, whatever the rest of the system costs.
    let producers = crate::relay::Producers::of(&build.config)?;
    let probe_topic = format!("{t}-bare");
    salesflow_testkit::create_topics(&[&probe_topic], 12).await;
    let quiet_floor = match round {
        Round::Measured => Some(
            latency::bare_produce(
                producers.config(),
                probe_topic.clone(),
                200,
                Duration::from_secs(10),
            )
            .await?
            .context("the bare producer on the quiet machine")?,
        ),
        Round::WarmUp => None,
    };
    // The read models refreshed and OpenSearch's merges ended: the half-rate run measures
    // the system at that rate, not the debt the saturating phases before it left.
    let sales = Sales::named(salesflow_bin(), &t);
    let read_models = [sales.detailed.as_str(), sales.summary.as_str()];
    let caught_half = match round {
        Round::Measured => Some(read_models_caught_up(&read_models, MERGE_WAIT).await?),
        Round::WarmUp => None,
    };
    let inside_before = latency::histograms(&address).await;
    // Every order's age at each hop, from salesflow's own histograms: the followers read
    // a sample of carts back through the Query API, these count every order.
    let hops = [
        (
            address.clone(),
            "orders-topic",
            "POST to the order in Kafka (Command API)",
        ),
        (
            consumers[0].clone(),
            "cart-events",
            "POST to the cart event in Kafka (domain)",
        ),
        (
            consumers[1].clone(),
            "search-index",
            "POST to indexed, so queryable by id (projections)",
        ),
    ];
    let mut ages_before = Vec::new();
    for (at, component, _) in &hops {
        ages_before.push(latency::event_ages(at, component).await);
    }
    // The warm-up and the injection: 22 s of load.
    let windows = latency::sample_kafka(
        address.clone(),
        Duration::from_secs(1),
        Duration::from_secs(22),
    );
    // Kafka's own floor under the same load: 20 bare sends a second to a topic of their
    // own (0.1 of the orders' rate: it adds little), during the whole run.
    let bare = latency::bare_produce(
        producers.config(),
        probe_topic.clone(),
        20,
        Duration::from_secs(22),
    );
    // The half-rate run's CPU too: whether the machine has room at that rate is what the
    // latency figures depend on. Measured inside the injection (from 3 s to 21 s of the
    // 2 s warm-up and 20 s of load), not over the reconciliation that follows it.
    // Over the same window, what the pipelines asked of Kafka and OpenSearch: at half
    // the rate requests carry fewer orders, and the followers' reads are real-time GETs.
    let tracked = everything();
    let scraped = [address.clone(), consumers[0].clone(), consumers[1].clone()];
    let half_meter = tokio::spawn(async move {
        let scraped = scraped.each_ref().map(String::as_str);
        tokio::time::sleep(HALF_WINDOW.0).await;
        let (counters, writes) = (kafka_and_store(&scraped).await, opensearch_writes().await);
        let meter = Meter::start(tracked);
        tokio::time::sleep(HALF_WINDOW.1).await;
        let usage = meter.stop();
        let after = (kafka_and_store(&scraped).await, opensearch_writes().await);
        (usage, (counters, writes), after)
    });
    // The servers' pauses over the CPU meter's window: inside the injection, where POSTs
    // wait on them, not over the warm-up or the reconciliation's reads.
    let half_from = std::time::SystemTime::now() + HALF_WINDOW.0;
    let half_to = half_from + HALF_WINDOW.1;
    let outcome = salesflow_load::run(&profile, &options)
        .await
        .context("the half-rate load run")?;
    let half_pauses = crate::pauses::during(half_from, half_to);
    let (half_cpu, (kafka_half_before, writes_half_before), (kafka_half, writes_half)) =
        half_meter.await?;
    let bare = bare
        .await?
        .context("the bare producer beside the half-rate run");
    salesflow_testkit::delete_topics(&[&probe_topic]).await;
    let (bare_p50, bare_p99, bare_sent) = bare?;
    let inside = latency::breakdown(
        &inside_before,
        &latency::histograms(&address).await,
        &windows.await?,
    );
    let report = &outcome.report;
    let mut hop_ages = Vec::new();
    for ((at, component, what), before) in hops.iter().zip(&ages_before) {
        let after = latency::event_ages(at, component).await;
        hop_ages.push((*what, latency::ages(before, &after)));
    }
    // One point at half the rate says whether the 202 target holds there; a ramp says up
    // to where it does. Skipped on the cluster profile, whose figures the report keeps
    // only for its capacities.
    let held = match (round, replication) {
        (Round::Measured, Replication::Single) => {
            let settled = crate::settle_within(PHASE_SETTLE).await;
            let caught = read_models_caught_up(&read_models, MERGE_WAIT).await?;
            Some((settled, caught, held_to(dir.path(), &options, half).await?))
        }
        _ => None,
    };
    // The same half-rate profile again, through the bare relay into the same pipelines,
    // and through the Command API beside it: what any HTTP front that waits for Kafka's
    // acknowledgement, with the Command API's producers, pays for a 202 on this machine
    // at this load. Six turns ([`TURNS`]), each on settled servers and caught-up read
    // models. Skipped where the ramp is.
    let fronts = match (round, replication) {
        (Round::Measured, Replication::Single) => {
            let mut turns = Vec::new();
            for front in TURNS {
                let settled = crate::settle_within(PHASE_SETTLE).await;
                let caught = read_models_caught_up(&read_models, MERGE_WAIT).await?;
                let opensearch = opensearch_writes().await;
                let report = match front {
                    Front::Relay => through_relay(&producers, &sales.orders, &profile, &options)
                        .await
                        .context("the half-rate run through the bare relay")?,
                    Front::CommandApi => {
                        salesflow_load::run(&profile, &options)
                            .await
                            .context("a half-rate run beside the relay's")?
                            .report
                    }
                };
                turns.push(Turn {
                    front,
                    settled,
                    caught,
                    opensearch: opensearch_writes().await - opensearch,
                    report,
                });
            }
            Some(turns)
        }
        _ => None,
    };
    let ratios = fronts.as_deref().map(|turns| {
        let p99: Vec<(Front, f64)> = turns
            .iter()
            .map(|t| (t.front, t.report.scenarios[0].p99_ms))
            .collect();
        front_ratios(&p99)
    });
    let (memory_pids, rss_samples) = {
        for (_, process) in processes {
            process.stop().await;
        }
        sampler.await?
    };
    drop_isolated(&t).await;

    #[allow(clippy::cast_precision_loss)]
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let composite = cpu::composite_ceiling(cores, costs).unwrap_or(0.0);
    figures.push((
        "the run's read models when its sustained phase began".into(),
        models_age.map_or_else(
            || "made by the projections at launch: younger than the search-idle time, refreshed every second".into(),
            |age| {
                format!(
                    "made {:.0} s before: search-idle (no search for {} s), their scheduled refreshes skipped, as a long-lived index nobody searches",
                    age.as_secs_f64(),
                    SEARCH_IDLE_AFTER.as_secs()
                )
            },
        ),
    ));
    figures.push((
        "sustained orders/s, POST to queryable (batches of 20)".into(),
        format!(
            "{sustained:.0}{} (posted at {offered:.0}/s by {batch_clients} closed-loop clients for {post_seconds:.1} s; all queryable by id after {total_seconds:.1} s; {sustained_drained:.0} to the consumer lag's 0, after {drained_seconds:.1} s)",
            lag_end(indexed)
        ),
    ));
    figures.push((
        format!("single orders/s, POST to queryable ({single_clients} closed-loop clients)"),
        format!(
            "{single_sustained:.0}{} (accepted at {:.0}/s, {} refused; {single_drained:.0} to the consumer lag's 0)",
            lag_end(single_indexed),
            single.rps(),
            single.errors
        ),
    ));
    if let (Some(single), Some(half)) = (settled_single, settled_half) {
        figures.push((
            "servers quiet before the single orders / the half-rate run, after".into(),
            format!("{single} / {half}"),
        ));
    }
    if let Some(caught) = caught_half {
        figures.push((
            "what OpenSearch owed the read models just before the half-rate run".into(),
            caught.to_string(),
        ));
    }
    let p99_202 = report.scenarios[0].p99_ms;
    figures.push((
        format!("p99 POST to 202 at {half:.0} orders/s (target < {P99_TO_202_MS:.0} ms)"),
        format!(
            "{p99_202:.1} ms{}",
            whose_202_miss(
                p99_202,
                quiet_floor.map(|(_, p99, _)| p99),
                bare_p99,
                &cpu::niceness()
            )
        ),
    ));
    if let Some((settled, caught, (from, knee))) = held {
        figures.push((
            format!(
                "highest rate with p99 POST to 202 < {P99_TO_202_MS:.0} ms (a ramp from {from:.0} to {half:.0} orders/s over {} s, its best 5 s window; servers quiet before it: {settled}; {caught})",
                HELD_RAMP.as_secs()
            ),
            knee.map_or_else(
                || format!("none: p99 at or above {P99_TO_202_MS:.0} ms in every 5 s window"),
                |rate| format!("{rate:.0} orders/s ({:.2} of the half rate)", rate / half),
            ),
        ));
    }
    if let Some(turns) = &fronts {
        for (k, turn) in turns.iter().enumerate() {
            let r = &turn.report;
            figures.push((
                format!(
                    "  beside the bare relay (Kafka's own client behind the thinnest HTTP front, the Command API's producers), turn {} of {}, {} (servers quiet before it: {}; {}): p50 / p99 POST to 202; p99 to queryable; OpenSearch merging / refreshing during the turn",
                    k + 1,
                    turns.len(),
                    turn.front.name(),
                    turn.settled,
                    turn.caught
                ),
                format!(
                    "{:.1} ms / {:.1} ms; {:.0} ms; {:.1} s / {:.1} s; {}",
                    r.scenarios[0].p50_ms,
                    r.scenarios[0].p99_ms,
                    r.freshness.p99_ms,
                    turn.opensearch.merge_seconds,
                    turn.opensearch.refresh_seconds,
                    reconciled(r)
                ),
            ));
        }
    }
    if let Some(ratios) = &ratios {
        figures.push((
            "  the Command API's p99 POST to 202 over the bare relay's, pair by pair (turns 1-2, 3-4, ...); their median".into(),
            format!(
                "{}; {}",
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}x"))
                    .collect::<Vec<_>>()
                    .join(", "),
                median(ratios).map_or_else(|| "none".into(), |m| format!("{m:.2}x"))
            ),
        ));
    }
    figures.push((
        format!("p50 POST to 202 at {half:.0} orders/s"),
        format!("{:.1} ms", report.scenarios[0].p50_ms),
    ));
    figures.extend(inside);
    figures.push((
        "  Kafka's own floor in the same run: a bare librdkafka producer (the Command API's settings, 20 records/s, one at a time), p50 / p99 send to acknowledged".into(),
        format!("{bare_p50:.1} ms / {bare_p99:.1} ms ({bare_sent} sends)"),
    ));
    if let Some((quiet_p50, quiet_p99, quiet_sent)) = quiet_floor {
        figures.push((
            "  Kafka's own floor on the quiet machine just before: the same producer, 200 records/s for 10 s, servers settled and pipelines idle, p50 / p99".into(),
            format!("{quiet_p50:.1} ms / {quiet_p99:.1} ms ({quiet_sent} sends)"),
        ));
    }
    if let Some(pauses) = crate::pauses::describe(&half_pauses, HALF_WINDOW.1.as_secs_f64()) {
        figures.push((
            format!(
                "  the servers stopped the world (their JVMs' safepoints: collections and the like; a request to a stopped server waits), from {} s to {} s of the load run: pauses, their total and share, longest, how many of 10 ms or more",
                HALF_WINDOW.0.as_secs(),
                (HALF_WINDOW.0 + HALF_WINDOW.1).as_secs()
            ),
            pauses,
        ));
    }
    figures.push((
        format!(
            "p99 POST to queryable at {half:.0} orders/s (target < {:.0} s)",
            P99_TO_QUERYABLE_MS / 1000.0
        ),
        format!("{:.0} ms", report.freshness.p99_ms),
    ));
    figures.push((
        "p50 POST to queryable".into(),
        format!("{:.0} ms", report.freshness.p50_ms),
    ));
    for (what, ages) in hop_ages {
        figures.push((
            format!("  every order, p50 / p99 {what} (salesflow_sink_event_age_seconds)"),
            ages.map_or_else(
                || "not measured".into(),
                |(n, p50, p99)| {
                    format!(
                        "<= {:.0} ms / <= {:.0} ms ({n:.0} events)",
                        p50 * 1e3,
                        p99 * 1e3
                    )
                },
            ),
        ));
    }
    // The orders accepted inside the meter's window, at the injection's mean rate.
    #[allow(clippy::cast_precision_loss)]
    let half_accepted =
        report.scenarios[0].ok as f64 * HALF_WINDOW.1.as_secs_f64() / HALF_INJECTION.as_secs_f64();
    figures.push(("half-rate run reconciliation".into(), reconciled(report)));
    let mut peaks = Vec::new();
    for ((pipeline, _), s) in memory_pids.iter().zip(&rss_samples) {
        let peak = s.iter().copied().fold(0.0, f64::max);
        peaks.push((format!("peak resident MiB: {pipeline}"), peak));
        let quarter = s.get(s.len() / 4).copied().unwrap_or_default();
        let last = s.last().copied().unwrap_or_default();
        figures.push((
            format!("resident memory of the {pipeline} process (target < 256 MiB)"),
            format!("peak {peak:.0} MiB; a quarter in {quarter:.0} -> end {last:.0} MiB"),
        ));
    }
    figures.push((
        "composite ceiling (orders/s)".into(),
        if composite > 0.0 {
            format!(
                "{composite:.0}: {cores} cores / ({}) ms per order",
                costs
                    .iter()
                    .map(|c| format!("{} {:.3} x {}", c.server, c.ceiling_ms, c.per_order))
                    .collect::<Vec<_>>()
                    .join(" + ")
            )
        } else {
            "none measured (run the kafka, cassandra and elasticsearch parts too)".into()
        },
    ));
    if composite > 0.0 {
        figures.push((
            "single orders / composite ceiling (target >= 0.5)".into(),
            format!("{:.2}", single_sustained / composite),
        ));
    }
    // What the pipelines asked of Kafka per order, by client and API, and what Kafka
    // spent per request: with small batches Kafka's cost goes by requests, not records.
    // And the carts read back from the event store per order: Cassandra work beyond the
    // one append an order costs at the ceiling.
    #[allow(clippy::cast_precision_loss)]
    let phases = [
        (
            "sustained",
            [&kafka_before, &reads_before],
            [&kafka_sustained, &reads_sustained],
            (writes_before, writes_sustained),
            orders as f64,
            &sustained_cpu,
        ),
        (
            "single orders",
            [&kafka_sustained, &reads_sustained],
            [&kafka_single, &reads_single],
            (writes_sustained, writes_single),
            single.ok(),
            &single_cpu,
        ),
        (
            "half rate",
            [&kafka_half_before[0], &kafka_half_before[1]],
            [&kafka_half[0], &kafka_half[1]],
            (writes_half_before, writes_half),
            half_accepted,
            &half_cpu,
        ),
    ];
    let listed = |per: &[(String, f64)]| {
        per.iter()
            .take(8)
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, before, after, writes, orders, usage) in phases {
        let (per, total) = requests_per_order(before[0], after[0], orders);
        if total > 0.0 {
            let kafka_ms = usage.work("kafka") * 1000.0 / orders.max(1.0);
            figures.push((
                format!("Kafka requests per order, {name} (salesflow's clients, by API)"),
                format!(
                    "{total:.3} in all, {:.4} Kafka CPU ms per request: {}",
                    kafka_ms / total,
                    listed(&per)
                ),
            ));
        }
        let (per, total) = requests_per_order(before[1], after[1], orders);
        figures.push((
            format!("carts read from the event store per order, {name}"),
            format!("{total:.3}: {}", listed(&per)),
        ));
        let w = writes.1 - writes.0;
        if w.tasks > 0.0 {
            figures.push((
                format!("OpenSearch documents per write-pool task, {name}"),
                format!(
                    "{:.1} ({:.0} documents in {:.0} tasks; the raw loop's, same measure: the Elasticsearch bulk note); {:.0} shard refreshes taking {:.1} s, {:.0} searches, {:.0} reads by id; {:.1} s merging",
                    w.docs / w.tasks,
                    w.docs,
                    w.tasks,
                    w.refreshes,
                    w.refresh_seconds,
                    w.searches,
                    w.gets,
                    w.merge_seconds
                ),
            ));
        }
    }
    figures.push((
        "sink concurrency limits per lane after the sustained run".into(),
        limits.join("; "),
    ));
    figures.push((
        "busiest components in the sustained run (salesflow's metrics)".into(),
        bottleneck.join("; "),
    ));
    let mut row = Row::new(
        "End to end",
        "orders/s",
        sustained,
        composite,
        Some(0.8),
        "POST /orders/batch to queryable, lag drained",
        "composite ceiling: every server at its raw ceiling's CPU per unit",
    );
    row.measures = vec![
        ("sustained orders/s".into(), sustained),
        ("single orders/s".into(), single_sustained),
        (
            "p99 POST to 202, ms (half rate)".into(),
            report.scenarios[0].p99_ms,
        ),
        (
            "p99 POST to queryable, ms (half rate)".into(),
            report.freshness.p99_ms,
        ),
    ];
    if let Some(ratio) = ratios.as_deref().and_then(median) {
        row.measures.push((
            format!(
                "p99 POST to 202, Command API / bare relay (half rate, median of {} pairs)",
                TURNS.len() / 2
            ),
            ratio,
        ));
    }
    if let Some((_, _, (_, knee))) = held {
        // 0 when no window held the target.
        row.measures.push((
            format!("highest orders/s with p99 POST to 202 < {P99_TO_202_MS:.0} ms"),
            knee.unwrap_or(0.0),
        ));
    }
    row.measures.extend(peaks);
    row.note = "an order costs Kafka two records, Cassandra one event and OpenSearch two documents; the composite ceiling is the cores divided by those costs at each server's raw-ceiling efficiency; one process per pipeline, the domain's and the projections' on one async worker thread (TOKIO_WORKER_THREADS=1), the others on one per core".into();
    #[allow(clippy::cast_precision_loss)]
    let orders = orders as f64;
    row.phases = vec![
        Phase::new(SUSTAINED_PHASE, "order", orders, sustained_cpu),
        Phase::new(SINGLE_PHASE, "order", single.ok(), single_cpu),
        Phase::new(
            format!(
                "{HALF_RATE_PHASE}{half:.0}/s (load generator, 1 in 50 followed, bare producer)"
            ),
            "order",
            half_accepted,
            half_cpu,
        ),
    ];
    Ok((row, figures))
}

#[cfg(test)]
mod tests {
    use super::{
        Front, HELD_RAMP, P99_TO_202_MS, Progress, TURNS, front_ratios, held_profile, median,
        whose_202_miss,
    };
    use salesflow_load::profile::{Metric, Profile, Step};

    #[test]
    fn the_ramp_to_the_202_target_is_a_profile_the_load_generator_takes() {
        let (from, text) = held_profile(1218.0);
        assert!((from - 121.8).abs() < 1e-9, "{from}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.toml");
        std::fs::write(&path, text).unwrap();
        let profile = Profile::load(&path).unwrap();
        let [Step::RampInject { from, to, duration }] = profile.steps[..] else {
            panic!("one ramp: {:?}", profile.steps);
        };
        assert_eq!((from, to, duration), (121.8, 1218.0, HELD_RAMP));
        // The knee reads the first p99 threshold over all scenarios.
        let knee = &profile.thresholds[0];
        assert!(knee.scenario.is_none() && knee.metric == Metric::P99);
        assert_eq!(
            knee.below.as_deref(),
            Some(format!("{P99_TO_202_MS}ms").as_str())
        );
        assert!(!profile.reconcile.enabled);
        // A system whose sustainable rate rounds to nothing still ramps up from 1/s.
        assert!((held_profile(4.0).0 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_fronts_are_compared_within_pairs_in_either_order() {
        // Turns 1-2 relay first, 3-4 Command API first, 5-6 relay first.
        let p99: Vec<(Front, f64)> = TURNS
            .iter()
            .zip([20.0, 30.0, 45.0, 30.0, 10.0, 40.0])
            .map(|(f, p)| (*f, p))
            .collect();
        assert_eq!(front_ratios(&p99), vec![1.5, 1.5, 4.0]);
        assert_eq!(median(&front_ratios(&p99)), Some(1.5));
        // A pair through one front only says nothing; a lone last turn neither.
        let one_front = [
            (Front::Relay, 10.0),
            (Front::Relay, 20.0),
            (Front::CommandApi, 5.0),
        ];
        assert!(front_ratios(&one_front).is_empty());
    }

    #[test]
    fn all_indexed_needs_every_event_in_and_every_document_written() {
        let before = Progress {
            events: 100.0,
            documents: 180.0,
            indexed: 180.0,
        };
        let at = |events, documents, indexed| Progress {
            events,
            documents,
            indexed,
        };
        // 40 orders: their events are in and the 60 documents they made are written.
        assert!(at(140.0, 240.0, 240.0).done(&before, 40.0));
        // One event still to come.
        assert!(!at(139.0, 240.0, 240.0).done(&before, 40.0));
        // Every event in, two documents still on their way to the index.
        assert!(!at(140.0, 240.0, 238.0).done(&before, 40.0));
    }

    #[test]
    fn a_missed_202_target_names_the_floor_that_misses_it_first() {
        let nice = "kafka 0, cassandra 0";
        // Met: nothing to explain.
        assert_eq!(whose_202_miss(9.9, Some(30.0), 40.0, nice), "");
        // Kafka misses it on the quiet machine: no client gets under it.
        let quiet = whose_202_miss(72.0, Some(14.2), 24.0, nice);
        assert!(
            quiet.contains("quiet machine, 14.2 ms") && quiet.contains(nice),
            "{quiet}"
        );
        // Quiet Kafka meets it, loaded Kafka does not: the load's, then 3.0x ours.
        let beside = whose_202_miss(72.0, Some(2.6), 24.0, nice);
        assert!(
            beside.contains("beside the run") && beside.contains("was 24.0 ms"),
            "{beside}"
        );
        assert!(
            beside.contains("alone misses") && beside.contains("3.0x"),
            "{beside}"
        );
        // No quiet floor measured (a warm-up round) reads the loaded one.
        assert_eq!(whose_202_miss(72.0, None, 24.0, nice), beside);
        // Both floors under the target: the rest is the Command API's.
        let ours = whose_202_miss(30.0, Some(2.6), 6.0, nice);
        assert!(
            ours.contains("under the target") && ours.contains("Command API's"),
            "{ours}"
        );
    }
}
