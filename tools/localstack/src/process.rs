//! The processes of the stack: pid files, liveness, stopping, logs.
//!
//! A pid file alone is not proof: after a reboot the number may belong to some other
//! process. A pid counts as ours only if its command line names the server's folder in
//! the stack (every server is started with it), so `down` never signals a stranger.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};

use crate::layout::Layout;
use crate::node::Node;

/// How long a server gets to shut down cleanly before it is killed.
const GRACE: Duration = Duration::from_secs(60);

/// The pid of the server if it runs and was started by this stack.
pub fn running_pid(layout: &Layout, node: Node) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pid_file(node)).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let marker = layout.server_dir(node);
    is_ours(pid, &marker.to_string_lossy()).then_some(pid)
}

fn is_ours(pid: u32, marker: &str) -> bool {
    if !is_alive(pid) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(marker))
}

/// Alive and not a zombie waiting to be reaped.
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn write_pid(layout: &Layout, node: Node, pid: u32) -> Result<()> {
    let path = layout.pid_file(node);
    let tmp = path.with_extension("pid.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    writeln!(file, "{pid}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Stops the server if this stack runs it: SIGTERM to its process group, then SIGKILL
/// after [`GRACE`]; then waits until its ports are closed. Returns the pid it stopped.
pub fn stop(layout: &Layout, node: Node) -> Result<Option<u32>> {
    stop_with(layout, node, Signal::TERM)
}

/// Stops several nodes together: all are signalled first, then awaited. Nodes of one
/// cluster must go together: a Kafka broker stopped after the other controllers waits for
/// a quorum that is gone.
pub fn stop_together(layout: &Layout, nodes: &[Node]) -> Vec<(Node, Result<Option<u32>>)> {
    let running: Vec<(Node, Option<u32>)> = nodes
        .iter()
        .map(|&node| (node, running_pid(layout, node)))
        .collect();
    for (_, pid) in &running {
        if let Some(raw) = pid.and_then(|p| i32::try_from(p).ok()) {
            signal_group(raw, Signal::TERM);
        }
    }
    running
        .into_iter()
        .map(|(node, pid)| {
            let result = match pid {
                // Gone already (it stopped on the signal above): only its pid file and
                // ports are left to see to.
                Some(pid) if !is_alive(pid) => wait_ports_closed(node, Duration::from_secs(10))
                    .map(|()| {
                        let _ = std::fs::remove_file(layout.pid_file(node));
                        Some(pid)
                    }),
                _ => stop_with(layout, node, Signal::TERM),
            };
            (node, result)
        })
        .collect()
}

/// SIGKILLs the node's process group at once, as a crash would (fault suites).
pub fn kill(layout: &Layout, node: Node) -> Result<Option<u32>> {
    stop_with(layout, node, Signal::KILL)
}

fn stop_with(layout: &Layout, node: Node, signal: Signal) -> Result<Option<u32>> {
    let pid_file = layout.pid_file(node);
    let Some(pid) = running_pid(layout, node) else {
        // A stale pid file (the process died or the machine rebooted) is removed.
        let _ = std::fs::remove_file(&pid_file);
        return Ok(None);
    };
    let raw = i32::try_from(pid).context("pid out of range")?;
    signal_group(raw, signal);
    let deadline = Instant::now() + GRACE;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if is_alive(pid) {
        eprintln!(
            "{node}: did not stop within {} s, killing it",
            GRACE.as_secs()
        );
        signal_group(raw, Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_alive(pid) {
            bail!("pid {pid} survived SIGKILL");
        }
    }
    wait_ports_closed(node, Duration::from_secs(10))?;
    let _ = std::fs::remove_file(&pid_file);
    Ok(Some(pid))
}

fn signal_group(pid: i32, signal: Signal) {
    // Servers are started as leaders of their own process group, so the group goes too
    // (a JVM forks nothing, but Prometheus or a wrapper might).
    let Some(pid) = Pid::from_raw(pid) else {
        return;
    };
    if kill_process_group(pid, signal).is_err() {
        let _ = kill_process(pid, signal);
    }
}

fn wait_ports_closed(node: Node, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let open: Vec<std::net::SocketAddr> = node
            .sockets()
            .into_iter()
            .filter(|&a| port_in_use(a))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("its process is gone but ports {open:?} still accept connections");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when something listens on 127.0.0.1:`port`.
pub fn port_in_use(address: std::net::SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)).is_ok()
}

/// Resident memory of a process in MiB, from /proc.
pub fn rss_mib(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.status().ok()?.vmrss? / 1024)
}

/// The last `lines` lines of a file (reads at most its last 256 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(256 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn print_logs(layout: &Layout, nodes: &[Node], lines: usize, follow: bool) -> Result<()> {
    let mut offsets = Vec::new();
    for &node in nodes {
        let path = layout.log_file(node);
        println!("==> {node}: {} <==", path.display());
        println!("{}", tail(&path, lines));
        offsets.push((
            node,
            path.clone(),
            std::fs::metadata(&path).map_or(0, |m| m.len()),
        ));
    }
    if !follow {
        return Ok(());
    }
    let stdout = std::io::stdout();
    loop {
        for (kind, path, offset) in &mut offsets {
            let len = std::fs::metadata(&*path).map_or(0, |m| m.len());
            if len < *offset {
                // Rolled over: start from the beginning of the new file.
                *offset = 0;
            }
            if len > *offset {
                let mut file = std::fs::File::open(&*path)?;
                file.seek(SeekFrom::Start(*offset))?;
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                *offset += bytes.len() as u64;
                let mut out = stdout.lock();
                for line in String::from_utf8_lossy(&bytes).lines() {
                    writeln!(out, "{kind} | {line}")?;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
