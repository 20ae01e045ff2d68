//! Loading `pipeline.toml`: the file, overridden by the environment (`SALESFLOW__A__B=v`
//! sets `a.b`, split on a double underscore) and by `--set a.b=v`, merged with figment.
//! Every problem found later is reported with where the offending key came from: the
//! file and line, the environment variable, or the `--set` argument.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use salesflow_plugin_api::schemars;
use serde::Deserialize;

/// A configuration problem at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<String>,
    pub message: String,
}

impl Problem {
    pub fn new(path: Vec<String>, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Env(String),
    Set(String),
}

/// The merged configuration, with what is needed to point at its sources.
pub struct Loaded {
    pub path: PathBuf,
    text: String,
    document: Option<toml_edit::Document<String>>,
    pub table: toml::Table,
    overrides: Vec<(Vec<String>, KeyOrigin)>,
}

pub const ENV_PREFIX: &str = "SALESFLOW__";

/// Reads and merges the configuration. Fails (with the file position) only when the file
/// cannot be read or is not TOML, or an override is malformed.
pub fn load(path: &Path, sets: &[String]) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let document = toml_edit::Document::parse(text.clone())
        .map_err(|e| format!("{}: not valid TOML: {e}", path.display()))?;

    // Environment values are typed by figment (`12345` becomes a number), except a
    // secret's: it stays the text it is, digits and leading zeros included.
    let env = Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(|key| !is_secret_path(key.as_str()));
    let figment = Figment::new().merge(Toml::string(&text)).merge(env);
    let mut table: toml::Table = figment
        .extract()
        .map_err(|e| format!("{}: {e}", path.display()))?;

    let mut overrides = Vec::new();
    for (name, value) in std::env::vars() {
        if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
            let key: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if is_secret_path(&key.join(".")) {
                set_path(&mut table, &key, toml::Value::String(value))
                    .map_err(|e| format!("environment variable {name}: {e}"))?;
            }
            overrides.push((key, KeyOrigin::Env(name.clone())));
        }
    }
    for set in sets {
        let shown = redact_set(set);
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| format!("--set {shown}: expected key.path=value"))?;
        let key: Vec<String> = key.trim().split('.').map(str::to_owned).collect();
        if key.iter().any(String::is_empty) {
            return Err(format!("--set {shown}: empty segment in the key path"));
        }
        let value = if is_secret_path(&key.join(".")) {
            // A secret is its text; `{ env = "NAME" }` still names a variable.
            match parse_value(value.trim()) {
                table @ toml::Value::Table(_) => table,
                _ => toml::Value::String(value.trim().to_owned()),
            }
        } else {
            parse_value(value.trim())
        };
        set_path(&mut table, &key, value).map_err(|e| format!("--set {shown}: {e}"))?;
        overrides.push((key, KeyOrigin::Set(shown)));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        text,
        document: Some(document),
        table,
        overrides,
    })
}

/// Whether a key path (dotted) names a secret: its last segment looks like one
/// (`password`, `api_key`, `sasl.password` inside `properties`, ...).
fn is_secret_path(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    let last = path.rsplit('.').next().unwrap_or(&path);
    salesflow_plugin_api::is_secret_key(last)
        || salesflow_plugin_api::is_secret_key(&path)
        || last.ends_with("key")
        || last.ends_with("keys")
}

/// A `--set` argument as it may be shown: the value of a secret's key replaced.
fn redact_set(set: &str) -> String {
    match set.split_once('=') {
        Some((key, _)) if is_secret_path(key.trim()) => format!("{key}=<redacted>"),
        _ => set.to_owned(),
    }
}

/// A `--set` value: TOML when it parses as a TOML value (`5`, `true`, `["a"]`, `"x"`),
/// otherwise the text itself.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().ok_or("empty key")?;
    let mut current = table;
    for (i, segment) in parents.iter().enumerate() {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", key[..=i].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

impl Loaded {
    /// Configuration from a string, for tests and `--config -`.
    pub fn from_str(name: &str, text: &str) -> Result<Self, String> {
        let document = toml_edit::Document::parse(text.to_owned())
            .map_err(|e| format!("{name}: not valid TOML: {e}"))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| format!("{name}: not valid TOML: {e}"))?;
        Ok(Self {
            path: PathBuf::from(name),
            text: text.to_owned(),
            document: Some(document),
            table,
            overrides: Vec::new(),
        })
    }

    /// `file:line: key.path: message`, or the override that set the key.
    pub fn describe(&self, problem: &Problem) -> String {
        let key = if problem.path.is_empty() {
            "(top level)".to_owned()
        } else {
            problem.path.join(".")
        };
        let origin = self
            .overrides
            .iter()
            .rev()
            .find(|(k, _)| problem.path.starts_with(k) || k.starts_with(&problem.path));
        let place = match origin {
            Some((_, KeyOrigin::Env(var))) => format!("environment variable {var}"),
            Some((_, KeyOrigin::Set(set))) => format!("--set {set}"),
            None => match self.line_of(&problem.path) {
                Some(line) => format!("{}:{line}", self.path.display()),
                None => self.path.display().to_string(),
            },
        };
        format!("{place}: {key}: {}", problem.message)
    }

    /// The line where the deepest existing part of `path` is written.
    pub fn line_of(&self, path: &[String]) -> Option<usize> {
        let document = self.document.as_ref()?;
        let mut table: &dyn toml_edit::TableLike = document.as_table();
        let mut span = None;
        for segment in path {
            let Some((key, item)) = table.get_key_value(segment) else {
                break;
            };
            span = key.span().or_else(|| item.span()).or(span);
            match item.as_table_like() {
                Some(next) => table = next,
                None => break,
            }
        }
        let start = span?.start;
        Some(
            self.text[..start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1,
        )
    }
}

/// The host's own sections: `[server]`, `[log]`, `[plugins]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Where the HTTP server (routes, `/health/*`, `/metrics`) listens.
    #[serde(default = "default_address")]
    #[schemars(with = "String")]
    pub address: std::net::SocketAddr,
    /// How long shutdown may take: sources stop, in-flight batches finish, sinks flush.
    #[serde(default = "default_grace", with = "salesflow_plugin_api::duration")]
    #[schemars(with = "String")]
    pub shutdown_grace: Duration,
    /// An `OpenAPI` document served at `/openapi.json` (relative to the config file).
    #[serde(default)]
    pub openapi: Option<std::path::PathBuf>,
    /// A client must send a request's head (line and headers) within this, or the
    /// connection is closed: slow clients cannot hold connections by trickling bytes.
    /// With TLS it also bounds the handshake.
    #[serde(
        default = "default_header_read_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub header_read_timeout: Duration,
    /// A whole request, body included, must be answered within this; past it the answer
    /// is 408. Longer than any source's own request timeout.
    #[serde(
        default = "default_request_timeout",
        with = "salesflow_plugin_api::duration"
    )]
    #[schemars(with = "String")]
    pub request_timeout: Duration,
    /// Most connections open at once; more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Serve HTTPS: PEM files, relative to the config file.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// `salesflow tap`: a sample of the live events leaving a component. Off by default.
    #[serde(default)]
    pub tap: TapSettings,
}

/// `[server.tap]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TapSettings {
    /// Serve `GET /tap/{pipeline}/{component}` (events as NDJSON).
    #[serde(default)]
    pub enabled: bool,
    /// Most events a watcher receives per second; the rest are skipped.
    #[serde(default = "default_tap_rate")]
    pub max_events_per_second: u32,
    /// Most events one request may ask for.
    #[serde(default = "default_tap_events")]
    pub max_events: u32,
    /// API keys for the tap, as for an API source: give it the Query API's variable to
    /// put the tap behind the same keys. Without it the tap is open to whoever reaches
    /// the server.
    #[serde(default)]
    pub auth: Option<salesflow_plugin_api::auth::AuthSettings>,
}

impl Default for TapSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            max_events_per_second: default_tap_rate(),
            max_events: default_tap_events(),
            auth: None,
        }
    }
}

fn default_tap_rate() -> u32 {
    100
}

fn default_tap_events() -> u32 {
    1000
}

/// `[server.tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain (PEM), leaf first.
    pub certificate: std::path::PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub private_key: std::path::PathBuf,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    10_000
}

fn default_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_grace() -> Duration {
    Duration::from_secs(30)
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            address: default_address(),
            shutdown_grace: default_grace(),
            openapi: None,
            header_read_timeout: default_header_read_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
            tls: None,
            tap: TapSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter: `info`, `salesflow=debug,rdkafka=warn`, ...
    #[serde(default = "default_level")]
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: LogFormat::Text,
        }
    }
}

/// The process's async runtime, sized once at start (a reload does not resize it).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Worker threads of the async runtime that runs every component of the process.
    /// Unset: tokio's default, one per core (or `TOKIO_WORKER_THREADS`). A process that
    /// runs only the domain or the projections spends its time waiting on the servers:
    /// on a machine it shares with them, one worker costs less CPU per order (fewer
    /// wake-ups, thread switches and cross-thread frees) than one per core. The
    /// librdkafka and blocking threads are not counted here.
    #[serde(default)]
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

/// tokio's own variable for the worker threads, read when `[runtime] worker_threads` is
/// unset.
pub use salesflow_plugin_api::command::TOKIO_WORKER_THREADS;

/// How many worker threads the runtime gets, and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerThreads {
    /// `[runtime] worker_threads`.
    Configured(usize),
    /// `TOKIO_WORKER_THREADS`, the setting being unset.
    Environment(usize),
    /// Neither: one per core the process may use (a container's CPU limit counts).
    PerCore(usize),
}

impl WorkerThreads {
    pub fn count(self) -> usize {
        match self {
            Self::Configured(n) | Self::Environment(n) | Self::PerCore(n) => n,
        }
    }
}

impl std::fmt::Display for WorkerThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Configured(n) => write!(f, "{n} worker thread(s)"),
            Self::Environment(n) => write!(f, "{n} worker thread(s), from {TOKIO_WORKER_THREADS}"),
            Self::PerCore(n) => write!(f, "one worker thread per core ({n})"),
        }
    }
}

impl RuntimeSettings {
    /// The runtime's size. tokio itself panics on a `TOKIO_WORKER_THREADS` that is not a
    /// whole number of at least 1; here that is a configuration problem, named.
    pub fn resolve(&self) -> Result<WorkerThreads, String> {
        if let Some(n) = self.worker_threads {
            return Ok(WorkerThreads::Configured(n.get()));
        }
        match salesflow_plugin_api::worker_threads_from_env() {
            Ok(Some(n)) => Ok(WorkerThreads::Environment(n.get())),
            Ok(None) => Ok(WorkerThreads::PerCore(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
            Err(why) => Err(format!("unset, so the environment decides, and {why}")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginDirSettings {
    /// A folder of run-time plugins (shared libraries); relative to the config file.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Parses a host section, reporting the offending key's path.
pub fn parse_section<T: serde::de::DeserializeOwned + Default>(
    table: &toml::Table,
    name: &str,
    problems: &mut Vec<Problem>,
) -> T {
    let Some(value) = table.get(name) else {
        return T::default();
    };
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(parsed) => parsed,
        Err(e) => {
            let mut path = vec![name.to_owned()];
            path.extend(e.path().iter().filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            }));
            problems.push(Problem::new(path, e.into_inner().to_string()));
            T::default()
        }
    }
}

/// The value at a key path, if any.
pub fn get<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(*first)?;
    for segment in rest {
        value = value.as_table()?.get(*segment)?;
    }
    Some(value)
}

/// Tables ordered by name.
pub type Tables = BTreeMap<String, toml::Table>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_point_at_the_key() {
        let text = "[server]\naddress = \"127.0.0.1:1\"\n\n[pipelines.p.sources.in]\ntype = \"http\"\npath = \"/x\"\n";
        let loaded = Loaded::from_str("t.toml", text).unwrap();
        let path = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(loaded.line_of(&path(&["server", "address"])), Some(2));
        assert_eq!(
            loaded.line_of(&path(&["pipelines", "p", "sources", "in", "path"])),
            Some(6)
        );
        // A missing key points at its deepest existing parent.
        assert_eq!(
            loaded.line_of(&path(&["pipelines", "p", "sources", "in", "nope"])),
            Some(4)
        );
        let problem = Problem::new(path(&["server", "address"]), "bad");
        assert_eq!(loaded.describe(&problem), "t.toml:2: server.address: bad");
    }

    #[test]
    fn secrets_given_with_set_are_never_shown_and_stay_text() {
        let dir = std::env::temp_dir().join(format!("salesflow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(
            &path,
            "[cassandra]\nnodes = [\"127.0.0.1:9042\"]\nusername = \"u\"\n",
        )
        .unwrap();
        let loaded = load(
            &path,
            &[
                "cassandra.password=0012345".into(),
                "kafka.properties.sasl.password=hunter22".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            get(&loaded.table, &["cassandra", "password"]),
            Some(&toml::Value::String("0012345".into())),
            "digits stay the secret's text"
        );
        let problem = Problem::new(vec!["cassandra".into()], "bad");
        let described = loaded.describe(&problem);
        assert!(!described.contains("0012345"), "{described}");
        assert!(
            described.contains("--set cassandra.password=<redacted>"),
            "{described}"
        );
        let problem = Problem::new(
            vec![
                "kafka".into(),
                "properties".into(),
                "sasl".into(),
                "password".into(),
            ],
            "bad",
        );
        assert!(!loaded.describe(&problem).contains("hunter22"));
        let e = load(&path, &["cassandra..password=hunter22".into()])
            .err()
            .unwrap();
        assert!(!e.contains("hunter22"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn set_values_parse_as_toml_or_text() {
        assert_eq!(parse_value("5"), toml::Value::Integer(5));
        assert_eq!(parse_value("[\"a\"]"), toml::Value::Array(vec!["a".into()]));
        assert_eq!(
            parse_value("127.0.0.1:9092"),
            toml::Value::String("127.0.0.1:9092".into())
        );
    }
}
