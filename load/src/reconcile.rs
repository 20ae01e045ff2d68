//! After a run: every order the system accepted is looked for in the read models (Query
//! API) and in the event store (Cassandra, read directly), and what is lost, duplicated
//! or out of order is counted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::profile::Profile;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Reconciliation {
    pub accepted: usize,
    pub carts: usize,
    /// Accepted orders found in their cart's read model.
    pub projected: usize,
    /// Accepted orders found in the event store.
    pub stored: usize,
    pub lost_read_model: usize,
    pub lost_event_store: usize,
    pub duplicated_read_model: usize,
    pub duplicated_event_store: usize,
    /// Carts whose event numbers are not 1, 2, 3, ... without a gap.
    pub out_of_order_carts: usize,
    /// Carts whose read model does not list exactly the orders of their event store
    /// events, in event order (a replay of the event store would give another document).
    pub read_model_mismatches: usize,
    /// How long the read models took to show every accepted order after the load ended.
    pub settle_seconds: f64,
    pub examples: Vec<String>,
}

impl Reconciliation {
    pub fn clean(&self) -> bool {
        self.lost_read_model == 0
            && self.lost_event_store == 0
            && self.duplicated_read_model == 0
            && self.duplicated_event_store == 0
            && self.out_of_order_carts == 0
            && self.read_model_mismatches == 0
    }
}

async fn read_model(
    client: &reqwest::Client,
    key: Option<&String>,
    base: &str,
    cart: Uuid,
) -> Option<Vec<String>> {
    let r = crate::profile::with_key(client.get(format!("{base}/carts/{cart}")), key)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return Some(Vec::new());
    }
    let doc: Value = r.json().await.ok()?;
    Some(
        doc["items"]
            .as_array()?
            .iter()
            .filter_map(|i| i["order_id"].as_str().map(str::to_owned))
            .collect(),
    )
}

/// One bucket of a cart's events, retried with a back-off for up to 30 s: a cluster whose
/// nodes restart under a fault suite answers some reads with errors for a while.
async fn read_bucket(
    session: &scylla::client::session::Session,
    statement: &scylla::statement::prepared::PreparedStatement,
    cart: Uuid,
    bucket: i32,
) -> Result<scylla::response::query_result::QueryRowsResult> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(200);
    loop {
        let attempt = async {
            session
                .execute_unpaged(statement, (cart, bucket))
                .await?
                .into_rows_result()
                .map_err(anyhow::Error::from)
        }
        .await;
        match attempt {
            Ok(rows) => return Ok(rows),
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e.context(format!(
                    "reading the event store (cart {cart}, bucket {bucket})"
                )));
            }
        }
    }
}

/// Checks every accepted order (order id -> cart id).
pub async fn reconcile<S: std::hash::BuildHasher>(
    profile: &Profile,
    accepted: &HashMap<Uuid, Uuid, S>,
) -> Result<Reconciliation> {
    let mut by_cart: BTreeMap<Uuid, BTreeSet<String>> = BTreeMap::new();
    for (order, cart) in accepted {
        by_cart.entry(*cart).or_default().insert(order.to_string());
    }
    let mut report = Reconciliation {
        accepted: accepted.len(),
        carts: by_cart.len(),
        ..Reconciliation::default()
    };
    let client = profile.target.client(Duration::from_secs(10), 32)?;
    let key = profile.target.keys()?.query;
    let base = profile.target.query_api.clone();

    // Wait for the read models to catch up (or the settle timeout).
    let started = Instant::now();
    let mut pending: Vec<Uuid> = by_cart.keys().copied().collect();
    let mut views: HashMap<Uuid, Vec<String>> = HashMap::new();
    loop {
        let fetched: Vec<(Uuid, Option<Vec<String>>)> = futures::stream::iter(pending.clone())
            .map(|cart| {
                let client = client.clone();
                let base = base.clone();
                let key = key.clone();
                async move { (cart, read_model(&client, key.as_ref(), &base, cart).await) }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        pending.clear();
        for (cart, items) in fetched {
            let items = items.unwrap_or_default();
            let present: BTreeSet<&String> = items.iter().collect();
            if !by_cart[&cart].iter().all(|o| present.contains(o)) {
                pending.push(cart);
            }
            views.insert(cart, items);
        }
        if pending.is_empty() || started.elapsed() > profile.reconcile.settle_timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report.settle_seconds = started.elapsed().as_secs_f64();

    for (cart, wanted) in &by_cart {
        let items = views.get(cart).cloned().unwrap_or_default();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for i in &items {
            *counts.entry(i.as_str()).or_default() += 1;
        }
        for order in wanted {
            match counts.get(order.as_str()) {
                None => {
                    report.lost_read_model += 1;
                    if report.examples.len() < 10 {
                        report.examples.push(format!(
                            "order {order} of cart {cart} is not in the read model"
                        ));
                    }
                }
                Some(n) => {
                    report.projected += 1;
                    if *n > 1 {
                        report.duplicated_read_model += n - 1;
                    }
                }
            }
        }
    }

    // The event store, read directly.
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&profile.target.cassandra)
        .build()
        .await
        .context("connecting to Cassandra for reconciliation")?;
    let cql = format!(
        "SELECT seq, order_id FROM {}.cart_events WHERE cart_id = ? AND bucket = ?",
        profile.target.keyspace
    );
    let mut statement = session
        .prepare(cql.as_str())
        .await
        .context("preparing the event store read")?;
    // A read: the driver may retry it on another replica (a node restarting or shutting
    // down while the reconciliation runs answers "overloaded" or "shutting down").
    statement.set_is_idempotent(true);
    let mut mismatched: Vec<(Uuid, Vec<String>)> = Vec::new();
    for (cart, wanted) in &by_cart {
        let mut events: Vec<(i64, Uuid)> = Vec::new();
        for bucket in 0..i32::MAX {
            let rows = read_bucket(&session, &statement, *cart, bucket).await?;
            let before = events.len();
            for row in rows
                .rows::<(i64, Uuid)>()
                .context("reading the event store")?
            {
                events.push(row.context("reading the event store")?);
            }
            if events.len() == before {
                break;
            }
        }
        if events
            .iter()
            .enumerate()
            .any(|(i, (seq, _))| i64::try_from(i + 1).ok() != Some(*seq))
        {
            report.out_of_order_carts += 1;
            if report.examples.len() < 10 {
                report
                    .examples
                    .push(format!("cart {cart}: event numbers are not 1..n"));
            }
        }
        let replayed: Vec<String> = events.iter().map(|(_, o)| o.to_string()).collect();
        if views.get(cart) != Some(&replayed) {
            mismatched.push((*cart, replayed));
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (_, order) in &events {
            *counts.entry(order.to_string()).or_default() += 1;
        }
        for order in wanted {
            match counts.get(order) {
                None => {
                    report.lost_event_store += 1;
                    if report.examples.len() < 10 {
                        report.examples.push(format!(
                            "order {order} of cart {cart} is not in the event store"
                        ));
                    }
                }
                Some(n) => {
                    report.stored += 1;
                    if *n > 1 {
                        report.duplicated_event_store += n - 1;
                    }
                }
            }
        }
    }

    // Read models equal to a replay of the event store: each cart's document lists the
    // orders of its events in event order. Orders stored but never acknowledged (a
    // client gave up) may still be on their way, so a mismatch gets time to settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mismatched.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut still = Vec::new();
        for (cart, replayed) in mismatched {
            if read_model(&client, key.as_ref(), &base, cart)
                .await
                .as_ref()
                != Some(&replayed)
            {
                still.push((cart, replayed));
            }
        }
        mismatched = still;
    }
    report.read_model_mismatches = mismatched.len();
    for (cart, replayed) in mismatched.iter().take(3) {
        if report.examples.len() < 10 {
            report.examples.push(format!(
                "cart {cart}: the read model differs from a replay of its {} events",
                replayed.len()
            ));
        }
    }
    Ok(report)
}
