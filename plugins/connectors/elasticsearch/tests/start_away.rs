//! The sink starts while Elasticsearch is away, against the local stack's real OpenSearch
//! (`scripts/stack up opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default
//! `http://127.0.0.1:9200`) reached through a relay that is not listening at first: the
//! build succeeds, readiness and writes fail with the reason and make nothing, and once
//! the relay listens the first readiness check makes the alias and writes go to it.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use elasticsearch::http::Method;
use salesflow_plugin_api::prometheus_client::registry::Registry;
use salesflow_plugin_api::{
    BuildContext, CancellationToken, Component, Event, Plugin, Settings, event::headers, toml,
};
use salesflow_plugin_elasticsearch::{Client, ElasticsearchSettings, ElasticsearchSinkPlugin};
use serde_json::json;

fn real_node() -> String {
    std::env::var("SALESFLOW_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

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
    let mut event = Event::new(json!({ "id": id }).to_string());
    event.headers = vec![
        (headers::DOC_INDEX.into(), alias.to_owned().into()),
        (headers::DOC_ID.into(), id.to_owned().into()),
        (headers::DOC_VERSION.into(), "1".to_owned().into()),
    ];
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_starts_while_elasticsearch_is_away_and_makes_its_alias_when_it_answers() {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let alias = format!("salesflow-start-away-test-{}-{unique}", std::process::id());
    // A port nothing listens on yet: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings: toml::Table = toml::from_str(&format!(
        "url = \"http://127.0.0.1:{port}\"\naliases = [\"{alias}\"]\n\
         request_timeout = \"2s\"\nretry_timeout = \"2s\""
    ))
    .unwrap();

    let mut registry = Registry::default();
    let (mut routes, mut checks) = (Vec::new(), Vec::new());
    let mut ctx = BuildContext::new(
        "test",
        "search-index",
        &mut registry,
        CancellationToken::new(),
        &mut routes,
        &mut checks,
    );
    let Component::Sink(factory) = ElasticsearchSinkPlugin
        .build(settings, &mut ctx)
        .await
        .expect("the sink builds while Elasticsearch is away")
    else {
        panic!("not a sink");
    };
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

    let real = Client::new(
        &ElasticsearchSettings::from_table(
            &toml::from_str(&format!("url = \"{}\"", real_node())).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
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
