use std::time::Duration;

use elasticsearch::http::transport::Connection;
use salesflow_plugin_api::event::headers;
use salesflow_plugin_api::{ConfigError, Secret, Settings, schemars};
use serde::Deserialize;

/// How to reach Elasticsearch. Defaults come from the `[elasticsearch]` table.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchSettings {
    /// The cluster's URL, e.g. `http://127.0.0.1:9200`: one node, or a load balancer in
    /// front of several. Give this or `urls`. A list here is taken as `urls` would be, so
    /// that an override of the file's `url` can name several nodes
    /// (`SALESFLOW__ELASTICSEARCH__URL='["http://a:9200","http://b:9200"]'`).
    #[serde(default)]
    pub url: Option<NodeUrls>,
    /// Several nodes of the cluster, e.g. `["http://es-1:9200", "http://es-2:9200"]`:
    /// requests go round-robin over them, and a node that cannot be reached (or times
    /// out) is skipped for a while (1 s, doubling up to 30 s) while others answer, then
    /// tried again. Give this or `url`.
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// User name, when the cluster requires authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (a secret: set it from the environment).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Timeout of each request, e.g. "10s".
    #[serde(default = "default_timeout", with = "salesflow_plugin_api::duration")]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// How long a failing bulk request (or its retryable items: 429, 5xx) is retried,
    /// with exponential backoff up to 10 s apart, before the write fails: an outage shorter
    /// than this only stalls the pipeline, e.g. "5m".
    #[serde(
        default = "default_retry_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub retry_timeout: Duration,
    /// Most bytes of one bulk request: a write holding more is sent as several requests
    /// (a single larger document alone). Keep it under the cluster's
    /// `http.max_content_length` (100 MiB by default).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

/// `url`'s value: one URL or a list of them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(untagged, expecting = "a URL or a list of URLs")]
pub enum NodeUrls {
    One(String),
    Several(Vec<String>),
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

impl ElasticsearchSettings {
    /// The nodes to send to: `url`, or every one of `urls`, each checked (an http:// or
    /// https:// URL, no node twice). Exactly one of the two must be given.
    pub fn nodes(&self) -> Result<Vec<url::Url>, ConfigError> {
        match (&self.url, &self.urls) {
            (Some(_), Some(_)) => Err(ConfigError::at(
                &["urls"],
                "both `url` and `urls` are given (here or in the [elasticsearch] table): \
                 keep one, `urls` listing every node, `url` a single one",
            )),
            (None, None) => Err(ConfigError::at(
                &["url"],
                "missing: give `url` (one node, e.g. \"http://127.0.0.1:9200\") or `urls` \
                 (several nodes of the cluster)",
            )),
            (Some(NodeUrls::One(url)), None) => Ok(vec![node_url(url, &["url"])?]),
            (Some(NodeUrls::Several(urls)), None) => node_list(urls, "url"),
            (None, Some(urls)) => node_list(urls, "urls"),
        }
    }
}

/// A list of nodes' URLs under `key`, checked: at least one, each an http:// or https://
/// URL, no node twice.
fn node_list(urls: &[String], key: &str) -> Result<Vec<url::Url>, ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::at(
            &[key],
            "lists no node: give at least one URL",
        ));
    }
    let mut nodes = Vec::with_capacity(urls.len());
    // Compared as sent: `http://a:9200` and `http://a:9200/` are one node.
    let mut seen: Vec<String> = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let index = i.to_string();
        let node = node_url(url, &[key, &index])?;
        let sent = Connection::new(node.clone()).url().as_str().to_owned();
        if let Some(first) = seen.iter().position(|s| *s == sent) {
            return Err(ConfigError::at(
                &[key, &index],
                format!(
                    "{} is listed twice (also at {key}.{first})",
                    crate::pool::display_name(&node)
                ),
            ));
        }
        seen.push(sent);
        nodes.push(node);
    }
    Ok(nodes)
}

/// One node's URL, checked: what is wrong is said at `path`. The text itself is not
/// repeated: a URL may hold a password.
fn node_url(text: &str, path: &[&str]) -> Result<url::Url, ConfigError> {
    let url =
        url::Url::parse(text).map_err(|e| ConfigError::at(path, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::at(
            path,
            format!("must be http:// or https://, not {}://", url.scheme()),
        ));
    }
    Ok(url)
}

impl Settings for ElasticsearchSettings {
    fn check(&self) -> Result<(), ConfigError> {
        self.nodes()?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use salesflow_plugin_api::toml;

    fn parse(text: &str) -> Result<ElasticsearchSettings, ConfigError> {
        ElasticsearchSettings::from_table(&toml::from_str(text).unwrap())
    }

    /// The path and message of the error `text` is refused with.
    fn refused(text: &str) -> (Vec<String>, String) {
        let e = parse(text).unwrap_err();
        (e.path, e.message)
    }

    fn nodes(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .nodes()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn url_alone_is_one_node_as_before() {
        assert_eq!(
            nodes(r#"url = "http://127.0.0.1:9200""#),
            ["http://127.0.0.1:9200/"]
        );
    }

    #[test]
    fn urls_lists_several_nodes_in_order() {
        assert_eq!(
            nodes(r#"urls = ["https://es-2:9201", "http://es-1:9200/"]"#),
            ["https://es-2:9201/", "http://es-1:9200/"]
        );
    }

    #[test]
    fn url_may_list_several_nodes_too_as_an_override_would() {
        assert_eq!(
            nodes(r#"url = ["http://a:9200", "http://b:9201"]"#),
            ["http://a:9200/", "http://b:9201/"]
        );
        let (path, message) = refused(r#"url = ["http://a:9200", "ftp://b:21"]"#);
        assert_eq!(path, ["url", "1"]);
        assert!(message.contains("http:// or https://"), "{message}");
        let (path, message) = refused(r#"url = ["http://a:9200", "http://a:9200"]"#);
        assert_eq!(path, ["url", "1"]);
        assert!(message.ends_with("(also at url.0)"), "{message}");
        let (path, message) = refused("url = []");
        assert_eq!(path, ["url"]);
        assert!(message.contains("no node"), "{message}");
        let (path, message) = refused("url = 9200");
        assert_eq!(path, ["url"]);
        assert!(message.contains("a URL or a list of URLs"), "{message}");
    }

    #[test]
    fn exactly_one_of_url_and_urls() {
        let (path, message) = refused(
            r#"url = "http://a:9200"
urls = ["http://b:9200"]"#,
        );
        assert_eq!(path, ["urls"]);
        assert!(message.contains("both `url` and `urls`"), "{message}");
        let (path, message) = refused("request_timeout = \"5s\"");
        assert_eq!(path, ["url"]);
        assert!(
            message.contains("give `url`") && message.contains("`urls`"),
            "{message}"
        );
        let (path, message) = refused("urls = []");
        assert_eq!(path, ["urls"]);
        assert!(message.contains("no node"), "{message}");
    }

    #[test]
    fn every_url_is_checked_at_its_place() {
        let (path, message) = refused(r#"url = "ftp://a:21""#);
        assert_eq!(path, ["url"]);
        assert_eq!(message, "must be http:// or https://, not ftp://");
        let (path, message) = refused(r#"urls = ["http://a:9200", "ftp://b:21"]"#);
        assert_eq!(path, ["urls", "1"]);
        assert!(message.contains("http:// or https://"), "{message}");
        let (path, message) = refused(r#"urls = ["http://a:port", "http://b:9200"]"#);
        assert_eq!(path, ["urls", "0"]);
        assert!(message.starts_with("not a URL"), "{message}");
        let (path, message) = refused(r#"url = "no url""#);
        assert_eq!(path, ["url"]);
        assert!(message.starts_with("not a URL"), "{message}");
        // A list, not one string.
        let (path, _) = refused(r#"urls = "http://a:9200""#);
        assert_eq!(path, ["urls"]);
    }

    #[test]
    fn a_node_listed_twice_is_refused() {
        let (path, message) =
            refused(r#"urls = ["http://a:9200", "http://b:9200", "http://a:9200/"]"#);
        assert_eq!(path, ["urls", "2"]);
        assert_eq!(message, "http://a:9200 is listed twice (also at urls.0)");
    }

    #[test]
    fn errors_never_repeat_a_password() {
        for text in [
            r#"urls = ["ftp://user:hunter2@a:21"]"#,
            r#"urls = ["http://user:hunter2@a:9200", "http://user:hunter2@a:9200"]"#,
            r#"url = "http://user:hunter2@a:notaport""#,
        ] {
            let (_, message) = refused(text);
            assert!(!message.contains("hunter2"), "{text}: {message}");
        }
    }
}
