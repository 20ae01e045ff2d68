//! `type = "read-models"`: turns each `CartUpdated` of `cart-events` into the cart's
//! detailed and summary documents, addressed (index alias, id = cart id, external
//! version = cart version) for the Elasticsearch sink. [`replay`] rebuilds both read
//! models from the event store into new indices and then switches the aliases.

mod replay;

pub use replay::{ReplayReport, replay};

use std::collections::HashMap;
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

/// Just enough of a `CartUpdated` to see which cart and version it carries. An update
/// without a cart is superseded by a later record of the same cart (the domain leaves
/// the cart out of all but the last update of a cart in its batch).
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    event: Option<EventHeader>,
    #[serde(default)]
    cart: Option<CartHeader>,
}

#[derive(Deserialize)]
struct EventHeader {
    #[serde(rename = "cart_id")]
    _cart_id: uuid::Uuid,
    #[serde(rename = "seq")]
    _seq: u64,
}

#[derive(Deserialize)]
struct CartHeader {
    cart_id: uuid::Uuid,
    version: u64,
}

/// A record of `cart-events` that is not a cart update, marked for the dead-letter output.
fn not_an_update(event: Event, e: &serde_json::Error) -> Event {
    event.dead_letter(&format!("not a cart update: {e}"), "read-models stage")
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
        // An update carries the whole cart, so only the newest version of each cart in
        // the batch needs documents: the older ones would be superseded (external
        // versions) in the same bulk request anyway.
        let mut newest: HashMap<uuid::Uuid, (u64, usize)> = HashMap::with_capacity(events.len());
        let mut rejected = Vec::new();
        let mut parsed = Vec::with_capacity(events.len());
        for event in events {
            match serde_json::from_slice::<Header>(&event.payload) {
                Ok(Header {
                    event: Some(_),
                    cart: None,
                }) => {
                    // Superseded: a later record brings this cart.
                }
                Ok(Header {
                    event: None,
                    cart: None,
                }) => rejected.push(event.dead_letter(
                    "not a cart update: neither an event nor a cart",
                    "read-models stage",
                )),
                Ok(Header {
                    cart: Some(cart), ..
                }) => {
                    let index = parsed.len();
                    newest
                        .entry(cart.cart_id)
                        .and_modify(|best| {
                            if cart.version >= best.0 {
                                *best = (cart.version, index);
                            }
                        })
                        .or_insert((cart.version, index));
                    parsed.push(Some(event));
                }
                Err(e) => rejected.push(not_an_update(event, &e)),
            }
        }
        let mut winners: Vec<usize> = newest.into_values().map(|(_, index)| index).collect();
        winners.sort_unstable();
        let mut docs = Vec::with_capacity(winners.len() * 2);
        for index in winners {
            let Some(event) = parsed[index].take() else {
                continue;
            };
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
                Err(e) => rejected.push(not_an_update(event, &e)),
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

#[cfg(test)]
mod tests {
    use salesflow_plugin_api::AckSet;
    use serde_json::json;

    use super::*;

    fn update(cart_id: &str, version: u64) -> Event {
        let cart = json!({
            "cart_id": cart_id, "version": version, "user_id": "u", "currency": "EUR",
            "created_at": "2026-11-26T00:00:00Z", "updated_at": "2026-11-26T00:00:00Z",
            "payment_method": "card", "shipping_address": "a", "billing_address": "b",
            "shipping_method": "post", "tax_amount": "0", "subtotal": "0",
            "discounts": "0", "items": []
        });
        Event::new(json!({ "event": null, "cart": cart }).to_string()).with_key(cart_id.to_owned())
    }

    /// One batch through the stage (aliases "d" and "s"): what it emits.
    async fn read_models(events: Vec<Event>) -> Vec<Batch> {
        let mut stage = ReadModels(Arc::new(ReadModelSettings {
            detailed_alias: "d".into(),
            summary_alias: "s".into(),
        }));
        let mut out = Vec::new();
        stage
            .process(Batch::new(events, AckSet::none(), 0), &mut out)
            .await
            .unwrap();
        out
    }

    fn versions(batch: &Batch) -> Vec<(String, String, String)> {
        let text = |e: &Event, h: &str| String::from_utf8_lossy(e.header(h).unwrap()).into_owned();
        batch
            .events
            .iter()
            .map(|e| {
                (
                    text(e, "salesflow.index"),
                    text(e, "salesflow.id"),
                    text(e, "salesflow.version"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn only_the_newest_version_of_each_cart_becomes_documents() {
        let a = "00000000-0000-0000-0000-00000000000a";
        let b = "00000000-0000-0000-0000-00000000000b";
        let events = vec![
            update(a, 1),
            update(b, 7),
            update(a, 3),
            Event::new("not json"),
            update(a, 2),
        ];
        let out = read_models(events).await;
        assert_eq!(out.len(), 2, "documents and rejected");
        assert_eq!(
            versions(&out[0]),
            vec![
                ("d".into(), b.into(), "7".into()),
                ("s".into(), b.into(), "7".into()),
                ("d".into(), a.into(), "3".into()),
                ("s".into(), a.into(), "3".into()),
            ]
        );
        assert_eq!(out[1].output, Some("rejected"));
        assert_eq!(out[1].events.len(), 1);
        let error = out[1].events[0].header("salesflow.error").unwrap();
        assert!(String::from_utf8_lossy(error).starts_with("not a cart update"));
    }

    #[tokio::test]
    async fn updates_without_a_cart_are_superseded_and_empty_records_refused() {
        let a = "00000000-0000-0000-0000-00000000000a";
        let event_only =
            Event::new(json!({ "event": { "cart_id": a, "seq": 4 } }).to_string()).with_key(a);
        let events = vec![update(a, 3), event_only, update(a, 5), Event::new("{}")];
        let out = read_models(events).await;
        assert_eq!(
            versions(&out[0]),
            vec![
                ("d".into(), a.into(), "5".into()),
                ("s".into(), a.into(), "5".into()),
            ]
        );
        assert_eq!(out[1].output, Some("rejected"));
        assert_eq!(out[1].events.len(), 1, "only the empty record");
        let error = out[1].events[0].header("salesflow.error").unwrap();
        assert!(String::from_utf8_lossy(error).contains("neither an event nor a cart"));
    }
}
