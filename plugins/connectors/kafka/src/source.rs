//! The Kafka source: a consumer group member whose partitions are processed in parallel,
//! each in order, with offsets committed only once every sink acknowledged them.
//!
//! Threads and tasks:
//! - one OS thread polls the consumer's main queue: it serves the group protocol
//!   (rebalance callbacks run on it) and commits acknowledged offsets every
//!   `commit_interval`;
//! - when a partition is assigned, its messages are split into their own queue and a
//!   task reads it: it groups what is available into a batch of up to
//!   `max_batch_records` or `max_batch_bytes`, sends it downstream on the partition's
//!   lane (waiting while the lane's bounded channel is full — backpressure), and tracks
//!   the batch's acknowledgement; acknowledgements are taken while it waits, so a full
//!   downstream never holds back the commit of what it already delivered;
//! - when a partition is revoked, the rebalance callback stops its task, lets it drain
//!   (its in-flight batches acknowledged, up to `drain_timeout`), and commits its final
//!   offset synchronously before the partition moves to another member.
//!
//! A batch that is acknowledged as not delivered stops its partition's commits at the
//! batch before it: nothing past an undelivered batch is ever committed. The partition
//! stops reading, lets its batches in flight settle, seeks back to the first undelivered
//! batch and, after a backoff (1 s doubling to a minute while failures repeat), reads it
//! again. Other partitions and pipelines go on; the process never exits for it, so a
//! record that keeps failing costs retries, not a crash loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{
    AckHandle, AckSet, Batch, CancellationToken, Event, Origin, Output, PluginError, Source,
    Status, async_trait,
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::KafkaSourceSettings;
use crate::group::GroupWatch;
use crate::metrics::SourceMetrics;

type PartitionKey = (Arc<str>, i32);

/// The source, built; `run` subscribes.
pub struct KafkaSource {
    pub(crate) consumer: Arc<StreamConsumer<SourceContext>>,
    pub(crate) shared: Arc<Shared>,
}

/// State shared by the consumer thread, the rebalance callbacks and the partition tasks.
pub(crate) struct Shared {
    name: String,
    settings: KafkaSourceSettings,
    topics: Vec<Arc<str>>,
    runtime: tokio::runtime::Handle,
    /// The consumer in use: replaced when its membership stalls.
    consumer: Mutex<Weak<StreamConsumer<SourceContext>>>,
    /// The group's state from the consumer's statistics, for the stall watch.
    group: Mutex<GroupWatch>,
    output: OnceLock<Output>,
    partitions: Mutex<HashMap<PartitionKey, PartitionHandle>>,
    /// Next offset to commit per partition, and whether it changed since the last commit.
    committable: Mutex<HashMap<PartitionKey, (i64, bool)>>,
    stopping: AtomicBool,
    /// The current consumer's generation (see [`SourceContext`]).
    generation: AtomicU64,
    /// Counts assignments, to stamp events with the one that delivered them.
    assignments: AtomicU64,
    fatal: CancellationToken,
    fatal_reason: Mutex<Option<String>>,
    metrics: Arc<SourceMetrics>,
    /// Whether the source is asking Kafka for end offsets (see [`Shared::ask_ends`]).
    asking_ends: AtomicBool,
}

struct PartitionHandle {
    stop: CancellationToken,
    /// Disconnected when the partition's task has finished draining.
    done: std::sync::mpsc::Receiver<()>,
}

/// The stall watch's probe client: its errors are the probe's answer, not log lines.
struct ProbeContext;

impl ClientContext for ProbeContext {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, _fac: &str, _log_message: &str) {}

    fn error(&self, _error: rdkafka::error::KafkaError, _reason: &str) {}
}

impl ConsumerContext for ProbeContext {}

/// The consumer's context: rebalance callbacks and client errors.
pub struct SourceContext {
    shared: Arc<Shared>,
    /// Which of the source's consumers this is: callbacks of a replaced one (still
    /// closing) must not touch the current one's partitions or group watch.
    generation: u64,
}

impl SourceContext {
    fn current(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) == self.generation
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.shared.metrics.error("client");
        warn!(source = %self.shared.name, %error, reason, "kafka client error");
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        if !self.current() {
            return;
        }
        let owned: std::collections::HashSet<(String, i32)> = self
            .shared
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        let waiting = self.shared.metrics.update(&statistics, &owned);
        if !waiting.is_empty() {
            Shared::ask_ends(&self.shared, waiting);
        }
        if let Some(group) = &statistics.cgrp {
            self.shared
                .group
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .observe(&group.state, &group.join_state, Instant::now());
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.current() {
            return;
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !self.current() {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.assign(tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(source = %self.shared.name, error = %e, "rebalance error"),
        }
    }
}

impl KafkaSource {
    pub(crate) fn new(
        name: String,
        settings: KafkaSourceSettings,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Self, PluginError> {
        let shared = Arc::new(Shared {
            name,
            topics: settings
                .topics
                .iter()
                .map(|t| Arc::from(t.as_str()))
                .collect(),
            settings,
            runtime: tokio::runtime::Handle::current(),
            consumer: Mutex::new(Weak::new()),
            group: Mutex::new(GroupWatch::new(Instant::now())),
            output: OnceLock::new(),
            partitions: Mutex::new(HashMap::new()),
            committable: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            assignments: AtomicU64::new(0),
            fatal: CancellationToken::new(),
            fatal_reason: Mutex::new(None),
            metrics,
            asking_ends: AtomicBool::new(false),
        });
        let consumer = shared.create_consumer()?;
        Ok(Self { consumer, shared })
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(
        self: Box<Self>,
        out: Output,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError> {
        let KafkaSource {
            mut consumer,
            shared,
        } = *self;
        let _ = shared.output.set(out);
        loop {
            let member = Member::start(&shared, consumer)?;
            let stalled = tokio::select! {
                () = shutdown.cancelled() => None,
                () = shared.fatal.cancelled() => None,
                reason = shared.stall() => Some(reason),
            };
            member.leave(&shared).await;
            let Some(reason) = stalled else { break };
            if shutdown.is_cancelled() {
                break;
            }
            // A new consumer joins as a new member; the offsets committed so far are where
            // its partitions start.
            shared.metrics.replaced.inc();
            warn!(source = %shared.name, %reason, "replacing the stalled consumer");
            consumer = shared.create_consumer()?;
        }

        let reason = shared
            .fatal_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match reason {
            Some(reason) => Err(PluginError::new(reason)),
            None => Ok(()),
        }
    }
}

/// One consumer's membership of the group: the consumer and the thread serving it.
struct Member {
    consumer: Arc<StreamConsumer<SourceContext>>,
    thread: std::thread::JoinHandle<()>,
    stop_thread: CancellationToken,
}

impl Member {
    fn start(
        shared: &Arc<Shared>,
        consumer: Arc<StreamConsumer<SourceContext>>,
    ) -> Result<Self, PluginError> {
        shared.stopping.store(false, Ordering::SeqCst);
        *shared
            .group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = GroupWatch::new(Instant::now());
        let topics: Vec<&str> = shared.settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| PluginError::context("subscribing", e))?;
        info!(source = %shared.name, topics = ?topics, group = %shared.settings.group_id, "kafka source subscribed");
        let stop_thread = CancellationToken::new();
        let thread = {
            let shared = Arc::clone(shared);
            let consumer = Arc::clone(&consumer);
            let stop = stop_thread.clone();
            std::thread::Builder::new()
                .name(format!("kafka-{}", shared.settings.group_id))
                .spawn(move || consumer_thread(&shared, &consumer, &stop))
                .map_err(|e| PluginError::context("starting the consumer thread", e))?
        };
        Ok(Self {
            consumer,
            thread,
            stop_thread,
        })
    }

    /// Stops taking input, lets every partition drain and commit its final offset, and
    /// closes the consumer (leaving the group). A consumer that does not close within
    /// `drain_timeout` + 30 s is left behind, so that a wedged client cannot hold the
    /// source (or the process's shutdown) for ever.
    async fn leave(self, shared: &Arc<Shared>) {
        shared.stopping.store(true, Ordering::SeqCst);
        let handles: Vec<(PartitionKey, PartitionHandle)> = shared
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        shared.metrics.assigned.set(0);
        for (_, handle) in &handles {
            handle.stop.cancel();
        }
        let Member {
            consumer,
            thread,
            stop_thread,
        } = self;
        let waiting = Arc::clone(shared);
        let closing = tokio::task::spawn_blocking(move || {
            let deadline = drain_deadline(&waiting);
            for (key, handle) in handles {
                wait_done(&waiting, &key, &handle, deadline);
            }
            // The consumer thread commits what was acknowledged, synchronously, and leaves.
            stop_thread.cancel();
            thread.thread().unpark();
            let _ = thread.join();
            // Closing the consumer leaves the group; it blocks, so not on a worker thread.
            drop(consumer);
        });
        let limit = shared.settings.drain_timeout * 2 + Duration::from_secs(35);
        match tokio::time::timeout(limit, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(source = %shared.name, error = %e, "closing the consumer failed"),
            Err(_) => error!(
                source = %shared.name,
                limit_s = limit.as_secs(),
                "the consumer did not close in time; it is left behind"
            ),
        }
        // What this member could not commit is read again by whoever owns the partition
        // next; a later member must not commit it for partitions it may not own.
        shared
            .committable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// When partitions stopped together must have drained by: they drain at the same time,
/// so one limit for them all (not one each, which a wedged sink would multiply).
fn drain_deadline(shared: &Shared) -> Instant {
    Instant::now() + shared.settings.drain_timeout + Duration::from_secs(5)
}

fn wait_done(shared: &Shared, key: &PartitionKey, handle: &PartitionHandle, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = handle.done.recv_timeout(left) {
        warn!(source = %shared.name, topic = %key.0, partition = key.1, "partition task did not finish draining");
    }
}

/// Wakes the consumer thread when librdkafka puts an event on the main queue.
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls the main queue (group protocol, callbacks) and commits acknowledged offsets.
///
/// The thread serves every event the moment it arrives: the queue's non-empty callback
/// unparks it, and it parks only when the queue is empty (at most until the next commit
/// is due). Rebalances, commit results and errors therefore never wait behind a polling
/// interval. No async timer: this thread must not depend on the runtime, which may be
/// stopping while it commits the last offsets.
fn consumer_thread(
    shared: &Arc<Shared>,
    consumer: &Arc<StreamConsumer<SourceContext>>,
    stop: &CancellationToken,
) {
    let interval = shared.settings.commit_interval;
    let mut next_commit = std::time::Instant::now() + interval;
    let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    // Messages never come here (each partition has its own queue); rebalance callbacks,
    // errors and statistics do.
    let mut events = consumer.stream();
    while !stop.is_cancelled() {
        let polled = match events.poll_next_unpin(&mut cx) {
            std::task::Poll::Ready(Some(message)) => {
                Some(message.map(|m| (m.topic().to_owned(), m.partition(), m.offset())))
            }
            // The stream of a live consumer never ends; an event was served (or none
            // is there) and the waker is armed.
            std::task::Poll::Ready(None) | std::task::Poll::Pending => None,
        };
        match polled {
            // Every assigned partition has its own queue; a message here was fetched before
            // its queue was split. Seek back so that the partition queue delivers it.
            Some(Ok((topic, partition, offset))) => {
                warn!(source = %shared.name, %topic, partition, offset, "message on the main queue; seeking the partition back to it");
                if let Err(e) = consumer.seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    shared.fail(format!(
                        "{topic}/{partition}: could not seek back to offset {offset}: {e}"
                    ));
                }
                continue;
            }
            Some(Err(e)) => {
                warn!(source = %shared.name, error = %e, "kafka consumer error");
                continue;
            }
            None => {}
        }
        let now = std::time::Instant::now();
        if now >= next_commit {
            shared.commit(consumer.as_ref(), CommitMode::Async, None);
            next_commit = now + interval;
        }
        // Woken at once by a new event (or by a wake that came while serving this one).
        std::thread::park_timeout(next_commit.saturating_duration_since(now));
    }
    drop(events);
    shared.commit(consumer.as_ref(), CommitMode::Sync, None);
}

impl Shared {
    /// Creates a consumer with this source's settings and makes it the current one.
    fn create_consumer(
        self: &Arc<Self>,
    ) -> Result<Arc<StreamConsumer<SourceContext>>, PluginError> {
        let consumer: StreamConsumer<SourceContext> = self
            .settings
            .client_config()
            .create_with_context(SourceContext {
                shared: Arc::clone(self),
                generation: self.generation.fetch_add(1, Ordering::SeqCst) + 1,
            })
            .map_err(|e| PluginError::context("creating the Kafka consumer", e))?;
        let consumer = Arc::new(consumer);
        *self
            .consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::downgrade(&consumer);
        Ok(consumer)
    }

    pub(crate) fn current_consumer(&self) -> Option<Arc<StreamConsumer<SourceContext>>> {
        self.consumer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .upgrade()
    }

    /// Why the member counts as stalled outside its group, if it does.
    pub(crate) fn stalled(&self) -> Option<String> {
        self.group
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stalled(Instant::now(), self.settings.stall_timeout())
    }

    /// Resolves once the member has stalled outside its group; keeps the metric current.
    ///
    /// While the coordinator is not up, the group's coordinator is asked every few seconds
    /// with a client made for the purpose (see [`Shared::probe`]): the consumer's own view
    /// cannot tell Kafka down from a client that lost its brokers for good.
    async fn stall(&self) -> String {
        const PROBE_EVERY: Duration = Duration::from_secs(5);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut next_probe = Instant::now();
        loop {
            tick.tick().await;
            let wants_probe = self
                .group
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .wants_probe();
            if wants_probe && Instant::now() >= next_probe {
                let answers = self.probe().await;
                next_probe = Instant::now() + PROBE_EVERY;
                self.group
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .probed(answers, Instant::now());
            }
            let now = Instant::now();
            let (outside, stalled) = {
                let group = self
                    .group
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (
                    group.unsteady_for(now),
                    group.stalled(now, self.settings.stall_timeout()),
                )
            };
            self.metrics
                .unsteady
                .set(i64::try_from(outside.as_secs()).unwrap_or(i64::MAX));
            if let Some(reason) = stalled {
                return reason;
            }
        }
    }

    /// Whether the group's coordinator answers a client other than the consumer: a fresh
    /// one (never subscribed, so not a member) reads the group's committed offset of the
    /// first topic's partition 0, which only the coordinator can answer. A coordinator
    /// that is itself unavailable (its `__consumer_offsets` partition without a leader)
    /// fails the probe: that is an outage, not a stuck client.
    async fn probe(&self) -> bool {
        const LIMIT: Duration = Duration::from_secs(4);
        let mut config = self.settings.client_config();
        config.set("statistics.interval.ms", "0");
        let topic = self.settings.topics.first().cloned().unwrap_or_default();
        let name = self.name.clone();
        // Making a client starts its threads, and dropping it waits for them.
        let probing = tokio::task::spawn_blocking(move || {
            let client: BaseConsumer<ProbeContext> = match config.create_with_context(ProbeContext)
            {
                Ok(client) => client,
                Err(e) => {
                    debug!(source = %name, error = %e, "could not make a probe client");
                    return false;
                }
            };
            let mut partition = TopicPartitionList::new();
            partition.add_partition(&topic, 0);
            client.committed_offsets(partition, LIMIT).is_ok()
        });
        // Bounded: a probe client whose close wedges is left to finish on its own thread;
        // the watch goes on.
        matches!(tokio::time::timeout(LIMIT * 3, probing).await, Ok(Ok(true)))
    }

    /// Asks Kafka for the end offsets of `partitions` (one request per leader) and hands
    /// them to the metrics, so the lag of a partition whose full prefetch queue stopped
    /// its fetches still grows with its topic. At most one request at a time; a failure
    /// leaves librdkafka's figures in place until the next statistics report. Not while
    /// the member is leaving: the request would hold the consumer it is closing.
    fn ask_ends(shared: &Arc<Self>, partitions: Vec<(String, i32)>) {
        if shared.stopping.load(Ordering::SeqCst) || shared.asking_ends.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let Some(consumer) = shared.current_consumer() else {
            shared.asking_ends.store(false, Ordering::SeqCst);
            return;
        };
        let asking = Arc::clone(shared);
        shared.runtime.spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in &partitions {
                // The timestamp "latest": Kafka answers with the partition's end offset.
                let _ = tpl.add_partition_offset(topic, *partition, Offset::End);
            }
            let limit = Duration::from_millis(u64::from(asking.settings.statistics_interval_ms))
                .clamp(Duration::from_secs(1), Duration::from_secs(10));
            match consumer.offsets_for_times(tpl, limit) {
                Ok(found) => {
                    let ends: Vec<(String, i32, i64)> = found
                        .elements()
                        .iter()
                        .filter(|e| e.error().is_ok())
                        .filter_map(|e| match e.offset() {
                            Offset::Offset(end) => Some((e.topic().to_owned(), e.partition(), end)),
                            _ => None,
                        })
                        .collect();
                    asking.metrics.asked_ends(&ends);
                }
                Err(e) => {
                    debug!(source = %asking.name, error = %e, "could not ask for end offsets");
                }
            }
            asking.asking_ends.store(false, Ordering::SeqCst);
        });
    }

    fn lane(&self, topic: &str, partition: i32) -> u64 {
        let topic_index = self.topics.iter().position(|t| &**t == topic).unwrap_or(0) as u64;
        (topic_index << 32) | u64::from(partition.unsigned_abs())
    }

    fn fail(&self, reason: String) {
        error!(source = %self.name, %reason, "kafka source failed");
        let mut slot = self
            .fatal_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.fatal.cancel();
    }

    /// Starts a task for each newly assigned partition, reading its own queue.
    fn assign(self: &Arc<Self>, tpl: &TopicPartitionList) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (Some(consumer), Some(output)) = (self.current_consumer(), self.output.get()) else {
            return;
        };
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for element in tpl.elements() {
            let topic: Arc<str> = self
                .topics
                .iter()
                .find(|t| &***t == element.topic())
                .cloned()
                .unwrap_or_else(|| Arc::from(element.topic()));
            let key = (Arc::clone(&topic), element.partition());
            if partitions.contains_key(&key) {
                continue;
            }
            let Some(queue) = consumer.split_partition_queue(element.topic(), element.partition())
            else {
                self.fail(format!(
                    "{}/{}: cannot split the partition queue",
                    key.0, key.1
                ));
                continue;
            };
            let stop = CancellationToken::new();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let task = PartitionTask {
                assignment: self.assignments.fetch_add(1, Ordering::Relaxed) + 1,
                shared: Arc::clone(self),
                topic,
                partition: element.partition(),
                queue,
                out: output.clone(),
                stop: stop.clone(),
                _done: done_tx,
            };
            info!(source = %self.name, topic = %key.0, partition = key.1, "partition assigned");
            self.metrics.rebalance("assign");
            self.runtime.spawn(task.run());
            partitions.insert(
                key,
                PartitionHandle {
                    stop,
                    done: done_rx,
                },
            );
        }
        self.metrics
            .assigned
            .set(i64::try_from(partitions.len()).unwrap_or(i64::MAX));
    }

    /// Stops the revoked partitions' tasks, waits for them to drain, and commits their
    /// final offsets before the group hands them to another member.
    fn revoke(&self, consumer: &BaseConsumer<SourceContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<(PartitionKey, PartitionHandle)> = {
            let mut partitions = self
                .partitions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tpl.elements()
                .iter()
                .filter_map(|e| {
                    let key = partitions
                        .keys()
                        .find(|(t, p)| &**t == e.topic() && *p == e.partition())
                        .cloned()?;
                    partitions.remove(&key).map(|h| (key, h))
                })
                .collect()
        };
        for (_, handle) in &revoked {
            handle.stop.cancel();
        }
        let deadline = drain_deadline(self);
        for (key, handle) in &revoked {
            wait_done(self, key, handle, deadline);
            self.metrics.rebalance("revoke");
            self.metrics.forget(&key.0, key.1);
            info!(source = %self.name, topic = %key.0, partition = key.1, "partition revoked and drained");
        }
        let keys: Vec<PartitionKey> = revoked.into_iter().map(|(k, _)| k).collect();
        self.commit(consumer, CommitMode::Sync, Some(&keys));
        let mut committable = self
            .committable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in &keys {
            committable.remove(key);
        }
    }

    /// Commits the offsets that advanced since the last commit (only `only`, if given).
    fn commit<C: Consumer<SourceContext>>(
        &self,
        consumer: &C,
        mode: CommitMode,
        only: Option<&[PartitionKey]>,
    ) {
        let mut tpl = TopicPartitionList::new();
        {
            let mut committable = self
                .committable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (key, (offset, dirty)) in committable.iter_mut() {
                if !*dirty || only.is_some_and(|keys| !keys.contains(key)) {
                    continue;
                }
                if tpl
                    .add_partition_offset(&key.0, key.1, Offset::Offset(*offset))
                    .is_ok()
                {
                    *dirty = false;
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.metrics.commits.inc();
                debug!(source = %self.name, partitions = tpl.count(), "offsets committed");
            }
            Err(e) => {
                self.metrics.error("commit");
                warn!(source = %self.name, error = %e, "offset commit failed; retrying at the next interval");
                let mut committable = self
                    .committable
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for element in tpl.elements() {
                    if let Some((_, dirty)) = committable
                        .iter_mut()
                        .find(|((t, p), _)| &**t == element.topic() && *p == element.partition())
                        .map(|(_, v)| v)
                    {
                        *dirty = true;
                    }
                }
            }
        }
    }

    fn set_committable(&self, key: &PartitionKey, offset: i64) {
        self.committable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), (offset, true));
    }
}

/// Acknowledged batches of a partition, in emission order: the offset after the last
/// batch of the delivered prefix is what may be committed.
#[derive(Default)]
pub(crate) struct OffsetTracker {
    next_id: u64,
    /// (batch id, first offset, offset after the batch, outcome once known)
    pending: VecDeque<(u64, i64, i64, Option<bool>)>,
    blocked: bool,
}

impl OffsetTracker {
    /// Records an emitted batch from `first` to before `next_offset`; returns its id.
    pub(crate) fn push(&mut self, first: i64, next_offset: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back((id, first, next_offset, None));
        id
    }

    /// Records a batch's outcome; returns the new committable offset if it advanced.
    pub(crate) fn ack(&mut self, id: u64, delivered: bool) -> Option<i64> {
        let front = self.pending.front()?.0;
        let index = usize::try_from(id.checked_sub(front)?).ok()?;
        if let Some(entry) = self.pending.get_mut(index) {
            entry.3 = Some(delivered);
        }
        let mut advanced = None;
        while !self.blocked {
            match self.pending.front() {
                Some(&(_, _, next, Some(true))) => {
                    advanced = Some(next);
                    self.pending.pop_front();
                }
                Some(&(_, _, _, Some(false))) => self.blocked = true,
                _ => break,
            }
        }
        advanced
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.pending.iter().filter(|e| e.3.is_none()).count()
    }

    /// Whether a batch failed: nothing after it may be committed until it is read again.
    pub(crate) fn failed(&self) -> bool {
        self.blocked
    }

    /// After a failure, once nothing is outstanding: the offset to read again from (the
    /// first undelivered batch's first offset); the tracker starts afresh.
    pub(crate) fn rewind(&mut self) -> Option<i64> {
        let from = self.pending.iter().find(|e| e.3 != Some(true)).map(|e| e.1);
        self.pending.clear();
        self.blocked = false;
        from
    }
}

struct PartitionTask {
    assignment: u64,
    shared: Arc<Shared>,
    topic: Arc<str>,
    partition: i32,
    queue: rdkafka::consumer::stream_consumer::StreamPartitionQueue<SourceContext>,
    out: Output,
    stop: CancellationToken,
    /// Dropped when the task ends: the revoke callback waits for that.
    _done: std::sync::mpsc::Sender<()>,
}

impl PartitionTask {
    async fn run(self) {
        let key: PartitionKey = (Arc::clone(&self.topic), self.partition);
        let lane = self.shared.lane(&self.topic, self.partition);
        let max = self.shared.settings.max_batch_records;
        let max_bytes = self.shared.settings.max_batch_bytes;
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(u64, Status)>();
        let mut tracker = OffsetTracker::default();
        // Failed batches in a row: the backoff before reading again grows with them.
        let mut failures: u32 = 0;

        loop {
            if tracker.failed() && tracker.outstanding() == 0 {
                // Every batch in flight has settled: read again from the first
                // undelivered one, after a backoff.
                let Some(from) = tracker.rewind() else {
                    continue;
                };
                failures = failures.saturating_add(1);
                if !self.redeliver(from, failures).await {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                Some((id, status)) = ack_rx.recv() => {
                    self.on_ack(&key, &mut tracker, &mut failures, id, &status);
                }
                message = self.queue.recv(), if !tracker.failed() => {
                    let first = match message {
                        Ok(m) => to_event(&m, &self.topic, self.assignment),
                        Err(e) => {
                            self.shared.metrics.error("fetch");
                            warn!(source = %self.shared.name, topic = %self.topic, partition = self.partition, error = %e, "fetch error");
                            continue;
                        }
                    };
                    let start = offset_of(&first);
                    let mut last = start;
                    let mut bytes = first.payload.len();
                    let mut events = Vec::with_capacity(max.min(1024));
                    events.push(first);
                    // Take what is already fetched, up to the batch limits, without waiting.
                    while events.len() < max && bytes < max_bytes {
                        match self.queue.recv().now_or_never() {
                            Some(Ok(m)) => {
                                let event = to_event(&m, &self.topic, self.assignment);
                                last = offset_of(&event);
                                bytes += event.payload.len();
                                events.push(event);
                            }
                            Some(Err(e)) => {
                                self.shared.metrics.error("fetch");
                            warn!(source = %self.shared.name, topic = %self.topic, partition = self.partition, error = %e, "fetch error");
                                break;
                            }
                            None => break,
                        }
                    }
                    let id = tracker.push(start, last + 1);
                    let tx = ack_tx.clone();
                    let ack = AckHandle::new(move |status| {
                        let _ = tx.send((id, status));
                    });
                    let batch = Batch::new(events, AckSet::one(ack), lane);
                    let sending = self.out.send(batch);
                    tokio::pin!(sending);
                    let sent = loop {
                        tokio::select! {
                            biased;
                            sent = &mut sending => break sent.is_ok(),
                            // Stopped while downstream is full: the batch is dropped unsent,
                            // so it is never committed and will be consumed again.
                            () = self.stop.cancelled() => break false,
                            // Batches sent before still settle while this one waits for
                            // room, so their offsets are committed on time.
                            Some((id, status)) = ack_rx.recv() => {
                                self.on_ack(&key, &mut tracker, &mut failures, id, &status);
                            }
                        }
                    };
                    if !sent {
                        break;
                    }
                }
            }
        }

        // Drain: wait for the batches in flight, then leave the final offset to commit.
        let deadline = tokio::time::Instant::now() + self.shared.settings.drain_timeout;
        while tracker.outstanding() > 0 {
            if let Ok(Some((id, status))) = tokio::time::timeout_at(deadline, ack_rx.recv()).await {
                self.on_ack(&key, &mut tracker, &mut failures, id, &status);
            } else {
                warn!(
                    source = %self.shared.name,
                    topic = %self.topic,
                    partition = self.partition,
                    outstanding = tracker.outstanding(),
                    "drain timeout: unacknowledged batches will be consumed again"
                );
                break;
            }
        }
    }

    /// Backs off, then seeks the partition back to `from`; false when stopped meanwhile.
    async fn redeliver(&self, from: i64, failures: u32) -> bool {
        let backoff = Duration::from_secs(1)
            .saturating_mul(1 << failures.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        self.shared.metrics.redeliveries.inc();
        self.shared.metrics.retrying.inc();
        warn!(
            source = %self.shared.name,
            topic = %self.topic,
            partition = self.partition,
            offset = from,
            failures,
            backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "a batch failed; reading the partition again from it after a backoff"
        );
        let stopped = tokio::select! {
            () = self.stop.cancelled() => true,
            () = tokio::time::sleep(backoff) => false,
        };
        self.shared.metrics.retrying.dec();
        if stopped {
            return false;
        }
        let Some(consumer) = self.shared.current_consumer() else {
            return false;
        };
        let (topic, partition) = (self.topic.to_string(), self.partition);
        let sought = tokio::task::spawn_blocking(move || {
            consumer.seek(
                &topic,
                partition,
                Offset::Offset(from),
                Duration::from_secs(10),
            )
        })
        .await;
        match sought {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                // The partition may be on its way to another member; if it stays, the next
                // failure comes back here.
                warn!(source = %self.shared.name, topic = %self.topic, partition = self.partition, error = %e, "seeking back failed");
                self.shared.metrics.error("fetch");
                true
            }
            Err(e) => {
                warn!(source = %self.shared.name, error = %e, "seeking back did not finish");
                true
            }
        }
    }

    /// Settles batch `id`: its offsets become committable once every batch before it is
    /// delivered; a delivery while no batch is failed ends a run of failures.
    fn on_ack(
        &self,
        key: &PartitionKey,
        tracker: &mut OffsetTracker,
        failures: &mut u32,
        id: u64,
        status: &Status,
    ) {
        if status.is_delivered() && !tracker.failed() {
            *failures = 0;
        }
        if let Some(offset) = tracker.ack(id, status.is_delivered()) {
            self.shared.set_committable(key, offset);
        }
        if !status.is_delivered() && !self.stop.is_cancelled() {
            warn!(
                source = %self.shared.name,
                topic = %self.topic,
                partition = self.partition,
                status = ?status,
                "a batch was not delivered; offsets stop before it and it will be read again"
            );
        }
    }
}

fn offset_of(event: &Event) -> i64 {
    match event.origin {
        Origin::Kafka { offset, .. } => offset,
        _ => 0,
    }
}

fn to_event(message: &BorrowedMessage<'_>, topic: &Arc<str>, assignment: u64) -> Event {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Event {
        key: message.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        headers,
        timestamp_ms: message.timestamp().to_millis(),
        origin: Origin::Kafka {
            topic: Arc::clone(topic),
            partition: message.partition(),
            offset: message.offset(),
            assignment,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetTracker;

    #[test]
    fn commits_only_the_delivered_prefix() {
        let mut t = OffsetTracker::default();
        let a = t.push(0, 10);
        let b = t.push(10, 20);
        let c = t.push(20, 30);
        assert_eq!(t.ack(b, true), None, "b is done but a is not");
        assert_eq!(t.ack(a, true), Some(20), "a and b now form the prefix");
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.ack(c, true), Some(30));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn an_undelivered_batch_blocks_everything_after_it_and_is_read_again() {
        let mut tracker = OffsetTracker::default();
        let first = tracker.push(0, 10);
        let failed = tracker.push(10, 20);
        let after = tracker.push(20, 30);
        assert_eq!(tracker.ack(first, true), Some(10));
        assert_eq!(tracker.ack(failed, false), None);
        assert!(tracker.failed());
        assert_eq!(
            tracker.ack(after, true),
            None,
            "nothing past an undelivered batch"
        );
        assert_eq!(
            tracker.rewind(),
            Some(10),
            "read again from its first offset"
        );
        assert!(!tracker.failed());
        let again = tracker.push(10, 30);
        assert_eq!(tracker.ack(again, true), Some(30));
    }

    /// The stall watch's probe against the local stack's Kafka (`SALESFLOW_KAFKA_BOOTSTRAP`,
    /// default 127.0.0.1:9092; the test suite runs with the stack up): the group's
    /// coordinator answers it; at a port nothing listens on, it fails.
    #[tokio::test]
    async fn the_probe_reaches_a_live_coordinator_and_fails_without_one() {
        use salesflow_plugin_api::{Settings, toml};

        let source = |bootstrap: &str| {
            let settings = crate::config::KafkaSourceSettings::from_table(
                &toml::from_str(&format!(
                    "bootstrap_servers = \"{bootstrap}\"\ntopics = [\"probe-test\"]\n\
                     group_id = \"probe-test-{}\"",
                    uuid::Uuid::new_v4()
                ))
                .unwrap(),
            )
            .unwrap();
            let metrics = std::sync::Arc::new(crate::metrics::SourceMetrics::register(
                &mut prometheus_client::registry::Registry::default(),
            ));
            super::KafkaSource::new("test/probe".into(), settings, metrics).unwrap()
        };
        let live =
            std::env::var("SALESFLOW_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
        assert!(source(&live).shared.probe().await, "no answer from {live}");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!source(&format!("127.0.0.1:{port}")).shared.probe().await);
    }

    /// A partition whose prefetch queue is full is not fetched, so librdkafka's own high
    /// watermark for it stops where its last fetch left it. Against the local stack's
    /// Kafka: a source holding a full queue (its lane not read after the first batch) goes
    /// on reporting the lag Kafka itself gives while more records arrive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lag_follows_the_topic_while_a_full_prefetch_queue_stops_fetching() {
        use super::{Arc, CancellationToken, Duration, KafkaSource, Output, Status, mpsc};
        use prometheus_client::metrics::{family::Family, gauge::Gauge};
        use salesflow_plugin_api::{Downstream, Settings, Source, toml};
        use salesflow_testkit as kit;

        let topic = kit::unique("lag-full-queue");
        let group = kit::unique("lag-full-queue");
        kit::create_topic(&topic, 1).await;
        let pad = "x".repeat(1000);
        kit::produce(&topic, 200, 1, |_| format!(",\"pad\":\"{pad}\"")).await;

        let settings = crate::config::KafkaSourceSettings::from_table(
            &toml::from_str(&format!(
                "bootstrap_servers = \"{}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\n\
                 auto_offset_reset = \"earliest\"\nmax_batch_records = 10\n\
                 commit_interval = \"100ms\"\nstatistics_interval_ms = 200\n\
                 [properties]\n\"queued.max.messages.kbytes\" = \"1\"",
                kit::bootstrap()
            ))
            .unwrap(),
        )
        .unwrap();
        let metrics = Arc::new(crate::metrics::SourceMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
        ));
        let source = KafkaSource::new("test/lag".into(), settings, Arc::clone(&metrics)).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let probe = tx.clone();
        let out = Output::new(vec![Downstream::new(vec![tx])], None);
        let stop = CancellationToken::new();
        let running = tokio::spawn(Box::new(source).run(out, stop.clone()));

        let labels = crate::metrics::PartitionLabels {
            topic: topic.clone(),
            partition: "0".into(),
        };
        let reported = |family: &Family<crate::metrics::PartitionLabels, Gauge>| {
            family.get(&labels).map(|g| g.get())
        };
        let wait_until = |what: &str, condition: &dyn Fn() -> bool| {
            kit::wait_for(what, Duration::from_secs(30), condition);
        };

        // The first batch holds what librdkafka had fetched when it was cut (with a 1 KiB
        // queue, maybe fewer than `max_batch_records`). It is delivered once the second
        // batch fills the channel, so the source is waiting for room to send a third: the
        // group must get a committed offset all the same. Nothing after it is read, so the
        // partition's queue stays full.
        let first = rx.recv().await.expect("a first batch");
        let n = i64::try_from(first.len()).unwrap();
        assert!((1..=10).contains(&n), "a first batch of {n} records");
        tokio::task::block_in_place(|| {
            wait_until("a second batch in the channel", &|| probe.capacity() == 0);
        });
        drop(probe);
        first.finish(&Status::Delivered);
        tokio::task::block_in_place(|| {
            wait_until("the first batch's offset committed and reported", &|| {
                reported(&metrics.committed) == Some(n) && reported(&metrics.lag) == Some(200 - n)
            });
        });

        kit::produce(&topic, 1000, 1, |_| String::new()).await;
        tokio::task::block_in_place(|| {
            let (committed, end) = kit::committed_and_end(&topic, &group);
            assert_eq!((committed[&0], end[&0]), (n, 1200), "Kafka's own view");
            wait_until(
                "a lag of 1200 less the first batch, as Kafka has it",
                &|| {
                    reported(&metrics.lag) == Some(1200 - n)
                        && reported(&metrics.high_watermark) == Some(1200)
                },
            );
        });

        stop.cancel();
        drop(rx);
        running.await.unwrap().unwrap();
        kit::delete_topics(&[&topic]).await;
    }
}
