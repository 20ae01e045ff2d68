use std::collections::HashMap;

use salesflow_plugin_api::{AckSet, Batch, PluginError, Stage, Status, async_trait};
use tokio::time::Instant;

use crate::config::BatchSettings;

struct Pending {
    batch: Batch,
    bytes: usize,
    deadline: Instant,
}

/// The batch stage of one lane.
pub struct BatchStage {
    settings: BatchSettings,
    /// This stage lane's number: the lane of every batch it makes with `across_lanes`.
    own_lane: u64,
    pending: HashMap<u64, Pending>,
}

impl BatchStage {
    pub fn new(settings: BatchSettings, own_lane: usize) -> Self {
        Self {
            settings,
            own_lane: u64::try_from(own_lane).unwrap_or(u64::MAX),
            pending: HashMap::new(),
        }
    }

    fn fresh(&self, lane: u64) -> Pending {
        Pending {
            batch: Batch::new(Vec::new(), AckSet::none(), lane),
            bytes: 0,
            deadline: Instant::now() + self.settings.max_wait,
        }
    }

    fn add(&mut self, input: Batch, out: &mut Vec<Batch>) {
        if input.is_empty() {
            // Nothing to merge; its claims pass on untouched.
            out.push(input);
            return;
        }
        let lane = if self.settings.across_lanes {
            self.own_lane
        } else {
            input.lane
        };
        let acks = input.acks;
        // Whether the pending batch of this lane already holds a clone of `acks`.
        let mut attached = false;
        for event in input.events {
            let size = event.byte_size();
            if !self.pending.contains_key(&lane) {
                let fresh = self.fresh(lane);
                self.pending.insert(lane, fresh);
                attached = false;
            }
            let pending = self.pending.get_mut(&lane).expect("present");
            // An event that would overflow the bytes limit closes the current batch first.
            if !pending.batch.is_empty() && pending.bytes + size > self.settings.max_bytes {
                let full = std::mem::replace(
                    pending,
                    Pending {
                        batch: Batch::new(Vec::new(), AckSet::none(), lane),
                        bytes: 0,
                        deadline: Instant::now() + self.settings.max_wait,
                    },
                );
                out.push(full.batch);
                attached = false;
            }
            if !attached {
                pending.batch.acks.extend(acks.clone());
                attached = true;
            }
            pending.batch.events.push(event);
            pending.bytes += size;
            if pending.batch.len() >= self.settings.max_events
                || pending.bytes >= self.settings.max_bytes
            {
                out.extend(self.pending.remove(&lane).map(|p| p.batch));
            }
        }
        // Every output batch holding these events has its own clone of the claims; the
        // original is released.
        acks.finish(&Status::Delivered);
    }
}

#[async_trait]
impl Stage for BatchStage {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        self.add(batch, out);
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    async fn on_deadline(&mut self, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let now = Instant::now();
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(lane, _)| *lane)
            .collect();
        for lane in due {
            out.extend(self.pending.remove(&lane).map(|p| p.batch));
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        out.extend(self.pending.drain().map(|(_, p)| p.batch));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use salesflow_plugin_api::{AckHandle, Event, Stage, Status};

    use super::*;

    fn batch(lane: u64, values: &[u32]) -> (Batch, tokio::sync::oneshot::Receiver<Status>) {
        let (ack, rx) = AckHandle::channel();
        let events = values.iter().map(|v| Event::new(v.to_string())).collect();
        (Batch::new(events, AckSet::one(ack), lane), rx)
    }

    fn settings(max_events: usize, max_bytes: usize) -> BatchSettings {
        BatchSettings {
            max_events,
            max_bytes,
            max_wait: Duration::from_millis(50),
            across_lanes: false,
        }
    }

    /// No source batch is acknowledged while an output batch holding its events is
    /// pending, and every one is once all are delivered.
    fn acknowledged_after_every_output(
        out: Vec<Batch>,
        mut receivers: Vec<tokio::sync::oneshot::Receiver<Status>>,
    ) -> Result<(), TestCaseError> {
        for rx in &mut receivers {
            prop_assert!(rx.try_recv().is_err(), "acknowledged before the output was");
        }
        for b in out {
            b.finish(&Status::Delivered);
        }
        for mut rx in receivers {
            prop_assert_eq!(rx.try_recv().unwrap(), Status::Delivered);
        }
        Ok(())
    }

    proptest! {
        /// Every event comes out once, in order within its lane; no batch exceeds the
        /// limits; a source batch is acknowledged only when every output batch holding
        /// its events is.
        #[test]
        fn batches_keep_every_event_in_lane_order(
            inputs in proptest::collection::vec((0u64..3, proptest::collection::vec(0u32..1000, 0..20)), 1..30),
            max_events in 1usize..16,
            max_bytes in 1usize..64,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut stage = BatchStage::new(settings(max_events, max_bytes), 0);
                let mut out = Vec::new();
                let mut receivers = Vec::new();
                let mut sent: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
                for (lane, values) in &inputs {
                    let (b, rx) = batch(*lane, values);
                    sent.entry(*lane).or_default().extend(b.events.iter().map(|e| e.payload.to_vec()));
                    receivers.push(rx);
                    stage.process(b, &mut out).await.unwrap();
                }
                stage.flush(&mut out).await.unwrap();
                let mut got: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
                for b in &out {
                    prop_assert!(b.len() <= max_events);
                    // One event may exceed max_bytes alone; otherwise the limit holds.
                    prop_assert!(b.len() <= 1 || b.byte_size() <= max_bytes);
                    got.entry(b.lane).or_default().extend(b.events.iter().map(|e| e.payload.to_vec()));
                }
                got.retain(|_, v| !v.is_empty());
                sent.retain(|_, v| !v.is_empty());
                prop_assert_eq!(&got, &sent);
                acknowledged_after_every_output(out, receivers)
            })?;
        }
    }

    proptest! {
        /// Across lanes: every output batch takes the stage lane's number, each input
        /// lane's events come out once and in their order, and every source batch is
        /// acknowledged only when every output batch holding its events is.
        #[test]
        fn batches_across_lanes_keep_each_lanes_order(
            inputs in proptest::collection::vec((0u64..3, proptest::collection::vec(0u32..1000, 0..20)), 1..30),
            max_events in 1usize..16,
            own_lane in 0usize..4,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let settings = BatchSettings { across_lanes: true, ..settings(max_events, 1 << 20) };
                let mut stage = BatchStage::new(settings, own_lane);
                let mut out = Vec::new();
                let mut receivers = Vec::new();
                let mut sent: HashMap<u64, Vec<String>> = HashMap::new();
                for (lane, values) in &inputs {
                    let (ack, rx) = AckHandle::channel();
                    let texts: Vec<String> = values.iter().map(|v| format!("{lane}:{v}")).collect();
                    sent.entry(*lane).or_default().extend(texts.iter().cloned());
                    let events = texts.into_iter().map(Event::new).collect();
                    receivers.push(rx);
                    stage.process(Batch::new(events, AckSet::one(ack), *lane), &mut out).await.unwrap();
                }
                stage.flush(&mut out).await.unwrap();
                let mut got: HashMap<u64, Vec<String>> = HashMap::new();
                for b in &out {
                    prop_assert!(b.len() <= max_events);
                    if !b.is_empty() {
                        prop_assert_eq!(b.lane, own_lane as u64);
                    }
                    for e in &b.events {
                        let text = String::from_utf8(e.payload.to_vec()).unwrap();
                        let lane: u64 = text.split(':').next().unwrap().parse().unwrap();
                        got.entry(lane).or_default().push(text);
                    }
                }
                sent.retain(|_, v| !v.is_empty());
                prop_assert_eq!(&got, &sent);
                acknowledged_after_every_output(out, receivers)
            })?;
        }
    }

    #[tokio::test]
    async fn across_lanes_one_batch_holds_several_lanes() {
        let mut stage = BatchStage::new(
            BatchSettings {
                across_lanes: true,
                ..settings(100, 1 << 20)
            },
            2,
        );
        let mut out = Vec::new();
        for lane in [2, 6, 10] {
            let (b, _rx) = batch(lane, &[1, 2]);
            stage.process(b, &mut out).await.unwrap();
        }
        assert!(out.is_empty());
        stage.flush(&mut out).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].len(), out[0].lane), (6, 2));

        // Without it, each input lane is a batch of its own.
        let mut stage = BatchStage::new(settings(100, 1 << 20), 2);
        let mut out = Vec::new();
        for lane in [2, 6, 10] {
            let (b, _rx) = batch(lane, &[1, 2]);
            stage.process(b, &mut out).await.unwrap();
        }
        stage.flush(&mut out).await.unwrap();
        assert_eq!(out.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_leaves_after_max_wait() {
        let mut stage = BatchStage::new(settings(100, 1 << 20), 0);
        let mut out = Vec::new();
        let (b, _rx) = batch(0, &[1, 2, 3]);
        stage.process(b, &mut out).await.unwrap();
        assert!(out.is_empty());
        let deadline = stage.deadline().expect("a deadline once events wait");
        assert_eq!(deadline - Instant::now(), Duration::from_millis(50));
        tokio::time::sleep_until(deadline).await;
        stage.on_deadline(&mut out).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 3);
        assert!(stage.deadline().is_none());
    }

    #[tokio::test]
    async fn a_failed_output_fails_the_source_batch() {
        let mut stage = BatchStage::new(settings(2, 1 << 20), 0);
        let mut out = Vec::new();
        let (b, mut rx) = batch(0, &[1, 2, 3]);
        stage.process(b, &mut out).await.unwrap();
        stage.flush(&mut out).await.unwrap();
        assert_eq!(out.len(), 2);
        let mut out = out.into_iter();
        out.next().unwrap().finish(&Status::Delivered);
        drop(out); // the second batch is lost
        assert!(matches!(rx.try_recv().unwrap(), Status::Failed(_)));
    }
}
