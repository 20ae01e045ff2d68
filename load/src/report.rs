//! Reports: a summary in the terminal, and JSON, Markdown and a self-contained HTML file
//! (charts drawn as inline SVG) — with a comparison against a previous JSON report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::{ScenarioStats, Stats};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub kind: String,
    pub requests: u64,
    pub ok: u64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub statuses: std::collections::BTreeMap<String, u64>,
    pub rps: f64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub t: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct FreshnessReport {
    pub samples: u64,
    pub timeouts: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThresholdResult {
    pub threshold: String,
    pub value: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub profile: String,
    pub description: String,
    pub seed: u64,
    pub run_id: u64,
    pub started_at: String,
    pub seconds: f64,
    pub cpus: usize,
    pub load_before: String,
    pub load_after: String,
    pub scenarios: Vec<ScenarioReport>,
    pub total: ScenarioReport,
    pub timeline: Vec<Point>,
    pub freshness: FreshnessReport,
    pub thresholds: Vec<ThresholdResult>,
    pub aborted: Option<String>,
    pub knee_rps: Option<f64>,
    pub memory_mib: Vec<(f64, f64)>,
    /// Of the resident memory, what the stages' bounded caches held (MiB, summed), and
    /// the most they may hold: memory that fills to a limit by design.
    #[serde(default)]
    pub cache_mib: Vec<(f64, f64)>,
    #[serde(default)]
    pub cache_limit_mib: f64,
    pub reconciliation: Option<serde_json::Value>,
    pub invalid_refused: u64,
    pub invalid_accepted: u64,
    pub duplicates_posted: u64,
}

#[allow(clippy::cast_precision_loss)]
pub fn scenario_report(name: &str, kind: &str, s: &ScenarioStats, seconds: f64) -> ScenarioReport {
    ScenarioReport {
        name: name.to_owned(),
        kind: kind.to_owned(),
        requests: s.requests(),
        ok: s.ok(),
        outcomes: s
            .outcomes
            .iter()
            .map(|(k, v)| (format!("{k:?}").to_lowercase(), *v))
            .collect(),
        statuses: s
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        rps: if seconds > 0.0 {
            s.ok() as f64 / seconds
        } else {
            0.0
        },
        error_rate: s.error_rate(),
        p50_ms: s.quantile_ms(0.5),
        p90_ms: s.quantile_ms(0.9),
        p99_ms: s.quantile_ms(0.99),
        max_ms: s.quantile_ms(1.0),
    }
}

#[allow(clippy::cast_precision_loss)]
pub fn timeline(stats: &Stats) -> Vec<Point> {
    stats
        .timeline
        .iter()
        .enumerate()
        .map(|(t, s)| Point {
            t: t as f64,
            ok: s.ok,
            errors: s.errors,
            p50_ms: if s.latency.is_empty() {
                0.0
            } else {
                s.latency.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if s.latency.is_empty() {
                0.0
            } else {
                s.latency.value_at_quantile(0.99) as f64 / 1000.0
            },
        })
        .collect()
}

/// The highest sustained rate: the best 5-second window with under 1 % errors and a p99
/// under `latency_ms`.
#[allow(clippy::cast_precision_loss)]
pub fn knee(stats: &Stats, latency_ms: f64) -> Option<f64> {
    let mut best: Option<f64> = None;
    for window in stats.timeline.windows(5) {
        let ok: u64 = window.iter().map(|s| s.ok).sum();
        let errors: u64 = window.iter().map(|s| s.errors).sum();
        if ok == 0 || errors as f64 / (ok + errors) as f64 >= 0.01 {
            continue;
        }
        let mut merged = window[0].latency.clone();
        for s in &window[1..] {
            let _ = merged.add(&s.latency);
        }
        if merged.value_at_quantile(0.99) as f64 / 1000.0 < latency_ms {
            let rate = ok as f64 / 5.0;
            best = Some(best.map_or(rate, |b| b.max(rate)));
        }
    }
    best
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

pub fn summary(report: &RunReport, previous: Option<&RunReport>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{} — {:.1} s, seed {}, run {:x}, {} cores, load {} -> {}",
        report.profile,
        report.seconds,
        report.seed,
        report.run_id,
        report.cpus,
        report.load_before,
        report.load_after
    );
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "scenario", "requests", "ok", "ok/s", "errors", "p50", "p90", "p99", "max"
    );
    for s in report
        .scenarios
        .iter()
        .chain(std::iter::once(&report.total))
    {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9.1} {:>6.2}% {:>10} {:>10} {:>10} {:>10}",
            s.name,
            s.requests,
            s.ok,
            s.rps,
            s.error_rate * 100.0,
            fmt_ms(s.p50_ms),
            fmt_ms(s.p90_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms)
        );
    }
    let errors: Vec<String> = report
        .total
        .outcomes
        .iter()
        .filter(|(k, _)| k.as_str() != "ok")
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "not ok: {}", errors.join(", "));
    }
    let f = &report.freshness;
    let _ = writeln!(
        out,
        "freshness (POST to queryable): {} samples, p50 {}, p99 {}, max {}, {} timed out",
        f.samples,
        fmt_ms(f.p50_ms),
        fmt_ms(f.p99_ms),
        fmt_ms(f.max_ms),
        f.timeouts
    );
    if let Some(k) = report.knee_rps {
        let _ = writeln!(
            out,
            "knee: {k:.0} ok/s sustained with p99 under the profile's latency"
        );
    }
    if let Some(max) = report.memory_mib.iter().map(|(_, m)| *m).reduce(f64::max) {
        let first = report.memory_mib.first().map_or(0.0, |p| p.1);
        let last = report.memory_mib.last().map_or(0.0, |p| p.1);
        let _ = writeln!(
            out,
            "salesflow resident memory: {first:.0} -> {last:.0} MiB, max {max:.0} MiB"
        );
        if report.cache_limit_mib > 0.0 {
            let cache = |at: Option<&(f64, f64)>| at.map_or(0.0, |p| p.1);
            let (cache_first, cache_last) = (
                cache(report.cache_mib.first()),
                cache(report.cache_mib.last()),
            );
            let quarters = memory_quarters(report)
                .iter()
                .map(|q| format!("{:.0}", q.rest))
                .collect::<Vec<_>>()
                .join(" / ");
            let _ = writeln!(
                out,
                "  of it bounded caches {cache_first:.0} -> {cache_last:.0} MiB (limit {:.0} MiB); the rest {:.0} -> {:.0} MiB, by quarter of the run (medians) {quarters}",
                report.cache_limit_mib,
                first - cache_first,
                last - cache_last
            );
        }
    }
    let _ = writeln!(
        out,
        "invalid orders refused {}, accepted {}; duplicates posted {}",
        report.invalid_refused, report.invalid_accepted, report.duplicates_posted
    );
    if let Some(r) = &report.reconciliation {
        let _ = writeln!(
            out,
            "reconciliation: {} accepted over {} carts; read models {} (lost {}, duplicated {}); event store {} (lost {}, duplicated {}, carts out of order {}); read models unlike a replay {}; settled in {:.1} s",
            r["accepted"],
            r["carts"],
            r["projected"],
            r["lost_read_model"],
            r["duplicated_read_model"],
            r["stored"],
            r["lost_event_store"],
            r["duplicated_event_store"],
            r["out_of_order_carts"],
            r["read_model_mismatches"].as_u64().unwrap_or(0),
            r["settle_seconds"].as_f64().unwrap_or(0.0)
        );
        if let Some(examples) = r["examples"].as_array() {
            for e in examples {
                let _ = writeln!(out, "  {}", e.as_str().unwrap_or_default());
            }
        }
    }
    for t in &report.thresholds {
        let _ = writeln!(
            out,
            "threshold {}: {} ({:.3})",
            t.threshold,
            if t.passed { "passed" } else { "FAILED" },
            t.value
        );
    }
    if let Some(reason) = &report.aborted {
        let _ = writeln!(out, "ABORTED: {reason}");
    }
    if let Some(prev) = previous {
        let _ = writeln!(
            out,
            "compared with run {:x} ({}):",
            prev.run_id, prev.started_at
        );
        for line in compare(report, prev) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One line per scenario present in both runs: rates and latencies, and their ratios.
pub fn compare(now: &RunReport, before: &RunReport) -> Vec<String> {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    now.scenarios
        .iter()
        .chain(std::iter::once(&now.total))
        .filter_map(|s| {
            let p = before
                .scenarios
                .iter()
                .chain(std::iter::once(&before.total))
                .find(|p| p.name == s.name)?;
            Some(format!(
                "{}: ok/s {:.1} vs {:.1} ({}), p99 {} vs {} ({}), errors {:.2}% vs {:.2}%",
                s.name,
                s.rps,
                p.rps,
                ratio(s.rps, p.rps),
                fmt_ms(s.p99_ms),
                fmt_ms(p.p99_ms),
                ratio(s.p99_ms, p.p99_ms),
                s.error_rate * 100.0,
                p.error_rate * 100.0
            ))
        })
        .collect()
}

/// One quarter of a run's memory samples: the medians of the resident memory, of what
/// the bounded caches held, and of the rest (resident less caches, sample by sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryQuarter {
    pub resident: f64,
    pub caches: f64,
    pub rest: f64,
}

/// The memory samples by quarter of the run (empty under eight samples). Medians, not
/// single samples: resident memory swings by several MiB from one second to the next
/// (buffers of requests in flight), which a first-against-last comparison reads as
/// growth. Flat is the rest's medians holding once the caches are full.
pub fn memory_quarters(report: &RunReport) -> Vec<MemoryQuarter> {
    let samples: Vec<(f64, f64)> = report
        .memory_mib
        .iter()
        .zip(&report.cache_mib)
        .map(|(m, c)| (m.1, c.1))
        .collect();
    if samples.len() < 8 {
        return Vec::new();
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (0..4)
        .map(|q| {
            let part = &samples[q * samples.len() / 4..(q + 1) * samples.len() / 4];
            MemoryQuarter {
                resident: median(part.iter().map(|s| s.0).collect()),
                caches: median(part.iter().map(|s| s.1).collect()),
                rest: median(part.iter().map(|s| s.0 - s.1).collect()),
            }
        })
        .collect()
}

fn markdown(report: &RunReport, previous: Option<&RunReport>) -> String {
    let mut out = format!(
        "# Load run: {}\n\n{}\n\n",
        report.profile, report.description
    );
    let _ = writeln!(
        out,
        "Seed {}, run {:x}, started {}, {:.1} s; {} cores; load average {} before, {} after.\n",
        report.seed,
        report.run_id,
        report.started_at,
        report.seconds,
        report.cpus,
        report.load_before,
        report.load_after
    );
    out.push_str("| scenario | requests | ok | ok/s | errors | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in report
        .scenarios
        .iter()
        .chain(std::iter::once(&report.total))
    {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.2}% | {} | {} | {} | {} |",
            s.name,
            s.requests,
            s.ok,
            s.rps,
            s.error_rate * 100.0,
            fmt_ms(s.p50_ms),
            fmt_ms(s.p90_ms),
            fmt_ms(s.p99_ms),
            fmt_ms(s.max_ms)
        );
    }
    let _ = writeln!(
        out,
        "\nFreshness (POST to queryable): {} samples, p50 {}, p99 {}, max {}, {} timed out.\n",
        report.freshness.samples,
        fmt_ms(report.freshness.p50_ms),
        fmt_ms(report.freshness.p99_ms),
        fmt_ms(report.freshness.max_ms),
        report.freshness.timeouts
    );
    let quarters = memory_quarters(report);
    if !quarters.is_empty() {
        let _ = writeln!(
            out,
            "salesflow's resident memory by quarter of the run (medians of the samples, MiB; the stages' bounded caches fill towards {:.0} MiB by design, the rest should hold once they are full):\n\n\
             | quarter | resident | bounded caches | the rest |\n|---|---:|---:|---:|",
            report.cache_limit_mib
        );
        for (i, q) in quarters.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {:.1} | {:.1} | {:.1} |",
                i + 1,
                q.resident,
                q.caches,
                q.rest
            );
        }
        out.push('\n');
    }
    if let Some(r) = &report.reconciliation {
        let n = |key: &str| r[key].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "Reconciliation ({} accepted orders over {} carts, settled in {:.1} s):\n",
            n("accepted"),
            n("carts"),
            r["settle_seconds"].as_f64().unwrap_or(0.0)
        );
        out.push_str("| where | found | lost | duplicated |\n|---|---:|---:|---:|\n");
        let _ = writeln!(
            out,
            "| read models (Query API) | {} | {} | {} |",
            n("projected"),
            n("lost_read_model"),
            n("duplicated_read_model")
        );
        let _ = writeln!(
            out,
            "| event store (Cassandra) | {} | {} | {} |",
            n("stored"),
            n("lost_event_store"),
            n("duplicated_event_store")
        );
        let _ = writeln!(
            out,
            "\nCarts with events out of order: {}; carts whose read model differs from a replay of the event store: {}.\n",
            n("out_of_order_carts"),
            n("read_model_mismatches")
        );
        for example in r["examples"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "- {}", example.as_str().unwrap_or_default());
        }
        out.push('\n');
    }
    if !report.thresholds.is_empty() {
        out.push_str("| threshold | value | result |\n|---|---:|---|\n");
        for t in &report.thresholds {
            let _ = writeln!(
                out,
                "| {} | {:.3} | {} |",
                t.threshold,
                t.value,
                if t.passed { "passed" } else { "**failed**" }
            );
        }
    }
    if let Some(prev) = previous {
        let _ = writeln!(out, "\nCompared with run {:x}:\n", prev.run_id);
        for line in compare(report, prev) {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

/// A named, coloured series of (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// `#rrggbb` as a plotters colour (grey when it is not one).
fn rgb(hex: &str) -> RGBColor {
    let channel = |at: usize| {
        hex.get(at..at + 2)
            .and_then(|c| u8::from_str_radix(c, 16).ok())
            .unwrap_or(128)
    };
    RGBColor(channel(1), channel(3), channel(5))
}

/// A line chart (points for a series named "samples") as inline SVG, drawn by plotters.
fn chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let x_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (720, 260)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|x| format!("{x:.0}s"))
            .y_label_formatter(&|y| format!("{y:.1}{unit}"))
            .draw()?;
        for (name, color, points) in series {
            let color = rgb(color);
            let finite = points.iter().copied().filter(|p| p.1.is_finite());
            let legend = move |(x, y): (i32, i32)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
            };
            if points.len() > 1 && *name != "samples" {
                chart
                    .draw_series(LineSeries::new(finite, color.stroke_width(2)))?
                    .label(*name)
                    .legend(legend);
            } else {
                chart
                    .draw_series(finite.map(|p| Circle::new(p, 2, color.filled())))?
                    .label(*name)
                    .legend(legend);
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        // An accessible name, as the hand-drawn charts had.
        Ok(()) => svg.replacen(
            "<svg ",
            &format!("<svg role=\"img\" aria-label=\"{}\" ", escape(title)),
            1,
        ),
        Err(e) => format!(
            "<p>{}: the chart could not be drawn: {}</p>",
            escape(title),
            escape(&e.to_string())
        ),
    }
}

#[allow(clippy::cast_precision_loss)]
fn html(report: &RunReport, previous: Option<&RunReport>) -> String {
    let t = &report.timeline;
    let throughput = chart(
        "Throughput (requests per second)",
        "",
        &[
            (
                "ok",
                "#2b7bb9",
                t.iter().map(|p| (p.t, p.ok as f64)).collect(),
            ),
            (
                "errors",
                "#d62728",
                t.iter().map(|p| (p.t, p.errors as f64)).collect(),
            ),
        ],
    );
    let latency = chart(
        "Latency from scheduled start (ms)",
        "",
        &[
            (
                "p50",
                "#2ca02c",
                t.iter().map(|p| (p.t, p.p50_ms)).collect(),
            ),
            (
                "p99",
                "#ff7f0e",
                t.iter().map(|p| (p.t, p.p99_ms)).collect(),
            ),
        ],
    );
    let freshness = chart(
        "Freshness: POST to queryable (ms)",
        "",
        &[("samples", "#9467bd", report.freshness.points.clone())],
    );
    let memory = if report.memory_mib.is_empty() {
        String::new()
    } else {
        chart(
            "salesflow resident memory (MiB)",
            "",
            &[
                ("rss", "#8c564b", report.memory_mib.clone()),
                ("bounded caches", "#17becf", report.cache_mib.clone()),
            ],
        )
    };
    let md = markdown(report, previous);
    let mut body = String::new();
    let mut in_code = false;
    let mut in_table = false;
    for line in md.lines() {
        let table_line = !in_code && line.starts_with('|');
        if in_table && !table_line {
            body.push_str("</table>\n");
            in_table = false;
        }
        if line.starts_with("```") {
            body.push_str(if in_code { "</pre>\n" } else { "<pre>" });
            in_code = !in_code;
        } else if in_code {
            let _ = writeln!(body, "{}", escape(line));
        } else if let Some(title) = line.strip_prefix("# ") {
            let _ = writeln!(body, "<h1>{}</h1>", escape(title));
        } else if table_line {
            if line.contains("---") {
                continue;
            }
            if !in_table {
                body.push_str("<table>");
                in_table = true;
            }
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| format!("<td>{}</td>", escape(c.trim().trim_matches('*'))))
                .collect();
            let _ = writeln!(body, "<tr>{}</tr>", cells.join(""));
        } else if let Some(item) = line.strip_prefix("- ") {
            let _ = writeln!(body, "<p>&bull; {}</p>", escape(item));
        } else if !line.trim().is_empty() {
            let _ = writeln!(body, "<p>{}</p>", escape(line));
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>salesflow load: {}</title>\
         <style>body{{font-family:sans-serif;max-width:980px;margin:24px auto;color:#222}}table{{border-collapse:collapse;margin:12px 0}}\
         td{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr:first-child td{{font-weight:bold;background:#f4f4f4}}svg{{margin:8px 0;border:1px solid #eee}}</style>\
         </head><body>{body}<h2>Charts</h2>{throughput}{latency}{freshness}{memory}</body></html>\n",
        escape(&report.profile)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn load_previous(path: &Path) -> Result<RunReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a load report", path.display()))
}

/// Writes the JSON, Markdown and HTML reports; returns their paths.
pub fn write(dir: &Path, report: &RunReport, previous: Option<&RunReport>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!("{}-{:x}", report.profile, report.run_id);
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown(report, previous))?;
    let page = dir.join(format!("{stem}.html"));
    std::fs::write(&page, html(report, previous))?;
    Ok(vec![json, md, page])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{Outcome, Stats};

    #[test]
    fn the_knee_is_the_best_five_seconds_under_the_latency_and_error_limits() {
        let mut stats = Stats::new(1);
        // 10 s at 100/s fast, 5 s at 300/s fast, 5 s at 500/s slow, 5 s at 600/s failing.
        let mut second = |s: u64, n: u64, ms: u64, outcome: Outcome| {
            for i in 0..n {
                let at = Duration::from_secs(s) + Duration::from_micros(i);
                stats.record(0, at, outcome, 202, Duration::from_millis(ms));
            }
        };
        for s in 0..10 {
            second(s, 100, 5, Outcome::Ok);
        }
        for s in 10..15 {
            second(s, 300, 8, Outcome::Ok);
        }
        for s in 15..20 {
            second(s, 500, 400, Outcome::Ok);
        }
        for s in 20..25 {
            second(s, 580, 5, Outcome::Ok);
            second(s, 20, 5, Outcome::Shed);
        }
        let knee = knee(&stats, 50.0).unwrap();
        assert!((knee - 300.0).abs() < 1e-9, "{knee}");
        assert_eq!(knee_of_nothing(), None);
    }

    /// A six-second run of one scenario, without memory samples.
    fn small_report() -> RunReport {
        let mut stats = Stats::new(1);
        for s in 0..6 {
            stats.record(
                0,
                Duration::from_secs(s),
                Outcome::Ok,
                202,
                Duration::from_millis(3),
            );
        }
        stats.record_freshness(Duration::from_secs(1), Some(Duration::from_millis(80)));
        let scenario = scenario_report("post-order", "post-order", &stats.scenarios[0], 6.0);
        RunReport {
            profile: "t<1>".into(),
            description: "a test".into(),
            seed: 1,
            run_id: 0xabc,
            started_at: "2026-11-26T00:00:00Z".into(),
            seconds: 6.0,
            cpus: 2,
            load_before: "0".into(),
            load_after: "0".into(),
            scenarios: vec![scenario.clone()],
            total: scenario,
            timeline: timeline(&stats),
            freshness: FreshnessReport {
                samples: 1,
                points: vec![(1.0, 80.0)],
                ..FreshnessReport::default()
            },
            thresholds: vec![ThresholdResult {
                threshold: "all p99 < 50ms".into(),
                value: 3.0,
                passed: true,
            }],
            aborted: None,
            knee_rps: None,
            memory_mib: vec![],
            cache_mib: vec![],
            cache_limit_mib: 0.0,
            reconciliation: Some(serde_json::json!({
                "accepted": 6, "carts": 2, "projected": 6, "stored": 6,
                "lost_read_model": 0, "lost_event_store": 0,
                "duplicated_read_model": 0, "duplicated_event_store": 0,
                "out_of_order_carts": 0, "settle_seconds": 0.5, "examples": []
            })),
            invalid_refused: 0,
            invalid_accepted: 0,
            duplicates_posted: 0,
        }
    }

    #[test]
    fn the_html_report_is_self_contained_with_balanced_tables_and_charts() {
        let report = small_report();
        let page = html(&report, Some(&report));
        assert_eq!(
            page.matches("<table>").count(),
            page.matches("</table>").count()
        );
        assert_eq!(
            page.matches("<table>").count(),
            3,
            "scenarios, reconciliation, thresholds"
        );
        assert!(page.contains("<td>read models (Query API)</td><td>6</td><td>0</td><td>0</td>"));
        assert!(page.contains("<td>all p99 &lt; 50ms</td>"), "escaped");
        assert!(page.contains("t&lt;1&gt;"));
        assert_eq!(
            page.matches("<svg").count(),
            3,
            "throughput, latency, freshness"
        );
        // Drawn charts, each with its accessible name, lines and legend.
        assert_eq!(page.matches("<svg role=\"img\" aria-label=").count(), 3);
        assert!(
            page.matches("<polyline").count() >= 2,
            "the lines are drawn"
        );
        assert!(!page.contains("could not be drawn"));
        assert!(
            !page.contains("<script src") && !page.contains("<link"),
            "self-contained"
        );
        assert!(page.contains("Compared with run abc"));
    }

    #[test]
    fn the_summary_splits_memory_into_caches_and_the_rest_by_quarter() {
        let mut report = small_report();
        // Idle at first; the caches fill to 32 MiB, the rest swings by several MiB from
        // sample to sample around 90 MiB.
        let samples = [
            (50.0, 0.0),
            (100.0, 10.0),
            (104.0, 20.0),
            (120.0, 30.0),
            (126.0, 32.0),
            (118.0, 32.0),
            (124.0, 32.0),
            (130.0, 32.0),
            (120.0, 32.0),
            (121.0, 32.0),
            (123.0, 32.0),
            (127.0, 32.0),
        ];
        report.memory_mib = (0..).map(f64::from).zip(samples.map(|s| s.0)).collect();
        report.cache_mib = (0..).map(f64::from).zip(samples.map(|s| s.1)).collect();
        report.cache_limit_mib = 32.0;
        let text = summary(&report, None);
        assert!(
            text.contains("salesflow resident memory: 50 -> 127 MiB, max 130 MiB"),
            "{text}"
        );
        assert!(
            text.contains(
                "of it bounded caches 0 -> 32 MiB (limit 32 MiB); the rest 50 -> 95 MiB, by quarter of the run (medians) 84 / 90 / 92 / 91"
            ),
            "{text}"
        );
        let page = markdown(&report, None);
        assert!(page.contains("| 1 | 100.0 | 10.0 | 84.0 |"), "{page}");
        assert!(page.contains("| 4 | 123.0 | 32.0 | 91.0 |"), "{page}");
        // Under eight samples, no quarters.
        report.memory_mib.truncate(7);
        report.cache_mib.truncate(7);
        assert!(memory_quarters(&report).is_empty());
        assert!(!markdown(&report, None).contains("by quarter"));
    }

    fn knee_of_nothing() -> Option<f64> {
        knee(&Stats::new(1), 50.0)
    }
}
