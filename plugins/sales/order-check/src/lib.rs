//! `type = "validate"`: checks every event against the order JSON Schema (the shipped
//! `schemas/order.schema.json`, or another file) and reads its money exactly.
//!
//! `on_invalid = "reject"` (for APIs): a batch with any invalid event is refused whole —
//! its source learns every invalid field of every refused event, and nothing of it goes
//! on. `on_invalid = "dead-letter"` (for topics): invalid events leave on the `invalid`
//! output with the reasons in the `salesflow.error` header; the rest go on.
//! Valid events go on keyed by their cart id.

use std::path::PathBuf;
use std::sync::Arc;

use salesflow_plugin_api::bytes::Bytes;
use salesflow_plugin_api::event::headers;
use salesflow_plugin_api::prometheus_client::metrics::counter::Counter;
use salesflow_plugin_api::{
    Batch, BuildContext, Component, ComponentKind, ConfigError, Plugin, PluginError, Rejection,
    Settings, Stage, StageFactory, Status, async_trait, schemars, toml,
};
use salesflow_sales::OrderValidator;
use serde::Deserialize;

/// What happens to invalid events.
#[derive(Clone, Copy, Debug, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnInvalid {
    /// Refuse the whole batch, naming every problem (HTTP answers 400).
    Reject,
    /// Send invalid events to the `invalid` output, with their reasons.
    DeadLetter,
}

/// Settings of the validate stage.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateSettings {
    /// A JSON Schema file for orders; default: the shipped `schemas/order.schema.json`.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// `reject` or `dead-letter`.
    #[serde(default = "default_on_invalid")]
    pub on_invalid: OnInvalid,
}

fn default_on_invalid() -> OnInvalid {
    OnInvalid::Reject
}

impl Settings for ValidateSettings {
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.schema {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::at(&["schema"], format!("cannot read {}: {e}", path.display()))
            })?;
            OrderValidator::from_schema(&text).map_err(|e| ConfigError::at(&["schema"], e))?;
        }
        Ok(())
    }
}

/// Adds the order check stage (`type = "validate"`).
pub fn register(registrar: &mut dyn salesflow_plugin_api::Registrar) {
    registrar.plugin(Arc::new(ValidatePlugin));
}

pub struct ValidatePlugin;

#[async_trait]
impl Plugin for ValidatePlugin {
    fn kind(&self) -> ComponentKind {
        ComponentKind::Stage
    }

    fn name(&self) -> &'static str {
        "validate"
    }

    fn summary(&self) -> &'static str {
        "Validates orders against the order JSON Schema; rejects a request naming every \
         invalid field, or sends invalid events to its `invalid` output"
    }

    fn outputs(&self) -> &'static [&'static str] {
        &["invalid"]
    }

    fn settings_schema(&self) -> schemars::Schema {
        schemars::schema_for!(ValidateSettings)
    }

    fn validate(&self, settings: &toml::Table) -> Result<(), ConfigError> {
        ValidateSettings::from_table(settings).map(|_| ())
    }

    async fn build(
        &self,
        settings: toml::Table,
        ctx: &mut BuildContext<'_>,
    ) -> Result<Component, PluginError> {
        let settings = ValidateSettings::from_table(&settings)
            .map_err(|e| PluginError::context("validate settings", e))?;
        let validator = match &settings.schema {
            None => OrderValidator::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| PluginError::context(path.display(), e))?;
                OrderValidator::from_schema(&text).map_err(PluginError::new)?
            }
        };
        let invalid = Counter::default();
        ctx.metrics.register(
            "salesflow_invalid_events",
            "Events that failed validation",
            invalid.clone(),
        );
        Ok(Component::Stage(Arc::new(Factory {
            validator: Arc::new(validator),
            on_invalid: settings.on_invalid,
            invalid,
        })))
    }
}

struct Factory {
    validator: Arc<OrderValidator>,
    on_invalid: OnInvalid,
    invalid: Counter,
}

impl StageFactory for Factory {
    fn create(&self, _lane: usize) -> Result<Box<dyn Stage>, PluginError> {
        Ok(Box::new(Validate {
            validator: Arc::clone(&self.validator),
            on_invalid: self.on_invalid,
            invalid: self.invalid.clone(),
        }))
    }
}

pub struct Validate {
    validator: Arc<OrderValidator>,
    on_invalid: OnInvalid,
    invalid: Counter,
}

#[async_trait]
impl Stage for Validate {
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), PluginError> {
        let Batch {
            events, acks, lane, ..
        } = batch;
        let mut valid = Vec::with_capacity(events.len());
        let mut invalid = Vec::new();
        let mut rejections = Vec::new();
        for (position, mut event) in events.into_iter().enumerate() {
            match self.validator.check(&event.payload) {
                Ok(cart_id) => {
                    event.key = Some(Bytes::from(cart_id.to_string()));
                    valid.push(event);
                }
                Err(reasons) => {
                    self.invalid.inc();
                    let index = event.origin.item().or_else(|| u32::try_from(position).ok());
                    event
                        .headers
                        .push((headers::ERROR.to_owned(), Bytes::from(reasons.join("; "))));
                    rejections.push(Rejection { index, reasons });
                    invalid.push(event);
                }
            }
        }
        if rejections.is_empty() {
            out.push(Batch::new(valid, acks, lane));
            return Ok(());
        }
        match self.on_invalid {
            OnInvalid::Reject => acks.finish(&Status::Rejected(rejections)),
            OnInvalid::DeadLetter => {
                if !valid.is_empty() {
                    out.push(Batch::new(valid, acks.clone(), lane));
                }
                out.push(Batch::new(invalid, acks, lane).to_output("invalid"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use salesflow_plugin_api::{AckHandle, AckSet, Event};

    use super::*;

    fn valid() -> Vec<u8> {
        br#"{"order_id":"7c9e6679-7425-40de-944b-e07fc1f90ae7","cart_id":"3f1c2a9e-6b1d-4b8e-9a77-2d5e8c1f0a11","user_id":"u","product_name":"p","product_info":"","quantity":2,"payment_method":"card","shipping_address":"a","billing_address":"b","amount":"1.00","discounts":"0","tax_amount":"0","subtotal":"2.00","shipping_method":"post","currency":"EUR","seller_info":"s","created_at":"2026-11-26T10:15:00Z"}"#.to_vec()
    }

    fn stage(on_invalid: OnInvalid) -> Validate {
        Validate {
            validator: Arc::new(OrderValidator::new()),
            on_invalid,
            invalid: Counter::default(),
        }
    }

    /// A batch with a status probe: what its source hears.
    fn batch(payloads: Vec<Vec<u8>>) -> (Batch, std::sync::mpsc::Receiver<Status>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let ack = AckHandle::new(move |status| {
            let _ = tx.send(status);
        });
        let events = payloads.into_iter().map(Event::new).collect();
        (Batch::new(events, AckSet::one(ack), 0), rx)
    }

    #[tokio::test]
    async fn valid_orders_go_on_keyed_by_their_cart() {
        let mut out = Vec::new();
        let (input, _) = batch(vec![valid()]);
        stage(OnInvalid::Reject)
            .process(input, &mut out)
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].events[0].key.as_deref(),
            Some(b"3f1c2a9e-6b1d-4b8e-9a77-2d5e8c1f0a11".as_slice())
        );
    }

    /// For an API: one invalid order refuses the whole request, naming its position and
    /// every reason; nothing goes on.
    #[tokio::test]
    async fn reject_refuses_the_whole_batch_naming_each_invalid_order() {
        let mut bad = valid();
        bad = String::from_utf8(bad)
            .unwrap()
            .replace("\"quantity\":2", "\"quantity\":2.5")
            .into_bytes();
        let (input, status) = batch(vec![valid(), bad]);
        let mut out = Vec::new();
        stage(OnInvalid::Reject)
            .process(input, &mut out)
            .await
            .unwrap();
        assert!(out.is_empty(), "nothing of a refused batch goes on");
        match status.recv().unwrap() {
            Status::Rejected(rejections) => {
                assert_eq!(rejections.len(), 1);
                assert_eq!(rejections[0].index, Some(1));
                assert!(rejections[0].reasons[0].starts_with("quantity:"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// For a topic: invalid orders leave on `invalid` with their reasons; the rest goes on.
    #[tokio::test]
    async fn dead_letter_sends_invalid_orders_aside_and_the_rest_on() {
        let (input, _) = batch(vec![b"{}".to_vec(), valid()]);
        let mut out = Vec::new();
        stage(OnInvalid::DeadLetter)
            .process(input, &mut out)
            .await
            .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].events.len(), 1);
        assert_eq!(out[1].output, Some("invalid"));
        let why = out[1].events[0].header(headers::ERROR).unwrap();
        assert!(String::from_utf8_lossy(why).contains("order_id"));
    }
}
