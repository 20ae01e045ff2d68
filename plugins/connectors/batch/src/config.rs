use std::time::Duration;

use salesflow_plugin_api::{ConfigError, Settings, schemars};
use serde::Deserialize;

/// Settings of the batch stage.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Most events in one batch.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Most bytes (payloads, keys, headers) in one batch.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Longest an event waits for its batch to fill, e.g. "50ms".
    #[serde(default = "default_max_wait", with = "salesflow_plugin_api::duration")]
    #[schemars(with = "String")]
    pub max_wait: Duration,
    /// Merge the batches of every input lane this stage lane receives (default: only
    /// batches of one input lane, e.g. one partition, are merged). A merged batch takes
    /// the stage lane's number, so each input lane still travels one downstream lane, in
    /// order; what changes is that a request downstream carries several partitions'
    /// events. For sinks whose requests cost per request more than per event and whose
    /// writes don't depend on the order across partitions (Elasticsearch bulk with
    /// external versions).
    #[serde(default)]
    pub across_lanes: bool,
}

fn default_max_events() -> usize {
    1000
}

fn default_max_bytes() -> usize {
    4 * 1024 * 1024
}

fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            max_wait: default_max_wait(),
            across_lanes: false,
        }
    }
}

impl Settings for BatchSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_events == 0 {
            return Err(ConfigError::at(&["max_events"], "must be at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::at(&["max_bytes"], "must be at least 1"));
        }
        if self.max_wait > Duration::from_secs(3600) {
            return Err(ConfigError::at(&["max_wait"], "must be at most 1h"));
        }
        Ok(())
    }
}
