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

#[cfg(not(feature = "wrong-abi"))]
salesflow_plugin_abi::export_stage!(
    ExampleFilter,
    "example-filter",
    "Drops events whose JSON field equals a value; stamps the rest with a header"
);

// The same plugin declared for an ABI version this host does not speak.
#[cfg(feature = "wrong-abi")]
salesflow_plugin_abi::export_stage!(
    @abi salesflow_plugin_abi::ABI_VERSION + 1,
    ExampleFilter,
    "example-filter",
    "Declared for the next ABI version"
);
