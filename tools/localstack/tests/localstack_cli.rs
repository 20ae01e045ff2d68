//! The `localstack` command against the running local stack: `up` leaves running servers
//! alone, `status` names each server's version, and a server whose port is taken makes
//! `up` fail with a message naming it.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::process::Command;

fn localstack() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_localstack"));
    command
        .arg("--root")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    command
}

fn status_json() -> serde_json::Value {
    let out = localstack()
        .args(["status", "--json"])
        .output()
        .expect("run localstack status");
    assert!(
        out.status.success(),
        "the stack is not healthy: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

#[test]
fn status_names_every_server_with_its_version() {
    let status = status_json();
    let servers: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["server"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["kafka", "cassandra", "opensearch", "prometheus"]);
    for server in status.as_array().unwrap() {
        assert_eq!(server["healthy"], true, "{server}");
        assert!(server["pid"].as_u64().is_some(), "{server}");
        assert!(
            server["rss_mib"].as_u64().is_some_and(|m| m > 0),
            "{server}"
        );
    }
    let version = |i: usize| status[i]["version"].as_str().unwrap().to_owned();
    assert!(version(0).starts_with("Kafka 4."), "{}", version(0));
    assert!(version(1).starts_with("Cassandra 5.0."), "{}", version(1));
    assert!(version(2).starts_with("opensearch 2.19."), "{}", version(2));
    assert!(version(3).starts_with("Prometheus "), "{}", version(3));
}

#[test]
fn up_again_leaves_running_servers_alone() {
    let pids = |s: &serde_json::Value| -> Vec<u64> {
        s.as_array()
            .unwrap()
            .iter()
            .map(|s| s["pid"].as_u64().unwrap())
            .collect()
    };
    let before = pids(&status_json());
    let out = localstack().arg("up").output().expect("run localstack up");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for server in ["kafka", "cassandra", "opensearch", "prometheus"] {
        assert!(
            stdout.contains(&format!("{server}: already running")),
            "{server} not left alone:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("created topic"),
        "schemas changed on a second up:\n{stdout}"
    );
    assert_eq!(pids(&status_json()), before, "no server was restarted");
}

#[test]
fn a_taken_port_fails_up_naming_the_server() {
    // A second stack folder has no pid files, so its `up` must start its own Prometheus;
    // :9090 is held by the running stack, a process this second stack did not start.
    let dir = std::env::temp_dir().join(format!("localstack-test-{}", std::process::id()));
    let out = localstack()
        .arg("--stack-dir")
        .arg(&dir)
        .args(["up", "prometheus", "--no-schemas"])
        .output()
        .expect("run localstack up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail when a port is taken");
    assert!(
        stderr.contains("prometheus: cannot start, 127.0.0.1:9090 is already in use"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// An upgrade that changes a field's kind (here `items`, from `nested` to a disabled
/// `object`, as the detailed read model's did) must not stop `schemas`: the existing index
/// keeps its mapping of the field and takes the template's new fields, `schemas` names
/// what it kept, and the next index made from the template has the new mapping. A refresh
/// interval the new template no longer sets (as the read models' "1s") is reset on the
/// existing index too, to OpenSearch's default.
#[tokio::test]
async fn schemas_keep_a_field_an_existing_index_maps_otherwise() {
    let checkout = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("schematest-{tag}");
    let root = std::env::temp_dir().join(&name);
    let templates = root.join("schemas/elasticsearch/index-templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::create_dir_all(root.join("schemas/cql")).unwrap();
    std::fs::create_dir_all(root.join("schemas/kafka")).unwrap();
    std::fs::create_dir_all(root.join("schemas/environments")).unwrap();
    for file in ["kafka/topics.toml", "environments/local.toml"] {
        std::fs::copy(
            checkout.join("schemas").join(file),
            root.join("schemas").join(file),
        )
        .unwrap();
    }
    let template = |items: serde_json::Value, extra: bool| {
        let mut properties = serde_json::json!({
            "cart_id": { "type": "keyword" },
            "items": items,
        });
        if extra {
            properties["note"] = serde_json::json!({ "type": "keyword" });
        }
        // The older template refreshed every second explicitly; the newer leaves it.
        let settings = if extra {
            serde_json::json!({})
        } else {
            serde_json::json!({ "refresh_interval": "1s" })
        };
        let body = serde_json::json!({
            "index_patterns": [format!("{name}-*")],
            "template": {
                "settings": settings,
                "mappings": { "dynamic": "strict", "properties": properties }
            }
        });
        std::fs::write(templates.join(format!("{name}.json")), body.to_string()).unwrap();
    };
    let schemas = || {
        let out = Command::new(env!("CARGO_BIN_EXE_localstack"))
            .arg("--root")
            .arg(&root)
            .arg("--stack-dir")
            .arg(root.join(".stack"))
            .args(["schemas", "--environment", "local"])
            .output()
            .expect("run localstack schemas");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let es = "http://127.0.0.1:9200";
    let http = reqwest::Client::new();
    // An index's mappings or settings, as OpenSearch answers `GET /<index>/<what>`.
    let index_json = |index: String, what: &'static str| {
        let http = http.clone();
        async move {
            let mut body: serde_json::Value = http
                .get(format!("{es}/{index}/{what}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body[&index].take()
        }
    };
    let mapping = |index: String| {
        let body = index_json(index, "_mapping");
        async move { body.await["mappings"]["properties"].clone() }
    };
    let refresh_interval = |index: String| {
        let body = index_json(index, "_settings");
        async move { body.await["settings"]["index"]["refresh_interval"].clone() }
    };

    template(
        serde_json::json!({ "type": "nested", "properties": { "order_id": { "type": "keyword" } } }),
        false,
    );
    schemas();
    let old = format!("{name}-1");
    let created = http.put(format!("{es}/{old}")).send().await.unwrap();
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap()
    );
    assert_eq!(
        refresh_interval(old.clone()).await,
        "1s",
        "the older template's interval"
    );

    template(
        serde_json::json!({ "type": "object", "enabled": false }),
        true,
    );
    let stdout = schemas();
    assert!(
        stdout.contains(&format!("{old} keeps its mapping of `items`")),
        "{stdout}"
    );
    assert_eq!(
        refresh_interval(old.clone()).await,
        serde_json::Value::Null,
        "the newer template's (unset) interval"
    );
    let before = mapping(old.clone()).await;
    assert_eq!(before["items"]["type"], "nested", "{before}");
    assert_eq!(before["note"]["type"], "keyword", "the new field: {before}");
    let indexed = http
        .put(format!("{es}/{old}/_doc/1?refresh=true"))
        .json(&serde_json::json!({ "cart_id": "c1", "note": "n", "items": [{ "order_id": "o1" }] }))
        .send()
        .await
        .unwrap();
    assert!(
        indexed.status().is_success(),
        "{}",
        indexed.text().await.unwrap()
    );

    let new = format!("{name}-2");
    let created = http.put(format!("{es}/{new}")).send().await.unwrap();
    assert!(
        created.status().is_success(),
        "{}",
        created.text().await.unwrap()
    );
    let after = mapping(new).await;
    assert_eq!(after["items"]["enabled"], false, "{after}");

    for path in [format!("{name}-*"), format!("_index_template/{name}")] {
        let deleted = http.delete(format!("{es}/{path}")).send().await.unwrap();
        assert!(
            deleted.status().is_success(),
            "{}",
            deleted.text().await.unwrap()
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}
