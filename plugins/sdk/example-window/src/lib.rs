//! An example run-time plugin library with two plugins: a stage that holds events across
//! batches and emits on a timer, and a sink.
//!
//! `example-window` counts events per key over a tumbling window; when the window closes
//! (its timer) it emits one summary per key, `{"key": K, "count": N, "first": F, "last":
//! L}` — `first`/`last` are the smallest and largest value of the events' `seq_field`,
//! when they have one. It holds the events of an open window, so their sources are
//! acknowledged only once their summary has gone out.
//!
//! ```toml
//! [pipelines.p.stages.window]
//! type = "example-window"
//! inputs = ["in"]
//! window_ms = 1000          # how long a window stays open
//! seq_field = "n"           # optional: a numeric field summarised as first/last
//! panic_every = 10          # optional, for tests: panic on events whose seq_field is a multiple
//! ```
//!
//! `example-file` appends each event's payload as one line to a file and syncs it before
//! acknowledging; a payload that is not JSON is refused for good (a dead letter when the
//! sink's `failed` output is read).
//!
//! Both report their own metrics and health, which the host shows with its own:
//! `salesflow_plugin_window_events_total`, `salesflow_plugin_window_summaries_total`,
//! `salesflow_plugin_window_held_events`, `salesflow_plugin_file_lines_total`,
//! `salesflow_plugin_file_refused_total` (each labelled with pipeline, component and
//! lane); the sink is unhealthy in `/health/ready` while its last write failed.
//!
//! ```toml
//! [pipelines.p.sinks.file]
//! type = "example-file"
//! inputs = ["window"]
//! path = "/var/lib/salesflow/summaries.jsonl"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use salesflow_plugin_abi::{DynEvent, DynSink, DynStage, Metric, SinkError, export_plugins};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSettings {
    window_ms: u64,
    #[serde(default)]
    seq_field: Option<String>,
    #[serde(default)]
    panic_every: Option<u64>,
}

#[derive(Default)]
struct Tally {
    count: u64,
    first: Option<i64>,
    last: Option<i64>,
}

pub struct Window {
    settings: WindowSettings,
    /// The open window: when it closes, and its counts per key.
    closes: Option<Instant>,
    keys: BTreeMap<String, Tally>,
    /// Events taken in, summaries emitted, and events held now: its metrics.
    events: u64,
    summaries: u64,
    held: u64,
}

impl DynStage for Window {
    fn new(config_json: &str) -> Result<Self, String> {
        let settings: WindowSettings =
            serde_json::from_str(config_json).map_err(|e| format!("settings: {e}"))?;
        if settings.window_ms == 0 {
            return Err("settings: window_ms must be at least 1".into());
        }
        if settings.panic_every == Some(0) {
            return Err("settings: panic_every must be at least 1".into());
        }
        Ok(Self {
            settings,
            closes: None,
            keys: BTreeMap::new(),
            events: 0,
            summaries: 0,
            held: 0,
        })
    }

    fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String> {
        for event in events {
            let seq = self.settings.seq_field.as_ref().and_then(|field| {
                serde_json::from_slice::<serde_json::Value>(&event.payload)
                    .ok()?
                    .get(field)?
                    .as_i64()
            });
            if let (Some(every), Some(seq)) = (self.settings.panic_every, seq) {
                assert!(
                    seq.unsigned_abs() % every != 0,
                    "asked to panic on every {every}th event; this one is {seq}"
                );
            }
            let key = event
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let tally = self.keys.entry(key).or_default();
            tally.count += 1;
            self.events += 1;
            self.held += 1;
            if let Some(seq) = seq {
                tally.first = Some(tally.first.map_or(seq, |f| f.min(seq)));
                tally.last = Some(tally.last.map_or(seq, |l| l.max(seq)));
            }
        }
        if !self.keys.is_empty() && self.closes.is_none() {
            self.closes = Some(Instant::now() + Duration::from_millis(self.settings.window_ms));
        }
        Ok(Vec::new())
    }

    fn holds_events(&self) -> bool {
        !self.keys.is_empty()
    }

    fn next_timer(&self) -> Option<Duration> {
        self.closes
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn on_timer(&mut self) -> Result<Vec<DynEvent>, String> {
        self.closes = None;
        self.held = 0;
        self.summaries += self.keys.len() as u64;
        Ok(std::mem::take(&mut self.keys)
            .into_iter()
            .map(|(key, tally)| {
                let summary = serde_json::json!({
                    "key": key,
                    "count": tally.count,
                    "first": tally.first,
                    "last": tally.last,
                });
                DynEvent {
                    key: Some(key.into_bytes()),
                    ..DynEvent::new(summary.to_string())
                }
            })
            .collect())
    }

    fn metrics(&self) -> Vec<Metric> {
        #[allow(clippy::cast_precision_loss)] // Exact up to 2^53 events.
        let held = self.held as f64;
        vec![
            Metric::counter("window_events", "Events taken into a window", self.events),
            Metric::counter(
                "window_summaries",
                "Summaries emitted as windows closed",
                self.summaries,
            ),
            Metric::gauge("window_held_events", "Events in the open window", held),
        ]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    path: std::path::PathBuf,
}

pub struct JsonLines {
    file: std::fs::File,
    path: std::path::PathBuf,
    lines: u64,
    refused: u64,
    /// Why the last write failed, while it did.
    failing: Option<String>,
}

impl DynSink for JsonLines {
    fn new(config_json: &str) -> Result<Self, String> {
        let settings: FileSettings =
            serde_json::from_str(config_json).map_err(|e| format!("settings: {e}"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.path)
            .map_err(|e| format!("settings: path {}: {e}", settings.path.display()))?;
        Ok(Self {
            file,
            path: settings.path,
            lines: 0,
            refused: 0,
            failing: None,
        })
    }

    fn write(&mut self, events: Vec<DynEvent>) -> Result<(), SinkError> {
        let mut refused = Vec::new();
        let mut lines = Vec::new();
        for (position, event) in events.iter().enumerate() {
            if serde_json::from_slice::<serde_json::Value>(&event.payload).is_err() {
                refused.push((position, "the payload is not JSON".to_owned()));
                continue;
            }
            lines.extend_from_slice(&event.payload);
            lines.push(b'\n');
        }
        if let Err(e) = self
            .file
            .write_all(&lines)
            .and_then(|()| self.file.sync_data())
        {
            let why = format!("writing {}: {e}", self.path.display());
            self.failing = Some(why.clone());
            return Err(SinkError::Retry(why));
        }
        self.failing = None;
        self.lines += (events.len() - refused.len()) as u64;
        self.refused += refused.len() as u64;
        if refused.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Refused(refused))
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        // Every write was synced before it returned: nothing is left to push out.
        Ok(())
    }

    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::counter("file_lines", "Lines written and synced", self.lines),
            Metric::counter(
                "file_refused",
                "Events refused for good (not JSON)",
                self.refused,
            ),
        ]
    }

    fn health(&self) -> Result<(), String> {
        self.failing.clone().map_or(Ok(()), Err)
    }
}

export_plugins! {
    stage(Window, "example-window", "Counts events per key over a tumbling window; emits a summary per key when it closes"),
    sink(JsonLines, "example-file", "Appends each event's JSON payload as a line to a file, synced before it is acknowledged"),
}

#[cfg(test)]
mod tests {
    use super::*;
    use salesflow_plugin_abi::testing::{CallError, SinkHarness, StageHarness};

    fn event(key: &str, n: i64) -> DynEvent {
        DynEvent {
            key: Some(key.as_bytes().to_vec()),
            ..DynEvent::new(format!(r#"{{"n":{n}}}"#))
        }
    }

    #[test]
    fn the_window_holds_events_until_its_timer_then_summarises_per_key() {
        let mut stage =
            StageHarness::<Window>::new(r#"{"window_ms":60000,"seq_field":"n"}"#).unwrap();
        let first = stage
            .process(&[event("a", 1), event("b", 2), event("a", 3)])
            .unwrap();
        assert!(first.events.is_empty() && first.holding);
        assert!(first.timer.is_some_and(|t| t <= Duration::from_secs(60)));
        let closed = stage.timer().unwrap();
        assert!(!closed.holding && closed.timer.is_none());
        let summaries: Vec<serde_json::Value> = closed
            .events
            .iter()
            .map(|e| serde_json::from_slice(&e.payload).unwrap())
            .collect();
        assert_eq!(
            summaries,
            vec![
                serde_json::json!({"key": "a", "count": 2, "first": 1, "last": 3}),
                serde_json::json!({"key": "b", "count": 1, "first": 2, "last": 2}),
            ]
        );
        // Its own metrics, as the host reads them after each call.
        let report = stage.report().unwrap();
        let value = |name: &str| {
            report
                .metrics
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.value)
        };
        assert_eq!(value("window_events"), Some(3.0));
        assert_eq!(value("window_summaries"), Some(2.0));
        assert_eq!(value("window_held_events"), Some(0.0));
        assert_eq!(report.unhealthy, None);
    }

    #[test]
    fn a_panic_comes_back_through_the_boundary() {
        let mut stage =
            StageHarness::<Window>::new(r#"{"window_ms":10,"seq_field":"n","panic_every":10}"#)
                .unwrap();
        match stage.process(&[event("a", 9), event("a", 10)]) {
            Err(CallError::Panic(m)) => assert!(m.contains("this one is 10"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            StageHarness::<Window>::new(r#"{"window_ms":0}"#),
            Err(CallError::Error(m)) if m.contains("window_ms")
        ));
    }

    #[test]
    fn the_file_sink_appends_json_and_refuses_the_rest() {
        let dir = std::env::temp_dir().join(format!("example-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let settings = serde_json::json!({ "path": path }).to_string();
        let mut sink = SinkHarness::<JsonLines>::new(&settings).unwrap();
        sink.write(&[DynEvent::new("{}")]).unwrap();
        assert_eq!(
            sink.write(&[DynEvent::new("not json"), DynEvent::new("[1]")]),
            Err(CallError::Refused(vec![(
                0,
                "the payload is not JSON".into()
            )]))
        );
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n[1]\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
