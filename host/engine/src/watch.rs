//! What asks for a reload: SIGHUP always, and with `salesflow run --watch` a change to the
//! configuration file or to the plugins folder's libraries.
//!
//! The file's folder is watched rather than the file, so that editors that write a new
//! file and rename it over the old one, and Kubernetes `ConfigMap` volumes (which swap a
//! symlink), are seen too. Events come in bursts (an editor's save is several): a reload
//! is asked for once the watched files have been quiet for [`SETTLE`], and only when what
//! they hold differs from what was last seen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long the watched files must be quiet before a change is acted on.
pub const SETTLE: Duration = Duration::from_millis(300);

/// The longest a burst of changes delays a reload.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);

/// Whether a change to `path` may change the configuration: the file itself, a
/// Kubernetes volume's `..data` swap beside it, or a library in the plugins folder. Other
/// files in the folder (a log written next to the configuration) are not.
fn concerns(path: &Path, config: &Path, plugins: Option<&Path>) -> bool {
    if path == config {
        return true;
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if path.parent() == config.parent() && name.starts_with("..") {
        return true;
    }
    plugins.is_some_and(|dir| {
        path.parent() == Some(dir)
            && path
                .extension()
                .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
    })
}

/// Why a reload was asked for.
pub type Reason = &'static str;

/// Sends a reason on `reloads` at each SIGHUP, for as long as the process runs.
pub fn on_sighup(reloads: mpsc::Sender<Reason>) -> std::io::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if reloads.send("SIGHUP").await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// What the watched files hold: the configuration's bytes, and each library's name, size
/// and modification time.
#[derive(PartialEq, Eq)]
struct Snapshot {
    config: Option<Vec<u8>>,
    libraries: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
}

fn snapshot(config: &Path, plugins: Option<&Path>) -> Snapshot {
    let mut libraries = Vec::new();
    if let Some(dir) = plugins
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
                && let Ok(meta) = entry.metadata()
            {
                libraries.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    libraries.sort();
    Snapshot {
        config: std::fs::read(config).ok(),
        libraries,
    }
}

/// Watches `config` and the `plugins` folder; sends `"file change"` on `reloads` when what
/// they hold changed. The watch lasts as long as the returned watcher.
pub fn on_change(
    config: &Path,
    plugins: Option<&Path>,
    reloads: mpsc::Sender<Reason>,
) -> notify::Result<notify::RecommendedWatcher> {
    let config = std::path::absolute(config)?;
    let folder = config
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let plugins = plugins.map(std::path::absolute).transpose()?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = events_tx.send(event);
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    if let Some(dir) = &plugins
        && *dir != folder
    {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    info!(config = %config.display(), plugins = ?plugins, "watching the configuration for changes");
    tokio::spawn(async move {
        let mut seen = snapshot(&config, plugins.as_deref());
        let relevant = |event: &notify::Result<notify::Event>| match event {
            Ok(event) => event
                .paths
                .iter()
                .any(|path| concerns(path, &config, plugins.as_deref())),
            Err(e) => {
                warn!(error = %e, "watching the configuration");
                false
            }
        };
        while let Some(event) = events.recv().await {
            if !relevant(&event) {
                continue;
            }
            // Wait for the burst to end (quiet for SETTLE), or at most MAX_SETTLE.
            let deadline = tokio::time::Instant::now() + MAX_SETTLE;
            let mut quiet = tokio::time::Instant::now() + SETTLE;
            loop {
                match tokio::time::timeout_at(quiet.min(deadline), events.recv()).await {
                    Ok(Some(event)) if relevant(&event) => {
                        quiet = tokio::time::Instant::now() + SETTLE;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = snapshot(&config, plugins.as_deref());
            if now != seen {
                seen = now;
                if reloads.send("file change").await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configuration_a_volume_swap_and_libraries_ask_for_a_reload() {
        let config = Path::new("/etc/salesflow/pipeline.toml");
        let plugins = Some(Path::new("/usr/lib/salesflow/plugins"));
        let concerned = |path: &str| concerns(Path::new(path), config, plugins);
        assert!(concerned("/etc/salesflow/pipeline.toml"));
        assert!(
            concerned("/etc/salesflow/..data"),
            "a ConfigMap volume's swap"
        );
        assert!(concerned("/usr/lib/salesflow/plugins/libshop.so"));
        assert!(
            !concerned("/etc/salesflow/salesflow.log"),
            "a log beside it"
        );
        assert!(!concerned("/etc/salesflow/.pipeline.toml.swp"));
        assert!(!concerned("/usr/lib/salesflow/plugins/README"));
        assert!(!concerned("/usr/lib/salesflow/plugins/old/libshop.so"));
    }
}
