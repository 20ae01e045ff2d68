//! The Elasticsearch operations salesflow needs: bulk index with external versions,
//! aliases, index creation and swapping, search, get.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::Method;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{
    ConnectionPool, SingleNodeConnectionPool, Transport, TransportBuilder,
};
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsAliasParts};
use salesflow_plugin_api::bytes::{BufMut, Bytes, BytesMut};
use salesflow_plugin_api::futures::future::join_all;
use salesflow_plugin_api::{Backpressure, RetryPolicy};
use serde_json::{Value, json};

use crate::config::ElasticsearchSettings;
use crate::pool::NodePool;

/// The query of every bulk request: only what is read back. A bulk response otherwise
/// repeats every document's index, id, version, shards and sequence number.
const BULK_QUERY: [(&str, &str); 1] = [("filter_path", "errors,items.*.status,items.*.error")];

/// The longest a health check waits for each node: within the host's 4 s per check,
/// whatever `request_timeout` is, and never under 2 s, so that a health request's own
/// wait on the server (1 s) ends in its answer, not in our giving up on the node.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_TIMEOUT_MIN: Duration = Duration::from_secs(2);

/// How long a readiness check's health request waits for the targets on the server.
const HEALTH_WAIT: &str = "1s";

/// The path of a readiness check on `targets` (aliases or indices), for
/// [`Client::healthcheck`]: their health as the node answering sees it (`local`: no
/// elected cluster manager needed, as reads need none), answered 200 once every primary
/// shard is allocated (yellow or green), 408 after a second when one is not or a target
/// does not exist. With no targets, 200 whenever the node answers, whatever other
/// indices' health.
///
/// It is deliberately not a search. A `_count` every few seconds counts as search
/// traffic, so the indices never go search-idle: OpenSearch then refreshes each of them
/// every second while they are written, nobody reading, which cost it a fifth of its
/// CPU per single order in the end-to-end benchmark. It needs the cluster privilege to
/// read health (`monitor`; OpenSearch's `cluster:monitor/health`).
pub fn readiness_path(targets: &[&str]) -> String {
    if targets.is_empty() {
        format!("/_cluster/health?local=true&timeout={HEALTH_WAIT}")
    } else {
        format!(
            "/_cluster/health/{}?local=true&wait_for_status=yellow&timeout={HEALTH_WAIT}",
            targets.join(",")
        )
    }
}

/// A failed request to Elasticsearch: what was being done, and the error underneath with
/// every cause below it ("error sending request" alone does not say whether the request
/// timed out or the connection was closed).
#[derive(Debug, thiserror::Error)]
#[error("{context}{}", .source.as_deref().map(|s| causes(s)).unwrap_or_default())]
pub struct EsError {
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The server did not answer, or answered that it cannot serve yet (429, 5xx).
    unavailable: bool,
}

/// ": error: its cause: the cause's cause", each level once (a wrapper that repeats its
/// source's words in its own is not said twice).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let words = e.to_string();
        if !text.ends_with(&words) {
            text.push_str(": ");
            text.push_str(&words);
        }
        next = e.source();
    }
    text
}

impl EsError {
    fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
            unavailable: false,
        }
    }

    /// Whether the server did not answer, or answered that it cannot serve yet (429,
    /// 5xx): trying again later may succeed. Otherwise it answered with a refusal.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    fn unavailable(mut self) -> Self {
        self.unavailable = true;
        self
    }
}

fn err(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EsError {
    EsError {
        context: context.to_owned(),
        source: Some(e.into()),
        unavailable: false,
    }
}

/// One bulk attempt's failure, classified.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Attempt {
    message: String,
    transient: bool,
}

/// One document to index.
pub struct Doc {
    pub index: String,
    pub id: String,
    pub version: u64,
    pub source: Bytes,
}

/// The action line of a document in a bulk request.
#[derive(serde::Serialize)]
struct BulkAction<'a> {
    index: IndexAction<'a>,
}

#[derive(serde::Serialize)]
struct IndexAction<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
    version: u64,
    version_type: &'static str,
}

/// The body of a bulk request for the documents at `pending`: each one's action line and
/// source, newline-delimited, in one buffer of the body's exact length.
///
/// The transport sends `Bytes` as they are. Given the lines instead (an `NdBody`), it
/// copied them into a buffer grown by doubling from 1 KiB, so every request in flight
/// held a second copy of its documents in up to twice their length (41 of the
/// projections' 176 MiB of heap at its peak under `scripts/bench`, in a dhat profile).
fn bulk_body(docs: &[Doc], pending: &[usize]) -> Result<Bytes, Attempt> {
    let mut actions = Vec::with_capacity(pending.len() * 128);
    let mut ends = Vec::with_capacity(pending.len());
    for &i in pending {
        let d = &docs[i];
        serde_json::to_writer(
            &mut actions,
            &BulkAction {
                index: IndexAction {
                    index: &d.index,
                    id: &d.id,
                    version: d.version,
                    version_type: "external",
                },
            },
        )
        .map_err(|e| Attempt {
            message: format!("writing the action of document {}: {e}", d.id),
            transient: false,
        })?;
        ends.push(actions.len());
    }
    // A line ends with a newline unless it has one, as with the client's `NdBody`; but an
    // empty source keeps a line of its own (`NdBody` looked at the action's newline, and
    // the next action became its source).
    let newline = |line: &[u8]| usize::from(line.last() != Some(&b'\n'));
    let length = actions.len()
        + pending
            .iter()
            .map(|&i| docs[i].source.len() + newline(&docs[i].source) + 1)
            .sum::<usize>();
    let mut body = BytesMut::with_capacity(length);
    let mut start = 0;
    for (&i, &end) in pending.iter().zip(&ends) {
        body.put_slice(&actions[start..end]);
        body.put_u8(b'\n');
        let source = &docs[i].source;
        body.put_slice(source);
        if newline(source) == 1 {
            body.put_u8(b'\n');
        }
        start = end;
    }
    debug_assert_eq!(body.len(), length);
    Ok(body.freeze())
}

/// What a bulk response says (its [`BULK_QUERY`] keeps nothing else): each document's
/// status, and its error when it has one. Read into these types, not a `Value`: a
/// response of hundreds of items is read for every bulk request.
#[derive(serde::Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<BulkItem>,
}

/// One item of a bulk response, under the name of its action (`index`, the only one
/// sent); an item without it counts as status 0, refused with what it says.
#[derive(serde::Deserialize)]
struct BulkItem {
    #[serde(default)]
    index: ItemResult,
}

#[derive(Default, serde::Deserialize)]
struct ItemResult {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Value,
}

/// A connected client: requests go round-robin over the configured nodes, a node that
/// cannot be reached skipped for a while ([`NodePool`]).
#[derive(Clone)]
pub struct Client {
    es: Elasticsearch,
    pool: NodePool,
    /// One client per node (the main one when there is only one): health checks ask
    /// every node, not the next in turn.
    probes: Arc<[Elasticsearch]>,
    /// The nodes the last health check found not answering, as logged.
    unhealthy: Arc<Mutex<String>>,
    request_timeout: Duration,
    retry_timeout: Duration,
    max_request_bytes: usize,
    /// Counts retried bulk requests (for the sink's metrics).
    pub retried: prometheus_client::metrics::counter::Counter,
}

/// What a request's failure says about the node it went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// It could not connect: nothing was sent, so the request may go to another node.
    NotConnected,
    /// It timed out: the node is skipped, but the request may have been carried out.
    TimedOut,
    /// Anything else: says nothing about the node.
    Other,
}

impl Client {
    pub fn new(settings: &ElasticsearchSettings) -> Result<Self, EsError> {
        let nodes = settings
            .nodes()
            .map_err(|e| err("the Elasticsearch nodes", e))?;
        let pool = NodePool::new(nodes.clone())
            .ok_or_else(|| EsError::new("no Elasticsearch node is configured"))?;
        let es = Elasticsearch::new(transport(pool.clone(), settings)?);
        let probes = if nodes.len() == 1 {
            vec![es.clone()]
        } else {
            nodes
                .into_iter()
                .map(|url| {
                    transport(SingleNodeConnectionPool::new(url), settings).map(Elasticsearch::new)
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            es,
            pool,
            probes: probes.into(),
            unhealthy: Arc::default(),
            request_timeout: settings.request_timeout,
            retry_timeout: settings.retry_timeout,
            max_request_bytes: settings.max_request_bytes,
            retried: prometheus_client::metrics::counter::Counter::default(),
        })
    }

    /// The client underneath. Its requests take turns over the nodes too, but their
    /// failures are not reported to the pool, nor sent to another node: prefer
    /// [`Client::call`].
    pub fn raw(&self) -> &Elasticsearch {
        &self.es
    }

    /// The nodes requests go to, and which of them are skipped.
    pub fn pool(&self) -> &NodePool {
        &self.pool
    }

    /// Registers the per-node metrics (see [`NodePool::register_metrics`]).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.pool.register_metrics(registry);
    }

    /// Tells the pool what a request's failure says about its node; see [`Failure`].
    fn report(&self, error: &elasticsearch::Error) -> Failure {
        let (failure, url) = classify_with_url(error);
        if let (Failure::NotConnected | Failure::TimedOut, Some(url)) = (failure, url) {
            self.pool.mark_dead(url);
        }
        failure
    }

    /// Sends a request made by `send`, reporting its node's health to the pool: a node
    /// that answers is up; one that cannot be connected to is skipped, and the request
    /// goes to the next node (nothing was sent), at most once per node.
    async fn send<F, Fut>(&self, mut send: F) -> Result<Response, elasticsearch::Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Response, elasticsearch::Error>>,
    {
        let mut tries = self.pool.len();
        loop {
            match send().await {
                Ok(response) => {
                    // Which node each request went to, when asked for (no cost otherwise).
                    tracing::trace!(
                        url = %response.url(),
                        status = %response.status_code(),
                        "Elasticsearch answered"
                    );
                    self.pool.mark_alive(response.url());
                    return Ok(response);
                }
                Err(e) => {
                    tries -= 1;
                    if self.report(&e) == Failure::NotConnected && tries > 0 {
                        tracing::debug!(error = %e, "trying the next Elasticsearch node");
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Indexes documents with external versions, in requests of at most
    /// `max_request_bytes`. A version conflict means the index already holds this version
    /// or a newer one: that document is done. Retryable failures (429, 5xx, transport
    /// errors, and an index closed to writes or gone — an alias switched by a replay,
    /// which the next attempt follows) are retried with backoff until the retry timeout;
    /// documents refused for good (a mapping error) are reported in the outcome, and the
    /// rest is written.
    pub async fn bulk(&self, docs: &[Doc]) -> Result<BulkOutcome, EsError> {
        self.bulk_watched(docs, &Backpressure::default()).await
    }

    /// [`Client::bulk`], raising `pressure` whenever the cluster pushes back: a 429 or
    /// 503 for the request or for some of its documents, or a request that timed out.
    pub async fn bulk_watched(
        &self,
        docs: &[Doc],
        pressure: &Backpressure,
    ) -> Result<BulkOutcome, EsError> {
        let mut outcome = BulkOutcome::default();
        let mut start = 0;
        while start < docs.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < docs.len() {
                let size = docs[end].source.len() + docs[end].index.len() + docs[end].id.len() + 96;
                if end > start && bytes + size > self.max_request_bytes {
                    break;
                }
                bytes += size;
                end += 1;
            }
            let part = self.bulk_request(&docs[start..end], pressure).await?;
            outcome.indexed += part.indexed;
            outcome.stale += part.stale;
            outcome
                .refused
                .extend(part.refused.into_iter().map(|(i, why)| (i + start, why)));
            start = end;
        }
        Ok(outcome)
    }

    /// One bulk request, retried as [`Client::bulk`] says with the shared policy (100 ms
    /// doubling to 10 s apart, with jitter): each attempt sends the documents still
    /// pending.
    async fn bulk_request(
        &self,
        docs: &[Doc],
        pressure: &Backpressure,
    ) -> Result<BulkOutcome, EsError> {
        let state = std::sync::Mutex::new((
            (0..docs.len()).collect::<Vec<usize>>(),
            BulkOutcome::default(),
        ));
        RetryPolicy::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            self.retry_timeout,
        )
        .run(
            "bulk request",
            || self.bulk_attempt(docs, &state, pressure),
            |a: &Attempt| a.transient,
            &self.retried,
        )
        .await
        .map_err(|e| err("indexing", e))?;
        let (_, mut outcome) = state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outcome.refused.sort_by_key(|(i, _)| *i);
        Ok(outcome)
    }

    /// Sends the pending documents once; what is done leaves `state`'s pending list.
    async fn bulk_attempt(
        &self,
        docs: &[Doc],
        state: &std::sync::Mutex<(Vec<usize>, BulkOutcome)>,
        pressure: &Backpressure,
    ) -> Result<(), Attempt> {
        let lock = || {
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let pending = lock().0.clone();
        let body = bulk_body(docs, &pending)?;
        let response = self
            .send(|| {
                self.es.send(
                    Method::Post,
                    "/_bulk",
                    HeaderMap::new(),
                    Some(&BULK_QUERY),
                    Some(&body),
                    None,
                )
            })
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    pressure.signal();
                }
                Attempt {
                    message: e.to_string(),
                    transient: true,
                }
            })?;
        let status = response.status_code();
        if matches!(status.as_u16(), 429 | 503) {
            pressure.signal();
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(Attempt {
                message: format!("answered {status}: {}", first_chars(&text, 500)),
                transient: status.as_u16() == 429 || status.is_server_error(),
            });
        }
        let body: BulkResponse = response.json().await.map_err(|e| {
            self.report(&e);
            Attempt {
                message: format!("reading the response: {e}"),
                transient: true,
            }
        })?;
        let items = body.items;
        if items.len() != pending.len() {
            return Err(Attempt {
                message: format!(
                    "the response has {} items for {} documents",
                    items.len(),
                    pending.len()
                ),
                transient: false,
            });
        }
        let mut retry = Vec::new();
        let mut throttled = false;
        let mut state = lock();
        for (item, &i) in items.iter().zip(&pending) {
            let result = &item.index;
            let status = result.status;
            let kind = result.error["type"].as_str().unwrap_or_default();
            match status {
                200..=299 => state.1.indexed += 1,
                409 => state.1.stale += 1,
                429 | 500..=599 => {
                    throttled |= matches!(status, 429 | 503);
                    retry.push(i);
                }
                // An index closed to writes or gone: an alias switched by a replay; the
                // next attempt goes through the alias to the new index.
                403 if kind == "cluster_block_exception" => retry.push(i),
                404 if kind == "index_not_found_exception" => retry.push(i),
                _ => state.1.refused.push((
                    i,
                    format!(
                        "document {} refused by {}: {}",
                        docs[i].id,
                        docs[i].index,
                        first_chars(&result.error.to_string(), 500)
                    ),
                )),
            }
        }
        let left = retry.len();
        if throttled {
            pressure.signal();
        }
        state.0 = retry;
        if left == 0 {
            Ok(())
        } else {
            Err(Attempt {
                message: format!("{left} documents not indexed yet (overloaded or moving)"),
                transient: true,
            })
        }
    }

    /// Makes sure `alias` exists, creating `<alias>-000001` as its write index if not.
    /// An error says whether the server was unavailable ([`EsError::is_unavailable`]).
    pub async fn ensure_alias(&self, alias: &str) -> Result<(), EsError> {
        let names = [alias];
        let indices = self.es.indices();
        let exists = self
            .send(|| {
                indices
                    .exists_alias(IndicesExistsAliasParts::Name(&names))
                    .send()
            })
            .await
            .map_err(|e| err(&format!("checking alias {alias}"), e).unavailable())?;
        if exists.status_code().is_success() {
            return Ok(());
        }
        let index = format!("{alias}-000001");
        let body = json!({ "aliases": { alias: { "is_write_index": true } } });
        let created = self
            .send(|| {
                indices
                    .create(IndicesCreateParts::Index(&index))
                    .body(body.clone())
                    .send()
            })
            .await
            .map_err(|e| err(&format!("creating {index}"), e).unavailable())?;
        let status = created.status_code();
        if status.is_success() {
            return Ok(());
        }
        let text = created.text().await.unwrap_or_default();
        // Another process created it first.
        if text.contains("resource_already_exists_exception") {
            return Ok(());
        }
        let refused = EsError::new(format!(
            "creating {index} answered {status}: {}",
            first_chars(&text, 500)
        ));
        Err(if status.as_u16() == 429 || status.is_server_error() {
            refused.unavailable()
        } else {
            refused
        })
    }

    /// A request with a JSON body to a path, answered with JSON (status and body).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), EsError> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let response = self
            .send(|| {
                self.es.send(
                    method,
                    path,
                    HeaderMap::new(),
                    Option::<&()>::None,
                    body.as_ref(),
                    None,
                )
            })
            .await
            .map_err(|e| err(path, e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| {
            self.report(&e);
            err(path, e)
        })?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// Asks every node `GET path` at once (each within 3 s at most), telling the pool
    /// which answer: each node's URL (without credentials) and whether it answered 200,
    /// or what it did instead.
    pub async fn node_health(&self, path: &str) -> Vec<(String, Result<(), String>)> {
        let timeout = self.request_timeout.clamp(PROBE_TIMEOUT_MIN, PROBE_TIMEOUT);
        // Named without its query: the error must fit the readiness answer's 200
        // characters with the node's URL before it.
        let shown = path.split('?').next().unwrap_or(path);
        let probes = self.probes.iter().enumerate().map(|(i, es)| async move {
            let result = es
                .send(
                    Method::Get,
                    path,
                    HeaderMap::new(),
                    Option::<&()>::None,
                    Option::<&[u8]>::None,
                    Some(timeout),
                )
                .await;
            let health = match result {
                Ok(response) => {
                    self.pool.mark_alive_index(i);
                    let status = response.status_code();
                    if status.as_u16() == 200 {
                        Ok(())
                    } else {
                        // The status and the error's type (or, from a health request,
                        // the health: "red") say enough; the rest of the body (which may
                        // echo cluster details) stays out of the readiness answer.
                        let body: Value = response.json().await.unwrap_or_default();
                        let kind = match (body["error"]["type"].as_str(), body["status"].as_str()) {
                            (Some(kind), _) => kind.to_owned(),
                            (None, Some(health)) => format!(
                                "health {health} after {HEALTH_WAIT}: an index missing or a primary shard not allocated"
                            ),
                            (None, None) => "unknown".to_owned(),
                        };
                        Err(format!("{shown} answered {status} ({kind})"))
                    }
                }
                Err(e) => {
                    let failure = self.report_node(i, &e);
                    Err(match failure {
                        Failure::NotConnected => format!("{shown}: cannot connect"),
                        Failure::TimedOut => format!("{shown}: no answer within {timeout:?}"),
                        Failure::Other => format!("{shown}: the request failed"),
                    })
                }
            };
            (self.pool.name(i).to_owned(), health)
        });
        join_all(probes).await
    }

    /// A health check over every node ([`Client::node_health`]): healthy while at least
    /// one node answers `path` with 200. The nodes that do not are logged (a warning
    /// when that list changes) and named in the error when none answers.
    pub async fn healthcheck(&self, path: &str) -> Result<(), String> {
        let nodes = self.node_health(path).await;
        let failing: Vec<String> = nodes
            .iter()
            .filter_map(|(node, health)| health.as_ref().err().map(|why| format!("{node}: {why}")))
            .collect();
        let answering = nodes.len() - failing.len();
        let failing = failing.join("; ");
        {
            let mut last = self
                .unhealthy
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last != failing {
                if failing.is_empty() {
                    tracing::info!("every Elasticsearch node answers again");
                } else if answering > 0 {
                    tracing::warn!(
                        answering,
                        failing = %failing,
                        "some Elasticsearch nodes do not answer; the others serve"
                    );
                }
                last.clone_from(&failing);
            }
        }
        match answering {
            0 if nodes.len() == 1 => Err(failing),
            0 => Err(format!("no Elasticsearch node answers: {failing}")),
            _ => Ok(()),
        }
    }

    /// [`Client::report`] for a request sent to node `i` by its own client.
    fn report_node(&self, i: usize, error: &elasticsearch::Error) -> Failure {
        let failure = classify(error);
        if failure != Failure::Other {
            self.pool.mark_dead_index(i);
        }
        failure
    }
}

/// What a request's failure says about its node, and the URL it was sent to.
fn classify_with_url(error: &elasticsearch::Error) -> (Failure, Option<&url::Url>) {
    let Some(http) =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<reqwest::Error>())
    else {
        return (Failure::Other, None);
    };
    let failure = if http.is_connect() {
        Failure::NotConnected
    } else if http.is_timeout() {
        Failure::TimedOut
    } else {
        Failure::Other
    };
    (failure, http.url())
}

fn classify(error: &elasticsearch::Error) -> Failure {
    classify_with_url(error).0
}

/// A transport over `pool` with the settings' timeout and credentials.
fn transport<P>(pool: P, settings: &ElasticsearchSettings) -> Result<Transport, EsError>
where
    P: ConnectionPool + Debug + Clone + Send + 'static,
{
    let mut builder = TransportBuilder::new(pool)
        .timeout(settings.request_timeout)
        .disable_proxy();
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        builder = builder.auth(Credentials::Basic(
            user.clone(),
            password.expose().to_owned(),
        ));
    }
    builder
        .build()
        .map_err(|e| err("building the Elasticsearch client", e))
}

/// What a bulk write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BulkOutcome {
    pub indexed: usize,
    /// Documents whose version was not newer than the indexed one.
    pub stale: usize,
    /// Documents refused for good (position in the write, why).
    pub refused: Vec<(usize, String)>,
}

/// At most `n` characters of a text.
fn first_chars(text: &str, n: usize) -> &str {
    text.char_indices()
        .nth(n)
        .map_or(text, |(cut, _)| &text[..cut])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use salesflow_plugin_api::Settings;
    use salesflow_plugin_api::toml;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A node that answers every request `200 {"count":0}`, and how many it answered.
    async fn fake_node() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&answered);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    // Requests without a body: each ends with its head.
                    loop {
                        let n = socket.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buffer[..n]);
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let body = r#"{"count":0}"#;
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            socket.write_all(answer.as_bytes()).await.unwrap();
                        }
                    }
                });
            }
        });
        (url, answered)
    }

    /// A URL nothing listens on.
    fn dead_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    fn client(urls: &[&str]) -> Client {
        let list = urls
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let settings = ElasticsearchSettings::from_table(
            &toml::from_str(&format!("urls = [{list}]\nrequest_timeout = \"2s\"")).unwrap(),
        )
        .unwrap();
        Client::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn a_failed_request_names_its_cause_not_only_the_url() {
        // A node that takes the request and never answers: past `request_timeout` (2 s)
        // the error must say it timed out, not just "error sending request".
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            // Held open until the test ends.
            std::future::pending::<()>().await;
            drop(socket);
        });
        let error = client(&[&url])
            .call(Method::Get, "/_count", None)
            .await
            .unwrap_err()
            .to_string();
        silent.abort();
        assert!(
            error.starts_with("/_count: error sending request"),
            "{error}"
        );
        assert!(error.contains("timed out"), "{error}");
    }

    #[tokio::test]
    async fn a_request_that_cannot_connect_goes_to_the_next_node_which_is_then_skipped() {
        let dead = dead_url();
        let (live, answered) = fake_node().await;
        let client = client(&[&dead, &live]);
        // The first request in turn goes to the dead node, and on to the live one.
        for _ in 0..4 {
            let (status, body) = client.call(Method::Get, "/_count", None).await.unwrap();
            assert_eq!((status, body["count"].as_u64()), (200, Some(0)));
        }
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 4);
        let status = client.pool().status();
        assert!(!status[0].up && status[0].failures >= 1, "{status:?}");
        assert!(status[1].up, "{status:?}");
        // The metrics say where the requests went: every one to the live node, and the
        // dead one tried once (again only if a second passed, its back-off).
        let mut registry = prometheus_client::registry::Registry::default();
        client.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(&format!(
                "salesflow_elasticsearch_requests_total{{node=\"{dead}\"}} "
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "salesflow_elasticsearch_requests_total{{node=\"{live}\"}} 4"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn healthy_while_one_node_answers_naming_those_that_do_not() {
        let dead = dead_url();
        let (live, _) = fake_node().await;
        let client = client(&[&dead, &live]);
        let nodes = client.node_health("/_all/_count").await;
        assert_eq!(nodes[0].0, dead);
        assert_eq!(nodes[0].1, Err("/_all/_count: cannot connect".to_owned()));
        assert_eq!(nodes[1], (live.clone(), Ok(())));
        // The check told the pool: the dead node is skipped.
        assert!(!client.pool().status()[0].up);
        assert_eq!(client.healthcheck("/_all/_count").await, Ok(()));

        let other_dead = dead_url();
        let down = super::tests::client(&[&dead, &other_dead]);
        let error = down.healthcheck("/_all/_count").await.unwrap_err();
        assert_eq!(
            error,
            format!(
                "no Elasticsearch node answers: {dead}: /_all/_count: cannot connect; \
                 {other_dead}: /_all/_count: cannot connect"
            )
        );
        // Every node down: requests are still sent (and fail for what they are).
        let failed = down.call(Method::Get, "/_count", None).await.unwrap_err();
        assert!(failed.to_string().starts_with("/_count: "), "{failed}");
    }

    #[test]
    fn readiness_asks_the_targets_health_and_never_searches() {
        assert_eq!(
            readiness_path(&["carts-detailed", "carts-summary"]),
            "/_cluster/health/carts-detailed,carts-summary?local=true&wait_for_status=yellow&timeout=1s"
        );
        assert_eq!(
            readiness_path(&["one"]),
            "/_cluster/health/one?local=true&wait_for_status=yellow&timeout=1s"
        );
        // No targets: the node answering is enough, whatever other indices' health.
        assert_eq!(
            readiness_path(&[]),
            "/_cluster/health?local=true&timeout=1s"
        );
    }

    /// The body the transport sends as it is: each pending document's action line and
    /// source, framed as the client's `NdBody` framed them (a source's own final newline
    /// not doubled), and nothing of the documents not pending. An empty source keeps a
    /// line of its own, where `NdBody` ran it into the next action.
    #[test]
    fn a_bulk_body_is_each_pending_documents_action_and_source_one_line_each() {
        use elasticsearch::http::request::{Body, NdBody};

        let doc = |id: &str, source: &str| Doc {
            index: "carts".into(),
            id: id.into(),
            version: 7,
            source: Bytes::from(source.to_owned()),
        };
        let docs = [
            doc("a", r#"{"n":1}"#),
            doc("b", r#"{"n":2}"#),
            doc("c", "{\"n\":3}\n"),
            doc("d", ""),
        ];
        let ndbody = |pending: &[usize]| {
            let mut lines = Vec::new();
            for &i in pending {
                let d = &docs[i];
                lines.push(Bytes::from(
                    serde_json::to_vec(&BulkAction {
                        index: IndexAction {
                            index: &d.index,
                            id: &d.id,
                            version: d.version,
                            version_type: "external",
                        },
                    })
                    .unwrap(),
                ));
                lines.push(d.source.clone());
            }
            let mut bytes = BytesMut::new();
            NdBody::new(lines).write(&mut bytes).unwrap();
            bytes
        };
        let body = |pending: &[usize]| bulk_body(&docs, pending).map_err(|a| a.message).unwrap();
        assert_eq!(body(&[0, 2]), ndbody(&[0, 2]));
        assert_eq!(body(&[0, 1, 2]), ndbody(&[0, 1, 2]));
        assert!(body(&[]).is_empty());
        assert_eq!(
            std::str::from_utf8(&body(&[3, 0])).unwrap(),
            format!(
                "{}\n{}",
                std::str::from_utf8(&ndbody(&[3])).unwrap(),
                std::str::from_utf8(&ndbody(&[0])).unwrap()
            ),
            "an empty source on a line of its own"
        );
    }
}
