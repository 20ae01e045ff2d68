//! Rebuilding the read models from the event store, while queries keep answering from
//! the current indices: new indices are filled from the events (walking history hour by
//! hour), and the aliases are switched to them in one atomic request. Until the switch,
//! projections kept writing to the old indices, so a cart may have moved on there while
//! its new document was written: the old indices are then blocked for writes (which waits
//! for the writes in flight; a write that meets the block is retried by the sink through
//! the alias, so it lands in the new index), and every document of the old indices whose
//! version is above the new one's is rebuilt from the event store. Then the old indices
//! are deleted. No clock is involved: a cart can never be left stale by the switch.

use std::collections::HashSet;
use std::time::Instant;

use chrono::Utc;
use elasticsearch::http::Method;
use futures::{StreamExt, TryStreamExt};
use salesflow_plugin_elasticsearch::{Client, Doc};
use salesflow_sales::{Cart, read_model};
use salesflow_sales_event_store::EventStore;
use serde_json::json;
use tracing::info;
use uuid::Uuid;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub carts: usize,
    pub events: usize,
    /// Carts whose stored history salesflow did not write (not seq 1, 2, 3, ...), left
    /// out of the read models, with why.
    pub unreadable: Vec<String>,
    /// Carts that moved on in the old indices while the replay ran, rebuilt after the
    /// switch.
    pub caught_up: usize,
    pub indices: Vec<String>,
    pub replaced: Vec<String>,
    pub seconds: f64,
}

fn fail(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// Every cart with events, in order of first event.
async fn all_carts(store: &EventStore) -> Result<Vec<Uuid>, String> {
    let mut seen = HashSet::new();
    let mut carts = Vec::new();
    let hours = store
        .hours()
        .await
        .map_err(|e| fail("listing the event store's hours", e))?;
    for (hour, shard) in hours {
        for (cart, _) in store
            .carts_in(hour, shard)
            .await
            .map_err(|e| fail("reading an hour", e))?
        {
            if seen.insert(cart) {
                carts.push(cart);
            }
        }
    }
    Ok(carts)
}

/// Indexes the carts' read models into `detailed` and `summary`; returns events read.
async fn index_carts(
    store: &EventStore,
    es: &Client,
    carts: &[Uuid],
    detailed: &str,
    summary: &str,
    unreadable: &mut Vec<String>,
) -> Result<usize, String> {
    let mut events_read = 0;
    for chunk in carts.chunks(250) {
        let states: Vec<Result<(usize, Option<Cart>), String>> =
            futures::stream::iter(chunk.iter().copied())
                .map(|cart| async move {
                    match store.load(cart).await {
                        Ok(events) => Ok(Ok((events.len(), Cart::from_events(&events)))),
                        // A history salesflow did not write: reported, not indexed.
                        Err(e) if e.is_corrupt() => Ok(Err(e.to_string())),
                        Err(e) => Err(fail("reading a cart", e)),
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
        let mut docs = Vec::with_capacity(states.len() * 2);
        for state in states {
            let (count, cart) = match state {
                Ok(state) => state,
                Err(why) => {
                    unreadable.push(why);
                    continue;
                }
            };
            events_read += count;
            let Some(cart) = cart else { continue };
            let (detailed_doc, summary_doc) =
                read_model::documents(&cart).map_err(|e| fail("serializing a read model", e))?;
            for (index, source) in [(detailed, detailed_doc), (summary, summary_doc)] {
                docs.push(Doc {
                    index: index.to_owned(),
                    id: cart.cart_id.to_string(),
                    version: cart.version,
                    source: source.into(),
                });
            }
        }
        let outcome = es.bulk(&docs).await.map_err(|e| fail("indexing", e))?;
        if let Some((_, why)) = outcome.refused.first() {
            return Err(format!(
                "indexing: {} documents refused, the first: {why}",
                outcome.refused.len()
            ));
        }
    }
    Ok(events_read)
}

/// The indices an alias points to now.
async fn alias_indices(es: &Client, alias: &str) -> Result<Vec<String>, String> {
    let (status, body) = es
        .call(Method::Get, &format!("/_alias/{alias}"), None)
        .await
        .map_err(|e| fail("reading aliases", e))?;
    if status == 404 {
        return Ok(Vec::new());
    }
    Ok(body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default())
}

/// The replaced indices that belonged to `alias` (named `<alias>-...`).
fn alias_pairs(replaced: &[String], alias: &str) -> Vec<String> {
    replaced
        .iter()
        .filter(|old| old.starts_with(&format!("{alias}-")) || old.as_str() == alias)
        .cloned()
        .collect()
}

/// The carts whose document in `old` has a higher version than in `new` (or is missing
/// there), read page by page: versions only, never the documents.
async fn newer_in(es: &Client, old: &str, new: &str) -> Result<Vec<Uuid>, String> {
    let mut out = Vec::new();
    let mut after: Option<serde_json::Value> = None;
    loop {
        let mut query = json!({
            "size": 1000,
            "_source": false,
            "version": true,
            "sort": [{ "cart_id": "asc" }],
            "query": { "match_all": {} }
        });
        if let Some(after) = &after {
            query["search_after"] = after.clone();
        }
        let (status, body) = es
            .call(Method::Post, &format!("/{old}/_search"), Some(query))
            .await
            .map_err(|e| fail("reading an old index", e))?;
        if !(200..300).contains(&status) {
            return Err(format!("searching {old} answered {status}: {body}"));
        }
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.is_empty() {
            return Ok(out);
        }
        after = hits.last().map(|h| h["sort"].clone());
        let ids: Vec<&str> = hits.iter().filter_map(|h| h["_id"].as_str()).collect();
        let (status, body) = es
            .call(
                Method::Post,
                &format!("/{new}/_mget?_source=false"),
                Some(json!({ "ids": ids })),
            )
            .await
            .map_err(|e| fail("reading the new index", e))?;
        if !(200..300).contains(&status) {
            return Err(format!("reading {new} answered {status}: {body}"));
        }
        let docs = body["docs"].as_array().cloned().unwrap_or_default();
        for (hit, doc) in hits.iter().zip(&docs) {
            let old_version = hit["_version"].as_u64().unwrap_or(0);
            let new_version = if doc["found"] == true {
                doc["_version"].as_u64().unwrap_or(0)
            } else {
                0
            };
            if old_version > new_version
                && let Some(id) = hit["_id"].as_str().and_then(|i| Uuid::parse_str(i).ok())
            {
                out.push(id);
            }
        }
    }
}

/// Rebuilds both read models from the event store and switches the aliases to them.
pub async fn replay(
    store: &EventStore,
    es: &Client,
    detailed_alias: &str,
    summary_alias: &str,
) -> Result<ReplayReport, String> {
    let started_at = Utc::now();
    let started = Instant::now();
    let suffix = started_at.format("%Y%m%d%H%M%S%3f").to_string();
    let targets = [
        (detailed_alias, format!("{detailed_alias}-r{suffix}")),
        (summary_alias, format!("{summary_alias}-r{suffix}")),
    ];
    for (_, index) in &targets {
        // The index templates (carts-detailed-*, carts-summary-*) give the mappings.
        let (status, body) = es
            .call(Method::Put, &format!("/{index}"), Some(json!({})))
            .await
            .map_err(|e| fail("creating an index", e))?;
        if !(200..300).contains(&status) {
            return Err(format!("creating {index} answered {status}: {body}"));
        }
    }
    let carts = all_carts(store).await?;
    info!(carts = carts.len(), "replaying the event store");
    let mut unreadable = Vec::new();
    let mut events = index_carts(
        store,
        es,
        &carts,
        &targets[0].1,
        &targets[1].1,
        &mut unreadable,
    )
    .await?;

    // Make what was indexed searchable before queries are sent to it.
    for (_, index) in &targets {
        let (status, body) = es
            .call(Method::Post, &format!("/{index}/_refresh"), None)
            .await
            .map_err(|e| fail("refreshing an index", e))?;
        if !(200..300).contains(&status) {
            return Err(format!("refreshing {index} answered {status}: {body}"));
        }
    }

    // Switch both aliases at once.
    let mut actions = Vec::new();
    let mut replaced = Vec::new();
    for (alias, index) in &targets {
        for old in alias_indices(es, alias).await? {
            actions.push(json!({ "remove": { "index": old, "alias": alias } }));
            replaced.push(old);
        }
        actions.push(json!({ "add": { "index": index, "alias": alias, "is_write_index": true } }));
    }
    let (status, body) = es
        .call(
            Method::Post,
            "/_aliases",
            Some(json!({ "actions": actions })),
        )
        .await
        .map_err(|e| fail("switching aliases", e))?;
    if !(200..300).contains(&status) {
        return Err(format!("switching aliases answered {status}: {body}"));
    }

    // Until the switch, projections wrote to the old indices: block them for writes
    // (this waits for the writes in flight), then rebuild every cart they hold at a newer
    // version than the new indices.
    for old in &replaced {
        for (method, path) in [
            (Method::Put, format!("/{old}/_block/write")),
            (Method::Post, format!("/{old}/_refresh")),
        ] {
            let (status, body) = es
                .call(method, &path, None)
                .await
                .map_err(|e| fail("closing an old index to writes", e))?;
            if !(200..300).contains(&status) {
                return Err(format!("{path} answered {status}: {body}"));
            }
        }
    }
    let mut behind = std::collections::BTreeSet::new();
    for (alias, index) in &targets {
        for old in alias_pairs(&replaced, alias) {
            behind.extend(newer_in(es, &old, index).await?);
        }
    }
    let behind: Vec<Uuid> = behind.into_iter().collect();
    if !behind.is_empty() {
        info!(
            carts = behind.len(),
            "carts that moved on while the replay ran: rebuilding them"
        );
    }
    events += index_carts(
        store,
        es,
        &behind,
        &targets[0].1,
        &targets[1].1,
        &mut unreadable,
    )
    .await?;

    for old in &replaced {
        let (status, body) = es
            .call(Method::Delete, &format!("/{old}"), None)
            .await
            .map_err(|e| fail("deleting an old index", e))?;
        if !(200..300).contains(&status) && status != 404 {
            return Err(format!("deleting {old} answered {status}: {body}"));
        }
    }
    for why in &unreadable {
        tracing::warn!(reason = %why, "a cart left out of the read models");
    }
    Ok(ReplayReport {
        carts: carts.len(),
        events,
        unreadable,
        caught_up: behind.len(),
        indices: targets.iter().map(|(_, i)| i.clone()).collect(),
        replaced,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `salesflow replay`: rebuilds the read models from the event store, with the settings of
/// a pipeline's read-models stage (aliases, event store) and of the elasticsearch sink it
/// feeds (the cluster).
pub struct ReplayCommand;

#[derive(clap::Parser, Debug)]
#[command(
    name = "salesflow replay",
    about = "Rebuild the read models from the event store into new indices, then switch the \
             aliases (queries keep answering from the old ones meanwhile)",
    after_help = "Examples:\n  \
                  salesflow replay\n  \
                  salesflow --config pipeline.toml replay --pipeline projections"
)]
struct ReplayArgs {
    /// The pipeline whose read-models stage and elasticsearch sink to use; default: the one
    /// pipeline that has a read-models stage.
    #[arg(long)]
    pipeline: Option<String>,
}

impl salesflow_plugin_api::Command for ReplayCommand {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn about(&self) -> &'static str {
        "Rebuild the read models from the event store into new indices, then switch the aliases"
    }

    fn run(
        &self,
        args: &[String],
        config: Option<&salesflow_plugin_api::ConfigView>,
    ) -> std::process::ExitCode {
        let parsed: ReplayArgs = match salesflow_plugin_api::parse_args("salesflow replay", args) {
            Ok(parsed) => parsed,
            Err(code) => return code,
        };
        let outcome = config
            .ok_or_else(|| "needs the configuration".to_owned())
            .and_then(|config| {
                let runtime = salesflow_plugin_api::multi_thread_runtime()?;
                runtime.block_on(run_replay(config, parsed.pipeline.as_deref()))
            });
        match outcome {
            Ok(report) => {
                println!("{report}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("salesflow replay: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run_replay(
    config: &salesflow_plugin_api::ConfigView,
    pipeline: Option<&str>,
) -> Result<String, String> {
    use salesflow_plugin_api::{ComponentKind, Settings as _};

    let with_stage: Vec<&salesflow_plugin_api::PipelineView> = config
        .pipelines
        .iter()
        .filter(|p| p.find(ComponentKind::Stage, crate::STAGE_TYPE).is_some())
        .collect();
    let pipe = match pipeline {
        Some(name) => config
            .pipeline(name)
            .ok_or_else(|| format!("no pipeline named {name:?} (replay reads its settings)"))?,
        None => match with_stage.as_slice() {
            [one] => one,
            [] => return Err("no pipeline has a read-models stage".into()),
            _ => {
                return Err(format!(
                    "several pipelines have a read-models stage ({}): choose one with --pipeline",
                    with_stage
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        },
    };
    let stage = pipe
        .find(ComponentKind::Stage, crate::STAGE_TYPE)
        .ok_or_else(|| format!("pipeline {} has no read-models stage", pipe.name))?;
    let sink = pipe
        .find(
            ComponentKind::Sink,
            salesflow_plugin_elasticsearch::SINK_TYPE,
        )
        .ok_or_else(|| format!("pipeline {} has no elasticsearch sink", pipe.name))?;
    let models = crate::ReadModelSettings::from_table(&stage.settings)
        .map_err(|e| format!("read-models settings: {e}"))?;
    let (_, es_settings) = salesflow_plugin_elasticsearch::split(&sink.settings)
        .map_err(|e| format!("elasticsearch settings: {e}"))?;
    let store = EventStore::connect(&models.cassandra)
        .await
        .map_err(|e| e.to_string())?;
    let es = Client::new(&es_settings).map_err(|e| e.to_string())?;
    let report = replay(&store, &es, &models.detailed_alias, &models.summary_alias).await?;
    let unreadable = if report.unreadable.is_empty() {
        String::new()
    } else {
        format!(
            "; {} carts left out, their stored events not written by salesflow (the first: {})",
            report.unreadable.len(),
            report.unreadable[0]
        )
    };
    Ok(format!(
        "replayed {} events of {} carts in {:.1} s into {}; aliases {} and {} switched; {} carts that moved on meanwhile rebuilt; replaced {}{unreadable}",
        report.events,
        report.carts,
        report.seconds,
        report.indices.join(", "),
        models.detailed_alias,
        models.summary_alias,
        report.caught_up,
        if report.replaced.is_empty() {
            "nothing".to_owned()
        } else {
            report.replaced.join(", ")
        }
    ))
}
