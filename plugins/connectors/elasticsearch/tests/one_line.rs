//! Documents that are not one line, against the local stack's real OpenSearch
//! (`scripts/stack up opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default
//! `http://127.0.0.1:9200`): another producer's pretty-printed JSON sent as it is in a
//! bulk request is read as action lines, and the server answers the whole request 400
//! ("Malformed action/metadata line"), so the write could never succeed and its source
//! would read the batch again forever. The sink writes it on one line (the same JSON),
//! refuses an empty document alone with the reason, and writes the others.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use std::sync::Arc;

use common::{build_sink, doc, real_client, real_node, unique_alias};
use elasticsearch::http::Method;
use salesflow_plugin_api::Refused;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_printed_documents_are_written_and_an_empty_one_is_refused_alone() {
    let alias = unique_alias("one-line");
    let (factory, _) = build_sink(&format!(
        "url = \"{}\"\naliases = [\"{alias}\"]\nretry_timeout = \"10s\"",
        real_node()
    ))
    .await;
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

    let real = real_client("");
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
