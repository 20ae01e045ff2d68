//! Smoke tests against the running local stack (`localstack up`), with the project's own
//! clients: rdkafka, scylla and the elasticsearch crate. Addresses come from the
//! environment with the local stack's defaults:
//! `SALESFLOW_KAFKA_BOOTSTRAP`, `SALESFLOW_CASSANDRA_NODES`, `SALESFLOW_ELASTICSEARCH_URL`.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::BTreeMap;
use std::time::Duration;

use elasticsearch::http::transport::Transport;
use elasticsearch::indices::IndicesDeleteParts;
use elasticsearch::params::Refresh;
use elasticsearch::{Elasticsearch, IndexParts, SearchParts};
use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session_builder::SessionBuilder;
use serde_json::json;
use uuid::Uuid;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn kafka_bootstrap() -> String {
    env_or("SALESFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
}

#[tokio::test]
async fn kafka_produce_and_consume_round_trip() {
    let bootstrap = kafka_bootstrap();
    let topic = format!("smoke-{}", Uuid::new_v4());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .expect("create_topics request");
    assert!(
        created[0].is_ok(),
        "topic creation failed: {:?}",
        created[0]
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let mut sent = BTreeMap::new();
    for i in 0..100 {
        let key = format!("cart-{}", i % 7);
        let payload = format!("{{\"n\":{i}}}");
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .expect("delivery");
        assert!((0..3).contains(&delivery.partition));
        assert!(delivery.offset >= 0);
        sent.insert(payload, key);
    }

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("smoke-{}", Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let mut received = BTreeMap::new();
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("all 100 messages within 60 s")
            .expect("stream open")
            .expect("message");
        let payload = String::from_utf8(message.payload().expect("payload").to_vec()).unwrap();
        let key = String::from_utf8(message.key().expect("key").to_vec()).unwrap();
        received.insert(payload, key);
    }
    assert_eq!(
        received, sent,
        "every message comes back once, with its key"
    );
    drop(stream);

    admin
        .delete_topics(&[&topic], &options)
        .await
        .expect("delete topic");
}

#[tokio::test]
async fn cassandra_create_insert_select() {
    let nodes = env_or("SALESFLOW_CASSANDRA_NODES", "127.0.0.1:9042");
    let session = SessionBuilder::new()
        .known_nodes(nodes.split(','))
        .build()
        .await
        .expect("CQL session");
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS salesflow_smoke WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await
        .expect("create keyspace");
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS salesflow_smoke.items \
             (run uuid, n int, label text, PRIMARY KEY ((run), n))",
            &[],
        )
        .await
        .expect("create table");

    let run = Uuid::new_v4();
    let insert = session
        .prepare("INSERT INTO salesflow_smoke.items (run, n, label) VALUES (?, ?, ?)")
        .await
        .expect("prepare");
    for n in 0..20_i32 {
        session
            .execute_unpaged(&insert, (run, n, format!("item {n}")))
            .await
            .expect("insert");
    }
    let rows: Vec<(i32, String)> = session
        .query_unpaged(
            "SELECT n, label FROM salesflow_smoke.items WHERE run = ?",
            (run,),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows::<(i32, String)>()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("decode");
    let expected: Vec<(i32, String)> = (0..20).map(|n| (n, format!("item {n}"))).collect();
    assert_eq!(rows, expected, "rows come back in clustering order");

    // The stack's own schema is in place too.
    let tables: Vec<(String,)> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = 'salesflow'",
            &[],
        )
        .await
        .expect("schema query")
        .into_rows_result()
        .expect("rows")
        .rows::<(String,)>()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("decode");
    assert!(tables.iter().any(|(t,)| t == "cart_events"), "{tables:?}");
}

#[tokio::test]
async fn elasticsearch_index_and_search() {
    let url = env_or("SALESFLOW_ELASTICSEARCH_URL", "http://127.0.0.1:9200");
    let client = Elasticsearch::new(Transport::single_node(&url).expect("transport"));
    let index = format!("smoke-{}", Uuid::new_v4());
    for (id, product) in [("1", "red running shoes"), ("2", "blue garden hose")] {
        let response = client
            .index(IndexParts::IndexId(&index, id))
            .body(json!({ "product": product, "quantity": 2 }))
            .refresh(Refresh::WaitFor)
            .send()
            .await
            .expect("index request");
        assert!(
            response.status_code().is_success(),
            "index: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let response = client
        .search(SearchParts::Index(&[&index]))
        .body(json!({ "query": { "match": { "product": "shoes" } } }))
        .send()
        .await
        .expect("search request");
    assert!(response.status_code().is_success());
    let body: serde_json::Value = response.json().await.expect("search body");
    let hits = body["hits"]["hits"].as_array().expect("hits");
    assert_eq!(hits.len(), 1, "{body}");
    assert_eq!(hits[0]["_id"], "1");
    assert_eq!(hits[0]["_source"]["product"], "red running shoes");

    let deleted = client
        .indices()
        .delete(IndicesDeleteParts::Index(&[&index]))
        .send()
        .await
        .expect("delete index");
    assert!(deleted.status_code().is_success());
}
