//! Real requests that prove a server works: Kafka metadata, a CQL query on
//! `system.local`, `GET /_cluster/health`, Prometheus' readiness. A listening port is not
//! enough: Cassandra opens 9042 before it can answer, OpenSearch answers 503 until its
//! cluster has formed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use scylla::client::session_builder::SessionBuilder;

use crate::layout::Layout;
use crate::servers::ServerKind;

/// The local OpenSearch's cluster name, checked so that a foreign server on :9200 is not
/// mistaken for ours.
pub const OPENSEARCH_CLUSTER: &str = "salesflow-local";

/// Asks the server its real question; returns a line naming its version.
pub async fn probe_with(layout: &Layout, kind: ServerKind, timeout: Duration) -> Result<String> {
    let answer = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        match kind {
            ServerKind::Kafka => kafka(layout, timeout).await,
            ServerKind::Cassandra => cassandra(timeout).await,
            ServerKind::Opensearch => opensearch(timeout).await,
            ServerKind::Prometheus => prometheus(timeout).await,
        }
    })
    .await;
    answer.unwrap_or_else(|_| bail!("no answer within {} s", timeout.as_secs()))
}

async fn kafka(layout: &Layout, timeout: Duration) -> Result<String> {
    let address = ServerKind::Kafka.address();
    let metadata = tokio::task::spawn_blocking(move || {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &address)
            .set("socket.connection.setup.timeout.ms", "2000")
            .create()
            .context("creating a Kafka client")?;
        producer
            .client()
            .fetch_metadata(None, timeout)
            .context("Kafka metadata request")
    })
    .await??;
    if metadata.brokers().is_empty() {
        bail!("Kafka answered metadata without brokers");
    }
    let topics = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .count();
    // The broker does not state its version on the wire to librdkafka's metadata call;
    // the jar that runs it does.
    let version = kafka_version(layout).unwrap_or_else(|| "?".into());
    Ok(format!(
        "Kafka {version} (KRaft), {} broker(s), {topics} topic(s)",
        metadata.brokers().len()
    ))
}

fn kafka_version(layout: &Layout) -> Option<String> {
    let cp = std::fs::read_to_string(layout.classpath_file(ServerKind::Kafka)).ok()?;
    let jar = cp.split(':').find(|j| j.contains("/kafka_2.13-"))?;
    let name = jar.rsplit('/').next()?;
    Some(
        name.strip_prefix("kafka_2.13-")?
            .strip_suffix(".jar")?
            .to_owned(),
    )
}

async fn cassandra(timeout: Duration) -> Result<String> {
    let session = SessionBuilder::new()
        .known_node(ServerKind::Cassandra.address())
        .connection_timeout(timeout)
        .build()
        .await
        .context("CQL connection")?;
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .context("CQL query on system.local")?
        .into_rows_result()
        .context("CQL query on system.local")?;
    let (version,): (String,) = rows.single_row().context("reading system.local")?;
    Ok(format!("Cassandra {version}"))
}

fn http(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("creating an HTTP client")
}

async fn opensearch(timeout: Duration) -> Result<String> {
    let client = http(timeout)?;
    let base = format!("http://{}", ServerKind::Opensearch.address());
    let health: serde_json::Value = client
        .get(format!("{base}/_cluster/health"))
        .send()
        .await?
        .error_for_status()
        .context("GET /_cluster/health")?
        .json()
        .await?;
    let cluster = health["cluster_name"].as_str().unwrap_or_default();
    if cluster != OPENSEARCH_CLUSTER {
        bail!("the server on :9200 is cluster {cluster:?}, not the local stack's");
    }
    let status = health["status"].as_str().unwrap_or("unknown");
    if status == "red" {
        bail!("cluster health is red");
    }
    let root: serde_json::Value = client.get(&base).send().await?.json().await?;
    let distribution = root["version"]["distribution"]
        .as_str()
        .unwrap_or("elasticsearch");
    let number = root["version"]["number"].as_str().unwrap_or("?");
    Ok(format!("{distribution} {number}, cluster {status}"))
}

async fn prometheus(timeout: Duration) -> Result<String> {
    let client = http(timeout)?;
    let base = format!("http://{}", ServerKind::Prometheus.address());
    client
        .get(format!("{base}/-/ready"))
        .send()
        .await?
        .error_for_status()
        .context("GET /-/ready")?;
    let info: serde_json::Value = client
        .get(format!("{base}/api/v1/status/buildinfo"))
        .send()
        .await?
        .json()
        .await?;
    Ok(format!(
        "Prometheus {}",
        info["data"]["version"].as_str().unwrap_or("?")
    ))
}

/// Asks Prometheus to re-read its configuration and rules.
pub async fn reload_prometheus() -> Result<()> {
    let client = http(Duration::from_secs(10))?;
    client
        .post(format!(
            "http://{}/-/reload",
            ServerKind::Prometheus.address()
        ))
        .send()
        .await?
        .error_for_status()
        .context("POST /-/reload (is monitoring/prometheus.yml valid? promtool check config)")?;
    Ok(())
}
