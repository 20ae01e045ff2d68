//! The sink starts while Elasticsearch is away, against the local stack's real OpenSearch
//! (`scripts/stack up opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default
//! `http://127.0.0.1:9200`) reached through a relay that is not listening at first: the
//! build succeeds, readiness and writes fail with the reason and make nothing, and once
//! the relay listens the first readiness check makes the alias and writes go to it.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{build_sink, real_client, real_node, unique_alias};
use elasticsearch::http::Method;
use salesflow_plugin_api::Event;
use serde_json::json;

/// The real node's `host:port`.
fn real_address() -> String {
    let target = url::Url::parse(&real_node()).unwrap();
    format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port_or_known_default().unwrap()
    )
}

fn doc(alias: &str, id: &str) -> Event {
    common::doc(alias, id, json!({ "id": id }).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_starts_while_elasticsearch_is_away_and_makes_its_alias_when_it_answers() {
    let alias = unique_alias("start-away");
    // A port nothing listens on yet: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (factory, checks) = build_sink(&format!(
        "url = \"http://127.0.0.1:{port}\"\naliases = [\"{alias}\"]\n\
         request_timeout = \"2s\"\nretry_timeout = \"2s\""
    ))
    .await;
    let ready = Arc::clone(&checks[0].check);
    let mut sink = factory.create(0).unwrap();

    let why = ready().await.expect_err("not ready while away");
    assert!(why.contains(&alias), "{why}");
    let written = sink.write(Arc::from(vec![doc(&alias, "a")])).await.unwrap();
    let why = written
        .await
        .expect_err("a write fails while away")
        .to_string();
    assert!(why.contains(&alias), "{why}");

    let real = real_client("");
    let (status, _) = real
        .call(Method::Get, &format!("/_alias/{alias}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404, "nothing made while away");

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let relaying = tokio::spawn(salesflow_testkit::relay(listener, real_address()));
    // The client's pool waits out a backoff before it tries a node that refused again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(why) = ready().await {
        assert!(Instant::now() < deadline, "never ready: {why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = real
        .call(Method::Get, &format!("/_alias/{alias}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let index = format!("{alias}-000001");
    assert_eq!(
        body[&index]["aliases"][&alias]["is_write_index"],
        json!(true),
        "{body}"
    );

    let written = sink.write(Arc::from(vec![doc(&alias, "b")])).await.unwrap();
    written.await.unwrap();
    let (status, body) = real
        .call(Method::Get, &format!("/{index}/_doc/b"), None)
        .await
        .unwrap();
    assert_eq!(
        (status, &body["_source"]),
        (200, &json!({ "id": "b" })),
        "{body}"
    );

    relaying.abort();
    let _ = real.call(Method::Delete, &format!("/{index}"), None).await;
}
