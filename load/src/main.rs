//! `salesflow-load PROFILE.toml`: runs a load profile (also `salesflow load PROFILE.toml`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "salesflow-load",
    version,
    about = "Runs a salesflow load profile"
)]
struct Cli {
    /// The profile, e.g. load/profiles/smoke.toml.
    profile: PathBuf,
    /// Reproduce a run: the run id printed by it (hex).
    #[arg(long, value_parser = parse_hex)]
    run_id: Option<u64>,
    /// Compare with a previous JSON report.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Where to write the reports.
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// The API base URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    target: Option<String>,
    /// The Query API base URL, when it is served elsewhere than `--target`.
    #[arg(long)]
    query: Option<String>,
    /// A salesflow /metrics URL to sample resident memory from.
    #[arg(long)]
    monitor: Option<String>,
}

fn parse_hex(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = salesflow_load::Options {
        run_id: cli.run_id,
        compare: cli.compare,
        report_dir: cli.report_dir,
        target: cli.target,
        query: cli.query,
        monitor: cli.monitor,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("salesflow-load: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(salesflow_load::run(&cli.profile, &options)) {
        Ok(outcome) if outcome.passed => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!(
                "salesflow-load: the run did not pass (thresholds, reconciliation or invalid orders accepted)"
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("salesflow-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
