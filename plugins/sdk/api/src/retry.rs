//! One retry policy for every call to the outside world: exponential backoff with jitter
//! (so that writers that failed together do not retry together), bounded by a total time,
//! and only for errors the caller classifies as transient — a refused request is
//! answered at once, not retried until the time runs out.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prometheus_client::metrics::counter::Counter;

/// How long and how often to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay; each next one doubles, up to `max_delay`, with jitter.
    pub first: Duration,
    pub max_delay: Duration,
    /// How long all the retries may take together before the last error is returned.
    pub total: Duration,
}

impl RetryPolicy {
    pub fn new(first: Duration, max_delay: Duration, total: Duration) -> Self {
        Self {
            first,
            max_delay,
            total,
        }
    }

    /// Runs `op` until it succeeds, fails with an error `transient` says is not, or the
    /// policy's time runs out. `retries` counts the retries (a metric); each is logged
    /// with `what`.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        op: F,
        transient: impl Fn(&E) -> bool,
        retries: &Counter,
    ) -> Result<T, Retried<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let attempts = AtomicU32::new(1);
        let backoff = ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.max_delay)
            .with_jitter()
            .with_total_delay(Some(self.total))
            .without_max_times();
        op.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| transient(e))
            .notify(|e, delay| {
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                retries.inc();
                tracing::warn!(
                    attempt,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %e,
                    "{what} failed; retrying"
                );
            })
            .await
            .map_err(|error| Retried {
                attempts: attempts.load(Ordering::Relaxed),
                error,
            })
    }
}

/// The error a call ended with, and after how many attempts.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({attempts} attempts)")]
pub struct Retried<E: std::fmt::Display> {
    pub attempts: u32,
    #[source]
    pub error: E,
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(1),
            Duration::from_millis(4),
            Duration::from_millis(200),
        )
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let retries = Counter::default();
        let result: Result<u32, Retried<String>> = policy()
            .run(
                "a call",
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                        Err("busy".to_owned())
                    } else {
                        Ok(7)
                    }
                },
                |_| true,
                &retries,
            )
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(retries.get(), 3);
    }

    #[tokio::test]
    async fn a_permanent_error_is_answered_at_once() {
        let calls = AtomicUsize::new(0);
        let retries = Counter::default();
        let result: Result<(), Retried<String>> = policy()
            .run(
                "a call",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("refused".to_owned())
                },
                |e: &String| e != "refused",
                &retries,
            )
            .await;
        let e = result.unwrap_err();
        assert_eq!((e.attempts, calls.load(Ordering::SeqCst)), (1, 1));
        assert_eq!(e.to_string(), "refused (1 attempts)");
    }

    #[tokio::test]
    async fn retries_stop_when_the_time_runs_out() {
        let retries = Counter::default();
        let started = std::time::Instant::now();
        let result: Result<(), Retried<String>> = policy()
            .run(
                "a call",
                || async { Err("down".to_owned()) },
                |_| true,
                &retries,
            )
            .await;
        assert!(result.unwrap_err().attempts > 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
