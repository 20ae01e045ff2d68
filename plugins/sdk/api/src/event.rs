//! Events and batches: what flows through a pipeline.

use std::sync::Arc;

use bytes::Bytes;

use crate::ack::{AckSet, Status};

/// Now, in milliseconds since the Unix epoch: the unit of [`Event::timestamp_ms`] (0 on a
/// clock set before 1970).
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One event: an opaque payload (JSON for every built-in plugin), an optional key, headers
/// and where it came from. Cloning is cheap: the bytes are reference-counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    /// The partitioning key (the Kafka message key; the cart id in the sales pipelines).
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch (the Kafka record timestamp, or arrival time).
    pub timestamp_ms: Option<i64>,
    pub origin: Origin,
}

impl Event {
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            payload: payload.into(),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The event marked as a dead letter: why (`salesflow.error`), which component gave
    /// up on it (`salesflow.failed.by`), when (`salesflow.failed.at`, ms since the epoch),
    /// and where it came from (`salesflow.origin`, and for a Kafka record
    /// `salesflow.source.topic`, `.partition`, `.offset`) — what `salesflow dlq list`
    /// shows and `salesflow dlq replay` needs. Earlier marks are replaced.
    #[must_use]
    pub fn dead_letter(mut self, reason: &str, by: &str) -> Self {
        self.headers
            .retain(|(name, _)| !DEAD_LETTER_HEADERS.contains(&name.as_str()));
        let now_ms = now_ms();
        let mut add = |name: &str, value: String| {
            self.headers.push((name.to_owned(), Bytes::from(value)));
        };
        add(headers::ERROR, reason.to_owned());
        add(headers::FAILED_BY, by.to_owned());
        add(headers::FAILED_AT, now_ms.to_string());
        add(headers::ORIGIN, self.origin.describe());
        if let Origin::Kafka {
            topic,
            partition,
            offset,
            ..
        } = &self.origin
        {
            let (topic, partition, offset) = (topic.to_string(), *partition, *offset);
            add(headers::SOURCE_TOPIC, topic);
            add(headers::SOURCE_PARTITION, partition.to_string());
            add(headers::SOURCE_OFFSET, offset.to_string());
        }
        self
    }

    /// The summed [`Event::byte_size`] of `events`.
    pub fn total_size(events: &[Event]) -> usize {
        events.iter().map(Event::byte_size).sum()
    }

    /// An estimate of the memory the event holds, for byte-based batching limits.
    pub fn byte_size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }
}

/// The headers of a dead letter (see [`Event::dead_letter`]).
pub mod headers {
    pub const ERROR: &str = "salesflow.error";
    pub const FAILED_BY: &str = "salesflow.failed.by";
    pub const FAILED_AT: &str = "salesflow.failed.at";
    pub const ORIGIN: &str = "salesflow.origin";
    pub const SOURCE_TOPIC: &str = "salesflow.source.topic";
    pub const SOURCE_PARTITION: &str = "salesflow.source.partition";
    pub const SOURCE_OFFSET: &str = "salesflow.source.offset";
    /// `transformed` on a dead letter whose payload is not its source record (a sink gave
    /// up on what a stage made of it): replay re-reads the source record instead.
    pub const PAYLOAD: &str = "salesflow.payload";
    /// The value of [`PAYLOAD`] on such a dead letter.
    pub const TRANSFORMED: &str = "transformed";
    /// Set on a record `salesflow dlq replay` sent back: the dead letter it came from.
    pub const REPLAYED_FROM: &str = "salesflow.replayed.from";
    /// Where a document goes (what a stage addressing documents sets and a document sink
    /// reads): its index or alias, its id, its external version.
    pub const DOC_INDEX: &str = "salesflow.index";
    pub const DOC_ID: &str = "salesflow.id";
    pub const DOC_VERSION: &str = "salesflow.version";
    /// The prefix of every header salesflow itself sets.
    pub const PREFIX: &str = "salesflow.";
}

const DEAD_LETTER_HEADERS: [&str; 7] = [
    headers::ERROR,
    headers::FAILED_BY,
    headers::FAILED_AT,
    headers::ORIGIN,
    headers::SOURCE_TOPIC,
    headers::SOURCE_PARTITION,
    headers::SOURCE_OFFSET,
];

/// Where an event entered the pipeline; dead letters and rejections name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    #[default]
    Unknown,
    /// A Kafka record.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        /// Which assignment of the partition to this process delivered it (a number
        /// that grows with every assignment). State cached for a partition is stale once
        /// the partition was away: another process may have changed it meanwhile.
        assignment: u64,
    },
    /// The `item`-th event of an HTTP request body.
    Http { item: u32 },
}

impl Origin {
    /// A one-line description for dead letters and logs: `topic/partition@offset`.
    pub fn describe(&self) -> String {
        match self {
            Origin::Unknown => "unknown".into(),
            Origin::Kafka {
                topic,
                partition,
                offset,
                ..
            } => format!("{topic}/{partition}@{offset}"),
            Origin::Http { item } => format!("http item {item}"),
        }
    }

    /// The position of the event in its source batch (HTTP request), if it has one.
    pub fn item(&self) -> Option<u32> {
        match self {
            Origin::Http { item } => Some(*item),
            _ => None,
        }
    }
}

/// A batch: events plus the acknowledgement claims of the source batches they came from,
/// and a lane that keeps related batches in order.
///
/// Batches with the same `lane` are processed in the order they were emitted by every
/// node of the pipeline (a node with N lanes routes a batch to lane `lane % N`). The Kafka
/// source sets the lane to the partition, so per-partition order holds end to end.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Event>,
    pub acks: AckSet,
    pub lane: u64,
    /// The named output of the stage that emitted it (`inputs = ["cart.rejected"]`), or
    /// `None` for its main output.
    pub output: Option<&'static str>,
}

impl Batch {
    pub fn new(events: Vec<Event>, acks: AckSet, lane: u64) -> Self {
        Self {
            events,
            acks,
            lane,
            output: None,
        }
    }

    /// The same batch, sent to the stage's named output `name`.
    #[must_use]
    pub fn to_output(mut self, name: &'static str) -> Self {
        self.output = Some(name);
        self
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn byte_size(&self) -> usize {
        Event::total_size(&self.events)
    }

    /// Moves `other`'s events and claims into this batch.
    pub fn absorb(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.acks.extend(other.acks);
    }

    /// Ends the batch: its claims are finished with `status`.
    pub fn finish(self, status: &Status) {
        self.acks.finish(status);
    }

    /// The events as a shared slice for a sink, and the claims kept back to finish once
    /// the write's outcome is known.
    pub fn into_parts(self) -> (Arc<[Event]>, AckSet) {
        (self.events.into(), self.acks)
    }
}

impl Clone for Batch {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            acks: self.acks.clone(),
            lane: self.lane,
            output: self.output,
        }
    }
}
