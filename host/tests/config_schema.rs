//! `salesflow schema`: the JSON Schema of pipeline.toml accepts the repository's own
//! configurations and refuses, naming the place, a key no plugin knows, a value of the
//! wrong type and a `type` no plugin has.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::process::Command;

fn schema() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_salesflow"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg("schema")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn as_json(toml_text: &str) -> serde_json::Value {
    let table: toml::Table = toml::from_str(toml_text).unwrap();
    serde_json::to_value(table).unwrap()
}

/// The errors the schema finds, as `path: message`.
fn errors(validator: &jsonschema::Validator, config: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_repositorys_configurations_are_valid() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "pipeline.toml",
        "compose/helm/salesflow/files/pipeline.toml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let found = errors(&validator, &as_json(&text));
        assert!(found.is_empty(), "{file}: {found:#?}");
    }
}

#[test]
fn unknown_keys_wrong_types_and_unknown_plugins_are_named() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let ok = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        [pipelines.p.sources.in]
        type = "kafka"
        topics = ["orders"]
        group_id = "g"
        [pipelines.p.sinks.out]
        type = "kafka"
        inputs = ["in"]
        topic = "copy"
        lanes = "auto"
    "#;
    assert!(errors(&validator, &as_json(ok)).is_empty());

    let typo = ok.replace("group_id", "group_idd");
    let found = errors(&validator, &as_json(&typo));
    assert!(
        found.iter().any(|e| e.contains("/pipelines/p/sources/in")),
        "{found:#?}"
    );

    let lanes = ok.replace("lanes = \"auto\"", "lanes = \"many\"");
    let found = errors(&validator, &as_json(&lanes));
    assert!(
        found.iter().any(|e| e.contains("/pipelines/p/sinks/out")),
        "{found:#?}"
    );

    let plugin = ok.replace(
        "type = \"kafka\"\n        inputs",
        "type = \"kafkaa\"\n        inputs",
    );
    assert!(!errors(&validator, &as_json(&plugin)).is_empty());

    let shared = ok.replace("bootstrap_servers", "bootstrap_server");
    let found = errors(&validator, &as_json(&shared));
    assert!(found.iter().any(|e| e.contains("/kafka")), "{found:#?}");

    let top = format!("{ok}\n[serverr]\naddress = \"127.0.0.1:1\"\n");
    assert!(!errors(&validator, &as_json(&top)).is_empty());
}
