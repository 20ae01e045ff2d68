//! The event store opens while Cassandra is away, against the local stack's real Cassandra
//! (`scripts/stack up cassandra`; `SALESFLOW_CASSANDRA_NODES`, by default `127.0.0.1:9042`)
//! reached through a relay that is not listening at first: opening succeeds, readiness and
//! reads fail naming what they were connecting to, and once the relay listens the store
//! connects and answers. A store whose statements Cassandra refuses still fails to open.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::time::{Duration, Instant};

use salesflow_plugin_api::{Settings, toml};
use salesflow_sales_event_store::{CassandraSettings, EventStore};
use uuid::Uuid;

fn settings(node: &str, keyspace: &str) -> CassandraSettings {
    CassandraSettings::from_table(
        &toml::from_str(&format!(
            "nodes = [\"{node}\"]\nkeyspace = \"{keyspace}\"\n\
             request_timeout = \"2s\"\nretry_timeout = \"1s\""
        ))
        .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_opens_while_cassandra_is_away_and_connects_when_it_answers() {
    let real = salesflow_testkit::cassandra_nodes()[0].clone();
    // An address nothing listens on yet: connections are refused.
    let away = salesflow_testkit::free_address().unwrap();
    let store = EventStore::open(&settings(&away, "salesflow"))
        .await
        .expect("the store opens while Cassandra is away");

    let why = store
        .healthcheck()
        .await
        .expect_err("not ready while away")
        .to_string();
    assert!(
        why.contains(&format!("connecting to Cassandra at {away}")),
        "{why}"
    );
    let cart = Uuid::new_v4();
    let why = store
        .load(cart)
        .await
        .expect_err("a read fails while away, after its retries")
        .to_string();
    assert!(
        why.contains(&format!("connecting to Cassandra at {away}")),
        "{why}"
    );

    let listener = tokio::net::TcpListener::bind(&away).await.unwrap();
    let relaying = tokio::spawn(salesflow_testkit::relay(listener, real));
    // The first check after the relay listens connects (one attempt per check).
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(why) = store.healthcheck().await {
        assert!(Instant::now() < deadline, "never ready: {why}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        store.load(cart).await.unwrap(),
        vec![],
        "a new cart has no events"
    );
    relaying.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_keyspace_does_not_exist_fails_to_open_with_the_reason() {
    let real = salesflow_testkit::cassandra_nodes()[0].clone();
    let keyspace = format!("salesflow_missing_{}", std::process::id());
    let why = EventStore::open(&settings(&real, &keyspace))
        .await
        .err()
        .expect("a keyspace that does not exist stops the open")
        .to_string();
    assert!(why.contains(&keyspace), "{why}");
    assert!(why.contains("preparing"), "{why}");
}
