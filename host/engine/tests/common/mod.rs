//! Plugins of the tests' own making, for the engine in process: a source fed by the
//! test, a stage that passes, fails, panics or rejects on command, a sink that keeps what
//! it writes (and can fail, refuse or hold its writes); and a topology of them running.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry as Metrics;
use salesflow_host::config::Loaded;
use salesflow_host::metrics::RuntimeMetrics;
use salesflow_host::registry::Registry;
use salesflow_host::runtime::{self, Started};
use salesflow_plugin_api::futures::FutureExt;
use salesflow_plugin_api::{
    AckHandle, AckSet, Backpressure, Batch, BuildContext, CancellationToken, Component,
    ComponentKind, ConfigError, Event, Output, Plugin, PluginError, Registrar, SendError, Sink,
    SinkFactory, Source, Stage, StageFactory, Status, WriteFuture, async_trait, schemars, toml,
};
use tokio::sync::mpsc;

/// What the test feeds a source: events, their lane key, and where to hear the outcome.
type Feed = (Vec<Event>, u64, mpsc::UnboundedSender<Status>);

/// Sources named by `feed = "NAME"`: they emit what the test sends on that feed.
#[derive(Default)]
struct Feeds {
    receivers: Mutex<HashMap<String, mpsc::UnboundedReceiver<Feed>>>,
}

struct FeedSourcePlugin(Arc<Feeds>);

struct FeedSource(mpsc::UnboundedReceiver<Feed>);

#[async_trait]
impl Source for FeedSource {
    async fn run(
        mut self: Box<Self>,
        out: Output,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError> {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = self.0.recv() => next,
            };
            let Some((events, lane, report)) = next else {
                shutdown.cancelled().await;
                return Ok(());
            };
            let ack = AckHandle::new(move |status| {
                let _ = report.send(status);
            });
            // Offered for a while, as the HTTP source does: a batch downstream has no room
            // for is dropped unsent, and its source hears so.
            match out
                .send_timeout(
                    Batch::new(events, AckSet::one(ack), lane),
                    Duration::from_millis(300),
                )
                .await
            {
                Ok(()) | Err(SendError::Full(_)) => {}
                Err(SendError::Closed(_)) => return Ok(()),
            }
        }
    }
}

fn any_schema() -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}

#[async_trait]
impl Plugin for FeedSourcePlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Source
    }
    fn name(&self) -> &'static str {
        "feed"
    }
    fn summary(&self) -> &'static str {
        "emits what the test sends"
    }
    fn settings_schema(&self) -> schemars::Schema {
        any_schema()
    }
    fn validate(&self, _: &toml::Table) -> Result<(), ConfigError> {
        Ok(())
    }
    async fn build(
        &self,
        settings: toml::Table,
        _: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let name = settings["feed"].as_str().unwrap();
        let rx = self.0.receivers.lock().unwrap().remove(name).unwrap();
        Ok(Component::Source(Box::new(FeedSource(rx))))
    }
}

/// A stage that passes batches on, panics on a payload "panic", fails on "fail", sends
/// "reject" to its `rejected` output, and counts how many instances were made.
struct PassPlugin(Arc<AtomicUsize>);

struct Pass;

#[async_trait]
impl Stage for Pass {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let payload = batch.events.first().map(|e| e.payload.clone());
        match payload.as_deref() {
            Some(b"panic") => panic!("asked to"),
            Some(b"fail") => Err(PluginError::new("asked to fail")),
            Some(b"reject") => {
                out.push(batch.to_output("rejected"));
                Ok(())
            }
            _ => {
                out.push(batch);
                Ok(())
            }
        }
    }
}

impl StageFactory for PassPlugin {
    fn create(&self, _: usize) -> Result<Box<dyn Stage>, PluginError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Pass))
    }
}

struct PassFactory(Arc<AtomicUsize>);

#[async_trait]
impl Plugin for PassFactory {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }
    fn name(&self) -> &'static str {
        "pass"
    }
    fn summary(&self) -> &'static str {
        "passes batches on"
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["rejected"]
    }
    fn settings_schema(&self) -> schemars::Schema {
        any_schema()
    }
    fn validate(&self, _: &toml::Table) -> Result<(), ConfigError> {
        Ok(())
    }
    async fn build(
        &self,
        _: toml::Table,
        _: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        Ok(Component::Stage(Arc::new(PassPlugin(Arc::clone(&self.0)))))
    }
}

/// Sinks named by `sink = "NAME"`: they keep what they write, and can be made to fail,
/// refuse payloads "too big", or hold every write until released.
#[derive(Default)]
pub struct Sinks {
    pub written: Mutex<HashMap<String, Vec<Event>>>,
    pub failing: AtomicBool,
    pub held: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    pub started: AtomicUsize,
    pub flushed: AtomicUsize,
    /// A server that takes `service_ms` for each write and pushes back (signals
    /// back-pressure, then writes anyway) while more than `throttle_above` are in flight
    /// (0: never).
    pub service_ms: AtomicU64,
    pub throttle_above: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub most_in_flight: AtomicUsize,
}

struct CollectPlugin(Arc<Sinks>);

struct Collect {
    name: String,
    sinks: Arc<Sinks>,
    /// A payload it refuses for good (`refuse = "..."`).
    refuse: Option<String>,
    pressure: Backpressure,
}

#[async_trait]
impl Sink for Collect {
    fn report_backpressure_to(&mut self, signal: Backpressure) {
        self.pressure = signal;
    }

    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        let sinks = Arc::clone(&self.sinks);
        let name = self.name.clone();
        let refuse = self.refuse.clone();
        let hold = sinks.held.lock().unwrap().clone();
        let pressure = self.pressure.clone();
        sinks.started.fetch_add(1, Ordering::SeqCst);
        Ok(async move {
            if let Some(hold) = hold {
                let _ = hold.acquire().await;
            }
            let service = sinks.service_ms.load(Ordering::SeqCst);
            if service > 0 {
                let now = sinks.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                sinks.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let throttle = sinks.throttle_above.load(Ordering::SeqCst);
                if throttle > 0 && now > throttle {
                    pressure.signal();
                }
                tokio::time::sleep(Duration::from_millis(service)).await;
                sinks.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            if sinks.failing.load(Ordering::SeqCst) {
                return Err(PluginError::new("the server is down"));
            }
            let refused_here = |e: &Event| {
                refuse
                    .as_deref()
                    .is_some_and(|r| e.payload.as_ref() == r.as_bytes())
            };
            let refused: Vec<(usize, String)> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| refused_here(e))
                .map(|(i, _)| (i, "too big for the topic".to_owned()))
                .collect();
            sinks
                .written
                .lock()
                .unwrap()
                .entry(name)
                .or_default()
                .extend(events.iter().filter(|e| !refused_here(e)).cloned());
            if refused.is_empty() {
                Ok(())
            } else {
                Err(PluginError::refused("refused", refused))
            }
        }
        .boxed())
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        self.sinks.flushed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct CollectFactory {
    name: String,
    sinks: Arc<Sinks>,
    refuse: Option<String>,
}

impl SinkFactory for CollectFactory {
    fn create(&self, _: usize) -> Result<Box<dyn Sink>, PluginError> {
        Ok(Box::new(Collect {
            name: self.name.clone(),
            sinks: Arc::clone(&self.sinks),
            refuse: self.refuse.clone(),
            pressure: Backpressure::default(),
        }))
    }
}

#[async_trait]
impl Plugin for CollectPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Sink
    }
    fn name(&self) -> &'static str {
        "collect"
    }
    fn summary(&self) -> &'static str {
        "keeps what it writes"
    }
    fn settings_schema(&self) -> schemars::Schema {
        any_schema()
    }
    fn validate(&self, _: &toml::Table) -> Result<(), ConfigError> {
        Ok(())
    }
    async fn build(
        &self,
        settings: toml::Table,
        _: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        Ok(Component::Sink(Arc::new(CollectFactory {
            name: settings["sink"].as_str().unwrap().to_owned(),
            sinks: Arc::clone(&self.0),
            refuse: settings
                .get("refuse")
                .and_then(|r| r.as_str())
                .map(str::to_owned),
        })))
    }
}

/// A running topology and its handles.
pub struct Running {
    pub feeds: HashMap<String, mpsc::UnboundedSender<Feed>>,
    pub sinks: Arc<Sinks>,
    pub stages_made: Arc<AtomicUsize>,
    pub stop: CancellationToken,
    pub started: Started,
    pub metrics: Metrics,
}

impl Running {
    pub async fn start(text: &str, feeds: &[&str]) -> Self {
        let state = Arc::new(Feeds::default());
        let mut senders = HashMap::new();
        for name in feeds {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert((*name).to_owned(), tx);
            state
                .receivers
                .lock()
                .unwrap()
                .insert((*name).to_owned(), rx);
        }
        let sinks = Arc::new(Sinks::default());
        let stages_made = Arc::new(AtomicUsize::new(0));
        let mut registry = Registry::default();
        registry.plugin(Arc::new(FeedSourcePlugin(Arc::clone(&state))));
        registry.plugin(Arc::new(PassFactory(Arc::clone(&stages_made))));
        registry.plugin(Arc::new(CollectPlugin(Arc::clone(&sinks))));
        let loaded = Loaded::from_str("test.toml", text).unwrap();
        let plan = salesflow_host::topology::plan(&loaded, registry)
            .unwrap_or_else(|problems| panic!("{problems:#?}"));
        let mut metrics = Metrics::default();
        let runtime_metrics = RuntimeMetrics::register(&mut metrics);
        let stop = CancellationToken::new();
        let started = runtime::start(&plan, &mut metrics, &runtime_metrics, &stop)
            .await
            .unwrap();
        Self {
            feeds: senders,
            sinks,
            stages_made,
            stop,
            started,
            metrics,
        }
    }

    /// The metrics in the exposition format, as `/metrics` serves them.
    pub fn exposition(&self) -> String {
        salesflow_host::metrics::exposition(&self.metrics).unwrap()
    }

    /// Sends these events on a feed; the receiver hears the batch's outcome.
    pub fn send_events(
        &self,
        feed: &str,
        events: Vec<Event>,
        lane: u64,
    ) -> mpsc::UnboundedReceiver<Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.feeds[feed].send((events, lane, tx)).unwrap();
        rx
    }

    /// Sends events on a feed; the receiver hears the batch's outcome.
    pub fn send(
        &self,
        feed: &str,
        payloads: &[&str],
        lane: u64,
    ) -> mpsc::UnboundedReceiver<Status> {
        let events = payloads
            .iter()
            .map(|p| Event::new(p.as_bytes().to_vec()))
            .collect();
        self.send_events(feed, events, lane)
    }

    pub fn written(&self, sink: &str) -> Vec<String> {
        self.sinks
            .written
            .lock()
            .unwrap()
            .get(sink)
            .map(|events| {
                events
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops the sources and waits for every task and lane to end.
    pub async fn stop(mut self) -> Arc<Sinks> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(ended) = self.started.tasks.join_next().await {
                let (label, result) = ended.unwrap();
                assert!(result.is_ok(), "{label}: {result:?}");
            }
            self.started.lanes.close();
            self.started.lanes.wait().await;
        })
        .await
        .expect("everything stops");
        self.sinks
    }
}

/// The registry of the test plugins (for plans that are not run).
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    registry.plugin(Arc::new(FeedSourcePlugin(Arc::new(Feeds::default()))));
    registry.plugin(Arc::new(PassFactory(Arc::new(AtomicUsize::new(0)))));
    registry.plugin(Arc::new(CollectPlugin(Arc::new(Sinks::default()))));
    registry
}
