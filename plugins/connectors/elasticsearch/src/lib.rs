//! `type = "elasticsearch"`: a sink that bulk-indexes events as documents. Each event
//! names its index (or alias), document id and external version in headers; with
//! external versioning a stale or replayed update never moves a document backwards
//! (Elasticsearch answers it 409, which counts as done).

mod client;
mod config;
mod pool;

pub use client::{BulkOutcome, Client, Doc, EsError, readiness_path};
pub use config::{ElasticsearchSettings, SinkSettings};
pub use pool::{FIRST_BACKOFF, MAX_BACKOFF, NodeLabels, NodePool, NodeStatus};

use std::sync::Arc;

use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::futures::FutureExt;
use salesflow_plugin_api::prometheus_client::metrics::counter::Counter;
use salesflow_plugin_api::{
    Backpressure, BuildContext, Component, ComponentKind, ConfigError, Event, Plugin, PluginError,
    Sink, SinkFactory, WriteFuture, async_trait, schemars, toml,
};

/// The sink's type name in `pipeline.toml`.
pub const SINK_TYPE: &str = "elasticsearch";

/// Adds the elasticsearch sink.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(ElasticsearchSinkPlugin));
}

/// Splits a sink's table into its own settings and the connection's: what a tool that
/// writes where a sink writes (a replay) reads of it.
pub fn split(settings: &toml::Table) -> Result<(SinkSettings, ElasticsearchSettings), ConfigError> {
    salesflow_plugin_api::split_settings(settings, &config::OWN_KEYS)
}

pub struct ElasticsearchSinkPlugin;

#[async_trait]
impl Plugin for ElasticsearchSinkPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Sink
    }

    fn name(&self) -> &'static str {
        SINK_TYPE
    }

    fn summary(&self) -> &'static str {
        "Bulk-indexes events as documents (index, id, external version from headers); a \
         stale update is ignored, retryable failures retried with backoff"
    }

    fn shared_section(&self) -> Option<&'static str> {
        Some("elasticsearch")
    }

    fn settings_schema(&self) -> schemars::Schema {
        salesflow_plugin_api::merged_schema::<SinkSettings, ElasticsearchSettings>()
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        split(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let (own, connection) =
            split(&settings).map_err(|e| PluginError::context("elasticsearch settings", e))?;
        let client = Client::new(&connection)
            .map_err(|e| PluginError::context("the Elasticsearch client", e))?;
        let aliases = Arc::new(Aliases {
            client: client.clone(),
            names: own.aliases.clone(),
            made: tokio::sync::OnceCell::new(),
        });
        // A server that is away (or still starting) is no reason not to start: the
        // aliases are made before the first write, or a readiness check, finds it up.
        // One that answers with a refusal (credentials, a name it will not take) is.
        if let Err(e) = aliases.ensure().await {
            if !e.is_unavailable() {
                return Err(PluginError::context("the aliases", e));
            }
            tracing::warn!(
                pipeline = ctx.pipeline,
                component = ctx.component,
                error = %e,
                "Elasticsearch is unavailable; its aliases will be made before the first write"
            );
        }
        let check_client = client.clone();
        let check_aliases = Arc::clone(&aliases);
        let targets = if own.aliases.is_empty() {
            "_all".to_owned()
        } else {
            own.aliases.join(",")
        };
        let path = readiness_path(&own.aliases.iter().map(String::as_str).collect::<Vec<_>>());
        // Ready while at least one node answers; the others are named in the log, and
        // in the error when none does.
        ctx.add_healthcheck(
            &format!("elasticsearch {targets}"),
            Arc::new(move || {
                let client = check_client.clone();
                let aliases = Arc::clone(&check_aliases);
                let path = path.clone();
                async move {
                    aliases.ensure().await.map_err(|e| e.to_string())?;
                    client.healthcheck(&path).await
                }
                .boxed()
            }),
        );
        client.register_metrics(ctx.metrics);
        ctx.metrics.register(
            "salesflow_elasticsearch_bulk_retries",
            "Bulk requests (or their retryable items) sent again after a failure",
            client.retried.clone(),
        );
        let stale = Counter::default();
        ctx.metrics.register(
            "salesflow_elasticsearch_stale_documents",
            "Documents not indexed because the index held that version or a newer one",
            stale.clone(),
        );
        Ok(Component::Sink(Arc::new(Factory {
            client,
            aliases,
            settings: Arc::new(own),
            stale,
        })))
    }
}

/// The sink's aliases, made once: at build when the server answers, else before the
/// first write (or readiness check) that finds it up. A bulk write to an alias that does
/// not exist would make an index of that name instead.
struct Aliases {
    client: Client,
    names: Vec<String>,
    made: tokio::sync::OnceCell<()>,
}

impl Aliases {
    async fn ensure(&self) -> Result<(), EsError> {
        self.made
            .get_or_try_init(|| async {
                for alias in &self.names {
                    self.client.ensure_alias(alias).await?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }
}

struct Factory {
    client: Client,
    aliases: Arc<Aliases>,
    settings: Arc<SinkSettings>,
    stale: Counter,
}

impl SinkFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Sink>, PluginError> {
        Ok(Box::new(ElasticsearchSink {
            client: self.client.clone(),
            aliases: Arc::clone(&self.aliases),
            settings: Arc::clone(&self.settings),
            stale: self.stale.clone(),
            pressure: Backpressure::default(),
        }))
    }
}

struct ElasticsearchSink {
    client: Client,
    aliases: Arc<Aliases>,
    settings: Arc<SinkSettings>,
    stale: Counter,
    pressure: Backpressure,
}

fn header(event: &Event, name: &str) -> Result<String, PluginError> {
    let value = event
        .header(name)
        .ok_or_else(|| PluginError::new(format!("an event without the {name} header")))?;
    String::from_utf8(value.to_vec())
        .map_err(|_| PluginError::new(format!("header {name} is not UTF-8")))
}

/// A document as the one line a bulk request carries it on, after its action.
///
/// Pretty-printed JSON from another producer spans lines, and in a bulk request each
/// further line would be read as an action: OpenSearch answers the whole request 400, and
/// the write could never succeed. A raw newline in JSON can only be whitespace between
/// tokens (inside a string it must be escaped), so each one becomes a space: the same
/// document, on one line, copied only when it has any. An empty document is refused
/// alone, with the reason, before it costs the request a round trip.
fn one_line(source: &Bytes) -> Result<Bytes, PluginError> {
    let body = source.strip_suffix(b"\n").unwrap_or(source);
    if body.trim_ascii().is_empty() {
        return Err(PluginError::new("the document is empty"));
    }
    if !body.contains(&b'\n') {
        return Ok(source.clone());
    }
    Ok(body
        .iter()
        .map(|&b| if b == b'\n' { b' ' } else { b })
        .collect::<Vec<u8>>()
        .into())
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn report_backpressure_to(&mut self, signal: Backpressure) {
        self.pressure = signal;
    }

    async fn write(&mut self, events: Arc<[Event]>) -> Result<WriteFuture, PluginError> {
        // An event that does not say where it goes can never be written: refused alone.
        let mut docs = Vec::with_capacity(events.len());
        let mut positions = Vec::with_capacity(events.len());
        let mut refused = Vec::new();
        for (position, event) in events.iter().enumerate() {
            let doc = (|| {
                let source = one_line(&event.payload)?;
                let version = header(event, &self.settings.version_header)?;
                Ok::<_, PluginError>(Doc {
                    index: header(event, &self.settings.index_header)?,
                    id: header(event, &self.settings.id_header)?,
                    version: version.parse().map_err(|_| {
                        PluginError::new(format!("version {version:?} is not a number"))
                    })?,
                    source,
                })
            })();
            match doc {
                Ok(doc) => {
                    docs.push(doc);
                    positions.push(position);
                }
                Err(e) => refused.push((position, e.message)),
            }
        }
        let client = self.client.clone();
        let aliases = Arc::clone(&self.aliases);
        let stale = self.stale.clone();
        let pressure = self.pressure.clone();
        let total = events.len();
        Ok(async move {
            aliases
                .ensure()
                .await
                .map_err(|e| PluginError::context("the aliases", e))?;
            let outcome = client
                .bulk_watched(&docs, &pressure)
                .await
                .map_err(|e| PluginError::context("bulk write", e))?;
            stale.inc_by(outcome.stale as u64);
            refused.extend(
                outcome
                    .refused
                    .into_iter()
                    .map(|(i, why)| (positions[i], why)),
            );
            if refused.is_empty() {
                Ok(())
            } else {
                refused.sort_by_key(|(i, _)| *i);
                Err(PluginError::refused(
                    format!(
                        "{} of {total} documents refused by the index",
                        refused.len()
                    ),
                    refused,
                ))
            }
        }
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use salesflow_plugin_api::bytes::Bytes;

    use super::one_line;

    fn line(source: &[u8]) -> Result<Vec<u8>, String> {
        one_line(&Bytes::copy_from_slice(source))
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }

    /// What a bulk request carries as a document's line: the document as it is when it is
    /// one line (its own final newline ends it), pretty-printed JSON with its newlines as
    /// spaces (the same JSON), and no empty document.
    #[test]
    fn a_document_is_written_as_one_line() {
        for compact in [&br#"{"n":1}"#[..], b"{\"n\":1}\n", b"{\"n\":1}\r\n"] {
            assert_eq!(line(compact).unwrap(), compact);
        }
        let pretty =
            serde_json::to_vec_pretty(&serde_json::json!({ "n": 1, "s": "a\nb" })).unwrap();
        let flat = line(&pretty).unwrap();
        assert!(
            !flat.contains(&b'\n'),
            "{:?}",
            String::from_utf8_lossy(&flat)
        );
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&flat).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&pretty).unwrap()
        );
        assert_eq!(line(b"{\n\"n\":1}\n").unwrap(), b"{ \"n\":1}");
        for empty in [&b""[..], b"\n", b" \r\n"] {
            let refused = line(empty).unwrap_err();
            assert!(refused.contains("empty"), "{empty:?}: {refused}");
        }
    }
}
