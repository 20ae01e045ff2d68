//! `GET /tap/{pipeline}/{component}`: a bounded sample of the live events leaving a
//! component (`{component}.{output}` for a named output), as NDJSON, for `salesflow tap`.
//! Served only when `[server.tap] enabled = true`; behind API keys when `[server.tap]
//! auth` names them. Each request takes at most `limit` events (up to `max_events`) within
//! `timeout` (up to 60 s), at most `max_events_per_second`; watching never slows or
//! changes the pipeline (see `salesflow_plugin_api::tap`).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use salesflow_plugin_api::auth::{ApiKeys, AuthSettings};
use salesflow_plugin_api::axum::body::Body;
use salesflow_plugin_api::axum::extract::{Path, Query, State};
use salesflow_plugin_api::axum::http::{StatusCode, header};
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_plugin_api::axum::routing::get;
use salesflow_plugin_api::axum::{Json, Router};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{ConfigError, Event, Route, Tap, Watch};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::config::TapSettings;

/// The longest a request may watch.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The path the tap is served on.
pub const PATH: &str = "/tap/{pipeline}/{component}";

/// Every running component output's tap, by `pipeline/component[.output]`; replaced as
/// pipelines start and stop.
#[derive(Clone, Default)]
pub struct TapTable {
    inner: Arc<RwLock<BTreeMap<String, Arc<Tap>>>>,
}

impl TapTable {
    pub fn set(&self, taps: BTreeMap<String, Arc<Tap>>) {
        *self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = taps;
    }

    fn get(&self, name: &str) -> Result<Arc<Tap>, Vec<String>> {
        let taps = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        taps.get(name)
            .cloned()
            .ok_or_else(|| taps.keys().cloned().collect())
    }
}

struct Taps {
    taps: TapTable,
    settings: TapSettings,
}

#[derive(Deserialize)]
struct Params {
    limit: Option<u32>,
    timeout: Option<String>,
}

/// The keys of `[server.tap] auth`, when it names them (read before anything starts).
pub fn keys(settings: &TapSettings) -> Result<Option<ApiKeys>, ConfigError> {
    settings.auth.as_ref().map(AuthSettings::keys).transpose()
}

/// The tap route, protected by `keys` when there are any.
pub fn route(taps: TapTable, settings: &TapSettings, keys: Option<ApiKeys>) -> Route {
    let state = Arc::new(Taps {
        taps,
        settings: settings.clone(),
    });
    let mut router = Router::new().route(PATH, get(tap).with_state(state));
    if let Some(keys) = keys {
        router = salesflow_plugin_api::auth::protect(router, keys);
    }
    Route {
        path: PATH.into(),
        router,
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn tap(
    State(taps): State<Arc<Taps>>,
    Path((pipeline, component)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Response {
    let name = format!("{pipeline}/{component}");
    let tap = match taps.taps.get(&name) {
        Ok(tap) => tap,
        Err(known) => {
            return refuse(
                StatusCode::NOT_FOUND,
                &format!(
                    "no component output {name}; these can be tapped: {}",
                    known.join(", ")
                ),
            );
        }
    };
    let max = taps.settings.max_events;
    let limit = params.limit.unwrap_or(10);
    if limit == 0 || limit > max {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("limit must be 1 to {max} (server.tap.max_events), not {limit}"),
        );
    }
    let timeout = match params
        .timeout
        .as_deref()
        .map(humantime_serde::re::humantime::parse_duration)
    {
        None => Duration::from_secs(10),
        Some(Ok(t)) if !t.is_zero() && t <= MAX_TIMEOUT => t,
        Some(Ok(t)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("timeout must be more than 0 and at most {MAX_TIMEOUT:?}, not {t:?}"),
            );
        }
        Some(Err(e)) => return refuse(StatusCode::BAD_REQUEST, &format!("timeout: {e}")),
    };
    let sampler = Sampler {
        watch: tap.watch(),
        name,
        remaining: limit,
        deadline: Instant::now() + timeout,
        per_second: taps.settings.max_events_per_second.max(1),
        window: Instant::now(),
        in_window: 0,
    };
    let stream = salesflow_plugin_api::futures::stream::unfold(sampler, |mut s| async move {
        let line = s.next().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(line), s))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

struct Sampler {
    watch: Watch,
    name: String,
    remaining: u32,
    deadline: Instant,
    per_second: u32,
    window: Instant,
    in_window: u32,
}

impl Sampler {
    /// The next line to send, or `None` when the limit or the deadline is reached.
    async fn next(&mut self) -> Option<Bytes> {
        while self.remaining > 0 {
            let event = tokio::time::timeout_at(self.deadline, self.watch.next())
                .await
                .ok()??;
            let now = Instant::now();
            if now.duration_since(self.window) >= Duration::from_secs(1) {
                self.window = now;
                self.in_window = 0;
            }
            if self.in_window >= self.per_second {
                continue;
            }
            self.in_window += 1;
            self.remaining -= 1;
            let mut line = serde_json::to_vec(&describe(&self.name, &event)).ok()?;
            line.push(b'\n');
            return Some(Bytes::from(line));
        }
        None
    }
}

/// An event as a tap line: the payload as JSON when it is JSON, else as text.
fn describe(name: &str, event: &Event) -> serde_json::Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let payload = serde_json::from_slice::<serde_json::Value>(&event.payload)
        .unwrap_or_else(|_| serde_json::Value::String(text(&event.payload)));
    let headers: serde_json::Map<String, serde_json::Value> = event
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(text(v))))
        .collect();
    json!({
        "from": name,
        "key": event.key.as_deref().map(text),
        "payload": payload,
        "headers": headers,
        "timestamp_ms": event.timestamp_ms,
        "origin": event.origin.describe(),
    })
}
