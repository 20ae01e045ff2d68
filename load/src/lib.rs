//! The salesflow load generator: runs a load profile (`load/profiles/*.toml`) against the
//! Command and Query APIs (or straight into Kafka), measures latency from each request's
//! scheduled start in HDR histograms, follows a sample of orders until they are
//! queryable, reconciles every accepted order against the read models and the event
//! store, and writes reports (terminal, JSON, Markdown, HTML).

pub mod cli;
pub mod data;
pub mod engine;
pub mod profile;
pub mod reconcile;
pub mod report;
pub mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::engine::Engine;
use crate::profile::{Metric, Profile, Threshold};
use crate::report::{FreshnessReport, RunReport, ThresholdResult};
use crate::stats::Stats;

/// Options given on the command line.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Reproduce a run: with the profile's seed, the same carts and orders.
    pub run_id: Option<u64>,
    /// Compare with this JSON report (overrides the profile's).
    pub compare: Option<PathBuf>,
    /// Where reports go (overrides the profile's).
    pub report_dir: Option<PathBuf>,
    /// The Command and Query API base URL (overrides the profile's); several Command API
    /// processes' separated by commas, orders going round-robin over them and queries to
    /// the first.
    pub target: Option<String>,
    /// The Query API base URL, when it is served elsewhere than `target`.
    pub query: Option<String>,
    /// A salesflow `/metrics` URL whose resident memory is sampled during the run.
    pub monitor: Option<String>,
    /// A PEM certificate to trust for `https://` targets (overrides the profile's).
    pub ca_certificate: Option<PathBuf>,
    /// The environment variables holding the APIs' keys (override the profile's).
    pub ingest_key_env: Option<String>,
    pub query_key_env: Option<String>,
}

/// How a run ended.
pub struct Outcome {
    pub report: RunReport,
    pub files: Vec<PathBuf>,
    /// Thresholds held, nothing lost or duplicated, no invalid order accepted.
    pub passed: bool,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The value a threshold looks at, in its unit.
fn measure(t: &Threshold, profile: &Profile, stats: &Stats, seconds: f64) -> f64 {
    let s = match &t.scenario {
        Some(name) => profile
            .scenarios
            .iter()
            .position(|x| &x.name == name)
            .map_or(&stats.total, |i| &stats.scenarios[i]),
        None => &stats.total,
    };
    #[allow(clippy::cast_precision_loss)]
    match t.metric {
        Metric::P50 => s.quantile_ms(0.5),
        Metric::P90 => s.quantile_ms(0.9),
        Metric::P99 => s.quantile_ms(0.99),
        Metric::Max => s.quantile_ms(1.0),
        Metric::ErrorRate => s.error_rate(),
        Metric::Rps => {
            if seconds > 0.0 {
                s.ok() as f64 / seconds
            } else {
                0.0
            }
        }
        Metric::FreshnessP99 => stats.freshness.quantile_ms(0.99),
    }
}

fn judge(t: &Threshold, value: f64) -> bool {
    let below = t.below.as_deref().and_then(|b| Threshold::bound(b).ok());
    let above = t.above.as_deref().and_then(|a| Threshold::bound(a).ok());
    below.is_none_or(|b| value < b) && above.is_none_or(|a| value > a)
}

/// Memory of the monitored process, in MiB: resident, and of it what its stages' bounded
/// caches hold and may hold (every `salesflow_cache_bytes` / `_limit_bytes` summed).
struct MemorySample {
    resident: f64,
    caches: f64,
    cache_limit: f64,
}

async fn memory_sample(client: &reqwest::Client, url: &str) -> Option<MemorySample> {
    let text = client.get(url).send().await.ok()?.text().await.ok()?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()?;
    let values = |name: &str| {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect::<Vec<f64>>()
    };
    let mib = |bytes: f64| bytes / 1024.0 / 1024.0;
    let resident = values("salesflow_process_resident_memory_bytes")
        .first()
        .copied()?;
    Some(MemorySample {
        resident: mib(resident),
        caches: mib(values("salesflow_cache_bytes").iter().sum()),
        cache_limit: mib(values("salesflow_cache_limit_bytes").iter().sum()),
    })
}

/// The memory samples of a run: (seconds into it, MiB).
#[derive(Default)]
struct Memory {
    resident: Vec<(f64, f64)>,
    caches: Vec<(f64, f64)>,
    cache_limit: f64,
}

/// The live progress of a run, once a second: a line redrawn in place on a terminal
/// (indicatif), a line each second otherwise (logs, CI).
#[derive(Clone)]
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Self {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() {
            return Self(None);
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stdout());
        bar.set_style(
            indicatif::ProgressStyle::with_template("  {spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        Self(Some(bar))
    }

    fn show(&self, line: String, elapsed: f64) {
        match &self.0 {
            Some(bar) => {
                bar.set_message(line);
                bar.tick();
            }
            None => println!("  {elapsed:>5.0}s  {line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}

/// Runs a profile.
pub async fn run(path: &Path, options: &Options) -> Result<Outcome> {
    let mut profile = Profile::load(path)?;
    if let Some(target) = &options.target {
        let targets = crate::profile::Urls::parse(target).context("--target")?;
        profile.target.query_api = targets.first().to_owned();
        profile.target.command_api = targets;
    }
    if let Some(query) = &options.query {
        profile.target.query_api.clone_from(query);
    }
    if let Some(path) = &options.ca_certificate {
        profile.target.ca_certificate = Some(path.clone());
    }
    if let Some(name) = &options.ingest_key_env {
        profile.target.ingest_key_env.clone_from(name);
    }
    if let Some(name) = &options.query_key_env {
        profile.target.query_key_env.clone_from(name);
    }
    let run_id = options
        .run_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 >> 16);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = loadavg();
    let spread = if profile.target.command_api.all().len() > 1 {
        " (round-robin)"
    } else {
        ""
    };
    println!(
        "salesflow load: profile {} (seed {}, run {run_id:x}) against {}{spread}",
        profile.name, profile.seed, profile.target.command_api
    );
    let engine = Engine::new(profile.clone(), run_id)?;

    // Live progress, abort on broken thresholds, memory sampling.
    // Built before the run: a certificate that cannot be read stops it here.
    let monitor_client = profile.target.client(Duration::from_secs(5), 1)?;
    let progress = Progress::new();
    // Told to stop once the run is over, the watcher hands back its memory samples.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = {
        let engine = Arc::clone(&engine);
        let monitor = options.monitor.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let client = monitor_client;
            let mut memory = Memory::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return memory,
                }
                let elapsed = engine.elapsed().as_secs_f64();
                let (ok, errors, p99, accepted) = {
                    let stats = engine
                        .stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let accepted = engine
                        .ledger
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .orders
                        .len();
                    (
                        stats.total.ok(),
                        stats.total.requests() - stats.total.ok(),
                        stats.total.quantile_ms(0.99),
                        accepted,
                    )
                };
                progress.show(format!(
                    "{:>6} ok/s  {errors:>6} not ok  p99 {p99:>8.1} ms  in flight {:>4}  orders accepted {accepted}",
                    ok - last,
                    engine.in_flight.load(std::sync::atomic::Ordering::Relaxed)
                ), elapsed);
                last = ok;
                if let Some(url) = &monitor
                    && let Some(sample) = memory_sample(&client, url).await
                {
                    memory.resident.push((elapsed, sample.resident));
                    memory.caches.push((elapsed, sample.caches));
                    memory.cache_limit = sample.cache_limit;
                }
                if engine.recording() {
                    let stats = engine
                        .stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for t in engine
                        .profile
                        .thresholds
                        .iter()
                        .filter(|t| t.abort && t.metric != Metric::Rps)
                    {
                        let value = measure(t, &engine.profile, &stats, elapsed);
                        if !judge(t, value) {
                            *engine
                                .aborted
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(format!("threshold {} broken ({value:.3})", t.describe()));
                        }
                    }
                }
                if engine
                    .aborted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some()
                    && engine.in_flight.load(std::sync::atomic::Ordering::Relaxed) == 0
                {
                    return memory;
                }
                if engine.elapsed() > Duration::from_secs(60 * 60 * 24) {
                    return memory;
                }
            }
        })
    };
    // Ctrl-C (SIGINT) ends the run early, as a broken abort threshold does: the requests in
    // flight finish, and what was accepted is still reconciled and reported. A second one
    // quits at once.
    let interrupt = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                println!(
                    "interrupted: stopping the run, then reconciling what was accepted (Ctrl-C again quits)"
                );
                engine
                    .aborted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_or_insert_with(|| "interrupted (SIGINT)".to_owned());
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        })
    };
    engine.run().await;
    let seconds = engine.elapsed().as_secs_f64() - profile.warmup.as_secs_f64();
    engine.settle_followers().await;
    let _ = stop.send(());
    let memory = watcher.await.unwrap_or_default();
    progress.finish();

    let (accepted, invalid_refused, invalid_accepted, duplicates_posted) = {
        let ledger = engine
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let carts = &engine
            .generator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .carts;
        let accepted: HashMap<uuid::Uuid, uuid::Uuid> = ledger
            .orders
            .iter()
            .map(|(o, c)| (*o, carts[*c].id))
            .collect();
        (
            accepted,
            ledger.invalid_refused,
            ledger.invalid_accepted,
            ledger.duplicates_posted,
        )
    };
    let reconciliation = if profile.reconcile.enabled {
        println!("reconciling {} accepted orders...", accepted.len());
        Some(reconcile::reconcile(&profile, &accepted).await?)
    } else {
        None
    };

    let aborted = engine
        .aborted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let stats = engine
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let thresholds: Vec<ThresholdResult> = profile
        .thresholds
        .iter()
        .map(|t| {
            let value = measure(t, &profile, &stats, seconds);
            ThresholdResult {
                threshold: t.describe(),
                value,
                passed: judge(t, value),
            }
        })
        .collect();
    let knee_latency = profile
        .thresholds
        .iter()
        .find(|t| t.metric == Metric::P99 && t.scenario.is_none())
        .and_then(|t| t.below.as_deref().and_then(|b| Threshold::bound(b).ok()));
    let report = RunReport {
        profile: profile.name.clone(),
        description: profile.description.clone(),
        seed: profile.seed,
        run_id,
        started_at,
        seconds,
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        load_before,
        load_after: loadavg(),
        scenarios: profile
            .scenarios
            .iter()
            .zip(&stats.scenarios)
            .map(|(s, st)| report::scenario_report(&s.name, &format!("{:?}", s.kind), st, seconds))
            .collect(),
        total: report::scenario_report("all", "all", &stats.total, seconds),
        timeline: report::timeline(&stats),
        freshness: FreshnessReport {
            samples: stats.freshness.ok(),
            timeouts: stats.freshness_timeouts,
            p50_ms: stats.freshness.quantile_ms(0.5),
            p99_ms: stats.freshness.quantile_ms(0.99),
            max_ms: stats.freshness.quantile_ms(1.0),
            points: stats.freshness_timeline.clone(),
        },
        thresholds,
        aborted,
        knee_rps: knee_latency.and_then(|ms| report::knee(&stats, ms)),
        memory_mib: memory.resident,
        cache_mib: memory.caches,
        cache_limit_mib: memory.cache_limit,
        reconciliation: reconciliation
            .as_ref()
            .map(|r| serde_json::to_value(r).unwrap_or_default()),
        invalid_refused,
        invalid_accepted,
        duplicates_posted,
    };
    drop(stats);
    let compare = options
        .compare
        .clone()
        .or_else(|| profile.report.compare.clone());
    let previous = match &compare {
        Some(path) if path.exists() => Some(report::load_previous(path)?),
        _ => None,
    };
    print!("{}", report::summary(&report, previous.as_ref()));
    let dir = options
        .report_dir
        .clone()
        .unwrap_or_else(|| profile.report.dir.clone());
    let files = report::write(&dir, &report, previous.as_ref())?;
    for f in &files {
        println!("report: {}", f.display());
    }
    let passed = report.thresholds.iter().all(|t| t.passed)
        && report.aborted.is_none()
        && report.invalid_accepted == 0
        && reconciliation
            .as_ref()
            .is_none_or(reconcile::Reconciliation::clean);
    interrupt.abort();
    Ok(Outcome {
        report,
        files,
        passed,
    })
}
