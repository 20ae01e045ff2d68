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
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Partition writes in flight at once, per write.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How long a failing write (or cart rebuild) is retried, with exponential backoff up
    /// to 5 s apart, before it fails: an outage shorter than this only stalls the pipeline
    /// (backpressure), e.g. "5m".
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_timeout: Duration,
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
        Ok(())
    }
}
