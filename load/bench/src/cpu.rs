//! CPU accounting: how many CPU seconds each process of a phase spent (user + system, from
//! `/proc` through `procfs`), so that every phase reads as CPU per unit of work (record,
//! event, document, request, order) and a server inside the pipeline can be compared with
//! the same server at its raw ceiling.
//!
//! A phase names the processes it involves: the local stack's servers (their pid files),
//! salesflow processes, the driver (this process: the load, and the bare server or raw
//! loop a ceiling runs in-process), and the driver's children (tools run to completion,
//! such as `ProducerPerformance` and latte, counted once reaped).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// The local stack's servers, as the accounting names them.
pub const SERVERS: [&str; 3] = ["kafka", "cassandra", "opensearch"];
/// The name of this process in the accounting.
pub const DRIVER: &str = "driver";
/// The name of this process's reaped children.
pub const CHILDREN: &str = "driver children";
/// The prefix of salesflow processes' names.
pub const SALESFLOW: &str = "salesflow";

/// The machine's CPU time so far, from `/proc/stat`: (stolen, all), in ticks.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    (
        ticks.get(7).copied().unwrap_or(0),
        ticks.iter().take(8).sum(),
    )
}

/// A process to account for.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub name: String,
    pub pid: i32,
}

impl Tracked {
    pub fn new(name: impl Into<String>, pid: u32) -> Self {
        Self {
            name: name.into(),
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// User + system CPU seconds of `pid` so far (its own threads), or `None` if it is gone.
fn used(pid: i32) -> Option<f64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some(seconds(stat.utime + stat.stime))
}

/// The names (15 characters, as `/proc` keeps them) of a JVM's JIT compiler threads.
const COMPILER_THREADS: [&str; 2] = ["C1 CompilerThre", "C2 CompilerThre"];

/// User + system CPU seconds of each JIT compiler thread of `pid` so far, by thread id
/// (empty for a process that is not a JVM). Compiling is a cost of code paths seen for
/// the first time, not of units of work: the accounting keeps it apart.
fn compilers(pid: i32) -> BTreeMap<i32, f64> {
    let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
        return BTreeMap::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let stat = task.stat().ok()?;
            COMPILER_THREADS
                .contains(&stat.comm.as_str())
                .then(|| (task.tid, seconds(stat.utime + stat.stime)))
        })
        .collect()
}

/// CPU seconds the compiler threads `now` spent since `then`. A thread started since is
/// counted from zero; one that ended since is missing (its time is not knowable), so JIT
/// time can be under-counted, never over-counted: what is missed stays charged as work.
fn compiled_since(then: &BTreeMap<i32, f64>, now: &BTreeMap<i32, f64>) -> f64 {
    now.iter()
        .map(|(tid, cpu)| cpu - then.get(tid).copied().unwrap_or(0.0))
        .filter(|d| *d > 0.0)
        .sum()
}

/// User + system CPU seconds of this process's reaped children so far.
fn children() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map_or(0.0, |s| {
            seconds(u64::try_from(s.cutime + s.cstime).unwrap_or(0))
        })
}

/// A running node of the local stack: its kind (`kafka`), its own name (`kafka`, or
/// `kafka-2` on the cluster profile) and its process.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: &'static str,
    pub name: String,
    pub pid: u32,
}

/// The local stack's running nodes, from its pid files: a node counts when its pid file
/// names a live process, so what a stopped profile left behind is passed over.
pub fn nodes() -> Vec<Node> {
    let run = crate::common::repo().join(".stack/run");
    let mut found = Vec::new();
    for kind in SERVERS {
        let names = std::iter::once(kind.to_owned()).chain((1..=9).map(|i| format!("{kind}-{i}")));
        for name in names {
            if let Some(pid) = std::fs::read_to_string(run.join(format!("{name}.pid")))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
                .filter(|&pid| i32::try_from(pid).ok().and_then(used).is_some())
            {
                found.push(Node { kind, name, pid });
            }
        }
    }
    found
}

/// The local stack's running servers: one process of each, or every node of the cluster
/// profile, all named by their kind.
pub fn servers() -> Vec<Tracked> {
    nodes()
        .into_iter()
        .map(|node| Tracked::new(node.kind, node.pid))
        .collect()
}

/// Each running server of the local stack with its niceness ("kafka 0, cassandra 10"):
/// a server started under `SALESFLOW_STACK_NICE` yields the CPU to the rest, which moves
/// every ratio the report gives.
pub fn niceness() -> String {
    servers()
        .iter()
        .filter_map(|t| {
            let stat = procfs::process::Process::new(t.pid).ok()?.stat().ok()?;
            Some(format!("{} {}", t.name, stat.nice))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the local stack's servers are quiet: their CPU together below
/// `quiet_cores` for two seconds in a row, or `limit` passed. A phase started while a
/// server still compacts or merges what the previous phase wrote would be charged for
/// that work. Returns how long it waited and the servers' CPU (cores) in the last second.
pub async fn settle(quiet_cores: f64, limit: std::time::Duration) -> (f64, f64) {
    let started = Instant::now();
    let servers = servers();
    let total = || -> f64 { servers.iter().filter_map(|s| used(s.pid)).sum() };
    let mut quiet_seconds = 0;
    let mut last = total();
    let mut cores = 0.0;
    while started.elapsed() < limit && quiet_seconds < 2 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = total();
        cores = now - last;
        last = now;
        quiet_seconds = if cores < quiet_cores {
            quiet_seconds + 1
        } else {
            0
        };
    }
    (started.elapsed().as_secs_f64(), cores)
}

/// The given servers of the local stack (see [`SERVERS`]).
pub fn server(names: &[&str]) -> Vec<Tracked> {
    servers()
        .into_iter()
        .filter(|t| names.contains(&t.name.as_str()))
        .collect()
}

/// CPU use measured from `start` to `stop`.
pub struct Meter {
    started: Instant,
    at_start: Vec<(Tracked, Option<f64>, BTreeMap<i32, f64>)>,
    driver: f64,
    children: f64,
}

impl Meter {
    /// Starts measuring `processes`, the driver and its children.
    pub fn start(processes: Vec<Tracked>) -> Self {
        let at_start = processes
            .into_iter()
            .map(|t| {
                let cpu = used(t.pid);
                let jit = compilers(t.pid);
                (t, cpu, jit)
            })
            .collect();
        Self {
            started: Instant::now(),
            at_start,
            driver: used(i32::try_from(std::process::id()).unwrap_or(0)).unwrap_or(0.0),
            children: children(),
        }
    }

    /// Adds a process that started after the meter (it is counted from its start).
    pub fn add(&mut self, process: Tracked) {
        self.at_start.push((process, Some(0.0), BTreeMap::new()));
    }

    /// What each process spent since the start. A process that has exited since is
    /// missing (its CPU is not knowable from `/proc` once it is reaped by another).
    pub fn stop(self) -> Usage {
        let mut cpu = BTreeMap::new();
        let mut jit = BTreeMap::new();
        for (t, start, compiled) in self.at_start {
            if let (Some(start), Some(now)) = (start, used(t.pid)) {
                let compiling = compiled_since(&compiled, &compilers(t.pid));
                if compiling > 0.0 {
                    *jit.entry(t.name.clone()).or_insert(0.0) += compiling;
                }
                *cpu.entry(t.name).or_insert(0.0) += now - start;
            }
        }
        let driver = used(i32::try_from(std::process::id()).unwrap_or(0)).unwrap_or(0.0);
        cpu.insert(DRIVER.to_owned(), driver - self.driver);
        let reaped = children() - self.children;
        if reaped > 0.0 {
            cpu.insert(CHILDREN.to_owned(), reaped);
        }
        Usage {
            seconds: self.started.elapsed().as_secs_f64(),
            cpu,
            jit,
        }
    }
}

/// CPU seconds per process over a phase of `seconds`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub seconds: f64,
    pub cpu: BTreeMap<String, f64>,
    /// Of `cpu`, what the JVMs' JIT compiler threads spent, per process.
    pub jit: BTreeMap<String, f64>,
}

impl Usage {
    /// Adds another measurement (of the same processes, at another time) to this one.
    pub fn merge(&mut self, other: &Usage) {
        self.seconds += other.seconds;
        for (name, cpu) in &other.cpu {
            *self.cpu.entry(name.clone()).or_insert(0.0) += cpu;
        }
        for (name, cpu) in &other.jit {
            *self.jit.entry(name.clone()).or_insert(0.0) += cpu;
        }
    }

    /// CPU seconds of the processes whose names `matching` accepts.
    pub fn of(&self, matching: impl Fn(&str) -> bool) -> f64 {
        self.cpu
            .iter()
            .filter(|(name, _)| matching(name))
            .map(|(_, cpu)| cpu)
            .sum()
    }

    /// CPU seconds of one named process.
    pub fn named(&self, name: &str) -> f64 {
        self.of(|n| n == name)
    }

    /// CPU seconds one named process's JIT compilers spent (part of [`Usage::named`]).
    pub fn jit(&self, name: &str) -> f64 {
        self.jit.get(name).copied().unwrap_or(0.0)
    }

    /// CPU seconds of one named process doing the work itself: [`Usage::named`] without
    /// its JIT compilers.
    pub fn work(&self, name: &str) -> f64 {
        self.named(name) - self.jit(name)
    }

    /// CPU seconds every process's JIT compilers spent.
    pub fn jit_total(&self) -> f64 {
        self.jit.values().sum()
    }

    /// CPU seconds of every salesflow process.
    pub fn salesflow(&self) -> f64 {
        self.of(|n| n.starts_with(SALESFLOW))
    }

    pub fn total(&self) -> f64 {
        self.of(|_| true)
    }

    /// The share of a machine of `cores` that every process together kept busy over the
    /// phase (1.0 is every core all the time); 0 for a phase of no length.
    pub fn busy(&self, cores: f64) -> f64 {
        if self.seconds > 0.0 && cores > 0.0 {
            self.total() / (self.seconds * cores)
        } else {
            0.0
        }
    }
}

/// One phase's accounting: the work done and what each process spent on it.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// e.g. `ceiling: ProducerPerformance` or `salesflow: kafka -> kafka relay`.
    pub name: String,
    /// What one unit of work is ("record", "event", "document", "request", "order").
    pub unit: String,
    pub units: f64,
    pub usage: Usage,
}

impl Phase {
    pub fn new(name: impl Into<String>, unit: &str, units: f64, usage: Usage) -> Self {
        Self {
            name: name.into(),
            unit: unit.to_owned(),
            units,
            usage,
        }
    }

    /// Milliseconds of CPU one unit cost `process` (see [`Usage::named`]).
    pub fn ms_per_unit(&self, cpu_seconds: f64) -> f64 {
        if self.units > 0.0 {
            cpu_seconds * 1000.0 / self.units
        } else {
            0.0
        }
    }
}

/// What a server spends per unit at its raw ceiling, and the units of it one order costs.
#[derive(Clone, Debug, Serialize)]
pub struct ServerCost {
    pub server: String,
    pub unit: String,
    /// CPU ms per unit at the raw ceiling.
    pub ceiling_ms: f64,
    /// Units of this server one order needs.
    pub per_order: f64,
}

/// The orders/s the machine could reach if every server spent on an order only what it
/// spends at its raw ceiling: the cores divided by the sum of those per-order costs.
/// `None` when no server cost is known.
pub fn composite_ceiling(cores: f64, costs: &[ServerCost]) -> Option<f64> {
    let per_order_ms: f64 = costs.iter().map(|c| c.ceiling_ms * c.per_order).sum();
    (per_order_ms > 0.0).then(|| cores * 1000.0 / per_order_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_and_a_busy_child_are_accounted() {
        let meter = Meter::start(Vec::new());
        // Burn a little CPU here and in a child process that runs to completion.
        let mut x = 0_u64;
        for i in 0..20_000_000_u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let usage = meter.stop();
        assert!(usage.named(DRIVER) > 0.0, "{usage:?}");
        assert!(usage.named(CHILDREN) > 0.0, "{usage:?}");
        assert!(usage.seconds > 0.0);
    }

    #[test]
    fn a_running_process_is_measured_from_its_own_stat() {
        use std::io::{BufRead, Write};
        // The child works, says so, and waits (alive) until told to exit.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo done; read x",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let meter = Meter::start(vec![Tracked::new("busy", child.id())]);
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "done");
        let usage = meter.stop();
        writeln!(child.stdin.take().unwrap(), "bye").unwrap();
        assert!(child.wait().unwrap().success());
        assert!(usage.named("busy") > 0.0, "{usage:?}");
    }

    #[test]
    fn compiler_time_counts_threads_started_since_and_never_those_ended() {
        let then = BTreeMap::from([(10, 1.0), (11, 2.0)]);
        // 10 compiled 0.5 s more, 11 ended, 12 started and compiled 0.25 s.
        let now = BTreeMap::from([(10, 1.5), (12, 0.25)]);
        assert!((compiled_since(&then, &now) - 0.75).abs() < 1e-9);
        assert!(compiled_since(&now, &now).abs() < 1e-9);
    }

    #[test]
    fn measurements_in_turns_add_up() {
        let mut total = Usage::default();
        let turn = |cpu: f64, jit: f64| Usage {
            seconds: 2.0,
            cpu: BTreeMap::from([("cassandra".to_owned(), cpu)]),
            jit: BTreeMap::from([("cassandra".to_owned(), jit)]),
        };
        total.merge(&turn(1.0, 0.25));
        total.merge(&turn(0.5, 0.0));
        assert!((total.seconds - 4.0).abs() < 1e-9);
        assert!((total.named("cassandra") - 1.5).abs() < 1e-9);
        assert!((total.jit("cassandra") - 0.25).abs() < 1e-9);
        assert!((total.work("cassandra") - 1.25).abs() < 1e-9);
    }

    #[test]
    fn a_process_that_is_not_a_jvm_has_no_compiler_threads() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(compilers(me).is_empty());
    }

    #[test]
    fn the_composite_ceiling_divides_the_cores_by_the_per_order_costs() {
        let costs = [
            ServerCost {
                server: "kafka".into(),
                unit: "record".into(),
                ceiling_ms: 0.01,
                per_order: 2.0,
            },
            ServerCost {
                server: "cassandra".into(),
                unit: "event".into(),
                ceiling_ms: 0.3,
                per_order: 1.0,
            },
            ServerCost {
                server: "opensearch".into(),
                unit: "document".into(),
                ceiling_ms: 0.09,
                per_order: 2.0,
            },
        ];
        // 0.02 + 0.3 + 0.18 = 0.5 ms per order: 2 cores do 4000 orders/s.
        let ceiling = composite_ceiling(2.0, &costs).unwrap();
        assert!((ceiling - 4000.0).abs() < 1e-6, "{ceiling}");
        assert!(composite_ceiling(2.0, &[]).is_none());
    }
}
