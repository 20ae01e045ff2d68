//! Settings of the Kafka source and sink. Both read defaults from the `[kafka]` table of
//! `pipeline.toml` (`bootstrap_servers`, `properties`), so a cluster is named once.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use salesflow_plugin_api::{ConfigError, Secret, Settings, is_secret_key, schemars};
use serde::Deserialize;

/// Where a new consumer group starts reading a partition.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    Earliest,
    Latest,
}

impl OffsetReset {
    fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// How to reach the cluster: the `[kafka]` table's connection keys, as the source and the
/// sink read them (other keys of the table, defaults for sources and sinks, are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct KafkaConnection {
    /// The brokers, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// librdkafka properties (`security.protocol`, `sasl.*`, ...); values may be
    /// `{ env = "NAME" }`.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

impl KafkaConnection {
    /// A librdkafka configuration with the brokers and the properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (key, value) in &self.properties {
            config.set(key, value.expose());
        }
        config
    }
}

/// Settings of the Kafka source.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSettings {
    /// The brokers, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// The consumer group: processes with the same group share the partitions.
    pub group_id: String,
    /// Most records in one batch (Kafka's `max.poll.records`).
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Most payload bytes in one batch: a batch closes at whichever limit comes first, so
    /// large records (a big cart's update) do not multiply memory by `max_batch_records`.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// `fetch.min.bytes`: the broker waits for this much data before answering a fetch.
    #[serde(default = "default_fetch_min_bytes")]
    pub fetch_min_bytes: u32,
    /// `fetch.wait.max.ms`: the longest the broker waits to fill `fetch_min_bytes`.
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u32,
    /// `max.partition.fetch.bytes`: most bytes one fetch brings of a partition, as stored
    /// (compressed). librdkafka decompresses a fetch whole and checks its prefetch bound
    /// only before fetching, so each partition may hold one fetch, decompressed, beyond
    /// it. A record batch larger than this still comes whole: nothing stalls.
    #[serde(default = "default_max_partition_fetch_bytes")]
    pub max_partition_fetch_bytes: u32,
    /// `auto.offset.reset`: where a partition without a committed offset starts.
    #[serde(default = "default_offset_reset")]
    pub auto_offset_reset: OffsetReset,
    /// `session.timeout.ms`: how long the group waits for a silent member.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// How often acknowledged offsets are committed, e.g. "1s".
    #[serde(
        default = "default_commit_interval",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub commit_interval: Duration,
    /// How long a revoked partition (rebalance) or a stopping source waits for its
    /// in-flight batches to be acknowledged before committing what is done.
    #[serde(
        default = "default_drain_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// How often librdkafka reports statistics (partition offsets and lag for the metrics,
    /// the group's state for the stall watch).
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u32,
    /// How long the member may stay out of a steady group while the group coordinator is
    /// up, or without one while the coordinator answers a probe client, before the source
    /// declares it stalled: readiness fails with the reason and the
    /// source replaces its consumer (its partitions drained and committed first). Default:
    /// the longer of 60 s and `drain_timeout` + 2 x `session_timeout_ms` + 10 s, well
    /// past a slow rebalance.
    #[serde(default, with = "salesflow_plugin_api::duration::option")]
    #[schemars(with = "Option<String>")]
    pub group_stall_timeout: Option<Duration>,
    /// `topic.metadata.refresh.interval.ms`: how soon partitions added to a topic are
    /// assigned and read.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u32,
    /// Any other librdkafka consumer property (`security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location`, ...). Any value may be
    /// `{ env = "NAME" }`; values of secret-looking keys are never printed.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub properties: BTreeMap<String, Secret>,
}

fn default_statistics_interval_ms() -> u32 {
    5000
}
fn default_max_batch_bytes() -> usize {
    4 << 20
}
fn default_max_batch_records() -> usize {
    500
}
fn default_max_partition_fetch_bytes() -> u32 {
    256 << 10
}
fn default_fetch_min_bytes() -> u32 {
    1
}
fn default_fetch_wait_max_ms() -> u32 {
    100
}
fn default_offset_reset() -> OffsetReset {
    OffsetReset::Earliest
}
fn default_session_timeout_ms() -> u32 {
    10_000
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Properties the source sets itself and a pass-through may not change: offsets are
/// committed by the source after acknowledgement, never automatically.
const SOURCE_FIXED: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

impl Settings for KafkaSourceSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::at(
                &["bootstrap_servers"],
                "must name at least one broker",
            ));
        }
        if self.topics.is_empty() {
            return Err(ConfigError::at(&["topics"], "must name at least one topic"));
        }
        if let Some((i, _)) = self
            .topics
            .iter()
            .enumerate()
            .find(|(_, t)| !valid_topic(t))
        {
            return Err(ConfigError::at(
                &["topics", &i.to_string()],
                "is not a valid topic name (1-249 of [a-zA-Z0-9._-])",
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::at(&["group_id"], "must not be empty"));
        }
        if !(1..=1_000_000).contains(&self.max_batch_records) {
            return Err(ConfigError::at(
                &["max_batch_records"],
                "must be between 1 and 1000000",
            ));
        }
        if !(1024..=1 << 30).contains(&self.max_batch_bytes) {
            return Err(ConfigError::at(
                &["max_batch_bytes"],
                "must be between 1024 (1 KiB) and 1073741824 (1 GiB)",
            ));
        }
        if !(1024..=1_000_000_000).contains(&self.max_partition_fetch_bytes) {
            return Err(ConfigError::at(
                &["max_partition_fetch_bytes"],
                "must be between 1024 (1 KiB) and 1000000000 (librdkafka's most)",
            ));
        }
        if self.commit_interval.is_zero() {
            return Err(ConfigError::at(
                &["commit_interval"],
                "must be more than zero",
            ));
        }
        if self.group_stall_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::at(
                &["group_stall_timeout"],
                "must be more than zero",
            ));
        }
        check_properties(&self.properties, SOURCE_FIXED)
    }
}

impl KafkaSourceSettings {
    /// How long the member may stay out of a steady group (coordinator up), or without a
    /// coordinator while it answers a probe client, before the source replaces its
    /// consumer.
    pub fn stall_timeout(&self) -> Duration {
        self.group_stall_timeout.unwrap_or_else(|| {
            let session = Duration::from_millis(u64::from(self.session_timeout_ms));
            (self.drain_timeout + 2 * session + Duration::from_secs(10))
                .max(Duration::from_secs(60))
        })
    }

    /// The librdkafka configuration of the consumer.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("socket.nagle.disable", "true")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", self.auto_offset_reset.as_str())
            .set("fetch.min.bytes", self.fetch_min_bytes.to_string())
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set(
                "max.partition.fetch.bytes",
                self.max_partition_fetch_bytes.to_string(),
            )
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            // Bound what librdkafka prefetches per partition (each partition has its own
            // queue here, so a process holds up to this times its partitions): back-
            // pressure reaches the broker instead of filling memory. 1 MiB is seconds of
            // a partition's traffic at full rate; at 4 MiB the projections, with
            // OpenSearch stopped for 45 s under 1000 orders/s, grew from 56 to 106 MiB
            // while their sink was stuck and peaked at 180 MiB catching up; at 1 MiB they
            // held 59 and peaked at 134.
            .set("queued.max.messages.kbytes", "1024")
            .set(
                "topic.metadata.refresh.interval.ms",
                self.metadata_refresh_ms.to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        for (key, value) in &self.properties {
            config.set(key, value.expose());
        }
        config
    }
}

/// Compression of produced batches.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Settings of the Kafka sink.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSettings {
    /// The brokers, `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// The topic to produce to.
    pub topic: String,
    /// Take each message's key from this top-level field of the JSON payload (e.g.
    /// `cart_id`); without it, or when an event lacks the field, the event's own key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// `linger.ms`: how long the producer waits to fill a batch.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u32,
    /// Producers the sink's lanes share, 1-16. Each is its own connection to each
    /// broker, and a broker serves one connection's requests one after another: a sink
    /// whose every write waits for its acknowledgement (the Command API's) queues behind
    /// its own earlier requests on one connection, and two halve that wait. Which one a
    /// record goes through: `placement`.
    #[serde(default = "default_producers")]
    pub producers: u16,
    /// With more than one producer, which a record goes through. `partition` (the
    /// default): a keyed record through its partition's (partition % producers, with the
    /// `murmur2` partitioners), so a partition's records fill one producer's batches
    /// (librdkafka sends one partition per produce request) and a key's records keep one
    /// connection and their order; other records through their lane's. `lane`: every
    /// record through its lane's (lane % producers), which spreads a busy partition over
    /// the connections but splits its batches.
    #[serde(default)]
    pub placement: ProducerPlacement,
    /// `batch.size`: most bytes in one produce batch per partition.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// `batch.num.messages`: most messages in one produce batch.
    #[serde(default = "default_batch_num_messages")]
    pub batch_num_messages: u32,
    /// `compression.type`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// `message.timeout.ms`: how long librdkafka retries a message before the write fails.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u32,
    /// `queue.buffering.max.messages`: messages waiting in the producer before a write
    /// waits for room.
    #[serde(default = "default_queue_max_messages")]
    pub queue_max_messages: u32,
    /// Copy the events' headers onto the messages.
    #[serde(default = "default_true")]
    pub forward_headers: bool,
    /// Which partition a key goes to. `murmur2_random` (the default) places keys where
    /// Kafka's Java clients do (murmur2 of the key), so that records of one cart produced
    /// by salesflow and by a Java producer land on the same partition; keyless records
    /// spread at random. librdkafka's own default is `consistent_random` (CRC32), which
    /// kcat and other librdkafka clients use unless told otherwise. Correctness never
    /// depends on it (appends are fenced), only per-cart order across producers.
    #[serde(default)]
    pub partitioner: Partitioner,
    /// `topic.metadata.refresh.interval.ms`: how soon new partitions of the topic are
    /// used.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u32,
    /// How often librdkafka reports statistics (queue length for the metrics).
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u32,
    /// Any other librdkafka producer property. Any value may be `{ env = "NAME" }`;
    /// values of secret-looking keys are never printed.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, String>")]
    pub properties: BTreeMap<String, Secret>,
}

/// Which of a sink's producers a record goes through.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProducerPlacement {
    #[default]
    Partition,
    Lane,
}

/// librdkafka's partitioners.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    #[default]
    Murmur2Random,
    Murmur2,
    ConsistentRandom,
    Consistent,
    Fnv1aRandom,
    Fnv1a,
    Random,
}

impl Partitioner {
    fn as_str(self) -> &'static str {
        match self {
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Consistent => "consistent",
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Fnv1a => "fnv1a",
            Partitioner::Random => "random",
        }
    }
}

fn default_metadata_refresh_ms() -> u32 {
    30_000
}

fn default_producers() -> u16 {
    1
}
fn default_linger_ms() -> u32 {
    5
}
fn default_batch_size() -> u32 {
    1_000_000
}
fn default_batch_num_messages() -> u32 {
    10_000
}
fn default_compression() -> Compression {
    Compression::Lz4
}
fn default_delivery_timeout_ms() -> u32 {
    120_000
}
fn default_queue_max_messages() -> u32 {
    100_000
}
fn default_true() -> bool {
    true
}

/// Every message is acknowledged by all in-sync replicas, and written once per send:
/// a pass-through may not weaken that.
const SINK_FIXED: &[&str] = &["acks", "enable.idempotence", "bootstrap.servers"];

impl Settings for KafkaSinkSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::at(
                &["bootstrap_servers"],
                "must name at least one broker",
            ));
        }
        if !valid_topic(&self.topic) {
            return Err(ConfigError::at(
                &["topic"],
                "is not a valid topic name (1-249 of [a-zA-Z0-9._-])",
            ));
        }
        if self.key_field.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::at(&["key_field"], "must not be empty"));
        }
        if self.delivery_timeout_ms < 1000 {
            return Err(ConfigError::at(
                &["delivery_timeout_ms"],
                "must be at least 1000",
            ));
        }
        if !(1..=16).contains(&self.producers) {
            return Err(ConfigError::at(&["producers"], "must be between 1 and 16"));
        }
        check_properties(&self.properties, SINK_FIXED)
    }
}

impl KafkaSinkSettings {
    /// The librdkafka configuration of the producer.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Small produce requests must not wait for Nagle's algorithm.
            .set("socket.nagle.disable", "true")
            // Bound what waits in the producer (librdkafka's default is 1 GiB): past it a
            // write waits for room, which is backpressure.
            .set("queue.buffering.max.kbytes", "32768")
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_size.to_string())
            .set("batch.num.messages", self.batch_num_messages.to_string())
            .set("compression.type", self.compression.as_str())
            .set("partitioner", self.partitioner.as_str())
            .set(
                "topic.metadata.refresh.interval.ms",
                self.metadata_refresh_ms.to_string(),
            )
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            )
            .set(
                "statistics.interval.ms",
                self.statistics_interval_ms.to_string(),
            );
        for (key, value) in &self.properties {
            config.set(key, value.expose());
        }
        config
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn check_properties(
    properties: &BTreeMap<String, Secret>,
    fixed: &[&str],
) -> Result<(), ConfigError> {
    for key in properties.keys() {
        if fixed.contains(&key.as_str()) {
            return Err(ConfigError::at(
                &["properties", key],
                "is set by salesflow itself and cannot be overridden (offsets are committed \
                 after acknowledgement; producers are idempotent with acks=all)",
            ));
        }
        if key.trim().is_empty() || key.contains(char::is_whitespace) {
            return Err(ConfigError::at(
                &["properties", key],
                "is not a librdkafka property name",
            ));
        }
    }
    Ok(())
}

/// The properties as `key=value` lines with secret values redacted, for logs.
pub fn redacted(properties: &BTreeMap<String, Secret>) -> String {
    properties
        .iter()
        .map(|(k, v)| {
            if is_secret_key(k) {
                format!("{k}=<redacted>")
            } else {
                format!("{k}={}", v.expose())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use salesflow_plugin_api::toml;

    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn source_defaults_follow_the_note() {
        let s = KafkaSourceSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topics = ["orders"]
               group_id = "domain""#,
        ))
        .unwrap();
        let c = s.client_config();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(s.max_batch_records, 500);
        assert_eq!(s.max_batch_bytes, 4 << 20);
        assert_eq!(c.get("max.partition.fetch.bytes"), Some("262144"));
    }

    /// A fetch is decompressed whole beyond the prefetch bound: its size is a setting,
    /// checked against what librdkafka takes.
    #[test]
    fn the_partition_fetch_size_is_bounded() {
        let with = |n: &str| {
            KafkaSourceSettings::from_table(&table(&format!(
                "bootstrap_servers = \"b:9092\"\ntopics = [\"orders\"]\ngroup_id = \"g\"\n\
                 max_partition_fetch_bytes = {n}"
            )))
        };
        let s = with("65536").unwrap();
        assert_eq!(
            s.client_config().get("max.partition.fetch.bytes"),
            Some("65536")
        );
        for bad in ["0", "1023", "1000000001"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.path, ["max_partition_fetch_bytes"], "{bad}");
        }
    }

    #[test]
    fn auto_commit_cannot_be_turned_on() {
        let e = KafkaSourceSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topics = ["orders"]
               group_id = "g"
               properties = { "enable.auto.commit" = "true" }"#,
        ))
        .unwrap_err();
        assert_eq!(e.path, ["properties", "enable.auto.commit"]);
    }

    #[test]
    fn sink_is_idempotent_with_acks_all() {
        let s = KafkaSinkSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topic = "orders"
               key_field = "cart_id""#,
        ))
        .unwrap();
        let c = s.client_config();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        let e = KafkaSinkSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topic = "orders"
               properties = { acks = "1" }"#,
        ))
        .unwrap_err();
        assert_eq!(e.path, ["properties", "acks"]);
    }

    #[test]
    fn bad_topics_and_unknown_keys_name_their_path() {
        let e = KafkaSinkSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topic = "no spaces""#,
        ))
        .unwrap_err();
        assert_eq!(e.path, ["topic"]);
        let e = KafkaSinkSettings::from_table(&table(
            r#"bootstrap_servers = "b:9092"
               topic = "t"
               lingr_ms = 5"#,
        ))
        .unwrap_err();
        assert!(e.message.contains("lingr_ms"), "{e}");
        for producers in [0, 17] {
            let e = KafkaSinkSettings::from_table(&table(&format!(
                "bootstrap_servers = \"b:9092\"\ntopic = \"t\"\nproducers = {producers}"
            )))
            .unwrap_err();
            assert_eq!(e.path, ["producers"]);
            assert!(e.message.contains("between 1 and 16"), "{e}");
        }
        let one =
            KafkaSinkSettings::from_table(&table("bootstrap_servers = \"b:9092\"\ntopic = \"t\""))
                .unwrap();
        assert_eq!(one.producers, 1);
        assert_eq!(one.placement, ProducerPlacement::Partition);
        let lane = KafkaSinkSettings::from_table(&table(
            "bootstrap_servers = \"b:9092\"\ntopic = \"t\"\nplacement = \"lane\"",
        ));
        assert_eq!(lane.unwrap().placement, ProducerPlacement::Lane);
        let e = KafkaSinkSettings::from_table(&table(
            "bootstrap_servers = \"b:9092\"\ntopic = \"t\"\nplacement = \"key\"",
        ))
        .unwrap_err();
        assert!(
            e.message.contains("partition") && e.message.contains("lane"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let mut p = BTreeMap::new();
        p.insert("sasl.password".to_owned(), Secret::new("hunter2"));
        p.insert("sasl.mechanism".to_owned(), Secret::new("PLAIN"));
        let shown = redacted(&p);
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("sasl.mechanism=PLAIN"));
    }
}
