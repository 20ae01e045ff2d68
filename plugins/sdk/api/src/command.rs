//! Commands and registration: how a plugin crate adds its plugins and its subcommands of
//! `salesflow` (`dlq`, `replay`, `load`) to a host that knows none of them by name.

use std::process::ExitCode;
use std::sync::Arc;

use crate::plugin::{ComponentKind, Plugin};

/// What a plugin crate registers into: the binary calls each crate's `register` once, in
/// one place, and the engine only ever sees these traits.
pub trait Registrar {
    fn plugin(&mut self, plugin: Arc<dyn Plugin>);
    fn command(&mut self, command: Arc<dyn Command>);
}

/// A subcommand of `salesflow` that a plugin crate adds: `salesflow NAME [ARGS...]`. The
/// host loads and validates the configuration first (`--config`, `--set`, the
/// environment) when the command asks for it, and hands the arguments after NAME over as
/// they are, so a command parses its own (`--help` included).
pub trait Command: Send + Sync {
    fn name(&self) -> &'static str;

    /// One line for `salesflow --help`.
    fn about(&self) -> &'static str;

    /// Whether it reads the configuration (a command that does not can run without one).
    fn needs_config(&self) -> bool {
        true
    }

    /// Runs it; the process exits with what it returns.
    fn run(&self, args: &[String], config: Option<&ConfigView>) -> ExitCode;
}

/// A command's arguments parsed with clap (`name` shown in its usage and errors); on
/// `--help`, `--version` or a mistake, what clap printed and the exit code to return.
pub fn parse_args<T: clap::Parser>(name: &str, args: &[String]) -> Result<T, ExitCode> {
    T::try_parse_from(std::iter::once(name.to_owned()).chain(args.iter().cloned())).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// tokio's own variable for a runtime's worker threads.
pub const TOKIO_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";

/// `TOKIO_WORKER_THREADS` as tokio reads it (`None` when unset), but a message naming the
/// variable where tokio would panic: it must be a whole number of at least 1.
pub fn worker_threads_from_env() -> Result<Option<std::num::NonZeroUsize>, String> {
    match std::env::var(TOKIO_WORKER_THREADS) {
        Ok(text) => text
            .trim()
            .parse::<std::num::NonZeroUsize>()
            .map(Some)
            .map_err(|_| {
                format!("{TOKIO_WORKER_THREADS}={text:?} is not a whole number of at least 1")
            }),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{TOKIO_WORKER_THREADS} is not text"))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
    }
}

/// A multi-threaded runtime for a command or tool: `TOKIO_WORKER_THREADS` worker threads,
/// else one per core. A bad `TOKIO_WORKER_THREADS` is an error that names it, not tokio's
/// panic.
pub fn multi_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads_from_env()? {
        builder.worker_threads(n.get());
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// The validated configuration, as a command reads it: the merged table (file,
/// environment, `--set`) and each pipeline's components with their settings (shared
/// sections already merged in, as the plugins get them).
#[derive(Clone, Debug, Default)]
pub struct ConfigView {
    pub table: toml::Table,
    pub pipelines: Vec<PipelineView>,
}

#[derive(Clone, Debug)]
pub struct PipelineView {
    pub name: String,
    pub components: Vec<ComponentView>,
}

#[derive(Clone, Debug)]
pub struct ComponentView {
    pub name: String,
    pub kind: ComponentKind,
    /// The plugin's type name (`type = "..."`).
    pub type_name: String,
    pub inputs: Vec<String>,
    pub settings: toml::Table,
}

impl ConfigView {
    pub fn pipeline(&self, name: &str) -> Option<&PipelineView> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// Every component of every pipeline, with its pipeline's name.
    pub fn components(&self) -> impl Iterator<Item = (&str, &ComponentView)> {
        self.pipelines
            .iter()
            .flat_map(|p| p.components.iter().map(move |c| (p.name.as_str(), c)))
    }
}

impl PipelineView {
    /// The first component of a kind and type.
    pub fn find(&self, kind: ComponentKind, type_name: &str) -> Option<&ComponentView> {
        self.components
            .iter()
            .find(|c| c.kind == kind && c.type_name == type_name)
    }
}
