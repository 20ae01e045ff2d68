use std::time::Duration;

use salesflow_plugin_api::{ConfigError, Secret, Settings, schemars};
use serde::Deserialize;

/// How to reach the event store. Defaults come from the `[cassandra]` table.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CassandraSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace holding `cart_events` and `events_by_hour`.
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    /// User name, when the cluster requires authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (a secret: set it from the environment, e.g. `SALESFLOW__CASSANDRA__PASSWORD`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Timeout of each request, e.g. "5s".
    #[serde(default = "default_timeout", with = "salesflow_plugin_api::duration")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Partition writes in flight at once, per write.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a failing write (or cart rebuild) is retried, with exponential backoff up
    /// to 5 s apart, before it fails: an outage shorter than this only stalls the pipeline
    /// (backpressure), e.g. "5m".
    #[serde(
        default = "default_retry_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub retry_timeout: Duration,
    /// Consistency of reads and writes: `local_quorum` (default) keeps a cart readable and
    /// writable while a minority of its replicas in this data centre is down; `quorum`,
    /// `each_quorum`, `all`, `local_one` and `one` are also taken.
    #[serde(default)]
    pub consistency: ConsistencySetting,
    /// Serial consistency of the conditional appends (lightweight transactions) and of
    /// the reads that follow a conflict: `local_serial` (default) or `serial`.
    #[serde(default)]
    pub serial_consistency: SerialSetting,
    /// The data centre whose replicas are asked first (DC-aware, token-aware routing);
    /// other data centres are never used. Default: the data centre of the contact points.
    #[serde(default)]
    pub local_datacenter: Option<String>,
}

/// `consistency` values.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencySetting {
    One,
    LocalOne,
    Quorum,
    #[default]
    LocalQuorum,
    EachQuorum,
    All,
}

impl ConsistencySetting {
    pub fn to_driver(self) -> scylla::statement::Consistency {
        use scylla::statement::Consistency as C;
        match self {
            Self::One => C::One,
            Self::LocalOne => C::LocalOne,
            Self::Quorum => C::Quorum,
            Self::LocalQuorum => C::LocalQuorum,
            Self::EachQuorum => C::EachQuorum,
            Self::All => C::All,
        }
    }
}

/// `serial_consistency` values.
#[derive(Clone, Copy, Debug, Default, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SerialSetting {
    Serial,
    #[default]
    LocalSerial,
}

impl SerialSetting {
    pub fn to_driver(self) -> scylla::statement::SerialConsistency {
        match self {
            Self::Serial => scylla::statement::SerialConsistency::Serial,
            Self::LocalSerial => scylla::statement::SerialConsistency::LocalSerial,
        }
    }

    /// The consistency a read takes to see every applied conditional write.
    pub fn as_read(self) -> scylla::statement::Consistency {
        match self {
            Self::Serial => scylla::statement::Consistency::Serial,
            Self::LocalSerial => scylla::statement::Consistency::LocalSerial,
        }
    }
}

fn default_keyspace() -> String {
    "salesflow".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_concurrency() -> usize {
    32
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Settings for CassandraSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::at(&["nodes"], "must name at least one node"));
        }
        if let Some((i, _)) = self
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| !n.contains(':'))
        {
            return Err(ConfigError::at(
                &["nodes", &i.to_string()],
                "must be host:port",
            ));
        }
        if self.keyspace.is_empty()
            || !self
                .keyspace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError::at(&["keyspace"], "must be [a-zA-Z0-9_]+"));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::at(
                &["username"],
                "username and password go together",
            ));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::at(&["concurrency"], "must be at least 1"));
        }
        if self.local_datacenter.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::at(
                &["local_datacenter"],
                "must name a data centre (or be left out to use the contact points' one)",
            ));
        }
        Ok(())
    }
}
