//! What the tests, the benchmark and the fault suite share, written once: the checkout,
//! the local stack's addresses (`SALESFLOW_KAFKA_BOOTSTRAP`, `SALESFLOW_CASSANDRA_NODES`,
//! `SALESFLOW_ELASTICSEARCH_URL`), Kafka helpers, `salesflow` run as a child process as
//! users run it, and ([`sales`]) an isolated sales system with its orders and their
//! reconciliation.
//!
//! A panic is the failure report here: these helpers run inside tests and suites.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod sales;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The salesflow checkout: the nearest folder at or above the current one holding
/// `schemas/kafka/topics.toml` (tests run in their crate's folder, the scripts at the
/// root), else the checkout this crate was built from. Found at run time: a
/// target folder shared by two checkouts (a fresh clone for CI and a working tree) keeps
/// whichever built last, and its compiled-in path may name the other one.
pub fn repo() -> PathBuf {
    static REPO: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    REPO.get_or_init(|| {
        std::env::current_dir()
            .ok()
            .and_then(|cwd| salesflow_localstack::find_root(&cwd))
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
    })
    .clone()
}

pub fn bootstrap() -> String {
    std::env::var("SALESFLOW_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn es_url() -> String {
    std::env::var("SALESFLOW_ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

pub fn cassandra_nodes() -> Vec<String> {
    std::env::var("SALESFLOW_CASSANDRA_NODES")
        .unwrap_or_else(|_| "127.0.0.1:9042".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Relays every connection accepted on `listener` to `target` (`host:port`), byte for
/// byte: an address of a real server that a test opens when it wants the server to
/// answer (bind the address, then spawn this), and that refuses connections until then.
pub async fn relay(listener: tokio::net::TcpListener, target: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// A free loopback address (`127.0.0.1:port`).
pub fn free_address() -> std::io::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// The resident memory of a process, in MiB (0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let kib = i32::try_from(pid)
        .ok()
        .and_then(|pid| procfs::process::Process::new(pid).ok())
        .and_then(|process| process.status().ok())
        .and_then(|status| status.vmrss);
    // Lossless enough: resident memory is far below 2^52 KiB.
    #[allow(clippy::cast_precision_loss)]
    kib.map_or(0.0, |kib| kib as f64 / 1024.0)
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let result = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    assert!(result[0].is_ok(), "creating {name}: {:?}", result[0]);
}

/// Creates topics of `partitions` partitions each.
pub async fn create_topics(names: &[&str], partitions: i32) {
    for name in names {
        create_topic(name, partitions).await;
    }
}

pub async fn delete_topics(names: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let _ = admin.delete_topics(names, &AdminOptions::new()).await;
}

/// Produces `count` JSON messages `{"n":i,"key":k,...extra}` keyed by `key{i % keys}`.
pub async fn produce(topic: &str, count: usize, keys: usize, extra: impl Fn(usize) -> String) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..count {
        let key = format!("key{}", i % keys);
        let payload = format!("{{\"n\":{i},\"key\":\"{key}\"{}}}", extra(i));
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .unwrap();
        pending.push(delivery);
        if pending.len() >= 1000 {
            for d in pending.drain(..) {
                d.await.unwrap().unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

/// Reads every record of `topic` from the beginning until `until` holds for what was
/// read, or `timeout` passes. Returns what was read.
pub fn read_all(topic: &str, timeout: Duration, until: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    // `until` may be costly: ask it when the topic is drained for now, or every 1000.
    let mut check = true;
    while !(check && until(&records)) && Instant::now() < deadline {
        let polled = consumer.poll(Duration::from_millis(200));
        check = polled.is_none() || records.len() % 1000 == 0;
        if let Some(message) = polled {
            let m = message.unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                payload: serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
                headers,
            });
        }
    }
    records
}

/// The offsets a group committed on a topic, and the topic's end offsets.
pub fn committed_and_end(topic: &str, group: &str) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut end = BTreeMap::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        end.insert(p.id(), high);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
            )
        })
        .collect();
    (committed, end)
}

/// A member of `group` on `topic` that speaks only the eager `range` assignor, kept in
/// the group (polling on its own thread) until dropped. A member with another assignor
/// (salesflow's `cooperative-sticky`) cannot join while it is there: the coordinator
/// answers it `InconsistentGroupProtocol`, so it stays outside with the coordinator up.
pub struct GroupHolder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupHolder {
    /// Joins, and returns once the holder owns the topic's partitions.
    pub fn join(group: &str, topic: &str) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", group)
            .set("partition.assignment.strategy", "range")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while consumer.assignment().unwrap().count() == 0 {
            assert!(Instant::now() < deadline, "the holder never joined {group}");
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = consumer.poll(Duration::from_millis(100));
                }
                // Dropping the consumer leaves the group.
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for GroupHolder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the asynchronous `condition` every 100 ms until it holds or `timeout` passes;
/// for conditions that ask a server, without blocking the runtime.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of every sample of the metric `name` (all its label sets) on the host at
/// `address`, from its `/metrics`; 0 when it has none.
pub async fn metric_total(client: &reqwest::Client, address: &str, name: &str) -> f64 {
    let text = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("scraping {address}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("scraping {address}: {e}"));
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else {
                rest
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Waits (up to 60 s) until `base`/health/ready answers 200.
pub async fn ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `salesflow` as a child process, with its JSON log lines collected.
pub struct Host {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

/// How to start a `salesflow` process.
pub struct Launch<'a> {
    /// The binary (`env!("CARGO_BIN_EXE_salesflow")` in the binary's own tests).
    pub binary: &'a Path,
    pub config: &'a Path,
    pub args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// Where it listens; default a free port it picks itself.
    pub address: Option<&'a str>,
    /// Its log lines, kept (JSON, `info`) for `log()` and `address()`; else only warnings,
    /// to the parent's stderr (long benchmark runs).
    pub capture: bool,
}

impl<'a> Launch<'a> {
    pub fn new(binary: &'a Path, config: &'a Path, args: &'a [&'a str]) -> Self {
        Self {
            binary,
            config,
            args,
            env: &[],
            address: None,
            capture: true,
        }
    }
}

impl Host {
    /// Starts `salesflow <args>` with `--config config`, logging JSON, on a free port.
    pub fn start(binary: &Path, config: &Path, args: &[&str]) -> Self {
        Self::launch(&Launch::new(binary, config, args))
    }

    /// The same with environment variables set for the process.
    pub fn start_with_env(
        binary: &Path,
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(&Launch {
            env,
            ..Launch::new(binary, config, args)
        })
    }

    pub fn launch(launch: &Launch<'_>) -> Self {
        let mut command = Command::new(launch.binary);
        command.envs(launch.env.iter().copied());
        command
            .current_dir(repo())
            .arg("--config")
            .arg(launch.config)
            .arg("--set")
            .arg(format!(
                "server.address={}",
                launch.address.unwrap_or("127.0.0.1:0")
            ))
            .stdout(Stdio::null());
        if launch.capture {
            command
                .args(["--set", "log.format=json"])
                .env("SALESFLOW_LOG", "info,librdkafka=warn,rdkafka=warn")
                .stderr(Stdio::piped());
        } else {
            command
                .args(["--set", "log.level=warn"])
                .stderr(Stdio::inherit());
        }
        command.args(launch.args);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", launch.binary.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The HTTP address, once the host logged it.
    pub fn address(&self) -> String {
        let mut found = None;
        wait_for("the host to listen", Duration::from_secs(60), || {
            found = self.lines.lock().unwrap().iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v["address"].as_str().map(str::to_owned)
            });
            found.is_some() || self.exited()
        });
        found.unwrap_or_else(|| panic!("the host exited before listening:\n{}", self.log()))
    }

    /// Whether the process has ended.
    pub fn exited(&self) -> bool {
        // A zombie has no /proc/<pid>/fd entries left.
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map_or(true, |mut d| d.next().is_none())
    }

    /// How it ended, if it has.
    pub fn status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then the exit status (within `timeout`).
    pub fn stop(mut self, timeout: Duration) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.wait(timeout);
        (status, self.log())
    }

    /// SIGTERM, then waits without blocking the async runtime for the graceful shutdown;
    /// a process still running after `timeout` is killed, and that is reported.
    pub async fn stop_async(mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status() {
                return Some(status);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "salesflow (pid {}) still running {timeout:?} after SIGTERM: killed",
                    self.pid()
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill(mut self) -> String {
        self.signal("KILL");
        let _ = self.wait(Duration::from_secs(10));
        self.log()
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("salesflow did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed with the host still running: its warnings and errors are
            // the first thing to read.
            let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
            let noteworthy: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .collect();
            let shown = noteworthy.len().saturating_sub(200);
            eprintln!(
                "salesflow's warnings and errors ({} of {} log lines; the last 200 shown):",
                noteworthy.len(),
                lines.len()
            );
            for line in &noteworthy[shown..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Writes a config file into a fresh temporary folder.
pub fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Builds the example run-time plugin as a shared library (in its own target folder, so
/// the build never waits on the test run's) and returns a folder holding only it.
pub fn build_example_plugin(features: &[&str]) -> tempfile::TempDir {
    build_plugin("salesflow-example-filter", features)
}

/// Builds the plugin library of workspace package `package` (a `cdylib`) in its own
/// target folder and returns a folder holding only it.
pub fn build_plugin(package: &str, features: &[&str]) -> tempfile::TempDir {
    let workspace = repo();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace.join("target"), PathBuf::from)
        .join(format!("{package}{}", features.join("-")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(&target);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command.status().expect("run cargo build");
    assert!(status.success(), "building plugin {package} failed");
    let library = target.join("debug").join(format!(
        "{}{}.{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_EXTENSION
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&library, dir.path().join(library.file_name().unwrap())).unwrap();
    dir
}

/// GET `url`, its body as JSON (a panic when it is not).
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url`, its body as text.
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// What a one-shot `salesflow` command did: whether it succeeded, its stdout and stderr.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stdout then stderr.
    pub fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `binary args...` to its end (in the checkout, with `env` added), as a user runs a
/// one-shot command (`check`, `dlq`, `replay`, `load`).
pub fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    run_in(binary, &repo(), args, env)
}

/// The same in another folder.
pub fn run_in(binary: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(binary)
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Checks a `/metrics` text with `promtool check metrics` (Debian's prometheus package):
/// it must parse, and its only remarks may be the `_total` samples of OpenMetrics
/// counters, whose help is on the family name (`promtool` reads the older text format).
/// Panics with promtool's words otherwise.
pub fn assert_promtool_accepts(metrics: &str) {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    std::io::Write::write_all(
        &mut promtool.stdin.take().expect("promtool's stdin"),
        metrics.as_bytes(),
    )
    .expect("writing to promtool");
    let out = promtool.wait_with_output().expect("promtool's output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool could not read it: {said}"
    );
    for remark in said.lines().filter(|l| !l.trim().is_empty()) {
        let counter = remark
            .strip_suffix("_total no help text")
            .unwrap_or_else(|| panic!("unexpected remark: {remark}\n{said}"));
        assert!(
            metrics.contains(&format!("# TYPE {counter} counter")),
            "{remark}"
        );
    }
}
