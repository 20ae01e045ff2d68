//! `salesflow`: the generic pipeline host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: fewer cycles per allocation than glibc's malloc on the hot paths (bodies,
/// events, batches) and less fragmentation, so resident memory stays lower and flatter.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "salesflow",
    version,
    about = "Runs the pipelines of pipeline.toml"
)]
struct Cli {
    /// The pipeline configuration.
    #[arg(
        long,
        short,
        global = true,
        env = "SALESFLOW_CONFIG",
        default_value = "pipeline.toml"
    )]
    config: PathBuf,
    /// Override a key of the configuration: `--set pipelines.domain.sinks.store.lanes=8`.
    /// Applied after the file and the `SALESFLOW__...` environment variables.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run pipelines (all of them, or the named ones) in this process.
    Run {
        /// A pipeline to run; repeat for several. Default: all.
        #[arg(long = "pipeline", short)]
        pipelines: Vec<String>,
    },
    /// Validate the configuration without connecting to anything; the exit code says.
    Check,
    /// Draw the topology.
    Graph {
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
        /// Only these pipelines.
        #[arg(long = "pipeline", short)]
        pipelines: Vec<String>,
    },
    /// List every plugin with its settings, defaults and docs.
    Plugins,
    /// Run a load profile against the APIs (see load/profiles/); the exit code says
    /// whether its thresholds held and every accepted order was found.
    Load {
        /// The profile, e.g. load/profiles/smoke.toml.
        profile: PathBuf,
        /// The API base URL (default: the profile's).
        #[arg(long)]
        target: Option<String>,
        /// The Query API base URL, when it is served elsewhere than `--target`.
        #[arg(long)]
        query: Option<String>,
        /// Compare with a previous JSON report.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// A salesflow /metrics URL to sample resident memory from.
        #[arg(long)]
        monitor: Option<String>,
    },
    /// Dead letters: list them with their reasons, or send chosen ones back to their
    /// source topic after a fix (idempotent: downstream counts each order once).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Rebuild the read models from the event store into new indices, then switch the
    /// aliases (queries keep answering from the old ones meanwhile).
    Replay {
        /// The pipeline whose read-models stage and elasticsearch sink to use.
        #[arg(long, default_value = "projections")]
        pipeline: String,
    },
}

#[derive(Subcommand, Debug)]
enum DlqAction {
    /// Every dead letter of a topic: id (partition:offset), when, source, who, reason.
    List {
        /// The dead-letter topic (the domain's refusals: orders-dlq; the projections':
        /// cart-events-dlq).
        #[arg(long, default_value = "orders-dlq")]
        topic: String,
        /// One JSON object per dead letter, payload included.
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their source topic (or --to).
    Replay {
        #[arg(long, default_value = "orders-dlq")]
        topic: String,
        /// Which: PARTITION:OFFSET or PARTITION:FROM-TO, repeatable.
        #[arg(long = "offset", required_unless_present = "all")]
        offsets: Vec<String>,
        /// Every dead letter of the topic.
        #[arg(long, conflicts_with = "offsets")]
        all: bool,
        /// Another topic to send them to.
        #[arg(long)]
        to: Option<String>,
        /// Show what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
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

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.sets = all_sets();
    if let Command::Load {
        profile,
        target,
        query,
        compare,
        monitor,
    } = &cli.command
    {
        let options = salesflow_load::Options {
            target: target.clone(),
            query: query.clone(),
            compare: compare.clone(),
            monitor: monitor.clone(),
            ..salesflow_load::Options::default()
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("salesflow: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match runtime.block_on(salesflow_load::run(profile, &options)) {
            Ok(outcome) if outcome.passed => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "salesflow load: the run did not pass (thresholds, reconciliation or invalid orders accepted)"
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("salesflow load: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Plugins = cli.command {
        // The plugins of this binary, plus the configured folder's when the config loads.
        let registry = salesflow_host::load_plan(&cli.config, &cli.sets).map_or_else(
            |_| salesflow_host::registry::Registry::builtin(),
            |(_, plan)| plan.registry,
        );
        print!("{}", salesflow_host::describe_plugins(&registry));
        return ExitCode::SUCCESS;
    }
    let (loaded, mut plan) = match salesflow_host::load_plan(&cli.config, &cli.sets) {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{}: invalid; nothing was started", cli.config.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check => {
            print!("{}", salesflow_host::summary(&loaded, &plan));
            ExitCode::SUCCESS
        }
        Command::Graph { format, pipelines } => {
            if let Err(e) = plan.select(&pipelines) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            print!(
                "{}",
                match format {
                    GraphFormat::Mermaid => salesflow_host::topology::mermaid(&plan),
                    GraphFormat::Dot => salesflow_host::topology::dot(&plan),
                }
            );
            ExitCode::SUCCESS
        }
        Command::Run { pipelines } => {
            if let Err(e) = plan.select(&pipelines) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            salesflow_host::init_logging(&plan.log.level, plan.log.format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("salesflow: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(salesflow_host::run(plan)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "salesflow failed");
                    eprintln!("salesflow: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Replay { pipeline } => {
            salesflow_host::init_logging(&plan.log.level, plan.log.format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("salesflow: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(salesflow_host::replay(&plan, &pipeline)) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("salesflow replay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dlq { action } => dlq(&loaded.table, action),
        Command::Plugins | Command::Load { .. } => ExitCode::SUCCESS,
    }
}

fn dlq(table: &toml::Table, action: DlqAction) -> ExitCode {
    use salesflow_host::dlq;
    let result = (|| -> anyhow::Result<bool> {
        let config = dlq::client_config(table)?;
        match action {
            DlqAction::List { topic, json } => {
                let letters = dlq::read(&config, &topic)?;
                if json {
                    for l in &letters {
                        println!("{}", serde_json::to_string(l)?);
                    }
                } else {
                    print!("{}", dlq::table(&letters));
                }
                Ok(true)
            }
            DlqAction::Replay {
                topic,
                offsets,
                all,
                to,
                dry_run,
            } => {
                let wanted = dlq::parse_selection(&offsets)?;
                let letters = dlq::read(&config, &topic)?;
                let chosen: Vec<dlq::DeadLetter> = letters
                    .into_iter()
                    .filter(|l| {
                        all || wanted.iter().any(|(p, from, to)| {
                            l.partition == *p && (*from..=*to).contains(&l.offset)
                        })
                    })
                    .collect();
                if chosen.is_empty() {
                    anyhow::bail!("no dead letter of {topic} matches");
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let done = runtime.block_on(dlq::replay(
                    &config,
                    &topic,
                    &chosen,
                    to.as_deref(),
                    dry_run,
                ))?;
                for line in &done.sent {
                    println!("replayed {line}");
                }
                for line in &done.problems {
                    eprintln!("not replayed: {line}");
                }
                println!(
                    "{} of {} dead letters replayed",
                    done.sent.len(),
                    chosen.len()
                );
                Ok(done.problems.is_empty())
            }
        }
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("salesflow dlq: {e:#}");
            ExitCode::FAILURE
        }
    }
}
