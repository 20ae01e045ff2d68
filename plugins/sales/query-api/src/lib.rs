//! `type = "query-api"`: a source that emits nothing and serves the Query API on the
//! process's HTTP server:
//!
//! - `GET /carts/{id}` — the detailed read model;
//! - `GET /carts/{id}/summary` — the summary read model;
//! - `GET /carts?user_id=&from=&to=&product=&min_subtotal=&max_subtotal=&sort=&size=&after=`
//!   — summaries, newest first unless `sort` says otherwise, text match on products,
//!   paged with `search_after` (correct past 10,000 hits): each page's `next` is the
//!   `after` of the following one;
//! - `GET /carts/totals` — each currency's exact totals over the carts the same filters
//!   select;
//! - `GET /carts/{id}/events` — the cart's event stream from the event store.
//!
//! 404 for an unknown cart, 400 naming a bad parameter. Parameters only ever become JSON
//! values in the Elasticsearch query and bound values of prepared CQL statements: they
//! cannot change the shape of either (no injection).

pub mod search;

use std::sync::Arc;

use elasticsearch::http::Method;
use salesflow_plugin_api::axum::extract::{Path, RawQuery, State};
use salesflow_plugin_api::axum::http::{StatusCode, header};
use salesflow_plugin_api::axum::response::{IntoResponse, Response};
use salesflow_plugin_api::axum::routing::get;
use salesflow_plugin_api::axum::{Json, Router};
use salesflow_plugin_api::futures::FutureExt;
use salesflow_plugin_api::{
    BuildContext, CancellationToken, Component, ComponentKind, ConfigError, Output, Plugin,
    PluginError, Settings, Source, async_trait, schemars, toml,
};
use salesflow_plugin_elasticsearch::{Client, ElasticsearchSettings, readiness_path};
use salesflow_sales::read_model;
use salesflow_sales_event_store::{CassandraSettings, EventStore};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// Settings of the Query API. `elasticsearch` and `cassandra` default to the top-level
/// `[elasticsearch]` and `[cassandra]` tables.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    /// The read models' cluster.
    pub elasticsearch: ElasticsearchSettings,
    /// The event store.
    pub cassandra: CassandraSettings,
    /// The alias of the detailed read model.
    #[serde(default = "default_detailed")]
    pub detailed_alias: String,
    /// The alias of the summary read model.
    #[serde(default = "default_summary")]
    pub summary_alias: String,
    /// Page size when `size` is not given.
    #[serde(default = "default_page")]
    pub default_page_size: u32,
    /// Largest `size` accepted.
    #[serde(default = "default_max_page")]
    pub max_page_size: u32,
    /// Require an API key on every query route (`api_keys_env` names the environment
    /// variable holding the keys; use another than the ingest API's).
    #[serde(default)]
    pub auth: Option<salesflow_plugin_api::auth::AuthSettings>,
    /// Seconds a client is told to wait (`Retry-After`) when the read models or the
    /// event store cannot answer (503).
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u32,
}

fn default_detailed() -> String {
    read_model::DETAILED.into()
}
fn default_summary() -> String {
    read_model::SUMMARY.into()
}
fn default_page() -> u32 {
    20
}
fn default_max_page() -> u32 {
    100
}
fn default_retry_after_secs() -> u32 {
    1
}

impl Settings for QuerySettings {
    fn check(&self) -> Result<(), ConfigError> {
        self.elasticsearch.check().map_err(|mut e| {
            e.path.insert(0, "elasticsearch".into());
            e
        })?;
        self.cassandra.check().map_err(|mut e| {
            e.path.insert(0, "cassandra".into());
            e
        })?;
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return Err(ConfigError::at(
                &["default_page_size"],
                "must be between 1 and max_page_size",
            ));
        }
        if self.max_page_size > 10_000 {
            return Err(ConfigError::at(&["max_page_size"], "must be at most 10000"));
        }
        if let Some(auth) = &self.auth {
            auth.keys()?;
        }
        Ok(())
    }
}

/// Adds the Query API source.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(QueryApiPlugin));
}

pub struct QueryApiPlugin;

#[async_trait]
impl Plugin for QueryApiPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Source
    }

    fn name(&self) -> &'static str {
        "query-api"
    }

    fn summary(&self) -> &'static str {
        "Serves GET /carts/{id}, /carts/{id}/summary, /carts/{id}/events and /carts (search \
         with search_after paging) from the read models and the event store; emits nothing"
    }

    fn produces_events(&self) -> bool {
        false
    }

    fn nested_shared_sections(&self) -> &'static [&'static str] {
        &["elasticsearch", "cassandra"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(QuerySettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        QuerySettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = QuerySettings::from_table(&settings)
            .map_err(|e| PluginError::context("query-api settings", e))?;
        let es = Client::new(&settings.elasticsearch)
            .map_err(|e| PluginError::context("the Elasticsearch client", e))?;
        let store = EventStore::open(&settings.cassandra)
            .await
            .map_err(|e| PluginError::context("the event store", e))?;
        let api = Arc::new(Api {
            es,
            store,
            settings,
        });

        let check = Arc::clone(&api);
        let path: Arc<str> =
            readiness_path(&[&api.settings.detailed_alias, &api.settings.summary_alias]).into();
        ctx.add_healthcheck(
            "elasticsearch read models",
            Arc::new(move || {
                let (api, path) = (Arc::clone(&check), Arc::clone(&path));
                // Ready while at least one node answers; the others are named in the
                // log, and in the error when none does.
                async move { api.es.healthcheck(&path).await }.boxed()
            }),
        );
        api.es.register_metrics(ctx.metrics);
        let check = Arc::clone(&api);
        ctx.add_healthcheck(
            "cassandra event store",
            Arc::new(move || {
                let api = Arc::clone(&check);
                async move { api.store.healthcheck().await.map_err(|e| e.to_string()) }.boxed()
            }),
        );
        let router = Router::new()
            .route("/carts", get(search::search))
            .route("/carts/totals", get(search::totals))
            .route("/carts/{id}", get(detailed))
            .route("/carts/{id}/summary", get(summary))
            .route("/carts/{id}/events", get(events))
            .with_state(Arc::clone(&api));
        let router = match &api.settings.auth {
            Some(auth) => salesflow_plugin_api::auth::protect(
                router,
                auth.keys().map_err(|e| PluginError::new(e.message))?,
            ),
            None => router,
        };
        ctx.add_route("/carts", router);
        Ok(Component::Source(Box::new(QuerySource)))
    }
}

/// The Query API's shared state.
pub struct Api {
    pub(crate) es: Client,
    pub(crate) store: EventStore,
    pub(crate) settings: QuerySettings,
}

/// Serves until shutdown; the HTTP server drains its requests.
struct QuerySource;

#[async_trait]
impl Source for QuerySource {
    async fn run(
        self: Box<Self>,
        _out: Output,
        shutdown: CancellationToken,
    ) -> Result<(), PluginError> {
        shutdown.cancelled().await;
        Ok(())
    }
}

pub(crate) fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// 503 with `Retry-After`: a store behind the API did not answer.
pub(crate) fn unavailable(api: &Api, what: &str) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{what} not available; retry after {} s",
            api.settings.retry_after_secs
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, api.settings.retry_after_secs.into());
    response
}

fn cart_id(raw: &str) -> Result<Uuid, Box<Response>> {
    search::hyphenated_uuid(raw).ok_or_else(|| {
        Box::new(problem(
            StatusCode::BAD_REQUEST,
            format!("id: {raw:?} is not a UUID"),
        ))
    })
}

fn no_query(query: Option<&str>) -> Result<(), Box<Response>> {
    match query {
        Some(q) if !q.is_empty() => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            "this resource takes no query parameters",
        ))),
        _ => Ok(()),
    }
}

async fn document(api: &Api, alias: &str, id: &str, query: Option<&str>) -> Response {
    if let Err(r) = no_query(query) {
        return *r;
    }
    let id = match cart_id(id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let path = format!("/{alias}/_doc/{id}");
    match api.es.call(Method::Get, &path, None).await {
        Ok((200, body)) => Json(body["_source"].clone()).into_response(),
        Ok((404, _)) => problem(StatusCode::NOT_FOUND, format!("no cart {id}")),
        Ok((status, body)) => {
            tracing::warn!(%status, %body, "read model request failed");
            unavailable(api, "the read models are")
        }
        Err(e) => {
            tracing::warn!(error = %e, "read model request failed");
            unavailable(api, "the read models are")
        }
    }
}

async fn detailed(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    document(&api, &api.settings.detailed_alias, &id, query.as_deref()).await
}

async fn summary(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    document(&api, &api.settings.summary_alias, &id, query.as_deref()).await
}

async fn events(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = no_query(query.as_deref()) {
        return *r;
    }
    let id = match cart_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    // A reader waits one request timeout of the store, retries included, then gets 503
    // with Retry-After, as when the read models are away. The store's own retry budget
    // (`retry_timeout`, minutes) is for the pipelines, which wait out an outage.
    let read = tokio::time::timeout(api.settings.cassandra.request_timeout, api.store.load(id));
    match read.await {
        Ok(Ok(events)) if events.is_empty() => {
            problem(StatusCode::NOT_FOUND, format!("no cart {id}"))
        }
        Ok(Ok(events)) => Json(json!({ "cart_id": id, "events": events })).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "event store read failed");
            unavailable(&api, "the event store is")
        }
        Err(_) => {
            tracing::warn!(
                cart = %id,
                timeout = ?api.settings.cassandra.request_timeout,
                "event store read did not finish within the request timeout"
            );
            unavailable(&api, "the event store is")
        }
    }
}
