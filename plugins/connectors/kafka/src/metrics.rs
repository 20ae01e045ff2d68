//! Kafka metrics: per topic-partition offsets and lag from librdkafka's statistics, and
//! the source's and sink's own counts. Registered in the component's registry, so every
//! series also carries `pipeline` and `component`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rdkafka::Statistics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The Kafka API, as librdkafka names it (`Produce`, `Fetch`, `OffsetCommit`, ...).
    pub request: String,
}

/// Requests the client sent to Kafka, by API, from librdkafka's per-broker counts: the
/// unit Kafka's CPU goes by when batches are small (a produce or fetch costs the broker
/// about the same for one record as for dozens), so requests per order say what the
/// pipeline asks of Kafka.
pub struct RequestCounts {
    family: Family<RequestLabels, Counter>,
    /// The last cumulative count per (broker, API): librdkafka reports totals since the
    /// client started.
    last: Mutex<HashMap<(String, String), u64>>,
}

impl RequestCounts {
    pub fn register(registry: &mut Registry) -> Self {
        let family = Family::<RequestLabels, Counter>::default();
        registry.register(
            "salesflow_kafka_requests",
            "Requests sent to the Kafka brokers by API (librdkafka's per-broker counts)",
            family.clone(),
        );
        Self {
            family,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one statistics report. A count lower than the last one is a new client
    /// (e.g. a replaced consumer) counting from zero again.
    pub fn observe(&self, statistics: &Statistics) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for broker in statistics.brokers.values() {
            for (request, count) in &broker.req {
                let Ok(count) = u64::try_from(*count) else {
                    continue;
                };
                // Per client too: a sink's producers each count from zero.
                let key = (
                    format!("{}/{}", statistics.name, broker.name),
                    request.clone(),
                );
                let before = last.insert(key, count).unwrap_or(0);
                let added = if count >= before {
                    count - before
                } else {
                    count
                };
                if added > 0 {
                    self.family
                        .get_or_create(&RequestLabels {
                            request: request.clone(),
                        })
                        .inc_by(added);
                }
            }
        }
    }
}

/// The consumer side.
pub struct SourceMetrics {
    pub lag: Family<PartitionLabels, Gauge>,
    pub committed: Family<PartitionLabels, Gauge>,
    pub position: Family<PartitionLabels, Gauge>,
    pub high_watermark: Family<PartitionLabels, Gauge>,
    pub errors: Family<KindLabels, Counter>,
    pub commits: Counter,
    pub rebalances: Family<KindLabels, Counter>,
    pub assigned: Gauge,
    /// Times a partition went back to its first undelivered batch after a failure.
    pub redeliveries: Counter,
    /// Partitions waiting to deliver a failed batch again.
    pub retrying: Gauge,
    /// Seconds the member has been out of a steady group with the coordinator up, or
    /// without a coordinator while the group's coordinator answers a probe client.
    pub unsteady: Gauge,
    /// Consumers replaced because the member stalled outside its group.
    pub replaced: Counter,
    pub requests: RequestCounts,
    /// Each owned partition's offsets as last reported, with the end offset the source
    /// asked Kafka for itself (see [`SourceMetrics::update`]).
    ends: Mutex<HashMap<PartitionLabels, Ends>>,
}

/// One partition's offsets behind its lag and high-watermark series.
#[derive(Clone, Copy, Debug)]
struct Ends {
    /// librdkafka's high watermark (-1 unknown).
    high: i64,
    /// The committed offset librdkafka's lag was taken from, and the end offset it was
    /// taken to (-1 when it reported no lag).
    committed: i64,
    end: i64,
    /// The end offset Kafka gave the source when asked, newer than `high` (-1 none).
    asked: i64,
}

impl Ends {
    const UNKNOWN: Self = Self {
        high: -1,
        committed: -1,
        end: -1,
        asked: -1,
    };

    /// The high watermark and the lag to report: librdkafka's, or taken to the end offset
    /// the source asked for when that is newer.
    fn reported(&self) -> (Option<i64>, Option<i64>) {
        let high = self.high.max(self.asked);
        let lag = (self.end >= 0).then(|| self.end.max(self.asked) - self.committed);
        ((high >= 0).then_some(high), lag)
    }
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            lag: Family::default(),
            committed: Family::default(),
            position: Family::default(),
            high_watermark: Family::default(),
            errors: Family::default(),
            commits: Counter::default(),
            rebalances: Family::default(),
            assigned: Gauge::default(),
            redeliveries: Counter::default(),
            retrying: Gauge::default(),
            unsteady: Gauge::default(),
            replaced: Counter::default(),
            requests: RequestCounts::register(registry),
            ends: Mutex::new(HashMap::new()),
        };
        // Every kind exists from the start, at zero: an error rate is then 0, not absent.
        for kind in ["fetch", "commit", "client"] {
            m.error_counter(kind);
        }
        for kind in ["assign", "revoke"] {
            drop(m.rebalances.get_or_create(&KindLabels {
                kind: kind.to_owned(),
            }));
        }
        registry.register(
            "salesflow_kafka_consumer_lag",
            "Messages between a partition's high watermark and the group's committed offset",
            m.lag.clone(),
        );
        registry.register(
            "salesflow_kafka_committed_offset",
            "The group's committed offset of a partition",
            m.committed.clone(),
        );
        registry.register(
            "salesflow_kafka_current_offset",
            "The next offset the source will read from a partition",
            m.position.clone(),
        );
        registry.register(
            "salesflow_kafka_high_watermark",
            "A partition's high watermark (end offset)",
            m.high_watermark.clone(),
        );
        registry.register(
            "salesflow_kafka_consumer_errors",
            "Consumer errors by kind (fetch, commit, client)",
            m.errors.clone(),
        );
        registry.register(
            "salesflow_kafka_commits",
            "Successful offset commits",
            m.commits.clone(),
        );
        registry.register(
            "salesflow_kafka_rebalances",
            "Rebalance events by kind (assign, revoke)",
            m.rebalances.clone(),
        );
        registry.register(
            "salesflow_kafka_assigned_partitions",
            "Partitions assigned to this source",
            m.assigned.clone(),
        );
        registry.register(
            "salesflow_kafka_redeliveries",
            "Times a partition was read again from its first undelivered batch after a batch failed",
            m.redeliveries.clone(),
        );
        registry.register(
            "salesflow_kafka_retrying_partitions",
            "Partitions backing off before delivering a failed batch again",
            m.retrying.clone(),
        );
        registry.register(
            "salesflow_kafka_group_unsteady_seconds",
            "Seconds the source has been out of a steady consumer group while Kafka answers (coordinator up, or none while a probe client reaches the group's coordinator)",
            m.unsteady.clone(),
        );
        registry.register(
            "salesflow_kafka_consumer_replacements",
            "Consumers the source replaced because it stayed out of its group past group_stall_timeout",
            m.replaced.clone(),
        );
        m
    }

    fn error_counter(&self, kind: &str) -> Counter {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .clone()
    }

    pub fn error(&self, kind: &str) {
        self.error_counter(kind).inc();
    }

    pub fn rebalance(&self, kind: &str) {
        self.rebalances
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Updates the per-partition series from statistics, for the partitions this source
    /// has (`owned`). Returns the owned partitions with records waiting in their prefetch
    /// queues: librdkafka learns a partition's high watermark from its fetches, and a
    /// queue that is full stops them, so for these its watermark (and the lag taken from
    /// it) may be stale. The source asks Kafka for their end offsets and hands them to
    /// [`SourceMetrics::asked_ends`].
    pub fn update(&self, stats: &Statistics, owned: &HashSet<(String, i32)>) -> Vec<(String, i32)> {
        self.requests.observe(stats);
        let mut waiting = Vec::new();
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic_name, topic) in &stats.topics {
            for (id, p) in &topic.partitions {
                if *id < 0 || !owned.contains(&(topic_name.clone(), *id)) {
                    continue;
                }
                let labels = PartitionLabels {
                    topic: topic_name.clone(),
                    partition: id.to_string(),
                };
                // librdkafka reports -1 (or -1001) when it does not know yet.
                if p.committed_offset >= 0 {
                    self.committed
                        .get_or_create(&labels)
                        .set(p.committed_offset);
                }
                if p.next_offset >= 0 {
                    self.position.get_or_create(&labels).set(p.next_offset);
                }
                let (committed, end) = if p.consumer_lag >= 0 {
                    (p.committed_offset, p.committed_offset + p.consumer_lag)
                } else {
                    (-1, -1)
                };
                let entry = ends.entry(labels.clone()).or_insert(Ends::UNKNOWN);
                // What was asked is only kept while it is newer than what the fetches
                // bring, and while the queue has records (an empty one is being fetched).
                let asked = if p.fetchq_cnt > 0 && entry.asked > p.hi_offset.max(end) {
                    entry.asked
                } else {
                    -1
                };
                *entry = Ends {
                    high: p.hi_offset,
                    committed,
                    end,
                    asked,
                };
                self.publish(&labels, *entry);
                if p.fetchq_cnt > 0 {
                    waiting.push((topic_name.clone(), *id));
                }
            }
        }
        waiting
    }

    /// Takes the end offsets Kafka gave for partitions this source has.
    pub fn asked_ends(&self, found: &[(String, i32, i64)]) {
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, partition, end) in found {
            let labels = PartitionLabels {
                topic: topic.clone(),
                partition: partition.to_string(),
            };
            // A partition revoked meanwhile has no entry, and gets none.
            if let Some(entry) = ends.get_mut(&labels)
                && *end > entry.asked
            {
                entry.asked = *end;
                self.publish(&labels, *entry);
            }
        }
    }

    fn publish(&self, labels: &PartitionLabels, ends: Ends) {
        let (high, lag) = ends.reported();
        if let Some(high) = high {
            self.high_watermark.get_or_create(labels).set(high);
        }
        if let Some(lag) = lag {
            self.lag.get_or_create(labels).set(lag);
        }
    }

    /// Drops a revoked partition's series: another member reports it now.
    pub fn forget(&self, topic: &str, partition: i32) {
        let labels = PartitionLabels {
            topic: topic.to_owned(),
            partition: partition.to_string(),
        };
        self.lag.remove(&labels);
        self.committed.remove(&labels);
        self.position.remove(&labels);
        self.high_watermark.remove(&labels);
        self.ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&labels);
    }
}

/// The producer side.
pub struct SinkMetrics {
    pub delivered: Counter,
    pub failed: Counter,
    /// Producers made afresh after their messages timed out.
    pub renewed: Counter,
    pub in_flight: Gauge,
    pub queue: Gauge,
    pub errors: Family<KindLabels, Counter>,
    /// Per broker, from librdkafka's last statistics window: how long messages waited in
    /// the producer before they were sent (linger included), and produce requests'
    /// round trips to the broker.
    pub latency: Family<LatencyLabels, Gauge<f64, AtomicU64>>,
    pub requests: RequestCounts,
    /// Each producer's last report, by client name (a sink has `producers` of them): the
    /// queue gauge is their sum, each latency gauge their highest.
    clients: Mutex<HashMap<String, ClientView>>,
}

/// What one producer's last statistics said.
struct ClientView {
    at: std::time::Instant,
    queue: i64,
    latency: HashMap<LatencyLabels, f64>,
}

/// A producer not heard of for this long is gone (renewed or closed): its last report no
/// longer counts.
const CLIENT_GONE: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub broker: String,
    /// `queue` (librdkafka's `int_latency`) or `broker` (its rtt).
    pub stage: String,
    /// `50` or `99` (not `quantile`: that label belongs to summaries, and this is a gauge
    /// of librdkafka's own window).
    pub percentile: String,
}

impl SinkMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            delivered: Counter::default(),
            failed: Counter::default(),
            renewed: Counter::default(),
            in_flight: Gauge::default(),
            queue: Gauge::default(),
            errors: Family::default(),
            latency: Family::default(),
            requests: RequestCounts::register(registry),
            clients: Mutex::new(HashMap::new()),
        };
        // Every kind exists from the start, at zero: an error rate is then 0, not absent.
        for kind in ["client", "unconfirmed"] {
            drop(m.errors.get_or_create(&KindLabels { kind: kind.into() }));
        }
        registry.register(
            "salesflow_kafka_producer_latency_seconds",
            "Producer latency per broker over librdkafka's last statistics window: stage=queue is the wait before a message is sent (linger included), stage=broker a produce request's round trip",
            m.latency.clone(),
        );
        registry.register(
            "salesflow_kafka_produced_messages",
            "Messages acknowledged by the brokers",
            m.delivered.clone(),
        );
        registry.register(
            "salesflow_kafka_produce_failures",
            "Messages whose delivery failed",
            m.failed.clone(),
        );
        registry.register(
            "salesflow_kafka_producer_renewals",
            "Producers made afresh because their messages timed out (a stuck client, see the sink's docs)",
            m.renewed.clone(),
        );
        registry.register(
            "salesflow_kafka_producer_in_flight_messages",
            "Messages handed to the producer and not yet reported",
            m.in_flight.clone(),
        );
        registry.register(
            "salesflow_kafka_producer_queue_messages",
            "Messages in the producer's queues (librdkafka msg_cnt)",
            m.queue.clone(),
        );
        registry.register(
            "salesflow_kafka_producer_errors",
            "Producer errors by kind (client: reported by librdkafka; unconfirmed: a delivery reported without an offset, written again)",
            m.errors.clone(),
        );
        m
    }

    /// Takes one producer's statistics report: its queue length, and each broker's
    /// latency quantiles when its window saw any request (an idle window keeps the last
    /// ones). The gauges then show all the sink's producers: queues summed, latencies at
    /// the highest.
    pub fn observe(&self, statistics: &Statistics) {
        self.requests.observe(statistics);
        let now = std::time::Instant::now();
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients.retain(|_, c| now.duration_since(c.at) < CLIENT_GONE);
        let view = clients
            .entry(statistics.name.clone())
            .or_insert_with(|| ClientView {
                at: now,
                queue: 0,
                latency: HashMap::new(),
            });
        view.at = now;
        view.queue = i64::try_from(statistics.msg_cnt).unwrap_or(i64::MAX);
        for broker in statistics.brokers.values().filter(|b| b.nodeid >= 0) {
            for (stage, window) in [("queue", &broker.int_latency), ("broker", &broker.rtt)] {
                let Some(window) = window.as_ref().filter(|w| w.cnt > 0) else {
                    continue;
                };
                for (percentile, micros) in [("50", window.p50), ("99", window.p99)] {
                    #[allow(clippy::cast_precision_loss)] // microseconds, far below 2^52
                    let seconds = micros as f64 / 1e6;
                    view.latency.insert(
                        LatencyLabels {
                            broker: broker.nodeid.to_string(),
                            stage: stage.to_owned(),
                            percentile: percentile.to_owned(),
                        },
                        seconds,
                    );
                }
            }
        }
        self.queue.set(clients.values().map(|c| c.queue).sum());
        let mut highest: HashMap<&LatencyLabels, f64> = HashMap::new();
        for (labels, seconds) in clients.values().flat_map(|c| &c.latency) {
            let h = highest.entry(labels).or_insert(*seconds);
            *h = h.max(*seconds);
        }
        for (labels, seconds) in highest {
            self.latency.get_or_create(labels).set(seconds);
        }
    }
}
