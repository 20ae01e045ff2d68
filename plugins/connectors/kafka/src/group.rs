//! The stall watch: notices a member that stays out of its consumer group although Kafka
//! answers.
//!
//! librdkafka rejoins a group by itself after a lost session or a failed rebalance, and
//! nearly always that is enough. A member can still be left outside for good, and then it
//! reads nothing while its partitions wait:
//! - with the coordinator `up`: a rebalance whose completion never comes, a callback that
//!   never returns;
//! - with no coordinator at all: librdkafka 2.12 can lose every broker of its metadata
//!   when a single broker shuts down (`new leader-1 not found in cache`) and never learn
//!   them again — its metadata requests fail with `Broker transport failure` long after
//!   the broker is back (the client bug the Kafka sink mends by renewing its producer).
//!   The consumer's own view cannot tell that from an outage, so while the coordinator is
//!   not up the source asks the group's coordinator with a client of its own (a probe,
//!   see `Shared::probe`).
//!
//! The watch measures how long the member has been in either state. Time with the
//! coordinator not answering the probe does not count: that is an outage, not a stall. The statistics
//! arrive on the consumer thread; a thread that stops serving them leaves the last state
//! seen, so a member stuck outside the group keeps counting.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct GroupWatch {
    /// The group's state as librdkafka last reported it (`up` once the coordinator is
    /// known and reachable).
    state: String,
    /// The member's join state as last reported (`steady` in a settled group).
    join_state: String,
    /// Whether the last probe found the group's coordinator answering (asked only while
    /// the member's coordinator is not up; forgotten once it is).
    kafka_answers: bool,
    /// Since when the member has been stuck (see [`GroupWatch::update`]).
    unsteady_since: Option<Instant>,
}

impl GroupWatch {
    /// A member that has just subscribed: not in the group yet, and counting.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            state: "init".to_owned(),
            join_state: "init".to_owned(),
            kafka_answers: false,
            unsteady_since: Some(now),
        }
    }

    /// Takes the group's state and the member's join state from a statistics report.
    pub(crate) fn observe(&mut self, state: &str, join_state: &str, now: Instant) {
        if state == "up" {
            // A probe's answer is about one loss of the coordinator; the next one is
            // probed afresh.
            self.kafka_answers = false;
        }
        state.clone_into(&mut self.state);
        join_state.clone_into(&mut self.join_state);
        self.update(now);
    }

    /// Whether the source should ask Kafka itself: the coordinator is not up, so the
    /// member's own state cannot tell an outage from a stuck client.
    pub(crate) fn wants_probe(&self) -> bool {
        self.state != "up"
    }

    /// Takes what a probe found: whether the group's coordinator answered it.
    pub(crate) fn probed(&mut self, kafka_answers: bool, now: Instant) {
        self.kafka_answers = kafka_answers;
        self.update(now);
    }

    /// Starts or stops the count: stuck is outside a steady group with the coordinator up,
    /// or without a coordinator while the probe reaches it.
    fn update(&mut self, now: Instant) {
        let stuck = if self.state == "up" {
            self.join_state != "steady"
        } else {
            // No coordinator: an outage while the probe gets no answer either, a stuck
            // client while it does.
            self.kafka_answers
        };
        if !stuck {
            self.unsteady_since = None;
        } else if self.unsteady_since.is_none() {
            self.unsteady_since = Some(now);
        }
    }

    /// How long the member has been stuck: outside a steady group with the coordinator up,
    /// or without a coordinator while the probe reaches it.
    pub(crate) fn unsteady_for(&self, now: Instant) -> Duration {
        self.unsteady_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    /// Why the member counts as stalled, once it has been outside for `limit`.
    pub(crate) fn stalled(&self, now: Instant, limit: Duration) -> Option<String> {
        let outside = self.unsteady_for(now);
        (self.unsteady_since.is_some() && outside >= limit).then(|| {
            let answering = if self.state == "up" {
                "although the coordinator answers"
            } else {
                "without a coordinator although the group's coordinator answers another client"
            };
            format!(
                "the consumer has been out of its group for {} s (join state {}, group state {}) \
                 {answering}; the limit is group_stall_timeout = {} s",
                outside.as_secs(),
                self.join_state,
                self.state,
                limit.as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn a_member_that_never_reports_counts_from_its_start() {
        let start = Instant::now();
        let watch = GroupWatch::new(start);
        assert!(
            watch
                .stalled(start + Duration::from_secs(59), LIMIT)
                .is_none()
        );
        let reason = watch
            .stalled(start + Duration::from_secs(61), LIMIT)
            .expect("stalled");
        assert!(reason.contains("61 s"), "{reason}");
        assert!(reason.contains("join state init"), "{reason}");
    }

    #[test]
    fn steady_resets_and_time_without_a_coordinator_does_not_count() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = GroupWatch::new(start);
        watch.observe("up", "steady", at(5));
        assert_eq!(watch.unsteady_for(at(100)), Duration::ZERO);
        // Kafka down for ten minutes: an outage, not a stall.
        watch.observe("query-coord", "init", at(110));
        assert!(watch.stalled(at(710), LIMIT).is_none());
        // Back: the member rejoins through the join states, each a few seconds.
        // Back: the probe finds Kafka answering, the coordinator is found soon after...
        watch.probed(true, at(713));
        assert!(watch.wants_probe());
        // ...and the member rejoins through the join states, each a few seconds.
        watch.observe("up", "wait-join", at(715));
        assert!(!watch.wants_probe());
        watch.observe("up", "wait-sync", at(718));
        assert_eq!(watch.unsteady_for(at(720)), Duration::from_secs(7));
        watch.observe("up", "steady", at(721));
        assert!(watch.stalled(at(900), LIMIT).is_none());
    }

    #[test]
    fn a_member_left_outside_with_the_coordinator_up_is_stalled_even_if_states_cycle() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = GroupWatch::new(start);
        watch.observe("up", "steady", at(1));
        watch.observe("up", "wait-incr-unassign-to-complete", at(10));
        watch.observe("up", "init", at(40));
        watch.observe("up", "wait-join", at(45));
        assert!(watch.stalled(at(69), LIMIT).is_none());
        let reason = watch.stalled(at(70), LIMIT).expect("stalled");
        assert!(reason.contains("join state wait-join"), "{reason}");
        assert!(reason.contains("group state up"), "{reason}");
        assert!(
            reason.contains("although the coordinator answers"),
            "{reason}"
        );
    }

    #[test]
    fn a_member_without_a_coordinator_while_kafka_answers_a_probe_is_stalled() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut watch = GroupWatch::new(start);
        watch.observe("up", "steady", at(1));
        // The broker shut down: the probe finds nothing answering; nothing counts.
        watch.observe("query-coord", "steady", at(10));
        assert!(watch.wants_probe());
        watch.probed(false, at(11));
        assert!(watch.stalled(at(200), LIMIT).is_none());
        // It is back and answers the probe, but the member never finds it again.
        watch.probed(true, at(210));
        watch.observe("query-coord", "init", at(240));
        assert!(watch.stalled(at(269), LIMIT).is_none());
        let reason = watch.stalled(at(270), LIMIT).expect("stalled");
        assert!(reason.contains("60 s"), "{reason}");
        assert!(reason.contains("group state query-coord"), "{reason}");
        assert!(
            reason.contains("although the group's coordinator answers another client"),
            "{reason}"
        );
        // Kafka gone again before the limit: the count starts over once it is back.
        watch.probed(false, at(271));
        assert!(watch.stalled(at(400), LIMIT).is_none());
        watch.probed(true, at(401));
        assert_eq!(watch.unsteady_for(at(411)), Duration::from_secs(10));
        // Found after all: the count stops.
        watch.observe("up", "steady", at(412));
        assert!(watch.stalled(at(500), LIMIT).is_none());
        // Lost again later: the old probe's answer does not count; a new one is needed.
        watch.observe("query-coord", "steady", at(600));
        assert_eq!(watch.unsteady_for(at(700)), Duration::ZERO);
        watch.probed(true, at(701));
        assert_eq!(watch.unsteady_for(at(705)), Duration::from_secs(4));
    }
}
