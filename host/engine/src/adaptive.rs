//! Adaptive sink concurrency: how many writes a sink lane keeps in flight, found from the
//! server's answers instead of a hand-picked number.
//!
//! The controller is additive-increase, multiplicative-decrease over round-trip times, as
//! in TCP congestion control and Vector's adaptive request concurrency. Writes are watched
//! in windows of about one mean round trip. At the end of a window the limit
//!
//! - grows by one when the window used the whole limit with more writes waiting, saw no
//!   back-pressure, and its mean round trip was no longer than the long-run mean (more
//!   writes in flight did not make the server slower: it had room);
//! - shrinks to 90 % (at least by one) when the server pushed back (a 429, a timeout, a
//!   write that failed and goes back to its source) or the window's mean round trip rose
//!   above the long-run mean by more than 2.5 of its standard deviations (and a twentieth
//!   of the mean: the server is queueing what it is sent);
//! - stays otherwise.
//!
//! The long-run mean and variance are exponentially weighted (alpha 0.4) over windows.
//! A window's round trips count only writes that succeeded without back-pressure: a write
//! retried after a 429 took as long as its backoff, not as the server.

use std::time::{Duration, Instant};

/// Concurrency of a sink's lane: fixed, or adaptive up to a maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    Fixed(usize),
    Adaptive { max: usize },
}

impl Concurrency {
    /// When a sink's table does not say: adaptive, up to this many writes per lane.
    pub const DEFAULT_MAX: usize = 64;
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concurrency::Fixed(n) => write!(f, "{n}"),
            Concurrency::Adaptive { max } => write!(f, "adaptive (1 to {max})"),
        }
    }
}

/// How a finished write counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, with no sign of an overloaded server: its round trip is a measurement.
    Written,
    /// The server pushed back (429, 503, a timeout, a queue full), or the write failed
    /// and goes back to its source.
    Backpressure,
    /// Ended otherwise (events refused for good): says nothing about the server's load.
    Other,
}

const DECREASE_RATIO: f64 = 0.9;
const EWMA_ALPHA: f64 = 0.4;
const RTT_DEVIATION_SCALE: f64 = 2.5;

/// One lane's limit and what it has seen.
#[derive(Debug)]
pub struct Limiter {
    limit: usize,
    max: usize,
    adaptive: bool,
    /// Long-run round trip (seconds): mean and variance over windows.
    past: Option<(f64, f64)>,
    window: Window,
    next_update: Option<Instant>,
}

#[derive(Debug, Default)]
struct Window {
    rtt_sum: f64,
    rtt_count: u32,
    back_pressure: bool,
    reached_limit: bool,
}

impl Window {
    fn mean(&self) -> Option<f64> {
        (self.rtt_count > 0).then(|| self.rtt_sum / f64::from(self.rtt_count))
    }
}

impl Limiter {
    pub fn new(concurrency: Concurrency) -> Self {
        let (limit, max, adaptive) = match concurrency {
            Concurrency::Fixed(n) => (n.max(1), n.max(1), false),
            Concurrency::Adaptive { max } => (1, max.max(1), true),
        };
        Self {
            limit,
            max,
            adaptive,
            past: None,
            window: Window::default(),
            next_update: None,
        }
    }

    /// Writes this lane may have in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A write started; `in_flight` counts it, and `waiting` says whether more writes
    /// wait behind it. Only a limit reached with writes waiting is evidence that more
    /// would be used: a lane at low load does not creep up to its maximum.
    pub fn started(&mut self, in_flight: usize, waiting: bool) {
        if in_flight >= self.limit && waiting {
            self.window.reached_limit = true;
        }
    }

    /// A write that started `rtt` ago finished at `now`.
    pub fn finished(&mut self, now: Instant, rtt: Duration, outcome: Outcome) {
        match outcome {
            Outcome::Written => {
                self.window.rtt_sum += rtt.as_secs_f64();
                self.window.rtt_count += 1;
            }
            Outcome::Backpressure => self.window.back_pressure = true,
            Outcome::Other => {}
        }
        let current = self.window.mean();
        let Some((mean, variance)) = self.past else {
            // The first measurement sets the long-run mean and the first window's length.
            if let Some(current) = current {
                self.past = Some((current, 0.0));
                self.next_update = Some(now + Duration::from_secs_f64(current));
                self.window = Window::default();
            } else if self.window.back_pressure {
                self.decrease();
                self.window = Window::default();
            }
            return;
        };
        if self.next_update.is_some_and(|at| now < at) {
            return;
        }
        if self.adaptive {
            // At least a twentieth of the mean: round trips that never vary (no deviation)
            // would otherwise read the smallest jitter as queueing.
            let threshold = (variance.sqrt() * RTT_DEVIATION_SCALE).max(mean / 20.0);
            let room = self.window.reached_limit
                && !self.window.back_pressure
                && current.is_some_and(|c| c <= mean);
            let queueing =
                self.window.back_pressure || current.is_some_and(|c| c > mean + threshold);
            if room && self.limit < self.max {
                self.limit += 1;
            } else if queueing {
                self.decrease();
            }
        }
        let (mean, variance) = match current {
            Some(c) => {
                let diff = c - mean;
                let mean = mean + EWMA_ALPHA * diff;
                (
                    mean,
                    (1.0 - EWMA_ALPHA) * (variance + EWMA_ALPHA * diff * diff),
                )
            }
            None => (mean, variance),
        };
        self.past = Some((mean, variance));
        self.next_update = Some(now + Duration::from_secs_f64(mean));
        self.window = Window::default();
    }

    fn decrease(&mut self) {
        if self.adaptive && self.limit > 1 {
            // Lossless enough: limits are small whole numbers.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let kept = (self.limit as f64 * DECREASE_RATIO) as usize;
            self.limit = kept.clamp(1, self.limit - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that serves `capacity` writes at once in `base` each; writes beyond that
    /// queue, so a write's round trip grows with what is in flight past the capacity.
    /// With `throttle_above`, it answers 429 (back-pressure) when more are in flight.
    struct Server {
        capacity: usize,
        base: Duration,
        throttle_above: Option<usize>,
    }

    impl Server {
        fn answer(&self, in_flight: usize) -> (Duration, Outcome) {
            if self.throttle_above.is_some_and(|t| in_flight > t) {
                return (self.base, Outcome::Backpressure);
            }
            let waves = in_flight.div_ceil(self.capacity);
            (self.base * u32::try_from(waves).unwrap(), Outcome::Written)
        }
    }

    /// Drives a limiter with a closed loop of always-waiting writes for `steps` rounds of
    /// writes: each round keeps the limit in flight and finishes them together.
    fn drive(limiter: &mut Limiter, server: &Server, steps: usize) -> Vec<usize> {
        let mut now = Instant::now();
        let mut limits = Vec::new();
        for _ in 0..steps {
            let in_flight = limiter.limit();
            for n in 1..=in_flight {
                limiter.started(n, true);
            }
            let (rtt, outcome) = server.answer(in_flight);
            now += rtt;
            for _ in 0..in_flight {
                limiter.finished(now, rtt, outcome);
            }
            limits.push(limiter.limit());
        }
        limits
    }

    #[test]
    fn the_limit_grows_while_more_writes_do_not_slow_the_server() {
        let server = Server {
            capacity: 1000,
            base: Duration::from_millis(5),
            throttle_above: None,
        };
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 16 });
        let limits = drive(&mut limiter, &server, 200);
        assert_eq!(limits.last(), Some(&16), "{limits:?}");
        assert!(limits.windows(2).all(|w| w[1] >= w[0]), "{limits:?}");
    }

    #[test]
    fn the_limit_settles_near_what_the_server_serves_at_once() {
        let server = Server {
            capacity: 8,
            base: Duration::from_millis(5),
            throttle_above: None,
        };
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 64 });
        let limits = drive(&mut limiter, &server, 2000);
        let tail = &limits[1000..];
        let max = *tail.iter().max().unwrap();
        let min = *tail.iter().min().unwrap();
        // Past 8 in flight every write waits a second round: the limit does not stay there.
        assert!(max <= 12, "{tail:?}");
        assert!(min >= 4, "{tail:?}");
    }

    #[test]
    fn back_pressure_cuts_the_limit_and_keeps_it_under_the_throttle() {
        let server = Server {
            capacity: 1000,
            base: Duration::from_millis(5),
            throttle_above: Some(10),
        };
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 64 });
        let limits = drive(&mut limiter, &server, 1000);
        let tail = &limits[500..];
        assert!(tail.iter().all(|l| *l <= 11), "{tail:?}");
        assert!(tail.iter().any(|l| *l >= 8), "{tail:?}");
    }

    #[test]
    fn without_writes_waiting_the_limit_stays() {
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 64 });
        let mut now = Instant::now();
        for _ in 0..500 {
            limiter.started(1, false);
            now += Duration::from_millis(5);
            limiter.finished(now, Duration::from_millis(5), Outcome::Written);
        }
        assert_eq!(limiter.limit(), 1);
    }

    #[test]
    fn a_fixed_concurrency_never_moves() {
        let server = Server {
            capacity: 2,
            base: Duration::from_millis(5),
            throttle_above: Some(1),
        };
        let mut limiter = Limiter::new(Concurrency::Fixed(6));
        let limits = drive(&mut limiter, &server, 100);
        assert!(limits.iter().all(|l| *l == 6), "{limits:?}");
    }
}
