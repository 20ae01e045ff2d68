//! Rebuilding the read models from the event store, while queries keep answering from
//! the current indices: new indices are filled from the events (walking history hour by
//! hour), the aliases are switched to them in one atomic request, the hours since the
//! replay began are replayed again into them (projections kept writing to the old ones
//! until the switch), and the old indices are deleted.

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use elasticsearch::http::Method;
use futures::{StreamExt, TryStreamExt};
use salesflow_plugin_cassandra::EventStore;
use salesflow_plugin_elasticsearch::{Client, Doc};
use salesflow_sales::{CartState, read_model};
use serde_json::json;
use tracing::info;
use uuid::Uuid;

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub carts: usize,
    pub events: usize,
    pub indices: Vec<String>,
    pub replaced: Vec<String>,
    pub seconds: f64,
}

fn fail(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

/// The carts with events recorded in the hours from `since`, in order of first event.
async fn carts_since(
    store: &EventStore,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Uuid>, String> {
    let mut seen = HashSet::new();
    let mut carts = Vec::new();
    let hours = store
        .hours()
        .await
        .map_err(|e| fail("listing the event store's hours", e))?;
    for (hour, shard) in hours {
        if since.is_some_and(|s| hour < s) {
            continue;
        }
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
) -> Result<usize, String> {
    let mut events_read = 0;
    for chunk in carts.chunks(250) {
        let states: Vec<(usize, CartState)> = futures::stream::iter(chunk.iter().copied())
            .map(|cart| async move {
                let events = store
                    .load(cart)
                    .await
                    .map_err(|e| fail("reading a cart", e))?;
                Ok::<_, String>((events.len(), CartState::from_events(events)))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut docs = Vec::with_capacity(states.len() * 2);
        for (count, state) in states {
            events_read += count;
            let Some(cart) = state.cart else { continue };
            for (index, source) in [
                (detailed, read_model::detailed(&cart)),
                (summary, read_model::summary(&cart)),
            ] {
                docs.push(Doc {
                    index: index.to_owned(),
                    id: cart.cart_id.to_string(),
                    version: cart.version,
                    source: source.to_string().into(),
                });
            }
        }
        es.bulk(&docs).await.map_err(|e| fail("indexing", e))?;
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
    let carts = carts_since(store, None).await?;
    info!(carts = carts.len(), "replaying the event store");
    let mut events = index_carts(store, es, &carts, &targets[0].1, &targets[1].1).await?;

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

    // Until the switch, projections wrote to the old indices: replay what was recorded
    // since the replay began (versions make this idempotent).
    let since = started_at
        .duration_trunc(TimeDelta::hours(1))
        .unwrap_or(started_at);
    let recent = carts_since(store, Some(since)).await?;
    events += index_carts(store, es, &recent, &targets[0].1, &targets[1].1).await?;

    for old in &replaced {
        let (status, body) = es
            .call(Method::Delete, &format!("/{old}"), None)
            .await
            .map_err(|e| fail("deleting an old index", e))?;
        if !(200..300).contains(&status) && status != 404 {
            return Err(format!("deleting {old} answered {status}: {body}"));
        }
    }
    Ok(ReplayReport {
        carts: carts.len(),
        events,
        indices: targets.iter().map(|(_, i)| i.clone()).collect(),
        replaced,
        seconds: started.elapsed().as_secs_f64(),
    })
}
