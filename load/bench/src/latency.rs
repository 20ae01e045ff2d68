//! Where a POST's time to 202 goes, from the Command API's own metrics: the request as
//! its HTTP server timed it, the Kafka write inside it (the sink's write until the
//! brokers acknowledged), and librdkafka's view of that write (the wait in the producer
//! before sending, and the produce request's round trip to the broker). Set beside the
//! load driver's own p99, it says whether a slow 202 is the network and the driver, our
//! code, or Kafka. [`bare_produce`] measures the floor under it in the same run: a bare
//! librdkafka producer, shaped as the Command API's, sending one record at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use prometheus_parse::{Scrape, Value};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Cumulative histogram buckets: (upper bound in seconds, count).
pub type Buckets = Vec<(f64, f64)>;

/// The Command API's latency histograms at one moment.
#[derive(Clone, Debug, Default)]
pub struct Histograms {
    /// `POST /orders` and `POST /orders/batch` as the HTTP server timed them.
    request: Buckets,
    /// The `orders-topic` sink's writes, from handing them over to durable.
    kafka_write: Buckets,
}

/// A process's `/metrics`, parsed (`None` when it cannot be read).
pub async fn scrape(address: &str) -> Option<Scrape> {
    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).ok()
}

/// A counter's, gauge's or untyped sample's value. (An OpenMetrics counter's samples end
/// in `_total` and a histogram's sum in `_sum`, names the parser does not tie to their
/// family's type: they come as untyped.)
pub fn number(sample: &prometheus_parse::Sample) -> Option<f64> {
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Adds `more` to `into`, bucket by bucket (series of one family share their bounds).
fn add(into: &mut Buckets, more: &[prometheus_parse::HistogramCount]) {
    if into.is_empty() {
        into.extend(more.iter().map(|b| (b.less_than, 0.0)));
    }
    for (slot, b) in into.iter_mut().zip(more) {
        slot.1 += b.count;
    }
}

/// The Command API's histograms now (empty when it cannot be read).
pub async fn histograms(address: &str) -> Histograms {
    let mut out = Histograms::default();
    let Some(scrape) = scrape(address).await else {
        return out;
    };
    for sample in &scrape.samples {
        let Value::Histogram(buckets) = &sample.value else {
            continue;
        };
        if sample.metric == "salesflow_http_request_seconds"
            && sample
                .labels
                .get("route")
                .is_some_and(|r| r.starts_with("/orders"))
        {
            add(&mut out.request, buckets);
        } else if sample.metric == "salesflow_processing_seconds"
            && sample.labels.get("component") == Some("orders-topic")
        {
            add(&mut out.kafka_write, buckets);
        }
    }
    out
}

/// The p99 of what was observed between two readings: the upper bound of the bucket it
/// falls in (so at most one bucket, a factor of 2, above the true value).
fn p99(before: &Buckets, after: &Buckets) -> Option<f64> {
    quantile(before, after, 0.99)
}

/// The quantile `q` of what was observed between two readings, as the upper bound of the
/// bucket it falls in.
fn quantile(before: &Buckets, after: &Buckets, q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .enumerate()
        .map(|(i, (le, n))| (*le, n - before.get(i).map_or(0.0, |b| b.1)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map(|(le, _)| *le)
}

/// A sink's `salesflow_sink_event_age_seconds` now: how old each event it delivered was
/// when its write became durable (empty when it cannot be read).
pub async fn event_ages(address: &str, component: &str) -> Buckets {
    let mut out = Buckets::new();
    let Some(scrape) = scrape(address).await else {
        return out;
    };
    for sample in &scrape.samples {
        if let Value::Histogram(buckets) = &sample.value
            && sample.metric == "salesflow_sink_event_age_seconds"
            && sample.labels.get("component") == Some(component)
        {
            add(&mut out, buckets);
        }
    }
    out
}

/// The events counted and the p50 and p99 (seconds, bucket bounds) between two readings
/// of an age histogram.
pub fn ages(before: &Buckets, after: &Buckets) -> Option<(f64, f64, f64)> {
    let count = after.last()?.1 - before.last().map_or(0.0, |b| b.1);
    Some((
        count,
        quantile(before, after, 0.5)?,
        quantile(before, after, 0.99)?,
    ))
}

/// librdkafka's p99s over its last statistics window, the worst broker's: the wait in
/// the producer before sending, and the produce request's round trip.
async fn kafka_window(address: &str) -> Option<(f64, f64)> {
    let scrape = scrape(address).await?;
    let mut queue: Option<f64> = None;
    let mut broker: Option<f64> = None;
    for sample in &scrape.samples {
        if sample.metric != "salesflow_kafka_producer_latency_seconds"
            || sample.labels.get("percentile") != Some("99")
            || sample.labels.get("component") != Some("orders-topic")
        {
            continue;
        }
        let Some(v) = number(sample) else {
            continue;
        };
        let slot = match sample.labels.get("stage") {
            Some("queue") => &mut queue,
            Some("broker") => &mut broker,
            _ => continue,
        };
        *slot = Some(slot.map_or(v, |s: f64| s.max(v)));
    }
    Some((queue?, broker?))
}

/// Samples librdkafka's windows every `every` for `how_long` (the load, not what
/// follows it: an idle window keeps the last values).
pub fn sample_kafka(
    address: String,
    every: Duration,
    how_long: Duration,
) -> tokio::task::JoinHandle<Vec<(f64, f64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let end = tokio::time::Instant::now() + how_long;
        while tokio::time::Instant::now() + every <= end {
            tokio::time::sleep(every).await;
            if let Some(s) = kafka_window(&address).await {
                samples.push(s);
            }
        }
        samples
    })
}

/// Each sink's concurrency limit per lane now, as `pipeline/component: limits`.
pub async fn sink_limits(addresses: &[&str]) -> Vec<String> {
    let mut limits: std::collections::BTreeMap<String, Vec<(u64, f64)>> =
        std::collections::BTreeMap::new();
    for address in addresses {
        let Some(scrape) = scrape(address).await else {
            continue;
        };
        for sample in &scrape.samples {
            if sample.metric != "salesflow_sink_concurrency_limit" {
                continue;
            }
            let Some(v) = number(sample) else {
                continue;
            };
            let key = format!(
                "{}/{}",
                sample.labels.get("pipeline").unwrap_or("?"),
                sample.labels.get("component").unwrap_or("?")
            );
            let lane = sample
                .labels
                .get("lane")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            limits.entry(key).or_default().push((lane, v));
        }
    }
    limits
        .into_iter()
        .map(|(k, mut lanes)| {
            lanes.sort_by_key(|(lane, _)| *lane);
            let values: Vec<String> = lanes.iter().map(|(_, v)| format!("{v:.0}")).collect();
            format!("{k} {}", values.join(","))
        })
        .collect()
}

/// Kafka's own time to acknowledge, measured beside a run: a producer made from `config`
/// (the Command API's, [`crate::relay::Producers::config`]) and nothing else —
/// no HTTP, no validation, no channel — sends a 600-byte record to `topic` every
/// `1 / rate` s for `how_long`, each send timed from the call to its acknowledgement.
/// Sent open loop (a slow acknowledgement does not delay the next send), so it sees what
/// a POST arriving at that moment would. One untimed send first makes the connection,
/// the metadata and the idempotent producer id, as a running Command API has them. Its
/// p50 and p99, in ms, and how many it timed.
pub fn bare_produce(
    config: ClientConfig,
    topic: String,
    rate: u32,
    how_long: Duration,
) -> tokio::task::JoinHandle<Result<(f64, f64, u64)>> {
    tokio::spawn(async move {
        let producer: FutureProducer = config.create().context("the bare producer")?;
        producer
            .send(
                FutureRecord::to(&topic).key("warm-up").payload("warm-up"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("the bare producer's first send to {topic}: {e}"))?;
        // Up to a minute, in microseconds (`saturating_record` does not resize a
        // histogram: without bounds every value would be clamped to 2 µs).
        let micros = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
            1, 60_000_000, 3,
        )?));
        let payload = Arc::new(vec![b'x'; 600]);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = Instant::now() + how_long;
        let mut sends = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            n += 1;
            let (producer, topic, payload, micros) = (
                producer.clone(),
                topic.clone(),
                Arc::clone(&payload),
                Arc::clone(&micros),
            );
            sends.spawn(async move {
                let key = n.to_string();
                let started = Instant::now();
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(payload.as_slice());
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("a bare produce to {topic}: {e}"))?;
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                micros
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .saturating_record(took);
                anyhow::Ok(())
            });
        }
        while let Some(sent) = sends.join_next().await {
            sent??;
        }
        let h = micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        anyhow::ensure!(!h.is_empty(), "the bare producer timed no send to {topic}");
        #[allow(clippy::cast_precision_loss)]
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok((ms(0.5), ms(0.99), h.len()))
    })
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// The report's lines: what the Command API saw of a run, between two readings, with
/// librdkafka's windows sampled during it.
pub fn breakdown(
    before: &Histograms,
    after: &Histograms,
    windows: &[(f64, f64)],
) -> Vec<(String, String)> {
    let ms = |s: Option<f64>| {
        s.map_or_else(
            || "not measured".to_owned(),
            |s| format!("{:.1} ms", s * 1e3),
        )
    };
    let upto = |s: Option<f64>| {
        s.map_or_else(
            || "not measured".to_owned(),
            |s| format!("<= {:.1} ms", s * 1e3),
        )
    };
    vec![
        (
            "  p99 inside the Command API: the request (its HTTP server's histogram)".into(),
            upto(p99(&before.request, &after.request)),
        ),
        (
            "  p99 inside the Command API: the Kafka write (sink, handed over -> acknowledged)"
                .into(),
            upto(p99(&before.kafka_write, &after.kafka_write)),
        ),
        (
            "  p99 in librdkafka: wait before sending, linger included (median of 1 s windows)"
                .into(),
            ms(median(windows.iter().map(|w| w.0).collect())),
        ),
        (
            "  p99 in librdkafka: produce round trip to the broker (median of 1 s windows; worst)"
                .into(),
            format!(
                "{}; {}",
                ms(median(windows.iter().map(|w| w.1).collect())),
                ms(windows.iter().map(|w| w.1).reduce(f64::max))
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the local stack's Kafka (`scripts/stack up`).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_bare_producer_times_real_acknowledgements() {
        let topic = format!("{}-bare", salesflow_bench::common::tag());
        salesflow_testkit::create_topics(&[&topic], 1).await;
        let producers =
            crate::relay::Producers::of(&salesflow_testkit::repo().join("pipeline.toml")).unwrap();
        let timed = bare_produce(
            producers.config(),
            topic.clone(),
            50,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        salesflow_testkit::delete_topics(&[&topic]).await;
        let (p50, p99, sent) = timed.unwrap();
        // An acknowledgement over loopback takes tens of microseconds at the least.
        assert!(p50 >= 0.05 && p99 >= p50, "p50 {p50} ms, p99 {p99} ms");
        assert!((90..=101).contains(&sent), "{sent} sends in 2 s at 50/s");
    }

    #[test]
    fn the_p99_is_the_bound_of_the_bucket_it_falls_in() {
        let before = vec![
            (0.001, 10.0),
            (0.002, 10.0),
            (0.004, 10.0),
            (f64::INFINITY, 10.0),
        ];
        // 100 more: 90 under 1 ms, 9 under 2 ms, 1 under 4 ms.
        let after = vec![
            (0.001, 100.0),
            (0.002, 109.0),
            (0.004, 110.0),
            (f64::INFINITY, 110.0),
        ];
        assert_eq!(p99(&before, &after), Some(0.002));
        assert_eq!(p99(&after, &after), None);
        assert_eq!(ages(&before, &after), Some((100.0, 0.001, 0.002)));
        assert_eq!(ages(&after, &after), None);
    }
}
