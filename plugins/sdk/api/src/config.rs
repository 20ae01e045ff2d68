//! Setting types shared by plugins.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret (password, API key, token). Never printed: `Debug` and `Display` show
/// `<redacted>`, so it cannot leak into logs, errors or `salesflow check` output. Written
/// as `{ env = "NAME" }` it is read from that environment variable (or give the value
/// through `SALESFLOW__...`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must hand it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret as written in the configuration: the value itself, or `{ env = "NAME" }` to
/// read it from the environment when the configuration is loaded (keeping it out of
/// files and of `--set` arguments that `ps` shows).
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretSource {
    Value(String),
    Env { env: String },
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match SecretSource::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "a secret is a string or { env = \"NAME\" } (an environment variable)",
            )
        })? {
            SecretSource::Value(value) => Ok(Secret(value)),
            SecretSource::Env { env } => match std::env::var(&env) {
                Ok(value) if !value.is_empty() => Ok(Secret(value)),
                Ok(_) => Err(serde::de::Error::custom(format!(
                    "the environment variable {env} is empty"
                ))),
                Err(_) => Err(serde::de::Error::custom(format!(
                    "the environment variable {env} is not set"
                ))),
            },
        }
    }
}

impl schemars::JsonSchema for Secret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Secret".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                { "type": "string" },
                {
                    "type": "object",
                    "properties": { "env": { "type": "string" } },
                    "required": ["env"],
                    "additionalProperties": false
                }
            ],
            "writeOnly": true,
            "description": "A secret: the value, or { env = \"NAME\" } to read it from the environment. Never logged or printed."
        })
    }
}

/// Whether `name` may name a pipeline, a component or a plugin: one or more of
/// `[a-zA-Z0-9_-]` (they become metric labels, paths and log fields).
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What [`is_name`] takes, for messages.
pub const NAME_RULE: &str = "[a-zA-Z0-9_-]+";

/// The most a setting that sizes a semaphore (connections, requests in flight) may say:
/// tokio's semaphore panics past 2^61 - 1 permits, and no process here holds a million.
pub const MAX_PERMITS: usize = 1_000_000;

/// What a semaphore-sized setting outside 1..=[`MAX_PERMITS`] is told.
pub const PERMITS_RULE: &str = "must be between 1 and 1000000";

/// Keys whose values are secrets in free-form property maps (librdkafka properties):
/// their values are redacted wherever the map is shown.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "key.pem",
        "keystore",
        "private",
    ]
    .iter()
    .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permits_rule_says_the_bound() {
        assert_eq!(PERMITS_RULE, format!("must be between 1 and {MAX_PERMITS}"));
    }

    #[test]
    fn secrets_come_from_the_value_or_the_environment() {
        #[derive(Deserialize)]
        struct S {
            password: Secret,
        }
        let direct: S = toml::from_str("password = \"p\"").unwrap();
        assert_eq!(direct.password.expose(), "p");
        // PATH is set in every test environment; its value is not shown on error either.
        let from_env: S = toml::from_str("password = { env = \"PATH\" }").unwrap();
        assert_eq!(from_env.password.expose(), std::env::var("PATH").unwrap());
        let missing = toml::from_str::<S>("password = { env = \"SALESFLOW_NO_SUCH_VAR\" }")
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains("SALESFLOW_NO_SUCH_VAR is not set"),
            "{missing}"
        );
        let wrong = toml::from_str::<S>("password = 3")
            .err()
            .unwrap()
            .to_string();
        assert!(wrong.contains("a secret is a string or"), "{wrong}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_keys_are_recognised() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_key("bootstrap.servers"));
    }
}
