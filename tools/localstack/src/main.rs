//! `localstack`: the salesflow local stack without Docker.
//!
//! Runs Apache Kafka (KRaft), Apache Cassandra, OpenSearch (the Elasticsearch API) and
//! Prometheus as plain processes on 127.0.0.1, their jars resolved from Maven Central by
//! `compose/servers/pom.xml`. Everything they write (data, logs, pid files) lives under one
//! git-ignored folder, `.stack/` by default.
//!
//! ```text
//! localstack up        start what is not running, wait until each answers, apply schemas/
//! localstack status    one line a server: state, pid, address, version, resident memory
//! localstack logs      the tail of every server's log (or of the ones named)
//! localstack schemas   apply schemas/ again (idempotent)
//! localstack down      stop exactly the processes `up` started
//! ```

mod layout;
mod maven;
mod probe;
mod process;
mod schemas;
mod servers;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::layout::Layout;
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
        /// Only these servers (default: all).
        #[arg(value_enum)]
        servers: Vec<ServerKind>,
        /// Seconds to wait for each server to answer.
        #[arg(long, default_value_t = 240)]
        timeout: u64,
        /// Do not create topics, tables and index templates.
        #[arg(long)]
        no_schemas: bool,
    },
    /// Stop the servers this stack started (by their pid files) and wait until their ports
    /// are free.
    Down {
        /// Only these servers (default: all).
        #[arg(value_enum)]
        servers: Vec<ServerKind>,
    },
    /// Say, per server, whether it runs and answers, with its version and resident memory.
    /// Exits non-zero when a server is not healthy.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the tail of the servers' logs.
    Logs {
        /// Only these servers (default: all).
        #[arg(value_enum)]
        servers: Vec<ServerKind>,
        /// How many lines of each log.
        #[arg(short = 'n', long, default_value_t = 40)]
        lines: usize,
        /// Keep printing what is appended.
        #[arg(short, long)]
        follow: bool,
    },
    /// Create the topics, tables and index templates of `schemas/` (idempotent).
    Schemas,
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
            timeout,
            no_schemas,
        } => {
            up(&layout, selection(&servers), Duration::from_secs(timeout)).await?;
            if selection(&servers).contains(&ServerKind::Prometheus) {
                // A running Prometheus re-reads monitoring/ (scrape config, rules).
                probe::reload_prometheus().await?;
            }
            if !no_schemas {
                schemas::apply_all(&layout, selection(&servers)).await?;
            }
            status(&layout, false).await
        }
        Command::Down { servers } => {
            down(&layout, selection(&servers))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status(&layout, json).await,
        Command::Logs {
            servers,
            lines,
            follow,
        } => {
            process::print_logs(&layout, selection(&servers), lines, follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schemas => {
            schemas::apply_all(&layout, ServerKind::ALL).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn selection(servers: &[ServerKind]) -> &[ServerKind] {
    if servers.is_empty() {
        ServerKind::ALL
    } else {
        servers
    }
}

/// Starts what is not running, then waits for every selected server in parallel.
async fn up(layout: &Layout, kinds: &[ServerKind], timeout: Duration) -> Result<()> {
    let started_at = Instant::now();
    layout.create_dirs()?;
    let java_needed = kinds.iter().any(|k| k.is_java());
    let java = if java_needed {
        Some(servers::find_java()?)
    } else {
        None
    };
    if java_needed {
        maven::ensure_classpaths(layout)?;
    }

    let mut starting = Vec::new();
    for &kind in kinds {
        let server = Server::new(kind, layout, java.as_ref());
        if let Some(pid) = process::running_pid(layout, kind) {
            println!("{kind}: already running (pid {pid}), left alone");
            starting.push((server, None));
            continue;
        }
        server.preflight()?;
        let child = server
            .start()
            .with_context(|| format!("{kind}: could not be started"))?;
        println!(
            "{kind}: started (pid {}), waiting for it to answer",
            child.id()
        );
        starting.push((server, Some(child)));
    }

    let waits = starting.into_iter().map(|(server, child)| async move {
        let kind = server.kind;
        let result = server.wait_ready(child, timeout).await;
        (kind, result)
    });
    let mut failures = Vec::new();
    for (kind, result) in futures::future::join_all(waits).await {
        match result {
            Ok(version) => println!("{kind}: ready ({version})"),
            Err(e) => failures.push((kind, e)),
        }
    }
    if !failures.is_empty() {
        let mut message = String::new();
        for (kind, e) in &failures {
            // The failed server is stopped so that a retry starts clean; others stay up.
            let _ = process::stop(layout, *kind);
            let log = layout.log_file(*kind);
            let _ = write!(
                message,
                "\n{kind} failed to start: {e:#}\n--- last lines of {} ---\n{}",
                log.display(),
                process::tail(&log, 30)
            );
        }
        bail!("{} of the stack did not come up:{message}", failures.len());
    }
    println!("stack ready in {:.1} s", started_at.elapsed().as_secs_f64());
    Ok(())
}

fn down(layout: &Layout, kinds: &[ServerKind]) -> Result<()> {
    let mut errors = Vec::new();
    // Stop in reverse start order: Prometheus first, Kafka last.
    for &kind in kinds.iter().rev() {
        match process::stop(layout, kind) {
            Ok(Some(pid)) => println!("{kind}: stopped (pid {pid})"),
            Ok(None) => println!("{kind}: not running"),
            Err(e) => errors.push(format!("{kind}: {e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("could not stop everything:\n{}", errors.join("\n"))
    }
}

async fn status(layout: &Layout, json: bool) -> Result<ExitCode> {
    let checks = ServerKind::ALL.iter().map(|&kind| async move {
        let pid = process::running_pid(layout, kind);
        let answer = match pid {
            Some(_) => probe::probe_with(layout, kind, Duration::from_secs(5)).await,
            None => Err(anyhow::anyhow!("not running")),
        };
        (kind, pid, answer)
    });
    let rows = futures::future::join_all(checks).await;
    let healthy = rows
        .iter()
        .all(|(_, pid, answer)| pid.is_some() && answer.is_ok());
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(kind, pid, answer)| {
                serde_json::json!({
                    "server": kind.to_string(),
                    "address": kind.address(),
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
        println!(
            "{:<11} {:<9} {:>8} {:<16} {:>8}  VERSION",
            "SERVER", "STATE", "PID", "ADDRESS", "RSS MiB"
        );
        for (kind, pid, answer) in &rows {
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
                "{:<11} {:<9} {:>8} {:<16} {:>8}  {}",
                kind.to_string(),
                state,
                pid.map_or_else(|| "-".into(), |p| p.to_string()),
                kind.address(),
                pid.and_then(process::rss_mib)
                    .map_or_else(|| "-".into(), |m| m.to_string()),
                detail
            );
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
