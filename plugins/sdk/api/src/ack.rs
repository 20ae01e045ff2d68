//! End-to-end acknowledgement.
//!
//! A source attaches an [`AckHandle`] to each batch it emits. Every copy of the batch
//! (fan-out clones it; a batching stage merges several batches' handles into one) holds a
//! clone of the handle. When the last clone is gone, the source's callback runs once with
//! the combined [`Status`]: delivered only if every holder finished with
//! [`Status::Delivered`]. A handle dropped without being finished counts as failed — an
//! event lost on the way (a channel closed at shutdown, a task that died) must never look
//! delivered, or a Kafka offset would be committed past it.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What became of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every sink durably accepted it (or a stage deliberately dropped it).
    Delivered,
    /// A stage refused some of its events; nothing of the batch was kept.
    Rejected(Vec<Rejection>),
    /// It could not be delivered; the reason says why.
    Failed(String),
}

impl Status {
    pub fn is_delivered(&self) -> bool {
        matches!(self, Status::Delivered)
    }

    /// Combines two outcomes of the same batch: a failure wins over a rejection, which
    /// wins over delivery; rejections accumulate; a failure with a reason wins over a
    /// claim merely dropped.
    #[must_use]
    pub fn combine(self, other: Status) -> Status {
        match (self, other) {
            (Status::Failed(a), Status::Failed(b)) if a == DROPPED => Status::Failed(b),
            (Status::Failed(a), _) => Status::Failed(a),
            (_, Status::Failed(b)) => Status::Failed(b),
            (Status::Rejected(mut a), Status::Rejected(b)) => {
                a.extend(b);
                Status::Rejected(a)
            }
            (Status::Rejected(a), Status::Delivered) | (Status::Delivered, Status::Rejected(a)) => {
                Status::Rejected(a)
            }
            (Status::Delivered, Status::Delivered) => Status::Delivered,
        }
    }
}

/// One refused event and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The event's position in the batch its source emitted (for HTTP: in the request).
    pub index: Option<u32>,
    /// Every reason, e.g. `quantity: must be at least 1`.
    pub reasons: Vec<String>,
}

/// The reason recorded for a claim dropped without being finished.
pub const DROPPED: &str = "dropped before it was delivered (shutdown or a failed task)";

type Callback = Box<dyn FnOnce(Status) + Send>;

struct Shared {
    status: Mutex<Status>,
    callback: Mutex<Option<Callback>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let status = std::mem::replace(
            self.status
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Status::Delivered,
        );
        if let Some(callback) = self
            .callback
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            callback(status);
        }
    }
}

/// A claim on a source batch's acknowledgement; see the module docs.
pub struct AckHandle {
    shared: Arc<Shared>,
    finished: bool,
}

impl AckHandle {
    /// A handle whose `callback` runs once, when every clone has been finished or dropped.
    pub fn new(callback: impl FnOnce(Status) + Send + 'static) -> Self {
        Self {
            shared: Arc::new(Shared {
                status: Mutex::new(Status::Delivered),
                callback: Mutex::new(Some(Box::new(callback))),
            }),
            finished: false,
        }
    }

    /// A handle and the receiver its status arrives on.
    pub fn channel() -> (Self, tokio::sync::oneshot::Receiver<Status>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Self::new(move |status| {
                let _ = tx.send(status);
            }),
            rx,
        )
    }

    /// Records this holder's outcome and releases the claim.
    pub fn finish(mut self, status: &Status) {
        self.record(status.clone());
        self.finished = true;
    }

    fn record(&self, status: Status) {
        if status.is_delivered() {
            return;
        }
        let mut current = self
            .shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let previous = std::mem::replace(&mut *current, Status::Delivered);
        *current = previous.combine(status);
    }
}

impl Clone for AckHandle {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            finished: false,
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.record(Status::Failed(DROPPED.into()));
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle")
            .field("holders", &Arc::strong_count(&self.shared))
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// The handles a batch carries: one per source batch it holds events of.
#[derive(Clone, Debug, Default)]
pub struct AckSet(Vec<AckHandle>);

impl AckSet {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    pub fn one(handle: AckHandle) -> Self {
        Self(vec![handle])
    }

    pub fn extend(&mut self, other: AckSet) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Finishes every handle with `status`.
    pub fn finish(self, status: &Status) {
        for handle in self.0 {
            handle.finish(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_only_when_every_clone_is_delivered() {
        let (handle, mut rx) = AckHandle::channel();
        let copy = handle.clone();
        handle.finish(&Status::Delivered);
        assert!(rx.try_recv().is_err(), "one holder is still out");
        copy.finish(&Status::Delivered);
        assert_eq!(rx.try_recv().unwrap(), Status::Delivered);
    }

    #[test]
    fn a_dropped_clone_fails_the_batch() {
        let (handle, mut rx) = AckHandle::channel();
        let copy = handle.clone();
        handle.finish(&Status::Delivered);
        drop(copy);
        assert!(matches!(rx.try_recv().unwrap(), Status::Failed(_)));
    }

    #[test]
    fn rejections_accumulate_and_failure_wins() {
        let (handle, mut rx) = AckHandle::channel();
        let a = handle.clone();
        let b = handle.clone();
        let r = |i| Rejection {
            index: Some(i),
            reasons: vec![format!("bad {i}")],
        };
        a.finish(&Status::Rejected(vec![r(1)]));
        b.finish(&Status::Rejected(vec![r(2)]));
        handle.finish(&Status::Delivered);
        assert_eq!(rx.try_recv().unwrap(), Status::Rejected(vec![r(1), r(2)]));

        let (handle, mut rx) = AckHandle::channel();
        let a = handle.clone();
        a.finish(&Status::Rejected(vec![r(1)]));
        handle.finish(&Status::Failed("disk".into()));
        assert_eq!(rx.try_recv().unwrap(), Status::Failed("disk".into()));
    }
}
