//! `type = "read-models"`: turns each `CartUpdated` of `cart-events` into the cart's
//! detailed and summary documents, addressed (index alias, id = cart id, external
//! version = cart version) for the Elasticsearch sink. [`replay`] rebuilds both read
//! models from the event store into new indices and then switches the aliases.

mod replay;

pub use replay::{ReplayReport, replay};

use std::sync::Arc;

use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::{
    Batch, BuildContext, Component, ComponentKind, ConfigError, Event, Plugin, PluginError,
    Settings, Stage, StageFactory, async_trait, schemars, toml,
};
use salesflow_sales::{Cart, read_model};
use serde::Deserialize;

/// Settings of the read-models stage.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadModelSettings {
    /// The alias the detailed documents are written to.
    #[serde(default = "default_detailed")]
    pub detailed_alias: String,
    /// The alias the summary documents are written to.
    #[serde(default = "default_summary")]
    pub summary_alias: String,
}

fn default_detailed() -> String {
    read_model::DETAILED.into()
}
fn default_summary() -> String {
    read_model::SUMMARY.into()
}

impl Settings for ReadModelSettings {}

pub struct ReadModelsPlugin;

#[async_trait]
impl Plugin for ReadModelsPlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        "read-models"
    }

    fn summary(&self) -> &'static str {
        "Builds the detailed and summary read models of each cart update, addressed for the \
         elasticsearch sink (id = cart id, external version = cart version)"
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["rejected"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(ReadModelSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        ReadModelSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        _ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = ReadModelSettings::from_table(&settings)
            .map_err(|e| PluginError::context("read-models settings", e))?;
        Ok(Component::Stage(Arc::new(Factory(Arc::new(settings)))))
    }
}

struct Factory(Arc<ReadModelSettings>);

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        Ok(Box::new(ReadModels(Arc::clone(&self.0))))
    }
}

struct ReadModels(Arc<ReadModelSettings>);

#[derive(Deserialize)]
struct Updated {
    cart: Cart,
}

/// A document event for the elasticsearch sink.
pub fn document(index: &str, cart: &Cart, source: &serde_json::Value, like: &Event) -> Event {
    Event {
        key: like.key.clone(),
        payload: Bytes::from(source.to_string()),
        headers: vec![
            ("salesflow.index".into(), Bytes::from(index.to_owned())),
            ("salesflow.id".into(), Bytes::from(cart.cart_id.to_string())),
            (
                "salesflow.version".into(),
                Bytes::from(cart.version.to_string()),
            ),
        ],
        timestamp_ms: like.timestamp_ms,
        origin: like.origin.clone(),
    }
}

#[async_trait]
impl Stage for ReadModels {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        let mut docs = Vec::with_capacity(events.len() * 2);
        let mut rejected = Vec::new();
        for event in events {
            match serde_json::from_slice::<Updated>(&event.payload) {
                Ok(Updated { cart }) => {
                    docs.push(document(
                        &self.0.detailed_alias,
                        &cart,
                        &read_model::detailed(&cart),
                        &event,
                    ));
                    docs.push(document(
                        &self.0.summary_alias,
                        &cart,
                        &read_model::summary(&cart),
                        &event,
                    ));
                }
                Err(e) => {
                    let mut event = event;
                    event.headers.push((
                        "salesflow.error".into(),
                        Bytes::from(format!("not a cart update: {e}")),
                    ));
                    event.headers.push((
                        "salesflow.origin".into(),
                        Bytes::from(event.origin.describe()),
                    ));
                    rejected.push(event);
                }
            }
        }
        if rejected.is_empty() {
            out.push(Batch::new(docs, acks, lane));
        } else {
            if !docs.is_empty() {
                out.push(Batch::new(docs, acks.clone(), lane));
            }
            out.push(Batch::new(rejected, acks, lane).to_output("rejected"));
        }
        Ok(())
    }
}
