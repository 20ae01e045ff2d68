//! Taps: a bounded sample of the live events leaving a component, for `salesflow tap`.
//!
//! A component's [`Output`](crate::Output) may carry a [`Tap`]. While nobody watches, a
//! send costs one atomic load; while someone does, the first [`PER_BATCH`] events of each
//! batch are offered to a bounded broadcast channel (never waiting: a slow watcher loses
//! events, the pipeline never does), and each watcher keeps what its rate allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use crate::event::Event;

/// Events offered per batch while watched.
pub const PER_BATCH: usize = 64;

/// Events a watcher may fall behind by before it loses the oldest.
const CAPACITY: usize = 1024;

/// The tap of one component output.
pub struct Tap {
    watchers: AtomicUsize,
    sender: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tap({} watching)", self.watchers.load(Ordering::Relaxed))
    }
}

impl Tap {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            watchers: AtomicUsize::new(0),
            sender: broadcast::channel(CAPACITY).0,
        })
    }

    /// Offers a batch's events to the watchers, if any; never waits.
    pub fn offer(&self, events: &[Event]) {
        if self.watchers.load(Ordering::Relaxed) == 0 {
            return;
        }
        for event in events.iter().take(PER_BATCH) {
            // No receiver left between the check and the send: nothing to do.
            let _ = self.sender.send(event.clone());
        }
    }

    /// Starts watching; the watch ends when the returned value is dropped.
    pub fn watch(self: &Arc<Self>) -> Watch {
        let receiver = self.sender.subscribe();
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            tap: Arc::clone(self),
            receiver,
        }
    }
}

/// One watcher of a [`Tap`].
pub struct Watch {
    tap: Arc<Tap>,
    receiver: broadcast::Receiver<Event>,
}

impl Watch {
    /// The next event offered; events this watcher fell behind on are skipped. `None`
    /// once the tap is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unwatched_taps_offer_nothing_and_watchers_see_a_bounded_sample() {
        let tap = Tap::new();
        tap.offer(&[Event::new("lost")]);
        let mut watch = tap.watch();
        let batch: Vec<Event> = (0..100).map(|i| Event::new(format!("{i}"))).collect();
        tap.offer(&batch);
        for i in 0..PER_BATCH {
            assert_eq!(
                watch.next().await.unwrap().payload,
                format!("{i}").as_bytes()
            );
        }
        drop(watch);
        assert_eq!(tap.watchers.load(Ordering::Relaxed), 0);
    }
}
