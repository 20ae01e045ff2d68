//! Applies `schemas/`: Kafka topics, CQL keyspaces and tables, Elasticsearch index
//! templates. Every step is idempotent: topics that exist are left alone (or grown to the
//! declared partition count), CQL uses `IF NOT EXISTS`, templates are put as written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use scylla::client::session_builder::SessionBuilder;
use serde::Deserialize;

use crate::layout::Layout;
use crate::servers::ServerKind;

pub async fn apply_all(layout: &Layout, kinds: &[ServerKind]) -> Result<()> {
    let dir = layout.schemas();
    if kinds.contains(&ServerKind::Kafka) {
        topics(&dir.join("kafka/topics.toml"))
            .await
            .context("applying schemas/kafka/topics.toml")?;
    }
    if kinds.contains(&ServerKind::Cassandra) {
        cql(&dir.join("cql"))
            .await
            .context("applying schemas/cql")?;
    }
    if kinds.contains(&ServerKind::Opensearch) {
        index_templates(&dir.join("elasticsearch/index-templates"))
            .await
            .context("applying schemas/elasticsearch/index-templates")?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    topic: Vec<TopicSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicSpec {
    name: String,
    partitions: i32,
    #[serde(default = "one")]
    replication_factor: i32,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

fn one() -> i32 {
    1
}

async fn topics(file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec: TopicsFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", ServerKind::Kafka.address())
        .create()
        .context("creating a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));

    let new_topics: Vec<NewTopic<'_>> = spec
        .topic
        .iter()
        .map(|t| {
            t.config.iter().fold(
                NewTopic::new(
                    &t.name,
                    t.partitions,
                    TopicReplication::Fixed(t.replication_factor),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => println!("kafka: created topic {name}"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }

    // A topic declared with more partitions than it has grows; one with more than
    // declared is reported (partitions cannot shrink, and keys would move).
    let metadata = tokio::task::block_in_place(|| {
        admin.inner().fetch_metadata(None, Duration::from_secs(10))
    })?;
    let mut grow = Vec::new();
    for declared in &spec.topic {
        let Some(actual) = metadata.topics().iter().find(|t| t.name() == declared.name) else {
            bail!("topic {} does not show up in the metadata", declared.name);
        };
        let have = i32::try_from(actual.partitions().len())?;
        if have < declared.partitions {
            grow.push(NewPartitions::new(
                &declared.name,
                usize::try_from(declared.partitions)?,
            ));
        } else if have > declared.partitions {
            eprintln!(
                "kafka: topic {} has {have} partitions, more than the {} declared; left as is",
                declared.name, declared.partitions
            );
        }
    }
    if !grow.is_empty() {
        for result in admin.create_partitions(&grow, &options).await? {
            match result {
                Ok(name) => println!("kafka: grew the partitions of {name}"),
                Err((name, code)) => bail!("growing topic {name}: {code}"),
            }
        }
    }
    println!("kafka: {} topic(s) in place", spec.topic.len());
    Ok(())
}

/// Splits a CQL file into statements: `--` and `//` comments dropped, `;` ends one.
/// Our schema files hold no string literal with a `;` or a comment marker in it.
pub fn cql_statements(text: &str) -> Vec<String> {
    let without_comments: String = text
        .lines()
        .map(|line| {
            let cut = [line.find("--"), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

async fn cql(dir: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cql"))
        .collect();
    files.sort();
    let session = SessionBuilder::new()
        .known_node(ServerKind::Cassandra.address())
        .build()
        .await
        .context("connecting to Cassandra")?;
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for statement in cql_statements(&text) {
            session
                .query_unpaged(statement.as_str(), &[])
                .await
                .with_context(|| format!("{}: {statement}", file.display()))?;
            count += 1;
        }
    }
    println!(
        "cassandra: {count} statement(s) from {} file(s) applied",
        files.len()
    );
    Ok(())
}

async fn index_templates(dir: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for file in &files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("template file name")?;
        let body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)
            .with_context(|| format!("parsing {}", file.display()))?;
        let response = client
            .put(format!(
                "http://{}/_index_template/{name}",
                ServerKind::Opensearch.address()
            ))
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            bail!(
                "PUT _index_template/{name} ({}): {status} {}",
                file.display(),
                response.text().await.unwrap_or_default()
            );
        }
        existing_indices(&client, name, &body).await?;
    }
    println!("opensearch: {} index template(s) in place", files.len());
    Ok(())
}

/// A template shapes only the indices created after it: fields it adds are put into the
/// mappings of the indices that already match it, so that documents carrying them are
/// not refused by the strict mapping after an upgrade (their older documents lack the
/// fields until `salesflow replay` rebuilds them). Changing a field's type is not
/// possible in place; Elasticsearch refuses it, and so does this step.
async fn existing_indices(
    client: &reqwest::Client,
    name: &str,
    template: &serde_json::Value,
) -> Result<()> {
    let Some(properties) = template.pointer("/template/mappings/properties") else {
        return Ok(());
    };
    let patterns: Vec<&str> = template["index_patterns"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    for pattern in patterns {
        let response = client
            .put(format!(
                "http://{}/{pattern}/_mapping?allow_no_indices=true&expand_wildcards=open",
                ServerKind::Opensearch.address()
            ))
            .json(&serde_json::json!({ "properties": properties }))
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            bail!(
                "template {name}: adding its fields to the existing indices {pattern}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cql_statements;

    #[test]
    fn splits_statements_and_drops_comments() {
        let text = "-- a keyspace\nCREATE KEYSPACE IF NOT EXISTS k WITH x = 1; // trailing\n\
                    CREATE TABLE IF NOT EXISTS k.t (\n  a int PRIMARY KEY -- key\n);\n\n";
        assert_eq!(
            cql_statements(text),
            vec![
                "CREATE KEYSPACE IF NOT EXISTS k WITH x = 1",
                "CREATE TABLE IF NOT EXISTS k.t ( a int PRIMARY KEY )"
            ]
        );
    }
}
