//! What a run measured: per-scenario HDR histograms of latency (from each request's
//! scheduled start: no coordinated omission), outcomes, a per-second timeline, and
//! freshness (POST to queryable).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// 429 or 503 with Retry-After: the system refused to queue more.
    Shed,
    /// Another 4xx.
    Rejected,
    /// 5xx other than 503.
    ServerError,
    Timeout,
    /// Connection refused or reset.
    Transport,
    /// Not sent: `max_in_flight` requests were already waiting.
    Dropped,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Clone)]
pub struct ScenarioStats {
    pub latency: Histogram<u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub statuses: BTreeMap<u16, u64>,
}

impl Default for ScenarioStats {
    fn default() -> Self {
        Self {
            latency: histogram(),
            outcomes: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }
}

impl ScenarioStats {
    pub fn requests(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn ok(&self) -> u64 {
        self.outcomes.get(&Outcome::Ok).copied().unwrap_or(0)
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn error_rate(&self) -> f64 {
        let n = self.requests();
        if n == 0 {
            0.0
        } else {
            (n - self.ok()) as f64 / n as f64
        }
    }

    /// A latency quantile in milliseconds (of successful requests).
    #[allow(clippy::cast_precision_loss)]
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    fn add(&mut self, outcome: Outcome, status: u16, latency: Duration) {
        *self.outcomes.entry(outcome).or_default() += 1;
        if status > 0 {
            *self.statuses.entry(status).or_default() += 1;
        }
        if outcome == Outcome::Ok {
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, 600_000_000);
            let _ = self.latency.record(us);
        }
    }
}

/// One second of the run.
#[derive(Clone)]
pub struct Second {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Default for Second {
    fn default() -> Self {
        Self {
            ok: 0,
            errors: 0,
            latency: histogram(),
        }
    }
}

/// Everything recorded.
#[derive(Default)]
pub struct Stats {
    pub scenarios: Vec<ScenarioStats>,
    pub total: ScenarioStats,
    pub timeline: Vec<Second>,
    pub freshness: ScenarioStats,
    pub freshness_timeouts: u64,
    pub freshness_timeline: Vec<(f64, f64)>,
}

impl Stats {
    pub fn new(scenarios: usize) -> Self {
        Self {
            scenarios: vec![ScenarioStats::default(); scenarios],
            ..Self::default()
        }
    }

    /// Records a request that was scheduled `at` into the run.
    pub fn record(
        &mut self,
        scenario: usize,
        at: Duration,
        outcome: Outcome,
        status: u16,
        latency: Duration,
    ) {
        self.scenarios[scenario].add(outcome, status, latency);
        self.total.add(outcome, status, latency);
        let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        if self.timeline.len() <= second {
            self.timeline.resize(second + 1, Second::default());
        }
        let slot = &mut self.timeline[second];
        if outcome == Outcome::Ok {
            slot.ok += 1;
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, 600_000_000);
            let _ = slot.latency.record(us);
        } else {
            slot.errors += 1;
        }
    }

    pub fn record_freshness(&mut self, at: Duration, latency: Option<Duration>) {
        match latency {
            Some(latency) => {
                self.freshness.add(Outcome::Ok, 0, latency);
                self.freshness_timeline
                    .push((at.as_secs_f64(), latency.as_secs_f64() * 1000.0));
            }
            None => self.freshness_timeouts += 1,
        }
    }
}
