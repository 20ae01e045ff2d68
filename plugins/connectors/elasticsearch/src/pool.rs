//! The nodes a [`Client`](crate::Client) sends to: the elasticsearch crate's
//! [`ConnectionPool`], over one node or several.
//!
//! Requests go round-robin over the nodes that are up. A node whose request could not be
//! sent or timed out (the client reports it: [`NodePool::mark_dead`]) is skipped for a
//! back-off period, 1 s doubling with each failure to 30 s; once the period is over, one
//! request tries it again (the others keep going elsewhere meanwhile), and any answer
//! brings it back ([`NodePool::mark_alive`]). When every node is down the pool still hands
//! them out in turn: a request is always sent, and the first that is answered shows which
//! node is back.
//!
//! The hot path — a node handed out, an answer reported while every node is up — takes a
//! few atomic operations and allocates nothing.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use elasticsearch::http::transport::{Connection, ConnectionPool};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use url::Url;

/// How long a node is first skipped after a failure; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest a node is skipped before it is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The label of the per-node metrics: the node's URL without credentials.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

/// A node as the pool sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// The node's URL without credentials.
    pub node: String,
    /// False while the node is skipped after a failure.
    pub up: bool,
    /// Failures in a row (0 while up).
    pub failures: u32,
}

/// Round-robin over Elasticsearch nodes, skipping for a while those that failed.
/// Clones share their state.
#[derive(Clone)]
pub struct NodePool {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Box<[Node]>,
    /// The round-robin position.
    next: AtomicUsize,
    /// The round-robin position among all nodes, when every one is down.
    all_down: AtomicUsize,
    /// Nodes currently down: 0 lets an answer's report skip looking its node up.
    down: AtomicUsize,
    /// The origin of the milliseconds in `Node::down_until` and `Health::failed_at`.
    epoch: Instant,
    requests: Family<NodeLabels, Counter>,
    up: Family<NodeLabels, Gauge>,
}

struct Node {
    connection: Connection,
    /// The connection's URL (with the trailing slash it adds) without credentials: every
    /// request URL sent to this node starts with it.
    base: String,
    /// The URL as shown in logs, metrics and health: without user name and password.
    name: String,
    /// Milliseconds since the epoch until which the node is skipped; 0 while it is up.
    /// Read without a lock, written only under `health`'s.
    down_until: AtomicU64,
    health: Mutex<Health>,
    requests: Counter,
    up: Gauge,
}

#[derive(Default)]
struct Health {
    /// Failures in a row; 0 while up.
    failures: u32,
    /// When the last counted failure was reported (milliseconds since the epoch).
    failed_at: u64,
}

impl NodePool {
    /// A pool over `urls`, all up at first. `None` when `urls` is empty.
    pub fn new(urls: Vec<Url>) -> Option<Self> {
        if urls.is_empty() {
            return None;
        }
        let requests = Family::<NodeLabels, Counter>::default();
        let up = Family::<NodeLabels, Gauge>::default();
        let nodes = urls
            .into_iter()
            .map(|url| {
                let name = display_name(&url);
                let connection = Connection::new(url);
                let labels = NodeLabels { node: name.clone() };
                let node_up = up.get_or_create(&labels).clone();
                node_up.set(1);
                // Request URLs are sent without credentials (the HTTP client moves them
                // into a header): the base they are recognised by has none either.
                let mut base = connection.url().as_ref().clone();
                let _ = base.set_username("");
                let _ = base.set_password(None);
                Node {
                    base: base.into(),
                    connection,
                    name,
                    down_until: AtomicU64::new(0),
                    health: Mutex::new(Health::default()),
                    requests: requests.get_or_create(&labels).clone(),
                    up: node_up,
                }
            })
            .collect();
        Some(Self {
            inner: Arc::new(Inner {
                nodes,
                next: AtomicUsize::new(0),
                all_down: AtomicUsize::new(0),
                down: AtomicUsize::new(0),
                epoch: Instant::now(),
                requests,
                up,
            }),
        })
    }

    /// How many nodes the pool has.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Never: a pool has at least one node.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// Every node's URL without credentials, in the configured order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.nodes.iter().map(|n| n.name.as_str())
    }

    /// Every node's state, in the configured order.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.inner
            .nodes
            .iter()
            .map(|node| NodeStatus {
                node: node.name.clone(),
                up: node.down_until.load(Ordering::Acquire) == 0,
                failures: node.lock().failures,
            })
            .collect()
    }

    /// Registers `salesflow_elasticsearch_requests{node}` (requests handed to each node)
    /// and `salesflow_elasticsearch_node_up{node}` (0 while a node is skipped).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "salesflow_elasticsearch_requests",
            "Requests sent to each Elasticsearch node",
            self.inner.requests.clone(),
        );
        registry.register(
            "salesflow_elasticsearch_node_up",
            "Whether an Elasticsearch node is used (1) or skipped after failing to answer (0)",
            self.inner.up.clone(),
        );
    }

    /// Reports that a request to the node `url` is on could not be sent or timed out: the
    /// node is skipped for its back-off period. A URL of no node is ignored.
    pub fn mark_dead(&self, url: &Url) {
        if let Some(i) = self.node_of(url) {
            self.mark_dead_at(i, self.now());
        }
    }

    /// Reports that the node `url` is on answered: it is used again. A URL of no node is
    /// ignored. Cheap while every node is up.
    pub fn mark_alive(&self, url: &Url) {
        if self.inner.down.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(i) = self.node_of(url) {
            self.mark_alive_index(i);
        }
    }

    /// The index of the node a request URL went to: the longest base URL it starts with.
    pub(crate) fn node_of(&self, url: &Url) -> Option<usize> {
        let url = url.as_str();
        self.inner
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| url.starts_with(&node.base))
            .max_by_key(|(_, node)| node.base.len())
            .map(|(i, _)| i)
    }

    /// The name of node `i` (its URL without credentials).
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.inner.nodes[i].name
    }

    /// Milliseconds since the pool's epoch.
    fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The node the next request goes to, at `now`: the next one up in turn; else the
    /// next whose back-off period is over, which this request tries again; else, every
    /// node being down, simply the next in turn. A node skipped takes its turn with it,
    /// so the nodes up share the requests evenly.
    fn pick(&self, now: u64) -> usize {
        let nodes = &self.inner.nodes;
        let n = nodes.len();
        for _ in 0..n {
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
            let until = nodes[i].down_until.load(Ordering::Acquire);
            if until == 0 || (until <= now && nodes[i].claim_retry(now)) {
                return i;
            }
        }
        self.inner.all_down.fetch_add(1, Ordering::Relaxed) % n
    }

    /// Node `i` failed at `now`. A failure reported within the back-off period of the
    /// failure that marked it down (a request sent before it was marked) changes
    /// nothing; a later one (the request that tried it again) doubles the period.
    pub(crate) fn mark_dead_at(&self, i: usize, now: u64) {
        let node = &self.inner.nodes[i];
        let mut health = node.lock();
        let was_up = node.down_until.load(Ordering::Acquire) == 0;
        if !was_up && now < health.failed_at.saturating_add(backoff_ms(health.failures)) {
            return;
        }
        health.failures = health.failures.saturating_add(1);
        health.failed_at = now;
        let retry_in_ms = backoff_ms(health.failures);
        node.down_until
            .store(now.saturating_add(retry_in_ms).max(1), Ordering::Release);
        if was_up {
            self.inner.down.fetch_add(1, Ordering::AcqRel);
            node.up.set(0);
        }
        if self.inner.nodes.len() > 1 {
            tracing::warn!(
                node = %node.name,
                failures = health.failures,
                retry_in_ms,
                "Elasticsearch node not answering (cannot connect or timed out): skipped \
                 while other nodes answer, tried again after the back-off"
            );
        } else {
            // The only node is used all the same; the caller's error says what failed.
            tracing::debug!(
                node = %node.name,
                failures = health.failures,
                "Elasticsearch node not answering"
            );
        }
    }

    /// Node `i` failed now (see [`NodePool::mark_dead_at`]).
    pub(crate) fn mark_dead_index(&self, i: usize) {
        self.mark_dead_at(i, self.now());
    }

    /// Node `i` answered: it is up again.
    pub(crate) fn mark_alive_index(&self, i: usize) {
        let node = &self.inner.nodes[i];
        if node.down_until.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut health = node.lock();
        if node.down_until.load(Ordering::Acquire) == 0 {
            return;
        }
        let failures = std::mem::take(&mut health.failures);
        node.down_until.store(0, Ordering::Release);
        self.inner.down.fetch_sub(1, Ordering::AcqRel);
        node.up.set(1);
        if self.inner.nodes.len() > 1 {
            tracing::info!(node = %node.name, failures, "Elasticsearch node answers again");
        }
    }
}

impl Node {
    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets one request try this node again at `now`, its back-off period being over:
    /// the period starts anew for the others, so they keep going elsewhere until this
    /// request's outcome is known. False when another request got there first.
    fn claim_retry(&self, now: u64) -> bool {
        let health = self.lock();
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 || until > now {
            return until == 0;
        }
        self.down_until.store(
            now.saturating_add(backoff_ms(health.failures)).max(1),
            Ordering::Release,
        );
        true
    }
}

impl ConnectionPool for NodePool {
    fn next(&self) -> Connection {
        let i = self.pick(self.now());
        let node = &self.inner.nodes[i];
        node.requests.inc();
        node.connection.clone()
    }
}

impl fmt::Debug for NodePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The back-off period after `failures` failures in a row.
pub(crate) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

fn backoff_ms(failures: u32) -> u64 {
    u64::try_from(backoff(failures).as_millis()).unwrap_or(u64::MAX)
}

/// A URL as shown: without user name and password.
pub(crate) fn display_name(url: &Url) -> String {
    let mut shown = url.clone();
    // Only URLs that cannot have credentials refuse these, and they have none to hide.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let text = shown.as_str();
    if shown.path() == "/" && shown.query().is_none() && shown.fragment().is_none() {
        text.trim_end_matches('/').to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pool_of(urls: &[&str]) -> NodePool {
        NodePool::new(urls.iter().map(|u| Url::parse(u).unwrap()).collect()).unwrap()
    }

    fn three() -> NodePool {
        pool_of(&["http://a:9200", "http://b:9200", "http://c:9200/"])
    }

    /// The nodes `count` requests go to at `now`.
    fn picks(pool: &NodePool, now: u64, count: usize) -> Vec<usize> {
        (0..count).map(|_| pool.pick(now)).collect()
    }

    const SECOND: u64 = 1000;

    #[test]
    fn an_empty_list_is_no_pool() {
        assert!(NodePool::new(Vec::new()).is_none());
    }

    #[test]
    fn requests_go_round_robin_over_the_nodes() {
        let pool = three();
        assert_eq!(picks(&pool, 0, 7), [0, 1, 2, 0, 1, 2, 0]);
        // Through the trait too: each connection is its node's, and counted.
        let urls: Vec<String> = (0..3)
            .map(|_| pool.next().url().as_str().to_owned())
            .collect();
        assert_eq!(urls, ["http://b:9200/", "http://c:9200/", "http://a:9200/"]);
        let counted: Vec<u64> = pool.inner.nodes.iter().map(|n| n.requests.get()).collect();
        assert_eq!(counted, [1, 1, 1]);
    }

    #[test]
    fn a_dead_node_is_skipped_while_others_answer() {
        let pool = three();
        pool.mark_dead_at(1, 0);
        assert_eq!(picks(&pool, 10, 6), [0, 2, 0, 2, 0, 2]);
        let status = pool.status();
        assert!(!status[1].up && status[1].failures == 1, "{status:?}");
        assert!(status[0].up && status[2].up);
    }

    #[test]
    fn a_dead_node_is_tried_again_by_one_request_after_its_backoff() {
        let pool = three();
        pool.mark_dead_at(1, 0);
        // Within the first second: skipped.
        assert!(!picks(&pool, SECOND - 1, 6).contains(&1));
        // Once it is over, exactly one of the next requests tries it again...
        let after = picks(&pool, SECOND, 6);
        assert_eq!(after.iter().filter(|&&i| i == 1).count(), 1, "{after:?}");
        // ...and the others keep going elsewhere until that one's outcome is known.
        assert!(!picks(&pool, SECOND + 10, 6).contains(&1));
        // It answered: back in the rotation.
        pool.mark_alive_index(1);
        assert!(pool.status()[1].up);
        assert_eq!(
            picks(&pool, SECOND + 20, 6)
                .iter()
                .filter(|&&i| i == 1)
                .count(),
            2
        );
    }

    #[test]
    fn the_backoff_doubles_with_each_failed_retry_up_to_its_maximum() {
        let pool = three();
        let mut now = 0;
        pool.mark_dead_at(0, now);
        for failures in 1..=8 {
            let period = backoff_ms(failures);
            assert_eq!(
                pool.inner.nodes[0].down_until.load(Ordering::Acquire),
                now + period,
                "after {failures} failures"
            );
            // Still skipped just before the period ends.
            assert!(!picks(&pool, now + period - 1, 3).contains(&0));
            // The retry fails.
            now += period;
            assert!(picks(&pool, now, 3).contains(&0));
            pool.mark_dead_at(0, now + 5);
            now += 5;
        }
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        assert_eq!(pool.status()[0].failures, 9);
    }

    #[test]
    fn failures_of_requests_sent_before_the_node_was_marked_do_not_lengthen_its_backoff() {
        let pool = three();
        pool.mark_dead_at(2, 0);
        pool.mark_dead_at(2, 100);
        pool.mark_dead_at(2, 900);
        assert_eq!(pool.status()[2].failures, 1);
        assert_eq!(
            pool.inner.nodes[2].down_until.load(Ordering::Acquire),
            SECOND
        );
    }

    #[test]
    fn when_every_node_is_down_they_are_still_tried_in_turn() {
        let pool = three();
        for i in 0..3 {
            pool.mark_dead_at(i, 0);
        }
        assert_eq!(picks(&pool, 10, 6), [0, 1, 2, 0, 1, 2]);
        // A single node, down: still the one.
        let single = pool_of(&["http://a:9200"]);
        single.mark_dead_at(0, 0);
        assert_eq!(picks(&single, 10, 3), [0, 0, 0]);
        assert_eq!(single.next().url().as_str(), "http://a:9200/");
    }

    #[test]
    fn an_answer_brings_a_node_back_and_resets_its_backoff() {
        let pool = three();
        pool.mark_dead_at(0, 0);
        pool.mark_dead_at(0, 2 * SECOND);
        assert_eq!(pool.status()[0].failures, 2);
        assert_eq!(pool.inner.down.load(Ordering::Acquire), 1);
        pool.mark_alive(&Url::parse("http://a:9200/carts/_doc/1?x=1").unwrap());
        assert_eq!(
            pool.status()[0],
            NodeStatus {
                node: "http://a:9200".into(),
                up: true,
                failures: 0
            }
        );
        assert_eq!(pool.inner.down.load(Ordering::Acquire), 0);
        // Down again: the period starts at its first length.
        pool.mark_dead_at(0, 10 * SECOND);
        assert_eq!(
            pool.inner.nodes[0].down_until.load(Ordering::Acquire),
            11 * SECOND
        );
    }

    #[test]
    fn reports_find_their_node_by_url() {
        let pool = pool_of(&[
            "http://proxy:80/es",
            "http://proxy:80/es-two/",
            "https://b:9200",
            "http://user:secret@c:9200",
        ]);
        let node = |u: &str| pool.node_of(&Url::parse(u).unwrap());
        assert_eq!(node("http://c:9200/_bulk"), Some(3));
        assert_eq!(node("http://proxy/es/_bulk?filter_path=errors"), Some(0));
        assert_eq!(node("http://proxy/es-two/carts/_count"), Some(1));
        assert_eq!(node("https://b:9200/"), Some(2));
        assert_eq!(node("http://b:9200/_bulk"), None);
        assert_eq!(node("http://elsewhere:9200/_bulk"), None);
        // A report about no node changes nothing.
        pool.mark_dead(&Url::parse("http://elsewhere:9200/_bulk").unwrap());
        assert!(pool.status().iter().all(|s| s.up));
        pool.mark_dead(&Url::parse("https://b:9200/_bulk").unwrap());
        assert!(!pool.status()[2].up);
    }

    #[test]
    fn the_metrics_say_where_requests_went_and_which_nodes_are_skipped() {
        let pool = pool_of(&["http://user:secret@a:9200", "http://b:9200"]);
        assert_eq!(
            pool.names().collect::<Vec<_>>(),
            ["http://a:9200", "http://b:9200"]
        );
        // Down for far longer than the test runs.
        pool.mark_dead_at(1, 1 << 40);
        for _ in 0..4 {
            let _ = pool.next();
        }
        let mut registry = Registry::default();
        pool.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert!(
            text.contains("salesflow_elasticsearch_requests_total{node=\"http://a:9200\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("salesflow_elasticsearch_node_up{node=\"http://b:9200\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("salesflow_elasticsearch_node_up{node=\"http://a:9200\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn names_hide_credentials_and_keep_paths() {
        let name = |u: &str| display_name(&Url::parse(u).unwrap());
        assert_eq!(name("http://u:p@es:9200/"), "http://es:9200");
        assert_eq!(name("https://es.example:443"), "https://es.example");
        assert_eq!(name("http://proxy/es/"), "http://proxy/es/");
    }
}
