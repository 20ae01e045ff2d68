//! The report's CPU accounting: every phase's CPU per unit by process, each server's cost
//! per unit at its raw ceiling beside its cost inside the end-to-end run, and which
//! process is above its ceiling's cost when a target is missed.

use std::fmt::Write as _;

use salesflow_bench::cpu::{self, Phase, ServerCost};

use crate::{Row, e2e};

/// The phase of `area` whose name starts with `prefix`.
fn phase<'a>(rows: &'a [Row], area: &str, prefix: &str) -> Option<&'a Phase> {
    rows.iter()
        .find(|r| r.area == area)?
        .phases
        .iter()
        .find(|p| p.name.starts_with(prefix))
}

/// What each server spends per unit at its raw ceiling (from the rows measured so far),
/// with the units of it one order needs.
pub fn costs(rows: &[Row]) -> Vec<ServerCost> {
    [
        ("kafka", "Kafka produce", "record"),
        ("cassandra", "Cassandra writes", "event"),
        ("opensearch", "Elasticsearch bulk", "document"),
    ]
    .iter()
    .filter_map(|(server, area, unit)| {
        let p = phase(rows, area, "ceiling")?;
        let ms = p.ms_per_unit(p.usage.named(server));
        (ms > 0.0).then(|| ServerCost {
            server: (*server).to_owned(),
            unit: (*unit).to_owned(),
            ceiling_ms: ms,
            per_order: e2e::units_per_order(server),
        })
    })
    .collect()
}

/// The columns of the per-phase table: the servers, salesflow's processes, the driver.
const COLUMNS: [&str; 6] = [
    "kafka",
    "cassandra",
    "opensearch",
    cpu::SALESFLOW,
    cpu::DRIVER,
    cpu::CHILDREN,
];

fn column(p: &Phase, name: &str) -> f64 {
    if name == cpu::SALESFLOW {
        p.usage.salesflow()
    } else {
        p.usage.named(name)
    }
}

/// The Markdown of the accounting: per phase, then per server, then the verdicts.
pub fn markdown(rows: &[Row], cores: f64) -> String {
    let mut md = String::from(
        "\n## CPU accounting\n\nCPU milliseconds per unit of work, by process (user + system \
         from /proc; the driver is the benchmark process: load, and the bare server or raw \
         loop of a ceiling; its children are the tools it ran to completion).\n\n\
         | area | phase | units | wall s | kafka | cassandra | opensearch | salesflow | driver | driver children | CPU of the machine |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        for p in &r.phases {
            let cells: Vec<String> = COLUMNS
                .iter()
                .map(|c| {
                    let cpu = column(p, c);
                    if cpu > 0.0 {
                        format!("{:.3}", p.ms_per_unit(cpu))
                    } else {
                        "-".into()
                    }
                })
                .collect();
            let busy = if p.usage.seconds > 0.0 {
                p.usage.total() / (p.usage.seconds * cores)
            } else {
                0.0
            };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} {}s | {:.1} | {} | {:.0} % |",
                r.area,
                p.name,
                p.units,
                p.unit,
                p.usage.seconds,
                cells.join(" | "),
                busy * 100.0
            );
        }
    }

    let costs = costs(rows);
    let sustained = phase(rows, "End to end", "end to end: batches");
    if let Some(e2e) = sustained {
        md.push_str(
            "\n| server | unit | CPU ms per unit at its raw ceiling | CPU ms per unit end to end | ratio (target <= 1.5) |\n\
             |---|---|---:|---:|---:|\n",
        );
        let mut above = Vec::new();
        for c in &costs {
            let units = e2e.units * c.per_order;
            let ms = if units > 0.0 {
                e2e.usage.named(&c.server) * 1000.0 / units
            } else {
                0.0
            };
            let ratio = ms / c.ceiling_ms;
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {:.2}{} |",
                c.server,
                c.unit,
                c.ceiling_ms,
                ms,
                ratio,
                if ratio > 1.5 { " **above**" } else { "" }
            );
            if ratio > 1.5 {
                above.push(format!(
                    "{} spends {:.2}x its ceiling's CPU per {} ({:.4} ms instead of {:.4} ms; {:.3} ms more per order)",
                    c.server,
                    ratio,
                    c.unit,
                    ms,
                    c.ceiling_ms,
                    (ms - c.ceiling_ms) * c.per_order
                ));
            }
        }
        // Kafka's own cost per record when records come one at a time, beside what the
        // end-to-end runs spent per record: the part of Kafka's gap that is its cost per
        // request at the batch sizes single orders allow.
        if let Some(shaped) = phase(rows, "Kafka produce", crate::kafka::SHAPED_PHASE) {
            let shaped_ms = shaped.ms_per_unit(shaped.usage.named("kafka"));
            let _ = write!(
                md,
                "\nKafka spends {shaped_ms:.4} CPU ms per record produced one at a time ({}), \
                 {:.1}x its raw ceiling's.",
                crate::kafka::SHAPED_PHASE,
                costs
                    .iter()
                    .find(|c| c.server == "kafka")
                    .map_or(0.0, |c| shaped_ms / c.ceiling_ms)
            );
            for (name, p) in [
                ("sustained (batches of 20)", Some(e2e)),
                (
                    "single orders",
                    phase(rows, "End to end", "end to end: single"),
                ),
            ] {
                if let Some(p) = p.filter(|p| p.units > 0.0) {
                    let ms =
                        p.usage.named("kafka") * 1000.0 / (p.units * e2e::units_per_order("kafka"));
                    let _ = write!(
                        md,
                        " End to end, {name}: {ms:.4} ms per record, {:.2}x that.",
                        ms / shaped_ms
                    );
                }
            }
            md.push('\n');
        }
        let share = e2e.usage.salesflow() / (e2e.usage.seconds * cores);
        let _ = writeln!(
            md,
            "\nsalesflow's own processes used {:.0} % of the machine's CPU in the sustained run \
             (target <= 20 %); {:.3} CPU ms per order.",
            share * 100.0,
            e2e.ms_per_unit(e2e.usage.salesflow())
        );
        if share > 0.2 {
            above.push(format!(
                "salesflow's processes take {:.0} % of the CPU (target <= 20 %)",
                share * 100.0
            ));
        }
        if let Some(ceiling) = cpu::composite_ceiling(cores, &costs) {
            let _ = writeln!(
                md,
                "\nComposite ceiling {ceiling:.0} orders/s ({cores} cores / {:.3} CPU ms per order at the ceilings' efficiency).",
                cores * 1000.0 / ceiling
            );
        }
        if above.is_empty() {
            md.push_str("\nEvery server spends within 1.5x of its ceiling's CPU per unit.\n");
        } else {
            md.push_str("\nAbove their ceiling's cost:\n\n");
            for a in above {
                let _ = writeln!(md, "- {a}");
            }
        }
    }
    md
}
