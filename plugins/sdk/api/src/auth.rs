//! API keys for the HTTP APIs: `auth = { api_keys_env = "NAME" }` on a source that serves
//! routes. The keys come from that environment variable (comma-separated, so that a key
//! can be rotated without downtime) and never from `pipeline.toml`; clients send
//! `Authorization: Bearer KEY` or `X-API-Key: KEY`. Anything else is answered 401 before
//! the request reaches the pipeline. Keys are compared in constant time and never logged,
//! counted by value or echoed.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::plugin::ConfigError;

/// Shortest key accepted: a guessable key is a misconfiguration, not a key.
pub const MIN_KEY_LENGTH: usize = 16;

/// `auth` of an API source.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The environment variable that holds the accepted keys, comma-separated (each at
    /// least 16 characters). Give ingest and query different variables.
    pub api_keys_env: String,
}

/// The accepted keys of one API.
pub struct ApiKeys(Vec<Secret>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl AuthSettings {
    /// Reads the keys from the environment. Errors name the variable, never a value.
    pub fn keys(&self) -> Result<ApiKeys, ConfigError> {
        self.keys_from(std::env::var(&self.api_keys_env).ok())
    }

    fn keys_from(&self, value: Option<String>) -> Result<ApiKeys, ConfigError> {
        let at = ["auth", "api_keys_env"];
        let name = &self.api_keys_env;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::at(
                &at,
                "must be an environment variable name ([A-Za-z0-9_]+)",
            ));
        }
        let Some(value) = value else {
            return Err(ConfigError::at(
                &at,
                format!("the environment variable {name} is not set (it holds the API keys)"),
            ));
        };
        let keys: Vec<Secret> = value
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        if keys.is_empty() {
            return Err(ConfigError::at(
                &at,
                format!("the environment variable {name} holds no key"),
            ));
        }
        if let Some(i) = keys.iter().position(|k| {
            k.expose().len() < MIN_KEY_LENGTH || !k.expose().bytes().all(|b| b.is_ascii_graphic())
        }) {
            return Err(ConfigError::at(
                &at,
                format!(
                    "key {} of {name} is shorter than {MIN_KEY_LENGTH} characters or not printable ASCII",
                    i + 1
                ),
            ));
        }
        Ok(ApiKeys(keys))
    }
}

impl ApiKeys {
    /// Whether `presented` is one of the keys (constant time in the key's bytes).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut found = subtle::Choice::from(0);
        for key in &self.0 {
            found |= key.expose().as_bytes().ct_eq(presented);
        }
        found.into()
    }
}

/// The key a request presents, if any.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        return bytes
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| bytes[7..].trim_ascii());
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

async fn check(State(keys): State<Arc<ApiKeys>>, request: Request, next: Next) -> Response {
    match presented(request.headers()) {
        Some(key) if keys.accepts(key) => next.run(request).await,
        found => {
            let error = if found.is_some() {
                "the API key is not valid"
            } else {
                "an API key is required: Authorization: Bearer KEY or X-API-Key: KEY"
            };
            let mut response = (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({ "error": error })),
            )
                .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"salesflow\""),
            );
            response
        }
    }
}

/// `router` answering 401 to requests without one of `keys`.
pub fn protect(router: Router, keys: ApiKeys) -> Router {
    router.layer(axum::middleware::from_fn_with_state(Arc::new(keys), check))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            api_keys_env: "SALESFLOW_TEST_KEYS".into(),
        }
    }

    #[test]
    fn keys_come_from_the_environment_and_errors_never_show_them() {
        let s = settings();
        let keys = s
            .keys_from(Some("0123456789abcdef, fedcba9876543210".into()))
            .unwrap();
        assert!(keys.accepts(b"0123456789abcdef"));
        assert!(keys.accepts(b"fedcba9876543210"));
        assert!(!keys.accepts(b"0123456789abcdeF"));
        assert!(!keys.accepts(b"0123456789abcde"));
        assert!(!keys.accepts(b""));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");

        let missing = s.keys_from(None).unwrap_err();
        assert!(missing.message.contains("SALESFLOW_TEST_KEYS is not set"));
        let short = s.keys_from(Some("hunter2".into())).unwrap_err();
        assert!(
            short
                .message
                .contains("key 1 of SALESFLOW_TEST_KEYS is shorter")
        );
        assert!(!short.message.contains("hunter2"));
        let empty = s.keys_from(Some(" , ".into())).unwrap_err();
        assert!(empty.message.contains("holds no key"));
        let bad_name = AuthSettings {
            api_keys_env: "NOT-A-NAME".into(),
        }
        .keys_from(Some("0123456789abcdef".into()))
        .unwrap_err();
        assert!(bad_name.message.contains("environment variable name"));
    }

    #[test]
    fn a_key_is_read_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", HeaderValue::from_static(" k1 "));
        assert_eq!(presented(&h), Some(&b"k1"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k2"));
        assert_eq!(presented(&h), Some(&b"k2"[..]), "Authorization wins");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  k3"),
        );
        assert_eq!(presented(&h), Some(&b"k3"[..]));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic azE6azI="),
        );
        assert_eq!(presented(&h), None, "only bearer tokens");
    }
}
