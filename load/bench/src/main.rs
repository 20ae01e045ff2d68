//! `salesflow-bench`: measures salesflow against the raw ceiling of each part it depends
//! on, in one run on one machine, and writes a table of figures and ratios (Markdown and
//! JSON) with the machine's CPU count and load.
//!
//! ```text
//! scripts/bench            (the local stack up, release builds, then this)
//! ```
//!
//! - HTTP ingest: the Command API (validated, to Kafka with acks=all) vs a bare hyper
//!   (axum) server answering the same requests, driven by the same closed-loop clients;
//! - Kafka: a Kafka -> Kafka pipeline's produce rate vs Kafka's own `ProducerPerformance`,
//!   same record size, acks=all, idempotence;
//! - Cassandra: the event store's writes vs latte writing the same rows with the same
//!   concurrency;
//! - Elasticsearch: the projection sink's bulk (external versions) vs a raw `_bulk` loop
//!   at its best batch size (doubled until the rate stops growing);
//! - end to end: sustained orders/s from POST to queryable with lag drained, vs the
//!   composite ceiling (the cores divided by what each server spends on an order at its
//!   raw ceiling's CPU per unit); latency at half that rate; resident memory of salesflow.
//!
//! Every phase is accounted in CPU: each process's CPU seconds from `/proc` per unit of
//! work, each server's cost per unit at its ceiling beside its cost end to end.

mod ab;
mod accounting;
mod cassandra;
mod cluster;
use salesflow_bench::common::Build;
use salesflow_bench::{common, cpu};
mod e2e;
mod es;
mod http;
mod kafka;
mod latency;
mod pauses;
mod relay;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "salesflow-bench",
    about = "salesflow against the raw ceilings of its servers"
)]
struct Cli {
    /// Seconds each measured phase lasts.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Concurrent clients for HTTP phases.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Only these parts (http, kafka, cassandra, elasticsearch, e2e, cluster); default
    /// all. `cluster` runs end to end again on the local stack's cluster profile (it stops
    /// the single-node stack, and starts it again afterwards).
    #[arg(long = "only", value_parser = ["http", "kafka", "cassandra", "elasticsearch", "e2e", "cluster"])]
    only: Vec<String>,
    /// Seconds of end-to-end load (every pipeline over every server) before anything is
    /// measured, so that the servers' JVMs have compiled their hot paths; 0 to skip.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// The warm-up goes on, a round of `--warmup` seconds at a time, until the servers'
    /// JIT compilers take less than this share of the servers' CPU in a round.
    #[arg(long, default_value_t = 0.05)]
    warmup_jit: f64,
    /// At most this many warm-up rounds (the report says when the JIT had not settled).
    #[arg(long, default_value_t = 10)]
    warmup_rounds: u32,
    /// Where the report goes.
    #[arg(long, default_value = "load/reports")]
    out: std::path::PathBuf,
    /// A/B instead of the parts: the end-to-end part (or, with `--only http`, the HTTP
    /// ingest part) for this build and for this other salesflow binary, in `--pairs`
    /// interleaved pairs, compared pair by pair. `scripts/bench --ab REV` builds REV's and
    /// passes it with REV's pipeline.toml.
    #[arg(long)]
    base_binary: Option<std::path::PathBuf>,
    /// The base's pipeline.toml (default: this checkout's). Alone, without
    /// `--base-binary`, it compares two configurations of this build.
    #[arg(long)]
    base_config: Option<std::path::PathBuf>,
    /// How the A/B report names the base.
    #[arg(long, default_value = "base")]
    base_label: String,
    /// How many A/B pairs to run. With no difference between the builds, all pairs fall
    /// on one side of 1 once in 2^(N-1) runs: once in 4 at 3 pairs, once in 16 at 5.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pairs: u32,
}

impl Cli {
    /// The build to compare with, when an A/B was asked for.
    fn base(&self) -> Option<Build> {
        if self.base_binary.is_none() && self.base_config.is_none() {
            return None;
        }
        let this = Build::this();
        Some(Build {
            label: self.base_label.clone(),
            binary: self.base_binary.clone().unwrap_or(this.binary),
            config: self.base_config.clone().unwrap_or(this.config),
        })
    }
}

/// Runs end-to-end load through every pipeline and server, `--warmup` seconds a round,
/// until the servers' JIT compilers have compiled the hot paths: their share of the
/// servers' CPU in a round under `--warmup-jit`, or `--warmup-rounds` rounds. Right
/// after `scripts/stack up` the compilers took 29, 26, 23, 20, 16 and 12 % of the servers'
/// CPU in six 20 s rounds, while end to end went from 255 to 1264 orders/s. Returns the report's line about it.
async fn warm_up(cli: &Cli) -> Result<(String, String)> {
    println!(
        "== Warm-up: end to end, {} s rounds, until the servers' JIT compilers take under {:.0} % of their CPU (at most {} rounds); not measured",
        cli.warmup,
        cli.warmup_jit * 100.0,
        cli.warmup_rounds
    );
    let mut shares = Vec::new();
    let mut settled = false;
    let mut waits = Vec::new();
    for round in 1..=cli.warmup_rounds.max(1) {
        waits.push(settle().await.to_string());
        let (row, _) = e2e::run(
            &Build::this(),
            cli.clients,
            Duration::from_secs(cli.warmup),
            &[],
            &[],
            common::Replication::Single,
            e2e::ReadModels::at_launch(),
            e2e::Round::WarmUp,
        )
        .await?;
        let jit: f64 = row.phases.iter().map(|p| p.usage.jit_total()).sum();
        let servers: f64 = row
            .phases
            .iter()
            .map(|p| cpu::SERVERS.iter().map(|s| p.usage.named(s)).sum::<f64>())
            .sum();
        let share = if servers > 0.0 { jit / servers } else { 0.0 };
        println!(
            "  round {round}: the servers' JIT compilers spent {jit:.1} of their {servers:.1} CPU s ({:.0} %)",
            share * 100.0
        );
        shares.push(format!("{:.0} %", share * 100.0));
        if share < cli.warmup_jit {
            settled = true;
            break;
        }
    }
    let verdict = if settled {
        "settled"
    } else {
        "**not settled**: the JIT still shares the CPU with what is measured"
    };
    Ok((
        "warm-up before measuring (end to end, not counted)".into(),
        format!(
            "{} round(s) of {} s of load; the servers' JIT compilers' share of their CPU by round: {} ({verdict}, bound {:.0} %); servers quiet before each round: {}",
            shares.len(),
            cli.warmup,
            shares.join(", "),
            cli.warmup_jit * 100.0,
            waits.join("; ")
        ),
    ))
}

/// One line of the table.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub area: String,
    pub salesflow: String,
    pub ceiling: String,
    pub unit: String,
    pub salesflow_value: f64,
    pub ceiling_value: f64,
    pub ratio: f64,
    pub target: Option<f64>,
    pub note: String,
    /// The CPU accounting of the row's phases (ceiling, then salesflow).
    pub phases: Vec<cpu::Phase>,
    /// Other figures as numbers, for comparing runs (`--base-binary`): end to end's
    /// rates and latencies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub measures: Vec<(String, f64)>,
}

impl Row {
    pub fn new(
        area: &str,
        unit: &str,
        ours: f64,
        ceiling: f64,
        target: Option<f64>,
        salesflow: &str,
        ceiling_name: &str,
    ) -> Self {
        Self {
            area: area.to_owned(),
            salesflow: salesflow.to_owned(),
            ceiling: ceiling_name.to_owned(),
            unit: unit.to_owned(),
            salesflow_value: ours,
            ceiling_value: ceiling,
            ratio: if ceiling > 0.0 { ours / ceiling } else { 0.0 },
            target,
            note: String::new(),
            phases: Vec::new(),
            measures: Vec::new(),
        }
    }

    /// Whether the ratio meets its target; `None` without a target, or without a ceiling
    /// measured (`--only e2e` runs no ceiling part, so there is no composite).
    pub fn passed(&self) -> Option<bool> {
        self.target
            .filter(|_| self.ceiling_measured())
            .map(|t| self.ratio >= t)
    }

    fn ceiling_measured(&self) -> bool {
        self.ceiling_value > 0.0
    }

    /// The row's line in the report's first table.
    fn table_line(&self) -> String {
        let target = self.target.unwrap_or_default();
        let measured = self.ceiling_measured();
        let verdict = match self.passed() {
            Some(true) => format!(">= {target:.2}: met"),
            Some(false) => format!(">= {target:.2}: **missed**"),
            None if self.target.is_some() => format!(">= {target:.2}: not judged, no ceiling"),
            None => "-".into(),
        };
        // Two decimals, or three where two would round a miss up to its target.
        let ratio = if !measured {
            "-".to_owned()
        } else if self.passed() == Some(false)
            && format!("{:.2}", self.ratio) == format!("{target:.2}")
        {
            format!("{:.3}", self.ratio)
        } else {
            format!("{:.2}", self.ratio)
        };
        let ceiling = if measured {
            format!("{:.0} {} ({})", self.ceiling_value, self.unit, self.ceiling)
        } else {
            format!("not measured ({})", self.ceiling)
        };
        format!(
            "| {} | {:.0} {} ({}) | {ceiling} | {ratio} | {verdict} |",
            self.area, self.salesflow_value, self.unit, self.salesflow,
        )
    }
}

/// The machine a report's figures come from, over the run.
#[derive(Serialize)]
struct Machine {
    started_at: String,
    cpus: usize,
    load_before: String,
    load_after: String,
    /// The servers' niceness, as `cpu::niceness` gives it.
    niceness: String,
    /// The share of the machine's CPU time the hypervisor gave to others (steal) during
    /// the run: a shared machine's figures move with it.
    steal: f64,
}

impl Machine {
    /// Read at the end of a run that started at `started_at`, with `/proc/loadavg` reading
    /// `load_before` and the machine's ticks at `ticks_before`.
    fn at_end(started_at: String, load_before: String, ticks_before: (u64, u64)) -> Self {
        let (stolen, all) = cpu::machine_ticks();
        #[allow(clippy::cast_precision_loss)]
        let steal = stolen.saturating_sub(ticks_before.0) as f64
            / all.saturating_sub(ticks_before.1).max(1) as f64;
        Self {
            started_at,
            cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            load_before,
            load_after: loadavg(),
            niceness: cpu::niceness(),
            steal,
        }
    }

    /// The report's title and the line about the machine.
    fn heading(&self, title: &str) -> String {
        format!(
            "# {title}\n\n{} — {} cores, load average {} before, {} after; the \
             servers' niceness: {}; CPU time taken by the hypervisor for others (steal): {:.1} %.\n\n",
            self.started_at,
            self.cpus,
            self.load_before,
            self.load_after,
            self.niceness,
            self.steal * 100.0
        )
    }
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    machine: Machine,
    rows: Vec<Row>,
    figures: Vec<(String, String)>,
}

/// An A/B run's report.
#[derive(Serialize)]
struct AbReport {
    #[serde(flatten)]
    machine: Machine,
    base: Build,
    this: Build,
    pairs: Vec<ab::Pair>,
    figures: Vec<(String, String)>,
}

/// The figures (name, value) as a Markdown table; nothing when there are none.
fn figures_table(figures: &[(String, String)]) -> String {
    let mut md = String::new();
    if !figures.is_empty() {
        md.push_str("\n| figure | value |\n|---|---|\n");
        for (k, v) in figures {
            let _ = writeln!(md, "| {k} | {v} |");
        }
    }
    md
}

/// Writes the report as `STEM-TIME.md` and `.json` into `dir`, and prints it.
fn write_report(dir: &std::path::Path, stem: &str, md: &str, json: &impl Serialize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("{stem}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
    std::fs::write(dir.join(format!("{stem}.md")), md)?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(json)?,
    )?;
    println!("\n{md}");
    println!("report: {}", dir.join(format!("{stem}.md")).display());
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How quiet the servers were when a part or phase began: how long [`settle`] waited, and
/// their CPU in the last second of the wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quiet {
    pub waited: f64,
    pub cores: f64,
}

impl std::fmt::Display for Quiet {
    /// As the report words it: "12 s, then 0.08 cores".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.0} s, then {:.2} cores", self.waited, self.cores)
    }
}

/// Lets the servers finish what the previous phase left them (compactions, merges,
/// flushes) before the next is measured; says how long that took and how quiet they got.
pub(crate) async fn settle() -> Quiet {
    settle_within(Duration::from_secs(90)).await
}

/// [`settle`], waiting at most `limit`: between the phases of one part, where a server
/// that never drops under the bound (the cluster profile's idle nodes) would otherwise
/// cost the whole 90 s twice in every round.
pub(crate) async fn settle_within(limit: Duration) -> Quiet {
    let (waited, cores) = cpu::settle(0.15, limit).await;
    println!(
        "  servers settled after {waited:.0} s (their CPU in the last second: {cores:.2} cores)"
    );
    Quiet { waited, cores }
}

fn main() -> Result<()> {
    // TOKIO_WORKER_THREADS sizes it, as for salesflow; a bad value is named, not a panic.
    let runtime = salesflow_plugin_api::multi_thread_runtime().map_err(anyhow::Error::msg)?;
    runtime.block_on(main_async())
}

async fn main_async() -> Result<()> {
    let cli = Cli::parse();
    let wants = |part: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == part);
    let duration = Duration::from_secs(cli.seconds);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_before = loadavg();
    let ticks_before = cpu::machine_ticks();
    let mut rows = Vec::new();
    let mut figures: Vec<(String, String)> = Vec::new();
    // How quiet the servers were when each part began, for the report.
    let mut quiet: Vec<String> = Vec::new();

    // The measured end-to-end runs' read models, made first: by their runs, they are
    // search-idle (e2e::ReadModels).
    // An A/B compares the end-to-end part, or the HTTP part alone.
    let http_ab = cli.only == ["http"];
    if cli.base().is_some() && !(cli.only.is_empty() || cli.only == ["e2e"] || http_ab) {
        anyhow::bail!(
            "an A/B (--base-binary, --base-config) compares the end-to-end part, or with \
             `--only http` the HTTP ingest part; not --only {}",
            cli.only.join(" --only ")
        );
    }
    let runs = if cli.base().is_some() {
        if http_ab { 0 } else { 2 * cli.pairs }
    } else {
        u32::from(wants("e2e"))
    };
    let mut ahead = Vec::new();
    for _ in 0..runs {
        ahead.push(e2e::ReadModels::ahead().await?);
    }
    if cli.warmup > 0 {
        figures.push(warm_up(&cli).await?);
    }
    if let Some(base) = cli.base() {
        let this = Build::this();
        let (part, pairs) = if http_ab {
            let pairs = http::run_ab(&base, &this, cli.pairs, cli.clients * 8, duration).await?;
            ("HTTP ingest", pairs)
        } else {
            let pairs = ab::run(&base, &this, cli.pairs, cli.clients, duration, ahead).await?;
            ("end to end", pairs)
        };
        let machine = Machine::at_end(started_at, load_before, ticks_before);
        let md = format!(
            "{}{}{}",
            machine.heading("salesflow benchmark: A/B"),
            ab::markdown(part, &base, &this, &pairs),
            figures_table(&figures)
        );
        let report = AbReport {
            machine,
            base,
            this,
            pairs,
            figures,
        };
        return write_report(&cli.out, "bench-ab", &md, &report);
    }
    if wants("http") {
        println!("== HTTP ingest");
        quiet.push(format!("HTTP ingest: {}", settle().await));
        rows.push(http::run(cli.clients * 8, duration).await?);
    }
    if wants("kafka") {
        println!("== Kafka produce");
        quiet.push(format!("Kafka produce: {}", settle().await));
        rows.push(kafka::run().await?);
    }
    if wants("cassandra") {
        println!("== Cassandra writes");
        quiet.push(format!("Cassandra writes: {}", settle().await));
        rows.push(cassandra::run(duration).await?);
    }
    if wants("elasticsearch") {
        println!("== Elasticsearch bulk");
        quiet.push(format!("Elasticsearch bulk: {}", settle().await));
        rows.push(es::run().await?);
    }
    if wants("e2e") {
        println!("== End to end");
        quiet.push(format!("end to end: {}", settle().await));
        let costs = accounting::costs(&rows);
        let (row, more) = e2e::run(
            &Build::this(),
            cli.clients,
            duration,
            &costs,
            &[],
            common::Replication::Single,
            ahead.pop().unwrap_or_else(e2e::ReadModels::at_launch),
            e2e::Round::Measured,
        )
        .await?;
        rows.push(row);
        figures.extend(more);
    }
    if !quiet.is_empty() {
        figures.push((
            "servers quiet before each part (waited, then their CPU)".into(),
            quiet.join("; "),
        ));
    }
    if wants("cluster") {
        println!("== End to end on the cluster profile");
        let (row, more) = cluster::run(cli.clients, duration, cli.warmup, &rows).await?;
        rows.push(row);
        figures.extend(more);
    }

    let report = Report {
        machine: Machine::at_end(started_at, load_before, ticks_before),
        rows,
        figures,
    };
    let mut md = report.machine.heading("salesflow benchmark");
    md.push_str("| area | salesflow | ceiling | ratio | target |\n|---|---:|---:|---:|---|\n");
    for r in &report.rows {
        let _ = writeln!(md, "{}", r.table_line());
    }
    for r in report.rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(md, "\n{}: {}", r.area, r.note);
    }
    #[allow(clippy::cast_precision_loss)]
    md.push_str(&accounting::markdown(
        &report.rows,
        report.machine.cpus as f64,
    ));
    md.push_str(&figures_table(&report.figures));
    write_report(&cli.out, "bench", &md, &report)
}

#[cfg(test)]
mod tests {
    use super::Row;

    #[test]
    fn a_row_is_judged_against_its_ceiling_only_when_one_was_measured() {
        let measured = Row::new(
            "End to end",
            "orders/s",
            3060.0,
            4217.0,
            Some(0.8),
            "ours",
            "c",
        );
        assert_eq!(measured.passed(), Some(false));
        assert_eq!(
            measured.table_line(),
            "| End to end | 3060 orders/s (ours) | 4217 orders/s (c) | 0.73 | >= 0.80: **missed** |"
        );
        // A miss that two decimals would round up to the target shows three.
        let close = Row::new(
            "End to end",
            "orders/s",
            7995.0,
            10000.0,
            Some(0.8),
            "ours",
            "c",
        );
        assert!(
            close
                .table_line()
                .contains("| 0.799 | >= 0.80: **missed** |")
        );
        // `--only e2e`: no ceiling part ran, so no composite and no verdict.
        let alone = Row::new(
            "End to end",
            "orders/s",
            2805.0,
            0.0,
            Some(0.8),
            "ours",
            "c",
        );
        assert_eq!(alone.passed(), None);
        assert_eq!(
            alone.table_line(),
            "| End to end | 2805 orders/s (ours) | not measured (c) | - | >= 0.80: not judged, no ceiling |"
        );
        let untargeted = Row::new("Kafka produce", "records/s", 2.0, 1.0, None, "ours", "c");
        assert!(untargeted.table_line().ends_with("| 2.00 | - |"));
    }
}
