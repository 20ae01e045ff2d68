//! `salesflow dlq list` and `salesflow dlq replay`: the dead-letter topics, read and sent
//! back. A dead letter carries its reason and where it came from (see
//! `Event::dead_letter`); replay sends it to its source topic — the record itself when a
//! stage refused it, or, when a sink gave up on what a stage made of it
//! (`salesflow.payload = transformed`), the original record re-read from its source
//! partition and offset. Replaying is idempotent because everything downstream is: the
//! domain counts an order id once, the read models take a cart version once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use salesflow_plugin_api::event::headers;
use salesflow_plugin_api::toml;

use crate::config::KafkaConnection;

const TRANSFORMED: &str = headers::TRANSFORMED;

/// A record as read from a topic, byte for byte: key, payload and headers exactly as
/// written (binary included; headers in order, a name repeated as often as it was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    /// The first value of a header, as text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// `partition:offset`, as `--offset` takes it.
    pub fn id(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    fn from_message(m: &impl Message) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            headers,
            payload: m.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Bytes in JSON: the text when they are UTF-8, else `{"base64": "..."}`.
fn bytes_json(bytes: Option<&[u8]>) -> serde_json::Value {
    use base64::Engine as _;
    match bytes {
        None => serde_json::Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => serde_json::json!({
                "base64": base64::engine::general_purpose::STANDARD.encode(b)
            }),
        },
    }
}

impl serde::Serialize for DeadLetter {
    /// `headers` maps each name to its first value (what `dlq list` shows); `header_list`
    /// keeps every header in order.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut first = serde_json::Map::new();
        for (name, value) in &self.headers {
            first
                .entry(name.clone())
                .or_insert_with(|| bytes_json(value.as_deref()));
        }
        let list: Vec<serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| serde_json::json!([n, bytes_json(v.as_deref())]))
            .collect();
        serde_json::json!({
            "partition": self.partition,
            "offset": self.offset,
            "key": bytes_json(self.key.as_deref()),
            "headers": first,
            "header_list": list,
            "payload": bytes_json(self.payload.as_deref()),
        })
        .serialize(serializer)
    }
}

/// The Kafka client settings of the configuration's `[kafka]` section, read as the kafka
/// source and sink read it.
pub fn client_config(table: &toml::Table) -> Result<ClientConfig> {
    let kafka = table
        .get("kafka")
        .and_then(toml::Value::as_table)
        .context("the configuration has no [kafka] section")?;
    let connection: KafkaConnection = toml::Value::Table(kafka.clone())
        .try_into()
        .map_err(|e| anyhow::anyhow!("[kafka]: {e}"))?;
    Ok(connection.client_config())
}

/// Every record of `topic`, up to its end when called.
pub fn read(config: &ClientConfig, topic: &str) -> Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = config
        .clone()
        .set(
            "group.id",
            format!("salesflow-dlq-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("reading the topic's metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(rdkafka::metadata::MetadataPartition::id)
        })
        .collect();
    if partitions.is_empty() {
        bail!("no topic named {topic}");
    }
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .context("reading the topic's offsets")?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    while done.values().any(|d| !d) {
        if std::time::Instant::now() > deadline {
            bail!("reading {topic} took longer than 60 s");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message.context("reading a dead letter")?;
        letters.push(DeadLetter::from_message(&m));
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), true);
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(letters)
}

fn time(ms: Option<&str>) -> String {
    ms.and_then(|v| v.parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".into(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

/// The table `dlq list` prints.
pub fn table(letters: &[DeadLetter]) -> String {
    let mut out = format!(
        "{:<12} {:<20} {:<28} {:<28} REASON\n",
        "ID", "FAILED AT", "SOURCE", "BY"
    );
    for l in letters {
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:<28} {:<28} {}",
            l.id(),
            time(l.header(headers::FAILED_AT)),
            l.header(headers::ORIGIN).unwrap_or("-"),
            l.header(headers::FAILED_BY).unwrap_or("-"),
            l.header(headers::ERROR).unwrap_or("(no reason recorded)")
        );
    }
    let _ = writeln!(out, "{} dead letters", letters.len());
    out
}

/// Parses `--offset` values: `P:O` or `P:FROM-TO`.
pub fn parse_selection(values: &[String]) -> Result<Vec<(i32, i64, i64)>> {
    values
        .iter()
        .map(|v| {
            let bad = || format!("--offset {v:?}: expected PARTITION:OFFSET or PARTITION:FROM-TO");
            let (p, o) = v.split_once(':').with_context(bad)?;
            let p: i32 = p.trim().parse().ok().with_context(bad)?;
            let (from, to) = match o.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok(), b.trim().parse().ok()),
                None => (o.trim().parse().ok(), o.trim().parse().ok()),
            };
            match (from, to) {
                (Some(from), Some(to)) if from <= to && from >= 0 => Ok((p, from, to)),
                _ => bail!(bad()),
            }
        })
        .collect()
}

/// The source record a transformed dead letter came from.
fn original(config: &ClientConfig, topic: &str, partition: i32, offset: i64) -> Result<DeadLetter> {
    let consumer: BaseConsumer = config
        .clone()
        .set(
            "group.id",
            format!("salesflow-dlq-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let m = message?;
            if m.offset() != offset {
                bail!(
                    "{topic}/{partition}@{offset} is gone (retention); the first record left is at {}",
                    m.offset()
                );
            }
            return Ok(DeadLetter::from_message(&m));
        }
    }
    bail!("{topic}/{partition}@{offset} could not be read within 30 s")
}

/// What `replay` did.
pub struct Replayed {
    pub sent: Vec<String>,
    pub problems: Vec<String>,
}

/// Sends the chosen dead letters of `topic` back to their source topics (or `to`).
pub async fn replay(
    config: &ClientConfig,
    topic: &str,
    chosen: &[DeadLetter],
    to: Option<&str>,
    dry_run: bool,
) -> Result<Replayed> {
    let producer: FutureProducer = config
        .clone()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .context("creating a Kafka producer")?;
    let mut done = Replayed {
        sent: Vec::new(),
        problems: Vec::new(),
    };
    // A sink's batch may hold several documents of one source record: it is sent once.
    let mut originals_sent = std::collections::BTreeSet::new();
    for letter in chosen {
        let source_topic = letter.header(headers::SOURCE_TOPIC);
        let Some(target) = to.or(source_topic) else {
            done.problems.push(format!(
                "{}: no source topic recorded; give --to",
                letter.id()
            ));
            continue;
        };
        let record = if letter.header(headers::PAYLOAD) == Some(TRANSFORMED) {
            let position = (
                source_topic,
                letter
                    .header(headers::SOURCE_PARTITION)
                    .and_then(|p| p.parse().ok()),
                letter
                    .header(headers::SOURCE_OFFSET)
                    .and_then(|o| o.parse().ok()),
            );
            let (Some(t), Some(p), Some(o)) = position else {
                done.problems.push(format!(
                    "{}: a sink's dead letter without its source position",
                    letter.id()
                ));
                continue;
            };
            if !originals_sent.insert((t.to_owned(), p, o)) {
                continue;
            }
            match original(config, t, p, o) {
                Ok(original) => original,
                Err(e) => {
                    done.problems.push(format!("{}: {e:#}", letter.id()));
                    continue;
                }
            }
        } else {
            letter.clone()
        };
        let from = format!("{topic}/{}", letter.id());
        let description = format!("{from} -> {target}");
        if dry_run {
            done.sent.push(format!("{description} (dry run)"));
            continue;
        }
        // The record as it was: every header but salesflow's own marks, in order, values
        // byte for byte; then where it was replayed from.
        let mut hs = OwnedHeaders::new_with_capacity(record.headers.len() + 1);
        for (k, v) in &record.headers {
            if !k.starts_with(headers::PREFIX) {
                hs = hs.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
        }
        hs = hs.insert(Header {
            key: headers::REPLAYED_FROM,
            value: Some(from.as_bytes()),
        });
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(target).headers(hs);
        if let Some(payload) = &record.payload {
            out = out.payload(payload.as_slice());
        }
        if let Some(key) = &record.key {
            out = out.key(key.as_slice());
        }
        match producer.send(out, Duration::from_secs(30)).await {
            Ok(_) => done.sent.push(description),
            Err((e, _)) => done.problems.push(format!("{description}: {e}")),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_partition_offset_or_ranges() {
        let s = parse_selection(&["0:5".into(), "2:7-9".into()]).unwrap();
        assert_eq!(s, vec![(0, 5, 5), (2, 7, 9)]);
        for bad in ["5", "a:1", "0:x", "0:9-7", "0:-1"] {
            let e = parse_selection(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("expected PARTITION:OFFSET"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_shows_reason_source_and_time() {
        let hs = [
            (headers::ERROR, "quantity: must be at least 1"),
            (headers::ORIGIN, "orders/3@17"),
            (headers::FAILED_BY, "domain cart stage"),
            (headers::FAILED_AT, "1795651200000"),
        ]
        .map(|(k, v)| (k.to_owned(), Some(v.as_bytes().to_vec())))
        .to_vec();
        let t = table(&[DeadLetter {
            partition: 0,
            offset: 4,
            key: None,
            headers: hs,
            payload: Some(b"{}".to_vec()),
        }]);
        assert!(t.contains("0:4"), "{t}");
        assert!(t.contains("orders/3@17"), "{t}");
        assert!(t.contains("quantity: must be at least 1"), "{t}");
        assert!(t.contains("2026-11-26T00:00:00Z"), "{t}");
        assert!(t.ends_with("1 dead letters\n"), "{t}");
    }

    #[test]
    fn json_shows_text_as_text_and_other_bytes_as_base64_keeping_every_header() {
        let letter = DeadLetter {
            partition: 1,
            offset: 2,
            key: Some(vec![0xff, 0x00]),
            headers: vec![
                ("trace".into(), Some(b"a".to_vec())),
                ("trace".into(), Some(vec![0x80])),
                ("empty".into(), None),
            ],
            payload: Some(b"{}".to_vec()),
        };
        let json = serde_json::to_value(&letter).unwrap();
        assert_eq!(json["key"]["base64"], "/wA=");
        assert_eq!(json["payload"], "{}");
        assert_eq!(json["headers"]["trace"], "a", "the first value");
        assert_eq!(
            json["header_list"],
            serde_json::json!([["trace", "a"], ["trace", { "base64": "gA==" }], ["empty", null]])
        );
    }
}

/// `salesflow dlq`: the command.
pub struct DlqCommand;

#[derive(clap::Parser, Debug)]
#[command(
    name = "salesflow dlq",
    about = "Dead letters: list them with their reasons, or send chosen ones back to their \
             source topic after a fix (idempotent: downstream counts each order once)",
    after_help = "Examples:\n  \
                  salesflow dlq list --topic orders-dlq\n  \
                  salesflow dlq replay --topic orders-dlq --offset 0:17 --offset 2:3-9\n  \
                  salesflow dlq replay --topic cart-events-dlq --all --dry-run"
)]
struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(clap::Subcommand, Debug)]
enum DlqAction {
    /// Every dead letter of a topic: id (partition:offset), when, source, who, reason.
    #[command(after_help = "Examples:\n  \
                            salesflow dlq list                      # the configuration's dead-letter topic\n  \
                            salesflow dlq list --topic cart-events-dlq --json")]
    List {
        /// The dead-letter topic; default: the topic of the configuration's first kafka
        /// sink that reads a named output (`.rejected`, `.failed`, ...).
        #[arg(long)]
        topic: Option<String>,
        /// One JSON object per dead letter, payload included.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their source topic (or --to).
    #[command(after_help = "Examples:\n  \
                            salesflow dlq replay --offset 0:17 --offset 2:3-9\n  \
                            salesflow dlq replay --topic cart-events-dlq --all --dry-run\n  \
                            salesflow dlq replay --all --to orders-retry")]
    Replay {
        /// The dead-letter topic (default as for `list`).
        #[arg(long)]
        topic: Option<String>,
        /// Which: PARTITION:OFFSET or PARTITION:FROM-TO, repeatable.
        #[arg(long = "offset", required_unless_present = "all")]
        offsets: Vec<String>,
        /// Every dead letter of the topic.
        #[arg(long, conflicts_with = "offsets")]
        all: bool,
        /// Another topic to send them to.
        #[arg(long)]
        to: Option<String>,
        /// Show what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The topic of the first kafka sink that reads a named output of another component:
/// the configuration's dead-letter topic.
pub fn default_topic(config: &salesflow_plugin_api::ConfigView) -> Option<String> {
    config.components().find_map(|(_, c)| {
        (c.kind == salesflow_plugin_api::ComponentKind::Sink
            && c.type_name == "kafka"
            && c.inputs.iter().any(|i| i.contains('.')))
        .then(|| c.settings.get("topic")?.as_str().map(str::to_owned))
        .flatten()
    })
}

impl salesflow_plugin_api::Command for DlqCommand {
    fn name(&self) -> &'static str {
        "dlq"
    }

    fn about(&self) -> &'static str {
        "Dead letters: list them with their reasons, or send chosen ones back after a fix"
    }

    fn run(
        &self,
        args: &[String],
        config: Option<&salesflow_plugin_api::ConfigView>,
    ) -> std::process::ExitCode {
        let parsed: DlqArgs = match salesflow_plugin_api::parse_args("salesflow dlq", args) {
            Ok(parsed) => parsed,
            Err(code) => return code,
        };
        let Some(config) = config else {
            eprintln!("salesflow dlq: needs the configuration");
            return std::process::ExitCode::FAILURE;
        };
        match run_command(parsed.action, config) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::FAILURE,
            Err(e) => {
                eprintln!("salesflow dlq: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run_command(action: DlqAction, view: &salesflow_plugin_api::ConfigView) -> Result<bool> {
    let config = client_config(&view.table)?;
    let topic_of = |topic: Option<String>| {
        topic.or_else(|| default_topic(view)).context(
            "no --topic given, and no kafka sink of the configuration reads a named output",
        )
    };
    match action {
        DlqAction::List { topic, json } => {
            let letters = read(&config, &topic_of(topic)?)?;
            if json {
                for l in &letters {
                    println!("{}", serde_json::to_string(l)?);
                }
            } else {
                print!("{}", table(&letters));
            }
            Ok(true)
        }
        DlqAction::Replay {
            topic,
            offsets,
            all,
            to,
            dry_run,
        } => {
            let topic = topic_of(topic)?;
            let wanted = parse_selection(&offsets)?;
            let letters = read(&config, &topic)?;
            let chosen: Vec<DeadLetter> = letters
                .into_iter()
                .filter(|l| {
                    all || wanted
                        .iter()
                        .any(|(p, from, to)| l.partition == *p && (*from..=*to).contains(&l.offset))
                })
                .collect();
            if chosen.is_empty() {
                bail!("no dead letter of {topic} matches");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let done =
                runtime.block_on(replay(&config, &topic, &chosen, to.as_deref(), dry_run))?;
            for line in &done.sent {
                println!("replayed {line}");
            }
            for line in &done.problems {
                eprintln!("not replayed: {line}");
            }
            println!(
                "{} of {} dead letters replayed",
                done.sent.len(),
                chosen.len()
            );
            Ok(done.problems.is_empty())
        }
    }
}
