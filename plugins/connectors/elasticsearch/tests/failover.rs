//! The client against the local stack's real OpenSearch (`scripts/stack up opensearch`;
//! `SALESFLOW_ELASTICSEARCH_URL`, by default `http://127.0.0.1:9200`), with `urls`
//! listing a node that is down first: writes and reads go on through the real one.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use common::{real_node, unique_alias};
use elasticsearch::http::Method;
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{Settings, toml};
use salesflow_plugin_elasticsearch::{Client, Doc, ElasticsearchSettings, readiness_path};
use serde_json::json;

/// Port 1: nothing listens there, connections are refused.
const DEAD: &str = "http://127.0.0.1:1";

fn client() -> Client {
    let settings = ElasticsearchSettings::from_table(
        &toml::from_str(&format!(
            "urls = [\"{DEAD}\", \"{}\"]\nretry_timeout = \"30s\"",
            real_node()
        ))
        .unwrap(),
    )
    .unwrap();
    Client::new(&settings).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_writes_and_reads_go_on_past_a_dead_node() {
    let alias = unique_alias("failover");
    let index = format!("{alias}-000001");

    // Setup through a first client: its first request meets the dead node and moves on.
    let setup = client();
    setup.ensure_alias(&alias).await.unwrap();
    let nodes = setup.pool().status();
    assert!(!nodes[0].up && nodes[1].up, "{nodes:?}");

    // A fresh client's first request is a bulk write: to the dead node first, then on,
    // at once (a node that could not be connected to is not a retry).
    let client = client();
    let docs: Vec<Doc> = (0..50)
        .map(|n| Doc {
            index: alias.clone(),
            id: format!("doc-{n}"),
            version: 1,
            source: Bytes::from(json!({ "n": n }).to_string()),
        })
        .collect();
    let outcome = client.bulk(&docs).await.unwrap();
    assert_eq!(
        (outcome.indexed, outcome.stale, outcome.refused.len()),
        (50, 0, 0),
        "{outcome:?}"
    );
    assert_eq!(client.retried.get(), 0);
    assert!(!client.pool().status()[0].up);
    // Written again at the same versions: stale, as with one node.
    let again = client.bulk(&docs).await.unwrap();
    assert_eq!((again.indexed, again.stale), (0, 50), "{again:?}");

    // Reads.
    let (status, body) = client
        .call(Method::Post, &format!("/{alias}/_refresh"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = client
        .call(Method::Get, &format!("/{alias}/_count"), None)
        .await
        .unwrap();
    assert_eq!((status, body["count"].as_u64()), (200, Some(50)), "{body}");
    let (status, body) = client
        .call(Method::Get, &format!("/{index}/_doc/doc-7"), None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["_source"]["n"].as_u64()),
        (200, Some(7)),
        "{body}"
    );
    let (status, body) = client
        .call(
            Method::Post,
            &format!("/{alias}/_search"),
            Some(json!({ "query": { "range": { "n": { "gte": 40 } } } })),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["hits"]["total"]["value"].as_u64()),
        (200, Some(10)),
        "{body}"
    );

    // Ready, one node answering; the dead one named.
    let path = readiness_path(&[&alias]);
    let nodes = client.node_health(&path).await;
    assert_eq!(
        nodes[0],
        (
            DEAD.to_owned(),
            Err(format!("/_cluster/health/{alias}: cannot connect"))
        )
    );
    assert!(nodes[1].1.is_ok(), "{nodes:?}");
    assert_eq!(client.healthcheck(&path).await, Ok(()));

    let (status, body) = client
        .call(Method::Delete, &format!("/{index}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}
