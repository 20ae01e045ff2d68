use std::time::Duration;

use salesflow_plugin_api::{ConfigError, Settings, schemars};
use serde::Deserialize;

/// Which bodies a route takes.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// One JSON object: one event.
    Single,
    /// A JSON array of objects, or NDJSON (`application/x-ndjson`): one event each.
    Many,
    /// Either: an object is one event, an array or NDJSON many.
    Auto,
}

/// Settings of the HTTP source.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceSettings {
    /// The path it serves `POST` requests on, e.g. `/orders`.
    pub path: String,
    /// Which bodies the path takes.
    #[serde(default = "default_body")]
    pub body: BodyMode,
    /// Largest body accepted; a larger one is answered 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one request; more is answered 413.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Requests handled at once; above it, new requests are shed with 503 and
    /// `Retry-After` instead of queueing.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// How long a request waits for room in the pipeline before it is answered 429 with
    /// `Retry-After` (backpressure reaching the client).
    #[serde(
        default = "default_accept_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub accept_timeout: Duration,
    /// How long a request may take in all, waiting for the sinks included; past it the
    /// answer is 504 (retrying is safe: every effect downstream is idempotent).
    #[serde(
        default = "default_request_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Seconds a shed or backpressured client is told to wait (`Retry-After`).
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u32,
    /// Answer only once every sink has durably accepted the events (202); when false,
    /// answer as soon as the pipeline took them.
    #[serde(default = "default_true")]
    pub wait_for_ack: bool,
    /// A top-level field of each event whose values the 202 answer lists (e.g. `order_id`).
    #[serde(default)]
    pub id_field: Option<String>,
    /// A top-level field whose value becomes the event's key (e.g. `cart_id`).
    #[serde(default)]
    pub key_field: Option<String>,
    /// Require an API key (`api_keys_env` names the environment variable holding the
    /// keys); requests without one are answered 401 and reach nothing.
    #[serde(default)]
    pub auth: Option<salesflow_plugin_api::auth::AuthSettings>,
}

fn default_body() -> BodyMode {
    BodyMode::Auto
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_max_events() -> usize {
    1000
}
fn default_max_concurrent_requests() -> usize {
    512
}
fn default_accept_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_after_secs() -> u32 {
    1
}
fn default_true() -> bool {
    true
}

impl Settings for HttpSourceSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') || self.path.contains(char::is_whitespace) {
            return Err(ConfigError::at(
                &["path"],
                "must start with / and hold no spaces",
            ));
        }
        if self.path.starts_with("/health") || self.path == "/metrics" {
            return Err(ConfigError::at(
                &["path"],
                "is reserved for health and metrics",
            ));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::at(
                &["max_body_bytes"],
                "must be between 1 and 268435456",
            ));
        }
        if self.max_events == 0 {
            return Err(ConfigError::at(&["max_events"], "must be at least 1"));
        }
        if !(1..=salesflow_plugin_api::MAX_PERMITS).contains(&self.max_concurrent_requests) {
            return Err(ConfigError::at(
                &["max_concurrent_requests"],
                salesflow_plugin_api::PERMITS_RULE,
            ));
        }
        if self.request_timeout <= self.accept_timeout {
            return Err(ConfigError::at(
                &["request_timeout"],
                "must be longer than accept_timeout",
            ));
        }
        if let Some(auth) = &self.auth {
            auth.keys()?;
        }
        Ok(())
    }
}
