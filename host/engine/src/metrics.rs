//! The host's own metrics: per pipeline and component, what flows, how long it takes,
//! where it waits, and what fails.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use salesflow_plugin_api::OutputObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub pipeline: String,
    pub component: String,
    pub kind: String,
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub pipeline: String,
    pub component: String,
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub pipeline: String,
    pub component: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub pipeline: String,
    pub component: String,
    pub kind: String,
}

/// What a [`LiveGauge`] reads when scraped.
type Reading = Box<dyn Fn() -> i64 + Send + Sync>;

/// A gauge read when it is scraped, not set when something happens: how full a lane is
/// now. A lane's own events cannot keep such a gauge true — a sink stuck on its server
/// takes no batches while its channel and the ones before it fill, which is when the
/// reading matters.
#[derive(Clone, Default)]
pub struct LiveGauge(Arc<std::sync::RwLock<Option<Reading>>>);

impl LiveGauge {
    /// From now on, a scrape reads `reading`.
    pub fn read_with(&self, reading: impl Fn() -> i64 + Send + Sync + 'static) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(reading));
    }

    pub fn get(&self) -> i64 {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, |reading| reading())
    }
}

impl std::fmt::Debug for LiveGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveGauge({})", self.get())
    }
}

impl prometheus_client::metrics::TypedMetric for LiveGauge {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

impl prometheus_client::encoding::EncodeMetric for LiveGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

/// A time histogram from `from` seconds, each bucket a quarter wider than the last, so a
/// quantile read from it is within 25 % (doubling buckets put a Kafka write's p99
/// anywhere from 12.8 to 25.6 ms, no telling which side of a 10 ms target).
pub(crate) fn quarter_steps(from: f64, buckets: u16) -> Histogram {
    Histogram::new(exponential_buckets(from, 1.25, buckets))
}

fn histogram_seconds() -> Histogram {
    // 100 µs .. ~14 s
    quarter_steps(0.000_1, 54)
}

fn histogram_age() -> Histogram {
    // 1 ms .. ~70 s
    quarter_steps(0.001, 50)
}

fn histogram_sizes() -> Histogram {
    // 1 .. 32768 events
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Every runtime metric family, registered once per process.
#[derive(Clone)]
pub struct RuntimeMetrics {
    pub events_in: Family<NodeLabels, Counter>,
    pub events_out: Family<NodeLabels, Counter>,
    pub batches_in: Family<NodeLabels, Counter>,
    pub batch_size: Family<NodeLabels, Histogram, fn() -> Histogram>,
    pub processing_seconds: Family<NodeLabels, Histogram, fn() -> Histogram>,
    pub event_age_seconds: Family<NodeLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub channel_fill: Family<LaneLabels, LiveGauge>,
    pub channel_capacity: Family<LaneLabels, Gauge>,
    pub lane_bytes_held: Family<LaneLabels, LiveGauge>,
    pub lane_bytes_limit: Family<LaneLabels, Gauge>,
    pub send_wait_seconds: Family<NodeLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub sink_in_flight: Family<NodeLabels, Gauge>,
    pub sink_concurrency_limit: Family<LaneLabels, Gauge>,
    pub sink_backpressure: Family<LaneLabels, Counter>,
    pub sink_outcomes: Family<OutcomeLabels, Counter>,
    pub discarded: Family<NodeLabels, Counter>,
    pub dead_lettered: Family<NodeLabels, Counter>,
}

impl RuntimeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events_in: Family::default(),
            events_out: Family::default(),
            batches_in: Family::default(),
            batch_size: Family::new_with_constructor(histogram_sizes),
            processing_seconds: Family::new_with_constructor(histogram_seconds),
            event_age_seconds: Family::new_with_constructor(histogram_age),
            errors: Family::default(),
            channel_fill: Family::default(),
            channel_capacity: Family::default(),
            lane_bytes_held: Family::default(),
            lane_bytes_limit: Family::default(),
            send_wait_seconds: Family::default(),
            sink_in_flight: Family::default(),
            sink_concurrency_limit: Family::default(),
            sink_backpressure: Family::default(),
            sink_outcomes: Family::default(),
            discarded: Family::default(),
            dead_lettered: Family::default(),
        };
        registry.register(
            "salesflow_events_in",
            "Events a component received",
            m.events_in.clone(),
        );
        registry.register(
            "salesflow_events_out",
            "Events a component sent downstream",
            m.events_out.clone(),
        );
        registry.register(
            "salesflow_batches_in",
            "Batches a stage or sink received",
            m.batches_in.clone(),
        );
        registry.register(
            "salesflow_batch_size_events",
            "Events per batch received",
            m.batch_size.clone(),
        );
        registry.register(
            "salesflow_processing_seconds",
            "Time a stage spent on a batch, or a sink's write took until durable",
            m.processing_seconds.clone(),
        );
        registry.register(
            "salesflow_sink_event_age_seconds",
            "Age of each event a sink delivered, at the moment its write was durable: now minus the event's timestamp (when the HTTP source received it, or its Kafka record's timestamp, carried through stages). At the search-index sink, POST to queryable",
            m.event_age_seconds.clone(),
        );
        registry.register(
            "salesflow_errors",
            "Errors by component and kind",
            m.errors.clone(),
        );
        registry.register(
            "salesflow_channel_fill_batches",
            "Batches waiting in a lane's bounded input channel",
            m.channel_fill.clone(),
        );
        registry.register(
            "salesflow_channel_capacity_batches",
            "Capacity of a lane's bounded input channel",
            m.channel_capacity.clone(),
        );
        registry.register(
            "salesflow_lane_held_bytes",
            "Bytes of the batches a lane with buffer_bytes holds: waiting in its channel, and for a sink also being written",
            m.lane_bytes_held.clone(),
        );
        registry.register(
            "salesflow_lane_limit_bytes",
            "A lane's buffer_bytes: the most its batches may hold together before senders wait",
            m.lane_bytes_limit.clone(),
        );
        registry.register(
            "salesflow_send_wait_seconds",
            "Time spent waiting for room in a full downstream channel (backpressure)",
            m.send_wait_seconds.clone(),
        );
        registry.register(
            "salesflow_sink_in_flight_batches",
            "Sink writes not yet durable",
            m.sink_in_flight.clone(),
        );
        registry.register(
            "salesflow_sink_concurrency_limit",
            "Writes a sink lane may have in flight: fixed, or adapted to the server's round trips and back-pressure",
            m.sink_concurrency_limit.clone(),
        );
        registry.register(
            "salesflow_sink_backpressure",
            "Sink writes that met back-pressure: the server answered 429 or 503, timed out or was full, or the write failed back to its source",
            m.sink_backpressure.clone(),
        );
        registry.register(
            "salesflow_sink_batches",
            "Sink writes by outcome (delivered, failed)",
            m.sink_outcomes.clone(),
        );
        registry.register(
            "salesflow_dead_lettered_events",
            "Events a stage sent to a named output (rejected, invalid), bound for a dead-letter topic",
            m.dead_lettered.clone(),
        );
        registry.register(
            "salesflow_events_discarded",
            "Events a stage sent to an output nobody reads",
            m.discarded.clone(),
        );
        m
    }

    pub fn labels(pipeline: &str, component: &str, kind: &str, plugin: &str) -> NodeLabels {
        NodeLabels {
            pipeline: pipeline.to_owned(),
            component: component.to_owned(),
            kind: kind.to_owned(),
            plugin: plugin.to_owned(),
        }
    }
}

/// Counts what a component sends and how long it waited for room.
pub struct Observer {
    pub events_out: Counter,
    pub send_wait: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Observer {
    pub fn new(metrics: &RuntimeMetrics, labels: &NodeLabels) -> Arc<Self> {
        Arc::new(Self {
            events_out: metrics.events_out.get_or_create(labels).clone(),
            send_wait: metrics.send_wait_seconds.get_or_create(labels).clone(),
        })
    }
}

impl OutputObserver for Observer {
    fn sent(&self, events: usize, waited: Duration) {
        self.events_out.inc_by(events as u64);
        if waited > Duration::from_micros(50) {
            self.send_wait.inc_by(waited.as_secs_f64());
        }
    }
}

/// Encodes `registry` in the OpenMetrics text format with one family per metric name.
///
/// Every component registers its metrics in its own sub-registry (labelled with its
/// pipeline and component), and prometheus-client writes each registration as a family
/// of its own: two Kafka sinks would give `salesflow_kafka_produced_messages` two HELP and
/// TYPE headers, which the exposition formats forbid (promtool: "second HELP line for
/// metric name"). The samples of each name are gathered under its first headers, in the
/// order the names first appear; the label sets differ (pipeline, component), so no
/// series repeats.
///
/// # Errors
///
/// When the registry cannot be encoded.
pub fn exposition(registry: &Registry) -> Result<String, std::fmt::Error> {
    exposition_of(&[registry])
}

/// The same for several registries (the host's and each pipeline's), as one exposition.
pub fn exposition_of(registries: &[&Registry]) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    for registry in registries {
        prometheus_client::encoding::text::encode(&mut text, registry)?;
    }
    Ok(one_family_per_name(&text))
}

/// Gathers the families of `text` (OpenMetrics, possibly with a name's family split in
/// several places) so that each name has one set of headers followed by all its samples.
fn one_family_per_name(text: &str) -> String {
    struct Family<'a> {
        headers: Vec<&'a str>,
        samples: Vec<&'a str>,
    }
    let mut families: Vec<Family<'_>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        let header = ["# HELP ", "# TYPE ", "# UNIT "]
            .iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (&prefix[..6], rest)));
        if let Some((kind, rest)) = header {
            let name = rest.split(' ').next().unwrap_or(rest);
            let at = *index.entry(name).or_insert_with(|| {
                families.push(Family {
                    headers: Vec::new(),
                    samples: Vec::new(),
                });
                families.len() - 1
            });
            let family = &mut families[at];
            if !family.headers.iter().any(|h| h.starts_with(kind)) {
                family.headers.push(line);
            }
            current = Some(at);
        } else if let Some(at) = current {
            families[at].samples.push(line);
        } else {
            families.push(Family {
                headers: Vec::new(),
                samples: vec![line],
            });
        }
    }
    let mut out = String::with_capacity(text.len());
    for family in families {
        for line in family.headers.iter().chain(&family.samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod exposition_tests {
    use super::*;

    #[test]
    fn a_metric_registered_by_two_components_is_one_family() {
        let mut registry = Registry::default();
        for component in ["first", "second"] {
            let sub = registry.sub_registry_with_label(("component".into(), component.into()));
            let counter = Counter::<u64>::default();
            counter.inc();
            sub.register("salesflow_things", "Things done", counter);
            sub.register("salesflow_level", "A level", Gauge::<i64>::default());
        }
        let text = exposition(&registry).expect("encodes");
        assert_eq!(
            text.matches("# HELP salesflow_things ").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE salesflow_things ").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("# HELP salesflow_level ").count(), 1, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        // Each family's headers come first and its samples follow, together.
        let things: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("salesflow_things"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(things.len(), 4, "{text}");
        assert!(things.windows(2).all(|w| w[1] == w[0] + 1), "{text}");
        assert!(text.contains("salesflow_things_total{component=\"first\"} 1"));
        assert!(text.contains("salesflow_things_total{component=\"second\"} 1"));
        assert_eq!(lines.last(), Some(&"# EOF"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
