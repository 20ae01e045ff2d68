//! The `salesflow` command line: the engine's own commands (`run`, `check`, `graph`,
//! `plugins`) and the ones plugin crates add (`dlq`, `replay`, `load`), over the built-in
//! set of [`builtins`].

mod builtins;
mod scaffold;

pub use builtins::builtins;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command as Clap, value_parser};
use salesflow_host::registry::Registry;

/// The command line, with a subcommand for every registered command. A registered
/// command's arguments are passed on as given, so it parses (and documents) its own.
fn cli(registry: &Registry) -> Clap {
    let mut cli = Clap::new("salesflow")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Runs the pipelines of pipeline.toml")
        .after_help(
            "Examples:\n  \
             salesflow check                              # validate pipeline.toml, connect to nothing\n  \
             salesflow run                                # every pipeline in this process\n  \
             salesflow run --pipeline domain              # one of them\n  \
             salesflow --set server.address=127.0.0.1:9000 run\n  \
             salesflow --config other.toml graph --format dot\n  \
             salesflow <COMMAND> --help                   # a command's options and examples",
        )
        .subcommand_required(true)
        .arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .global(true)
                .env("SALESFLOW_CONFIG")
                .default_value("pipeline.toml")
                .value_parser(value_parser!(PathBuf))
                .help("The pipeline configuration"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .global(true)
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .help(
                    "Override a key of the configuration: `--set pipelines.domain.sinks.store.lanes=8`. \
                     Applied after the file and the `SALESFLOW__...` environment variables",
                ),
        )
        .subcommand(
            Clap::new("run")
                .about("Run pipelines (all of them, or the named ones) in this process")
                .after_help(
                    "Examples:\n  \
                     salesflow run\n  \
                     salesflow run --pipeline command-api --pipeline query-api\n  \
                     salesflow --set pipelines.domain.stages.carts.buffer=4 run --pipeline domain\n  \
                     salesflow run --watch                    # reload when pipeline.toml or a plugin library changes\n  \
                     kill -HUP <pid>                          # reload now (with or without --watch)\n\n\
                     A reload checks the new configuration first: an invalid one changes nothing (logged, \
                     and salesflow_config_last_reload_successful is 0). A valid one restarts only the \
                     pipelines it changed, each drained and committed first; the others never stop. \
                     [server] and [log] apply at the next start.",
                )
                .arg(
                    Arg::new("pipeline")
                        .long("pipeline")
                        .short('p')
                        .action(ArgAction::Append)
                        .help("A pipeline to run; repeat for several. Default: all"),
                )
                .arg(
                    Arg::new("watch")
                        .long("watch")
                        .short('w')
                        .action(ArgAction::SetTrue)
                        .help(
                            "Reload the configuration when its file, or a library in the plugins \
                             folder, changes (SIGHUP always reloads)",
                        ),
                ),
        )
        .subcommand(
            Clap::new("check")
                .about("Validate the configuration without connecting to anything (or, with --connect, reach every server too); the exit code says")
                .after_help(
                    "Examples:\n  \
                     salesflow check\n  \
                     salesflow check --connect                    # also build each component and run its health checks\n  \
                     salesflow --config other.toml --set log.level=debug check",
                )
                .arg(
                    Arg::new("connect")
                        .long("connect")
                        .action(ArgAction::SetTrue)
                        .help(
                            "Also build every component (connecting to its servers) and run each \
                             health check once; reads and writes nothing",
                        ),
                ),
        )
        .subcommand(
            Clap::new("graph")
                .about("Draw the topology")
                .after_help(
                    "Examples:\n  \
                     salesflow graph                       # Mermaid\n  \
                     salesflow graph --format dot --pipeline domain | dot -Tsvg > domain.svg",
                )
                .arg(
                    Arg::new("format")
                        .long("format")
                        .value_parser(["mermaid", "dot"])
                        .default_value("mermaid")
                        .help("Mermaid or Graphviz"),
                )
                .arg(
                    Arg::new("pipeline")
                        .long("pipeline")
                        .short('p')
                        .action(ArgAction::Append)
                        .help("Only these pipelines"),
                ),
        )
        .subcommand(
            Clap::new("plugins")
                .about("List every plugin with its settings, defaults and docs")
                .after_help("Examples:\n  salesflow plugins\n  salesflow plugins | less"),
        )
        .subcommand(
            Clap::new("plugin")
                .about("Start a run-time plugin library of your own")
                .after_help(
                    "Examples:\n  \
                     salesflow plugin new shop-window\n  \
                     salesflow plugin new --help",
                )
                .subcommand_required(true)
                .subcommand(
                    Clap::new("new")
                        .about(
                            "Create a cargo project (outside this repository) for a run-time plugin \
                             library: a timer-driven stage NAME and a sink NAME-file, with tests",
                        )
                        .after_help(
                            "Examples:\n  \
                             salesflow plugin new shop-window\n  \
                             salesflow plugin new shop-window --dir ~/src --sdk ~/salesflow/plugins/sdk/abi\n\n\
                             The walk-through: docs/plugins.md",
                        )
                        .arg(
                            Arg::new("name")
                                .required(true)
                                .help("The plugin's type name, also the project's folder and crate"),
                        )
                        .arg(
                            Arg::new("dir")
                                .long("dir")
                                .value_parser(value_parser!(PathBuf))
                                .default_value(".")
                                .help("The folder to create the project in"),
                        )
                        .arg(
                            Arg::new("sdk")
                                .long("sdk")
                                .value_parser(value_parser!(PathBuf))
                                .help(
                                    "The folder of the plugin SDK crate (salesflow-plugin-abi). \
                                     Default: the one this binary was built from",
                                ),
                        ),
                ),
        )
        .subcommand(
            Clap::new("schema")
                .about("Print a JSON Schema of pipeline.toml, from every plugin's settings (for editors)")
                .after_help(
                    "Examples:\n  \
                     salesflow schema > pipeline.schema.json\n  \
                     # then, first line of pipeline.toml (Taplo / Even Better TOML):\n  \
                     #:schema ./pipeline.schema.json",
                ),
        );
    for command in registry.commands() {
        cli = cli.subcommand(
            Clap::new(command.name())
                .about(command.about())
                .disable_help_flag(true)
                .arg(
                    Arg::new("args")
                        .num_args(0..)
                        .trailing_var_arg(true)
                        .allow_hyphen_values(true)
                        .help("Its own arguments (`--help` shows them)"),
                ),
        );
    }
    cli
}

/// Every `--set` in the order given, before or after the subcommand (clap keeps only one
/// level's values of a global argument).
fn all_sets() -> Vec<String> {
    let mut sets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--set" {
            sets.extend(args.next());
        } else if let Some(value) = arg.strip_prefix("--set=") {
            sets.push(value.to_owned());
        }
    }
    sets
}

/// The process: parses the command line and runs what it names.
pub fn main() -> ExitCode {
    let registry = builtins();
    let matches = cli(&registry).get_matches();
    let config: PathBuf = matches
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("pipeline.toml"));
    let sets = all_sets();
    let Some((name, sub)) = matches.subcommand() else {
        return ExitCode::FAILURE;
    };
    if name == "plugin" {
        let Some(("new", new)) = sub.subcommand() else {
            return ExitCode::FAILURE;
        };
        let project = new.get_one::<String>("name").map_or("", String::as_str);
        let parent = new
            .get_one::<PathBuf>("dir")
            .cloned()
            .unwrap_or_else(|| PathBuf::from("."));
        let sdk = new.get_one::<PathBuf>("sdk").map(PathBuf::as_path);
        return scaffold::run_new(project, &parent, sdk);
    }
    if name == "plugins" || name == "schema" {
        // This binary's plugins, plus the configured folder's when the config loads.
        let registry = salesflow_host::load_plan(&config, &sets, registry.clone())
            .map_or(registry, |(_, plan)| plan.registry);
        if name == "schema" {
            let schema = salesflow_host::schema::config_schema(&registry);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
        } else {
            print!("{}", salesflow_host::describe_plugins(&registry));
        }
        return ExitCode::SUCCESS;
    }
    if let Some(command) = registry.command(name).cloned() {
        let args: Vec<String> = sub
            .get_many::<String>("args")
            .map(|a| a.cloned().collect())
            .unwrap_or_default();
        let (args, config_after) = without_host_args(&args);
        let config = config_after.unwrap_or(config);
        if !command.needs_config() {
            return command.run(&args, None);
        }
        let (loaded, plan) = match salesflow_host::load_plan(&config, &sets, registry) {
            Ok(loaded) => loaded,
            Err(problems) => return invalid(&config, &problems),
        };
        salesflow_host::init_logging(&plan.log.level, plan.log.format);
        let view = salesflow_host::config_view(&loaded, &plan);
        return command.run(&args, Some(&view));
    }
    let (loaded, mut plan) = match salesflow_host::load_plan(&config, &sets, registry) {
        Ok(loaded) => loaded,
        Err(problems) => return invalid(&config, &problems),
    };
    match name {
        "check" => {
            print!("{}", salesflow_host::summary(&loaded, &plan));
            if sub.get_flag("connect") {
                return check_connect(&plan);
            }
            ExitCode::SUCCESS
        }
        "graph" => {
            if let Err(e) = plan.select(&pipelines(sub)) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            let drawing = match sub.get_one::<String>("format").map(String::as_str) {
                Some("dot") => salesflow_host::topology::dot(&plan),
                _ => salesflow_host::topology::mermaid(&plan),
            };
            print!("{drawing}");
            ExitCode::SUCCESS
        }
        "run" => {
            let source = salesflow_host::supervisor::ConfigSource {
                path: config,
                sets,
                registry: builtins(),
                selected: pipelines(sub),
            };
            run(plan, source, sub.get_flag("watch"))
        }
        _ => ExitCode::FAILURE,
    }
}

/// The process's async runtime, of the size the plan resolved (`[runtime]`, else
/// `TOKIO_WORKER_THREADS`, else one per core).
fn async_runtime(plan: &salesflow_host::topology::Plan) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.worker_threads.count())
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `check --connect`: every component built and every health check run once.
fn check_connect(plan: &salesflow_host::topology::Plan) -> ExitCode {
    salesflow_host::init_logging("warn", plan.log.format);
    let runtime = match async_runtime(plan) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("salesflow: {e}");
            return ExitCode::FAILURE;
        }
    };
    let found = runtime.block_on(salesflow_host::runtime::check_connections(
        plan,
        std::time::Duration::from_secs(10),
    ));
    let failed = found.iter().filter(|c| c.result.is_err()).count();
    println!("connections:");
    for check in &found {
        match &check.result {
            Ok(()) => println!("  ok      {}", check.name),
            Err(e) => println!("  FAILED  {}: {e}", check.name),
        }
    }
    println!(
        "{} check(s): {} ok, {failed} failed",
        found.len(),
        found.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn pipelines(sub: &ArgMatches) -> Vec<String> {
    sub.get_many::<String>("pipeline")
        .map(|p| p.cloned().collect())
        .unwrap_or_default()
}

/// A command's own arguments without the host's `--set`s and `--config` (given after
/// its name, clap hands them over with the rest), and that `--config` if given.
fn without_host_args(args: &[String]) -> (Vec<String>, Option<PathBuf>) {
    let mut out = Vec::with_capacity(args.len());
    let mut config = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--set" => {
                iter.next();
            }
            "--config" | "-c" => config = iter.next().map(PathBuf::from),
            _ if arg.starts_with("--set=") => {}
            _ if arg.starts_with("--config=") => {
                config = arg.strip_prefix("--config=").map(PathBuf::from);
            }
            _ => out.push(arg.clone()),
        }
    }
    (out, config)
}

fn invalid(config: &std::path::Path, problems: &str) -> ExitCode {
    eprintln!("{problems}");
    eprintln!("{}: invalid; nothing was started", config.display());
    ExitCode::FAILURE
}

fn run(
    mut plan: salesflow_host::topology::Plan,
    source: salesflow_host::supervisor::ConfigSource,
    watch: bool,
) -> ExitCode {
    if let Err(e) = plan.select(&source.selected) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    salesflow_host::init_logging(&plan.log.level, plan.log.format);
    let runtime = match async_runtime(&plan) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("salesflow: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(salesflow_host::run(plan, source, watch)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let message = with_causes(e.as_ref());
            tracing::error!(error = %message, "salesflow failed");
            eprintln!("salesflow: {message}");
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each said once. Most of salesflow's errors already end with
/// their cause's message (and keep the cause for its chain), so `{:#}`, which appends
/// every cause, would print those twice; a cause is added only when the message so far
/// does not hold it.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        next = cause.source();
        let said = cause.to_string();
        if message.contains(&said) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&said);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_lists_every_registered_command() {
        let registry = builtins();
        let help = cli(&registry).render_long_help().to_string();
        for name in [
            "run", "check", "graph", "plugins", "plugin", "schema", "dlq", "replay", "load", "top",
        ] {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
    }

    /// An error whose message ends with its cause's, as most of salesflow's do.
    #[derive(Debug)]
    struct Layer(String, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match &self.1 {
                Some(cause) => write!(f, "{}: {cause}", self.0),
                None => f.write_str(&self.0),
            }
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn an_error_names_each_of_its_causes_once() {
        let refused = Layer("Connection refused".into(), None);
        let connecting = Layer(
            "connecting to Cassandra at 127.0.0.1:9042".into(),
            Some(Box::new(refused)),
        );
        let store = Layer("the event store".into(), Some(Box::new(connecting)));
        assert_eq!(
            with_causes(&store),
            "the event store: connecting to Cassandra at 127.0.0.1:9042: Connection refused"
        );
        // A context that does not say its cause gets it appended.
        let io = std::io::Error::other("address in use");
        let bind = anyhow::Error::new(io).context("binding the HTTP server to 127.0.0.1:8080");
        assert_eq!(
            with_causes(bind.as_ref()),
            "binding the HTTP server to 127.0.0.1:8080: address in use"
        );
    }

    #[test]
    fn sets_and_config_after_a_commands_name_are_the_hosts() {
        let args: Vec<String> = [
            "list",
            "--set",
            "a.b=1",
            "--json",
            "--set=c=2",
            "--config",
            "p.toml",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let (own, config) = without_host_args(&args);
        assert_eq!(own, vec!["list", "--json"]);
        assert_eq!(config, Some(PathBuf::from("p.toml")));
    }
}
