//! The monitoring files as data: where they are, and every query the dashboards run. The
//! checks of this folder (`tests/`) use it, and so does the live test that evaluates the
//! queries on a real Prometheus (`plugins/sales/tests/tests/observability.rs`).

use std::path::{Path, PathBuf};

/// This folder.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A dashboard panel's query: (dashboard title, panel title, expression).
pub type PanelQuery = (String, String, String);

/// The template variables every dashboard has, with the value "All" stands for: the
/// data source, and the pipelines and instances a panel shows.
pub const VARIABLES: [(&str, &str); 2] = [("$pipeline", ".*"), ("$instance", ".*")];

/// A panel's expression as Grafana runs it with every variable at "All".
pub fn expand(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_owned(), |e, (name, all)| e.replace(name, all))
}

/// Every query of every dashboard panel in `grafana/dashboards/`, with the variables at
/// "All" (see [`expand`]).
pub fn panel_queries() -> Result<Vec<PanelQuery>, String> {
    let folder = dir().join("grafana/dashboards");
    let entries = std::fs::read_dir(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let title = dashboard["title"].as_str().unwrap_or_default().to_owned();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        title.clone(),
                        panel["title"].as_str().unwrap_or_default().to_owned(),
                        expand(expr),
                    ));
                }
            }
        }
    }
    Ok(out)
}
