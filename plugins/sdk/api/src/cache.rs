//! A least-recently-used cache bounded by entries and by bytes, for stages that keep
//! state per key (carts): the byte budget can be shared by every lane of a stage, so that
//! memory stays bounded however many lanes (partitions) there are.

use std::hash::Hash;
use std::sync::Arc;

use lru::LruCache;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Bytes a set of caches may hold together.
#[derive(Debug)]
pub struct CacheBudget {
    limit: usize,
    /// Bytes held by every cache sharing the budget; also what the metric exports.
    held: Gauge,
}

impl CacheBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: Gauge::default(),
        })
    }

    /// Exports the bytes held (`salesflow_cache_bytes`) and the limit
    /// (`salesflow_cache_limit_bytes`) in `metrics`, the stage's registry: a cache that
    /// fills to its limit and stays there is memory by design, not a leak.
    pub fn register(&self, metrics: &mut Registry, what: &str) {
        metrics.register(
            "salesflow_cache_bytes",
            format!("Bytes the stage's in-memory {what} take, all lanes together"),
            self.held.clone(),
        );
        let limit = Gauge::<i64>::default();
        limit.set(i64::try_from(self.limit).unwrap_or(i64::MAX));
        metrics.register(
            "salesflow_cache_limit_bytes",
            format!("Most bytes the stage's in-memory {what} may take (max_cache_bytes)"),
            limit,
        );
    }

    fn add(&self, size: usize) {
        self.held.inc_by(i64::try_from(size).unwrap_or(i64::MAX));
    }

    fn sub(&self, size: usize) {
        self.held.dec_by(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Bytes held now by every cache sharing the budget.
    pub fn used(&self) -> usize {
        usize::try_from(self.held.get()).unwrap_or(0)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// An LRU cache whose entries declare their size. Past `max_entries`, or while the shared
/// budget is exceeded, its least recently used entries are dropped (an entry larger than
/// the whole budget is dropped at once: it is not kept).
///
/// Its memory follows the entries it holds: nothing is reserved for `max_entries` up
/// front (a table sized for 100 000 carts is 2 MiB per lane, resident as soon as the
/// carts it does hold are spread over it), and each entry is charged the cache's own
/// bookkeeping beside the bytes its value declares.
pub struct SizedLru<K: Hash + Eq, V> {
    entries: LruCache<K, (V, usize)>,
    max_entries: usize,
    budget: Arc<CacheBudget>,
    held: usize,
}

impl<K: Hash + Eq, V> SizedLru<K, V> {
    /// What the cache spends on an entry besides its value: the list node's key, size and
    /// two links, and the hash table's slot (a key reference, a node pointer and a
    /// control byte, in a table between 7/16 and 7/8 full).
    pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<K>()
        + 3 * std::mem::size_of::<usize>()
        + 2 * (2 * std::mem::size_of::<usize>() + 1);

    pub fn new(max_entries: usize, budget: Arc<CacheBudget>) -> Self {
        Self {
            entries: LruCache::unbounded(),
            max_entries: max_entries.max(1),
            budget,
            held: 0,
        }
    }

    /// Removes an entry and gives it to the caller.
    pub fn take(&mut self, key: &K) -> Option<V> {
        let (value, size) = self.entries.pop(key)?;
        self.release(size);
        Some(value)
    }

    /// Looks at an entry without touching its recency.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.peek(key).map(|(v, _)| v)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains(key)
    }

    /// Inserts (or replaces) an entry whose value takes `size` bytes, then evicts while
    /// over the limits.
    pub fn put(&mut self, key: K, value: V, size: usize) {
        let size = size + Self::ENTRY_OVERHEAD;
        self.budget.add(size);
        self.held += size;
        if let Some((_, (_, old))) = self.entries.push(key, (value, size)) {
            self.release(old);
        }
        while self.entries.len() > self.max_entries || self.budget.over() {
            match self.entries.pop_lru() {
                Some((_, (_, size))) => self.release(size),
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes this cache holds.
    pub fn bytes(&self) -> usize {
        self.held
    }

    fn release(&mut self, size: usize) {
        self.held -= size;
        self.budget.sub(size);
    }
}

impl<K: Hash + Eq, V> Drop for SizedLru<K, V> {
    fn drop(&mut self) {
        self.budget.sub(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an entry of `size` bytes is charged, with the cache's own bookkeeping.
    const fn charged(size: usize) -> usize {
        size + SizedLru::<i32, &str>::ENTRY_OVERHEAD
    }

    #[test]
    fn entries_and_bytes_are_bounded_and_shared() {
        let unit = charged(10);
        let budget = CacheBudget::new(10 * unit);
        let mut a = SizedLru::new(3, Arc::clone(&budget));
        let mut b = SizedLru::new(10, Arc::clone(&budget));
        a.put(1, "one", 10);
        a.put(2, "two", 10);
        a.put(3, "three", 10);
        a.put(4, "four", 10);
        assert_eq!(a.len(), 3, "at most 3 entries");
        assert!(a.peek(&1).is_none(), "the least recently used went");
        assert_eq!(budget.used(), 3 * unit);
        b.put(1, "big", 8 * unit - charged(0));
        assert_eq!(
            budget.used(),
            3 * unit,
            "b cannot evict a's entries: it dropped its own"
        );
        assert!(b.is_empty());
        a.put(2, "again", 20);
        assert_eq!(a.bytes(), 2 * unit + charged(20));
        assert_eq!(a.take(&2), Some("again"));
        assert_eq!(budget.used(), 2 * unit);
        drop(a);
        assert_eq!(budget.used(), 0);
        b.put(9, "huge", 10 * unit);
        assert!(b.is_empty(), "an entry larger than the budget is not kept");
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn nothing_is_reserved_for_max_entries() {
        // A table reserved for 2^40 entries would be terabytes: the allocation fails and
        // the process aborts. Reserved as the entries come, it holds what it holds.
        let budget = CacheBudget::new(1 << 20);
        let mut cache = SizedLru::new(1 << 40, Arc::clone(&budget));
        for key in 0..1000 {
            cache.put(key, "cart", 100);
        }
        assert_eq!(cache.len(), 1000);
        assert_eq!(budget.used(), 1000 * charged(100));
    }

    #[test]
    fn the_bytes_held_are_exported() {
        let budget = CacheBudget::new(1000);
        let mut registry = Registry::default();
        budget.register(&mut registry, "carts");
        let exported = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        let mut a = SizedLru::new(10, Arc::clone(&budget));
        a.put(1, "one", 30);
        a.put(2, "two", 12);
        let text = exported(&registry);
        let held = |bytes: usize| format!("salesflow_cache_bytes {bytes}\n");
        assert!(text.contains(&held(charged(30) + charged(12))), "{text}");
        assert!(
            text.contains("salesflow_cache_limit_bytes 1000\n"),
            "{text}"
        );
        a.take(&1);
        assert!(exported(&registry).contains(&held(charged(12))));
        drop(a);
        assert!(exported(&registry).contains("salesflow_cache_bytes 0\n"));
    }
}
