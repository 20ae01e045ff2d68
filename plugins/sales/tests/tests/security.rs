//! Security of the HTTP APIs against the real pipelines: API keys per API (ingest and
//! query apart, keys from the environment, never logged or printed), TLS, and clear
//! configuration errors that name what is missing without showing a secret.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow-e2e");

use std::collections::BTreeSet;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::sales::{Sales, order};
use support::{Host, read_all};

const INGEST_KEY: &str = "ingest-7f3c9a1e5b2d4c6e8a0f";
const QUERY_KEY: &str = "query-2b4d6f8a0c1e3f5a7b9d";
const CASSANDRA_PASSWORD: &str = "cassandra-pw-d41d8cd98f00";

fn auth_sets() -> Vec<String> {
    [
        "pipelines.command-api.sources.order.auth.api_keys_env=SALESFLOW_TEST_INGEST_KEYS",
        "pipelines.command-api.sources.orders.auth.api_keys_env=SALESFLOW_TEST_INGEST_KEYS",
        "pipelines.query-api.sources.api.auth.api_keys_env=SALESFLOW_TEST_QUERY_KEYS",
    ]
    .iter()
    .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
    .collect()
}

fn an_order(n: usize) -> Value {
    let mut rng = support::sales::fresh_rng("an order");
    let cart = support::sales::cart(n, &mut rng);
    order(n, &cart, &mut rng, n).json
}

/// A self-signed certificate for `localhost`, and where its PEM and private key were
/// written in `dir`.
fn self_signed(
    dir: &std::path::Path,
) -> (
    rcgen::CertifiedKey<rcgen::KeyPair>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert, cert_path, key_path)
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_query_need_their_own_keys() {
    let sales = Sales::new(BIN).await;
    let mut args = sales.overrides();
    args.extend(auth_sets());
    // Every pipeline: the Query API is ready once the projections made its indices.
    args.push("run".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start_with_env(
        std::path::Path::new(BIN),
        &Sales::config(),
        &args,
        &[
            // Two ingest keys: the old one still works while clients move to the new.
            (
                "SALESFLOW_TEST_INGEST_KEYS",
                &format!("old-key-0000000000000000,{INGEST_KEY}"),
            ),
            ("SALESFLOW_TEST_QUERY_KEYS", QUERY_KEY),
        ],
    );
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(client.get(format!("{base}/health/ready"))).await != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let refused = an_order(1);
    let post = |o: &Value| client.post(format!("{base}/orders")).json(o);
    // No key, a wrong key, the query key, a key in the wrong scheme: 401, nothing kept.
    assert_eq!(status(post(&refused)).await, 401);
    assert_eq!(
        status(post(&refused).bearer_auth("not-a-key-at-all-00000")).await,
        401
    );
    assert_eq!(status(post(&refused).bearer_auth(QUERY_KEY)).await, 401);
    assert_eq!(
        status(post(&refused).basic_auth(INGEST_KEY, Some(""))).await,
        401
    );
    let answer = post(&refused).send().await.unwrap();
    assert_eq!(
        answer.headers()["www-authenticate"],
        "Bearer realm=\"salesflow\""
    );
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("API key is required")
    );
    assert_eq!(
        status(
            client
                .post(format!("{base}/orders/batch"))
                .json(&json!([refused]))
        )
        .await,
        401
    );

    // The ingest keys: bearer or X-API-Key.
    let first = an_order(2);
    let second = an_order(3);
    assert_eq!(status(post(&first).bearer_auth(INGEST_KEY)).await, 202);
    assert_eq!(
        status(post(&second).header("x-api-key", "old-key-0000000000000000")).await,
        202
    );
    let expected: BTreeSet<String> = [&first, &second]
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect();
    let records = read_all(&sales.orders, Duration::from_secs(30), |r| r.len() >= 2);
    let on_topic: BTreeSet<String> = records
        .iter()
        .map(|r| r.payload["order_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(on_topic, expected, "the refused order never reached Kafka");

    // The Query API takes only its own key.
    let cart = refused["cart_id"].as_str().unwrap();
    let get = || client.get(format!("{base}/carts/{cart}"));
    assert_eq!(status(get()).await, 401);
    assert_eq!(status(get().bearer_auth(INGEST_KEY)).await, 401);
    assert_eq!(status(get().bearer_auth(QUERY_KEY)).await, 404);
    assert_eq!(
        status(
            client
                .get(format!("{base}/carts?user_id=x"))
                .header("x-api-key", QUERY_KEY)
        )
        .await,
        200
    );
    // Health and metrics stay open for the operator's probes.
    assert_eq!(status(client.get(format!("{base}/health/live"))).await, 200);
    let metrics = support::get_text(&client, format!("{base}/metrics")).await;
    assert!(metrics.contains("status=\"401\""), "401s are counted");

    let (exit, log) = host.stop(Duration::from_secs(30));
    assert!(exit.success(), "{log}");
    for secret in [INGEST_KEY, QUERY_KEY, "old-key-0000000000000000"] {
        assert!(!log.contains(secret), "a key leaked into the log");
        assert!(!metrics.contains(secret), "a key leaked into the metrics");
    }
}

fn salesflow(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let config = Sales::config().display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend(args);
    let ran = support::run(std::path::Path::new(BIN), &all, env);
    (ran.ok, ran.both())
}

#[test]
fn configuration_errors_name_what_is_missing_and_never_show_a_secret() {
    let sets = auth_sets();
    let with = |extra: &[&str]| -> Vec<String> {
        let mut args = sets.clone();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push("check".into());
        args
    };
    let run = |args: &[String], env: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        salesflow(&args, env)
    };
    let keys = [
        ("SALESFLOW_TEST_INGEST_KEYS", INGEST_KEY),
        ("SALESFLOW_TEST_QUERY_KEYS", QUERY_KEY),
    ];

    // Keys missing from the environment.
    let (ok, out) = run(&with(&[]), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("SALESFLOW_TEST_INGEST_KEYS is not set"),
        "{out}"
    );
    assert!(out.contains("auth.api_keys_env"), "{out}");

    // A key too short: named by position, never shown.
    let (ok, out) = run(
        &with(&[]),
        &[
            ("SALESFLOW_TEST_INGEST_KEYS", "hunter2"),
            ("SALESFLOW_TEST_QUERY_KEYS", QUERY_KEY),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("key 1 of SALESFLOW_TEST_INGEST_KEYS is shorter"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");

    // Credentials for Cassandra and Elasticsearch, the passwords from the environment:
    // check passes and prints no secret.
    let credentials = with(&[
        "--set",
        "cassandra.username=salesflow",
        "--set",
        "cassandra.password={ env = \"SALESFLOW_TEST_CASSANDRA_PASSWORD\" }",
        "--set",
        "elasticsearch.username=elastic",
        "--set",
        "elasticsearch.password={ env = \"SALESFLOW_TEST_ES_PASSWORD\" }",
    ]);
    let (ok, out) = run(
        &credentials,
        &[
            keys[0],
            keys[1],
            ("SALESFLOW_TEST_CASSANDRA_PASSWORD", CASSANDRA_PASSWORD),
            ("SALESFLOW_TEST_ES_PASSWORD", CASSANDRA_PASSWORD),
        ],
    );
    assert!(ok, "{out}");
    for secret in [CASSANDRA_PASSWORD, INGEST_KEY, QUERY_KEY] {
        assert!(!out.contains(secret), "{out}");
    }
    // The password's variable unset: named.
    let (ok, out) = run(&credentials, &keys);
    assert!(!ok, "{out}");
    assert!(
        out.contains("SALESFLOW_TEST_CASSANDRA_PASSWORD is not set"),
        "{out}"
    );
    // A username without its password: refused, by name.
    let (ok, out) = run(&with(&["--set", "cassandra.username=salesflow"]), &keys);
    assert!(!ok, "{out}");
    assert!(out.contains("username and password go together"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_tls_when_given_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_path, key_path) = self_signed(dir.path());

    // A missing or wrong file is a clear configuration error.
    let (ok, out) = salesflow(
        &[
            "--set",
            "server.tls.certificate=/nonexistent/cert.pem",
            "--set",
            &format!("server.tls.private_key={}", key_path.display()),
            "check",
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        out.contains("server.tls") && out.contains("/nonexistent/cert.pem"),
        "{out}"
    );
    let (ok, out) = salesflow(
        &[
            "--set",
            &format!("server.tls.certificate={}", key_path.display()),
            "--set",
            &format!("server.tls.private_key={}", key_path.display()),
            "check",
        ],
        &[],
    );
    assert!(!ok);
    assert!(out.contains("holds no certificate"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");

    let sales = Sales::new(BIN).await;
    let mut args = sales.overrides();
    args.extend([
        "--set".to_owned(),
        format!("server.tls.certificate={}", cert_path.display()),
        "--set".to_owned(),
        format!("server.tls.private_key={}", key_path.display()),
        "run".to_owned(),
        "--pipeline".to_owned(),
        "command-api".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start(std::path::Path::new(BIN), &Sales::config(), &args);
    let port = host.address().rsplit(':').next().unwrap().to_owned();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(client.get(format!("{base}/health/ready"))).await != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = client
        .post(format!("{base}/orders"))
        .json(&an_order(9))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health/live"))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::new()
        .get(format!("{base}/health/live"))
        .send()
        .await;
    assert!(untrusting.is_err());
    let (exit, log) = host.stop(Duration::from_secs(30));
    assert!(exit.success(), "{log}");
}

/// A secured deployment — API keys on both APIs, TLS — can be load-tested: `salesflow
/// load` sends the keys named by its environment variables and trusts the server's
/// certificate (`--ca-cert`); every scenario passes and the reconciliation, which reads
/// through the secured Query API, finds every accepted order. Without the keys the same
/// run is refused (401) and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_deployment_is_load_tested_with_keys_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_path, key_path) = self_signed(dir.path());

    let sales = Sales::new(BIN).await;
    let mut args = sales.overrides();
    args.extend(auth_sets());
    args.extend([
        "--set".to_owned(),
        format!("server.tls.certificate={}", cert_path.display()),
        "--set".to_owned(),
        format!("server.tls.private_key={}", key_path.display()),
        "run".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start_with_env(
        std::path::Path::new(BIN),
        &Sales::config(),
        &args,
        &[
            ("SALESFLOW_TEST_INGEST_KEYS", INGEST_KEY),
            ("SALESFLOW_TEST_QUERY_KEYS", QUERY_KEY),
        ],
    );
    let port = host.address().rsplit(':').next().unwrap().to_owned();
    let base = format!("https://localhost:{port}");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(client.get(format!("{base}/health/ready"))).await != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let profile = dir.path().join("secured.toml");
    std::fs::write(
        &profile,
        r#"
name = "secured"
description = "Every API scenario against keys and TLS, then reconciliation."
[data]
carts = 60
[[scenarios]]
name = "post-order"
kind = "post-order"
weight = 6
[[scenarios]]
name = "post-batch"
kind = "post-batch"
weight = 1
[[scenarios]]
name = "get-cart"
kind = "get-cart"
weight = 2
[[scenarios]]
name = "search"
kind = "search"
weight = 1
[[steps]]
kind = "inject"
rate = 25
duration = "4s"
[[thresholds]]
metric = "error_rate"
below = "1%"
[freshness]
sample_every = 5
timeout = "20s"
[reconcile]
enabled = true
settle_timeout = "60s"
"#,
    )
    .unwrap();
    let load = |env: &[(&str, &str)]| {
        let profile = profile.display().to_string();
        let cert = cert_path.display().to_string();
        support::run_in(
            std::path::Path::new(BIN),
            dir.path(),
            &[
                "load",
                &profile,
                "--target",
                &base,
                "--ca-cert",
                &cert,
                "--query-key-env",
                "SECURED_QUERY_KEY",
            ],
            env,
        )
    };
    let ran = load(&[
        ("SALESFLOW_LOAD_INGEST_KEY", INGEST_KEY),
        ("SECURED_QUERY_KEY", QUERY_KEY),
    ]);
    let text = ran.both();
    assert!(ran.ok, "the keyed run failed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("reconciliation:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("(lost 0, duplicated 0)"), "{line}");
    let accepted: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accepted >= 50, "{line}");
    assert!(
        !text.contains(INGEST_KEY) && !text.contains(QUERY_KEY),
        "a key was printed"
    );

    // No keys: every request is refused, and the run says so.
    let ran = load(&[]);
    let text = ran.both();
    assert!(!ran.ok, "a run without keys passed:\n{text}");
    assert!(
        text.contains("errorrate < 1%: FAILED") && text.contains("not ok: rejected"),
        "{text}"
    );

    let (exit, log) = host.stop(Duration::from_secs(60));
    assert!(exit.success(), "{log}");
    sales.cleanup().await;
}
