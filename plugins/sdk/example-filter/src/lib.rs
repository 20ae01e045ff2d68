//! An example stage plugin, loaded by the host at run time from a shared library.
//!
//! Settings (in `pipeline.toml`, passed to the plugin as JSON):
//!
//! ```toml
//! [pipelines.p.stages.filter]
//! type = "example-filter"
//! inputs = ["in"]
//! drop_field = "status"        # drop events whose top-level `status` ...
//! drop_value = "test"          # ... equals "test"
//! header = "filtered-by"       # stamp the others with this header (optional)
//! ```
//!
//! Build it with `cargo build -p salesflow-example-filter` and put the `.so` in the
//! folder named by `[plugins] dir`.

use salesflow_plugin_abi::{DynEvent, DynStage};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    drop_field: String,
    drop_value: serde_json::Value,
    #[serde(default)]
    header: Option<String>,
    /// For tests of the boundary: a payload containing this text makes the plugin panic.
    #[serde(default)]
    panic_on: Option<String>,
    /// For tests of dead letters: events whose top-level `n` is a multiple of this make
    /// the plugin panic.
    #[serde(default)]
    panic_every: Option<u64>,
}

struct ExampleFilter {
    settings: Settings,
}

impl DynStage for ExampleFilter {
    fn new(config_json: &str) -> Result<Self, String> {
        let settings: Settings =
            serde_json::from_str(config_json).map_err(|e| format!("settings: {e}"))?;
        if settings.drop_field.is_empty() {
            return Err("settings: drop_field must not be empty".into());
        }
        Ok(Self { settings })
    }

    fn process(&mut self, events: Vec<DynEvent>) -> Result<Vec<DynEvent>, String> {
        let mut kept = Vec::with_capacity(events.len());
        for mut event in events {
            if let Some(trigger) = &self.settings.panic_on {
                let text = String::from_utf8_lossy(&event.payload);
                assert!(
                    !text.contains(trigger.as_str()),
                    "asked to panic on {trigger:?}"
                );
            }
            let value: serde_json::Value = serde_json::from_slice(&event.payload)
                .map_err(|e| format!("event is not JSON: {e}"))?;
            if let (Some(every), Some(n)) = (
                self.settings.panic_every.filter(|&e| e > 0),
                value.get("n").and_then(serde_json::Value::as_u64),
            ) {
                assert!(
                    n % every != 0,
                    "asked to panic on every {every}th event; this one is {n}"
                );
            }
            if value.get(&self.settings.drop_field) == Some(&self.settings.drop_value) {
                continue;
            }
            if let Some(header) = &self.settings.header {
                event
                    .headers
                    .push((header.clone(), b"example-filter".to_vec()));
            }
            kept.push(event);
        }
        Ok(kept)
    }
}

#[cfg(not(any(feature = "wrong-abi", feature = "newer-minor")))]
salesflow_plugin_abi::export_stage!(
    ExampleFilter,
    "example-filter",
    "Drops events whose JSON field equals a value; stamps the rest with a header"
);

// The same plugin declared for an ABI major version this host does not speak.
#[cfg(feature = "wrong-abi")]
salesflow_plugin_abi::export_plugins!(
    @abi (salesflow_plugin_abi::ABI_VERSION + 1, 0);
    stage(ExampleFilter, "example-filter", "Declared for the next ABI major version")
);

// The same plugin declared for a minor version newer than this host's.
#[cfg(feature = "newer-minor")]
salesflow_plugin_abi::export_plugins!(
    @abi (salesflow_plugin_abi::ABI_VERSION, salesflow_plugin_abi::ABI_MINOR + 1);
    stage(ExampleFilter, "example-filter", "Declared for the next ABI minor version")
);
