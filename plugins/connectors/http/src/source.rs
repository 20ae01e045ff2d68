//! The request handler: body -> events -> pipeline -> answer once acknowledged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use salesflow_plugin_api::axum::body::{Body, Bytes as BodyBytes};
use salesflow_plugin_api::axum::extract::State;
use salesflow_plugin_api::axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_plugin_api::axum::{Json, body};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::json::top_level_field;
use salesflow_plugin_api::{
    AckHandle, AckSet, Batch, CancellationToken, Event, Origin, Output, PluginError, SendError,
    Source, Status, async_trait,
};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::config::{BodyMode, HttpSourceSettings};

/// The endpoint's state, shared by the route (built first) and the source (run later).
pub struct Endpoint {
    pub(crate) settings: HttpSourceSettings,
    /// Requests answered 429 because the pipeline stayed full.
    pub shed_backpressure: prometheus_client::metrics::counter::Counter,
    /// Requests answered 503 because too many were in flight.
    pub shed_overload: prometheus_client::metrics::counter::Counter,
    /// The pipeline while open; taken out at close, so that its channels can close once
    /// the requests inside (which hold clones) finish.
    output: RwLock<Option<Output>>,
    open: AtomicBool,
    next_lane: AtomicU64,
    /// One permit per request handled at once (`max_concurrent_requests`).
    in_flight: Semaphore,
}

impl Endpoint {
    pub fn new(settings: HttpSourceSettings) -> Self {
        Self {
            in_flight: Semaphore::new(settings.max_concurrent_requests),
            settings,
            output: RwLock::new(None),
            shed_backpressure: prometheus_client::metrics::counter::Counter::default(),
            shed_overload: prometheus_client::metrics::counter::Counter::default(),
            open: AtomicBool::new(false),
            next_lane: AtomicU64::new(0),
        }
    }

    /// Opens the endpoint with the pipeline it feeds (tests and the source's `run`).
    pub fn open(&self, output: Output) {
        *self
            .output
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(output);
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.output
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    fn output(&self) -> Option<Output> {
        if !self.open.load(Ordering::SeqCst) {
            return None;
        }
        self.output
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn retry_after(&self) -> HeaderValue {
        HeaderValue::from(self.settings.retry_after_secs)
    }
}

/// The source side: opens the endpoint, and closes it at shutdown. Requests already
/// inside finish (the HTTP server drains them); new ones are answered 503.
pub struct HttpSource {
    pub(crate) endpoint: Arc<Endpoint>,
}

#[async_trait]
impl Source for HttpSource {
    async fn run(
        self: Box<Self>,
        out: Output,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError> {
        self.endpoint.open(out);
        shutdown.cancelled().await;
        self.endpoint.close();
        Ok(())
    }
}

fn error(status: StatusCode, message: impl Into<String>, details: serde_json::Value) -> Response {
    let mut body = json!({ "error": message.into() });
    if !details.is_null() {
        body["details"] = details;
    }
    (status, Json(body)).into_response()
}

fn retry_later(endpoint: &Endpoint, status: StatusCode, message: &str) -> Response {
    let mut response = error(status, message, serde_json::Value::Null);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, endpoint.retry_after());
    response
}

/// What the body held: one payload per event.
/// The events of a body: one JSON value, a JSON array's items, or NDJSON lines; or the
/// 400 answer saying why not. Public for the fuzz targets.
pub fn split_body(mode: BodyMode, ndjson: bool, body: &[u8]) -> Result<Vec<Bytes>, Box<Response>> {
    let bad = |message: String| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            message,
            serde_json::Value::Null,
        ))
    };
    if std::str::from_utf8(body).is_err() {
        return Err(bad("the body is not valid UTF-8".into()));
    }
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(bad("the body is empty: no events".into()));
    }
    let many = match mode {
        BodyMode::Single => false,
        BodyMode::Many => true,
        BodyMode::Auto => ndjson || trimmed.first() == Some(&b'['),
    };
    if !many {
        let value: &RawValue = serde_json::from_slice(trimmed)
            .map_err(|e| bad(format!("the body is not a JSON object: {e}")))?;
        if !value.get().starts_with('{') {
            return Err(bad("the body must be one JSON object".into()));
        }
        return Ok(vec![Bytes::copy_from_slice(trimmed)]);
    }
    let items: Vec<&[u8]> = if ndjson {
        trimmed
            .split(|&b| b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|line| !line.is_empty())
            .collect()
    } else {
        let values: Vec<&RawValue> = serde_json::from_slice(trimmed).map_err(|e| {
            bad(format!(
                "the body is not a JSON array of objects (or NDJSON with Content-Type \
                 application/x-ndjson): {e}"
            ))
        })?;
        values.into_iter().map(|v| v.get().as_bytes()).collect()
    };
    let mut payloads = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let value: &RawValue = serde_json::from_slice(item)
            .map_err(|e| bad(format!("item {i} is not valid JSON: {e}")))?;
        if !value.get().starts_with('{') {
            return Err(bad(format!("item {i} is not a JSON object")));
        }
        payloads.push(Bytes::copy_from_slice(item));
    }
    if payloads.is_empty() {
        return Err(bad("the body holds no events".into()));
    }
    Ok(payloads)
}

fn is_ndjson(headers: &HeaderMap) -> Result<bool, ()> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let value = value.to_str().map_err(|_| ())?.to_ascii_lowercase();
    let essence = value.split(';').next().unwrap_or_default().trim();
    match essence {
        "application/json" | "" => Ok(false),
        "application/x-ndjson" | "application/ndjson" | "application/jsonlines" => Ok(true),
        _ => Err(()),
    }
}

/// The events of a request, and the ids to answer with.
struct Parsed {
    events: Vec<Event>,
    ids: Option<Vec<Option<String>>>,
}

async fn parse(
    settings: &HttpSourceSettings,
    headers: &HeaderMap,
    body: Body,
) -> Result<Parsed, Box<Response>> {
    let Ok(ndjson) = is_ndjson(headers) else {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json or application/x-ndjson",
            serde_json::Value::Null,
        )));
    };
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > settings.max_body_bytes as u64) {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", settings.max_body_bytes),
            serde_json::Value::Null,
        )));
    }
    let bytes: BodyBytes = body::to_bytes(body, settings.max_body_bytes)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit");
            Box::new(if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {} bytes", settings.max_body_bytes),
                    serde_json::Value::Null,
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the body: {e}"),
                    serde_json::Value::Null,
                )
            })
        })?;
    let payloads = split_body(settings.body, ndjson, &bytes)?;
    if payloads.len() > settings.max_events {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events; at most {} per request",
                payloads.len(),
                settings.max_events
            ),
            serde_json::Value::Null,
        )));
    }
    let now_ms = Some(salesflow_plugin_api::event::now_ms());
    let ids = settings
        .id_field
        .as_deref()
        .map(|field| payloads.iter().map(|p| top_level_field(p, field)).collect());
    let events = payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Event {
            key: settings
                .key_field
                .as_deref()
                .and_then(|f| top_level_field(&payload, f))
                .map(Bytes::from),
            payload,
            headers: Vec::new(),
            timestamp_ms: now_ms,
            origin: Origin::Http {
                item: u32::try_from(i).unwrap_or(u32::MAX),
            },
        })
        .collect();
    Ok(Parsed { events, ids })
}

pub async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Held until the answer: a request over the limit is shed before anything is read.
    let Ok(_permit) = endpoint.in_flight.try_acquire() else {
        endpoint.shed_overload.inc();
        return retry_later(
            &endpoint,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry later",
        );
    };
    let settings = &endpoint.settings;
    let deadline = tokio::time::Instant::now() + settings.request_timeout;
    let Some(output) = endpoint.output() else {
        return retry_later(
            &endpoint,
            StatusCode::SERVICE_UNAVAILABLE,
            "not accepting requests now (starting or stopping)",
        );
    };
    let Parsed { events, ids } = match parse(settings, &headers, body).await {
        Ok(parsed) => parsed,
        Err(response) => return *response,
    };
    let count = events.len();
    let (ack, status) = AckHandle::channel();
    let lane = endpoint.next_lane.fetch_add(1, Ordering::Relaxed);
    let batch = Batch::new(events, AckSet::one(ack), lane);

    match output.send_timeout(batch, settings.accept_timeout).await {
        Ok(()) => {}
        Err(SendError::Full(_)) => {
            endpoint.shed_backpressure.inc();
            return retry_later(
                &endpoint,
                StatusCode::TOO_MANY_REQUESTS,
                "the pipeline is full; retry later",
            );
        }
        Err(SendError::Closed(_)) => {
            return retry_later(
                &endpoint,
                StatusCode::SERVICE_UNAVAILABLE,
                "the pipeline is stopping",
            );
        }
    }
    let accepted = |ids: Option<Vec<Option<String>>>| {
        let mut body = json!({ "accepted": count });
        if let Some(ids) = ids {
            body["ids"] = json!(ids);
        }
        (StatusCode::ACCEPTED, Json(body)).into_response()
    };
    if !settings.wait_for_ack {
        return accepted(ids);
    }
    match tokio::time::timeout_at(deadline, status).await {
        Ok(Ok(Status::Delivered)) => accepted(ids),
        Ok(Ok(Status::Rejected(rejections))) => {
            debug!(rejected = rejections.len(), "request rejected");
            error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} of {count} events are invalid; nothing of this request was kept",
                    rejections.len()
                ),
                json!(rejections),
            )
        }
        Ok(Ok(Status::Failed(reason))) => retry_later(
            &endpoint,
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("the events could not be stored ({reason}); retry later"),
        ),
        Ok(Err(_)) => retry_later(
            &endpoint,
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline dropped the request",
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "not confirmed in time; retrying is safe",
            serde_json::Value::Null,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_events() {
        let one = split_body(BodyMode::Auto, false, br#" {"a":1} "#).unwrap();
        assert_eq!(one, vec![Bytes::from_static(br#"{"a":1}"#)]);
        let many = split_body(BodyMode::Auto, false, br#"[{"a":1}, {"a":2}]"#).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[1], Bytes::from_static(br#"{"a":2}"#));
        let nd = split_body(BodyMode::Many, true, b"{\"a\":1}\n\n{\"a\":2}\n").unwrap();
        assert_eq!(nd.len(), 2);
    }

    /// JSON's grammar has no range for numbers (RFC 8259 leaves limits to each reader):
    /// the source splits `1e400` like any number, and the stage that reads the event
    /// judges it (the order decoder refuses it, naming why; a generic stage sends it to
    /// its dead letters). The source does not parse every value twice to find out.
    #[test]
    fn numbers_past_f64_are_left_to_the_decoders() {
        let events = split_body(
            BodyMode::Auto,
            false,
            br#"[{"a":1e400},{"a":9e66888888888888888}]"#,
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], Bytes::from_static(br#"{"a":1e400}"#));
        assert!(serde_json::from_slice::<serde_json::Value>(&events[0]).is_err());
    }

    #[test]
    fn bad_bodies_are_refused() {
        for (mode, nd, body) in [
            (BodyMode::Single, false, &b"[{\"a\":1}]"[..]),
            (BodyMode::Auto, false, b"{\"a\":"),
            (BodyMode::Auto, false, b"[1, 2]"),
            (BodyMode::Many, true, b"{\"a\":1}\nnope"),
            (BodyMode::Auto, false, b"\xff\xfe"),
            (BodyMode::Auto, false, b"   "),
            (BodyMode::Many, false, b"[]"),
        ] {
            let response = split_body(mode, nd, body).unwrap_err();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body:?}");
        }
    }
}

/// Property tests of body splitting: arbitrary bytes never panic and are refused with
/// a message, and N JSON objects as an array or as NDJSON are N events, each JSON.
/// 3 x 2000 generated cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn object() -> impl Strategy<Value = serde_json::Value> {
        prop::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..5)
            .prop_map(|m| serde_json::json!(m))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bodies_split_or_are_refused(body in prop::collection::vec(any::<u8>(), 0..300), ndjson in any::<bool>()) {
            for mode in [BodyMode::Single, BodyMode::Many, BodyMode::Auto] {
                match split_body(mode, ndjson, &body) {
                    Ok(events) => {
                        prop_assert!(!events.is_empty());
                        for e in &events {
                            // JSON by the grammar, one object: number ranges are the
                            // decoders' to judge (see `numbers_past_f64_are_left_to_the_decoders`).
                            let object = serde_json::from_slice::<&RawValue>(e)
                                .is_ok_and(|r| r.get().starts_with('{'));
                            prop_assert!(object, "not one JSON object: {:?}", e);
                        }
                    }
                    Err(response) => prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST),
                }
            }
        }

        #[test]
        fn arrays_split_into_their_objects(objects in prop::collection::vec(object(), 1..20)) {
            let body = serde_json::to_vec(&objects).unwrap();
            let events = split_body(BodyMode::Auto, false, &body).map_err(|_| "refused").unwrap();
            prop_assert_eq!(events.len(), objects.len());
            for (e, o) in events.iter().zip(&objects) {
                prop_assert_eq!(&serde_json::from_slice::<serde_json::Value>(e).unwrap(), o);
            }
        }

        #[test]
        fn ndjson_splits_into_its_lines(objects in prop::collection::vec(object(), 1..20)) {
            let body: Vec<u8> = objects
                .iter()
                .flat_map(|o| {
                    let mut line = serde_json::to_vec(o).unwrap();
                    line.push(b'\n');
                    line
                })
                .collect();
            let events = split_body(BodyMode::Many, true, &body).map_err(|_| "refused").unwrap();
            prop_assert_eq!(events.len(), objects.len());
        }
    }
}
