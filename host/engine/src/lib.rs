//! The salesflow engine: loads `pipeline.toml`, validates it into a plan against the
//! plugins it is given, and runs, checks, draws or documents it. It knows the plugin SDK
//! and nothing else: the binary registers the plugins and commands (`Registrar`).

pub use salesflow_plugin_api::{NAME_RULE as PLUGIN_NAME_RULE, is_name as is_plugin_name};

pub mod adaptive;
pub mod config;
pub mod dynamic;
pub mod listener;
pub mod metrics;
pub mod registry;
pub mod runtime;
pub mod schema;
pub mod server;
pub mod supervisor;
pub mod tap;
pub mod topology;
pub mod watch;

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use prometheus_client::registry::Registry as MetricsRegistry;
use salesflow_plugin_api::CancellationToken;
use tracing::{info, warn};

use crate::config::{Loaded, LogFormat};
use crate::registry::Registry;
use crate::topology::Plan;

/// Loads and validates against `registry`; `Err` lists every problem, one per line.
pub fn load_plan(
    config: &Path,
    sets: &[String],
    registry: Registry,
) -> Result<(Loaded, Plan), String> {
    let loaded = config::load(config, sets)?;
    let plan = topology::plan(&loaded, registry).map_err(|problems| problems.join("\n"))?;
    Ok((loaded, plan))
}

/// What a command sees of the validated configuration.
pub fn config_view(loaded: &Loaded, plan: &Plan) -> salesflow_plugin_api::ConfigView {
    salesflow_plugin_api::ConfigView {
        table: loaded.table.clone(),
        pipelines: plan
            .pipelines
            .iter()
            .map(|p| salesflow_plugin_api::PipelineView {
                name: p.name.clone(),
                components: p
                    .nodes
                    .iter()
                    .map(|n| salesflow_plugin_api::ComponentView {
                        name: n.name.clone(),
                        kind: n.kind,
                        type_name: n.type_name.clone(),
                        inputs: n.inputs.clone(),
                        settings: n.settings.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// `salesflow check`: the summary printed for a valid configuration. Names and types
/// only, never setting values (they may hold secrets).
pub fn summary(loaded: &Loaded, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: valid, {} pipeline(s); HTTP on {}",
        loaded.path.display(),
        plan.pipelines.len(),
        plan.server.address
    );
    let _ = writeln!(out, "  async runtime: {}", plan.worker_threads);
    for name in &plan.loaded_plugins {
        let _ = writeln!(out, "  run-time plugin: {name}");
    }
    for pipeline in &plan.pipelines {
        let _ = writeln!(out, "  pipeline {}", pipeline.name);
        for node in &pipeline.nodes {
            let mut line = format!("    {} {} ({})", node.kind, node.name, node.type_name);
            if !node.inputs.is_empty() {
                let _ = write!(line, " <- {}", node.inputs.join(", "));
            }
            if node.kind != salesflow_plugin_api::ComponentKind::Source {
                let _ = write!(line, "; lanes {}, buffer {}", node.lanes, node.buffer);
                if let Some(bytes) = node.buffer_bytes {
                    let _ = write!(line, " ({bytes} bytes)");
                }
            }
            if node.kind == salesflow_plugin_api::ComponentKind::Sink {
                let _ = write!(line, ", concurrency {}", node.concurrency);
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// `salesflow plugins`: every plugin with its settings, defaults and docs.
pub fn describe_plugins(registry: &Registry) -> String {
    let mut out = String::new();
    for plugin in registry.all() {
        let _ = writeln!(
            out,
            "{} {:?}: {}",
            plugin.kind(),
            plugin.name(),
            plugin.summary()
        );
        if let Some(section) = plugin.shared_section() {
            let _ = writeln!(out, "  defaults come from the [{section}] table");
        }
        let schema = serde_json::to_value(plugin.settings_schema()).unwrap_or_default();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                let property = resolve(&schema, property);
                let kind = type_of(&schema, property);
                let mut line = format!("  {name} ({kind}");
                if required.contains(&name.as_str()) {
                    line.push_str(", required");
                } else if let Some(default) = property.get("default") {
                    let _ = write!(line, ", default {default}");
                }
                line.push(')');
                if let Some(doc) = property["description"].as_str() {
                    let _ = write!(line, ": {}", doc.replace('\n', " "));
                }
                let _ = writeln!(out, "{line}");
            }
        } else if let Some(doc) = schema["description"].as_str() {
            let _ = writeln!(out, "  {doc}");
        }
        out.push('\n');
    }
    out.push_str(
        "Every stage and sink also takes: inputs (required; names of sources or stages), \
         lanes (default 1: parallel instances, a batch goes to lane `lane % lanes`; \
         \"auto\": one per input partition, made as partitions are assigned), \
         buffer (default 4: bounded channel size per lane, in batches), buffer_bytes \
         (unset by default: a bound per lane in bytes on the batches queued, and for a \
         sink also being written); sinks take \
         concurrency (writes in flight per lane: a number, or \"adaptive\": from 1 up to \
         max_concurrency, default 64, following the server's round trips and \
         back-pressure; the default is adaptive unless the plugin gives a number — the \
         kafka sink's is 4).\n",
    );
    out
}

fn resolve<'a>(
    root: &'a serde_json::Value,
    property: &'a serde_json::Value,
) -> &'a serde_json::Value {
    let reference = property["$ref"]
        .as_str()
        .or_else(|| property["allOf"][0]["$ref"].as_str());
    match reference.and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) if root["$defs"].get(name).is_some() => {
            // Keep the property's own description and default over the definition's.
            if property.get("description").is_some() || property.get("default").is_some() {
                property
            } else {
                &root["$defs"][name]
            }
        }
        _ => property,
    }
}

fn type_of(root: &serde_json::Value, property: &serde_json::Value) -> String {
    let reference = property["$ref"]
        .as_str()
        .or_else(|| property["allOf"][0]["$ref"].as_str())
        .and_then(|r| r.strip_prefix("#/$defs/"));
    let target = reference.map_or(property, |name| &root["$defs"][name]);
    if let Some(values) = target["enum"].as_array() {
        let names: Vec<String> = values
            .iter()
            .map(|v| v.as_str().unwrap_or("?").to_owned())
            .collect();
        return format!("one of {}", names.join("|"));
    }
    if let Some(variants) = target["oneOf"].as_array() {
        let names: Vec<String> = variants
            .iter()
            .filter_map(|v| v["const"].as_str().or_else(|| v["enum"][0].as_str()))
            .map(str::to_owned)
            .collect();
        if !names.is_empty() {
            return format!("one of {}", names.join("|"));
        }
    }
    match &target["type"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(types) => types
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join("|"),
        _ => "value".to_owned(),
    }
}

/// Sets up logging as the config says.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SALESFLOW_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `salesflow run`: serves and runs the plan until SIGTERM/Ctrl-C or a fatal error, then
/// shuts down within the grace period. SIGHUP — and with `watch`, a change to the
/// configuration file or the plugins folder — reloads the configuration from `source`,
/// restarting only the pipelines it changed (see [`supervisor`]). Returns whether
/// everything ended cleanly.
pub async fn run(plan: Plan, source: supervisor::ConfigSource, watch: bool) -> Result<bool> {
    // The address is taken first: if it is not free, nothing has started.
    let listener = tokio::net::TcpListener::bind(plan.server.address)
        .await
        .with_context(|| format!("binding the HTTP server to {}", plan.server.address))?;
    let mut registry = MetricsRegistry::default();
    let runtime_metrics = metrics::RuntimeMetrics::register(&mut registry);
    let listener_metrics = listener::Metrics::register(&mut registry);
    let tap_keys = tap::keys(&plan.server.tap).map_err(|e| anyhow::anyhow!("server.tap.{e}"))?;
    let shared = server::Shared::new(&mut registry);
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let mut pipelines = supervisor::Supervisor::new(
        &mut registry,
        runtime_metrics,
        shared.clone(),
        &plan,
        ended_tx,
    );
    pipelines.start_all(&plan).await?;
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel(4);
    watch::on_sighup(reload_tx.clone()).context("listening for SIGHUP")?;
    let _watcher = if watch {
        Some(
            watch::on_change(&source.path, plan.plugin_dir.as_deref(), reload_tx)
                .with_context(|| format!("watching {}", source.path.display()))?,
        )
    } else {
        None
    };

    let address = listener.local_addr()?;
    let server_stop = CancellationToken::new();
    // Readiness is checked in the background (at once, then every 2 s): probes read the
    // last results instead of each costing three round trips to the servers.
    let health = server::monitor_health(
        shared.health.clone(),
        &mut registry,
        Duration::from_secs(2),
        server_stop.clone(),
    );
    let mut extra = Vec::new();
    if plan.server.tap.enabled {
        extra.push(tap::route(shared.taps.clone(), &plan.server.tap, tap_keys));
    }
    let app = server::router(
        &shared,
        extra,
        health,
        Arc::new(Mutex::new(registry)),
        plan.openapi.clone(),
    );
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        salesflow_plugin_api::axum::http::StatusCode::REQUEST_TIMEOUT,
        plan.server.request_timeout,
    ));
    let options = listener::Options {
        header_read_timeout: plan.server.header_read_timeout,
        max_connections: plan.server.max_connections,
        tls: plan.tls.clone(),
    };
    let grace = plan.server.shutdown_grace;
    let server = tokio::spawn(listener::serve(
        listener,
        app,
        options,
        listener_metrics,
        server_stop.clone(),
        grace,
    ));
    for plugin in &plan.loaded_plugins {
        info!(plugin = %plugin, "run-time plugin loaded");
    }
    info!(%address, pipelines = ?pipelines.names(), "salesflow running; listening on {address}");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("shutdown requested");
                break;
            }
            Some(pipeline) = ended.recv() => {
                warn!(%pipeline, "a pipeline's task ended; shutting down");
                break;
            }
            Some(why) = reloads.recv() => pipelines.reload(&source, why).await,
        }
    }
    // The pipelines first: a source that serves HTTP then sees its own stop, not the
    // server's, and ends as stopping rather than "on its own".
    pipelines.stop_all();
    server_stop.cancel();
    let clean = pipelines.shutdown().await;
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("HTTP server task: {e}"),
        Err(_) => warn!("HTTP server did not stop within 5 s"),
    }
    info!(clean, "salesflow stopped");
    Ok(clean)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
