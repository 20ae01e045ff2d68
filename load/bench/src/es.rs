//! Elasticsearch: the projection sink's bulk writes (external versions, as the pipeline
//! sends them) vs a raw `_bulk` loop at its best batch size; and the same raw loop
//! rewriting documents the index already holds, as every order after a cart's first does.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use futures::StreamExt;
use rust_decimal::Decimal;
use salesflow_plugin_elasticsearch::{Client, Doc, ElasticsearchSettings};
use salesflow_sales::{Cart, Item, read_model};
use uuid::Uuid;

use crate::Row;
use crate::common::{es_url, opensearch_writes, tag};
use crate::cpu::{self, Meter, Phase, Usage};

const DOCS: usize = 60_000;
/// The raw loop rewriting the documents an index holds (higher external versions): its
/// phase in the report, found by this name by the accounting.
pub const REWRITE_PHASE: &str =
    "raw _bulk rewriting the documents an index holds (external versions)";
/// Documents per request of [`SMALL_REWRITE_PHASE`]: the end-to-end runs' bulks carry
/// about 80 to 180 documents per write-pool task (the report's figure). A macro, so the
/// phase's name says the same number.
macro_rules! small_bulk {
    () => {
        125
    };
}
const SMALL_BULK: usize = small_bulk!();
/// The raw loop rewriting documents in requests of [`SMALL_BULK`], about the size the
/// projections' bulks reach end to end: what OpenSearch's own cost per document is at the
/// batch sizes the pipeline's throughput and latency allow, found by this name by the
/// accounting.
pub const SMALL_REWRITE_PHASE: &str = concat!(
    "raw _bulk rewriting the documents an index holds, in requests of ",
    small_bulk!(),
    " documents"
);
/// Bulk requests in flight: about what the projection sink's two lanes keep in flight
/// under load (adaptive, 3 to 6 each).
const CONCURRENCY: usize = 8;

fn cart(n: usize) -> Cart {
    let now = chrono::Utc::now();
    let items: Vec<Item> = (0..5)
        .map(|k| Item {
            order_id: Uuid::new_v4(),
            seq: k + 1,
            product_name: format!("trail running shoes {k}"),
            product_info: "size 42, blue".into(),
            quantity: 2,
            amount: Decimal::new(11990, 2),
            discounts: Decimal::new(1000, 2),
            tax_amount: Decimal::new(2198, 2),
            subtotal: Decimal::new(25178, 2),
            seller_info: "Acme Outdoor".into(),
            created_at: now,
        })
        .collect();
    Cart {
        cart_id: Uuid::new_v4(),
        version: 5,
        user_id: format!("user-{n}"),
        currency: "EUR".into(),
        created_at: now,
        updated_at: now,
        payment_method: "card".into(),
        shipping_address: "12 Harbour Road, Leeds".into(),
        billing_address: "12 Mill Lane, York".into(),
        shipping_method: "standard".into(),
        tax_amount: Decimal::new(10990, 2),
        subtotal: Decimal::new(125_890, 2),
        discounts: Decimal::new(5000, 2),
        items,
    }
}

/// An index of the read model's template for one turn of a loop, without scheduled
/// refreshes: the end-to-end run's read models are search-idle (nobody searches them, and
/// the readiness checks are not searches), so they skip theirs; a turn of a few seconds
/// would not reach the 30 s of search-idleness and would refresh every second.
async fn create_index(client: &reqwest::Client, index: &str) -> Result<()> {
    let r = client
        .put(format!("{}/{index}", es_url()))
        .json(&serde_json::json!({ "settings": { "index": { "refresh_interval": "-1" } } }))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "creating {index}: {}",
        r.text().await?
    );
    Ok(())
}

/// The projection sink's path, in seconds for all of `docs`: `Client::bulk` with external versions, batches of 500
/// (the `batch` stage's `max_events` in pipeline.toml).
async fn ours(docs: &[(String, Bytes)], index: &str) -> Result<f64> {
    let settings: ElasticsearchSettings = toml::from_str(&format!("url = \"{}\"", es_url()))?;
    let client = Client::new(&settings)?;
    let batches: Vec<Vec<Doc>> = docs
        .chunks(500)
        .map(|c| {
            c.iter()
                .map(|(id, source)| Doc {
                    index: index.to_owned(),
                    id: id.clone(),
                    version: 5,
                    source: source.clone(),
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(batches)
        .map(|batch| {
            let client = client.clone();
            async move { client.bulk(&batch).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Plain `_bulk` index requests of `size` documents, with an external version when given;
/// the seconds all of `docs` took.
async fn raw(
    docs: &[(String, Bytes)],
    index: &str,
    size: usize,
    version: Option<u64>,
) -> Result<f64> {
    let client = reqwest::Client::new();
    let versioned = version.map_or_else(String::new, |v| {
        format!(",\"version\":{v},\"version_type\":\"external\"")
    });
    let bodies: Vec<Vec<u8>> = docs
        .chunks(size)
        .map(|c| {
            let mut body = Vec::new();
            for (id, source) in c {
                body.extend_from_slice(
                    format!(
                        "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"{id}\"{versioned}}}}}\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(source);
                body.push(b'\n');
            }
            body
        })
        .collect();
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(bodies)
        .map(|body| {
            let client = client.clone();
            async move {
                let r = client
                    .post(format!("{}/_bulk", es_url()))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await?;
                let v: serde_json::Value = r.json().await?;
                if v["errors"] != false {
                    let first = v["items"]
                        .as_array()
                        .and_then(|items| {
                            items
                                .iter()
                                .find_map(|i| i["index"]["error"]["reason"].as_str())
                        })
                        .unwrap_or("no reason given");
                    anyhow::bail!("bulk errors, the first: {first}");
                }
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The raw loop fills a fresh index (not measured), then writes every document again
/// with a higher external version, in requests of `size`: the seconds and the servers'
/// CPU of the second pass.
async fn rewrite(
    http: &reqwest::Client,
    docs: &[(String, Bytes)],
    name: &str,
    size: usize,
) -> Result<(f64, Usage)> {
    let index = format!("carts-detailed-{name}");
    create_index(http, &index).await?;
    let rewritten = async {
        raw(docs, &index, size, Some(1)).await?;
        let meter = Meter::start(cpu::server(&["opensearch"]));
        let seconds = raw(docs, &index, size, Some(2)).await;
        Ok::<_, anyhow::Error>((seconds?, meter.stop()))
    }
    .await;
    let _ = http.delete(format!("{}/{index}", es_url())).send().await;
    rewritten
}

pub async fn run() -> Result<Row> {
    let t = tag();
    let http = reqwest::Client::new();
    let docs: Vec<(String, Bytes)> = (0..DOCS)
        .map(|n| {
            let c = cart(n);
            Ok((
                c.cart_id.to_string(),
                Bytes::from(serde_json::to_vec(&read_model::detailed(&c))?),
            ))
        })
        .collect::<Result<_>>()?;

    #[allow(clippy::cast_precision_loss)]
    let per_turn = DOCS as f64;
    // The raw loop at its best batch size: double until the rate stops growing.
    let mut best = (0.0_f64, 0);
    let mut size = 250;
    while size <= 8000 {
        let index = format!("carts-detailed-{t}-raw{size}");
        create_index(&http, &index).await?;
        let outcome = raw(&docs, &index, size, None).await;
        let _ = http.delete(format!("{}/{index}", es_url())).send().await;
        let rate = match outcome {
            Ok(seconds) => per_turn / seconds,
            // The server refusing a size (its queues or memory) ends the search: the
            // best size is the largest that worked.
            Err(e) if best.1 > 0 => {
                println!("  raw _bulk, {size} per request: refused ({e:#})");
                break;
            }
            Err(e) => return Err(e),
        };
        println!("  raw _bulk, {size} per request: {rate:.0} docs/s");
        if rate <= best.0 * 1.02 {
            break;
        }
        best = (rate, size);
        size *= 2;
    }
    // Side by side: with the best size known, the raw loop and the sink take turns (raw,
    // ours, ours, raw), each on a fresh index, so a drift of the shared machine (a merge,
    // another tenant) weighs on both alike.
    let (mut raw_seconds, mut ours_seconds) = (0.0_f64, 0.0_f64);
    let (mut raw_cpu, mut ours_cpu) = (Usage::default(), Usage::default());
    let mut raw_writes = (0.0_f64, 0.0_f64);
    for (n, raw_turn) in [true, false, false, true].into_iter().enumerate() {
        let index = format!("carts-detailed-{t}-turn{n}");
        create_index(&http, &index).await?;
        // Read outside the meter, so the statistics request is not counted in the turn.
        let writes = if raw_turn {
            Some(opensearch_writes().await)
        } else {
            None
        };
        let meter = Meter::start(cpu::server(&["opensearch"]));
        let seconds = if raw_turn {
            raw(&docs, &index, best.1, None).await
        } else {
            ours(&docs, &index).await
        };
        let used = meter.stop();
        if let Some(before) = writes {
            let after = opensearch_writes().await;
            let turn = after - before;
            raw_writes.0 += turn.docs;
            raw_writes.1 += turn.tasks;
        }
        let _ = http.delete(format!("{}/{index}", es_url())).send().await;
        let seconds = seconds?;
        if raw_turn {
            raw_seconds += seconds;
            raw_cpu.merge(&used);
        } else {
            ours_seconds += seconds;
            ours_cpu.merge(&used);
        }
    }
    // The pipeline writes a cart's documents again with every order: OpenSearch then
    // looks up the version held and marks the old document deleted. What that costs at
    // the best batch size, apart from the batch size: the raw loop fills an index (not
    // measured), then writes every document again with a higher version.
    let (rewrite_seconds, rewrite_cpu) =
        rewrite(&http, &docs, &format!("{t}-rewrite"), best.1).await?;
    // The same, in requests of the size the end-to-end runs' bulks reach.
    let (small_rewrite_seconds, small_rewrite_cpu) = rewrite(
        &http,
        &docs,
        &format!("{t}-rewrite{SMALL_BULK}"),
        SMALL_BULK,
    )
    .await?;
    let rate = 2.0 * per_turn / ours_seconds;
    let ceiling = 2.0 * per_turn / raw_seconds;
    println!(
        "  in turns (raw, ours, ours, raw): raw _bulk of {} {ceiling:.0} docs/s, projection sink bulk (external versions, 500 per request) {rate:.0} docs/s",
        best.1
    );
    let mut row = Row::new(
        "Elasticsearch bulk",
        "docs/s",
        rate,
        ceiling,
        Some(0.9),
        "projection sink: bulk, external versions",
        "raw _bulk loop",
    );
    row.note = format!(
        "{DOCS} detailed read-model documents (~{} bytes), {CONCURRENCY} requests in flight; the raw loop's best batch is {} documents; then raw, ours, ours, raw, {DOCS} documents a turn (the raw loop's documents per write-pool task: {:.1}); the raw loop rewriting {DOCS} documents an index holds: {:.0} docs/s, in requests of {SMALL_BULK}: {:.0} docs/s",
        docs[0].1.len(),
        best.1,
        if raw_writes.1 > 0.0 {
            raw_writes.0 / raw_writes.1
        } else {
            0.0
        },
        per_turn / rewrite_seconds,
        per_turn / small_rewrite_seconds
    );
    let documents = 2.0 * per_turn;
    row.phases = vec![
        Phase::new(
            format!("ceiling: raw _bulk of {}", best.1),
            "document",
            documents,
            raw_cpu,
        ),
        Phase::new(
            "salesflow: projection sink",
            "document",
            documents,
            ours_cpu,
        ),
        Phase::new(REWRITE_PHASE, "document", per_turn, rewrite_cpu),
        Phase::new(SMALL_REWRITE_PHASE, "document", per_turn, small_rewrite_cpu),
    ];
    Ok(row)
}
