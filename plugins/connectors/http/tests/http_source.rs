//! The HTTP source's answers, driven through its router (no socket), with a real bounded
//! channel standing where the pipeline's next node would be.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use salesflow_plugin_api::axum::Router;
use salesflow_plugin_api::axum::body::Body;
use salesflow_plugin_api::axum::http::{Request, StatusCode, header};
use salesflow_plugin_api::{Batch, Downstream, Output, Rejection, Settings, Status, toml};
use salesflow_plugin_http::{Endpoint, HttpSourceSettings, router};
use tokio::sync::mpsc;
use tower::ServiceExt;

fn settings(extra: &str) -> HttpSourceSettings {
    let text =
        format!("path = \"/orders\"\nid_field = \"order_id\"\nkey_field = \"cart_id\"\n{extra}");
    HttpSourceSettings::from_table(&text.parse::<toml::Table>().unwrap()).unwrap()
}

fn setup(extra: &str, capacity: usize) -> (Router, mpsc::Receiver<Batch>) {
    let endpoint = Arc::new(Endpoint::new(settings(extra)));
    let (tx, rx) = mpsc::channel(capacity);
    endpoint.open(Output::new(vec![Downstream::new(vec![tx])], None));
    (router(endpoint), rx)
}

fn post(body: &'static str, content_type: &str) -> Request<Body> {
    Request::post("/orders")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

async fn json(response: salesflow_plugin_api::axum::response::Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Plays the rest of the pipeline: finishes every batch with `status`.
fn downstream(
    mut rx: mpsc::Receiver<Batch>,
    status: Status,
) -> tokio::task::JoinHandle<Vec<Batch>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(batch) = rx.recv().await {
            seen.push(Batch::new(
                batch.events.clone(),
                salesflow_plugin_api::AckSet::default(),
                batch.lane,
            ));
            batch.finish(&status);
        }
        seen
    })
}

#[tokio::test]
async fn accepted_after_the_sinks_acknowledge() {
    let (app, rx) = setup("", 4);
    let sink = downstream(rx, Status::Delivered);
    let response = app
        .oneshot(post(
            r#"[{"order_id":"o1","cart_id":"c1"},{"order_id":"o2","cart_id":"c2"}]"#,
            "application/json",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        json(response).await,
        serde_json::json!({"accepted": 2, "ids": ["o1", "o2"]})
    );
    sink.abort();
}

#[tokio::test]
async fn ndjson_events_keep_their_keys() {
    let (app, mut rx) = setup("", 4);
    let request = tokio::spawn(app.oneshot(post(
        "{\"order_id\":\"o1\",\"cart_id\":\"c1\"}\n{\"order_id\":\"o2\",\"cart_id\":\"c2\"}\n",
        "application/x-ndjson",
    )));
    let batch = rx.recv().await.unwrap();
    let keys: Vec<_> = batch
        .events
        .iter()
        .map(|e| e.key.clone().unwrap())
        .collect();
    assert_eq!(keys, ["c1", "c2"]);
    batch.finish(&Status::Delivered);
    assert_eq!(
        request.await.unwrap().unwrap().status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn rejected_events_are_named() {
    let (app, rx) = setup("", 4);
    let rejection = Rejection {
        index: Some(1),
        reasons: vec!["quantity: must be at least 1".into()],
    };
    let sink = downstream(rx, Status::Rejected(vec![rejection]));
    let response = app
        .oneshot(post(
            r#"[{"order_id":"o1"},{"order_id":"o2"}]"#,
            "application/json",
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json(response).await;
    assert_eq!(body["details"][0]["index"], 1);
    assert_eq!(
        body["details"][0]["reasons"][0],
        "quantity: must be at least 1"
    );
    sink.abort();
}

#[tokio::test]
async fn a_failed_delivery_asks_to_retry() {
    let (app, rx) = setup("", 4);
    let sink = downstream(rx, Status::Failed("cassandra down".into()));
    let response = app
        .oneshot(post(r#"{"order_id":"o1"}"#, "application/json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    sink.abort();
}

#[tokio::test]
async fn a_full_pipeline_answers_429_with_retry_after() {
    // Capacity 1, already taken, and nobody reading: no room within accept_timeout.
    let endpoint = Arc::new(Endpoint::new(settings(
        "accept_timeout = \"50ms\"\nretry_after_secs = 3",
    )));
    let (tx, _rx) = mpsc::channel(1);
    tx.send(Batch::new(
        Vec::new(),
        salesflow_plugin_api::AckSet::default(),
        0,
    ))
    .await
    .unwrap();
    endpoint.open(Output::new(vec![Downstream::new(vec![tx])], None));
    let response = router(endpoint)
        .oneshot(post(r#"{"order_id":"o2"}"#, "application/json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed() {
    let (app, mut rx) = setup("max_concurrent_requests = 1", 4);
    let first = tokio::spawn(
        app.clone()
            .oneshot(post(r#"{"order_id":"o1"}"#, "application/json")),
    );
    // Once the first request's batch is in the pipeline, it holds the only slot.
    let batch = rx.recv().await.unwrap();
    let second = app
        .clone()
        .oneshot(post(r#"{"order_id":"o2"}"#, "application/json"))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key(header::RETRY_AFTER));
    batch.finish(&Status::Delivered);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::ACCEPTED);
}

/// The limit is a semaphore's permit count: a number it cannot hold is refused when the
/// configuration is read, naming the setting, instead of panicking at start.
#[test]
fn a_concurrency_limit_out_of_range_is_refused() {
    for value in ["0", "1000001", "2305843009213693952"] {
        let text = format!("path = \"/orders\"\nmax_concurrent_requests = {value}");
        let error = HttpSourceSettings::from_table(&text.parse::<toml::Table>().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("max_concurrent_requests"),
            "{value}: {error}"
        );
    }
    let text = "path = \"/orders\"\nmax_concurrent_requests = 1000000";
    HttpSourceSettings::from_table(&text.parse::<toml::Table>().unwrap()).unwrap();
}

#[tokio::test]
async fn limits_and_bad_input_get_clear_answers() {
    let (app, rx) = setup("max_body_bytes = 64\nmax_events = 2", 4);
    let sink = downstream(rx, Status::Delivered);
    let cases: [(&'static str, &str, StatusCode); 5] = [
        (
            r#"{"order_id":"a very long order id that makes this body longer than sixty-four bytes"}"#,
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            r#"[{"a":1},{"a":2},{"a":3}]"#,
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            r#"{"a":1}"#,
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (r#"{"a":"#, "application/json", StatusCode::BAD_REQUEST),
        ("[1,2]", "application/json", StatusCode::BAD_REQUEST),
    ];
    for (body, content_type, expected) in cases {
        let response = app.clone().oneshot(post(body, content_type)).await.unwrap();
        assert_eq!(response.status(), expected, "{body}");
        let body = json(response).await;
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let seen = {
        drop(app);
        tokio::time::timeout(Duration::from_millis(10), sink).await
    };
    // Nothing of the refused requests reached the pipeline.
    if let Ok(Ok(batches)) = seen {
        assert!(batches.is_empty());
    }
}

#[tokio::test]
async fn a_closed_endpoint_answers_503() {
    let endpoint = Arc::new(Endpoint::new(settings("")));
    let app = router(endpoint);
    let response = app
        .oneshot(post(r#"{"order_id":"o1"}"#, "application/json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}
