//! What the integration tests share: the local stack's real OpenSearch
//! (`scripts/stack up opensearch`; `SALESFLOW_ELASTICSEARCH_URL`, by default
//! `http://127.0.0.1:9200`), a client of it, a name no other run uses, a document event
//! as the projections send it, and the sink built as the host builds it.

// Each test binary uses some of these.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use salesflow_plugin_api::prometheus_client::registry::Registry;
use salesflow_plugin_api::{
    BuildContext, CancellationToken, Component, Event, Healthcheck, Plugin, Settings, SinkFactory,
    event::headers, toml,
};
use salesflow_plugin_elasticsearch::{Client, ElasticsearchSettings, ElasticsearchSinkPlugin};

/// The real node's URL.
pub fn real_node() -> String {
    std::env::var("SALESFLOW_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// A client of the real node, built from `url` and `extra` settings lines.
pub fn real_client(extra: &str) -> Client {
    let settings = ElasticsearchSettings::from_table(
        &toml::from_str(&format!("url = \"{}\"\n{extra}", real_node())).unwrap(),
    )
    .unwrap();
    Client::new(&settings).unwrap()
}

/// `salesflow-{test}-test-{pid}-{nanos}`: an alias no other run of any test uses.
pub fn unique_alias(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("salesflow-{test}-test-{}-{nanos}", std::process::id())
}

/// A document event as the projections send it: `source` for `id` in `alias`, version 1.
pub fn doc(alias: &str, id: &str, source: String) -> Event {
    let mut event = Event::new(source);
    event.headers = vec![
        (headers::DOC_INDEX.into(), alias.to_owned().into()),
        (headers::DOC_ID.into(), id.to_owned().into()),
        (headers::DOC_VERSION.into(), "1".to_owned().into()),
    ];
    event
}

/// The sink built from `settings` as the host builds it, and the readiness checks it
/// registered.
pub async fn build_sink(settings: &str) -> (Arc<dyn SinkFactory>, Vec<Healthcheck>) {
    let settings: toml::Table = toml::from_str(settings).unwrap();
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
        .expect("the sink builds")
    else {
        panic!("not a sink");
    };
    (factory, checks)
}
