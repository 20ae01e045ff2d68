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
        let ms = p.ms_per_unit(p.usage.work(server));
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
const COLUMNS: [&str; 7] = [
    "kafka",
    "cassandra",
    "opensearch",
    JIT,
    cpu::SALESFLOW,
    cpu::DRIVER,
    cpu::CHILDREN,
];

/// The column of the servers' JIT compilers.
const JIT: &str = "JIT";

fn column(p: &Phase, name: &str) -> f64 {
    match name {
        cpu::SALESFLOW => p.usage.salesflow(),
        JIT => p.usage.jit_total(),
        _ => p.usage.named(name),
    }
}

/// The Markdown of the accounting: per phase, then per server, then the verdicts.
pub fn markdown(rows: &[Row], cores: f64) -> String {
    let mut md = String::from(
        "\n## CPU accounting\n\nCPU milliseconds per unit of work, by process (user + system \
         from /proc; the driver is the benchmark process: load, and the bare server or raw \
         loop of a ceiling; its children are the tools it ran to completion). The servers' \
         columns include their JIT compilers (the JVM threads compiling code paths seen for \
         the first time), also shown apart: compiling is a cost of warming up, not of units, \
         so the comparisons below leave it out on both sides.\n\n\
         | area | phase | units | wall s | kafka | cassandra | opensearch | of which JIT | salesflow | driver | driver children | CPU of the machine |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
            let busy = p.usage.busy(cores);
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
    let sustained = phase(rows, "End to end", e2e::SUSTAINED_PHASE);
    if let Some(e2e) = sustained {
        md.push_str(
            "\n| server | unit | CPU ms per unit at its raw ceiling | CPU ms per unit end to end | ratio (target <= 1.5) | JIT end to end, ms per unit |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        let mut above = Vec::new();
        for c in &costs {
            let units = e2e.units * c.per_order;
            let per_unit = |cpu: f64| {
                if units > 0.0 {
                    cpu * 1000.0 / units
                } else {
                    0.0
                }
            };
            let ms = per_unit(e2e.usage.work(&c.server));
            let ratio = ms / c.ceiling_ms;
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:.4} | {:.2}{} | {:.4} |",
                c.server,
                c.unit,
                c.ceiling_ms,
                ms,
                ratio,
                if ratio > 1.5 { " **above**" } else { "" },
                per_unit(e2e.usage.jit(&c.server))
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
        // Kafka's own cost per record when records come one at a time, and when Kafka's
        // own clients carry the pipelines' traffic, and OpenSearch's per document when it
        // rewrites documents the index holds, beside what the end-to-end runs spent: the
        // part of a server's gap that is its own cost for the shape of work the pipeline
        // asks of it, not the ceiling's.
        for (server, area, shape, what) in [
            (
                "Kafka",
                "Kafka produce",
                crate::kafka::SHAPED_PHASE,
                "produced one at a time",
            ),
            (
                "Kafka",
                "Kafka produce",
                crate::kafka::PIPELINE_PHASE,
                "carried in the pipelines' shape by its own clients",
            ),
            (
                "OpenSearch",
                "Elasticsearch bulk",
                crate::es::REWRITE_PHASE,
                "rewritten",
            ),
            (
                "OpenSearch",
                "Elasticsearch bulk",
                crate::es::SMALL_REWRITE_PHASE,
                "rewritten in bulks of the end to end's size",
            ),
        ] {
            md.push_str(&shaped(rows, &costs, server, area, shape, what));
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
        md.push_str(&half_rate(rows, cores));
        if let Some(ceiling) = cpu::composite_ceiling(cores, &costs) {
            let _ = writeln!(
                md,
                "\nComposite ceiling {ceiling:.0} orders/s ({cores} cores / {:.3} CPU ms per order at the ceilings' efficiency).",
                cores * 1000.0 / ceiling
            );
        }
        md.push_str(&budget(e2e, &costs, cores));
        md.push_str(&shape_bound(rows, e2e, &costs, cores));
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

/// A server's CPU per unit in `shape` (a phase of `area`), against its raw ceiling's and
/// the end-to-end runs': "" when either was not measured. `name` is the server as the
/// report names it ("Kafka"); its processes are tracked by the lowercase name.
fn shaped(
    rows: &[Row],
    costs: &[ServerCost],
    name: &str,
    area: &str,
    shape: &str,
    what: &str,
) -> String {
    let server = name.to_lowercase();
    let server = server.as_str();
    let (Some(shaped), Some(cost)) = (
        phase(rows, area, shape),
        costs.iter().find(|c| c.server == server),
    ) else {
        return String::new();
    };
    let shaped_ms = shaped.ms_per_unit(shaped.usage.work(server));
    if shaped_ms <= 0.0 {
        return String::new();
    }
    let mut md = format!(
        "\n{name} spends {shaped_ms:.4} CPU ms per {} {what} ({}), {:.2}x its raw \
         ceiling's.",
        cost.unit,
        shaped.name,
        shaped_ms / cost.ceiling_ms
    );
    for (run, prefix) in [
        ("sustained (batches of 20)", e2e::SUSTAINED_PHASE),
        ("single orders", e2e::SINGLE_PHASE),
    ] {
        if let Some(p) = phase(rows, "End to end", prefix).filter(|p| p.units > 0.0) {
            let ms = p.usage.work(server) * 1000.0 / (p.units * cost.per_order);
            let _ = write!(
                md,
                " End to end, {run}: {ms:.4} ms per {}, {:.2}x that.",
                cost.unit,
                ms / shaped_ms
            );
        }
    }
    md.push('\n');
    md
}

/// Whether the half-rate latency run had the machine half free: an order's CPU at half the
/// sustainable single-order rate against at that rate, and the machine's busy share. Fewer
/// orders per Kafka request and per bulk make each order dearer as the rate falls, so half
/// the orders need not leave half the CPU; the latency targets depend on which it was.
fn half_rate(rows: &[Row], cores: f64) -> String {
    let (Some(half), Some(single)) = (
        phase(rows, "End to end", e2e::HALF_RATE_PHASE),
        phase(rows, "End to end", e2e::SINGLE_PHASE),
    ) else {
        return String::new();
    };
    if half.units <= 0.0 || single.units <= 0.0 || half.usage.seconds <= 0.0 {
        return String::new();
    }
    let (at_half, at_full) = (
        half.ms_per_unit(half.usage.total()),
        single.ms_per_unit(single.usage.total()),
    );
    let busy = half.usage.busy(cores);
    let per_server: Vec<String> = cpu::SERVERS
        .iter()
        .map(|s| (*s, half.usage.work(s), single.usage.work(s)))
        .chain([(
            cpu::SALESFLOW,
            half.usage.salesflow(),
            single.usage.salesflow(),
        )])
        .map(|(name, h, f)| {
            format!(
                "{name} {:.3} against {:.3}",
                half.ms_per_unit(h),
                single.ms_per_unit(f)
            )
        })
        .collect();
    format!(
        "\nAt half the sustainable rate ({}), an order cost {at_half:.3} CPU ms against \
         {at_full:.3} at that rate ({}), {:.2}x: {}. The machine was {:.0} % busy{}.\n",
        half.name,
        single.name,
        at_half / at_full,
        per_server.join(", "),
        busy * 100.0,
        if busy > 0.9 {
            ", so the latency targets were measured on a saturated machine, not a half-free one"
        } else {
            ""
        }
    )
}

/// Where an order's CPU went in the sustained run, against what the composite ceiling
/// counts. The end-to-end ratio is exactly the machine's busy share times the composite's
/// CPU per order over the measured CPU per order, so every line below is a part of the gap.
fn budget(e2e: &Phase, costs: &[ServerCost], cores: f64) -> String {
    if e2e.units <= 0.0 || e2e.usage.seconds <= 0.0 || costs.is_empty() {
        return String::new();
    }
    let per_order = |cpu: f64| cpu * 1000.0 / e2e.units;
    let mut lines: Vec<(String, f64)> = Vec::new();
    for c in costs {
        lines.push((
            format!(
                "{} at its ceiling's cost ({} x {})",
                c.server, c.per_order, c.unit
            ),
            c.ceiling_ms * c.per_order,
        ));
    }
    for c in costs {
        lines.push((
            format!("{} above its ceiling's cost", c.server),
            per_order(e2e.usage.work(&c.server)) - c.ceiling_ms * c.per_order,
        ));
    }
    lines.push((
        "the servers' JIT compilers".into(),
        per_order(e2e.usage.jit_total()),
    ));
    lines.push((
        "salesflow's processes".into(),
        per_order(e2e.usage.salesflow()),
    ));
    lines.push((
        "the load driver (the benchmark's clients)".into(),
        per_order(e2e.usage.named(cpu::DRIVER) + e2e.usage.named(cpu::CHILDREN)),
    ));
    let spent: f64 = lines.iter().map(|(_, ms)| ms).sum();
    let composite: f64 = costs.iter().map(|c| c.ceiling_ms * c.per_order).sum();
    let busy = e2e.usage.busy(cores);
    // CPU the machine had but nobody used, per order: the cores' time per order not spent.
    let idle = cores * e2e.usage.seconds * 1000.0 / e2e.units - per_order(e2e.usage.total());
    let mut md = format!(
        "\nWhere an order's CPU went in the sustained run ({:.0} orders/s over the phase's wall \
         time): its ratio to the composite ceiling is the machine's busy share ({:.0} %) times \
         the composite's {composite:.3} CPU ms per order over the {spent:.3} ms measured, \
         {:.2}.\n\n\
         | part | CPU ms per order | share of the order's cost |\n|---|---:|---:|\n",
        e2e.units / e2e.usage.seconds,
        busy * 100.0,
        busy * composite / spent
    );
    for (name, ms) in lines {
        let _ = writeln!(md, "| {name} | {ms:.3} | {:.0} % |", ms / spent * 100.0);
    }
    let _ = writeln!(md, "| (the machine idle, per order) | {idle:.3} | - |");
    md
}

/// For each server, the phase that measures what it spends per unit on the work the
/// pipelines ask of it (the same shape of traffic, by its own clients or raw loop); a
/// server without one counts its raw ceiling (latte runs Cassandra's very statements).
const SHAPES: [(&str, &str, &str); 2] = [
    ("kafka", "Kafka produce", crate::kafka::PIPELINE_PHASE),
    (
        "opensearch",
        "Elasticsearch bulk",
        crate::es::SMALL_REWRITE_PHASE,
    ),
];

/// The sustained run's ratio to the composite ceiling had every server spent per unit
/// only what it spends for the pipelines' shape of work, with salesflow's processes as
/// measured and with them costing nothing (the servers' JIT compilers and the driver as
/// measured, the machine as busy): the part of the gap that is the servers' own cost for
/// this work, which no client could take away, and the part that is salesflow's.
fn shape_bound(rows: &[Row], e2e: &Phase, costs: &[ServerCost], cores: f64) -> String {
    if e2e.units <= 0.0 || e2e.usage.seconds <= 0.0 || costs.is_empty() {
        return String::new();
    }
    let per_order = |cpu: f64| cpu * 1000.0 / e2e.units;
    let mut parts = Vec::new();
    let (mut shaped, mut measured) = (0.0, 0.0);
    for c in costs {
        let (ms, from) = SHAPES
            .iter()
            .find(|(server, ..)| *server == c.server)
            .and_then(|(_, area, name)| phase(rows, area, name))
            .map(|p| (p.ms_per_unit(p.usage.work(&c.server)), p.name.as_str()))
            .filter(|(ms, _)| *ms > 0.0)
            .unwrap_or((c.ceiling_ms, "its raw ceiling"));
        shaped += ms * c.per_order;
        measured += per_order(e2e.usage.work(&c.server));
        parts.push(format!(
            "{} {ms:.4} ms per {} x {} ({from})",
            c.server, c.unit, c.per_order
        ));
    }
    let composite: f64 = costs.iter().map(|c| c.ceiling_ms * c.per_order).sum();
    let busy = e2e.usage.busy(cores);
    let others = per_order(
        e2e.usage.jit_total() + e2e.usage.named(cpu::DRIVER) + e2e.usage.named(cpu::CHILDREN),
    );
    let salesflow = per_order(e2e.usage.salesflow());
    format!(
        "\nWhat each server spends for the pipelines' shape of work, whoever sends it: {}. \
         At those costs ({shaped:.3} ms per order, against {measured:.3} measured end to end), \
         the sustained run's ratio to the composite ceiling would be {:.2} with salesflow's \
         processes as measured ({salesflow:.3} ms per order) and {:.2} with them costing \
         nothing; measured {:.2}.\n",
        parts.join("; "),
        busy * composite / (shaped + salesflow + others),
        busy * composite / (shaped + others),
        busy * composite / (measured + salesflow + others),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use salesflow_bench::cpu::Usage;

    use super::*;

    #[test]
    fn the_budget_splits_an_orders_cpu_and_gives_the_ratio_to_the_composite() {
        // 1000 orders in 1 s on 2 cores; the composite counts 0.5 ms per order (4000/s).
        let costs = [
            ServerCost {
                server: "kafka".into(),
                unit: "record".into(),
                ceiling_ms: 0.05,
                per_order: 2.0,
            },
            ServerCost {
                server: "cassandra".into(),
                unit: "event".into(),
                ceiling_ms: 0.4,
                per_order: 1.0,
            },
        ];
        let usage = Usage {
            seconds: 1.0,
            cpu: BTreeMap::from([
                ("kafka".into(), 0.2),
                ("cassandra".into(), 0.8),
                ("salesflow domain".into(), 0.3),
                (cpu::DRIVER.into(), 0.1),
            ]),
            jit: BTreeMap::from([("cassandra".into(), 0.2)]),
        };
        let phase = Phase::new("end to end: batches of 20", "order", 1000.0, usage);
        let md = budget(&phase, &costs, 2.0);
        // Busy 1.4 of 2 cores; 1.4 ms per order measured: 0.7 x 0.5 / 1.4 = 0.25 = 1000/4000.
        assert!(md.contains("busy share (70 %)"), "{md}");
        assert!(md.contains("1.400 ms measured, 0.25."), "{md}");
        assert!(
            md.contains("| kafka above its ceiling's cost | 0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| cassandra above its ceiling's cost | 0.200 |"),
            "{md}"
        );
        assert!(
            md.contains("| the servers' JIT compilers | 0.200 |"),
            "{md}"
        );
        assert!(md.contains("| salesflow's processes | 0.300 |"), "{md}");
        assert!(
            md.contains("| the load driver (the benchmark's clients) | 0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| (the machine idle, per order) | 0.600 |"),
            "{md}"
        );
    }

    #[test]
    fn the_half_rate_run_is_held_against_the_cost_per_order_at_the_full_rate() {
        let usage = |seconds: f64, cpu: &[(&str, f64)]| Usage {
            seconds,
            cpu: cpu.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
            jit: BTreeMap::new(),
        };
        let mut e2e = Row::new("End to end", "orders/s", 1.0, 1.0, None, "a", "b");
        // 2000 orders in 1 s at 1 ms each (both cores); then 500 in 1 s at 3.6 ms each
        // (1.8 cores).
        e2e.phases = vec![
            Phase::new(
                e2e::SINGLE_PHASE,
                "order",
                2000.0,
                usage(
                    1.0,
                    &[
                        ("kafka", 0.2),
                        ("cassandra", 1.4),
                        ("salesflow domain", 0.4),
                    ],
                ),
            ),
            Phase::new(
                format!("{}500/s", e2e::HALF_RATE_PHASE),
                "order",
                500.0,
                usage(
                    1.0,
                    &[
                        ("kafka", 0.4),
                        ("cassandra", 1.0),
                        ("salesflow domain", 0.4),
                    ],
                ),
            ),
        ];
        let md = half_rate(&[e2e], 2.0);
        assert!(
            md.contains("an order cost 3.600 CPU ms against 1.000 at that rate"),
            "{md}"
        );
        assert!(md.contains("3.60x: kafka 0.800 against 0.100"), "{md}");
        assert!(md.contains("salesflow 0.800 against 0.200"), "{md}");
        assert!(md.contains("The machine was 90 % busy."), "{md}");
        assert!(!md.contains("saturated"), "{md}");
        // Without the half-rate phase, nothing.
        assert_eq!(half_rate(&[], 2.0), "");
    }

    #[test]
    fn the_shape_bound_counts_each_server_at_its_shapes_cost() {
        let usage = |cpu: &[(&str, f64)]| Usage {
            seconds: 1.0,
            cpu: cpu.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect(),
            jit: BTreeMap::new(),
        };
        let mut kafka = Row::new("Kafka produce", "records/s", 1.0, 1.0, None, "a", "b");
        kafka.phases = vec![
            // 0.01 ms per record at the ceiling, 0.05 in the pipelines' shape.
            Phase::new(
                "ceiling: ProducerPerformance",
                "record",
                1000.0,
                usage(&[("kafka", 0.01)]),
            ),
            Phase::new(
                crate::kafka::PIPELINE_PHASE,
                "record",
                1000.0,
                usage(&[("kafka", 0.05)]),
            ),
        ];
        let mut cassandra = Row::new("Cassandra writes", "events/s", 1.0, 1.0, None, "a", "b");
        cassandra.phases = vec![Phase::new(
            "ceiling: latte",
            "event",
            1000.0,
            usage(&[("cassandra", 0.4)]),
        )];
        let mut e2e = Row::new("End to end", "orders/s", 1.0, 1.0, None, "a", "b");
        // 1000 orders on 1 core, all of it busy: Kafka 0.1 ms per order (2 records at
        // 0.05), Cassandra 0.5, salesflow 0.2, the driver 0.2.
        e2e.phases = vec![Phase::new(
            "end to end: batches of 20",
            "order",
            1000.0,
            usage(&[
                ("kafka", 0.1),
                ("cassandra", 0.5),
                ("salesflow domain", 0.2),
                (cpu::DRIVER, 0.2),
            ]),
        )];
        let rows = [kafka, cassandra, e2e];
        let md = shape_bound(&rows, &rows[2].phases[0], &costs(&rows), 1.0);
        // Composite 0.42 ms per order; the shape's 0.5; measured servers 0.6.
        assert!(
            md.contains(&format!(
                "kafka 0.0500 ms per record x 2 ({})",
                crate::kafka::PIPELINE_PHASE
            )),
            "{md}"
        );
        assert!(
            md.contains("cassandra 0.4000 ms per event x 1 (its raw ceiling)"),
            "{md}"
        );
        assert!(
            md.contains("(0.500 ms per order, against 0.600 measured"),
            "{md}"
        );
        // 0.42 / (0.5 + 0.2 + 0.2), 0.42 / (0.5 + 0.2), 0.42 / (0.6 + 0.2 + 0.2).
        assert!(md.contains("would be 0.47 with salesflow's"), "{md}");
        assert!(
            md.contains("and 0.60 with them costing nothing; measured 0.42."),
            "{md}"
        );
    }

    #[test]
    fn a_servers_shaped_cost_stands_beside_its_ceiling_and_the_end_to_end_runs() {
        let usage = |opensearch: f64| Usage {
            seconds: 1.0,
            cpu: BTreeMap::from([("opensearch".into(), opensearch)]),
            jit: BTreeMap::new(),
        };
        let mut bulk = Row::new(
            "Elasticsearch bulk",
            "docs/s",
            1.0,
            1.0,
            Some(0.9),
            "sink",
            "raw",
        );
        bulk.phases = vec![
            // 0.05 ms per document at the ceiling, 0.07 rewriting: 1.40x.
            Phase::new(
                "ceiling: raw _bulk of 2000",
                "document",
                60000.0,
                usage(3.0),
            ),
            Phase::new(crate::es::REWRITE_PHASE, "document", 30000.0, usage(2.1)),
        ];
        let mut e2e = Row::new("End to end", "orders/s", 1.0, 1.0, Some(0.8), "e2e", "c");
        // 1000 orders of two documents: 0.084 ms per document, 1.20x the rewrite's.
        e2e.phases = vec![Phase::new(
            "end to end: batches of 20",
            "order",
            1000.0,
            usage(0.168),
        )];
        let rows = [bulk, e2e];
        let md = shaped(
            &rows,
            &costs(&rows),
            "OpenSearch",
            "Elasticsearch bulk",
            crate::es::REWRITE_PHASE,
            "rewritten",
        );
        assert!(
            md.contains("OpenSearch spends 0.0700 CPU ms per document rewritten"),
            "{md}"
        );
        assert!(md.contains("1.40x its raw ceiling's."), "{md}");
        assert!(
            md.contains(
                "End to end, sustained (batches of 20): 0.0840 ms per document, 1.20x that."
            ),
            "{md}"
        );
        // No single-orders phase measured: no sentence for it.
        assert!(!md.contains("single orders"), "{md}");
        // Without the shaped phase, nothing.
        assert_eq!(
            shaped(&rows, &costs(&rows), "Kafka", "Kafka produce", "x", "y"),
            ""
        );
    }
}
