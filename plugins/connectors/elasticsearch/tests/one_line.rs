//! Documents that are not one line, against the local stack's real OpenSearch
//! (`scripts/stack up opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default
//! `http://127.0.0.1:9200`): another producer's pretty-printed JSON sent as it is in a
//! bulk request is read as action lines, and the server answers the whole request 400
//! ("Malformed action/metadata line"), so the write could never succeed and its source
//! would read the batch again forever. The sink writes it on one line (the same JSON),
//! refuses an empty document alone with the reason, and writes the others.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::sync::Arc;

use elasticsearch::http::Method;
use salesflow_plugin_api::prometheus_client::registry::Registry;
use salesflow_plugin_api::{
    BuildContext, CancellationToken, Component, Event, Plugin, Refused, Settings, event::headers,
    toml,
};
use salesflow_plugin_elasticsearch::{Client, ElasticsearchSettings, ElasticsearchSinkPlugin};
use serde_json::json;

fn real_node() -> String {
    std::env::var("SALESFLOW_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

fn doc(alias: &str, id: &str, source: String) -> Event {
    let mut event = Event::new(source);
    event.headers = vec![
        (headers::DOC_INDEX.into(), alias.to_owned().into()),
        (headers::DOC_ID.into(), id.to_owned().into()),
        (headers::DOC_VERSION.into(), "1".to_owned().into()),
    ];
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_printed_documents_are_written_and_an_empty_one_is_refused_alone() {
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let alias = format!("salesflow-one-line-test-{}-{unique}", std::process::id());
    let settings: toml::Table = toml::from_str(&format!(
        "url = \"{}\"\naliases = [\"{alias}\"]\nretry_timeout = \"10s\"",
        real_node()
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
        .unwrap()
    else {
        panic!("not a sink");
    };
    let mut sink = factory.create(0).unwrap();

    let pretty = serde_json::to_string_pretty(&json!({ "id": "b", "n": 2 })).unwrap();
    let written = sink
        .write(Arc::from(vec![
            doc(&alias, "a", json!({ "id": "a" }).to_string()),
            doc(&alias, "b", pretty),
            doc(&alias, "c", format!("{}\n", json!({ "id": "c" }))),
            doc(&alias, "d", String::new()),
        ]))
        .await
        .unwrap();
    let error = written
        .await
        .expect_err("the empty document cannot be written");
    let Some(Refused::Some(refused)) = &error.refused else {
        panic!("not refused one by one: {error}");
    };
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, 3, "{refused:?}");
    assert!(refused[0].1.contains("empty"), "{refused:?}");

    let real = Client::new(
        &ElasticsearchSettings::from_table(
            &toml::from_str(&format!("url = \"{}\"", real_node())).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let index = format!("{alias}-000001");
    for (id, source) in [
        ("a", Some(json!({ "id": "a" }))),
        ("b", Some(json!({ "id": "b", "n": 2 }))),
        ("c", Some(json!({ "id": "c" }))),
        ("d", None),
    ] {
        let (status, body) = real
            .call(Method::Get, &format!("/{index}/_doc/{id}"), None)
            .await
            .unwrap();
        match source {
            Some(source) => assert_eq!((status, &body["_source"]), (200, &source), "{body}"),
            None => assert_eq!(status, 404, "{id}: {body}"),
        }
    }
    let _ = real.call(Method::Delete, &format!("/{index}"), None).await;
}
