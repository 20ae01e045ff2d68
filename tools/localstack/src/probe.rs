//! Real requests that prove a server works: Kafka metadata, a CQL query on
//! `system.local`, `GET /_cluster/health`, Prometheus' readiness. A listening port is not
//! enough: Cassandra opens 9042 before it can answer, OpenSearch answers 503 until its
//! cluster has formed.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use scylla::client::session_builder::SessionBuilder;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::policies::load_balancing::{NodeIdentifier, SingleTargetLoadBalancingPolicy};

use crate::layout::Layout;
use crate::node::{Node, Profile};
use crate::servers::ServerKind;

/// The local OpenSearch's cluster name, checked so that a foreign server on :9200 is not
/// mistaken for ours.
pub const OPENSEARCH_CLUSTER: &str = "salesflow-local";

/// Asks the server its real question; returns a line naming its version.
/// Asks the node a real request and says what it answered (its version, and what it sees
/// of its cluster). With `whole`, the node is healthy only once it sees every node of its
/// profile.
pub async fn probe_with(
    layout: &Layout,
    node: Node,
    timeout: Duration,
    whole: bool,
) -> Result<String> {
    let address = address(node);
    let expected = if whole {
        node.profile.count(node.kind)
    } else {
        1
    };
    let answer = tokio::time::timeout(timeout + Duration::from_secs(1), async {
        match node.kind {
            ServerKind::Kafka => kafka(layout, address, timeout, expected).await,
            ServerKind::Cassandra => cassandra(address, timeout, expected).await,
            ServerKind::Opensearch => opensearch(address, timeout, expected).await,
            ServerKind::Prometheus => prometheus(address, timeout).await,
        }
    })
    .await;
    answer.unwrap_or_else(|_| bail!("no answer within {} s", timeout.as_secs()))
}

/// The node's own address; on one node, the one the environment may name instead (the
/// docker-compose stack's containers).
fn address(node: Node) -> String {
    match node.profile {
        Profile::Single => node.kind.addresses(Profile::Single).swap_remove(0),
        Profile::Cluster => node.client_address(),
    }
}

async fn kafka(
    layout: &Layout,
    address: String,
    timeout: Duration,
    expected: u8,
) -> Result<String> {
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
    if metadata.brokers().len() < usize::from(expected) {
        bail!(
            "Kafka's metadata lists {} of the {expected} brokers",
            metadata.brokers().len()
        );
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

async fn cassandra(address: String, timeout: Duration, expected: u8) -> Result<String> {
    let target: std::net::SocketAddr = tokio::net::lookup_host(&address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to nothing"))?;
    // Every query goes to this node: system tables are each node's own.
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(SingleTargetLoadBalancingPolicy::new(
            NodeIdentifier::NodeAddress(target),
            None,
        ))
        .build();
    let session = SessionBuilder::new()
        .known_node_addr(target)
        .connection_timeout(timeout)
        .default_execution_profile_handle(profile.into_handle())
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
    let peers = session
        .query_unpaged("SELECT peer FROM system.peers", &[])
        .await
        .context("CQL query on system.peers")?
        .into_rows_result()
        .context("CQL query on system.peers")?
        .rows_num();
    if peers + 1 < usize::from(expected) {
        bail!(
            "this node knows {} of the cluster's {expected} nodes",
            peers + 1
        );
    }
    Ok(if peers == 0 {
        format!("Cassandra {version}")
    } else {
        format!("Cassandra {version}, {} nodes in its ring", peers + 1)
    })
}

fn http(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("creating an HTTP client")
}

async fn opensearch(address: String, timeout: Duration, expected: u8) -> Result<String> {
    let client = http(timeout)?;
    let base = format!("http://{address}");
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
        bail!("the server on {address} is cluster {cluster:?}, not the local stack's");
    }
    let status = health["status"].as_str().unwrap_or("unknown");
    if status == "red" {
        bail!("cluster health is red");
    }
    let nodes = health["number_of_nodes"].as_u64().unwrap_or(0);
    if nodes < u64::from(expected) {
        bail!("the cluster has {nodes} of its {expected} nodes");
    }
    let root: serde_json::Value = client.get(&base).send().await?.json().await?;
    let distribution = root["version"]["distribution"]
        .as_str()
        .unwrap_or("elasticsearch");
    let number = root["version"]["number"].as_str().unwrap_or("?");
    Ok(if nodes > 1 {
        format!("{distribution} {number}, cluster {status}, {nodes} nodes")
    } else {
        format!("{distribution} {number}, cluster {status}")
    })
}

async fn prometheus(address: String, timeout: Duration) -> Result<String> {
    let client = http(timeout)?;
    let base = format!("http://{address}");
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
            ServerKind::Prometheus.addresses(Profile::Single)[0]
        ))
        .send()
        .await?
        .error_for_status()
        .context("POST /-/reload (is monitoring/prometheus.yml valid? promtool check config)")?;
    Ok(())
}
