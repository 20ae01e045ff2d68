//! What a plugin is to the host: a named factory with documented settings, validated
//! without I/O (`salesflow check`), then built (connections made) by `salesflow run`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;

use crate::component::{CancellationToken, PluginError, SinkFactory, Source, StageFactory};

/// Sources, stages and sinks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComponentKind {
    Source,
    Stage,
    Sink,
}

impl ComponentKind {
    /// The table of `pipeline.toml` that holds components of this kind.
    pub fn table(self) -> &'static str {
        match self {
            ComponentKind::Source => "sources",
            ComponentKind::Stage => "stages",
            ComponentKind::Sink => "sinks",
        }
    }
}

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ComponentKind::Source => "source",
            ComponentKind::Stage => "stage",
            ComponentKind::Sink => "sink",
        })
    }
}

/// A built component, ready to run.
pub enum Component {
    Source(Box<dyn Source>),
    Stage(Arc<dyn StageFactory>),
    Sink(Arc<dyn SinkFactory>),
}

/// A setting that failed validation: its path inside the component's table, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if path.is_empty() { "(settings)".to_owned() } else { path.join(".") })]
pub struct ConfigError {
    pub path: Vec<String>,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            message: message.into(),
        }
    }
}

/// Deserializes a component's settings into its config struct, reporting the path of the
/// offending key (`deny_unknown_fields` catches typos).
pub fn parse_settings<T: DeserializeOwned>(settings: &toml::Table) -> Result<T, ConfigError> {
    let value = toml::Value::Table(settings.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let mut message = e.into_inner().to_string();
        // toml's messages carry their own position in a synthetic document; ours is better.
        if let Some(stripped) = message.strip_prefix("TOML parse error") {
            message = stripped.trim().to_owned();
        }
        ConfigError {
            path,
            message: message.trim().to_owned(),
        }
    })
}

/// A healthcheck: does what the component does for real (Kafka metadata for its topics, a
/// prepared statement on the keyspace, a request to the index), not a ping.
pub type HealthFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A named dependency check that `/health/ready` runs.
#[derive(Clone)]
pub struct Healthcheck {
    pub name: String,
    pub check: HealthFn,
}

/// An HTTP route a component serves on the process's one HTTP server.
pub struct Route {
    /// The path, as axum writes it (`/orders`, `/carts/{id}`).
    pub path: String,
    pub router: axum::Router,
}

/// What the host hands a plugin while building it.
pub struct BuildContext<'a> {
    pub pipeline: &'a str,
    pub component: &'a str,
    /// The component's metrics registry, labelled with pipeline and component.
    pub metrics: &'a mut Registry,
    /// Cancelled when the process shuts down.
    pub shutdown: CancellationToken,
    routes: &'a mut Vec<Route>,
    healthchecks: &'a mut Vec<Healthcheck>,
    /// The component's named outputs that another component reads.
    outputs_read: Vec<String>,
}

impl<'a> BuildContext<'a> {
    pub fn new(
        pipeline: &'a str,
        component: &'a str,
        metrics: &'a mut Registry,
        shutdown: CancellationToken,
        routes: &'a mut Vec<Route>,
        healthchecks: &'a mut Vec<Healthcheck>,
    ) -> Self {
        Self {
            pipeline,
            component,
            metrics,
            shutdown,
            routes,
            healthchecks,
            outputs_read: Vec::new(),
        }
    }

    /// Says which of the component's named outputs other components read.
    #[must_use]
    pub fn with_outputs_read(mut self, outputs: Vec<String>) -> Self {
        self.outputs_read = outputs;
        self
    }

    /// Whether another component reads the named output `name` (`inputs =
    /// ["component.name"]`): a component may fail a batch back to its source rather than
    /// send events where nobody reads them.
    pub fn output_is_read(&self, name: &str) -> bool {
        self.outputs_read.iter().any(|o| o == name)
    }

    /// Serves `router` (which handles `path`) on the process's HTTP server.
    pub fn add_route(&mut self, path: impl Into<String>, router: axum::Router) {
        self.routes.push(Route {
            path: path.into(),
            router,
        });
    }

    /// Adds a dependency check to `/health/ready`, named `pipeline/component: what`.
    pub fn add_healthcheck(&mut self, what: &str, check: HealthFn) {
        self.healthchecks.push(Healthcheck {
            name: format!("{}/{}: {what}", self.pipeline, self.component),
            check,
        });
    }
}

/// A plugin: one `type = "..."` of one kind.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    fn kind(&self) -> ComponentKind;
    /// The `type` that selects it.
    fn name(&self) -> &'static str;
    /// One line: what it does.
    fn summary(&self) -> &'static str;
    /// A top-level table of `pipeline.toml` (like `[kafka]`) whose keys are defaults for
    /// this plugin's settings; the component's own keys win.
    fn shared_section(&self) -> Option<&'static str> {
        None
    }
    /// Top-level tables (like `[cassandra]`) whose keys are defaults for the settings'
    /// sub-table of the same name (`cassandra = { ... }`); the component's keys win.
    fn nested_shared_sections(&self) -> &'static [&'static str] {
        &[]
    }
    /// Named outputs besides the main one (a stage's `rejected`, say), which other
    /// components select with `inputs = ["component.name"]`.
    fn outputs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Whether the component emits events at all. A source that only serves requests
    /// (a query API) does not; its pipeline needs no sink.
    fn produces_events(&self) -> bool {
        true
    }
    /// Sinks: writes in flight per lane when the component does not say. `None` (the
    /// default): adaptive, following the server's round trips and back-pressure — right
    /// for a request per write (a bulk request). A sink whose client batches and bounds
    /// itself (Kafka's producer, with its own queue and requests in flight) gives a fixed
    /// number: more writes handed over only let its batches fill.
    fn default_concurrency(&self) -> Option<usize> {
        None
    }
    /// The settings' JSON schema, with descriptions and defaults (`salesflow plugins`).
    fn settings_schema(&self) -> schemars::Schema;
    /// Checks the settings without any I/O.
    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError>;
    /// Builds the component; may connect.
    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError>;
}

/// Settings structs implement this for the checks serde cannot express.
pub trait Settings: DeserializeOwned + schemars::JsonSchema {
    fn check(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Parses and checks.
    fn from_table(settings: &toml::Table) -> Result<Self, ConfigError> {
        let parsed: Self = parse_settings(settings)?;
        parsed.check()?;
        Ok(parsed)
    }
}

/// A component's settings that are its own keys (`own_keys`) plus a connection's (the
/// rest, with the shared section's defaults): both parsed and checked.
pub fn split_settings<Own: Settings, Connection: Settings>(
    settings: &toml::Table,
    own_keys: &[&str],
) -> Result<(Own, Connection), ConfigError> {
    let (own, connection): (toml::Table, toml::Table) = settings
        .clone()
        .into_iter()
        .partition(|(k, _)| own_keys.contains(&k.as_str()));
    Ok((Own::from_table(&own)?, Connection::from_table(&connection)?))
}

/// The schema of such settings: the connection's properties and the component's own.
pub fn merged_schema<Own: Settings, Connection: Settings>() -> schemars::Schema {
    let mut schema = schemars::schema_for!(Connection);
    let own = schemars::schema_for!(Own);
    if let (Some(props), Some(own_props)) = (
        schema.get_mut("properties").and_then(|p| p.as_object_mut()),
        own.get("properties").and_then(|p| p.as_object()),
    ) {
        props.extend(own_props.clone());
    }
    schema
}
