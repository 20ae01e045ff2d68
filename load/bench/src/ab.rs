//! A/B: the end-to-end part for two builds of salesflow (two binaries, two configurations
//! or both), in interleaved pairs on one machine, compared pair by pair.
//!
//! On this shared machine two runs of the same build 23 minutes apart differed by a third
//! (every process, the servers too, cheaper or dearer together), so a before/after taken
//! from two separate runs says nothing about an effect under 10 %. Here each pair runs
//! both builds back to back, in an order that alternates from pair to pair so that neither
//! always meets the servers first, and the report gives each figure's ratio (this / base)
//! in every pair and the median of those ratios.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use salesflow_bench::common::{Build, Replication};
use salesflow_bench::cpu;

use crate::{Row, e2e};

/// One run's figures by name, in the report's order.
pub type Figures = Vec<(String, f64)>;

/// Both builds' figures from one pair of runs.
#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub base: Figures,
    pub this: Figures,
    /// Whether the base ran first in this pair.
    pub base_first: bool,
    /// How quiet the servers were when each run began, in the order they ran ("3 s, then
    /// 0.05 cores"): a run started on busier servers pays for what they were finishing.
    pub quiet: Vec<String>,
}

/// The figures an A/B compares, from an end-to-end row: its rates and latencies, then,
/// for the sustained, single-order and half-rate phases, the CPU per order of salesflow
/// (all its processes, then each), of each server doing the work (without its JIT
/// compilers) and of every process measured. The half-rate phase is where the latency
/// targets are measured: what it costs is how busy the machine is under them.
pub fn figures(row: &Row) -> Figures {
    let mut out = row.measures.clone();
    for (which, name) in [
        ("sustained", e2e::SUSTAINED_PHASE),
        ("single", e2e::SINGLE_PHASE),
        ("half rate", e2e::HALF_RATE_PHASE),
    ] {
        let Some(phase) = row.phases.iter().find(|p| p.name.starts_with(name)) else {
            continue;
        };
        let usage = &phase.usage;
        let per_order = |cpu_seconds| phase.ms_per_unit(cpu_seconds);
        out.push((
            format!("CPU ms/order, {which}: salesflow"),
            per_order(usage.salesflow()),
        ));
        for (name, seconds) in usage
            .cpu
            .iter()
            .filter(|(name, _)| name.starts_with(cpu::SALESFLOW))
        {
            out.push((
                format!("CPU ms/order, {which}: {name}"),
                per_order(*seconds),
            ));
        }
        for server in cpu::SERVERS {
            out.push((
                format!("CPU ms/order, {which}: {server} (without JIT)"),
                per_order(usage.work(server)),
            ));
        }
        out.push((
            format!("CPU ms/order, {which}: every process measured"),
            per_order(usage.total()),
        ));
    }
    out
}

/// Runs `pairs` pairs of the end-to-end part, `base` first in the odd-numbered pairs and
/// `this` first in the others, each run on read models made ahead (`read_models`, one a
/// run).
pub async fn run(
    base: &Build,
    this: &Build,
    pairs: u32,
    clients: usize,
    duration: Duration,
    mut read_models: Vec<e2e::ReadModels>,
) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    for pair in 0..pairs {
        let base_first = pair % 2 == 0;
        let order = if base_first {
            [base, this]
        } else {
            [this, base]
        };
        let mut runs = Vec::new();
        let mut quiet = Vec::new();
        for build in order {
            println!(
                "== A/B pair {} of {pairs}: {} ({}, {})",
                pair + 1,
                build.label,
                build.binary.display(),
                build.config.display()
            );
            quiet.push(crate::settle().await.to_string());
            let models = read_models.pop().unwrap_or_else(e2e::ReadModels::at_launch);
            let (row, _) = e2e::run(
                build,
                clients,
                duration,
                &[],
                &[],
                Replication::Single,
                models,
                e2e::Round::Measured,
            )
            .await?;
            runs.push(figures(&row));
        }
        let second = runs.pop().unwrap_or_default();
        let first = runs.pop().unwrap_or_default();
        let (base, this) = if base_first {
            (first, second)
        } else {
            (second, first)
        };
        out.push(Pair {
            base,
            this,
            base_first,
            quiet,
        });
    }
    Ok(out)
}

/// The middle value (the mean of the middle two for an even count); `None` when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

/// As many decimals as a figure's size needs.
fn value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The smallest value compared: the report shows three decimals, and below that a figure
/// is a few of `/proc`'s 10 ms ticks over the phase (an idle process's CPU per order),
/// whose ratio says nothing.
const RESOLUTION: f64 = 0.0005;

/// What a direction in every pair is worth: with no difference between the builds, each
/// pair's ratio falls on either side of 1 as the machine happens to move, so all `n` of
/// them fall on one side by chance once in 2^(n-1).
fn chance(n: usize) -> String {
    if n < 2 {
        return "one pair: no figure's direction can be told from the machine's own moves"
            .to_owned();
    }
    let odds = 1_u64 << (n - 1).min(63);
    format!(
        "with no difference between the builds, all {n} pairs fall on one side of 1 once in \
         {odds} by chance; a figure whose pairs cross 1 shows no direction"
    )
}

/// Whether every pair's ratio is on the same side of 1: "below" or "above" when all are
/// (a ratio of exactly 1 is on neither), "crosses" when not, "-" when a pair has none.
fn side(ratios: &[Option<f64>]) -> &'static str {
    if ratios.is_empty() || ratios.iter().any(Option::is_none) {
        return "-";
    }
    if ratios.iter().flatten().all(|r| *r < 1.0) {
        "below"
    } else if ratios.iter().flatten().all(|r| *r > 1.0) {
        "above"
    } else {
        "crosses"
    }
}

fn find(figures: &Figures, name: &str) -> Option<f64> {
    figures.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The comparison as Markdown: for each figure (in the base's first run's order), both
/// builds' values in every pair, this / base in every pair, and the median ratio. `part`
/// names what was compared ("end to end", "HTTP ingest").
pub fn markdown(part: &str, base: &Build, this: &Build, pairs: &[Pair]) -> String {
    let mut md = format!(
        "## A/B, {part}: {} / {}\n\n- base `{}`: {} with {}\n- this `{}`: {} with {}\n- {} pairs; the base ran first in pairs {}\n- servers quiet before each run, in the order they ran (waited, then their CPU): {}\n- rates and shares of a ceiling: higher is better; CPU per unit and latency: lower is better\n- {}\n\n\
         | figure | base, by pair | this, by pair | this / base, by pair | median this / base | pairs one side of 1 |\n|---|---|---|---|---:|---|\n",
        this.label,
        base.label,
        base.label,
        base.binary.display(),
        base.config.display(),
        this.label,
        this.binary.display(),
        this.config.display(),
        pairs.len(),
        pairs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.base_first)
            .map(|(i, _)| (i + 1).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        pairs
            .iter()
            .enumerate()
            .map(|(i, p)| format!("pair {}: {}", i + 1, p.quiet.join(" / ")))
            .collect::<Vec<_>>()
            .join("; "),
        chance(pairs.len()),
    );
    let Some(first) = pairs.first() else {
        md.push_str("| (no pairs run) | | | | | |\n");
        return md;
    };
    let joined = |values: &[Option<f64>], show: &dyn Fn(f64) -> String| {
        values
            .iter()
            .map(|v| v.map_or_else(|| "-".to_owned(), show))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for (name, _) in &first.base {
        let bases: Vec<Option<f64>> = pairs.iter().map(|p| find(&p.base, name)).collect();
        let ours: Vec<Option<f64>> = pairs.iter().map(|p| find(&p.this, name)).collect();
        let ratios: Vec<Option<f64>> = bases
            .iter()
            .zip(&ours)
            .map(|(b, t)| match (b, t) {
                (Some(b), Some(t)) if b.abs() >= RESOLUTION && t.abs() >= RESOLUTION => Some(t / b),
                _ => None,
            })
            .collect();
        let known: Vec<f64> = ratios.iter().flatten().copied().collect();
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} |",
            joined(&bases, &value),
            joined(&ours, &value),
            joined(&ratios, &|r| format!("{r:.2}")),
            median(&known).map_or_else(|| "-".to_owned(), |m| format!("**{m:.2}**")),
            side(&ratios),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(label: &str) -> Build {
        Build {
            label: label.into(),
            binary: format!("/b/{label}/salesflow").into(),
            config: format!("/b/{label}/pipeline.toml").into(),
        }
    }

    fn pair(base: f64, this: f64, base_first: bool) -> Pair {
        Pair {
            base: vec![
                ("sustained orders/s".into(), base),
                ("only in base".into(), 1.0),
                ("idle process ms/order".into(), 0.0002),
            ],
            this: vec![
                ("sustained orders/s".into(), this),
                ("idle process ms/order".into(), 0.0004),
            ],
            base_first,
            quiet: vec!["3 s, then 0.05 cores".into(), "2 s, then 0.04 cores".into()],
        }
    }

    #[test]
    fn a_direction_is_told_only_when_every_pair_has_it() {
        assert_eq!(side(&[Some(0.6), Some(0.59), Some(0.61)]), "below");
        assert_eq!(side(&[Some(1.2), Some(1.01)]), "above");
        assert_eq!(side(&[Some(0.9), Some(1.0), Some(0.8)]), "crosses");
        assert_eq!(side(&[Some(0.9), Some(1.1)]), "crosses");
        assert_eq!(side(&[Some(0.9), None]), "-");
        assert_eq!(side(&[]), "-");
        assert!(chance(3).contains("all 3 pairs fall on one side of 1 once in 4 by chance"));
        assert!(chance(5).contains("once in 16"));
        assert!(chance(1).starts_with("one pair"));
        let md = markdown(
            "end to end",
            &build("old"),
            &build("new"),
            &[pair(1000.0, 900.0, true), pair(1000.0, 800.0, false)],
        );
        assert!(md.contains("| **0.85** | below |"), "{md}");
        assert!(md.contains("once in 2 by chance"), "{md}");
    }

    #[test]
    fn the_median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn each_pair_is_compared_within_itself_and_the_ratios_medianed() {
        // The machine got slower over the run: pair by pair this build is 1.1x, 1.2x
        // and 0.9x the base, whatever the absolute level.
        let pairs = [
            pair(1000.0, 1100.0, true),
            pair(500.0, 600.0, false),
            pair(2000.0, 1800.0, true),
        ];
        let md = markdown("end to end", &build("old"), &build("new"), &pairs);
        assert!(md.starts_with("## A/B, end to end: new / old\n"), "{md}");
        assert!(md.contains("the base ran first in pairs 1, 3"), "{md}");
        assert!(
            md.contains("(waited, then their CPU): pair 1: 3 s, then 0.05 cores / 2 s, then 0.04 cores; pair 2: "),
            "{md}"
        );
        assert!(
            md.contains(
                "| sustained orders/s | 1000 / 500 / 2000 | 1100 / 600 / 1800 | 1.10 / 1.20 / 0.90 | **1.10** | crosses |"
            ),
            "{md}"
        );
        // A figure under the report's resolution is shown, not compared (0.0004 / 0.0002
        // would read as 2.00).
        assert!(
            md.contains(
                "| idle process ms/order | 0.000 / 0.000 / 0.000 | 0.000 / 0.000 / 0.000 | - / - / - | - | - |"
            ),
            "{md}"
        );
        // A figure only one build has is shown, not compared.
        assert!(
            md.contains("| only in base | 1.000 / 1.000 / 1.000 | - / - / - | - / - / - | - | - |"),
            "{md}"
        );
    }

    #[test]
    fn an_end_to_end_row_gives_its_rates_and_each_processs_cpu_per_order() {
        let mut row = Row::new("End to end", "orders/s", 1000.0, 0.0, None, "", "");
        row.measures = vec![("sustained orders/s".into(), 1000.0)];
        let mut usage = cpu::Usage {
            seconds: 10.0,
            ..cpu::Usage::default()
        };
        usage.cpu.insert("salesflow domain".into(), 1.0);
        usage.cpu.insert("salesflow projections".into(), 0.5);
        usage.cpu.insert("opensearch".into(), 3.0);
        usage.jit.insert("opensearch".into(), 1.0);
        let mut half = cpu::Usage {
            seconds: 10.0,
            ..cpu::Usage::default()
        };
        half.cpu.insert("salesflow command-api".into(), 2.0);
        row.phases = vec![
            cpu::Phase::new(e2e::SUSTAINED_PHASE, "order", 10_000.0, usage),
            // The half-rate phase is named with its rate: found by how its name starts.
            cpu::Phase::new(
                format!("{}1260/s (load generator)", e2e::HALF_RATE_PHASE),
                "order",
                5_000.0,
                half,
            ),
        ];
        let figures = figures(&row);
        let get = |name: &str| find(&figures, name);
        assert_eq!(get("sustained orders/s"), Some(1000.0));
        assert_eq!(get("CPU ms/order, sustained: salesflow"), Some(0.15));
        assert_eq!(get("CPU ms/order, sustained: salesflow domain"), Some(0.1));
        assert_eq!(
            get("CPU ms/order, sustained: opensearch (without JIT)"),
            Some(0.2)
        );
        assert_eq!(
            get("CPU ms/order, sustained: every process measured"),
            Some(0.45)
        );
        assert_eq!(
            get("CPU ms/order, half rate: salesflow command-api"),
            Some(0.4)
        );
        // No single-order phase in this row: nothing made up for it.
        assert!(!figures.iter().any(|(n, _)| n.contains("single")));
    }
}
