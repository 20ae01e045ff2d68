//! `type = "http"`: a source that takes events as JSON or NDJSON `POST` bodies on a path
//! of the process's HTTP server, and answers once every sink has acknowledged them.
//!
//! Answers: 202 with the count (and ids, with `id_field`) once the events are durable;
//! 400 for a malformed body, or when a stage rejects events (naming each one and why;
//! nothing of the request is kept); 413 for a body or event count over the limit; 415 for
//! another content type; 429 + `Retry-After` when the pipeline stays full for
//! `accept_timeout` (backpressure); 503 + `Retry-After` when more than
//! `max_concurrent_requests` are in flight (load shedding) or delivery failed; 504 when
//! not confirmed within `request_timeout`.

mod config;
mod source;

pub use config::{BodyMode, HttpSourceSettings};
pub use source::{Endpoint, HttpSource, split_body};

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use salesflow_plugin_api::axum::Router;
use salesflow_plugin_api::axum::routing::post;
use salesflow_plugin_api::{
    BuildContext, Component, ComponentKind, ConfigError, Plugin, PluginError, Settings,
    async_trait, schemars, toml,
};

/// The HTTP source plugin.
/// Adds the http source.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(HttpSourcePlugin));
}

pub struct HttpSourcePlugin;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The route of an endpoint. Its load shedding (beyond `max_concurrent_requests` in
/// flight, a request is answered 503 at once) is the handler's own first step: a gate
/// there costs a request one atomic operation, where tower's load-shed and concurrency
/// layers cloned and dropped their service (with a boxed future) on every request.
pub fn router(endpoint: Arc<Endpoint>) -> Router {
    let path = endpoint.settings.path.clone();
    Router::new()
        .route(&path, post(source::handle))
        .with_state(endpoint)
}

#[async_trait]
impl Plugin for HttpSourcePlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Source
    }

    fn name(&self) -> &'static str {
        "http"
    }

    fn summary(&self) -> &'static str {
        "Takes JSON/NDJSON POST bodies on a path; answers 202 once every sink acknowledged, \
         429/503 with Retry-After under backpressure or overload"
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(HttpSourceSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        HttpSourceSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = HttpSourceSettings::from_table(&settings)
            .map_err(|e| PluginError::context("http source settings", e))?;
        let path = settings.path.clone();
        let keys = match &settings.auth {
            Some(auth) => Some(auth.keys().map_err(|e| PluginError::new(e.message))?),
            None => None,
        };
        let shed = Family::<ReasonLabel, Counter>::default();
        let mut endpoint = Endpoint::new(settings);
        endpoint.shed_backpressure = shed
            .get_or_create(&ReasonLabel {
                reason: "backpressure".into(),
            })
            .clone();
        endpoint.shed_overload = shed
            .get_or_create(&ReasonLabel {
                reason: "overload".into(),
            })
            .clone();
        ctx.metrics.register(
            "salesflow_http_shed_requests",
            "Requests refused to keep memory bounded: backpressure (429) or overload (503)",
            shed,
        );
        let endpoint = Arc::new(endpoint);
        let routes = router(Arc::clone(&endpoint));
        let routes = match keys {
            Some(keys) => salesflow_plugin_api::auth::protect(routes, keys),
            None => routes,
        };
        ctx.add_route(path, routes);
        Ok(Component::Source(Box::new(HttpSource { endpoint })))
    }
}
