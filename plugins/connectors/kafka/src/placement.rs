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
//! `placement = "lane"`.
//!
//! When the count is first learnt, or changes, a key may move to another producer. Its
//! records still in flight on the old connection and those sent on the new one would
//! then have no order between them: a relay that starts on a busy topic wrote a key's
//! first records through its lane's producer and the next ones through its partition's,
//! and they landed out of order. So each write is placed by one [`Route`], the count as
//! it was when the write began, held until every record of the write is settled; a write
//! placed by a newer count waits until no write placed by an older one is outstanding.
//! That wait is as long as the older writes take to be delivered (or to fail, within
//! `delivery_timeout_ms`), once when the sink starts and once per change of the count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
    routes: Mutex<Routes>,
    /// Woken when the last outstanding write of a count is settled.
    settled: Notify,
    /// When the count is next to be asked for, in milliseconds since `epoch` (0: now).
    next_ask_ms: AtomicU64,
    epoch: Instant,
    refresh: Duration,
}

/// The partition count writes are placed by, and the writes outstanding per count.
#[derive(Default)]
struct Routes {
    /// The topic's partitions as last learnt; 0 until then.
    partitions: u32,
    /// Bumped each time `partitions` changes.
    generation: u64,
    /// Writes not yet settled, by the generation they were placed in.
    outstanding: BTreeMap<u64, usize>,
}

/// How one write is placed: the partition count when it began. Dropped once every record
/// of the write is settled (the write's delivery state holds it).
pub struct Route {
    placement: Arc<Placement>,
    partitions: u32,
    /// The generation it holds open; none when the count plays no part.
    generation: Option<u64>,
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
            routes: Mutex::new(Routes::default()),
            settled: Notify::new(),
            next_ask_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            refresh,
        }
    }

    /// Whether the partition count decides any record's producer.
    fn counts(&self) -> bool {
        self.producers > 1 && self.follows_keys
    }

    /// The route for a write beginning now. Once the count has changed, waits until
    /// every write placed by an older count is settled.
    pub async fn route(self: &Arc<Self>) -> Route {
        if !self.counts() {
            return Route {
                placement: Arc::clone(self),
                partitions: 0,
                generation: None,
            };
        }
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before looking, so that a settlement in between still wakes it.
            settled.as_mut().enable();
            {
                let mut routes = self.lock();
                let generation = routes.generation;
                if routes.outstanding.range(..generation).next().is_none() {
                    *routes.outstanding.entry(generation).or_default() += 1;
                    return Route {
                        placement: Arc::clone(self),
                        partitions: routes.partitions,
                        generation: Some(generation),
                    };
                }
            }
            settled.await;
        }
    }

    /// The topic's partitions as last learnt; 0 until then.
    #[cfg(test)]
    pub fn partitions(&self) -> u32 {
        self.lock().partitions
    }

    /// Whether the partition count should be asked for now; true for one caller only
    /// until the next ask is due (every `refresh`, or a second after a failed one).
    pub fn due(&self) -> bool {
        if !self.counts() {
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
            Some(n) if n > 0 => {
                let mut routes = self.lock();
                if routes.partitions != n {
                    routes.partitions = n;
                    routes.generation += 1;
                }
            }
            _ => self.next_ask_ms.store(
                self.now_ms().saturating_add(millis(RETRY)),
                Ordering::Relaxed,
            ),
        }
    }

    fn settle(&self, generation: u64) {
        let mut routes = self.lock();
        if let Some(n) = routes.outstanding.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                routes.outstanding.remove(&generation);
                drop(routes);
                self.settled.notify_waiters();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }
}

impl Route {
    /// The producer (an index) for a record with `key`, written by `lane`.
    pub fn producer(&self, key: Option<&[u8]>, lane: usize) -> usize {
        let producers = self.placement.producers;
        if producers == 1 {
            return 0;
        }
        match key {
            Some(key) if self.placement.follows_keys && self.partitions > 0 => {
                partition_of(key, self.partitions) as usize % producers
            }
            _ => lane % producers,
        }
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Some(generation) = self.generation {
            self.placement.settle(generation);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

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

    fn shared(producers: usize, by: ProducerPlacement, partitioner: Partitioner) -> Arc<Placement> {
        Arc::new(Placement::new(
            producers,
            by,
            partitioner,
            Duration::from_secs(30),
        ))
    }

    #[tokio::test]
    async fn a_keyed_record_goes_through_its_partitions_producer_once_the_count_is_known() {
        let placement = shared(2, ProducerPlacement::Partition, Partitioner::Murmur2Random);
        let key = Some(&b"00003039-03e8-43e8-8b58-0000000003e8"[..]);
        // Unknown count: the lane's producer.
        assert_eq!(placement.route().await.producer(key, 1), 1);
        assert!(placement.due());
        assert!(!placement.due(), "asked twice at once");
        placement.learn(Some(12));
        // Partition 2 of 12: producer 0, whichever lane writes it.
        let route = placement.route().await;
        assert_eq!(route.producer(key, 0), 0);
        assert_eq!(route.producer(key, 1), 0);
        // No key: the lane's.
        assert_eq!(route.producer(None, 3), 1);
        drop(route);
        // On 7 partitions: partition 6, producer 0; on 3 producers, producer 0 too.
        placement.learn(Some(7));
        assert_eq!(placement.route().await.producer(key, 1), 0);
        let three = shared(3, ProducerPlacement::Partition, Partitioner::Murmur2);
        three.learn(Some(12));
        assert_eq!(three.route().await.producer(key, 1), 2);
    }

    #[tokio::test]
    async fn lane_placement_other_partitioners_and_a_single_producer_keep_to_the_lane() {
        let key = Some(&b"abc"[..]);
        let crc = shared(
            2,
            ProducerPlacement::Partition,
            Partitioner::ConsistentRandom,
        );
        crc.learn(Some(12));
        assert!(!crc.due());
        assert_eq!(crc.route().await.producer(key, 0), 0);
        assert_eq!(crc.route().await.producer(key, 1), 1);
        let lanes = shared(2, ProducerPlacement::Lane, Partitioner::Murmur2Random);
        lanes.learn(Some(12));
        assert!(!lanes.due());
        assert_eq!(lanes.route().await.producer(key, 0), 0);
        assert_eq!(lanes.route().await.producer(key, 1), 1);
        let one = shared(1, ProducerPlacement::Partition, Partitioner::Murmur2Random);
        assert!(!one.due());
        assert_eq!(one.route().await.producer(key, 5), 0);
    }

    /// A write placed by a new count waits for every write placed by an older one, and
    /// only for those; a route keeps the count it began with.
    #[tokio::test]
    async fn a_new_count_waits_for_the_writes_placed_by_the_old_one() {
        let placement = shared(2, ProducerPlacement::Partition, Partitioner::Murmur2Random);
        let key = Some(&b"00003039-03e8-43e8-8b58-0000000003e8"[..]);
        let (before_a, before_b) = (placement.route().await, placement.route().await);
        placement.learn(Some(12));
        assert_eq!(
            before_a.producer(key, 1),
            1,
            "placed by the count it began with"
        );
        // Neither of the two first writes is settled: the next one is not placed (a
        // route that need not wait is given at its first poll).
        assert!(placement.route().now_or_never().is_none());
        drop(before_a);
        assert!(placement.route().now_or_never().is_none());
        let waiting = tokio::spawn({
            let placement = Arc::clone(&placement);
            async move { placement.route().await.producer(key, 1) }
        });
        // On this one-thread runtime the spawned write runs until it waits.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(before_b);
        assert_eq!(waiting.await.unwrap(), 0, "woken when the last one settled");
        // The same count learnt again changes nothing: a write placed by it does not wait
        // for one still outstanding.
        let held = placement.route().await;
        placement.learn(Some(12));
        let next = placement.route().now_or_never();
        assert_eq!(next.as_ref().map(|r| r.producer(key, 1)), Some(0));
        drop((held, next));
        assert!(placement.lock().outstanding.is_empty());
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
