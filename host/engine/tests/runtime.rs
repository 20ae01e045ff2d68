//! The engine in process, with plugins of its own making (no server): topologies planned
//! from TOML and run — fan-out, fan-in, backpressure, a failing sink, events refused for
//! good, panics, lanes per key, shutdown — and what each source hears back.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Running;
use salesflow_plugin_api::Status;
use tokio::sync::mpsc;

async fn outcome(rx: &mut mpsc::UnboundedReceiver<Status>) -> Status {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an outcome within 10 s")
        .expect("an outcome")
}

const FAN: &str = r#"
[pipelines.p.sources.a]
type = "feed"
feed = "a"

[pipelines.p.sources.b]
type = "feed"
feed = "b"

[pipelines.p.stages.pass]
type = "pass"
inputs = ["a", "b"]
lanes = 2

[pipelines.p.sinks.one]
type = "collect"
sink = "one"
inputs = ["pass"]

[pipelines.p.sinks.two]
type = "collect"
sink = "two"
inputs = ["pass"]
"#;

/// Two sources into one stage (fan-in), whose batches go to two sinks (fan-out): a
/// batch is delivered once both sinks wrote it, and each sink wrote everything.
#[tokio::test]
async fn fan_in_and_fan_out_deliver_once_every_sink_wrote() {
    let running = Running::start(FAN, &["a", "b"]).await;
    let mut from_a = running.send("a", &["a1", "a2"], 0);
    let mut from_b = running.send("b", &["b1"], 1);
    assert_eq!(outcome(&mut from_a).await, Status::Delivered);
    assert_eq!(outcome(&mut from_b).await, Status::Delivered);
    for sink in ["one", "two"] {
        let mut written = running.written(sink);
        written.sort();
        assert_eq!(written, vec!["a1", "a2", "b1"], "{sink}");
    }
    let sinks = running.stop().await;
    assert_eq!(
        sinks.flushed.load(Ordering::SeqCst),
        2,
        "each sink lane flushed"
    );
}

/// A failing sink fails the batch back to its source (which reads it again later); a
/// stage that fails or panics does the same, and a panicked lane gets a fresh stage.
#[tokio::test]
async fn failures_go_back_to_the_source_and_a_panicked_lane_is_made_afresh() {
    let running = Running::start(FAN, &["a", "b"]).await;
    let made = running.stages_made.load(Ordering::SeqCst);
    running.sinks.failing.store(true, Ordering::SeqCst);
    let mut failed = running.send("a", &["x"], 0);
    match outcome(&mut failed).await {
        Status::Failed(why) => assert!(why.contains("the server is down"), "{why}"),
        other => panic!("{other:?}"),
    }
    running.sinks.failing.store(false, Ordering::SeqCst);
    let mut stage_failed = running.send("a", &["fail"], 0);
    assert!(matches!(
        outcome(&mut stage_failed).await,
        Status::Failed(_)
    ));
    let mut panicked = running.send("a", &["panic"], 0);
    match outcome(&mut panicked).await {
        Status::Failed(why) => assert!(why.contains("panicked: asked to"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(running.stages_made.load(Ordering::SeqCst), made + 1);
    // The lane goes on.
    let mut fine = running.send("a", &["fine"], 0);
    assert_eq!(outcome(&mut fine).await, Status::Delivered);
    running.stop().await;
}

/// Events a sink refuses for good go to its `failed` output when another sink reads it,
/// and the batch counts as delivered; a stage's `rejected` output is wired the same way.
#[tokio::test]
async fn refused_events_become_dead_letters_and_the_rest_is_delivered() {
    let text = r#"
[pipelines.p.sources.in]
type = "feed"
feed = "in"

[pipelines.p.stages.pass]
type = "pass"
inputs = ["in"]

[pipelines.p.sinks.out]
type = "collect"
sink = "out"
inputs = ["pass"]
refuse = "too big"

[pipelines.p.sinks.dead]
type = "collect"
sink = "dead"
inputs = ["out.failed", "pass.rejected"]
"#;
    let running = Running::start(text, &["in"]).await;
    let mut mixed = running.send("in", &["small", "too big", "small too"], 0);
    assert_eq!(outcome(&mut mixed).await, Status::Delivered);
    assert_eq!(running.written("out"), vec!["small", "small too"]);
    assert_eq!(running.written("dead"), vec!["too big"]);
    let letters = running.sinks.written.lock().unwrap()["dead"].clone();
    let why = letters[0].header("salesflow.error").unwrap();
    assert!(String::from_utf8_lossy(why).contains("too big for the topic"));
    let mut rejected = running.send("in", &["reject"], 0);
    assert_eq!(outcome(&mut rejected).await, Status::Delivered);
    assert_eq!(running.written("dead").len(), 2);
    running.stop().await;
}

/// Channels are bounded: while the sink holds its writes, it takes one batch to write
/// and its channel one more; the next batches find no room, and their sources hear it.
/// Once the sink is released the two it took are delivered.
#[tokio::test]
async fn a_slow_sink_holds_its_sources_back() {
    let text = r#"
[pipelines.p.sources.in]
type = "feed"
feed = "in"

[pipelines.p.sinks.out]
type = "collect"
sink = "out"
inputs = ["in"]
buffer = 1
concurrency = 1
"#;
    let running = Running::start(text, &["in"]).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *running.sinks.held.lock().unwrap() = Some(Arc::clone(&gate));
    let mut outcomes: Vec<_> = (0..4)
        .map(|i| running.send("in", &[&format!("e{i}")], 0))
        .collect();
    for rx in &mut outcomes[2..] {
        match outcome(rx).await {
            Status::Failed(why) => assert!(why.contains("dropped"), "{why}"),
            other => panic!("no room was left, yet: {other:?}"),
        }
    }
    assert!(running.written("out").is_empty());
    gate.add_permits(100);
    for rx in &mut outcomes[..2] {
        assert_eq!(outcome(rx).await, Status::Delivered);
    }
    assert_eq!(running.written("out"), vec!["e0", "e1"]);
    running.stop().await;
}

/// An adaptive sink lane starts at one write in flight and takes more while the server
/// keeps up; when the server pushes back past a number of writes in flight, the lane
/// keeps near that number, far below its maximum, and still writes everything.
#[tokio::test]
async fn adaptive_concurrency_grows_with_room_and_backs_off_when_pushed_back() {
    let text = r#"
[pipelines.p.sources.in]
type = "feed"
feed = "in"

[pipelines.p.sinks.out]
type = "collect"
sink = "out"
inputs = ["in"]
buffer = 64
max_concurrency = 64
"#;
    let run = |throttle: usize| async move {
        let running = Running::start(text, &["in"]).await;
        running.sinks.service_ms.store(2, Ordering::SeqCst);
        running
            .sinks
            .throttle_above
            .store(throttle, Ordering::SeqCst);
        let mut outcomes: Vec<_> = (0..1500)
            .map(|i| running.send("in", &[&format!("e{i}")], 0))
            .collect();
        for rx in &mut outcomes {
            assert_eq!(outcome(rx).await, Status::Delivered);
        }
        assert_eq!(running.written("out").len(), 1500);
        running.stop().await.most_in_flight.load(Ordering::SeqCst)
    };
    let free = run(0).await;
    assert!(
        free >= 12,
        "with room, the lane took only {free} writes at once"
    );
    let pushed_back = run(6).await;
    assert!(
        (2..=10).contains(&pushed_back),
        "pushed back past 6 in flight, the lane still took {pushed_back} at once"
    );
}

/// A sink reports each delivered event's age (now minus its timestamp): the pipeline's
/// latency since the event was received, without probes. Events without a timestamp are
/// not counted; one stamped ahead of this clock counts as age 0.
#[tokio::test]
async fn a_sink_reports_the_age_of_what_it_delivered() {
    let running = Running::start(FAN, &["a", "b"]).await;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let stamped = |payload: &str, ts: Option<i64>| {
        let mut event = salesflow_plugin_api::Event::new(payload.as_bytes().to_vec());
        event.timestamp_ms = ts;
        event
    };
    let events = vec![
        stamped("old", Some(now_ms - 3_000)),
        stamped("unstamped", None),
        stamped("ahead", Some(now_ms + 60_000)),
    ];
    let mut from_a = running.send_events("a", events, 0);
    assert_eq!(outcome(&mut from_a).await, Status::Delivered);
    let text = running.exposition();
    for sink in ["one", "two"] {
        let series = format!(
            "salesflow_sink_event_age_seconds_count{{pipeline=\"p\",component=\"{sink}\",kind=\"sink\",plugin=\"collect\"}} "
        );
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert_eq!(count, "2", "{sink}");
        let sum_series = series.replace("_count", "_sum");
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&sum_series))
            .unwrap()
            .parse()
            .unwrap();
        // 3 s old when sent, plus however long the delivery took; the other counts 0.
        assert!((3.0..10.0).contains(&sum), "{sink}: ages summed to {sum}");
    }
    // The stage reports no ages: only sinks deliver.
    assert!(
        !text.contains("salesflow_sink_event_age_seconds_count{pipeline=\"p\",component=\"pass\""),
        "{text}"
    );
    running.stop().await;
}

/// `lanes = "auto"`: a lane per key, each sequential, made as keys appear.
#[tokio::test]
async fn lanes_per_key_follow_the_keys() {
    let text = r#"
[pipelines.p.sources.in]
type = "feed"
feed = "in"

[pipelines.p.stages.pass]
type = "pass"
inputs = ["in"]
lanes = "auto"

[pipelines.p.sinks.out]
type = "collect"
sink = "out"
inputs = ["pass"]
lanes = "auto"
"#;
    let running = Running::start(text, &["in"]).await;
    assert_eq!(
        running.stages_made.load(Ordering::SeqCst),
        0,
        "none before a key"
    );
    let mut outcomes: Vec<_> = [3, 7, 3, 24, 7]
        .iter()
        .map(|key| running.send("in", &[&format!("k{key}")], *key))
        .collect();
    for rx in &mut outcomes {
        assert_eq!(outcome(rx).await, Status::Delivered);
    }
    assert_eq!(running.stages_made.load(Ordering::SeqCst), 3);
    let sinks = running.stop().await;
    assert_eq!(
        sinks.flushed.load(Ordering::SeqCst),
        3,
        "a sink lane per key flushed"
    );
}

/// Shutdown: a write in flight when the sources stop is finished before the sinks flush.
#[tokio::test]
async fn shutdown_finishes_writes_in_flight() {
    let running = Running::start(FAN, &["a", "b"]).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *running.sinks.held.lock().unwrap() = Some(Arc::clone(&gate));
    let mut pending = running.send("a", &["late"], 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.sinks.started.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "both writes started");
        tokio::task::yield_now().await;
    }
    let stop = running.stop.clone();
    let stopping = tokio::spawn(running.stop());
    while !stop.is_cancelled() {
        tokio::task::yield_now().await;
    }
    assert!(
        pending.try_recv().is_err(),
        "not settled while the write is held"
    );
    gate.add_permits(100);
    let sinks = stopping.await.unwrap();
    assert_eq!(outcome(&mut pending).await, Status::Delivered);
    assert_eq!(sinks.written.lock().unwrap()["one"].len(), 1);
    assert_eq!(sinks.flushed.load(Ordering::SeqCst), 2);
}
