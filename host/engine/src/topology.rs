//! From configuration to a validated plan: every pipeline's components with their plugin,
//! settings and inputs, checked before anything connects. All problems are collected and
//! reported together, each with the file line (or override) of its key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use salesflow_plugin_api::{ComponentKind, Plugin, toml};

use crate::adaptive::Concurrency;
use crate::config::{
    Loaded, LogSettings, PluginDirSettings, Problem, RuntimeSettings, ServerSettings,
    WorkerThreads, parse_section,
};
use crate::registry::Registry;

/// The smallest `buffer_bytes`: below a few events' worth, every batch would pass alone.
const MIN_BUFFER_BYTES: i64 = 1024;

/// Keys of a component table that the host reads; the rest are the plugin's settings.
const HOST_KEYS: &[&str] = &[
    "type",
    "inputs",
    "lanes",
    "buffer",
    "buffer_bytes",
    "concurrency",
    "max_concurrency",
];

/// One component of a pipeline, ready to build.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub kind: ComponentKind,
    pub type_name: String,
    pub inputs: Vec<String>,
    /// Parallel instances: a fixed number (a batch goes to lane `batch.lane % lanes`), or
    /// one per input lane key (`lanes = "auto"`: per Kafka partition), made when its
    /// first batch arrives.
    pub lanes: Lanes,
    /// Bounded channel size, in batches, of each lane.
    pub buffer: usize,
    /// Each lane's bound in bytes (`buffer_bytes`), if it has one: what its batches may
    /// hold together, queued (and for a sink, being written) — see `ByteGate`.
    pub buffer_bytes: Option<u32>,
    /// Sinks: writes in flight per lane, fixed or adaptive.
    pub concurrency: Concurrency,
    pub settings: toml::Table,
    pub plugin: Arc<dyn Plugin>,
}

/// How many instances of a stage or sink run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    Fixed(usize),
    /// One per lane key of the input (the Kafka source's key is its partition): the lanes
    /// follow the partitions assigned, however many there are.
    PerKey,
}

impl std::fmt::Display for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lanes::Fixed(n) => write!(f, "{n}"),
            Lanes::PerKey => f.write_str("auto (one per partition)"),
        }
    }
}

#[derive(Clone)]
pub struct PipelinePlan {
    pub name: String,
    /// Sources first, then stages in dependency order, then sinks.
    pub nodes: Vec<Node>,
}

pub struct Plan {
    pub server: ServerSettings,
    /// The `OpenAPI` document's text, when `server.openapi` names one.
    pub openapi: Option<String>,
    /// The TLS identity, when `[server.tls]` is set.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub log: LogSettings,
    /// The async runtime's size: `[runtime] worker_threads`, else the environment's.
    pub worker_threads: WorkerThreads,
    pub registry: Registry,
    pub pipelines: Vec<PipelinePlan>,
    pub loaded_plugins: Vec<String>,
    /// The run-time plugins' folder (`[plugins] dir`, resolved), when set.
    pub plugin_dir: Option<std::path::PathBuf>,
}

impl Plan {
    /// The pipelines to run: the named ones, or all.
    pub fn select(&mut self, names: &[String]) -> Result<(), String> {
        if names.is_empty() {
            return Ok(());
        }
        let known: Vec<String> = self.pipelines.iter().map(|p| p.name.clone()).collect();
        for name in names {
            if !known.contains(name) {
                return Err(format!(
                    "no pipeline named {name:?}; pipelines: {}",
                    known.join(", ")
                ));
            }
        }
        self.pipelines.retain(|p| names.contains(&p.name));
        Ok(())
    }
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Validates the whole configuration. `Err` holds every problem, described.
pub fn plan(loaded: &Loaded, mut registry: Registry) -> Result<Plan, Vec<String>> {
    let mut problems = Vec::new();
    let table = &loaded.table;

    let server: ServerSettings = parse_section(table, "server", &mut problems);
    let log: LogSettings = parse_section(table, "log", &mut problems);
    let runtime: RuntimeSettings = parse_section(table, "runtime", &mut problems);
    let worker_threads = runtime.resolve().unwrap_or_else(|why| {
        problems.push(Problem::new(path(&["runtime", "worker_threads"]), why));
        WorkerThreads::PerCore(1)
    });
    let plugin_dir: PluginDirSettings = parse_section(table, "plugins", &mut problems);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        problems.push(Problem::new(
            path(&["log", "level"]),
            format!("not a log filter: {e}"),
        ));
    }

    let config_dir = loaded
        .path
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."))
        .to_path_buf();
    let openapi = server.openapi.as_ref().and_then(|file| {
        let file = config_dir.join(file);
        match std::fs::read_to_string(&file) {
            Ok(text) if serde_json::from_str::<serde_json::Value>(&text).is_ok() => Some(text),
            Ok(_) => {
                problems.push(Problem::new(
                    path(&["server", "openapi"]),
                    format!("{} is not JSON", file.display()),
                ));
                None
            }
            Err(e) => {
                problems.push(Problem::new(
                    path(&["server", "openapi"]),
                    format!("cannot read {}: {e}", file.display()),
                ));
                None
            }
        }
    });
    let tls = server.tls.as_ref().and_then(|tls| {
        match crate::listener::tls_config(
            &config_dir.join(&tls.certificate),
            &config_dir.join(&tls.private_key),
        ) {
            Ok(config) => Some(std::sync::Arc::new(config)),
            Err(e) => {
                problems.push(Problem::new(path(&["server", "tls"]), e));
                None
            }
        }
    });
    if server.header_read_timeout.is_zero() || server.request_timeout.is_zero() {
        problems.push(Problem::new(
            path(&["server"]),
            "header_read_timeout and request_timeout must be more than zero",
        ));
    }
    // A semaphore's permits: a number it cannot hold would panic the listener's task.
    if !(1..=salesflow_plugin_api::MAX_PERMITS).contains(&server.max_connections) {
        problems.push(Problem::new(
            path(&["server", "max_connections"]),
            salesflow_plugin_api::PERMITS_RULE,
        ));
    }
    let mut loaded_plugins = Vec::new();
    let mut resolved_plugin_dir = None;
    if let Some(dir) = &plugin_dir.dir {
        let dir = if dir.is_relative() {
            loaded
                .path
                .parent()
                .unwrap_or_else(|| std::path::Path::new("."))
                .join(dir)
        } else {
            dir.clone()
        };
        match registry.load_dir(&dir) {
            Ok(names) => loaded_plugins = names,
            Err(e) => problems.push(Problem::new(path(&["plugins", "dir"]), e)),
        }
        resolved_plugin_dir = Some(dir);
    }

    let shared_sections = registry.shared_sections();
    for (key, value) in table {
        match key.as_str() {
            "server" | "log" | "runtime" | "plugins" | "pipelines" => {}
            other if shared_sections.contains(&other) => {
                if !value.is_table() {
                    problems.push(Problem::new(path(&[other]), "must be a table"));
                }
            }
            other => problems.push(Problem::new(
                path(&[other]),
                format!(
                    "unknown key; the top level takes server, log, runtime, plugins, pipelines{}",
                    shared_sections.iter().fold(String::new(), |mut s, x| {
                        let _ = write!(s, ", {x}");
                        s
                    })
                ),
            )),
        }
    }

    let mut pipelines = Vec::new();
    match table.get("pipelines") {
        None => problems.push(Problem::new(
            path(&["pipelines"]),
            "no pipelines are defined",
        )),
        Some(toml::Value::Table(defs)) if defs.is_empty() => {
            problems.push(Problem::new(
                path(&["pipelines"]),
                "no pipelines are defined",
            ));
        }
        Some(toml::Value::Table(defs)) => {
            for (name, def) in defs {
                if let Some(p) = pipeline(name, def, table, &registry, &mut problems) {
                    pipelines.push(p);
                }
            }
        }
        Some(_) => problems.push(Problem::new(
            path(&["pipelines"]),
            "must be a table of pipelines",
        )),
    }

    if problems.is_empty() {
        Ok(Plan {
            server,
            openapi,
            tls,
            log,
            worker_threads,
            registry,
            pipelines,
            loaded_plugins,
            plugin_dir: resolved_plugin_dir,
        })
    } else {
        Err(problems.iter().map(|p| loaded.describe(p)).collect())
    }
}

fn pipeline(
    name: &str,
    def: &toml::Value,
    root: &toml::Table,
    registry: &Registry,
    problems: &mut Vec<Problem>,
) -> Option<PipelinePlan> {
    let here = |rest: &[&str]| {
        let mut p = path(&["pipelines", name]);
        p.extend(rest.iter().map(|s| (*s).to_owned()));
        p
    };
    let Some(def) = def.as_table() else {
        problems.push(Problem::new(
            here(&[]),
            "must be a table with sources, stages and sinks",
        ));
        return None;
    };
    if !salesflow_plugin_api::is_name(name) {
        problems.push(Problem::new(
            here(&[]),
            format!("pipeline names are {}", salesflow_plugin_api::NAME_RULE),
        ));
    }
    for key in def.keys() {
        if !["sources", "stages", "sinks"].contains(&key.as_str()) {
            problems.push(Problem::new(
                here(&[key]),
                "unknown key; a pipeline holds sources, stages and sinks",
            ));
        }
    }
    let before = problems.len();
    let mut nodes = Vec::new();
    let mut names = BTreeSet::new();
    for kind in [
        ComponentKind::Source,
        ComponentKind::Stage,
        ComponentKind::Sink,
    ] {
        let Some(section) = def.get(kind.table()) else {
            let serves_only = kind == ComponentKind::Sink && !produces_events(def, registry);
            if kind != ComponentKind::Stage && !serves_only {
                problems.push(Problem::new(
                    here(&[kind.table()]),
                    format!("a pipeline needs at least one {kind}"),
                ));
            }
            continue;
        };
        let Some(section) = section.as_table() else {
            problems.push(Problem::new(
                here(&[kind.table()]),
                "must be a table of named components",
            ));
            continue;
        };
        for (component, spec) in section {
            if !names.insert(component.clone()) {
                problems.push(Problem::new(
                    here(&[kind.table(), component]),
                    "another source, stage or sink of this pipeline has the same name",
                ));
            }
            if let Some(node) = component_node(
                kind,
                component,
                spec,
                root,
                registry,
                &here(&[kind.table(), component]),
                problems,
            ) {
                nodes.push(node);
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    check_graph(name, &mut nodes, problems)?;
    Some(PipelinePlan {
        name: name.to_owned(),
        nodes,
    })
}

fn component_node(
    kind: ComponentKind,
    name: &str,
    spec: &toml::Value,
    root: &toml::Table,
    registry: &Registry,
    at: &[String],
    problems: &mut Vec<Problem>,
) -> Option<Node> {
    let sub = |key: &str| {
        let mut p = at.to_vec();
        p.push(key.to_owned());
        p
    };
    let Some(spec) = spec.as_table() else {
        problems.push(Problem::new(at.to_vec(), "must be a table"));
        return None;
    };
    if !salesflow_plugin_api::is_name(name) {
        problems.push(Problem::new(
            at.to_vec(),
            format!("component names are {}", salesflow_plugin_api::NAME_RULE),
        ));
    }
    let Some(type_name) = spec.get("type").and_then(toml::Value::as_str) else {
        problems.push(Problem::new(
            sub("type"),
            format!("every {kind} needs `type = \"...\"`"),
        ));
        return None;
    };
    let Some(plugin) = registry.get(kind, type_name) else {
        problems.push(Problem::new(
            sub("type"),
            format!(
                "unknown {kind} type {type_name:?}; known: {}",
                registry.names(kind).join(", ")
            ),
        ));
        return None;
    };
    let inputs: Vec<String> = match spec.get("inputs") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => out.push(s.to_owned()),
                    None => problems.push(Problem::new(
                        sub("inputs"),
                        format!("item {i} is not a component name"),
                    )),
                }
            }
            out
        }
        Some(_) => {
            problems.push(Problem::new(
                sub("inputs"),
                "must be a list of component names",
            ));
            Vec::new()
        }
    };
    let number = |key: &str, default: usize, max: usize, problems: &mut Vec<Problem>| -> usize {
        match spec.get(key) {
            None => default,
            Some(toml::Value::Integer(n))
                if *n >= 1 && usize::try_from(*n).is_ok_and(|n| n <= max) =>
            {
                usize::try_from(*n).unwrap_or(default)
            }
            Some(_) => {
                problems.push(Problem::new(
                    sub(key),
                    format!("must be a whole number from 1 to {max}"),
                ));
                default
            }
        }
    };
    let lanes = match spec.get("lanes") {
        Some(toml::Value::String(s)) if s == "auto" => Lanes::PerKey,
        Some(toml::Value::String(_)) => {
            problems.push(Problem::new(
                sub("lanes"),
                "must be a whole number from 1 to 1024, or \"auto\" (one per partition)",
            ));
            Lanes::Fixed(1)
        }
        _ => Lanes::Fixed(number("lanes", 1, 1024, problems)),
    };
    let buffer = number("buffer", 4, 65_536, problems);
    let buffer_bytes = match spec.get("buffer_bytes") {
        None => None,
        Some(toml::Value::Integer(n)) if (MIN_BUFFER_BYTES..=i64::from(u32::MAX)).contains(n) => {
            u32::try_from(*n).ok()
        }
        Some(_) => {
            problems.push(Problem::new(
                sub("buffer_bytes"),
                format!(
                    "must be a whole number of bytes from {MIN_BUFFER_BYTES} to {} (4 GiB)",
                    u32::MAX
                ),
            ));
            None
        }
    };
    let max_concurrency = number("max_concurrency", Concurrency::DEFAULT_MAX, 1024, problems);
    let concurrency = match spec.get("concurrency") {
        None => match plugin.default_concurrency() {
            Some(n) if !spec.contains_key("max_concurrency") => Concurrency::Fixed(n),
            _ => Concurrency::Adaptive {
                max: max_concurrency,
            },
        },
        Some(toml::Value::String(s)) if s == "adaptive" => Concurrency::Adaptive {
            max: max_concurrency,
        },
        Some(toml::Value::String(_)) => {
            problems.push(Problem::new(
                sub("concurrency"),
                "must be \"adaptive\" or a whole number from 1 to 1024",
            ));
            Concurrency::Fixed(1)
        }
        Some(_) => {
            let fixed = Concurrency::Fixed(number("concurrency", 4, 1024, problems));
            if spec.contains_key("max_concurrency") {
                problems.push(Problem::new(
                    sub("max_concurrency"),
                    "only an adaptive concurrency has a maximum; a number is fixed",
                ));
            }
            fixed
        }
    };
    if kind == ComponentKind::Source {
        for key in [
            "lanes",
            "buffer",
            "buffer_bytes",
            "concurrency",
            "max_concurrency",
        ] {
            if spec.contains_key(key) {
                problems.push(Problem::new(
                    sub(key),
                    "sources have no lanes, buffer or concurrency",
                ));
            }
        }
    }
    if kind == ComponentKind::Stage {
        for key in ["concurrency", "max_concurrency"] {
            if spec.contains_key(key) {
                problems.push(Problem::new(
                    sub(key),
                    "only sinks take concurrency; stages scale with lanes",
                ));
            }
        }
    }

    let shared_name = plugin.shared_section();
    let shared = shared_name
        .and_then(|s| root.get(s))
        .and_then(toml::Value::as_table);
    let settings = plugin_settings(root, spec, shared_name, plugin.nested_shared_sections());
    if let Err(e) = plugin.validate(&settings) {
        // A key the component does not set came from the shared section.
        let from_shared = e
            .path
            .first()
            .is_some_and(|k| !spec.contains_key(k) && shared.is_some_and(|s| s.contains_key(k)));
        // A key of a nested section the component does not set came from the top level.
        let from_nested = match e.path.as_slice() {
            [section, key, ..] if plugin.nested_shared_sections().contains(&section.as_str()) => {
                !spec
                    .get(section)
                    .and_then(toml::Value::as_table)
                    .is_some_and(|own| own.contains_key(key))
            }
            _ => false,
        };
        let mut p = if from_shared {
            vec![shared_name.unwrap_or_default().to_owned()]
        } else if from_nested {
            Vec::new()
        } else {
            at.to_vec()
        };
        p.extend(e.path.iter().cloned());
        problems.push(Problem::new(p, e.message));
    }
    Some(Node {
        name: name.to_owned(),
        kind,
        type_name: type_name.to_owned(),
        inputs,
        lanes,
        buffer,
        buffer_bytes,
        concurrency,
        settings,
        plugin: Arc::clone(plugin),
    })
}

/// The settings a component's plugin is given: the keys of its shared section (`[kafka]`,
/// `shared`) overridden by the component's own table `spec`, without the keys the host
/// reads ([`HOST_KEYS`]); each of `nested` (a top-level section the plugin also takes
/// inside its table) merged with the component's own. What the plugin validates and builds
/// from, so a tool that needs the settings of a component as the host would pass them
/// (the bench's relay, the Command API's producers) reads them here.
pub fn plugin_settings(
    root: &toml::Table,
    spec: &toml::Table,
    shared: Option<&str>,
    nested: &[&str],
) -> toml::Table {
    let mut settings = toml::Table::new();
    if let Some(shared) = shared
        .and_then(|s| root.get(s))
        .and_then(toml::Value::as_table)
    {
        settings.extend(shared.clone());
    }
    for (key, value) in spec {
        if HOST_KEYS.contains(&key.as_str()) {
            continue;
        }
        match (settings.get_mut(key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => {
                base.extend(over.clone());
            }
            _ => {
                settings.insert(key.clone(), value.clone());
            }
        }
    }
    for section in nested {
        let mut merged = root
            .get(*section)
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        if let Some(own) = spec.get(*section).and_then(toml::Value::as_table) {
            merged.extend(own.clone());
        }
        if !merged.is_empty() {
            settings.insert((*section).to_owned(), toml::Value::Table(merged));
        }
    }
    settings
}

/// The output of every sink: batches it could not write after its retries, as dead
/// letters. When no other sink reads it, a failed write fails its source batch instead.
pub const FAILED: &str = "failed";

/// `component` or `component.output`.
pub fn split_input(input: &str) -> (&str, Option<&str>) {
    match input.split_once('.') {
        Some((component, port)) => (component, Some(port)),
        None => (input, None),
    }
}

/// Whether any source of a pipeline definition emits events.
fn produces_events(def: &toml::Table, registry: &Registry) -> bool {
    def.get("sources")
        .and_then(toml::Value::as_table)
        .is_none_or(|sources| {
            sources.values().any(|spec| {
                spec.get("type")
                    .and_then(toml::Value::as_str)
                    .and_then(|t| registry.get(ComponentKind::Source, t))
                    .is_none_or(|p| p.produces_events())
            })
        })
}

/// Inputs name existing sources or stages; sources take none, everything else at least
/// one; stages form no cycle; every source and stage feeds something. Orders the nodes:
/// sources, stages (each after its inputs), sinks.
fn check_graph(pipeline: &str, nodes: &mut Vec<Node>, problems: &mut Vec<Problem>) -> Option<()> {
    let before = problems.len();
    let at =
        |node: &Node, key: &str| path(&["pipelines", pipeline, node.kind.table(), &node.name, key]);
    let kinds: BTreeMap<&str, (ComponentKind, &'static [&'static str])> = nodes
        .iter()
        .map(|n| (n.name.as_str(), (n.kind, n.plugin.outputs())))
        .collect();
    for node in nodes.iter() {
        if node.kind == ComponentKind::Source {
            if !node.inputs.is_empty() {
                problems.push(Problem::new(at(node, "inputs"), "a source takes no inputs"));
            }
            continue;
        }
        if node.inputs.is_empty() {
            problems.push(Problem::new(
                at(node, "inputs"),
                format!(
                    "a {} needs `inputs = [...]` naming sources or stages",
                    node.kind
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for input in &node.inputs {
            if !seen.insert(input) {
                problems.push(Problem::new(
                    at(node, "inputs"),
                    format!("{input:?} is listed twice"),
                ));
            }
            let (component, port) = split_input(input);
            match kinds.get(component) {
                None => problems.push(Problem::new(
                    at(node, "inputs"),
                    format!("no source or stage named {component:?} in pipeline {pipeline}"),
                )),
                Some((ComponentKind::Sink, _))
                    if port == Some(FAILED)
                        && node.kind == ComponentKind::Sink
                        && component != node.name => {}
                Some((ComponentKind::Sink, _)) => problems.push(Problem::new(
                    at(node, "inputs"),
                    format!(
                        "{component:?} is a sink; its only output is \"{component}.{FAILED}\" \
                         (the batches it could not write after its retries), read by another sink"
                    ),
                )),
                Some(_) if component == node.name => {
                    problems.push(Problem::new(
                        at(node, "inputs"),
                        "a component cannot be its own input",
                    ));
                }
                Some((_, ports)) => {
                    if let Some(port) = port.filter(|p| !ports.contains(p)) {
                        let known = if ports.is_empty() {
                            String::new()
                        } else {
                            format!("; its outputs: {}", ports.join(", "))
                        };
                        problems.push(Problem::new(
                            at(node, "inputs"),
                            format!("{component:?} has no output named {port:?}{known}"),
                        ));
                    }
                }
            }
        }
    }
    for node in nodes
        .iter()
        .filter(|n| n.kind != ComponentKind::Sink && n.plugin.produces_events())
    {
        if !nodes.iter().any(|other| other.inputs.contains(&node.name)) {
            problems.push(Problem::new(
                path(&["pipelines", pipeline, node.kind.table(), &node.name]),
                "its output goes nowhere: no stage or sink lists it in `inputs`",
            ));
        }
    }
    if problems.len() > before {
        return None;
    }

    // Kahn's algorithm over the stages; what is left over is a cycle.
    let mut ordered: Vec<Node> = nodes
        .iter()
        .filter(|n| n.kind == ComponentKind::Source)
        .cloned()
        .collect();
    let mut placed: BTreeSet<String> = ordered.iter().map(|n| n.name.clone()).collect();
    let mut stages: Vec<Node> = nodes
        .iter()
        .filter(|n| n.kind == ComponentKind::Stage)
        .cloned()
        .collect();
    while !stages.is_empty() {
        let ready: Vec<usize> = stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.inputs.iter().all(|i| placed.contains(split_input(i).0)))
            .map(|(i, _)| i)
            .collect();
        if ready.is_empty() {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            problems.push(Problem::new(
                path(&["pipelines", pipeline, "stages", names[0]]),
                format!(
                    "the stages {} form a cycle through their inputs",
                    names.join(" -> ")
                ),
            ));
            return None;
        }
        for i in ready.into_iter().rev() {
            let stage = stages.remove(i);
            placed.insert(stage.name.clone());
            ordered.push(stage);
        }
    }
    ordered.extend(
        nodes
            .iter()
            .filter(|n| n.kind == ComponentKind::Sink)
            .cloned(),
    );
    *nodes = ordered;
    Some(())
}

/// The topology as a Mermaid flowchart.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    for (p, pipeline) in plan.pipelines.iter().enumerate() {
        let _ = writeln!(out, "  subgraph p{p}[\"{}\"]", pipeline.name);
        for (n, node) in pipeline.nodes.iter().enumerate() {
            let label = format!("{}<br/><i>{} {}</i>", node.name, node.type_name, node.kind);
            let shape = match node.kind {
                ComponentKind::Source => format!("p{p}n{n}([\"{label}\"])"),
                ComponentKind::Stage => format!("p{p}n{n}[\"{label}\"]"),
                ComponentKind::Sink => format!("p{p}n{n}[(\"{label}\")]"),
            };
            let _ = writeln!(out, "    {shape}");
        }
        for (n, node) in pipeline.nodes.iter().enumerate() {
            for input in &node.inputs {
                let (component, port) = split_input(input);
                if let Some(i) = pipeline.nodes.iter().position(|x| x.name == component) {
                    let label = port.map(|p| format!("|{p}|")).unwrap_or_default();
                    let _ = writeln!(out, "    p{p}n{i} -->{label} p{p}n{n}");
                }
            }
        }
        out.push_str("  end\n");
    }
    out
}

/// The topology in Graphviz DOT.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph salesflow {\n  rankdir=LR;\n");
    for (p, pipeline) in plan.pipelines.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{p} {{\n    label=\"{}\";",
            pipeline.name
        );
        for (n, node) in pipeline.nodes.iter().enumerate() {
            let shape = match node.kind {
                ComponentKind::Source => "invhouse",
                ComponentKind::Stage => "box",
                ComponentKind::Sink => "cylinder",
            };
            let _ = writeln!(
                out,
                "    p{p}n{n} [label=\"{}\\n({} {})\", shape={shape}];",
                node.name, node.type_name, node.kind
            );
        }
        for (n, node) in pipeline.nodes.iter().enumerate() {
            for input in &node.inputs {
                let (component, port) = split_input(input);
                if let Some(i) = pipeline.nodes.iter().position(|x| x.name == component) {
                    let label = port
                        .map(|p| format!(" [label=\"{p}\"]"))
                        .unwrap_or_default();
                    let _ = writeln!(out, "    p{p}n{i} -> p{p}n{n}{label};");
                }
            }
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}
