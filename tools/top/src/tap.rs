//! `salesflow tap PIPELINE/COMPONENT`: prints a bounded sample of the live events leaving
//! a component of a running process, one JSON object per line, as they pass.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    about = "Print a sample of the live events leaving a component of a running process (NDJSON); the process needs [server.tap] enabled = true",
    after_help = "Examples:\n  \
                  salesflow tap command-api/validate\n  \
                  salesflow tap domain/carts.rejected --limit 50 --timeout 30s\n  \
                  SALESFLOW_QUERY_API_KEYS=... salesflow tap projections/read-models --api-key-env SALESFLOW_QUERY_API_KEYS"
)]
struct Cli {
    /// `pipeline/component`, or `pipeline/component.output` for a named output.
    component: String,
    /// The process's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// How many events to print at most.
    #[arg(long, default_value_t = 10)]
    limit: u32,
    /// How long to watch at most (the server allows up to 60 s).
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// An environment variable holding the API key (its first, when comma-separated),
    /// when the tap is behind keys.
    #[arg(long)]
    api_key_env: Option<String>,
}

async fn run(cli: Cli) -> Result<(), String> {
    let Some((pipeline, component)) = cli.component.split_once('/') else {
        return Err(format!(
            "{:?}: give pipeline/component, e.g. command-api/validate",
            cli.component
        ));
    };
    let watch = humantime_serde::re::humantime::parse_duration(&cli.timeout)
        .map_err(|e| format!("--timeout: {e}"))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(watch + Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!(
        "{}/tap/{pipeline}/{component}",
        cli.target.trim_end_matches('/')
    );
    let mut request = client.get(&url).query(&[
        ("limit", cli.limit.to_string()),
        ("timeout", cli.timeout.clone()),
    ]);
    if let Some(name) = &cli.api_key_env {
        let keys = std::env::var(name).map_err(|_| format!("{name} is not set"))?;
        let key = keys.split(',').next().unwrap_or_default().trim().to_owned();
        request = request.bearer_auth(key);
    }
    let mut response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} {body}"));
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        out.write_all(&chunk).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `salesflow tap`.
pub struct TapCommand;

impl salesflow_plugin_api::Command for TapCommand {
    fn name(&self) -> &'static str {
        "tap"
    }

    fn about(&self) -> &'static str {
        "Print a sample of the live events leaving a component of a running process (NDJSON)"
    }

    fn needs_config(&self) -> bool {
        false
    }

    fn run(&self, args: &[String], _config: Option<&salesflow_plugin_api::ConfigView>) -> ExitCode {
        let cli = match salesflow_plugin_api::parse_args::<Cli>("salesflow tap", args) {
            Ok(cli) => cli,
            Err(code) => return code,
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("salesflow tap: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(run(cli)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("salesflow tap: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
