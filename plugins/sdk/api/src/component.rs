//! Sources, stages and sinks: the three kinds of component, and the output handle sources
//! send through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
pub use tokio_util::sync::CancellationToken;

use crate::event::{Batch, Event};

/// An error inside a component. Plugins say what failed and with which input, and
/// whether trying again can help: by default it can (a server down, a timeout) — the
/// batch goes back to its source, which delivers it again later. A sink that knows some
/// events can never be written (too large for the topic, refused by the index's
/// mapping) says which with [`PluginError::refused`]: those become dead letters when the
/// sink's `failed` output is read, and the rest of the batch counts as written.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// What an operator reads: what failed, and why.
    pub message: String,
    /// Events refused for good, if any.
    pub refused: Option<Refused>,
    /// The error underneath, kept for its chain.
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Which events of a write were refused for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every event of the write (the error's message says why).
    All,
    /// These events, by position in the write, each with why; the others were written.
    Some(Vec<(usize, String)>),
}

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            refused: None,
            source: None,
        }
    }

    /// Wraps an error with a line of context (`context: error`), keeping it as the
    /// source.
    pub fn context(
        context: impl std::fmt::Display,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let error = error.into();
        Self {
            message: format!("{context}: {error}"),
            refused: None,
            source: Some(error),
        }
    }

    /// Every event of the write is refused for good: writing it again cannot help.
    pub fn refused_all(message: impl Into<String>) -> Self {
        Self {
            refused: Some(Refused::All),
            ..Self::new(message)
        }
    }

    /// Some events are refused for good (position in the write, why); the others were
    /// written.
    pub fn refused(message: impl Into<String>, events: Vec<(usize, String)>) -> Self {
        Self {
            refused: Some(Refused::Some(events)),
            ..Self::new(message)
        }
    }

    /// Whether trying the same write again cannot help.
    pub fn is_permanent(&self) -> bool {
        self.refused.is_some()
    }
}

/// Produces batches: an HTTP endpoint, a Kafka consumer group.
///
/// `run` sends batches through `out` until `shutdown` is cancelled; then it stops taking
/// new input, waits (within the host's grace period) for the batches it emitted to be
/// acknowledged, settles them (the Kafka source commits their offsets), and returns.
#[async_trait]
pub trait Source: Send + 'static {
    async fn run(
        self: Box<Self>,
        out: Output,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError>;
}

/// Transforms batches. One instance serves one lane, so its calls never overlap and it
/// sees the batches of its lane in order.
///
/// A stage pushes what it emits into `out`; emitted batches carry the acknowledgement
/// claims of the input they came from (keep `batch.acks` with the events). A batch the
/// stage deliberately drops is finished with `Status::Delivered`; one it refuses, with
/// `Status::Rejected`.
#[async_trait]
pub trait Stage: Send + 'static {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError>;

    /// When the stage holds events until a moment (a batch's max wait), that moment; the
    /// host then calls [`Stage::on_deadline`].
    fn deadline(&self) -> Option<tokio::time::Instant> {
        None
    }

    async fn on_deadline(&mut self, _out: &mut Vec<Batch>) -> Result<(), PluginError> {
        Ok(())
    }

    /// The input has ended (shutdown): emit whatever is held.
    async fn flush(&mut self, _out: &mut Vec<Batch>) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Makes one [`Stage`] per lane; shared resources (a database session) live here.
pub trait StageFactory: Send + Sync + 'static {
    fn create(&self, lane: usize) -> Result<Box<dyn Stage>, PluginError>;
}

/// The future of one write: resolves once the events are durable (or definitely not).
pub type WriteFuture = BoxFuture<'static, Result<(), PluginError>>;

/// Signs of an overloaded server that a sink saw while writing — a 429 or 503, a timeout,
/// a full producer queue — even when a retry then succeeded. The host hands each sink
/// lane one ([`Sink::report_backpressure_to`]) and reads it as its writes finish: the
/// lane's adaptive concurrency backs off when it was raised.
#[derive(Clone, Debug, Default)]
pub struct Backpressure(Arc<std::sync::atomic::AtomicU64>);

impl Backpressure {
    /// The server pushed back once.
    pub fn signal(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Signals since the last call.
    pub fn take(&self) -> u64 {
        self.0.swap(0, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Writes batches somewhere durable.
///
/// `write` is called in batch order for its lane; it may wait for room (a full producer
/// queue), then returns a future that resolves when the write is durable. The host runs up
/// to the sink's concurrency limit of such futures at once (fixed, or adaptive: following
/// the writes' round trips and the server's back-pressure) and acknowledges each batch
/// when its future resolves `Ok`. Retries with backoff happen inside the future; an `Err`
/// means the sink gave up.
#[async_trait]
pub trait Sink: Send + 'static {
    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError>;

    /// Where to report the server's back-pressure (see [`Backpressure`]); called once per
    /// sink instance, before its first write. Sinks that cannot tell an overloaded server
    /// from a slow one ignore it: their round trips still speak for them.
    fn report_backpressure_to(&mut self, _signal: Backpressure) {}

    /// Shutdown: push out anything buffered.
    async fn flush(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Makes one [`Sink`] per lane.
pub trait SinkFactory: Send + Sync + 'static {
    fn create(&self, lane: usize) -> Result<Box<dyn Sink>, PluginError>;
}

/// Why a batch could not be sent downstream.
#[derive(Debug)]
pub enum SendError {
    /// Downstream stayed full for the whole wait; the batch comes back.
    Full(Batch),
    /// The pipeline is shutting down.
    Closed(Batch),
}

/// Makes lanes on demand: for a node with one lane per input key (`lanes = "auto"`),
/// the way into a key's lane, made (with its task) when the key first appears. `None`
/// when the node no longer takes batches (shutting down).
pub trait LaneSource: Send + Sync + 'static {
    fn lane(&self, key: u64) -> Option<LaneSender>;
}

/// A lane's bound in bytes (`buffer_bytes`): what the batches sent to it and not yet done
/// with may hold together — waiting in its channel, and for a sink also being written.
///
/// A channel bounds its batches by count, but a batch's size is whatever the stage before
/// made of it: the documents of carts that grow, for one. Under a backlog the same number
/// of queued batches then holds more and more memory; this bound holds it still. A sender
/// waits for room, as on a full channel (that is backpressure). A batch larger than the
/// whole bound counts as the bound, so it passes alone.
#[derive(Debug)]
pub struct ByteGate {
    limit: u32,
    room: tokio::sync::Semaphore,
}

impl ByteGate {
    /// A gate holding at most `limit` bytes (at least 1).
    pub fn new(limit: u32) -> Self {
        let limit = limit.max(1);
        Self {
            limit,
            room: tokio::sync::Semaphore::new(limit as usize),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// What `events` count for: their bytes ([`Event::total_size`]), at most the bound.
    /// The sender and the lane weigh the same events, so what one takes the other gives
    /// back.
    pub fn weigh(&self, events: &[Event]) -> u32 {
        u32::try_from(Event::total_size(events))
            .unwrap_or(u32::MAX)
            .min(self.limit)
    }

    /// Waits until `weight` bytes fit, and takes them. Cancel-safe: dropped while waiting,
    /// it takes nothing.
    pub async fn enter(&self, weight: u32) {
        // The semaphore is never closed.
        if let Ok(taken) = self.room.acquire_many(weight).await {
            taken.forget();
        }
    }

    /// Gives back `weight` bytes: the batch left the channel, or its write settled.
    pub fn leave(&self, weight: u32) {
        self.room.add_permits(weight as usize);
    }

    /// Gives back what `events` entered with (their weight, as [`ByteGate::weigh`]).
    pub fn release(&self, events: &[Event]) {
        self.leave(self.weigh(events));
    }

    /// The bytes held now.
    pub fn held(&self) -> u32 {
        let free = u32::try_from(self.room.available_permits()).unwrap_or(self.limit);
        self.limit.saturating_sub(free)
    }
}

/// The way into one lane of a node: its channel, and its bound in bytes if it has one.
#[derive(Clone, Debug)]
pub struct LaneSender {
    channel: mpsc::Sender<Batch>,
    gate: Option<Arc<ByteGate>>,
}

impl LaneSender {
    pub fn new(channel: mpsc::Sender<Batch>, gate: Option<Arc<ByteGate>>) -> Self {
        Self { channel, gate }
    }

    pub fn channel(&self) -> &mpsc::Sender<Batch> {
        &self.channel
    }
}

impl From<mpsc::Sender<Batch>> for LaneSender {
    fn from(channel: mpsc::Sender<Batch>) -> Self {
        Self::new(channel, None)
    }
}

/// The lanes of one downstream node.
#[derive(Clone)]
pub struct Downstream {
    lanes: Lanes,
}

#[derive(Clone)]
enum Lanes {
    Fixed(Vec<LaneSender>),
    PerKey(Arc<dyn LaneSource>),
}

impl std::fmt::Debug for Downstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.lanes {
            Lanes::Fixed(lanes) => write!(f, "Downstream({} lanes)", lanes.len()),
            Lanes::PerKey(_) => f.write_str("Downstream(a lane per key)"),
        }
    }
}

impl Downstream {
    /// A node with these lanes: channels, or [`LaneSender`]s with their byte bounds.
    pub fn new<L: Into<LaneSender>>(lanes: Vec<L>) -> Self {
        assert!(!lanes.is_empty(), "a node has at least one lane");
        Self {
            lanes: Lanes::Fixed(lanes.into_iter().map(Into::into).collect()),
        }
    }

    /// A node with one lane per key, made by `source`.
    pub fn per_key(source: Arc<dyn LaneSource>) -> Self {
        Self {
            lanes: Lanes::PerKey(source),
        }
    }

    fn lane(&self, lane: u64) -> Option<LaneSender> {
        match &self.lanes {
            Lanes::Fixed(lanes) => {
                let count = lanes.len() as u64;
                // Lossless: the remainder is below the lane count, a usize.
                #[allow(clippy::cast_possible_truncation)]
                Some(lanes[(lane % count) as usize].clone())
            }
            Lanes::PerKey(source) => source.lane(lane),
        }
    }
}

/// Hook the host uses to measure time spent waiting on full channels.
pub trait OutputObserver: Send + Sync + 'static {
    fn sent(&self, events: usize, waited: Duration);
}

/// Where a component's batches go: every downstream node gets the batch (fan-out clones
/// it, sharing the acknowledgement claims), on the lane its `lane` selects. Every channel
/// is bounded: when one is full, `send` waits — that is backpressure.
#[derive(Clone)]
pub struct Output {
    downstream: Vec<Downstream>,
    observer: Option<Arc<dyn OutputObserver>>,
    tap: Option<Arc<crate::tap::Tap>>,
}

impl Output {
    pub fn new(downstream: Vec<Downstream>, observer: Option<Arc<dyn OutputObserver>>) -> Self {
        Self {
            downstream,
            observer,
            tap: None,
        }
    }

    /// The same output, offering what it sends to `tap` (`salesflow tap`).
    #[must_use]
    pub fn with_tap(mut self, tap: Arc<crate::tap::Tap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Sends a batch to every downstream node, waiting while a channel is full.
    pub async fn send(&self, batch: Batch) -> Result<(), SendError> {
        self.send_inner(batch, None).await
    }

    /// Like [`Output::send`], but gives up when downstream stays full for `wait`: the
    /// HTTP source sheds load this way instead of queueing without bound.
    pub async fn send_timeout(&self, batch: Batch, wait: Duration) -> Result<(), SendError> {
        self.send_inner(batch, Some(wait)).await
    }

    async fn send_inner(&self, batch: Batch, wait: Option<Duration>) -> Result<(), SendError> {
        if let Some(tap) = &self.tap {
            tap.offer(&batch.events);
        }
        let started = tokio::time::Instant::now();
        let events = batch.len();
        let deadline = wait.map(|w| started + w);
        let count = self.downstream.len();
        let mut batch = Some(batch);
        for (i, node) in self.downstream.iter().enumerate() {
            let Some(current) = batch.take() else { break };
            let (this, rest) = if i + 1 == count {
                (current, None)
            } else {
                (current.clone(), Some(current))
            };
            let Some(lane) = node.lane(this.lane) else {
                drop(rest);
                return Err(SendError::Closed(this));
            };
            // Room in the lane's byte bound first, then a place in its channel.
            let weighed = lane
                .gate
                .as_ref()
                .map(|gate| (gate, gate.weigh(&this.events)));
            if let Some((gate, weight)) = weighed {
                let entered = match deadline {
                    None => {
                        gate.enter(weight).await;
                        true
                    }
                    Some(deadline) => tokio::time::timeout_at(deadline, gate.enter(weight))
                        .await
                        .is_ok(),
                };
                if !entered {
                    drop(rest);
                    return Err(SendError::Full(this));
                }
            }
            let sender = &lane.channel;
            let sent = match deadline {
                None => sender.send(this).await.map_err(|e| SendError::Closed(e.0)),
                Some(deadline) => match tokio::time::timeout_at(deadline, sender.reserve()).await {
                    Ok(Ok(permit)) => {
                        permit.send(this);
                        Ok(())
                    }
                    Ok(Err(_)) => Err(SendError::Closed(this)),
                    Err(_) => Err(SendError::Full(this)),
                },
            };
            if let Err(e) = sent {
                if let Some((gate, weight)) = weighed {
                    gate.leave(weight);
                }
                // Copies already handed to other nodes keep their claims; the copy for the
                // remaining nodes is dropped, so the batch can never count as delivered.
                drop(rest);
                return Err(e);
            }
            batch = rest;
        }
        if let Some(observer) = &self.observer {
            observer.sent(events, started.elapsed());
        }
        Ok(())
    }

    /// True when there is nowhere to send to (a source whose output nobody reads).
    pub fn is_empty(&self) -> bool {
        self.downstream.is_empty()
    }
}
