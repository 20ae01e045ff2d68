//! `salesflow schema`: a JSON Schema of `pipeline.toml`, built from the host's own
//! sections and every registered plugin's settings, for editors (Taplo / Even Better TOML
//! take it with a `#:schema` directive) and for linting configs outside salesflow.
//!
//! The schema checks what a file says: known keys only, each of its type, the `type` of a
//! component one of the plugins of its kind, enumerations and ranges. It leaves out what
//! only the whole configuration can tell — a key required by a plugin may come from a
//! shared table (`[kafka]`), inputs must name components that exist — which `salesflow
//! check` judges; so no plugin key is marked required here.

use serde_json::{Map, Value, json};

use salesflow_plugin_api::{ComponentKind, schemars};

use crate::config::{LogSettings, PluginDirSettings, RuntimeSettings, ServerSettings};
use crate::registry::Registry;

/// The schema, draft 2020-12.
pub fn config_schema(registry: &Registry) -> Value {
    let mut defs = Map::new();
    let server = embed(
        schemars::schema_for!(ServerSettings).to_value(),
        "server",
        &mut defs,
    );
    let log = embed(
        schemars::schema_for!(LogSettings).to_value(),
        "log",
        &mut defs,
    );
    let runtime = embed(
        schemars::schema_for!(RuntimeSettings).to_value(),
        "runtime",
        &mut defs,
    );
    let plugins = embed(
        schemars::schema_for!(PluginDirSettings).to_value(),
        "plugins",
        &mut defs,
    );

    let mut properties = Map::new();
    properties.insert("server".into(), server);
    properties.insert("log".into(), log);
    properties.insert("runtime".into(), runtime);
    properties.insert("plugins".into(), plugins);

    // Each shared table takes the keys every plugin drawing on it knows (described as
    // the first of them describes them).
    for section in registry.shared_sections() {
        let mut first: Option<(Value, Value)> = None;
        let mut names: Option<Vec<String>> = None;
        for plugin in registry.all() {
            let direct = plugin.shared_section() == Some(section);
            if !direct && !plugin.nested_shared_sections().contains(&section) {
                continue;
            }
            let schema = plugin.settings_schema().to_value();
            let table = if direct {
                schema.clone()
            } else {
                resolved(&schema, &schema["properties"][section])
            };
            let keys: Vec<String> = table["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            names = Some(match names {
                None => keys,
                Some(mut so_far) => {
                    so_far.retain(|k| keys.contains(k));
                    so_far
                }
            });
            first.get_or_insert((table, schema));
        }
        let mut keys = Map::new();
        if let (Some((table, schema)), Some(names)) = (first, names) {
            let prefix = format!("shared.{section}");
            for name in names {
                let property = table["properties"][&name].clone();
                keys.insert(name, embed_fragment(property, &schema, &prefix, &mut defs));
            }
        }
        properties.insert(
            section.to_owned(),
            json!({
                "type": "object",
                "description": format!(
                    "Defaults for every component that connects through [{section}]; a component's own keys win."
                ),
                "properties": keys,
                "additionalProperties": false,
            }),
        );
    }

    let mut kinds = Map::new();
    for (table, kind) in [
        ("sources", ComponentKind::Source),
        ("stages", ComponentKind::Stage),
        ("sinks", ComponentKind::Sink),
    ] {
        let mut choices = Vec::new();
        for plugin in registry.all().filter(|p| p.kind() == kind) {
            let name = format!("{table}.{}", plugin.name());
            let mut schema = embed(plugin.settings_schema().to_value(), &name, &mut defs);
            component_keys(&mut schema, kind, plugin.name(), plugin.summary());
            defs.insert(name.clone(), schema);
            choices.push(json!({ "$ref": format!("#/$defs/{name}") }));
        }
        kinds.insert(
            table.to_owned(),
            json!({
                "type": "object",
                "description": format!("The pipeline's {table}, by component name."),
                "propertyNames": { "pattern": "^[a-z0-9][a-z0-9_-]*$" },
                "additionalProperties": { "oneOf": choices },
            }),
        );
    }
    properties.insert(
        "pipelines".into(),
        json!({
            "type": "object",
            "description": "The pipelines, by name: each holds sources, stages and sinks.",
            "additionalProperties": {
                "type": "object",
                "properties": kinds,
                "additionalProperties": false,
            },
        }),
    );

    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://salesflow.dev/schemas/pipeline.json",
        "title": "salesflow pipeline.toml",
        "description": "The configuration of the salesflow host, from `salesflow schema`.",
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
        "$defs": defs,
    })
}

/// Adds the keys the host reads from every component of `kind` to a plugin's schema.
fn component_keys(schema: &mut Value, kind: ComponentKind, name: &str, summary: &str) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    object.insert("description".into(), json!(summary));
    let properties = object
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(properties) = properties else {
        return;
    };
    properties.insert(
        "type".into(),
        json!({ "const": name, "description": "The plugin." }),
    );
    let mut required = vec![json!("type")];
    if kind != ComponentKind::Source {
        required.push(json!("inputs"));
        properties.insert(
            "inputs".into(),
            json!({
                "type": "array",
                "items": { "type": "string" },
                "minItems": 1,
                "description": "Sources or stages (`name` or `name.output`) whose events come in.",
            }),
        );
        properties.insert(
            "lanes".into(),
            json!({
                "description": "Parallel instances (a batch goes to lane `lane % lanes`), or \"auto\": one per input partition.",
                "default": 1,
                "oneOf": [
                    { "type": "integer", "minimum": 1, "maximum": 1024 },
                    { "const": "auto" }
                ],
            }),
        );
        properties.insert(
            "buffer".into(),
            json!({
                "type": "integer", "minimum": 1, "maximum": 65536, "default": 4,
                "description": "Bounded channel size per lane, in batches.",
            }),
        );
        properties.insert(
            "buffer_bytes".into(),
            json!({
                "type": "integer", "minimum": 1024, "maximum": 4_294_967_295_u64,
                "description": "A bound per lane in bytes (payloads, keys, headers) on the batches queued for it, and for a sink also being written; senders wait for room. Unset: bounded in batches only.",
            }),
        );
    }
    if kind == ComponentKind::Sink {
        properties.insert(
            "concurrency".into(),
            json!({
                "description": "Writes in flight per lane: a number, or \"adaptive\" (from 1 up to max_concurrency, following the server).",
                "oneOf": [
                    { "type": "integer", "minimum": 1, "maximum": 1024 },
                    { "const": "adaptive" }
                ],
            }),
        );
        properties.insert(
            "max_concurrency".into(),
            json!({
                "type": "integer", "minimum": 1, "maximum": 1024, "default": 64,
                "description": "The most writes in flight per lane when concurrency is adaptive.",
            }),
        );
    }
    object.insert("required".into(), Value::Array(required));
    object.insert("additionalProperties".into(), json!(false));
}

/// A plugin's schema as a definition of the combined one: its `$defs` moved to the top
/// under `prefix.`, its references rewritten, and nothing required (see the module doc).
fn embed(mut schema: Value, prefix: &str, defs: &mut Map<String, Value>) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
        if let Some(Value::Object(own)) = object.remove("$defs") {
            for (name, def) in own {
                let mut def = def;
                rewrite(&mut def, prefix);
                defs.insert(format!("{prefix}.{name}"), def);
            }
        }
    }
    rewrite(&mut schema, prefix);
    schema
}

/// One property's schema taken out of `root` (its plugin's), its references kept valid.
fn embed_fragment(
    mut fragment: Value,
    root: &Value,
    prefix: &str,
    defs: &mut Map<String, Value>,
) -> Value {
    if let Some(own) = root.get("$defs").and_then(Value::as_object) {
        for (name, def) in own {
            let mut def = def.clone();
            rewrite(&mut def, prefix);
            defs.entry(format!("{prefix}.{name}")).or_insert(def);
        }
    }
    rewrite(&mut fragment, prefix);
    fragment
}

/// A property's schema with a top `$ref` into `root`'s definitions followed.
fn resolved(root: &Value, property: &Value) -> Value {
    let reference = property["$ref"]
        .as_str()
        .or_else(|| property["allOf"][0]["$ref"].as_str())
        .or_else(|| {
            property["anyOf"]
                .as_array()
                .and_then(|a| a.iter().find_map(|s| s["$ref"].as_str()))
        });
    match reference.and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => root["$defs"][name].clone(),
        None => property.clone(),
    }
}

/// Rewrites `#/$defs/X` to `#/$defs/prefix.X` and drops `required` lists of objects.
fn rewrite(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
                && !name.starts_with(&format!("{prefix}."))
            {
                *reference = format!("#/$defs/{prefix}.{name}");
            }
            if object.get("properties").is_some() {
                object.remove("required");
            }
            for child in object.values_mut() {
                rewrite(child, prefix);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, prefix);
            }
        }
        _ => {}
    }
}
