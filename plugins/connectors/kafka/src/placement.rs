//! Which of a sink's producers a record goes through.
//!
//! Each producer is its own connection, and librdkafka sends one partition's batch per
//! produce request. Were every producer to write to every partition, each partition's
//! records would be split between them, and at saturation every produce request would
//! carry that much less: the brokers' cost is per request. So a keyed record goes through
//! the producer of its partition (partition modulo the producers): a partition's records
//! fill one producer's batches, and a key's records keep to one connection, in order.
//! That needs the partition count, asked of Kafka as often as librdkafka refreshes its
//! own metadata. The partition itself is still librdkafka's choice: a count that is stale
//! for a while (a topic just grown) only makes the choice of producer less apt. Records
//! without a key, with a partitioner other than murmur2's, or before the count is known,
//! go through their lane's producer (lane modulo the producers), as every record does with
//! `placement = "lane"`. When the count is first
//! learnt, or changes, a key may move to another producer: its records then in flight on
//! the old connection and sent on the new one have no order between them, as records of
//! one key written at once by two lanes never had.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Partitioner, ProducerPlacement};

/// Kafka's murmur2 of `data`: the Java clients' `Utils.murmur2`, and what librdkafka's
/// `murmur2` partitioners hash keys with.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // The length is hashed as a Java int: keys beyond 4 GiB do not reach a producer.
    #[allow(clippy::cast_possible_truncation)]
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition Kafka's Java clients, and librdkafka's `murmur2` partitioners, give a
/// record keyed `key` on a topic of `partitions` (at least one).
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// A sink's choice of producer, shared by its lanes.
pub struct Placement {
    producers: usize,
    /// The partitioner places keys by murmur2, which this can follow.
    follows_keys: bool,
    /// The topic's partitions as last learnt; 0 until then.
    partitions: AtomicU32,
    /// When the count is next to be asked for, in milliseconds since `epoch` (0: now).
    next_ask_ms: AtomicU64,
    epoch: Instant,
    refresh: Duration,
}

/// How soon a failed ask is tried again.
const RETRY: Duration = Duration::from_secs(1);

impl Placement {
    pub fn new(
        producers: usize,
        placement: ProducerPlacement,
        partitioner: Partitioner,
        refresh: Duration,
    ) -> Self {
        Self {
            producers: producers.max(1),
            follows_keys: placement == ProducerPlacement::Partition
                && matches!(
                    partitioner,
                    Partitioner::Murmur2 | Partitioner::Murmur2Random
                ),
            partitions: AtomicU32::new(0),
            next_ask_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            refresh,
        }
    }

    /// The producer (an index) for a record with `key`, written by `lane`.
    pub fn producer(&self, key: Option<&[u8]>, lane: usize) -> usize {
        if self.producers == 1 {
            return 0;
        }
        let partitions = self.partitions.load(Ordering::Relaxed);
        match key {
            Some(key) if self.follows_keys && partitions > 0 => {
                partition_of(key, partitions) as usize % self.producers
            }
            _ => lane % self.producers,
        }
    }

    /// Whether the partition count should be asked for now; true for one caller only
    /// until the next ask is due (every `refresh`, or a second after a failed one).
    pub fn due(&self) -> bool {
        if self.producers == 1 || !self.follows_keys {
            return false;
        }
        let now = self.now_ms();
        let next = self.next_ask_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ask_ms
                .compare_exchange(
                    next,
                    now.saturating_add(millis(self.refresh)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// What the ask found: the topic's partitions, or nothing (asked again soon).
    pub fn learn(&self, partitions: Option<u32>) {
        match partitions {
            Some(n) if n > 0 => self.partitions.store(n, Ordering::Relaxed),
            _ => self.next_ask_ms.store(
                self.now_ms().saturating_add(millis(RETRY)),
                Ordering::Relaxed,
            ),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes and partitions printed by Kafka's own `Utils.murmur2` and `Utils.toPositive`
    /// (kafka-clients 4.1.1, the jar the local stack runs), for these keys.
    #[test]
    fn keys_hash_and_place_as_kafkas_java_clients_do() {
        #[allow(clippy::cast_sign_loss)]
        let java = |h: i32| h as u32;
        for (key, hash, of_12, of_7) in [
            ("", java(275_646_681), 9, 2),
            ("a", java(-1_563_381_124), 4, 5),
            ("ab", java(316_155_434), 2, 0),
            ("abc", java(479_470_107), 3, 4),
            ("abcd", java(-1_323_649_548), 8, 5),
            ("21", java(-973_932_308), 0, 3),
            ("foobar", java(-790_332_482), 6, 0),
            (
                "00003039-03e8-43e8-8b58-0000000003e8",
                java(-83_977_134),
                2,
                6,
            ),
            (
                "6b8e2a52-3f6e-4c1e-9a4b-0f3c2d1e5a77",
                java(368_550_563),
                11,
                3,
            ),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key:?}");
            assert_eq!(partition_of(key.as_bytes(), 12), of_12, "{key:?}");
            assert_eq!(partition_of(key.as_bytes(), 7), of_7, "{key:?}");
        }
    }

    #[test]
    fn a_keyed_record_goes_through_its_partitions_producer_once_the_count_is_known() {
        let placement = Placement::new(
            2,
            ProducerPlacement::Partition,
            Partitioner::Murmur2Random,
            Duration::from_secs(30),
        );
        let key = Some(&b"00003039-03e8-43e8-8b58-0000000003e8"[..]);
        // Unknown count: the lane's producer.
        assert_eq!(placement.producer(key, 1), 1);
        assert!(placement.due());
        assert!(!placement.due(), "asked twice at once");
        placement.learn(Some(12));
        // Partition 2 of 12: producer 0, whichever lane writes it.
        assert_eq!(placement.producer(key, 0), 0);
        assert_eq!(placement.producer(key, 1), 0);
        // No key: the lane's.
        assert_eq!(placement.producer(None, 3), 1);
        // On 7 partitions: partition 6, producer 0; on 3 producers, producer 0 too.
        placement.learn(Some(7));
        assert_eq!(placement.producer(key, 1), 0);
        let three = Placement::new(
            3,
            ProducerPlacement::Partition,
            Partitioner::Murmur2,
            Duration::from_secs(30),
        );
        three.learn(Some(12));
        assert_eq!(three.producer(key, 1), 2);
    }

    #[test]
    fn lane_placement_other_partitioners_and_a_single_producer_keep_to_the_lane() {
        let key = Some(&b"abc"[..]);
        let crc = Placement::new(
            2,
            ProducerPlacement::Partition,
            Partitioner::ConsistentRandom,
            Duration::from_secs(30),
        );
        crc.learn(Some(12));
        assert!(!crc.due());
        assert_eq!(crc.producer(key, 0), 0);
        assert_eq!(crc.producer(key, 1), 1);
        let lanes = Placement::new(
            2,
            ProducerPlacement::Lane,
            Partitioner::Murmur2Random,
            Duration::from_secs(30),
        );
        lanes.learn(Some(12));
        assert!(!lanes.due());
        assert_eq!(lanes.producer(key, 0), 0);
        assert_eq!(lanes.producer(key, 1), 1);
        let one = Placement::new(
            1,
            ProducerPlacement::Partition,
            Partitioner::Murmur2Random,
            Duration::from_secs(30),
        );
        assert!(!one.due());
        assert_eq!(one.producer(key, 5), 0);
    }

    #[test]
    fn a_failed_ask_is_tried_again_within_a_second() {
        let placement = Placement::new(
            2,
            ProducerPlacement::Partition,
            Partitioner::Murmur2Random,
            Duration::from_secs(30),
        );
        assert!(placement.due());
        placement.learn(None);
        assert!(!placement.due(), "tried again at once");
        // A second later it is due again (the stored time moved instead of the clock),
        // where a successful ask waits the whole refresh.
        placement.next_ask_ms.fetch_sub(1000, Ordering::Relaxed);
        assert!(placement.due());
        placement.learn(Some(12));
        placement.next_ask_ms.fetch_sub(1000, Ordering::Relaxed);
        assert!(!placement.due());
    }
}
