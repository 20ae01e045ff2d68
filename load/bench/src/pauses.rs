//! The servers' stop-the-world pauses: the safepoints their JVMs log where the local stack
//! has them (`.stack/logs/<node>-pauses.log`, `-Xlog:safepoint` stamped in epoch
//! milliseconds). While a broker is stopped every request to it waits, whoever sent it:
//! a latency figure reads beside them.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// One server's pauses inside a window.
#[derive(Debug, Default, PartialEq)]
pub struct Pauses {
    pub count: usize,
    pub total_ms: f64,
    pub longest_ms: f64,
    /// Pauses of 10 ms or longer.
    pub long: usize,
}

/// Milliseconds since the epoch.
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The pauses of a log's text (`[1765084156059ms] Safepoint "G1CollectForAllocation",
/// ... Total: 94801 ns`) that ended within `from..=to` (epoch milliseconds). Lines of
/// another shape are passed over.
pub fn within(text: &str, from: u64, to: u64) -> Pauses {
    let mut pauses = Pauses::default();
    for line in text.lines() {
        let Some(at) = line
            .strip_prefix('[')
            .and_then(|rest| rest.split_once("ms]"))
            .and_then(|(stamp, _)| stamp.parse::<u64>().ok())
        else {
            continue;
        };
        if !(from..=to).contains(&at) || !line.contains("Safepoint \"") {
            continue;
        }
        let Some(ns) = line
            .rsplit_once("Total: ")
            .and_then(|(_, rest)| rest.strip_suffix(" ns"))
            .and_then(|n| n.trim().parse::<u64>().ok())
        else {
            continue;
        };
        #[allow(clippy::cast_precision_loss)] // nanoseconds of a pause: far below 2^53
        let ms = ns as f64 / 1e6;
        pauses.count += 1;
        pauses.total_ms += ms;
        pauses.longest_ms = pauses.longest_ms.max(ms);
        if ms >= 10.0 {
            pauses.long += 1;
        }
    }
    pauses
}

/// Each running node's pauses within `from..to`, by node name (`kafka`, or `kafka-2` on
/// the cluster profile), from its log and the one it last rotated out. A running node
/// without a log (a stack started before the servers logged their pauses) is left out.
pub fn during(from: SystemTime, to: SystemTime) -> Vec<(String, Pauses)> {
    let logs = crate::common::repo().join(".stack/logs");
    let (from, to) = (epoch_ms(from), epoch_ms(to));
    let mut found = Vec::new();
    for node in crate::cpu::nodes() {
        let file = logs.join(format!("{}-pauses.log", node.name));
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut older = file.into_os_string();
        older.push(".0");
        let older = std::fs::read_to_string(older).unwrap_or_default();
        let (now, before) = (within(&text, from, to), within(&older, from, to));
        found.push((
            node.name,
            Pauses {
                count: now.count + before.count,
                total_ms: now.total_ms + before.total_ms,
                longest_ms: now.longest_ms.max(before.longest_ms),
                long: now.long + before.long,
            },
        ));
    }
    found
}

/// `kafka 41, 1890 ms (10.5 % of the 18.0 s), longest 197 ms, 30 of 10 ms or more; ...`
pub fn describe(pauses: &[(String, Pauses)], seconds: f64) -> Option<String> {
    if pauses.is_empty() {
        return None;
    }
    let mut text = String::new();
    for (node, p) in pauses {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(
            text,
            "{node} {}, {:.0} ms ({:.1} % of the {seconds:.1} s), longest {:.0} ms, {} of 10 ms or more",
            p.count,
            p.total_ms,
            100.0 * p.total_ms / 1000.0 / seconds.max(f64::EPSILON),
            p.longest_ms,
            p.long
        );
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::{Pauses, describe, within};

    const LOG: &str = "\
[1000ms] Safepoint \"Cleanup\", Time since last: 1000880510 ns, Reaching safepoint: 13700 ns, Cleanup: 74972 ns, At safepoint: 6129 ns, Total: 94801 ns
[2000ms] Safepoint \"G1CollectForAllocation\", Time since last: 999 ns, Reaching safepoint: 1 ns, At safepoint: 24042000 ns, Total: 24042001 ns
[2500ms] something else the JVM said
[3000ms] Safepoint \"G1CollectForAllocation\", Time since last: 999 ns, Reaching safepoint: 1 ns, At safepoint: 5000000 ns, Total: 5000000 ns
[4000ms] Safepoint \"G1CollectForAllocation\", Time since last: 999 ns, Reaching safepoint: 1 ns, At safepoint: 90000000 ns, Total: 90000000 ns
";

    #[test]
    fn the_pauses_that_ended_within_the_window_are_counted() {
        let p = within(LOG, 1500, 3000);
        assert_eq!((p.count, p.long), (2, 1));
        assert!((p.total_ms - 29.042_001).abs() < 1e-6, "{p:?}");
        assert!((p.longest_ms - 24.042_001).abs() < 1e-6, "{p:?}");
        assert_eq!(within(LOG, 5000, 6000), Pauses::default());
        assert_eq!(
            within(
                "not a log\n[x ms] Safepoint \"A\", Total: 1 ns",
                0,
                u64::MAX
            )
            .count,
            0
        );
    }

    #[test]
    fn each_node_is_described_with_its_share_of_the_window() {
        let p = within(LOG, 0, 5000);
        assert_eq!(
            describe(&[("kafka".into(), p)], 2.0).unwrap(),
            "kafka 4, 119 ms (6.0 % of the 2.0 s), longest 90 ms, 2 of 10 ms or more"
        );
        assert_eq!(describe(&[], 2.0), None);
    }
}
