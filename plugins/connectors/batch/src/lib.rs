//! `type = "batch"`: groups events into batches of at most `max_events` events and
//! `max_bytes` bytes, emitting a partial batch once its first event has waited `max_wait`.
//!
//! Batches are only merged with batches of the same lane, so per-lane (per-partition)
//! order is kept; a source batch split across two output batches has its acknowledgement
//! claim in both. With `across_lanes`, a stage lane merges the batches of every input
//! lane it receives into batches of its own lane number: each input lane still takes one
//! path downstream, in order, and a downstream request carries several partitions.

mod config;
mod stage;

pub use config::BatchSettings;
pub use stage::BatchStage;

use std::sync::Arc;

use salesflow_plugin_api::{
    BuildContext, Component, ComponentKind, ConfigError, Plugin, PluginError, Settings, Stage,
    StageFactory, async_trait, schemars, toml,
};

/// The batch plugin.
/// Adds the batch stage.
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(BatchPlugin));
}

pub struct BatchPlugin;

#[async_trait]
impl Plugin for BatchPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        "batch"
    }

    fn summary(&self) -> &'static str {
        "Groups events into batches by count, bytes and time, keeping per-lane order"
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(BatchSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        BatchSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        _ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = BatchSettings::from_table(&settings)
            .map_err(|e| PluginError::context("batch settings", e))?;
        Ok(Component::Stage(Arc::new(Factory(settings))))
    }
}

struct Factory(BatchSettings);

impl StageFactory for Factory {
    fn create(&self, lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        Ok(Box::new(BatchStage::new(self.0.clone(), lane)))
    }
}
