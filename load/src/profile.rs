//! Load profiles: TOML files under `load/profiles/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seeds the generated data (carts, orders, scenario choices); with the same seed and
    /// `run_id`, a run sends the same requests.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Sent but not recorded before the first step, at the first step's load.
    #[serde(default, with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub data: Data,
    pub scenarios: Vec<Scenario>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub thresholds: Vec<Threshold>,
    #[serde(default)]
    pub freshness: Freshness,
    #[serde(default)]
    pub reconcile: Reconcile,
    #[serde(default)]
    pub report: Report,
}

fn default_seed() -> u64 {
    42
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The Command API: one base URL, or a list of several processes' (orders go
    /// round-robin over them).
    #[serde(default = "default_apis")]
    pub command_api: Urls,
    #[serde(default = "default_api")]
    pub query_api: String,
    #[serde(default = "default_kafka")]
    pub kafka_bootstrap: String,
    #[serde(default = "default_orders_topic")]
    pub orders_topic: String,
    #[serde(default = "default_cassandra")]
    pub cassandra: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most requests in flight at once (open model): beyond it a scheduled request is
    /// counted as `dropped` rather than queued without bound.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A PEM certificate (a CA's, or the server's own self-signed one) trusted for
    /// `https://` targets besides the usual roots.
    #[serde(default)]
    pub ca_certificate: Option<PathBuf>,
    /// The environment variable holding the Command API's key (sent as
    /// `Authorization: Bearer KEY`); when it is unset, no key is sent. Keys never go in a
    /// profile or on the command line.
    #[serde(default = "default_ingest_key_env")]
    pub ingest_key_env: String,
    /// The same for the Query API (the reconciliation reads through it too).
    #[serde(default = "default_query_key_env")]
    pub query_key_env: String,
}

fn default_ingest_key_env() -> String {
    "SALESFLOW_LOAD_INGEST_KEY".into()
}
fn default_query_key_env() -> String {
    "SALESFLOW_LOAD_QUERY_KEY".into()
}

impl Target {
    /// An HTTP client for the targets: the given timeout, and the profile's certificate
    /// trusted when there is one.
    pub fn client(&self, timeout: Duration, idle_per_host: usize) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(idle_per_host);
        if let Some(path) = &self.ca_certificate {
            let pem = std::fs::read(path)
                .with_context(|| format!("target.ca_certificate {}", path.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem).with_context(|| {
                format!(
                    "target.ca_certificate {}: not a PEM certificate",
                    path.display()
                )
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        Ok(builder.build()?)
    }

    /// The Command API's key and the Query API's, from their environment variables.
    pub fn keys(&self) -> Result<Keys> {
        let read = |name: &str| -> Result<Option<String>> {
            match std::env::var(name) {
                Ok(key) if key.trim().is_empty() => {
                    bail!("{name} is set but empty: unset it to send no key")
                }
                Ok(key) => Ok(Some(key.trim().to_owned())),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not UTF-8"),
            }
        };
        Ok(Keys {
            ingest: read(&self.ingest_key_env)?,
            query: read(&self.query_key_env)?,
        })
    }
}

/// One base URL or several, each `http://` or `https://` (without a trailing `/`):
/// written as a string or a list of strings in a profile, and as URLs separated by
/// commas on the command line. Requests spread over them take turns ([`Urls::at`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urls(Vec<String>);

impl Urls {
    /// Checks `urls`: at least one, each an `http://` or `https://` URL.
    pub fn new(urls: Vec<String>) -> Result<Self> {
        if urls.is_empty() {
            bail!("no URL given: at least one is needed");
        }
        let mut checked = Vec::with_capacity(urls.len());
        for (i, url) in urls.into_iter().enumerate() {
            let trimmed = url.trim().trim_end_matches('/');
            let parsed = reqwest::Url::parse(trimmed)
                .with_context(|| format!("URL {} ({url:?}) is not a URL", i + 1))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("URL {} ({url:?}) is not http:// or https://", i + 1);
            }
            checked.push(trimmed.to_owned());
        }
        Ok(Self(checked))
    }

    /// URLs separated by commas, e.g. `http://a:8080,http://b:8080`.
    pub fn parse(text: &str) -> Result<Self> {
        Self::new(text.split(',').map(str::to_owned).collect())
    }

    pub fn first(&self) -> &str {
        &self.0[0]
    }

    pub fn all(&self) -> &[String] {
        &self.0
    }

    /// The URL whose turn `turn` is: round-robin.
    pub fn at(&self, turn: usize) -> &str {
        &self.0[turn % self.0.len()]
    }
}

impl std::fmt::Display for Urls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl<'de> Deserialize<'de> for Urls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a URL or a list of URLs")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Self::Value, E> {
                Ok(vec![url.to_owned()])
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(urls)
            }
        }
        let urls = deserializer.deserialize_any(Visitor)?;
        Urls::new(urls).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// API keys to send, when the APIs want them.
#[derive(Clone, Default)]
pub struct Keys {
    pub ingest: Option<String>,
    pub query: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether there is a key, never the key.
        f.debug_struct("Keys")
            .field("ingest", &self.ingest.as_ref().map(|_| "***"))
            .field("query", &self.query.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Adds a key to a request when there is one.
pub fn with_key(request: reqwest::RequestBuilder, key: Option<&String>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

fn default_api() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_apis() -> Urls {
    Urls(vec![default_api()])
}
fn default_kafka() -> String {
    "127.0.0.1:9092".into()
}
fn default_orders_topic() -> String {
    "orders".into()
}
fn default_cassandra() -> Vec<String> {
    vec!["127.0.0.1:9042".into()]
}
fn default_keyspace() -> String {
    "salesflow".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_in_flight() -> usize {
    2048
}

impl Default for Target {
    fn default() -> Self {
        Self {
            command_api: default_apis(),
            query_api: default_api(),
            kafka_bootstrap: default_kafka(),
            orders_topic: default_orders_topic(),
            cassandra: default_cassandra(),
            keyspace: default_keyspace(),
            request_timeout: default_timeout(),
            max_in_flight: default_max_in_flight(),
            ca_certificate: None,
            ingest_key_env: default_ingest_key_env(),
            query_key_env: default_query_key_env(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Shoppers (each filling one cart at a time) orders are spread over.
    #[serde(default = "default_carts")]
    pub carts: usize,
    /// Popularity skew: shopper k (from 1) is chosen with weight 1/k^s.
    #[serde(default = "default_zipf")]
    pub zipf_exponent: f64,
    #[serde(default = "default_currencies")]
    pub currencies: Vec<String>,
    /// Orders per `post-batch` request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Share of single orders posted a second time (must count once).
    #[serde(default)]
    pub duplicate_share: f64,
    /// Share of single orders made invalid on purpose (must be refused with 400).
    #[serde(default)]
    pub invalid_share: f64,
    /// Most orders one cart receives (the domain refuses a cart's 1001st order); a full
    /// cart's shopper starts a new one. Real carts hold a handful; every cart update
    /// carries the whole cart, so very large carts make each order costlier downstream.
    #[serde(default = "default_max_orders_per_cart")]
    pub max_orders_per_cart: u32,
}

fn default_max_orders_per_cart() -> u32 {
    50
}

fn default_carts() -> usize {
    1000
}
fn default_zipf() -> f64 {
    1.1
}
fn default_currencies() -> Vec<String> {
    vec!["EUR".into(), "USD".into(), "GBP".into()]
}
fn default_batch_size() -> usize {
    20
}

impl Default for Data {
    fn default() -> Self {
        Self {
            carts: default_carts(),
            zipf_exponent: default_zipf(),
            currencies: default_currencies(),
            batch_size: default_batch_size(),
            duplicate_share: 0.0,
            invalid_share: 0.0,
            max_orders_per_cart: default_max_orders_per_cart(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    /// POST /orders, one order.
    PostOrder,
    /// POST /orders/batch, `data.batch_size` orders.
    PostBatch,
    /// `GET /carts/{id}` of a cart orders were posted to.
    GetCart,
    /// `GET /carts?user_id=...`
    Search,
    /// Produce one order straight to the orders topic (loads the domain side alone).
    ProduceKafka,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub kind: ScenarioKind,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// One step of the load simulation, in order (like `NBomber`'s load simulations).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Open model: start `rate` requests per second, whatever the responses do.
    Inject {
        rate: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Open model, the rate moving linearly from `from` to `to`.
    RampInject {
        from: f64,
        to: f64,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Closed model: `copies` clients, each sending its next request when the last ends.
    KeepConcurrent {
        copies: usize,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// Closed model, the number of clients moving linearly.
    RampConcurrent {
        from: usize,
        to: usize,
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

impl Step {
    pub fn duration(&self) -> Duration {
        match self {
            Step::Inject { duration, .. }
            | Step::RampInject { duration, .. }
            | Step::KeepConcurrent { duration, .. }
            | Step::RampConcurrent { duration, .. } => *duration,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Step::Inject { rate, duration } => format!("inject {rate}/s for {duration:?}"),
            Step::RampInject { from, to, duration } => {
                format!("ramp inject {from}->{to}/s over {duration:?}")
            }
            Step::KeepConcurrent { copies, duration } => {
                format!("keep {copies} concurrent for {duration:?}")
            }
            Step::RampConcurrent { from, to, duration } => {
                format!("ramp concurrent {from}->{to} over {duration:?}")
            }
        }
    }
}

/// What a threshold measures.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    P50,
    P90,
    P99,
    Max,
    /// Share of requests that failed (errors, sheds, timeouts, dropped).
    ErrorRate,
    /// Successful requests per second.
    Rps,
    /// p99 time from POST to queryable, over the sampled orders.
    FreshnessP99,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// A scenario's name; none: all scenarios together.
    #[serde(default)]
    pub scenario: Option<String>,
    pub metric: Metric,
    /// Upper bound: a duration ("50ms") for latencies, a share ("0.1%") or a number.
    #[serde(default)]
    pub below: Option<String>,
    /// Lower bound (for `rps`).
    #[serde(default)]
    pub above: Option<String>,
    /// Stop the run as soon as the threshold is broken (checked every second after warm-up).
    #[serde(default)]
    pub abort: bool,
}

impl Threshold {
    /// The bound in the metric's unit (milliseconds, a fraction, or per second).
    pub fn bound(text: &str) -> Result<f64> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            return Ok(percent.trim().parse::<f64>().context("a percentage")? / 100.0);
        }
        if let Ok(d) = humantime_serde::re::humantime::parse_duration(text) {
            return Ok(d.as_secs_f64() * 1000.0);
        }
        text.parse::<f64>()
            .with_context(|| format!("{text:?} is neither a duration, a percentage nor a number"))
    }

    pub fn describe(&self) -> String {
        let scope = self.scenario.as_deref().unwrap_or("all");
        let bound = match (&self.below, &self.above) {
            (Some(b), _) => format!("< {b}"),
            (_, Some(a)) => format!("> {a}"),
            _ => String::new(),
        };
        format!("{scope} {:?} {bound}", self.metric).to_lowercase()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    /// Follow every n-th accepted single order until the Query API shows it (0: none).
    #[serde(default = "default_sample_every")]
    pub sample_every: usize,
    #[serde(default = "default_fresh_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest pause between two reads of a followed order's cart. The pauses start
    /// at 10 ms and grow by half each time up to this, so a sample is read a dozen times
    /// in its first second instead of fifty: every read is a real-time GET, which makes
    /// OpenSearch refresh the shard, and at 20 ms apart the probes cost the system more
    /// than the orders they follow. A reported freshness is late by at most one pause.
    #[serde(default = "default_poll_max", with = "humantime_serde")]
    pub poll_max: Duration,
}

fn default_sample_every() -> usize {
    25
}
fn default_fresh_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_poll_max() -> Duration {
    Duration::from_millis(100)
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            sample_every: default_sample_every(),
            timeout: default_fresh_timeout(),
            poll_max: default_poll_max(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long to wait for the pipeline to catch up before counting what is missing.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle_timeout: Duration,
}

fn default_true() -> bool {
    true
}
fn default_settle() -> Duration {
    Duration::from_secs(60)
}

impl Default for Reconcile {
    fn default() -> Self {
        Self {
            enabled: true,
            settle_timeout: default_settle(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Where reports go (JSON, Markdown, HTML), relative to the working directory.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// A previous JSON report to compare against.
    #[serde(default)]
    pub compare: Option<PathBuf>,
}

fn default_dir() -> PathBuf {
    PathBuf::from("load/reports")
}

impl Default for Report {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            compare: None,
        }
    }
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let profile: Profile =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        profile
            .check()
            .with_context(|| format!("{}", path.display()))?;
        Ok(profile)
    }

    fn check(&self) -> Result<()> {
        if self.scenarios.is_empty() || self.scenarios.iter().all(|s| s.weight == 0) {
            bail!("scenarios: at least one with a weight above 0");
        }
        if self.steps.is_empty() {
            bail!("steps: at least one");
        }
        for (i, step) in self.steps.iter().enumerate() {
            let bad = match step {
                Step::Inject { rate, .. } => *rate <= 0.0,
                Step::RampInject { from, to, .. } => {
                    *from < 0.0 || *to < 0.0 || (*from == 0.0 && *to == 0.0)
                }
                Step::KeepConcurrent { copies, .. } => *copies == 0,
                Step::RampConcurrent { from, to, .. } => *from == 0 && *to == 0,
            };
            if bad || step.duration().is_zero() {
                bail!("steps.{i}: needs a positive load and duration");
            }
        }
        if self.data.carts == 0 || self.data.currencies.is_empty() || self.data.batch_size == 0 {
            bail!("data: carts, currencies and batch_size must not be empty or zero");
        }
        if self.freshness.poll_max < Duration::from_millis(1) {
            bail!(
                "freshness.poll_max: at least 1ms (it spaces the reads of a followed cart; \
                 got {:?})",
                self.freshness.poll_max
            );
        }
        if !(1..=1000).contains(&self.data.max_orders_per_cart) {
            bail!("data.max_orders_per_cart: between 1 and 1000 (the cart's own limit)");
        }
        for t in &self.thresholds {
            if t.below.is_none() == t.above.is_none() {
                bail!(
                    "thresholds: {} needs exactly one of below, above",
                    t.describe()
                );
            }
            for bound in t.below.iter().chain(&t.above) {
                Threshold::bound(bound)?;
            }
            if let Some(s) = &t.scenario
                && !self.scenarios.iter().any(|x| &x.name == s)
            {
                bail!("thresholds: no scenario named {s:?}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Profile> {
        let profile: Profile = toml::from_str(text)?;
        profile.check()?;
        Ok(profile)
    }

    const MINIMAL: &str = r#"
name = "t"
[[scenarios]]
name = "post-order"
kind = "post-order"
[[steps]]
kind = "inject"
rate = 10
duration = "2s"
"#;

    #[test]
    fn bounds_are_durations_percentages_or_numbers() {
        let close = |text: &str, expected: f64| {
            let got = Threshold::bound(text).unwrap();
            assert!((got - expected).abs() < 1e-12, "{text}: {got}");
        };
        close("50ms", 50.0);
        close(" 2s ", 2000.0);
        close("0.1%", 0.001);
        close("250", 250.0);
        let e = Threshold::bound("fast").unwrap_err().to_string();
        assert!(e.contains("\"fast\" is neither"), "{e}");
    }

    #[test]
    fn every_shipped_profile_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Profile::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
        assert!(n >= 5, "smoke, steady, ramp-to-knee, spike, soak");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(p.seed, 42);
        assert_eq!(p.data.max_orders_per_cart, 50);
        assert_eq!(p.target.command_api.all(), ["http://127.0.0.1:8080"]);
        assert!(p.reconcile.enabled);
        assert_eq!(p.steps[0].duration(), Duration::from_secs(2));
        assert_eq!(p.freshness.poll_max, Duration::from_millis(100));
    }

    #[test]
    fn the_command_api_is_one_url_or_a_list() {
        let one = parse(&format!(
            "{MINIMAL}[target]\ncommand_api = \"http://api-1:8080/\"\n"
        ))
        .unwrap();
        assert_eq!(one.target.command_api.all(), ["http://api-1:8080"]);
        let several = parse(&format!(
            "{MINIMAL}[target]\ncommand_api = [\"http://a:8080\", \"https://b:8443/api/\"]\n"
        ))
        .unwrap();
        assert_eq!(
            several.target.command_api.all(),
            ["http://a:8080", "https://b:8443/api"]
        );
        assert_eq!(several.target.command_api.first(), "http://a:8080");
        let turns: Vec<&str> = (0..5).map(|t| several.target.command_api.at(t)).collect();
        assert_eq!(
            turns,
            [
                "http://a:8080",
                "https://b:8443/api",
                "http://a:8080",
                "https://b:8443/api",
                "http://a:8080"
            ]
        );
        assert_eq!(
            several.target.command_api.to_string(),
            "http://a:8080, https://b:8443/api"
        );
        // The query API stays one URL.
        assert_eq!(several.target.query_api, "http://127.0.0.1:8080");
    }

    #[test]
    fn command_line_targets_are_separated_by_commas() {
        let urls = Urls::parse("http://a:8080, http://b:8080/").unwrap();
        assert_eq!(urls.all(), ["http://a:8080", "http://b:8080"]);
        assert_eq!(
            Urls::parse("http://a:8080").unwrap().all(),
            ["http://a:8080"]
        );
        let e = format!("{:#}", Urls::parse("http://a:8080,,http://b").unwrap_err());
        assert!(e.contains("URL 2 (\"\")"), "{e}");
        let e = format!("{:#}", Urls::parse("http://a:8080,ftp://b").unwrap_err());
        assert!(
            e.contains("URL 2 (\"ftp://b\") is not http:// or https://"),
            "{e}"
        );
        let e = format!("{:#}", Urls::new(Vec::new()).unwrap_err());
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn bad_command_apis_say_what_is_wrong() {
        for (value, expected) in [
            ("[]", "no URL given"),
            ("[\"http://a:8080\", \"a:b:c\"]", "URL 2"),
            (
                "[\"http://a:8080\", \"localhost:8080\"]",
                "not http:// or https://",
            ),
            ("\"not a url\"", "URL 1 (\"not a url\") is not a URL"),
            ("8080", "a URL or a list of URLs"),
        ] {
            let text = format!("{MINIMAL}[target]\ncommand_api = {value}\n");
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(
                e.contains(expected),
                "{value}: expected {expected:?} in {e:?}"
            );
        }
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let cases = [
            (
                MINIMAL.replace("rate = 10", "rate = 0"),
                "steps.0: needs a positive",
            ),
            (
                MINIMAL.replace("\"2s\"", "\"0s\""),
                "steps.0: needs a positive",
            ),
            (
                format!("{MINIMAL}[[thresholds]]\nmetric = \"p99\"\n"),
                "needs exactly one of below, above",
            ),
            (
                format!("{MINIMAL}[[thresholds]]\nmetric = \"p99\"\nbelow = \"soon\"\n"),
                "neither a duration",
            ),
            (
                format!(
                    "{MINIMAL}[[thresholds]]\nscenario = \"nope\"\nmetric = \"p99\"\nbelow = \"1s\"\n"
                ),
                "no scenario named \"nope\"",
            ),
            (
                format!("{MINIMAL}[data]\nmax_orders_per_cart = 1001\n"),
                "max_orders_per_cart",
            ),
            (
                format!("{MINIMAL}[freshness]\npoll_max = \"0s\"\n"),
                "freshness.poll_max: at least 1ms",
            ),
            (
                MINIMAL.replace(
                    "post-order\"\n[[steps]]",
                    "post-order\"\nweight = 0\n[[steps]]",
                ),
                "at least one with a weight",
            ),
            (
                MINIMAL.replace("kind = \"inject\"", "kind = \"teleport\""),
                "unknown variant `teleport`",
            ),
            (
                format!("{MINIMAL}colour = \"red\"\n"),
                "unknown field `colour`",
            ),
        ];
        for (text, expected) in cases {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }
}
