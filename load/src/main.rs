//! `salesflow-load PROFILE.toml`: runs a load profile (also `salesflow load PROFILE.toml`).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    salesflow_load::cli::main_with("salesflow-load", &args)
}
