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
use crate::node::Profile;
use crate::servers::ServerKind;

/// The replication of one environment: `schemas/environments/NAME.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(skip)]
    pub name: String,
    pub kafka: KafkaReplication,
    pub cassandra: CassandraReplication,
    pub elasticsearch: ElasticsearchReplication,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaReplication {
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraReplication {
    /// `class` and its options, as in CQL's `WITH replication = {...}`.
    pub replication: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchReplication {
    pub number_of_replicas: u32,
}

impl Environment {
    pub fn load(layout: &Layout, name: &str) -> Result<Self> {
        let dir = layout.schemas().join("environments");
        let file = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&file).with_context(|| {
            let known: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
                .collect();
            format!(
                "environment {name:?}: reading {} (known: {})",
                file.display(),
                known.join(", ")
            )
        })?;
        Self::parse(name, &text).with_context(|| format!("parsing {}", file.display()))
    }

    pub fn parse(name: &str, text: &str) -> Result<Self> {
        let mut environment: Self = toml::from_str(text)?;
        name.clone_into(&mut environment.name);
        let kafka = &environment.kafka;
        if kafka.replication_factor < 1
            || kafka.min_insync_replicas < 1
            || kafka.min_insync_replicas > kafka.replication_factor
        {
            bail!(
                "kafka: min_insync_replicas ({}) must be between 1 and replication_factor ({})",
                kafka.min_insync_replicas,
                kafka.replication_factor
            );
        }
        let class = environment.cassandra.replication.get("class");
        if !class.is_some_and(toml::Value::is_str) {
            bail!("cassandra.replication: needs a class (SimpleStrategy, NetworkTopologyStrategy)");
        }
        Ok(environment)
    }

    /// The Cassandra replication as a CQL map literal.
    pub fn cql_replication(&self) -> String {
        let entries: Vec<String> = self
            .cassandra
            .replication
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!(
                    "'{}': '{}'",
                    key.replace('\'', "''"),
                    value.replace('\'', "''")
                )
            })
            .collect();
        format!("{{{}}}", entries.join(", "))
    }
}

pub async fn apply_all(
    layout: &Layout,
    profile: Profile,
    kinds: &[ServerKind],
    environment: &Environment,
) -> Result<()> {
    let dir = layout.schemas();
    println!(
        "schemas: the replication of environment {:?}",
        environment.name
    );
    if kinds.contains(&ServerKind::Kafka) {
        topics(
            &dir.join("kafka/topics.toml"),
            &ServerKind::Kafka.addresses(profile),
            &environment.kafka,
        )
        .await
        .context("applying schemas/kafka/topics.toml")?;
    }
    if kinds.contains(&ServerKind::Cassandra) {
        cql(
            &dir.join("cql"),
            &ServerKind::Cassandra.addresses(profile),
            environment,
        )
        .await
        .context("applying schemas/cql")?;
    }
    if kinds.contains(&ServerKind::Opensearch) {
        index_templates(
            &dir.join("elasticsearch/index-templates"),
            &ServerKind::Opensearch.addresses(profile)[0],
            &environment.elasticsearch,
        )
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
    /// Default: the environment's.
    #[serde(default)]
    replication_factor: Option<i32>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

async fn topics(file: &Path, bootstrap: &[String], replication: &KafkaReplication) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let spec: TopicsFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap.join(","))
        .create()
        .context("creating a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));

    let min_isr = replication.min_insync_replicas.to_string();
    let new_topics: Vec<NewTopic<'_>> = spec
        .topic
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(
                    t.replication_factor
                        .unwrap_or(replication.replication_factor),
                ),
            );
            let topic = if t.config.contains_key("min.insync.replicas") {
                topic
            } else {
                topic.set("min.insync.replicas", &min_isr)
            };
            t.config.iter().fold(topic, |topic, (k, v)| topic.set(k, v))
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
    // A topic just created reaches the broker's metadata a moment after CreateTopics
    // answers (KRaft hands it on asynchronously): ask again until every one shows up.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metadata = loop {
        let metadata = tokio::task::block_in_place(|| {
            admin.inner().fetch_metadata(None, Duration::from_secs(10))
        })?;
        let missing = spec.topic.iter().find(|declared| {
            !metadata
                .topics()
                .iter()
                .any(|t| t.name() == declared.name && !t.partitions().is_empty())
        });
        match missing {
            None => break metadata,
            Some(declared) if std::time::Instant::now() >= deadline => bail!(
                "topic {} does not show up in the metadata 30 s after it was created",
                declared.name
            ),
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut grow = Vec::new();
    for declared in &spec.topic {
        let Some(actual) = metadata.topics().iter().find(|t| t.name() == declared.name) else {
            bail!("topic {} does not show up in the metadata", declared.name);
        };
        let have = i32::try_from(actual.partitions().len())?;
        let replicas = actual
            .partitions()
            .first()
            .map_or(0, |p| p.replicas().len());
        let wanted = declared
            .replication_factor
            .unwrap_or(replication.replication_factor);
        if i32::try_from(replicas)? != wanted {
            eprintln!(
                "kafka: topic {} has {replicas} replica(s) per partition, the environment \
                 asks for {wanted}; left as is (reassign its partitions to change it)",
                declared.name
            );
        }
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

async fn cql(dir: &Path, nodes: &[String], environment: &Environment) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cql"))
        .collect();
    files.sort();
    let session = SessionBuilder::new()
        .known_nodes(nodes)
        .build()
        .await
        .context("connecting to Cassandra")?;
    let replication = environment.cql_replication();
    let mut count = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        for statement in cql_statements(&text) {
            let statement = match keyspace_created(&statement) {
                Some(keyspace) => {
                    let statement = with_replication(&statement, &replication)
                        .with_context(|| format!("{}: {statement}", file.display()))?;
                    align_keyspace(&session, &keyspace, &replication).await?;
                    statement
                }
                None => statement,
            };
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

/// The keyspace a `CREATE KEYSPACE` statement creates.
fn keyspace_created(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    if !(words.len() > 2
        && words[0].eq_ignore_ascii_case("create")
        && words[1].eq_ignore_ascii_case("keyspace"))
    {
        return None;
    }
    let rest = &words[2..];
    let name = if rest.len() > 3
        && rest[0].eq_ignore_ascii_case("if")
        && rest[1].eq_ignore_ascii_case("not")
        && rest[2].eq_ignore_ascii_case("exists")
    {
        rest[3]
    } else {
        rest[0]
    };
    Some(name.trim_matches('"').to_owned())
}

/// The statement with its `replication = {...}` map replaced.
fn with_replication(statement: &str, replication: &str) -> Result<String> {
    let lower = statement.to_ascii_lowercase();
    let at = lower
        .find("replication")
        .context("a CREATE KEYSPACE without a replication")?;
    let open = at
        + statement[at..]
            .find('{')
            .context("replication without a map")?;
    let close = open
        + statement[open..]
            .find('}')
            .context("an unclosed replication map")?;
    Ok(format!(
        "{}{replication}{}",
        &statement[..open],
        &statement[close + 1..]
    ))
}

/// A keyspace that exists with another replication is altered to the environment's.
async fn align_keyspace(
    session: &scylla::client::session::Session,
    keyspace: &str,
    replication: &str,
) -> Result<()> {
    let rows = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .context("reading the keyspace's replication")?
        .into_rows_result()?;
    let Some((current,)) = rows.maybe_first_row::<(BTreeMap<String, String>,)>()? else {
        return Ok(());
    };
    let wanted: BTreeMap<String, String> = parse_cql_map(replication);
    let short = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| {
                let v = v.trim_start_matches("org.apache.cassandra.locator.");
                (k.clone(), v.to_owned())
            })
            .collect()
    };
    if short(&current) == short(&wanted) {
        return Ok(());
    }
    session
        .query_unpaged(
            format!("ALTER KEYSPACE {keyspace} WITH replication = {replication}"),
            &[],
        )
        .await
        .with_context(|| format!("altering the replication of keyspace {keyspace}"))?;
    eprintln!(
        "cassandra: keyspace {keyspace} had replication {current:?}; altered to {replication}. \
         Existing data reaches its new replicas by a repair (nodetool repair -full {keyspace})"
    );
    Ok(())
}

/// `{'a': 'b', 'c': '3'}` as a map (the form `cql_replication` writes).
fn parse_cql_map(text: &str) -> BTreeMap<String, String> {
    text.trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|entry| {
            let (k, v) = entry.split_once(':')?;
            Some((
                k.trim().trim_matches('\'').to_owned(),
                v.trim().trim_matches('\'').to_owned(),
            ))
        })
        .collect()
}

async fn index_templates(
    dir: &Path,
    address: &str,
    replication: &ElasticsearchReplication,
) -> Result<()> {
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
        let mut body: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)
            .with_context(|| format!("parsing {}", file.display()))?;
        if let Some(settings) = body
            .pointer_mut("/template/settings")
            .and_then(serde_json::Value::as_object_mut)
        {
            settings.insert(
                "number_of_replicas".into(),
                replication.number_of_replicas.into(),
            );
        }
        let response = client
            .put(format!("http://{address}/_index_template/{name}"))
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
        existing_indices(&client, address, name, &body, replication).await?;
    }
    println!("opensearch: {} index template(s) in place", files.len());
    Ok(())
}

/// The refresh interval a composable template sets, written any of the three ways index
/// settings can be; null when it sets none (OpenSearch's default).
fn refresh_interval(template: &serde_json::Value) -> serde_json::Value {
    template
        .pointer("/template/settings")
        .and_then(|s| {
            s.get("refresh_interval")
                .or_else(|| s.pointer("/index/refresh_interval"))
                .or_else(|| s.get("index.refresh_interval"))
        })
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}
/// A template shapes only the indices created after it: fields it adds are put into the
/// mappings of the indices that already match it, so that documents carrying them are
/// not refused by the strict mapping after an upgrade (their older documents lack the
/// fields until `salesflow replay` rebuilds them). A field whose kind changed (`nested`
/// to a disabled `object`, `text` to `keyword`) cannot be changed in place: the index
/// keeps its old mapping of that field, which still takes the same documents, and the
/// step says which index and field until `salesflow replay` moves the read model to a
/// new index made by the template.
async fn existing_indices(
    client: &reqwest::Client,
    address: &str,
    name: &str,
    template: &serde_json::Value,
    replication: &ElasticsearchReplication,
) -> Result<()> {
    let patterns: Vec<&str> = template["index_patterns"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    // Replicas and the refresh interval are dynamic settings: existing indices take the
    // environment's replicas and the template's interval. A template without one resets
    // it to OpenSearch's default (null), under which an index nobody searches skips its
    // scheduled refreshes; indices made by an older template kept an explicit "1s". An
    // interval set on the indices by hand does not last: it belongs in the template.
    let refresh_interval = refresh_interval(template);
    for pattern in &patterns {
        let response = client
            .put(format!(
                "http://{address}/{pattern}/_settings?allow_no_indices=true&expand_wildcards=open"
            ))
            .json(&serde_json::json!({
                "index": {
                    "number_of_replicas": replication.number_of_replicas,
                    "refresh_interval": refresh_interval,
                }
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            bail!(
                "template {name}: setting the replicas and refresh interval of the existing indices {pattern}: {status} {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    let Some(properties) = template
        .pointer("/template/mappings/properties")
        .and_then(serde_json::Value::as_object)
    else {
        return Ok(());
    };
    for pattern in patterns {
        let response = client
            .get(format!(
                "http://{address}/{pattern}/_mapping?allow_no_indices=true&expand_wildcards=open"
            ))
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "template {name}: reading the mappings of the indices {pattern}: {status} {text}"
            );
        }
        let indices: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("template {name}: the mappings of {pattern}: {text}"))?;
        for (index, mapping) in &indices {
            let empty = serde_json::Map::new();
            let existing = mapping
                .pointer("/mappings/properties")
                .and_then(serde_json::Value::as_object)
                .unwrap_or(&empty);
            let mut kept = Vec::new();
            let merge = mergeable(properties, existing, "", &mut kept);
            for field in &kept {
                println!(
                    "opensearch: {index} keeps its mapping of `{field}`, which the template {name} \
                     changed: `salesflow replay` rebuilds the read models into new indices with the new mapping"
                );
            }
            let response = client
                .put(format!("http://{address}/{index}/_mapping"))
                .json(&serde_json::json!({ "properties": merge }))
                .send()
                .await?;
            if !response.status().is_success() {
                let status = response.status();
                bail!(
                    "template {name}: adding its fields to the existing index {index}: {status} {}",
                    response.text().await.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// What a mapped field is, as far as changing it in place goes: its type (`object` when
/// it has only properties) and whether it is indexed at all.
fn field_kind(definition: &serde_json::Value) -> (&str, bool) {
    let kind = definition["type"].as_str().unwrap_or("object");
    let enabled = definition["enabled"].as_bool().unwrap_or(true);
    (kind, enabled)
}

/// The template's properties an existing index can take: every field it lacks, and every
/// field it maps the same way (whose sub-fields are compared in turn). A field mapped the
/// other way is left out and its dotted path pushed on `kept`.
fn mergeable(
    template: &serde_json::Map<String, serde_json::Value>,
    existing: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
    kept: &mut Vec<String>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (field, wanted) in template {
        let path = format!("{prefix}{field}");
        let Some(current) = existing.get(field) else {
            out.insert(field.clone(), wanted.clone());
            continue;
        };
        if field_kind(wanted) != field_kind(current) {
            kept.push(path);
            continue;
        }
        let mut wanted = wanted.clone();
        if let (Some(sub), Some(current_sub)) = (
            wanted["properties"].as_object(),
            current["properties"].as_object(),
        ) {
            let sub = mergeable(sub, current_sub, &format!("{path}."), kept);
            wanted["properties"] = serde_json::Value::Object(sub);
        }
        out.insert(field.clone(), wanted);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_templates_leave_the_refresh_interval_to_opensearch() {
        // An explicit interval, even OpenSearch's own 1s, keeps an index nobody searches
        // refreshing every second (see the templates' _meta).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/elasticsearch/index-templates");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let template: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                refresh_interval(&template),
                serde_json::Value::Null,
                "{}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 2, "templates in {}", dir.display());
        for settings in [
            serde_json::json!({ "refresh_interval": "5s" }),
            serde_json::json!({ "index": { "refresh_interval": "5s" } }),
            serde_json::json!({ "index.refresh_interval": "5s" }),
        ] {
            let template = serde_json::json!({ "template": { "settings": settings } });
            assert_eq!(refresh_interval(&template), "5s", "{template}");
        }
    }

    #[test]
    fn every_environment_of_the_checkout_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/environments");
        for name in ["local", "cluster"] {
            let text = std::fs::read_to_string(dir.join(format!("{name}.toml"))).unwrap();
            Environment::parse(name, &text).unwrap();
        }
    }

    #[test]
    fn the_keyspace_takes_the_environments_replication() {
        let text = "[kafka]\nreplication_factor = 3\nmin_insync_replicas = 2\n\
                    [cassandra]\nreplication = { class = \"NetworkTopologyStrategy\", dc1 = 3, dc2 = 3 }\n\
                    [elasticsearch]\nnumber_of_replicas = 1\n";
        let environment = Environment::parse("prod", text).unwrap();
        let replication = environment.cql_replication();
        assert_eq!(
            replication,
            "{'class': 'NetworkTopologyStrategy', 'dc1': '3', 'dc2': '3'}"
        );
        let statement = "CREATE KEYSPACE IF NOT EXISTS salesflow WITH replication = \
                         {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = true";
        assert_eq!(keyspace_created(statement).as_deref(), Some("salesflow"));
        assert_eq!(
            with_replication(statement, &replication).unwrap(),
            "CREATE KEYSPACE IF NOT EXISTS salesflow WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'dc1': '3', 'dc2': '3'} AND durable_writes = true"
        );
        assert_eq!(
            keyspace_created("CREATE TABLE IF NOT EXISTS k.t (a int)"),
            None
        );
        assert_eq!(parse_cql_map(&replication)["dc2"], "3");
    }

    #[test]
    fn an_environment_with_more_in_sync_replicas_than_replicas_is_refused() {
        let text = "[kafka]\nreplication_factor = 1\nmin_insync_replicas = 2\n\
                    [cassandra]\nreplication = { class = \"SimpleStrategy\", replication_factor = 1 }\n\
                    [elasticsearch]\nnumber_of_replicas = 0\n";
        let error = Environment::parse("bad", text).unwrap_err().to_string();
        assert!(error.contains("min_insync_replicas (2)"), "{error}");
    }

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

    #[test]
    fn an_existing_index_takes_new_fields_and_keeps_changed_ones() {
        let template = serde_json::json!({
            "cart_id": { "type": "keyword" },
            "subtotal_units": { "type": "unsigned_long" },
            "items": { "type": "object", "enabled": false },
            "address": { "properties": {
                "city": { "type": "keyword" },
                "zip": { "type": "keyword" }
            } }
        });
        let existing = serde_json::json!({
            "cart_id": { "type": "keyword" },
            "items": { "type": "nested", "properties": { "order_id": { "type": "keyword" } } },
            "address": { "properties": { "city": { "type": "text" } } }
        });
        let mut kept = Vec::new();
        let merge = mergeable(
            template.as_object().unwrap(),
            existing.as_object().unwrap(),
            "",
            &mut kept,
        );
        kept.sort();
        assert_eq!(kept, ["address.city", "items"]);
        assert_eq!(
            serde_json::Value::Object(merge),
            serde_json::json!({
                "cart_id": { "type": "keyword" },
                "subtotal_units": { "type": "unsigned_long" },
                "address": { "properties": { "zip": { "type": "keyword" } } }
            })
        );
    }
}
