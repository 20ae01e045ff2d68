//! The running pipelines, each on its own: started, drained and restarted one at a time, so
//! that a reload (`salesflow run --watch`, SIGHUP) restarts only the pipelines whose
//! configuration changed and never touches the others.
//!
//! A reload reads the configuration again (the file, the `SALESFLOW__...` environment and
//! the `--set`s the process was started with) and loads the plugins folder again. An invalid
//! configuration changes nothing: its problems are logged and counted
//! (`salesflow_config_reloads_total{result="invalid"}`,
//! `salesflow_config_last_reload_successful` 0). A valid one is compared pipeline by
//! pipeline — every component's type, inputs, lanes, buffer, concurrency and settings
//! (shared sections included) and the run-time library it comes from: a changed or removed
//! pipeline is drained as at shutdown (sources stop, in-flight batches are acknowledged and
//! committed), then a changed or added one is built and started on the new configuration.
//! If it cannot start, it is started again on the configuration it ran before; if even that
//! fails it stays down, readiness says so, and the next reload tries again.
//!
//! While a pipeline restarts, requests to the HTTP paths it serves are answered 503 with
//! `Retry-After` (load shed, not lost). Server, log and TLS settings take effect at the next
//! start of the process.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use salesflow_plugin_api::{CancellationToken, HealthFn, Healthcheck, Route, Tap};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::metrics::RuntimeMetrics;
use crate::registry::Registry;
use crate::runtime::{self, StartError, Started};
use crate::server::Shared;
use crate::topology::{PipelinePlan, Plan};

/// Where the running configuration came from, so that a reload can read it again.
#[derive(Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// The `--set` overrides the process was started with.
    pub sets: Vec<String>,
    /// The linked-in plugins (the run-time ones are loaded from the folder each time).
    pub registry: Registry,
    /// The pipelines asked for (`run --pipeline`); empty for all.
    pub selected: Vec<String>,
}

impl ConfigSource {
    /// The configuration as it is now: validated, with the selected pipelines.
    pub fn load(&self) -> Result<Plan, String> {
        let (_, mut plan) = crate::load_plan(&self.path, &self.sets, self.registry.clone())?;
        plan.select(&self.selected)?;
        Ok(plan)
    }
}

/// What decides whether a pipeline must restart: every component's type, wiring, lanes,
/// buffer, concurrency and settings, and the library (with its digest) of each run-time
/// plugin it uses.
pub fn fingerprint(pipeline: &PipelinePlan, loaded_plugins: &[String]) -> String {
    let mut out = String::new();
    for node in &pipeline.nodes {
        let _ = writeln!(
            out,
            "{} {} {} {:?} {} {} {:?} {:?} {:?}",
            node.name,
            node.kind,
            node.type_name,
            node.inputs,
            node.lanes,
            node.buffer,
            node.buffer_bytes,
            node.concurrency,
            node.settings
        );
        let prefix = format!("{} {} (", node.kind, node.type_name);
        for library in loaded_plugins.iter().filter(|l| l.starts_with(&prefix)) {
            let _ = writeln!(out, "  from {library}");
        }
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

/// The reloads' and the pipelines' own series.
#[derive(Clone)]
struct ReloadMetrics {
    reloads: Family<ResultLabels, Counter>,
    last_successful: Gauge,
    last_success_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    starts: Family<PipelineLabels, Counter>,
    running: Family<PipelineLabels, Gauge>,
}

impl ReloadMetrics {
    fn register(registry: &mut MetricsRegistry) -> Self {
        let m = Self {
            reloads: Family::default(),
            last_successful: Gauge::default(),
            last_success_time: Gauge::default(),
            starts: Family::default(),
            running: Family::default(),
        };
        registry.register(
            "salesflow_config_reloads",
            "Configuration reloads by result: applied (valid, changed pipelines restarted), \
             invalid (refused, nothing changed) or failed (valid, but a pipeline could not start)",
            m.reloads.clone(),
        );
        registry.register(
            "salesflow_config_last_reload_successful",
            "Whether the last configuration reload was applied (1; also before any) or not (0)",
            m.last_successful.clone(),
        );
        registry.register(
            "salesflow_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time)",
            m.last_success_time.clone(),
        );
        registry.register(
            "salesflow_pipeline_starts",
            "Times each pipeline was started: once at start, again at each reload that changed it",
            m.starts.clone(),
        );
        registry.register(
            "salesflow_pipeline_running",
            "Whether each pipeline is running (1) or down after a failed restart (0)",
            m.running.clone(),
        );
        m.last_successful.set(1);
        m.loaded_now();
        m
    }

    fn loaded_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_success_time.set(now);
    }

    fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        self.last_successful.set(i64::from(result == "applied"));
        if result != "invalid" {
            self.loaded_now();
        }
    }
}

/// A pipeline built but not started.
struct Prepared {
    plan: PipelinePlan,
    fingerprint: String,
    stop: CancellationToken,
    registry: MetricsRegistry,
    started: Started,
}

struct Running {
    plan: PipelinePlan,
    fingerprint: String,
    stop: CancellationToken,
    /// Watches the pipeline's tasks; returns whether it stopped cleanly.
    watcher: JoinHandle<bool>,
    routes: Vec<Route>,
    healthchecks: Vec<Healthcheck>,
    taps: BTreeMap<String, Arc<Tap>>,
}

/// The pipelines of the process, and what each contributes to the HTTP server.
pub struct Supervisor {
    running: BTreeMap<String, Running>,
    /// Pipelines that could not be started again, with why.
    down: BTreeMap<String, String>,
    shared: Shared,
    runtime_metrics: RuntimeMetrics,
    metrics: ReloadMetrics,
    tap_enabled: bool,
    grace: Duration,
    /// The server, log and runtime settings started with (a reload does not apply theirs).
    host_settings: String,
    /// Told the name of a pipeline one of whose tasks ended on its own.
    ended: mpsc::UnboundedSender<String>,
}

impl Supervisor {
    pub fn new(
        registry: &mut MetricsRegistry,
        runtime_metrics: RuntimeMetrics,
        shared: Shared,
        plan: &Plan,
        ended: mpsc::UnboundedSender<String>,
    ) -> Self {
        Self {
            running: BTreeMap::new(),
            down: BTreeMap::new(),
            shared,
            runtime_metrics,
            metrics: ReloadMetrics::register(registry),
            tap_enabled: plan.server.tap.enabled,
            grace: plan.server.shutdown_grace,
            host_settings: host_settings(plan),
            ended,
        }
    }

    /// Starts every pipeline of `plan`: all are built first, so that if one cannot be
    /// (a server unreachable), none has read anything.
    pub async fn start_all(&mut self, plan: &Plan) -> Result<(), StartError> {
        let mut prepared = Vec::new();
        let mut taken = self.taken_paths();
        for pipeline in &plan.pipelines {
            let fingerprint = fingerprint(pipeline, &plan.loaded_plugins);
            let ready = self.prepare(pipeline.clone(), fingerprint, &taken).await?;
            taken.extend(ready.started.routes.iter().map(|r| r.path.clone()));
            prepared.push(ready);
        }
        for ready in prepared {
            self.launch(ready);
        }
        self.publish();
        Ok(())
    }

    /// The HTTP paths taken: the host's and the running pipelines'.
    fn taken_paths(&self) -> HashSet<String> {
        self.running
            .values()
            .flat_map(|r| r.routes.iter().map(|route| route.path.clone()))
            .chain(crate::server::HOST_PATHS.iter().map(|p| (*p).to_owned()))
            .collect()
    }

    /// Builds a pipeline: its stages and sinks wait on their channels, its sources have
    /// not started.
    async fn prepare(
        &self,
        plan: PipelinePlan,
        fingerprint: String,
        taken: &HashSet<String>,
    ) -> Result<Prepared, StartError> {
        let stop = CancellationToken::new();
        let mut registry = MetricsRegistry::default();
        let started = runtime::start_pipelines(
            std::slice::from_ref(&plan),
            self.tap_enabled,
            taken,
            &mut registry,
            &self.runtime_metrics,
            &stop,
        )
        .await?;
        Ok(Prepared {
            plan,
            fingerprint,
            stop,
            registry,
            started,
        })
    }

    /// Starts a prepared pipeline's sources and watches it.
    fn launch(&mut self, prepared: Prepared) {
        let Prepared {
            plan,
            fingerprint,
            stop,
            registry,
            mut started,
        } = prepared;
        started.launch();
        let Started {
            tasks,
            lanes,
            routes,
            healthchecks,
            taps,
            ..
        } = started;
        let name = plan.name.clone();
        let watcher = tokio::spawn(oversee(
            name.clone(),
            tasks,
            lanes,
            stop.clone(),
            self.grace,
            self.ended.clone(),
        ));
        self.shared.registries.insert(&name, registry);
        let labels = PipelineLabels {
            pipeline: name.clone(),
        };
        self.metrics.starts.get_or_create(&labels).inc();
        self.metrics.running.get_or_create(&labels).set(1);
        self.down.remove(&name);
        self.running.insert(
            name,
            Running {
                plan,
                fingerprint,
                stop,
                watcher,
                routes,
                healthchecks,
                taps,
            },
        );
    }

    /// Builds and starts one pipeline.
    async fn start(&mut self, plan: PipelinePlan, fingerprint: String) -> Result<(), StartError> {
        let prepared = self.prepare(plan, fingerprint, &self.taken_paths()).await?;
        self.launch(prepared);
        Ok(())
    }

    /// Drains one pipeline (as at shutdown) and forgets it; returns its plan and fingerprint.
    async fn stop(&mut self, name: &str) -> Option<(PipelinePlan, String)> {
        let running = self.running.remove(name)?;
        // Its paths answer 503 from now until it runs again. Its routes, checks and taps
        // are let go before it drains: they may hold its sources' outputs, whose channels
        // must close for the stages and sinks behind them to finish.
        self.publish();
        let Running {
            plan,
            fingerprint,
            stop,
            watcher,
            routes,
            healthchecks,
            taps,
        } = running;
        drop((routes, healthchecks, taps));
        stop.cancel();
        let clean = watcher.await.unwrap_or(false);
        if !clean {
            warn!(pipeline = %name, "did not stop cleanly");
        }
        self.shared.registries.remove(name);
        self.metrics
            .running
            .get_or_create(&PipelineLabels {
                pipeline: name.to_owned(),
            })
            .set(0);
        Some((plan, fingerprint))
    }

    /// Hands the running pipelines' routes, health checks and taps to the HTTP server.
    fn publish(&self) {
        let mut routes = Vec::new();
        let mut checks = Vec::new();
        let mut taps = BTreeMap::new();
        for running in self.running.values() {
            routes.extend(running.routes.iter().map(|r| Route {
                path: r.path.clone(),
                router: r.router.clone(),
            }));
            checks.extend(running.healthchecks.iter().cloned());
            taps.extend(running.taps.iter().map(|(k, v)| (k.clone(), Arc::clone(v))));
        }
        for (name, why) in &self.down {
            let why = why.clone();
            let check: HealthFn = Arc::new(move || {
                let why = why.clone();
                async move { Err(format!("not running: {why}")) }.boxed()
            });
            checks.push(Healthcheck {
                name: format!("pipeline {name}"),
                check,
            });
        }
        self.shared.routes.set(routes);
        self.shared.health.set(checks);
        self.shared.taps.set(taps);
    }

    /// Reads the configuration again and restarts the pipelines it changed.
    pub async fn reload(&mut self, source: &ConfigSource, why: &str) {
        info!(reason = why, config = %source.path.display(), "reloading the configuration");
        let plan = match source.load() {
            Ok(plan) => plan,
            Err(problems) => {
                for problem in problems.lines() {
                    error!(config = %source.path.display(), problem, "invalid configuration");
                }
                error!(
                    config = %source.path.display(),
                    "reload refused: the configuration is invalid; the running pipelines go on unchanged"
                );
                self.metrics.reloaded("invalid");
                return;
            }
        };
        if host_settings(&plan) != self.host_settings {
            warn!(
                "the [server], [log] or [runtime] settings changed: they take effect at the next start of the process"
            );
        }
        let wanted: BTreeMap<String, (PipelinePlan, String)> = plan
            .pipelines
            .iter()
            .map(|p| {
                let fingerprint = fingerprint(p, &plan.loaded_plugins);
                (p.name.clone(), (p.clone(), fingerprint))
            })
            .collect();
        let stopping: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| {
                wanted
                    .get(*name)
                    .is_none_or(|(_, fingerprint)| *fingerprint != running.fingerprint)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let starting: Vec<(PipelinePlan, String)> = wanted
            .into_values()
            .filter(|(p, _)| !self.running.contains_key(&p.name) || stopping.contains(&p.name))
            .collect();
        if stopping.is_empty() && starting.is_empty() {
            info!("configuration reloaded: no pipeline changed");
            self.metrics.reloaded("applied");
            return;
        }
        self.shared.routes.set_restarting(true);
        let mut previous = BTreeMap::new();
        for name in &stopping {
            info!(pipeline = %name, "stopping for the new configuration");
            if let Some(old) = self.stop(name).await {
                previous.insert(name.clone(), old);
            }
        }
        let mut failed = false;
        for (pipeline, fingerprint) in starting {
            let name = pipeline.name.clone();
            match self.start(pipeline, fingerprint).await {
                Ok(()) => info!(pipeline = %name, "started on the new configuration"),
                Err(e) => {
                    failed = true;
                    error!(pipeline = %name, error = %e, "cannot start on the new configuration");
                    let Some((old, fingerprint)) = previous.remove(&name) else {
                        self.down.insert(name, e.to_string());
                        continue;
                    };
                    match self.start(old, fingerprint).await {
                        Ok(()) => {
                            warn!(pipeline = %name, "running again on its previous configuration");
                        }
                        Err(again) => {
                            error!(pipeline = %name, error = %again, "cannot start on its previous configuration either; it stays down until the next reload");
                            self.down.insert(name, again.to_string());
                        }
                    }
                }
            }
        }
        for name in previous
            .keys()
            .filter(|name| !self.running.contains_key(*name) && !self.down.contains_key(*name))
        {
            info!(pipeline = %name, "removed by the new configuration");
        }
        // What the new configuration no longer has leaves no trace: no failing readiness
        // check of a pipeline left down earlier, no `running` series stuck at 0.
        let known: Vec<String> = plan.pipelines.iter().map(|p| p.name.clone()).collect();
        let gone: Vec<String> = previous
            .keys()
            .chain(self.down.keys())
            .filter(|name| !known.contains(name))
            .cloned()
            .collect();
        self.down.retain(|name, _| known.contains(name));
        for pipeline in gone {
            self.metrics.running.remove(&PipelineLabels { pipeline });
        }
        self.publish();
        self.shared.routes.set_restarting(false);
        let restarted: Vec<&str> = stopping.iter().map(String::as_str).collect();
        if failed {
            self.metrics.reloaded("failed");
            error!(stopped = ?restarted, "configuration reload failed for some pipelines");
        } else {
            self.metrics.reloaded("applied");
            info!(stopped = ?restarted, running = ?self.running.keys().collect::<Vec<_>>(), "configuration reloaded");
        }
    }

    /// Stops every pipeline at once (each drains within the grace period); returns whether
    /// all stopped cleanly.
    pub async fn shutdown(&mut self) -> bool {
        let running = std::mem::take(&mut self.running);
        // Routes, checks and taps let go first, as in `stop`.
        self.publish();
        let watchers: Vec<(String, JoinHandle<bool>)> = running
            .into_iter()
            .map(|(name, r)| {
                r.stop.cancel();
                (name, r.watcher)
            })
            .collect();
        let mut clean = true;
        for (name, watcher) in watchers {
            let stopped = watcher.await.unwrap_or(false);
            if !stopped {
                warn!(pipeline = %name, "did not stop cleanly");
            }
            clean &= stopped;
        }
        clean
    }

    /// Tells every pipeline to stop (without waiting; [`Supervisor::shutdown`] waits).
    pub fn stop_all(&self) {
        for running in self.running.values() {
            running.stop.cancel();
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }
}

/// The settings a reload does not apply.
fn host_settings(plan: &Plan) -> String {
    format!("{:?} {:?} {:?}", plan.server, plan.log, plan.worker_threads)
}

/// Watches one pipeline's tasks until it is told to stop or one of them ends on its own
/// (which the process treats as fatal, as before reloads existed); then drains it within
/// the grace period. Returns whether it ended cleanly.
async fn oversee(
    name: String,
    mut tasks: tokio::task::JoinSet<runtime::TaskResult>,
    lanes: tokio_util::task::TaskTracker,
    stop: CancellationToken,
    grace: Duration,
    ended: mpsc::UnboundedSender<String>,
) -> bool {
    let mut clean = true;
    let first = tokio::select! {
        biased;
        () = stop.cancelled() => None,
        Some(task) = tasks.join_next() => Some(task),
    };
    // A task that ends while the pipeline is told to stop is draining, not failing.
    match first {
        None => {}
        Some(task) if stop.is_cancelled() => clean &= stopped_well(&name, task),
        Some(task) => {
            match task {
                Ok((label, Ok(()))) => warn!(component = %label, "ended on its own; shutting down"),
                Ok((label, Err(e))) => {
                    error!(component = %label, error = %e, "failed; shutting down");
                    clean = false;
                }
                Err(e) => {
                    error!(pipeline = %name, error = %e, "a task panicked; shutting down");
                    clean = false;
                }
            }
            let _ = ended.send(name.clone());
        }
    }
    stop.cancel();
    let drained = tokio::time::timeout(grace, async {
        while let Some(task) = tasks.join_next().await {
            clean &= stopped_well(&name, task);
        }
        // Lanes made per key end once their inputs have closed.
        lanes.close();
        lanes.wait().await;
    })
    .await;
    if drained.is_err() {
        error!(pipeline = %name, remaining = tasks.len(), ?grace, "shutdown grace period exceeded; aborting");
        tasks.abort_all();
        clean = false;
    }
    clean
}

/// Whether a task ended well while its pipeline stopped (an error is logged).
fn stopped_well(pipeline: &str, task: Result<runtime::TaskResult, tokio::task::JoinError>) -> bool {
    match task {
        Ok((label, Ok(()))) => {
            tracing::debug!(component = %label, "stopped");
            true
        }
        Ok((label, Err(e))) => {
            error!(component = %label, error = %e, "failed while stopping");
            false
        }
        Err(e) => {
            error!(%pipeline, error = %e, "a task panicked while stopping");
            false
        }
    }
}
