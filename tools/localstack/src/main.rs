//! `localstack`: the salesflow local stack without Docker.
//!
//! Runs Apache Kafka (KRaft), Apache Cassandra, OpenSearch (the Elasticsearch API) and
//! Prometheus as plain processes on 127.0.0.1, their jars resolved from Maven Central by
//! `compose/servers/pom.xml`. Everything they write (data, logs, pid files) lives under one
//! git-ignored folder, `.stack/` by default.
//!
//! ```text
//! localstack up [--cluster]  start what is not running, wait until each answers, apply schemas/
//! localstack status          one line a node: state, pid, address, version, resident memory
//! localstack logs            the tail of every node's log (or of the ones named)
//! localstack schemas         apply schemas/ again (idempotent)
//! localstack down            stop exactly the processes `up` started
//! localstack kill NODE       SIGKILL one node, as a crash would (fault suites)
//! ```
//!
//! `--cluster` runs the cluster profile (3 Kafka brokers, 3 Cassandra nodes, 2 OpenSearch
//! nodes, replicating; see `node.rs`); `status`, `logs`, `down` and `kill` act on the
//! profile `up` last started. Servers are named by kind (`cassandra`: every node of it)
//! or node (`cassandra-2`).

mod layout;
mod maven;
mod node;
mod probe;
mod process;
mod schemas;
mod servers;
mod wipe;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::layout::Layout;
use crate::node::{Node, Profile, Selector};
use crate::servers::{Server, ServerKind};

#[derive(Parser, Debug)]
#[command(
    name = "localstack",
    version,
    about = "The salesflow local stack, without Docker"
)]
struct Cli {
    /// The salesflow checkout (found from the current folder when not given).
    #[arg(long, env = "SALESFLOW_ROOT", global = true)]
    root: Option<std::path::PathBuf>,
    /// Where the stack keeps data, logs and pid files.
    #[arg(long, env = "SALESFLOW_STACK_DIR", global = true)]
    stack_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every server that is not running, wait until each answers a real request, and
    /// apply the schemas. Servers already running are left alone.
    Up {
        /// Only these servers (`kafka`, `cassandra`, `opensearch`, `prometheus`) or nodes
        /// (`cassandra-2`); default: all.
        servers: Vec<Selector>,
        /// The cluster profile: 3 Kafka brokers, 3 Cassandra nodes, 2 OpenSearch nodes,
        /// replicating between them (schemas/environments/cluster.toml).
        #[arg(long)]
        cluster: bool,
        /// Seconds to wait for each server to answer (default: 240, 420 for the cluster).
        #[arg(long)]
        timeout: Option<u64>,
        /// Do not create topics, tables and index templates.
        #[arg(long)]
        no_schemas: bool,
    },
    /// Stop the servers this stack started (by their pid files) and wait until their ports
    /// are free.
    Down {
        /// Only these servers or nodes (default: all).
        servers: Vec<Selector>,
    },
    /// SIGKILL these nodes at once, as a crash would; `up` starts them again.
    Kill {
        /// The nodes (or servers) to kill, e.g. `cassandra-2`.
        #[arg(required = true)]
        servers: Vec<Selector>,
    },
    /// Say, per server, whether it runs and answers, with its version and resident memory.
    /// Exits non-zero when a server is not healthy.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete these nodes' folders: their data (topics, tables, indices, metrics) and
    /// generated configuration. `up` starts them empty and creates the schemas again.
    /// Refuses while any of them runs.
    Wipe {
        /// The servers or nodes to wipe, of the profile `up` last started (`cassandra`,
        /// `kafka-2`); wipe them all to start from nothing, since the stores refer to each
        /// other's records.
        #[arg(required = true)]
        servers: Vec<Selector>,
    },
    /// Print the tail of the servers' logs.
    Logs {
        /// Only these servers or nodes (default: all).
        servers: Vec<Selector>,
        /// How many lines of each log.
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
        /// Keep printing what is appended.
        #[arg(short, long)]
        follow: bool,
    },
    /// Create the topics, tables and index templates of `schemas/` (idempotent), with the
    /// replication of an environment of `schemas/environments/`.
    Schemas {
        /// `local`, `cluster`, or another file of schemas/environments/ (default: the one
        /// of the profile `up` last started).
        #[arg(long)]
        environment: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("localstack: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("localstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let layout = Layout::discover(cli.root, cli.stack_dir)?;
    match cli.command {
        Command::Up {
            servers,
            cluster,
            timeout,
            no_schemas,
        } => {
            let profile = if cluster {
                Profile::Cluster
            } else if !servers.is_empty() && running_any(&layout, layout.profile()) {
                // `up cassandra-2`: a node of the profile that runs.
                layout.profile()
            } else {
                Profile::Single
            };
            switch_profile(&layout, profile)?;
            let nodes = node::select(profile, &servers)?;
            let timeout = timeout.unwrap_or(match profile {
                Profile::Single => 240,
                Profile::Cluster => 420,
            });
            up(&layout, &nodes, Duration::from_secs(timeout)).await?;
            let kinds = kinds_of(&nodes);
            if kinds.contains(&ServerKind::Prometheus) {
                // A running Prometheus re-reads monitoring/ (scrape config, rules).
                probe::reload_prometheus().await?;
            }
            if !no_schemas {
                let environment =
                    schemas::Environment::load(&layout, profile.schema_environment())?;
                schemas::apply_all(&layout, profile, &kinds, &environment).await?;
            }
            if profile == Profile::Cluster {
                print_cluster_settings();
            }
            status(&layout, false).await
        }
        Command::Down { servers } => {
            down(&layout, &node::select(layout.profile(), &servers)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill { servers } => {
            for node in node::select(layout.profile(), &servers)? {
                match process::kill(&layout, node)? {
                    Some(pid) => println!("{node}: killed (pid {pid})"),
                    None => println!("{node}: not running"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wipe { servers } => {
            let nodes = node::select(layout.profile(), &servers)?;
            for (node, freed) in wipe::wipe(&layout, &nodes)? {
                match freed {
                    Some(bytes) => println!(
                        "{node}: removed {} ({})",
                        layout.server_dir(node).display(),
                        layout::gib(bytes)
                    ),
                    None => println!("{node}: no data"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status(&layout, json).await,
        Command::Logs {
            servers,
            lines,
            follow,
        } => {
            let nodes = node::select(layout.profile(), &servers)?;
            process::print_logs(&layout, &nodes, lines, follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas { environment } => {
            let profile = layout.profile();
            let name = environment.unwrap_or_else(|| profile.schema_environment().to_owned());
            let environment = schemas::Environment::load(&layout, &name)?;
            schemas::apply_all(&layout, profile, ServerKind::ALL, &environment).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Records the profile `up` starts; refuses while the other one still runs (they share
/// the first nodes' addresses).
fn switch_profile(layout: &Layout, profile: Profile) -> Result<()> {
    let current = layout.profile();
    if current != profile {
        let running: Vec<String> = current
            .all_nodes(ServerKind::ALL)
            .into_iter()
            .filter(|&n| process::running_pid(layout, n).is_some())
            .map(Node::name)
            .collect();
        if !running.is_empty() {
            bail!(
                "the {current} profile is running ({}); stop it first with `localstack down`",
                running.join(", ")
            );
        }
    }
    layout.set_profile(profile)
}

fn running_any(layout: &Layout, profile: Profile) -> bool {
    profile
        .all_nodes(ServerKind::ALL)
        .into_iter()
        .any(|n| process::running_pid(layout, n).is_some())
}

fn kinds_of(nodes: &[Node]) -> Vec<ServerKind> {
    let mut kinds: Vec<ServerKind> = Vec::new();
    for node in nodes {
        if !kinds.contains(&node.kind) {
            kinds.push(node.kind);
        }
    }
    kinds
}

/// What salesflow and the tools need to use every node of the cluster profile.
fn print_cluster_settings() {
    let profile = Profile::Cluster;
    let quoted = |kind: ServerKind, scheme: &str| {
        profile
            .client_addresses(kind)
            .iter()
            .map(|a| format!("\"{scheme}{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "cluster profile: salesflow reaches every node with (compose/local/cluster.env)\n  \
         SALESFLOW__KAFKA__BOOTSTRAP_SERVERS={}\n  \
         SALESFLOW__CASSANDRA__NODES='[{}]'\n  \
         SALESFLOW__ELASTICSEARCH__URL='[{}]'",
        profile.client_addresses(ServerKind::Kafka).join(","),
        quoted(ServerKind::Cassandra, ""),
        quoted(ServerKind::Opensearch, "http://"),
    );
}

/// Starts what is not running, then waits for every selected node in parallel.
async fn up(layout: &Layout, nodes: &[Node], timeout: Duration) -> Result<()> {
    let started_at = Instant::now();
    layout.create_dirs()?;
    if let Some(warning) = layout
        .free_bytes()
        .and_then(|free| layout.low_disk_warning(free))
    {
        eprintln!("{warning}");
    }
    let java_needed = nodes.iter().any(|n| n.kind.is_java());
    let java = if java_needed {
        Some(servers::find_java()?)
    } else {
        None
    };
    if java_needed {
        maven::ensure_classpaths(layout)?;
    }

    let mut starting = Vec::new();
    for &node in nodes {
        let server = Server::new(node, layout, java.as_ref());
        if let Some(pid) = process::running_pid(layout, node) {
            println!("{node}: already running (pid {pid}), left alone");
            starting.push((server, None));
            continue;
        }
        server.preflight()?;
        let child = server
            .start()
            .with_context(|| format!("{node}: could not be started"))?;
        println!(
            "{node}: started (pid {}), waiting for it to answer",
            child.id()
        );
        starting.push((server, Some(child)));
    }

    let waits = starting.into_iter().map(|(server, child)| async move {
        let node = server.node;
        let result = server.wait_ready(child, timeout).await;
        (node, result)
    });
    let mut failures = Vec::new();
    for (node, result) in futures::future::join_all(waits).await {
        match result {
            Ok(version) => println!("{node}: ready ({version})"),
            Err(e) => failures.push((node, e)),
        }
    }
    if !failures.is_empty() {
        let mut message = String::new();
        for (node, e) in &failures {
            // The failed node is stopped so that a retry starts clean; others stay up.
            let _ = process::stop(layout, *node);
            let log = layout.log_file(*node);
            let _ = write!(
                message,
                "\n{node} failed to start: {e:#}\n--- last lines of {} ---\n{}",
                log.display(),
                process::tail(&log, 30)
            );
        }
        bail!("{} of the stack did not come up:{message}", failures.len());
    }
    println!("stack ready in {:.1} s", started_at.elapsed().as_secs_f64());
    Ok(())
}

fn down(layout: &Layout, nodes: &[Node]) -> Result<()> {
    let mut errors = Vec::new();
    // Stop in reverse start order, kind by kind (Prometheus first, Kafka last); the nodes
    // of a kind together.
    for kind in kinds_of(nodes).into_iter().rev() {
        let of_kind: Vec<Node> = nodes.iter().copied().filter(|n| n.kind == kind).collect();
        for (node, result) in process::stop_together(layout, &of_kind) {
            match result {
                Ok(Some(pid)) => println!("{node}: stopped (pid {pid})"),
                Ok(None) => println!("{node}: not running"),
                Err(e) => errors.push(format!("{node}: {e:#}")),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("could not stop everything:\n{}", errors.join("\n"))
    }
}

async fn status(layout: &Layout, json: bool) -> Result<ExitCode> {
    let profile = layout.profile();
    let free = layout.free_bytes();
    let nodes = profile.all_nodes(ServerKind::ALL);
    let checks = nodes.iter().map(|&node| async move {
        let pid = process::running_pid(layout, node);
        let answer = match pid {
            Some(_) => probe::probe_with(layout, node, Duration::from_secs(5), false).await,
            None => Err(anyhow::anyhow!("not running")),
        };
        (node, pid, answer)
    });
    let rows = futures::future::join_all(checks).await;
    let healthy = rows
        .iter()
        .all(|(_, pid, answer)| pid.is_some() && answer.is_ok());
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(node, pid, answer)| {
                serde_json::json!({
                    "server": node.kind.to_string(),
                    "node": node.name(),
                    "profile": profile.to_string(),
                    "address": node.client_address(),
                    "pid": pid,
                    "healthy": answer.is_ok(),
                    "version": answer.as_ref().ok(),
                    "error": answer.as_ref().err().map(|e| format!("{e:#}")),
                    "rss_mib": pid.and_then(process::rss_mib),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        if profile == Profile::Cluster {
            println!("profile: cluster");
        }
        println!(
            "{:<13} {:<9} {:>8} {:<16} {:>8}  VERSION",
            "SERVER", "STATE", "PID", "ADDRESS", "RSS MiB"
        );
        for (node, pid, answer) in &rows {
            let state = match (pid, answer) {
                (None, _) => "stopped",
                (Some(_), Ok(_)) => "healthy",
                (Some(_), Err(_)) => "unhealthy",
            };
            let detail = match answer {
                Ok(version) => version.clone(),
                Err(e) if pid.is_some() => format!("{e:#}"),
                Err(_) => String::new(),
            };
            println!(
                "{:<13} {:<9} {:>8} {:<16} {:>8}  {}",
                node.name(),
                state,
                pid.map_or_else(|| "-".into(), |p| p.to_string()),
                node.client_address(),
                pid.and_then(process::rss_mib)
                    .map_or_else(|| "-".into(), |m| m.to_string()),
                detail
            );
        }
        if let Some(free) = free {
            println!(
                "data in {}: {} free",
                layout.stack.display(),
                layout::gib(free)
            );
        }
    }
    if let Some(warning) = free.and_then(|free| layout.low_disk_warning(free)) {
        eprintln!("{warning}");
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
