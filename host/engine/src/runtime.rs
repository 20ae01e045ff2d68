//! Running a plan: every component built first (so a failed connection starts nothing),
//! then one task per source, per stage lane and per sink lane, joined by bounded
//! channels. A node with `lanes = "auto"` gets a lane per input key (a Kafka partition)
//! when that key's first batch arrives; a lane idle for [`IDLE_LANE`] is retired (its
//! state dropped) and made again if its key comes back.
//!
//! A component's failure stays inside its batch: a stage or sink that errs — or panics —
//! fails the batch back to its source (which delivers it again later), and a lane whose
//! instance panicked gets a fresh one from its factory. Events a sink refused for good go
//! to its `<sink>.failed` output when another sink reads it.
//!
//! Shutdown has one path: the sources' token is cancelled; each source stops taking
//! input, waits for its in-flight batches to be acknowledged and settles them; when a
//! source returns, its output channels close; each stage lane drains its channel, flushes
//! and returns, closing its own outputs; each sink lane finishes its writes in flight and
//! flushes. The caller bounds all of it with the grace period.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use prometheus_client::registry::Registry;
use salesflow_plugin_api::{
    AckSet, Backpressure, Batch, BuildContext, ByteGate, CancellationToken, Component,
    ComponentKind, Downstream, Event, Healthcheck, LaneSender, LaneSource, Output, PluginError,
    Refused, Route, Sink, SinkFactory, Stage, StageFactory, Status,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::adaptive::{Concurrency, Limiter, Outcome};
use crate::metrics::{
    ErrorLabels, LaneLabels, NodeLabels, Observer, OutcomeLabels, RuntimeMetrics,
};
use crate::topology::{Lanes, Node, PipelinePlan, Plan};

/// What a task reports when it ends.
pub type TaskResult = (String, Result<(), PluginError>);

/// Why the pipelines could not start (nothing was started).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("building {component}: {source}")]
    Build {
        component: String,
        #[source]
        source: PluginError,
    },
    #[error("building {component}: the plugin made a {made}, not a {expected}")]
    WrongKind {
        component: String,
        made: ComponentKind,
        expected: ComponentKind,
    },
    #[error("two components, or a component and the host itself, serve the HTTP path {0}")]
    DuplicatePath(String),
    #[error("building {component} lane {lane}: {source}")]
    Lane {
        component: String,
        lane: usize,
        #[source]
        source: PluginError,
    },
    #[error("{0}: no channels were made")]
    Wiring(String),
}

/// A lane made for a key retires after this long without a batch.
pub const IDLE_LANE: Duration = Duration::from_secs(60);

/// The running pipelines' tasks, and what they contribute to the HTTP server.
pub struct Started {
    pub tasks: JoinSet<TaskResult>,
    /// Lanes made per key while running; they end when their inputs close.
    pub lanes: TaskTracker,
    pub routes: Vec<Route>,
    pub healthchecks: Vec<Healthcheck>,
    /// Each component output's tap, by `pipeline/component` (or `pipeline/component.output`),
    /// when `[server.tap]` is enabled.
    pub taps: std::collections::BTreeMap<String, Arc<salesflow_plugin_api::Tap>>,
    /// The sources, built and wired, started by [`Started::launch`].
    sources: Vec<(String, Output, Box<dyn salesflow_plugin_api::Source>)>,
    sources_stop: CancellationToken,
}

enum Built {
    Source(Box<dyn salesflow_plugin_api::Source>),
    Stage(Arc<dyn StageFactory>),
    Sink(Arc<dyn SinkFactory>),
}

/// How a node's lanes are reached: fixed channels made up front, or lanes made per key.
enum Inbound {
    Fixed(Vec<LaneSender>, Vec<Inlet>),
    PerKey(Arc<KeyedLanes>),
}

/// A lane's end of its channel, and its bound in bytes (`buffer_bytes`) if it has one.
struct Inlet {
    rx: mpsc::Receiver<Batch>,
    gate: Option<Arc<ByteGate>>,
    /// The way in, for reading how full the channel is (without keeping it open).
    probe: mpsc::WeakSender<Batch>,
}

/// A new lane's channel: the way in, and the lane's end.
fn lane_channel(buffer: usize, buffer_bytes: Option<u32>) -> (LaneSender, Inlet) {
    let (tx, rx) = mpsc::channel(buffer);
    let gate = buffer_bytes.map(|limit| Arc::new(ByteGate::new(limit)));
    let probe = tx.downgrade();
    (LaneSender::new(tx, gate.clone()), Inlet { rx, gate, probe })
}

/// What `salesflow check --connect` found for one component or dependency.
pub struct Connected {
    /// `pipeline/component: what` (a health check's name), or `pipeline/component
    /// (type kind): build` for a component that could not be built.
    pub name: String,
    pub result: Result<(), String>,
}

/// Builds every component of the plan (making its connections), runs every health check
/// once (each within `timeout`), and drops it all: nothing is consumed or written.
pub async fn check_connections(plan: &Plan, timeout: Duration) -> Vec<Connected> {
    let mut found = Vec::new();
    let mut healthchecks = Vec::new();
    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    let mut built = Vec::new();
    for pipeline in &plan.pipelines {
        for node in &pipeline.nodes {
            let mut routes = Vec::new();
            let mut ctx = BuildContext::new(
                &pipeline.name,
                &node.name,
                &mut registry,
                stop.clone(),
                &mut routes,
                &mut healthchecks,
            );
            let name = format!(
                "{}/{} ({} {}): build",
                pipeline.name, node.name, node.type_name, node.kind
            );
            match tokio::time::timeout(timeout, node.plugin.build(node.settings.clone(), &mut ctx))
                .await
            {
                Ok(Ok(component)) => built.push(component),
                Ok(Err(e)) => found.push(Connected {
                    name,
                    result: Err(e.to_string()),
                }),
                Err(_) => found.push(Connected {
                    name,
                    result: Err(format!("no answer within {timeout:?}")),
                }),
            }
        }
    }
    let checks = healthchecks.into_iter().map(|check| async move {
        let result = match tokio::time::timeout(timeout, (check.check)()).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        Connected {
            name: check.name,
            result,
        }
    });
    found.extend(futures::future::join_all(checks).await);
    stop.cancel();
    drop(built);
    found
}

/// Builds every component of the plan, then starts them.
pub async fn start(
    plan: &Plan,
    registry: &mut Registry,
    metrics: &RuntimeMetrics,
    sources_stop: &CancellationToken,
) -> Result<Started, StartError> {
    let mut started = start_pipelines(
        &plan.pipelines,
        plan.server.tap.enabled,
        &std::collections::HashSet::new(),
        registry,
        metrics,
        sources_stop,
    )
    .await?;
    started.launch();
    Ok(started)
}

/// Builds every component of these pipelines and starts their stages and sinks; the
/// sources start at [`Started::launch`]. Their HTTP routes may not take a path of `taken`
/// (served by the host or another pipeline already).
pub async fn start_pipelines<S: std::hash::BuildHasher + Clone>(
    pipelines: &[PipelinePlan],
    tap_enabled: bool,
    taken: &std::collections::HashSet<String, S>,
    registry: &mut Registry,
    metrics: &RuntimeMetrics,
    sources_stop: &CancellationToken,
) -> Result<Started, StartError> {
    let mut routes = Vec::new();
    let mut healthchecks = Vec::new();
    let mut built: Vec<(String, Node, Built)> = Vec::new();

    for pipeline in pipelines {
        for node in &pipeline.nodes {
            let sub = registry
                .sub_registry_with_label(("pipeline".into(), pipeline.name.clone().into()))
                .sub_registry_with_label(("component".into(), node.name.clone().into()));
            let outputs_read = pipeline
                .nodes
                .iter()
                .flat_map(|other| &other.inputs)
                .filter_map(|input| match crate::topology::split_input(input) {
                    (component, Some(port)) if component == node.name => Some(port.to_owned()),
                    _ => None,
                })
                .collect();
            let mut ctx = BuildContext::new(
                &pipeline.name,
                &node.name,
                sub,
                sources_stop.clone(),
                &mut routes,
                &mut healthchecks,
            )
            .with_outputs_read(outputs_read);
            let where_ = format!(
                "{}/{} ({} {})",
                pipeline.name, node.name, node.type_name, node.kind
            );
            let component = node
                .plugin
                .build(node.settings.clone(), &mut ctx)
                .await
                .map_err(|source| StartError::Build {
                    component: where_.clone(),
                    source,
                })?;
            let component = match component {
                Component::Source(source) => Built::Source(source),
                Component::Stage(factory) => Built::Stage(factory),
                Component::Sink(factory) => Built::Sink(factory),
            };
            let actual = match component {
                Built::Source(_) => ComponentKind::Source,
                Built::Stage(_) => ComponentKind::Stage,
                Built::Sink(_) => ComponentKind::Sink,
            };
            if node.kind != actual {
                return Err(StartError::WrongKind {
                    component: where_,
                    made: actual,
                    expected: node.kind,
                });
            }
            built.push((pipeline.name.clone(), node.clone(), component));
        }
    }

    let mut seen_paths = taken.clone();
    for route in &routes {
        if !seen_paths.insert(route.path.clone()) {
            return Err(StartError::DuplicatePath(route.path.clone()));
        }
    }

    // Every stage and sink is reached through bounded channels: made now for fixed lanes,
    // on demand for lanes per key.
    let lanes = TaskTracker::new();
    let mut inbound: HashMap<(String, String), Inbound> = HashMap::new();
    for (pipeline, node, _) in &built {
        if node.kind == ComponentKind::Source {
            continue;
        }
        let entry = match node.lanes {
            Lanes::Fixed(count) => {
                let (tx, rx) = (0..count)
                    .map(|_| lane_channel(node.buffer, node.buffer_bytes))
                    .unzip();
                Inbound::Fixed(tx, rx)
            }
            Lanes::PerKey => Inbound::PerKey(Arc::new(KeyedLanes {
                lanes: Mutex::new(HashMap::new()),
                make: OnceLock::new(),
            })),
        };
        inbound.insert((pipeline.clone(), node.name.clone()), entry);
    }
    let downstream_of: HashMap<(String, String), Downstream> = inbound
        .iter()
        .map(|(key, entry)| {
            let downstream = match entry {
                Inbound::Fixed(tx, _) => Downstream::new(tx.clone()),
                Inbound::PerKey(keyed) => {
                    Downstream::per_key(Arc::clone(keyed) as Arc<dyn LaneSource>)
                }
            };
            (key.clone(), downstream)
        })
        .collect();
    // Who reads each component's output.
    let mut consumers: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (pipeline, node, _) in &built {
        for input in &node.inputs {
            consumers
                .entry((pipeline.clone(), input.clone()))
                .or_default()
                .push((pipeline.clone(), node.name.clone()));
        }
    }
    let taps: Mutex<std::collections::BTreeMap<String, Arc<salesflow_plugin_api::Tap>>> =
        Mutex::new(std::collections::BTreeMap::new());
    let outputs = |pipeline: &str, name: &str, labels: &NodeLabels| {
        let downstream: Vec<Downstream> = consumers
            .get(&(pipeline.to_owned(), name.to_owned()))
            .map(|list| list.iter().map(|key| downstream_of[key].clone()).collect())
            .unwrap_or_default();
        let output = Output::new(downstream, Some(Observer::new(metrics, labels)));
        if tap_enabled {
            let tap = salesflow_plugin_api::Tap::new();
            taps.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(format!("{pipeline}/{name}"), Arc::clone(&tap));
            output.with_tap(tap)
        } else {
            output
        }
    };

    let mut tasks = JoinSet::new();
    let mut planned = Vec::new();
    for (pipeline, node, component) in built {
        let labels = RuntimeMetrics::labels(
            &pipeline,
            &node.name,
            &node.kind.to_string(),
            &node.type_name,
        );
        let label = format!("{pipeline}/{}", node.name);
        let key = (pipeline.clone(), node.name.clone());
        match component {
            Built::Source(source) => {
                let out = outputs(&pipeline, &node.name, &labels);
                planned.push((label.clone(), out, source));
            }
            Built::Stage(factory) => {
                let mut out = StageOutputs {
                    main: outputs(&pipeline, &node.name, &labels),
                    named: HashMap::new(),
                };
                for port in node.plugin.outputs() {
                    let named = outputs(&pipeline, &format!("{}.{port}", node.name), &labels);
                    out.named.insert(*port, named);
                }
                let lane = StageLane {
                    label: label.clone(),
                    factory,
                    out,
                    metrics: metrics.clone(),
                    labels,
                    buffer: node.buffer,
                    buffer_bytes: node.buffer_bytes,
                };
                wire(lane, inbound.remove(&key), &mut tasks, &lanes)?;
            }
            Built::Sink(factory) => {
                let failed_port = format!("{}.{}", node.name, crate::topology::FAILED);
                let dead_letters = consumers.contains_key(&(pipeline.clone(), failed_port.clone()));
                let lane = SinkLane {
                    label: label.clone(),
                    factory,
                    concurrency: node.concurrency,
                    failed: dead_letters.then(|| outputs(&pipeline, &failed_port, &labels)),
                    metrics: metrics.clone(),
                    labels,
                    buffer: node.buffer,
                    buffer_bytes: node.buffer_bytes,
                };
                wire(lane, inbound.remove(&key), &mut tasks, &lanes)?;
            }
        }
    }
    // Only the outputs hold senders now: a channel closes when its last producer ends.
    drop(downstream_of);
    drop(inbound);
    Ok(Started {
        tasks,
        lanes,
        routes,
        healthchecks,
        taps: taps
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        sources: planned,
        sources_stop: sources_stop.clone(),
    })
}

impl Started {
    /// Starts the sources: until now only stages and sinks wait on their channels, and
    /// nothing has been read. Dropped instead, the whole is stopped without having read
    /// anything.
    pub fn launch(&mut self) {
        for (label, out, source) in std::mem::take(&mut self.sources) {
            let stop = self.sources_stop.clone();
            info!(component = %label, "source starting");
            self.tasks.spawn(async move {
                let result = source.run(out, stop).await;
                (label, result)
            });
        }
    }
}

/// A stage's or sink's lane: made from its factory, then run on its channel.
trait Lane: Clone + Send + Sync + 'static {
    type Instance: Send + 'static;
    fn label(&self) -> &str;
    /// A new lane's channel, with the node's bounds.
    fn channel(&self) -> (LaneSender, Inlet);
    fn make(&self, index: usize) -> Result<Self::Instance, PluginError>;
    fn run(
        self,
        key: u64,
        instance: Self::Instance,
        inlet: Inlet,
        retire: Option<Retire>,
    ) -> impl std::future::Future<Output = TaskResult> + Send + 'static;
}

/// Starts a node's lanes: its fixed ones now, or teaches its keyed lanes how to make one.
fn wire<L: Lane>(
    lane: L,
    inbound: Option<Inbound>,
    tasks: &mut JoinSet<TaskResult>,
    lanes: &TaskTracker,
) -> Result<(), StartError> {
    match inbound {
        Some(Inbound::Fixed(_, rxs)) => {
            for (index, inlet) in rxs.into_iter().enumerate() {
                let instance = lane.make(index).map_err(|source| StartError::Lane {
                    component: lane.label().to_owned(),
                    lane: index,
                    source,
                })?;
                tasks.spawn(lane.clone().run(index as u64, instance, inlet, None));
            }
            Ok(())
        }
        Some(Inbound::PerKey(keyed)) => {
            let weak = Arc::downgrade(&keyed);
            let tracker = lanes.clone();
            let _ = keyed.make.set(Box::new(move |key| {
                let instance = match lane.make(usize::try_from(key).unwrap_or(usize::MAX)) {
                    Ok(instance) => instance,
                    Err(e) => {
                        error!(component = %lane.label(), key, error = %e, "cannot make a lane");
                        return None;
                    }
                };
                let (tx, inlet) = lane.channel();
                let retire = Retire {
                    lanes: weak.clone(),
                    key,
                };
                tracker.spawn(report(lane.clone().run(key, instance, inlet, Some(retire))));
                Some(tx)
            }));
            Ok(())
        }
        None => Err(StartError::Wiring(lane.label().to_owned())),
    }
}

/// A lane type's `Lane` impl: its factory makes the instances, its `serve` runs them.
macro_rules! lane {
    ($lane:ty, $instance:ty) => {
        impl Lane for $lane {
            type Instance = $instance;
            fn label(&self) -> &str {
                &self.label
            }
            fn channel(&self) -> (LaneSender, Inlet) {
                lane_channel(self.buffer, self.buffer_bytes)
            }
            fn make(&self, index: usize) -> Result<Self::Instance, PluginError> {
                self.factory.create(index)
            }
            fn run(
                self,
                key: u64,
                instance: Self::Instance,
                inlet: Inlet,
                retire: Option<Retire>,
            ) -> impl std::future::Future<Output = TaskResult> + Send + 'static {
                self.serve(key, instance, inlet, retire)
            }
        }
    };
}

lane!(StageLane, Box<dyn Stage>);
lane!(SinkLane, Box<dyn Sink>);

/// Logs how a lane made per key ended (they are not joined one by one).
async fn report(lane: impl std::future::Future<Output = TaskResult>) {
    let (label, result) = lane.await;
    if let Err(e) = result {
        error!(component = %label, error = %e, "lane ended with an error");
    }
}

type MakeLane = Box<dyn Fn(u64) -> Option<LaneSender> + Send + Sync>;

/// The lanes of a `lanes = "auto"` node, by key.
struct KeyedLanes {
    lanes: Mutex<HashMap<u64, LaneSender>>,
    make: OnceLock<MakeLane>,
}

impl LaneSource for KeyedLanes {
    fn lane(&self, key: u64) -> Option<LaneSender> {
        let mut lanes = self
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = lanes.get(&key)
            && !sender.channel().is_closed()
        {
            return Some(sender.clone());
        }
        let sender = (self.make.get()?)(key)?;
        lanes.insert(key, sender.clone());
        Some(sender)
    }
}

/// How a lane made per key takes itself out of its node when idle.
struct Retire {
    lanes: Weak<KeyedLanes>,
    key: u64,
}

impl Retire {
    /// Removes the lane's channel from the node, if nothing else holds it and nothing is
    /// queued: no batch can reach it any more, and a later batch of its key makes a new
    /// lane — never two at once for one key.
    fn try_retire(&self, rx: &mpsc::Receiver<Batch>) -> bool {
        let Some(lanes) = self.lanes.upgrade() else {
            return false;
        };
        let mut map = lanes
            .lanes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get(&self.key) {
            Some(sender) if sender.channel().strong_count() == 1 && rx.is_empty() => {
                map.remove(&self.key);
                true
            }
            _ => false,
        }
    }
}

/// Where a stage lane's batches go: its main output and its named ones.
#[derive(Clone)]
struct StageOutputs {
    main: Output,
    named: HashMap<&'static str, Output>,
}

/// A lane's metric handles, resolved once.
struct LaneMetrics {
    events_in: prometheus_client::metrics::counter::Counter,
    batches_in: prometheus_client::metrics::counter::Counter,
    batch_size: prometheus_client::metrics::histogram::Histogram,
    processing: prometheus_client::metrics::histogram::Histogram,
    /// Sinks only: the age of each event delivered.
    age: Option<prometheus_client::metrics::histogram::Histogram>,
    errors: prometheus_client::metrics::counter::Counter,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    delivered: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
    refused: prometheus_client::metrics::counter::Counter,
    discarded: prometheus_client::metrics::counter::Counter,
    dead_lettered: prometheus_client::metrics::counter::Counter,
}

impl LaneMetrics {
    fn new(
        m: &RuntimeMetrics,
        labels: &NodeLabels,
        lane: u64,
        capacity: usize,
        inlet: &Inlet,
    ) -> Self {
        let lane_labels = LaneLabels {
            pipeline: labels.pipeline.clone(),
            component: labels.component.clone(),
            lane: lane.to_string(),
        };
        m.channel_capacity
            .get_or_create(&lane_labels)
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        // Read when scraped: a lane's own events would leave them stale while it is stuck.
        let probe = inlet.probe.clone();
        let fill = m.channel_fill.get_or_create(&lane_labels).clone();
        fill.read_with(move || {
            probe.upgrade().map_or(0, |tx| {
                i64::try_from(capacity.saturating_sub(tx.capacity())).unwrap_or(i64::MAX)
            })
        });
        if let Some(gate) = &inlet.gate {
            m.lane_bytes_limit
                .get_or_create(&lane_labels)
                .set(i64::from(gate.limit()));
            let held = m.lane_bytes_held.get_or_create(&lane_labels).clone();
            let gate = Arc::downgrade(gate);
            held.read_with(move || gate.upgrade().map_or(0, |g| i64::from(g.held())));
        }
        let outcome = |o: &str| OutcomeLabels {
            pipeline: labels.pipeline.clone(),
            component: labels.component.clone(),
            outcome: o.to_owned(),
        };
        // One statement each: a Family's guard lives until the end of its statement, and
        // two guards of one Family in a single expression deadlock.
        let events_in = m.events_in.get_or_create(labels).clone();
        let batches_in = m.batches_in.get_or_create(labels).clone();
        let batch_size = m.batch_size.get_or_create(labels).clone();
        let processing = m.processing_seconds.get_or_create(labels).clone();
        let age =
            (labels.kind == "sink").then(|| m.event_age_seconds.get_or_create(labels).clone());
        let kind = if labels.kind == "sink" {
            "write"
        } else {
            "process"
        };
        let errors = m
            .errors
            .get_or_create(&ErrorLabels {
                pipeline: labels.pipeline.clone(),
                component: labels.component.clone(),
                kind: kind.to_owned(),
            })
            .clone();
        let in_flight = m.sink_in_flight.get_or_create(labels).clone();
        let delivered = m.sink_outcomes.get_or_create(&outcome("delivered")).clone();
        let failed = m.sink_outcomes.get_or_create(&outcome("failed")).clone();
        let refused = m.sink_outcomes.get_or_create(&outcome("refused")).clone();
        let discarded = m.discarded.get_or_create(labels).clone();
        let dead_lettered = m.dead_lettered.get_or_create(labels).clone();
        Self {
            events_in,
            batches_in,
            batch_size,
            processing,
            age,
            errors,
            in_flight,
            delivered,
            failed,
            refused,
            discarded,
            dead_lettered,
        }
    }

    fn received(&self, batch: &Batch) {
        self.events_in.inc_by(batch.len() as u64);
        self.batches_in.inc();
        #[allow(clippy::cast_precision_loss)]
        self.batch_size.observe(batch.len() as f64);
    }

    /// Each delivered event's age: how long after its timestamp it became durable here.
    /// A timestamp ahead of this clock (another producer's) counts as age 0.
    fn delivered_age(&self, events: &[Event]) {
        let Some(age) = &self.age else {
            return;
        };
        let now_ms = salesflow_plugin_api::event::now_ms();
        for ts in events.iter().filter_map(|e| e.timestamp_ms) {
            #[allow(clippy::cast_precision_loss)]
            age.observe(now_ms.saturating_sub(ts).max(0) as f64 / 1000.0);
        }
    }

    /// Retired: its channel no longer exists.
    fn forget(m: &RuntimeMetrics, labels: &NodeLabels, lane: u64) {
        let lane_labels = LaneLabels {
            pipeline: labels.pipeline.clone(),
            component: labels.component.clone(),
            lane: lane.to_string(),
        };
        m.channel_fill.remove(&lane_labels);
        m.channel_capacity.remove(&lane_labels);
        m.lane_bytes_held.remove(&lane_labels);
        m.lane_bytes_limit.remove(&lane_labels);
    }
}

enum Input {
    Batch(Batch),
    Deadline,
    Idle,
    Closed,
}

/// The text of a caught panic.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// What one stage lane needs to run (and to make itself again after a panic).
#[derive(Clone)]
struct StageLane {
    label: String,
    factory: Arc<dyn StageFactory>,
    out: StageOutputs,
    metrics: RuntimeMetrics,
    labels: NodeLabels,
    buffer: usize,
    /// Each lane's bound in bytes, if it has one.
    buffer_bytes: Option<u32>,
}

impl StageLane {
    async fn serve(
        self,
        lane: u64,
        mut stage: Box<dyn Stage>,
        inlet: Inlet,
        retire: Option<Retire>,
    ) -> TaskResult {
        let metrics = LaneMetrics::new(&self.metrics, &self.labels, lane, self.buffer, &inlet);
        let Inlet { mut rx, gate, .. } = inlet;
        let label = self.label.clone();
        let mut emitted = Vec::new();
        let mut retired = false;
        loop {
            let deadline = stage.deadline();
            let idle = retire.as_ref().filter(|_| !retired).map(|_| IDLE_LANE);
            let input = tokio::select! {
                biased;
                batch = rx.recv() => batch.map_or(Input::Closed, Input::Batch),
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => Input::Deadline,
                () = async {
                    match idle {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => Input::Idle,
            };
            if matches!(input, Input::Idle) {
                // Nothing for a while: leave the node (and free the lane's state) once
                // what it holds is flushed; batches already on their way still arrive.
                if deadline.is_none() && retire.as_ref().is_some_and(|r| r.try_retire(&rx)) {
                    retired = true;
                }
                continue;
            }
            let started = Instant::now();
            let closed = matches!(input, Input::Closed);
            // A second claim on the batch's acknowledgements, so that a failure reaches
            // its source with the reason (the stage drops the batch when it fails).
            let mut claims: Option<AckSet> = None;
            let call = match input {
                Input::Batch(batch) => {
                    metrics.received(&batch);
                    // Out of the channel: what the stage holds from here is its own.
                    if let Some(gate) = &gate {
                        gate.release(&batch.events);
                    }
                    claims = Some(batch.acks.clone());
                    AssertUnwindSafe(stage.process(batch, &mut emitted))
                        .catch_unwind()
                        .await
                }
                Input::Deadline => {
                    AssertUnwindSafe(stage.on_deadline(&mut emitted))
                        .catch_unwind()
                        .await
                }
                Input::Closed | Input::Idle => {
                    AssertUnwindSafe(stage.flush(&mut emitted))
                        .catch_unwind()
                        .await
                }
            };
            let result = call.unwrap_or_else(|panic| {
                let text = panic_text(panic.as_ref());
                error!(component = %label, lane, panic = %text, "stage panicked; its batch fails and the lane starts afresh");
                emitted.clear();
                match self.factory.create(usize::try_from(lane).unwrap_or(usize::MAX)) {
                    Ok(fresh) => stage = fresh,
                    Err(e) => error!(component = %label, error = %e, "could not remake the stage; keeping the old one"),
                }
                Err(PluginError::new(format!("{label}: the stage panicked: {text}")))
            });
            metrics.processing.observe(started.elapsed().as_secs_f64());
            match (result, claims) {
                (Ok(()), Some(claims)) => claims.finish(&Status::Delivered),
                (Ok(()), None) => {}
                (Err(e), claims) => {
                    metrics.errors.inc();
                    error!(component = %label, error = %e, "stage failed a batch");
                    if let Some(claims) = claims {
                        claims.finish(&Status::Failed(e.to_string()));
                    }
                }
            }
            for batch in emitted.drain(..) {
                let target = match batch.output {
                    None => Some(&self.out.main),
                    Some(name) => self.out.named.get(name),
                };
                if batch.output.is_some() {
                    metrics.dead_lettered.inc_by(batch.len() as u64);
                }
                match target {
                    Some(output) if !output.is_empty() => {
                        if output.send(batch).await.is_err() {
                            warn!(component = %label, "downstream closed; batch dropped (its source sees it failed)");
                        }
                    }
                    _ => {
                        // An output nobody reads: the events are handled by being dropped.
                        metrics.discarded.inc_by(batch.len() as u64);
                        batch.finish(&Status::Delivered);
                    }
                }
            }
            if closed {
                if retired || retire.is_some() {
                    LaneMetrics::forget(&self.metrics, &self.labels, lane);
                }
                return (label, Ok(()));
            }
        }
    }
}

/// What one sink lane needs to run (and to make itself again after a panic).
#[derive(Clone)]
struct SinkLane {
    label: String,
    factory: Arc<dyn SinkFactory>,
    concurrency: Concurrency,
    /// The `<sink>.failed` output, when another sink reads it.
    failed: Option<Output>,
    metrics: RuntimeMetrics,
    labels: NodeLabels,
    buffer: usize,
    /// Each lane's bound in bytes, if it has one.
    buffer_bytes: Option<u32>,
}

/// A finished write: its outcome, and what is needed to settle or dead-letter it.
type Written = (Result<(), PluginError>, AckSet, Instant, Arc<[Event]>, u64);

impl SinkLane {
    /// Settles a finished write (see [`SinkLane::conclude`]), then gives its bytes back to
    /// the lane's bound (`gate`): only now is the batch no longer held.
    async fn settle(&self, metrics: &LaneMetrics, gate: Option<&ByteGate>, written: Written) {
        let events = gate.map(|_| Arc::clone(&written.3));
        self.conclude(metrics, written).await;
        if let (Some(gate), Some(events)) = (gate, events) {
            gate.release(&events);
        }
    }

    /// A finished write's outcome: delivered; its refused events dead-lettered (when
    /// `<sink>.failed` is read); or failed back to its sources, which deliver it again.
    async fn conclude(
        &self,
        metrics: &LaneMetrics,
        (result, acks, started, events, lane): Written,
    ) {
        metrics.processing.observe(started.elapsed().as_secs_f64());
        let e = match result {
            Ok(()) => {
                metrics.delivered.inc();
                acks.finish(&Status::Delivered);
                // After the acknowledgement: the sources need not wait for it.
                metrics.delivered_age(&events);
                return;
            }
            Err(e) => e,
        };
        metrics.errors.inc();
        let label = &self.label;
        match (&self.failed, &e.refused) {
            (Some(output), Some(refused)) if !output.is_empty() => {
                metrics.refused.inc();
                let reason = format!("{label}: {}", e.message);
                let chosen: Vec<(&Event, String)> = match refused {
                    Refused::All => events.iter().map(|ev| (ev, reason.clone())).collect(),
                    Refused::Some(list) => list
                        .iter()
                        .filter_map(|(i, why)| {
                            events.get(*i).map(|ev| (ev, format!("{label}: {why}")))
                        })
                        .collect(),
                };
                error!(component = %label, error = %e, refused = chosen.len(), events = events.len(), "sink refused events for good; they go to the dead letters");
                let letters: Vec<Event> = chosen
                    .into_iter()
                    .map(|(event, why)| {
                        let mut letter = event.clone().dead_letter(&why, label);
                        letter.headers.push((
                            salesflow_plugin_api::event::headers::PAYLOAD.to_owned(),
                            salesflow_plugin_api::bytes::Bytes::from_static(
                                salesflow_plugin_api::event::headers::TRANSFORMED.as_bytes(),
                            ),
                        ));
                        letter
                    })
                    .collect();
                metrics.dead_lettered.inc_by(letters.len() as u64);
                // The letters carry the batch's claims: it counts as handled once they are
                // written (the rest of the batch was).
                if output.send(Batch::new(letters, acks, lane)).await.is_err() {
                    warn!(component = %label, "the dead-letter sink is closed; the batch fails back to its source");
                }
            }
            _ => {
                metrics.failed.inc();
                error!(component = %label, error = %e, "sink write failed; the batch goes back to its source");
                acks.finish(&Status::Failed(e.to_string()));
            }
        }
    }

    async fn serve(
        self,
        lane: u64,
        mut sink: Box<dyn Sink>,
        inlet: Inlet,
        retire: Option<Retire>,
    ) -> TaskResult {
        let metrics = LaneMetrics::new(&self.metrics, &self.labels, lane, self.buffer, &inlet);
        let Inlet { mut rx, gate, .. } = inlet;
        let gate = gate.as_deref();
        let label = self.label.clone();
        let mut in_flight = FuturesUnordered::new();
        let mut retired = false;
        let mut limiter = Limiter::new(self.concurrency);
        let pressure = Backpressure::default();
        sink.report_backpressure_to(pressure.clone());
        let limit = SinkLimit::new(&self.metrics, &self.labels, lane);
        limit.show(&limiter);
        loop {
            let idle = retire
                .as_ref()
                .filter(|_| !retired && in_flight.is_empty())
                .map(|_| IDLE_LANE);
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let done: Written = done;
                    metrics.in_flight.dec();
                    let outcome = outcome(&done.0, pressure.take());
                    if outcome == Outcome::Backpressure {
                        limit.backpressure.inc();
                    }
                    limiter.finished(Instant::now(), done.2.elapsed(), outcome);
                    limit.show(&limiter);
                    self.settle(&metrics, gate, done).await;
                }
                batch = rx.recv(), if in_flight.len() < limiter.limit() => {
                    let Some(batch) = batch else { break };
                    metrics.received(&batch);
                    let started = Instant::now();
                    let batch_lane = batch.lane;
                    let (events, acks) = batch.into_parts();
                    let kept = Arc::clone(&events);
                    let write = AssertUnwindSafe(sink.write(events)).catch_unwind().await;
                    match write {
                        Ok(Ok(write)) => {
                            metrics.in_flight.inc();
                            limiter.started(in_flight.len() + 1, !rx.is_empty());
                            in_flight.push(async move {
                                let result = AssertUnwindSafe(write).catch_unwind().await.unwrap_or_else(|panic| {
                                    Err(PluginError::new(format!("the write panicked: {}", panic_text(panic.as_ref()))))
                                });
                                (result, acks, started, kept, batch_lane)
                            });
                        }
                        Ok(Err(e)) => self.settle(&metrics, gate, (Err(e), acks, started, kept, batch_lane)).await,
                        Err(panic) => {
                            let text = panic_text(panic.as_ref());
                            error!(component = %label, lane, panic = %text, "sink panicked; its batch fails and the lane starts afresh");
                            if let Ok(fresh) = self.factory.create(usize::try_from(lane).unwrap_or(usize::MAX)) {
                                sink = fresh;
                                sink.report_backpressure_to(pressure.clone());
                            }
                            let e = PluginError::new(format!("the sink panicked: {text}"));
                            self.settle(&metrics, gate, (Err(e), acks, started, kept, batch_lane)).await;
                        }
                    }
                }
                () = async {
                    match idle {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if retire.as_ref().is_some_and(|r| r.try_retire(&rx)) {
                        retired = true;
                    }
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            metrics.in_flight.dec();
            self.settle(&metrics, gate, done).await;
        }
        let result = sink.flush().await;
        if retire.is_some() {
            LaneMetrics::forget(&self.metrics, &self.labels, lane);
            limit.forget(&self.metrics);
        }
        (label, result)
    }
}

/// How a finished write counts for the lane's concurrency: a failure that goes back to
/// its source, or any back-pressure the sink saw meanwhile, is the server pushing back.
fn outcome(result: &Result<(), PluginError>, signalled: u64) -> Outcome {
    match result {
        _ if signalled > 0 => Outcome::Backpressure,
        Ok(()) => Outcome::Written,
        Err(e) if e.refused.is_some() => Outcome::Other,
        Err(_) => Outcome::Backpressure,
    }
}

/// A sink lane's concurrency limit and back-pressure count, as metrics.
struct SinkLimit {
    labels: LaneLabels,
    limit: prometheus_client::metrics::gauge::Gauge,
    backpressure: prometheus_client::metrics::counter::Counter,
}

impl SinkLimit {
    fn new(m: &RuntimeMetrics, labels: &NodeLabels, lane: u64) -> Self {
        let labels = LaneLabels {
            pipeline: labels.pipeline.clone(),
            component: labels.component.clone(),
            lane: lane.to_string(),
        };
        let limit = m.sink_concurrency_limit.get_or_create(&labels).clone();
        let backpressure = m.sink_backpressure.get_or_create(&labels).clone();
        Self {
            labels,
            limit,
            backpressure,
        }
    }

    fn show(&self, limiter: &Limiter) {
        self.limit
            .set(i64::try_from(limiter.limit()).unwrap_or(i64::MAX));
    }

    /// Retired: the lane no longer exists.
    fn forget(&self, m: &RuntimeMetrics) {
        m.sink_concurrency_limit.remove(&self.labels);
        m.sink_backpressure.remove(&self.labels);
    }
}

/// Lanes of a test node, for the in-process tests below.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use salesflow_plugin_api::{AckHandle, async_trait};

    use super::*;

    struct Counting(Arc<AtomicUsize>);

    impl StageFactory for Counting {
        fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Panicky))
        }
    }

    /// Panics on a batch whose first payload is "boom"; passes the rest on.
    struct Panicky;

    #[async_trait]
    impl Stage for Panicky {
        async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
            assert!(batch.events[0].payload.as_ref() != b"boom", "boom");
            out.push(batch);
            Ok(())
        }
    }

    fn lane(factory: Arc<dyn StageFactory>, out: Output) -> StageLane {
        StageLane {
            label: "p/s".into(),
            factory,
            out: StageOutputs {
                main: out,
                named: HashMap::new(),
            },
            metrics: RuntimeMetrics::register(&mut Registry::default()),
            labels: RuntimeMetrics::labels("p", "s", "stage", "t"),
            buffer: 4,
            buffer_bytes: None,
        }
    }

    fn batch(payload: &'static str) -> (Batch, tokio::sync::oneshot::Receiver<Status>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ack = AckHandle::new(move |status| {
            let _ = tx.send(status);
        });
        (
            Batch::new(vec![Event::new(payload)], AckSet::one(ack), 0),
            rx,
        )
    }

    #[tokio::test]
    async fn a_panicking_stage_fails_its_batch_and_the_lane_goes_on_afresh() {
        let made = Arc::new(AtomicUsize::new(0));
        let factory = Arc::new(Counting(Arc::clone(&made)));
        let (down_tx, mut down_rx) = mpsc::channel(8);
        let out = Output::new(vec![Downstream::new(vec![down_tx])], None);
        let stage = factory.create(0).unwrap();
        let (sender, inlet) = lane_channel(4, None);
        let tx = sender.channel().clone();
        drop(sender);
        let task = tokio::spawn(lane(factory, out).serve(0, stage, inlet, None));
        let (boom, boom_ack) = batch("boom");
        let (fine, fine_ack) = batch("fine");
        tx.send(boom).await.unwrap();
        tx.send(fine).await.unwrap();
        let passed = down_rx.recv().await.unwrap();
        assert_eq!(passed.events[0].payload.as_ref(), b"fine");
        passed.finish(&Status::Delivered);
        match boom_ack.await.unwrap() {
            Status::Failed(why) => assert!(why.contains("panicked: boom"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fine_ack.await.unwrap(), Status::Delivered);
        assert_eq!(
            made.load(Ordering::SeqCst),
            2,
            "a fresh stage after the panic"
        );
        drop(tx);
        let (_, result) = task.await.unwrap();
        assert!(result.is_ok());
    }

    /// A node with a lane per key, its lanes made by `factory`, sending on to `out`.
    fn keyed(
        factory: Arc<dyn StageFactory>,
        out: Output,
        tracker: &TaskTracker,
    ) -> Arc<KeyedLanes> {
        let keyed = Arc::new(KeyedLanes {
            lanes: Mutex::new(HashMap::new()),
            make: OnceLock::new(),
        });
        let mut tasks = JoinSet::new();
        wire(
            lane(factory, out),
            Some(Inbound::PerKey(Arc::clone(&keyed))),
            &mut tasks,
            tracker,
        )
        .unwrap();
        keyed
    }

    #[tokio::test]
    async fn lanes_per_key_are_made_on_first_use_one_per_key() {
        let made = Arc::new(AtomicUsize::new(0));
        let factory: Arc<dyn StageFactory> = Arc::new(Counting(Arc::clone(&made)));
        let (down_tx, mut down_rx) = mpsc::channel(16);
        let out = Output::new(vec![Downstream::new(vec![down_tx])], None);
        let tracker = TaskTracker::new();
        let keyed = keyed(factory, out, &tracker);
        let input = Output::new(
            vec![Downstream::per_key(
                Arc::clone(&keyed) as Arc<dyn LaneSource>
            )],
            None,
        );
        for key in [3_u64, 7, 3, 7, 3, 24] {
            input
                .send(Batch::new(vec![Event::new("x")], AckSet::none(), key))
                .await
                .unwrap();
        }
        for _ in 0..6 {
            down_rx.recv().await.unwrap();
        }
        assert_eq!(made.load(Ordering::SeqCst), 3, "keys 3, 7 and 24");
        drop(input);
        drop(keyed);
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the lanes end when their input closes");
    }

    /// A lane idle for a minute leaves its node (its state with it); its key's next batch
    /// makes a new one.
    #[tokio::test(start_paused = true)]
    async fn an_idle_lane_retires_and_its_key_gets_a_new_one() {
        let made = Arc::new(AtomicUsize::new(0));
        let factory: Arc<dyn StageFactory> = Arc::new(Counting(Arc::clone(&made)));
        let (down_tx, mut down_rx) = mpsc::channel(16);
        let out = Output::new(vec![Downstream::new(vec![down_tx])], None);
        let tracker = TaskTracker::new();
        let keyed = keyed(factory, out, &tracker);
        let input = Output::new(
            vec![Downstream::per_key(
                Arc::clone(&keyed) as Arc<dyn LaneSource>
            )],
            None,
        );
        let send = |key| input.send(Batch::new(vec![Event::new("x")], AckSet::none(), key));
        send(3).await.unwrap();
        down_rx.recv().await.unwrap();
        tokio::time::sleep(IDLE_LANE / 2).await;
        assert!(
            keyed.lanes.lock().unwrap().contains_key(&3),
            "not idle long enough"
        );
        tokio::time::sleep(IDLE_LANE).await;
        assert!(!keyed.lanes.lock().unwrap().contains_key(&3), "retired");
        send(3).await.unwrap();
        down_rx.recv().await.unwrap();
        assert_eq!(made.load(Ordering::SeqCst), 2, "a new lane for key 3");
    }

    /// A sink whose writes stay in flight until the test lets each one finish: each write
    /// hands the test its finishing switch.
    struct Held(mpsc::UnboundedSender<tokio::sync::oneshot::Sender<()>>);

    #[async_trait]
    impl Sink for Held {
        async fn write(
            &mut self,
            _events: Arc<[Event]>,
        ) -> Result<salesflow_plugin_api::WriteFuture, PluginError> {
            let (finish, finished) = tokio::sync::oneshot::channel();
            let _ = self.0.send(finish);
            Ok(Box::pin(async move {
                finished
                    .await
                    .map_err(|_| PluginError::new("the test dropped the write"))
            }))
        }
    }

    impl SinkFactory for Held {
        fn create(&self, _lane: usize) -> Result<Box<dyn Sink>, PluginError> {
            Ok(Box::new(Held(self.0.clone())))
        }
    }

    /// A batch of one event whose payload is `bytes` long, with its acknowledgement.
    fn sized(bytes: usize) -> (Batch, tokio::sync::oneshot::Receiver<Status>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ack = AckHandle::new(move |status| {
            let _ = tx.send(status);
        });
        let event = Event::new(vec![b'x'; bytes]);
        (Batch::new(vec![event], AckSet::one(ack), 0), rx)
    }

    /// `buffer_bytes` holds what a sink lane is writing as well as what waits for it: a
    /// batch that does not fit waits, however empty the channel, until a write in flight
    /// settles and gives its bytes back. The lane's gauges read what it holds when
    /// scraped, though the lane itself, at its one write in flight, takes nothing.
    /// (Paused time: the waits of one second end only when nothing else can run.)
    #[tokio::test(start_paused = true)]
    async fn a_lane_bound_in_bytes_holds_its_writes_in_flight_too() {
        let (writes_tx, mut writes) = mpsc::unbounded_channel();
        let metrics = RuntimeMetrics::register(&mut Registry::default());
        let sink_lane = SinkLane {
            label: "p/k".into(),
            factory: Arc::new(Held(writes_tx)),
            concurrency: Concurrency::Fixed(1),
            failed: None,
            metrics: metrics.clone(),
            labels: RuntimeMetrics::labels("p", "k", "sink", "t"),
            buffer: 4,
            buffer_bytes: Some(1500),
        };
        let (tx, inlet) = lane_channel(4, sink_lane.buffer_bytes);
        let gate = inlet.gate.clone().unwrap();
        let sink = sink_lane.make(0).unwrap();
        let task = tokio::spawn(sink_lane.serve(0, sink, inlet, None));
        let out = Output::new(vec![Downstream::new(vec![tx])], None);
        let wait = Duration::from_secs(1);
        let lane_labels = LaneLabels {
            pipeline: "p".into(),
            component: "k".into(),
            lane: "0".into(),
        };
        let fill = metrics.channel_fill.get_or_create(&lane_labels).clone();
        let held = metrics.lane_bytes_held.get_or_create(&lane_labels).clone();

        let (first, first_ack) = sized(1000);
        out.send_timeout(first, wait).await.unwrap();
        let finish_first = writes.recv().await.unwrap();
        assert_eq!(gate.held(), 1000, "the write in flight holds its bytes");
        let (small, small_ack) = sized(100);
        out.send_timeout(small, wait).await.unwrap();
        assert_eq!((fill.get(), held.get()), (1, 1100), "read when scraped");
        let (second, second_ack) = sized(1000);
        let second = match out.send_timeout(second, wait).await {
            Err(salesflow_plugin_api::SendError::Full(batch)) => batch,
            other => panic!("1100 + 1000 bytes do not fit in 1500: {other:?}"),
        };
        assert_eq!(gate.held(), 1100, "a send that gave up holds nothing");
        finish_first.send(()).unwrap();
        assert_eq!(first_ack.await.unwrap(), Status::Delivered);
        let finish_small = writes.recv().await.unwrap();
        out.send_timeout(second, wait)
            .await
            .expect("room once the first write settled");
        finish_small.send(()).unwrap();
        assert_eq!(small_ack.await.unwrap(), Status::Delivered);
        writes.recv().await.unwrap().send(()).unwrap();
        assert_eq!(second_ack.await.unwrap(), Status::Delivered);

        // Larger than the whole bound: it counts as the bound, and passes alone.
        let (huge, huge_ack) = sized(5000);
        out.send_timeout(huge, wait).await.unwrap();
        let finish_huge = writes.recv().await.unwrap();
        assert_eq!(gate.held(), 1500);
        finish_huge.send(()).unwrap();
        assert_eq!(huge_ack.await.unwrap(), Status::Delivered);
        drop(out);
        let (_, result) = task.await.unwrap();
        assert!(result.is_ok());
        assert_eq!(gate.held(), 0, "every byte given back");
    }
}
