//! The readiness check against the local stack's real OpenSearch (`scripts/stack up
//! opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default `http://127.0.0.1:9200`): it
//! passes on indices that exist, names the ones that do not, and is not a search, so an
//! index nobody reads goes search-idle and skips its scheduled refreshes.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use common::{real_client, real_node, unique_alias};
use elasticsearch::http::Method;
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_elasticsearch::{Client, Doc, readiness_path};
use serde_json::json;

fn client(request_timeout: &str) -> Client {
    real_client(&format!("request_timeout = \"{request_timeout}\""))
}

/// The searches an index has served, from its statistics.
async fn searches(client: &Client, index: &str) -> u64 {
    let (status, body) = client
        .call(Method::Get, &format!("/{index}/_stats/search"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["indices"][index]["total"]["search"]["query_total"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_not_a_search_and_names_what_is_missing() {
    let alias = unique_alias("readiness");
    let index = format!("{alias}-000001");
    let client = client("30s");
    client.ensure_alias(&alias).await.unwrap();
    let doc = Doc {
        index: alias.clone(),
        id: "doc-1".into(),
        version: 1,
        source: Bytes::from(json!({ "n": 1 }).to_string()),
    };
    assert_eq!(client.bulk(&[doc]).await.unwrap().indexed, 1);

    let before = searches(&client, &index).await;
    let ready = readiness_path(&[&alias]);
    for _ in 0..5 {
        assert_eq!(client.healthcheck(&ready).await, Ok(()));
    }
    assert_eq!(
        searches(&client, &index).await,
        before,
        "a readiness check counted as a search"
    );
    // The way it was: every check a search, keeping the index from going search-idle.
    let (status, body) = client
        .call(Method::Get, &format!("/{alias}/_count"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(searches(&client, &index).await, before + 1);

    // An alias that is missing fails the check after a second, named, with the health:
    // also when requests may take only a second (the check waits longer for its answer).
    let missing = unique_alias("readiness-missing");
    let path = readiness_path(&[&alias, &missing]);
    for client in [&client, &self::client("1s")] {
        let error = client.healthcheck(&path).await.unwrap_err();
        assert_eq!(
            error,
            format!(
                "{}: /_cluster/health/{alias},{missing} answered 408 Request Timeout (health red after 1s: an index missing or a primary shard not allocated)",
                real_node()
            )
        );
    }

    let (status, body) = client
        .call(Method::Delete, &format!("/{index}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}
