use std::time::Duration;

use salesflow_plugin_api::event::headers;
use salesflow_plugin_api::{ConfigError, Secret, Settings, schemars};
use serde::Deserialize;

/// How to reach Elasticsearch. Defaults come from the `[elasticsearch]` table.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSettings {
    /// The cluster's URL, e.g. `http://127.0.0.1:9200`.
    pub url: String,
    /// User name, when the cluster requires authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (a secret: set it from the environment).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Timeout of each request, e.g. "10s".
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How long a failing bulk request (or its retryable items: 429, 5xx) is retried,
    /// with exponential backoff up to 10 s apart, before the write fails: an outage shorter
    /// than this only stalls the pipeline, e.g. "5m".
    #[serde(default = "default_retry_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_timeout: Duration,
    /// Most bytes of one bulk request: a write holding more is sent as several requests
    /// (a single larger document alone). Keep it under the cluster's
    /// `http.max_content_length` (100 MiB by default).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_max_request_bytes() -> usize {
    16 << 20
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Settings for ElasticsearchSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::at(&["url"], format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::at(&["url"], "must be http:// or https://"));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::at(
                &["username"],
                "username and password go together",
            ));
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::at(
                &["max_request_bytes"],
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

/// Settings of the Elasticsearch sink: the connection, and where each event goes.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// Aliases to create (with a first index, `<alias>-000001`) when missing, so that
    /// writes through them work from the start.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The header naming each event's index (or alias).
    #[serde(default = "default_index_header")]
    pub index_header: String,
    /// The header holding each document's id.
    #[serde(default = "default_id_header")]
    pub id_header: String,
    /// The header holding each document's external version: an older version than the
    /// indexed one is ignored, so a stale or replayed update never moves a document back.
    #[serde(default = "default_version_header")]
    pub version_header: String,
}

fn default_index_header() -> String {
    headers::DOC_INDEX.into()
}
fn default_id_header() -> String {
    headers::DOC_ID.into()
}
fn default_version_header() -> String {
    headers::DOC_VERSION.into()
}

pub const OWN_KEYS: [&str; 4] = ["aliases", "index_header", "id_header", "version_header"];

impl Settings for SinkSettings {
    fn check(&self) -> Result<(), ConfigError> {
        for (i, alias) in self.aliases.iter().enumerate() {
            if alias.is_empty()
                || alias.starts_with(['_', '-', '+'])
                || alias
                    .chars()
                    .any(|c| c.is_ascii_uppercase() || " \"*\\<|,>/?".contains(c))
            {
                return Err(ConfigError::at(
                    &["aliases", &i.to_string()],
                    "is not a valid index name",
                ));
            }
        }
        Ok(())
    }
}
