//! `salesflow-e2e`: the `salesflow` binary, built with the sales system's tests (see
//! Cargo.toml).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    salesflow_cli::main()
}
