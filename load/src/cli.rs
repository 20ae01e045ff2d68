//! The command line of a load run, one for both front ends: `salesflow-load` and
//! `salesflow load` (a command the load crate adds to the host).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Runs a salesflow load profile",
    after_help = "Examples:\n  \
                  salesflow load load/profiles/smoke.toml\n  \
                  salesflow load load/profiles/steady.toml --target http://127.0.0.1:8080\n  \
                  salesflow load load/profiles/steady.toml --target http://api-1:8080,http://api-2:8080\n  \
                  salesflow load load/profiles/soak.toml --monitor http://127.0.0.1:8080/metrics\n  \
                  salesflow load load/profiles/steady.toml --compare load/reports/steady-OLD.json\n  \
                  salesflow load load/profiles/smoke.toml --run-id 1f2e3d4c5b6a7980\n  \
                  SALESFLOW_LOAD_INGEST_KEY=... SALESFLOW_LOAD_QUERY_KEY=... salesflow load \
                  load/profiles/smoke.toml --target https://localhost:8443 --ca-cert server.pem"
)]
pub struct Cli {
    /// The profile, e.g. load/profiles/smoke.toml.
    pub profile: PathBuf,
    /// Reproduce a run: the run id printed by it (hex).
    #[arg(long, value_parser = parse_hex)]
    pub run_id: Option<u64>,
    /// Compare with a previous JSON report.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Where to write the reports.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// The API base URL, e.g. `http://127.0.0.1:8080`. Several Command API processes:
    /// the option again, or their URLs separated by commas; orders go round-robin over
    /// them, queries to the first (unless `--query`).
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub target: Vec<String>,
    /// The Query API base URL, when it is served elsewhere than `--target`.
    #[arg(long)]
    pub query: Option<String>,
    /// A salesflow /metrics URL to sample resident memory from.
    #[arg(long)]
    pub monitor: Option<String>,
    /// A PEM certificate to trust for `https://` targets (a CA's, or a self-signed
    /// server's).
    #[arg(long, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// The environment variable holding the Command API's key, sent as `Authorization:
    /// Bearer` (default `SALESFLOW_LOAD_INGEST_KEY`; unset: no key).
    #[arg(long, value_name = "NAME")]
    pub ingest_key_env: Option<String>,
    /// The environment variable holding the Query API's key (default
    /// `SALESFLOW_LOAD_QUERY_KEY`).
    #[arg(long, value_name = "NAME")]
    pub query_key_env: Option<String>,
}

/// The run's options from its command line.
fn options(cli: &Cli) -> crate::Options {
    crate::Options {
        run_id: cli.run_id,
        compare: cli.compare.clone(),
        report_dir: cli.report_dir.clone(),
        target: (!cli.target.is_empty()).then(|| cli.target.join(",")),
        query: cli.query.clone(),
        monitor: cli.monitor.clone(),
        ca_certificate: cli.ca_cert.clone(),
        ingest_key_env: cli.ingest_key_env.clone(),
        query_key_env: cli.query_key_env.clone(),
    }
}

fn parse_hex(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

/// Parses `args` (after the program's name) and runs the profile: 0 when it passed, 1
/// when it did not (thresholds, reconciliation, invalid orders accepted), 2 when it could
/// not run.
pub fn main_with(name: &str, args: &[String]) -> ExitCode {
    let cli: Cli = match salesflow_plugin_api::parse_args(name, args) {
        Ok(cli) => cli,
        Err(code) if code == ExitCode::SUCCESS => return code,
        Err(_) => return ExitCode::from(2),
    };
    let options = options(&cli);
    let runtime = match salesflow_plugin_api::multi_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(crate::run(&cli.profile, &options)) {
        Ok(outcome) if outcome.passed => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!(
                "{name}: the run did not pass (thresholds, reconciliation or invalid orders accepted)"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `salesflow load PROFILE.toml [--target URL] [--run-id HEX] ...`.
pub struct LoadCommand;

impl salesflow_plugin_api::Command for LoadCommand {
    fn name(&self) -> &'static str {
        "load"
    }

    fn about(&self) -> &'static str {
        "Run a load profile against the APIs (see load/profiles/); the exit code says whether \
         its thresholds held and every accepted order was found"
    }

    fn needs_config(&self) -> bool {
        false
    }

    fn run(&self, args: &[String], _config: Option<&salesflow_plugin_api::ConfigView>) -> ExitCode {
        main_with("salesflow load", args)
    }
}

/// Adds `salesflow load`.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.command(std::sync::Arc::new(LoadCommand));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::profile::Urls;

    fn targets(args: &[&str]) -> Option<String> {
        let cli = Cli::try_parse_from(
            ["salesflow-load", "load/profiles/smoke.toml"]
                .iter()
                .chain(args),
        )
        .unwrap();
        options(&cli).target
    }

    #[test]
    fn target_is_one_url_repeated_or_separated_by_commas() {
        assert_eq!(targets(&[]), None);
        assert_eq!(
            targets(&["--target", "http://a:8080"]).as_deref(),
            Some("http://a:8080")
        );
        let both = [
            targets(&[
                "--target",
                "http://a:8080",
                "--target",
                "http://b:8080,http://c:8080",
            ]),
            targets(&[
                "--target=http://a:8080,http://b:8080",
                "--target",
                "http://c:8080",
            ]),
        ];
        for target in both {
            let urls = Urls::parse(&target.unwrap()).unwrap();
            assert_eq!(
                urls.all(),
                ["http://a:8080", "http://b:8080", "http://c:8080"]
            );
        }
    }
}
