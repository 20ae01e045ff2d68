//! Running a profile: the steps in order, open or closed model; each request timed from
//! when it was scheduled; accepted orders remembered for freshness and reconciliation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::data::Generator;
use crate::profile::{Keys, Profile, ScenarioKind, Step, with_key};
use crate::stats::{Outcome, Stats};

/// What the system accepted (2xx / delivered), to follow and reconcile.
#[derive(Default)]
pub struct Ledger {
    /// Accepted order id -> its cart's index.
    pub orders: HashMap<Uuid, usize>,
    /// Accepted single-order bodies, to post again as duplicates.
    pub recent: Vec<Value>,
    pub duplicates_posted: u64,
    pub invalid_refused: u64,
    /// Orders made invalid on purpose that were accepted anyway (must stay 0).
    pub invalid_accepted: u64,
}

pub struct Engine {
    pub profile: Profile,
    pub generator: Mutex<Generator>,
    pub stats: Mutex<Stats>,
    pub ledger: Mutex<Ledger>,
    client: reqwest::Client,
    keys: Keys,
    producer: Option<FutureProducer>,
    weights: Vec<u32>,
    started: Instant,
    recording: AtomicBool,
    pub in_flight: AtomicUsize,
    pub aborted: Mutex<Option<String>>,
    singles: AtomicU64,
    /// Whose turn it is among the Command API URLs.
    command_turn: AtomicUsize,
    followers: Mutex<tokio::task::JoinSet<()>>,
}

fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Ok,
        429 | 503 => Outcome::Shed,
        400..=499 => Outcome::Rejected,
        _ => Outcome::ServerError,
    }
}

fn transport(e: &reqwest::Error) -> Outcome {
    if e.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::Transport
    }
}

impl Engine {
    pub fn new(profile: Profile, run_id: u64) -> anyhow::Result<Arc<Self>> {
        let client = profile.target.client(profile.target.request_timeout, 512)?;
        let keys = profile.target.keys()?;
        let producer = if profile
            .scenarios
            .iter()
            .any(|s| s.kind == ScenarioKind::ProduceKafka)
        {
            Some(
                ClientConfig::new()
                    .set("bootstrap.servers", &profile.target.kafka_bootstrap)
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5")
                    // Where salesflow's own producer (and Java's) put a cart's key.
                    .set("partitioner", "murmur2_random")
                    .create()?,
            )
        } else {
            None
        };
        let generator = Generator::new(&profile.data, profile.seed, run_id);
        let weights = profile.scenarios.iter().map(|s| s.weight).collect();
        Ok(Arc::new(Self {
            stats: Mutex::new(Stats::new(profile.scenarios.len())),
            generator: Mutex::new(generator),
            ledger: Mutex::new(Ledger::default()),
            client,
            keys,
            producer,
            weights,
            started: Instant::now(),
            recording: AtomicBool::new(profile.warmup.is_zero()),
            in_flight: AtomicUsize::new(0),
            aborted: Mutex::new(None),
            singles: AtomicU64::new(0),
            command_turn: AtomicUsize::new(0),
            followers: Mutex::new(tokio::task::JoinSet::new()),
            profile,
        }))
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    fn pick_scenario(&self) -> usize {
        let total: u32 = self.weights.iter().sum();
        let mut ticket = {
            let mut g = self
                .generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            u32::try_from(g.below(total as usize)).unwrap_or(0)
        };
        for (i, w) in self.weights.iter().enumerate() {
            if ticket < *w {
                return i;
            }
            ticket -= w;
        }
        0
    }

    fn record(&self, scenario: usize, scheduled: Instant, outcome: Outcome, status: u16) {
        if !self.recording() {
            return;
        }
        let at = scheduled.saturating_duration_since(self.started);
        let latency = scheduled.elapsed();
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(scenario, at, outcome, status, latency);
    }

    /// The Command API base URL the next request goes to: round-robin over the targets.
    fn command_api(&self) -> &str {
        self.profile
            .target
            .command_api
            .at(self.command_turn.fetch_add(1, Ordering::Relaxed))
    }

    fn stopped(&self) -> bool {
        self.aborted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// One request of scenario `scenario`, timed from `scheduled`.
    async fn execute(self: Arc<Self>, scenario: usize, scheduled: Instant) {
        let kind = self.profile.scenarios[scenario].kind;
        let (outcome, status) = match kind {
            ScenarioKind::PostOrder => self.post_order(scheduled).await,
            ScenarioKind::PostBatch => self.post_batch().await,
            ScenarioKind::GetCart => self.get_cart().await,
            ScenarioKind::Search => self.search().await,
            ScenarioKind::ProduceKafka => self.produce().await,
        };
        self.record(scenario, scheduled, outcome, status);
    }

    async fn post_order(self: &Arc<Self>, scheduled: Instant) -> (Outcome, u16) {
        let (order, duplicate) = {
            let mut g = self
                .generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let dup = g.chance(self.profile.data.duplicate_share);
            let mut ledger = self
                .ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if dup && !ledger.recent.is_empty() {
                let i = g.below(ledger.recent.len());
                ledger.duplicates_posted += 1;
                (None, Some(ledger.recent[i].clone()))
            } else {
                (Some(g.order()), None)
            }
        };
        let body = order
            .as_ref()
            .map_or_else(|| duplicate.clone().unwrap_or_default(), |o| o.body.clone());
        let url = format!("{}/orders", self.command_api());
        let request = with_key(self.client.post(&url), self.keys.ingest.as_ref());
        let response = match request.json(&body).send().await {
            Ok(r) => r,
            Err(e) => return (transport(&e), 0),
        };
        let status = response.status().as_u16();
        let Some(order) = order else {
            return (classify(status), status);
        };
        let mut ledger = self
            .ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if order.invalid {
            return if status == 400 {
                ledger.invalid_refused += 1;
                (Outcome::Ok, status)
            } else {
                if (200..300).contains(&status) {
                    ledger.invalid_accepted += 1;
                }
                (Outcome::Rejected, status)
            };
        }
        if (200..300).contains(&status) {
            ledger.orders.insert(order.order_id, order.cart);
            if ledger.recent.len() < 1000 {
                ledger.recent.push(order.body.clone());
            }
            drop(ledger);
            let n = self.singles.fetch_add(1, Ordering::Relaxed) + 1;
            let every = self.profile.freshness.sample_every as u64;
            if every > 0 && n.is_multiple_of(every) && self.recording() {
                self.follow(order.cart, order.order_id, scheduled);
            }
        }
        (classify(status), status)
    }

    async fn post_batch(self: &Arc<Self>) -> (Outcome, u16) {
        let orders: Vec<_> = {
            let mut g = self
                .generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (0..self.profile.data.batch_size)
                .map(|_| {
                    loop {
                        let o = g.order();
                        if !o.invalid {
                            break o;
                        }
                    }
                })
                .collect()
        };
        let bodies: Vec<&Value> = orders.iter().map(|o| &o.body).collect();
        let url = format!("{}/orders/batch", self.command_api());
        let request = with_key(self.client.post(&url), self.keys.ingest.as_ref());
        let response = match request.json(&bodies).send().await {
            Ok(r) => r,
            Err(e) => return (transport(&e), 0),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            let mut ledger = self
                .ledger
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for o in &orders {
                ledger.orders.insert(o.order_id, o.cart);
            }
        }
        (classify(status), status)
    }

    fn some_cart(&self) -> usize {
        let mut g = self
            .generator
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.pick_cart()
    }

    async fn get_cart(self: &Arc<Self>) -> (Outcome, u16) {
        let id = {
            let cart = self.some_cart();
            self.generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .carts[cart]
                .id
        };
        let url = format!("{}/carts/{id}", self.profile.target.query_api);
        match with_key(self.client.get(&url), self.keys.query.as_ref())
            .send()
            .await
        {
            // A cart nobody ordered in yet is 404: a right answer.
            Ok(r) if r.status() == 404 => (Outcome::Ok, 404),
            Ok(r) => (classify(r.status().as_u16()), r.status().as_u16()),
            Err(e) => (transport(&e), 0),
        }
    }

    async fn search(self: &Arc<Self>) -> (Outcome, u16) {
        let user = {
            let cart = self.some_cart();
            self.generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .carts[cart]
                .user
                .clone()
        };
        let url = format!("{}/carts", self.profile.target.query_api);
        match with_key(self.client.get(&url), self.keys.query.as_ref())
            .query(&[("user_id", user.as_str()), ("size", "10")])
            .send()
            .await
        {
            Ok(r) => (classify(r.status().as_u16()), r.status().as_u16()),
            Err(e) => (transport(&e), 0),
        }
    }

    async fn produce(self: &Arc<Self>) -> (Outcome, u16) {
        let Some(producer) = &self.producer else {
            return (Outcome::Transport, 0);
        };
        let order = {
            let mut g = self
                .generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            loop {
                let o = g.order();
                if !o.invalid {
                    break o;
                }
            }
        };
        let key = order.body["cart_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let payload = order.body.to_string();
        let record = FutureRecord::to(&self.profile.target.orders_topic)
            .key(&key)
            .payload(&payload);
        match producer
            .send(record, self.profile.target.request_timeout)
            .await
        {
            Ok(_) => {
                self.ledger
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .orders
                    .insert(order.order_id, order.cart);
                (Outcome::Ok, 0)
            }
            Err(_) => (Outcome::ServerError, 0),
        }
    }

    /// Follows an accepted order until the Query API shows it in its cart.
    fn follow(self: &Arc<Self>, cart: usize, order: Uuid, scheduled: Instant) {
        let engine = Arc::clone(self);
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        followers.spawn(async move {
            let id = engine
                .generator
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .carts[cart]
                .id;
            let url = format!("{}/carts/{id}", engine.profile.target.query_api);
            let wanted = order.to_string();
            let deadline = scheduled + engine.profile.freshness.timeout;
            let at = scheduled.saturating_duration_since(engine.started);
            let poll_max = engine.profile.freshness.poll_max;
            let mut pause = Duration::from_millis(10).min(poll_max);
            loop {
                if let Ok(r) = with_key(engine.client.get(&url), engine.keys.query.as_ref())
                    .send()
                    .await
                    && r.status() == 200
                    && let Ok(doc) = r.json::<Value>().await
                    && doc["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i["order_id"] == wanted.as_str()))
                {
                    let latency = scheduled.elapsed();
                    engine
                        .stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record_freshness(at, Some(latency));
                    return;
                }
                if Instant::now() >= deadline {
                    engine
                        .stats
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .record_freshness(at, None);
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 3 / 2).min(poll_max);
            }
        });
    }

    /// Waits for the followers still out.
    pub async fn settle_followers(&self) {
        let mut set = std::mem::take(
            &mut *self
                .followers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        while set.join_next().await.is_some() {}
    }

    /// Starts a request at `scheduled` unless too many are in flight.
    fn launch(self: &Arc<Self>, scheduled: Instant) {
        let scenario = self.pick_scenario();
        if self.in_flight.load(Ordering::Relaxed) >= self.profile.target.max_in_flight {
            self.record(scenario, scheduled, Outcome::Dropped, 0);
            return;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let e = Arc::clone(&engine);
            e.execute(scenario, scheduled).await;
            engine.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Open model: requests start on schedule, at `rate(t)` per second.
    async fn open(self: &Arc<Self>, duration: Duration, rate: impl Fn(f64) -> f64) {
        let start = Instant::now();
        let end = start + duration;
        let mut next = start;
        while next < end && !self.stopped() {
            tokio::time::sleep_until(next).await;
            self.launch(next);
            let r = rate((next - start).as_secs_f64()).max(0.1);
            next += Duration::from_secs_f64(1.0 / r);
        }
    }

    /// Closed model: `copies(t)` clients, each sending its next request when the last ends.
    async fn closed(self: &Arc<Self>, duration: Duration, copies: impl Fn(f64) -> usize) {
        let start = Instant::now();
        let end = start + duration;
        let mut workers: Vec<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)> = Vec::new();
        while Instant::now() < end && !self.stopped() {
            let want = copies(start.elapsed().as_secs_f64()).max(1);
            while workers.len() < want {
                let stop = Arc::new(AtomicBool::new(false));
                let engine = Arc::clone(self);
                let flag = Arc::clone(&stop);
                let handle = tokio::spawn(async move {
                    while !flag.load(Ordering::Relaxed) && Instant::now() < end && !engine.stopped()
                    {
                        let scenario = engine.pick_scenario();
                        engine.in_flight.fetch_add(1, Ordering::Relaxed);
                        Arc::clone(&engine).execute(scenario, Instant::now()).await;
                        engine.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                });
                workers.push((stop, handle));
            }
            while workers.len() > want {
                if let Some((stop, _)) = workers.pop() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (stop, handle) in workers {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.await;
        }
    }

    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    async fn step(self: &Arc<Self>, step: &Step, duration: Duration) {
        match *step {
            Step::Inject { rate, .. } => self.open(duration, |_| rate).await,
            Step::RampInject {
                from,
                to,
                duration: total,
            } => {
                let total = total.as_secs_f64();
                self.open(duration, |t| from + (to - from) * (t / total).min(1.0))
                    .await;
            }
            Step::KeepConcurrent { copies, .. } => self.closed(duration, |_| copies).await,
            Step::RampConcurrent {
                from,
                to,
                duration: total,
            } => {
                let total = total.as_secs_f64();
                self.closed(duration, |t| {
                    (from as f64 + (to as f64 - from as f64) * (t / total).min(1.0)).round()
                        as usize
                })
                .await;
            }
        }
    }

    /// Runs the warm-up, then every step; then waits for requests still in flight.
    pub async fn run(self: &Arc<Self>) {
        if !self.profile.warmup.is_zero() {
            let first = self.profile.steps[0].clone();
            self.step(&first, self.profile.warmup).await;
            self.recording.store(true, Ordering::Relaxed);
        }
        let steps = self.profile.steps.clone();
        for (i, step) in steps.iter().enumerate() {
            if self.stopped() {
                break;
            }
            println!("step {}/{}: {}", i + 1, steps.len(), step.describe());
            self.step(step, step.duration()).await;
        }
        let deadline =
            Instant::now() + self.profile.target.request_timeout + Duration::from_secs(1);
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A Command API that accepts every request (202), and how many it accepted.
    async fn command_api() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buffered = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        // One request: its head, then `content-length` bytes of body.
                        let complete =
                            buffered
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .and_then(|end| {
                                    let head =
                                        String::from_utf8_lossy(&buffered[..end]).to_lowercase();
                                    let length = head
                                        .lines()
                                        .find_map(|l| l.strip_prefix("content-length:"))
                                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                                    (buffered.len() >= end + 4 + length).then_some(end + 4 + length)
                                });
                        if let Some(size) = complete {
                            buffered.drain(..size);
                            count.fetch_add(1, Ordering::SeqCst);
                            socket
                                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                                .await
                                .unwrap();
                            continue;
                        }
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buffered.extend_from_slice(&chunk[..n]);
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn orders_go_round_robin_over_the_command_apis_and_are_all_remembered() {
        let (a, to_a) = command_api().await;
        let (b, to_b) = command_api().await;
        let (c, to_c) = command_api().await;
        let profile: Profile = toml::from_str(&format!(
            r#"
name = "spread"
[target]
command_api = ["{a}", "{b}/", "{c}"]
[data]
batch_size = 3
[freshness]
sample_every = 0
[reconcile]
enabled = false
[[scenarios]]
name = "post-order"
kind = "post-order"
[[scenarios]]
name = "post-batch"
kind = "post-batch"
[[steps]]
kind = "inject"
rate = 1
duration = "1s"
"#
        ))
        .unwrap();
        let engine = Engine::new(profile, 7).unwrap();
        let mut orders = 0;
        for turn in 0..12 {
            let scenario = turn % 2;
            Arc::clone(&engine).execute(scenario, Instant::now()).await;
            orders += if scenario == 0 { 1 } else { 3 };
        }
        let sent: Vec<usize> = [&to_a, &to_b, &to_c]
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect();
        assert_eq!(sent, [4, 4, 4]);
        // Every accepted order is in the ledger the reconciliation reads, whichever
        // process took it.
        let ledger = engine.ledger.lock().unwrap();
        assert_eq!(ledger.orders.len(), orders);
        let stats = engine.stats.lock().unwrap();
        assert_eq!(stats.total.ok(), 12);
    }
}
