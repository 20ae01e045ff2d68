//! Running a plan: every component built first (so a failed connection starts nothing),
//! then one task per source, per stage lane and per sink lane, joined by bounded
//! channels.
//!
//! Shutdown has one path: the sources' token is cancelled; each source stops taking
//! input, waits for its in-flight batches to be acknowledged and settles them; when a
//! source returns, its output channels close; each stage lane drains its channel, flushes
//! and returns, closing its own outputs; each sink lane finishes its writes in flight and
//! flushes. The caller bounds all of it with the grace period.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use prometheus_client::registry::Registry;
use salesflow_plugin_api::{
    Batch, BuildContext, CancellationToken, Component, ComponentKind, Downstream, Healthcheck,
    Output, PluginError, Route, Sink, Stage, Status,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::metrics::{
    ErrorLabels, LaneLabels, NodeLabels, Observer, OutcomeLabels, RuntimeMetrics,
};
use crate::topology::{Node, Plan};

/// What a task reports when it ends.
pub type TaskResult = (String, Result<(), PluginError>);

/// The running pipelines' tasks, and what they contribute to the HTTP server.
pub struct Started {
    pub tasks: JoinSet<TaskResult>,
    pub routes: Vec<Route>,
    pub healthchecks: Vec<Healthcheck>,
}

enum Built {
    Source(Box<dyn salesflow_plugin_api::Source>),
    Stage(Vec<Box<dyn Stage>>),
    Sink(Vec<Box<dyn Sink>>),
}

/// Builds every component of the plan, then starts them.
pub async fn start(
    plan: &Plan,
    registry: &mut Registry,
    metrics: &RuntimeMetrics,
    sources_stop: &CancellationToken,
) -> Result<Started, String> {
    let mut routes = Vec::new();
    let mut healthchecks = Vec::new();
    let mut built: Vec<(String, Node, Built)> = Vec::new();

    for pipeline in &plan.pipelines {
        for node in &pipeline.nodes {
            let sub = registry
                .sub_registry_with_label(("pipeline".into(), pipeline.name.clone().into()))
                .sub_registry_with_label(("component".into(), node.name.clone().into()));
            let mut ctx = BuildContext::new(
                &pipeline.name,
                &node.name,
                sub,
                sources_stop.clone(),
                &mut routes,
                &mut healthchecks,
            );
            let where_ = format!(
                "{}/{} ({} {})",
                pipeline.name, node.name, node.type_name, node.kind
            );
            let component = node
                .plugin
                .build(node.settings.clone(), &mut ctx)
                .await
                .map_err(|e| format!("building {where_}: {e}"))?;
            let component = match component {
                Component::Source(source) => Built::Source(source),
                Component::Stage(factory) => Built::Stage(
                    (0..node.lanes)
                        .map(|lane| factory.create(lane))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("building {where_}: {e}"))?,
                ),
                Component::Sink(factory) => Built::Sink(
                    (0..node.lanes)
                        .map(|lane| factory.create(lane))
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("building {where_}: {e}"))?,
                ),
            };
            let expected = node.kind;
            let actual = match component {
                Built::Source(_) => ComponentKind::Source,
                Built::Stage(_) => ComponentKind::Stage,
                Built::Sink(_) => ComponentKind::Sink,
            };
            if expected != actual {
                return Err(format!(
                    "building {where_}: the plugin made a {actual}, not a {expected}"
                ));
            }
            built.push((pipeline.name.clone(), node.clone(), component));
        }
    }

    let mut seen_paths = std::collections::HashSet::new();
    for route in &routes {
        if !seen_paths.insert(route.path.clone()) {
            return Err(format!("two components serve the HTTP path {}", route.path));
        }
    }

    // Every stage and sink lane gets a bounded channel.
    let mut senders: HashMap<(String, String), Vec<mpsc::Sender<Batch>>> = HashMap::new();
    let mut receivers: HashMap<(String, String), Vec<mpsc::Receiver<Batch>>> = HashMap::new();
    for (pipeline, node, _) in &built {
        if node.kind == ComponentKind::Source {
            continue;
        }
        let (tx, rx): (Vec<_>, Vec<_>) =
            (0..node.lanes).map(|_| mpsc::channel(node.buffer)).unzip();
        senders.insert((pipeline.clone(), node.name.clone()), tx);
        receivers.insert((pipeline.clone(), node.name.clone()), rx);
    }
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
    let outputs = |pipeline: &str, name: &str, labels: &NodeLabels| {
        let downstream: Vec<Downstream> = consumers
            .get(&(pipeline.to_owned(), name.to_owned()))
            .map(|list| {
                list.iter()
                    .map(|key| Downstream::new(senders[key].clone()))
                    .collect()
            })
            .unwrap_or_default();
        Output::new(downstream, Some(Observer::new(metrics, labels)))
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
        match component {
            Built::Source(source) => {
                let out = outputs(&pipeline, &node.name, &labels);
                planned.push((label.clone(), out, source));
            }
            Built::Stage(stages) => {
                let rxs = receivers
                    .remove(&(pipeline.clone(), node.name.clone()))
                    .unwrap_or_default();
                for (lane, (stage, rx)) in stages.into_iter().zip(rxs).enumerate() {
                    let mut out = StageOutputs {
                        main: outputs(&pipeline, &node.name, &labels),
                        named: HashMap::new(),
                    };
                    for port in node.plugin.outputs() {
                        let named = outputs(&pipeline, &format!("{}.{port}", node.name), &labels);
                        out.named.insert(*port, named);
                    }
                    let lane_metrics = LaneMetrics::new(metrics, &labels, lane, node.buffer);
                    tasks.spawn(run_stage(label.clone(), stage, rx, out, lane_metrics));
                }
            }
            Built::Sink(sinks) => {
                let rxs = receivers
                    .remove(&(pipeline.clone(), node.name.clone()))
                    .unwrap_or_default();
                let failed_port = format!("{}.{}", node.name, crate::topology::FAILED);
                let dead_letters = consumers.contains_key(&(pipeline.clone(), failed_port.clone()));
                for (lane, (sink, rx)) in sinks.into_iter().zip(rxs).enumerate() {
                    let lane_metrics = LaneMetrics::new(metrics, &labels, lane, node.buffer);
                    let failed = dead_letters.then(|| outputs(&pipeline, &failed_port, &labels));
                    tasks.spawn(run_sink(
                        label.clone(),
                        sink,
                        rx,
                        SinkOutputs {
                            concurrency: node.concurrency,
                            failed,
                        },
                        lane_metrics,
                    ));
                }
            }
        }
    }
    // Only the outputs hold senders now: a channel closes when its last producer ends.
    drop(senders);
    for (label, out, source) in planned {
        let stop = sources_stop.clone();
        info!(component = %label, "source starting");
        tasks.spawn(async move {
            let result = source.run(out, stop).await;
            (label, result)
        });
    }
    Ok(Started {
        tasks,
        routes,
        healthchecks,
    })
}

/// Where a stage lane's batches go: its main output and its named ones.
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
    fill: prometheus_client::metrics::gauge::Gauge,
    errors: prometheus_client::metrics::counter::Counter,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    delivered: prometheus_client::metrics::counter::Counter,
    failed: prometheus_client::metrics::counter::Counter,
    discarded: prometheus_client::metrics::counter::Counter,
    dead_lettered: prometheus_client::metrics::counter::Counter,
    capacity: usize,
}

impl LaneMetrics {
    fn new(m: &RuntimeMetrics, labels: &NodeLabels, lane: usize, capacity: usize) -> Self {
        let lane_labels = LaneLabels {
            pipeline: labels.pipeline.clone(),
            component: labels.component.clone(),
            lane: lane.to_string(),
        };
        m.channel_capacity
            .get_or_create(&lane_labels)
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
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
        let fill = m.channel_fill.get_or_create(&lane_labels).clone();
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
        let discarded = m.discarded.get_or_create(labels).clone();
        let dead_lettered = m.dead_lettered.get_or_create(labels).clone();
        Self {
            events_in,
            batches_in,
            batch_size,
            processing,
            fill,
            errors,
            in_flight,
            delivered,
            failed,
            discarded,
            dead_lettered,
            capacity,
        }
    }

    fn received(&self, batch: &Batch, rx: &mpsc::Receiver<Batch>) {
        self.events_in.inc_by(batch.len() as u64);
        self.batches_in.inc();
        #[allow(clippy::cast_precision_loss)]
        self.batch_size.observe(batch.len() as f64);
        let queued = self.capacity.saturating_sub(rx.capacity());
        self.fill.set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}

enum Input {
    Batch(Batch),
    Deadline,
    Closed,
}

async fn run_stage(
    label: String,
    mut stage: Box<dyn Stage>,
    mut rx: mpsc::Receiver<Batch>,
    out: StageOutputs,
    metrics: LaneMetrics,
) -> TaskResult {
    let mut emitted = Vec::new();
    loop {
        let deadline = stage.deadline();
        let input = tokio::select! {
            biased;
            batch = rx.recv() => batch.map_or(Input::Closed, Input::Batch),
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Input::Deadline,
        };
        let started = Instant::now();
        let closed = matches!(input, Input::Closed);
        // A second claim on the batch's acknowledgements, so that a failure reaches its
        // source with the reason (the stage drops the batch when it fails).
        let mut claims = None;
        let result = match input {
            Input::Batch(batch) => {
                metrics.received(&batch, &rx);
                claims = Some(batch.acks.clone());
                stage.process(batch, &mut emitted).await
            }
            Input::Deadline => stage.on_deadline(&mut emitted).await,
            Input::Closed => stage.flush(&mut emitted).await,
        };
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
                None => Some(&out.main),
                Some(name) => out.named.get(name),
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
            return (label, Ok(()));
        }
    }
}

/// How a sink lane works: writes in flight, and where batches it gives up on go.
struct SinkOutputs {
    concurrency: usize,
    /// The `<sink>.failed` output, when another sink reads it.
    failed: Option<Output>,
}

/// A finished write: its outcome, and what is needed to settle or dead-letter it.
type Written = (
    Result<(), PluginError>,
    salesflow_plugin_api::AckSet,
    Instant,
    std::sync::Arc<[salesflow_plugin_api::Event]>,
    u64,
);

async fn run_sink(
    label: String,
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<Batch>,
    outputs: SinkOutputs,
    metrics: LaneMetrics,
) -> TaskResult {
    let SinkOutputs {
        concurrency,
        failed,
    } = outputs;
    let mut in_flight = FuturesUnordered::new();
    // Settles a finished write: delivered, dead-lettered (when `<sink>.failed` is read),
    // or failed back to its sources.
    let settle = async |(result, acks, started, events, lane): Written| {
        metrics.processing.observe(started.elapsed().as_secs_f64());
        let e = match result {
            Ok(()) => {
                metrics.delivered.inc();
                acks.finish(&Status::Delivered);
                return;
            }
            Err(e) => e,
        };
        metrics.failed.inc();
        metrics.errors.inc();
        match &failed {
            Some(output) if !output.is_empty() => {
                error!(component = %label, error = %e, events = events.len(), "sink write failed after its retries; the batch goes to the dead letters");
                let reason = format!("{label}: {e}");
                let letters: Vec<salesflow_plugin_api::Event> = events
                    .iter()
                    .map(|event| {
                        let mut letter = event.clone().dead_letter(&reason, &label);
                        letter.headers.push((
                            salesflow_plugin_api::event::headers::PAYLOAD.to_owned(),
                            salesflow_plugin_api::bytes::Bytes::from_static(
                                crate::dlq::TRANSFORMED.as_bytes(),
                            ),
                        ));
                        letter
                    })
                    .collect();
                metrics.dead_lettered.inc_by(letters.len() as u64);
                if output.send(Batch::new(letters, acks, lane)).await.is_err() {
                    warn!(component = %label, "the dead-letter sink is closed; the batch fails back to its source");
                }
            }
            _ => {
                error!(component = %label, error = %e, "sink write failed");
                acks.finish(&Status::Failed(e.to_string()));
            }
        }
    };
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                metrics.in_flight.dec();
                settle(done).await;
            }
            batch = rx.recv(), if in_flight.len() < concurrency => {
                let Some(batch) = batch else { break };
                metrics.received(&batch, &rx);
                let started = Instant::now();
                let lane = batch.lane;
                let (events, acks) = batch.into_parts();
                let kept = std::sync::Arc::clone(&events);
                match sink.write(events).await {
                    Ok(write) => {
                        metrics.in_flight.inc();
                        in_flight.push(async move { (write.await, acks, started, kept, lane) });
                    }
                    Err(e) => settle((Err(e), acks, started, kept, lane)).await,
                }
            }
        }
    }
    while let Some(done) = in_flight.next().await {
        metrics.in_flight.dec();
        settle(done).await;
    }
    let result = sink.flush().await;
    (label, result)
}
