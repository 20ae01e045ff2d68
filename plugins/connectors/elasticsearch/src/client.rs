//! The Elasticsearch operations salesflow needs: bulk index with external versions,
//! aliases, index creation and swapping, search, get.

use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::http::Method;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::indices::{IndicesCreateParts, IndicesExistsAliasParts};
use elasticsearch::{BulkParts, Elasticsearch};
use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{Backpressure, RetryPolicy};
use serde_json::{Value, json};

use crate::config::ElasticsearchSettings;

/// A failed request to Elasticsearch: what was being done, and the error underneath.
#[derive(Debug, thiserror::Error)]
#[error("{context}{}", .source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
pub struct EsError {
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EsError {
    fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }
}

fn err(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EsError {
    EsError {
        context: context.to_owned(),
        source: Some(e.into()),
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

/// A connected client.
#[derive(Clone)]
pub struct Client {
    es: Elasticsearch,
    retry_timeout: Duration,
    max_request_bytes: usize,
    /// Counts retried bulk requests (for the sink's metrics).
    pub retried: prometheus_client::metrics::counter::Counter,
}

impl Client {
    pub fn new(settings: &ElasticsearchSettings) -> Result<Self, EsError> {
        let url = url::Url::parse(&settings.url).map_err(|e| err("the Elasticsearch URL", e))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(settings.request_timeout)
            .disable_proxy();
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                password.expose().to_owned(),
            ));
        }
        let transport = builder
            .build()
            .map_err(|e| err("building the Elasticsearch client", e))?;
        Ok(Self {
            es: Elasticsearch::new(transport),
            retry_timeout: settings.retry_timeout,
            max_request_bytes: settings.max_request_bytes,
            retried: prometheus_client::metrics::counter::Counter::default(),
        })
    }

    pub fn raw(&self) -> &Elasticsearch {
        &self.es
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
        let mut body: Vec<Bytes> = Vec::with_capacity(pending.len() * 2);
        for &i in &pending {
            let d = &docs[i];
            let action = json!({ "index": {
                "_index": d.index, "_id": d.id, "version": d.version, "version_type": "external"
            }});
            body.push(Bytes::from(action.to_string()));
            body.push(d.source.clone());
        }
        // Only what is read back: a bulk response otherwise repeats every document's
        // index, id, version, shards and sequence number.
        let response = self
            .es
            .bulk(BulkParts::None)
            .filter_path(&["errors", "items.*.status", "items.*.error"])
            .body(body)
            .send()
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
        let body: Value = response.json().await.map_err(|e| Attempt {
            message: format!("reading the response: {e}"),
            transient: true,
        })?;
        let items = body["items"].as_array().cloned().unwrap_or_default();
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
            let result = &item["index"];
            let status = result["status"].as_u64().unwrap_or(0);
            let kind = result["error"]["type"].as_str().unwrap_or_default();
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
                        first_chars(&result["error"].to_string(), 500)
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
    pub async fn ensure_alias(&self, alias: &str) -> Result<(), EsError> {
        let exists = self
            .es
            .indices()
            .exists_alias(IndicesExistsAliasParts::Name(&[alias]))
            .send()
            .await
            .map_err(|e| err(&format!("checking alias {alias}"), e))?;
        if exists.status_code().is_success() {
            return Ok(());
        }
        let index = format!("{alias}-000001");
        let created = self
            .es
            .indices()
            .create(IndicesCreateParts::Index(&index))
            .body(json!({ "aliases": { alias: { "is_write_index": true } } }))
            .send()
            .await
            .map_err(|e| err(&format!("creating {index}"), e))?;
        let status = created.status_code();
        if status.is_success() {
            return Ok(());
        }
        let text = created.text().await.unwrap_or_default();
        // Another process created it first.
        if text.contains("resource_already_exists_exception") {
            return Ok(());
        }
        Err(EsError::new(format!(
            "creating {index} answered {status}: {}",
            first_chars(&text, 500)
        )))
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
            .es
            .send(
                method,
                path,
                HeaderMap::new(),
                Option::<&()>::None,
                body,
                None,
            )
            .await
            .map_err(|e| err(path, e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| err(path, e))?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }
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
