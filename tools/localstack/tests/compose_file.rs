//! `compose/docker-compose.yml` cannot run on machines without a Docker engine; this test
//! checks what can be checked without one: it validates against the Compose
//! Specification's schema (`compose/compose-spec.json`, `schema/compose-spec.json` of
//! github.com/compose-spec/compose-go/v2 v2.16.2, fetched through the Go module proxy),
//! every service it names exists and is complete (image or build, health check,
//! dependencies, resource limits), its ports are distinct and bound to loopback, every
//! server keeps its data on a volume, the pipelines read a mounted `pipeline.toml` and
//! plugins folder, and every file and folder it mounts or builds from is in the
//! repository.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    salesflow_localstack::find_root(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn compose_dir() -> PathBuf {
    repo().join("compose")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    value.apply_merge().expect("merge keys resolve");
    value
}

fn services() -> BTreeMap<String, Value> {
    let compose = load(&compose_dir().join("docker-compose.yml"));
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

fn str_list(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_stack_has_every_service() {
    let names: BTreeSet<String> = services().into_keys().collect();
    for expected in [
        "kafka",
        "cassandra",
        "elasticsearch",
        "prometheus",
        "grafana",
        "schemas",
        "command-api",
        "domain",
        "projections",
        "query-api",
    ] {
        assert!(
            names.contains(expected),
            "service {expected} is missing: {names:?}"
        );
    }
}

#[test]
fn every_service_is_complete_and_depends_on_services_that_exist() {
    let services = services();
    for (name, service) in &services {
        assert!(
            service["image"].is_string() || service["build"].is_mapping(),
            "{name}: neither image nor build"
        );
        // One-shot jobs have no health check; everything that keeps running has one.
        if service["restart"].as_str() != Some("no") {
            let test = str_list(&service["healthcheck"]["test"]);
            assert!(!test.is_empty(), "{name}: no health check");
        }
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, rule) in deps {
                let dep = dep.as_str().unwrap();
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown {dep}"
                );
                let condition = rule["condition"].as_str().unwrap_or_default();
                assert!(
                    [
                        "service_healthy",
                        "service_completed_successfully",
                        "service_started"
                    ]
                    .contains(&condition),
                    "{name} -> {dep}: condition {condition:?}"
                );
                if condition == "service_healthy" {
                    assert!(
                        services[dep]["healthcheck"].is_mapping(),
                        "{name} waits for {dep} to be healthy, which has no health check"
                    );
                }
            }
        }
    }
}

#[test]
fn the_file_validates_against_the_compose_specification() {
    let compose = load(&compose_dir().join("docker-compose.yml"));
    let document: serde_json::Value = serde_json::to_value(&compose).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(compose_dir().join("compose-spec.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And the schema catches what it should: a misspelt key, a port of the wrong type.
    let mut broken = document.clone();
    broken["services"]["kafka"]["healthchek"] = serde_json::json!({});
    broken["services"]["grafana"]["ports"] = serde_json::json!({ "3000": true });
    assert!(validator.iter_errors(&broken).count() >= 2);
}

#[test]
fn every_server_keeps_its_data_on_a_volume_and_has_resource_limits() {
    let services = services();
    for (server, data) in [
        ("kafka", "/var/lib/kafka/data"),
        ("cassandra", "/var/lib/cassandra"),
        ("elasticsearch", "/usr/share/elasticsearch/data"),
        ("prometheus", "/prometheus"),
        ("grafana", "/var/lib/grafana"),
    ] {
        let volumes = str_list(&services[server]["volumes"]);
        assert!(
            volumes
                .iter()
                .any(|v| !v.starts_with('.') && v.split(':').nth(1) == Some(data)),
            "{server}: {data} is not on a named volume: {volumes:?}"
        );
    }
    // KRaft mode: the image writes to /tmp/kraft-combined-logs unless told otherwise.
    assert_eq!(
        services["kafka"]["environment"]["KAFKA_LOG_DIRS"].as_str(),
        Some("/var/lib/kafka/data")
    );
    for (name, service) in &services {
        if service["restart"].as_str() == Some("no") {
            continue;
        }
        let limits = &service["deploy"]["resources"]["limits"];
        assert!(
            limits["memory"].is_string() && limits["cpus"].is_string(),
            "{name}: no memory and CPU limits"
        );
    }
}

#[test]
fn the_pipelines_read_a_mounted_config_and_plugins_folder() {
    let services = services();
    for pipeline in ["command-api", "domain", "projections", "query-api"] {
        let volumes = str_list(&services[pipeline]["volumes"]);
        assert!(
            volumes.contains(&"../pipeline.toml:/app/pipeline.toml:ro".to_owned()),
            "{pipeline}: {volumes:?}"
        );
        let plugins = services[pipeline]["environment"]["SALESFLOW__PLUGINS__DIR"]
            .as_str()
            .expect("a plugins folder");
        assert!(
            volumes.iter().any(|v| v.split(':').nth(1) == Some(plugins)),
            "{pipeline}: {plugins} is not mounted: {volumes:?}"
        );
    }
    let ignored = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for path in [".stack", "target", "load/reports", ".git"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore does not leave out {path}"
        );
    }
}

#[test]
fn published_ports_are_distinct_and_well_formed() {
    let mut host_ports = BTreeMap::new();
    for (name, service) in services() {
        for port in str_list(&service["ports"]) {
            // Published on the host's loopback only.
            let (ip, rest) = port.split_once(':').expect("ip:host:container");
            assert_eq!(ip, "127.0.0.1", "{name}: {port}");
            let (host, container) = rest.split_once(':').expect("ip:host:container");
            let host: u16 = host.parse().unwrap_or_else(|_| panic!("{name}: {port}"));
            let _: u16 = container
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {port}"));
            if let Some(other) = host_ports.insert(host, name.clone()) {
                panic!("host port {host} published by both {other} and {name}");
            }
        }
    }
    // The APIs and dashboards, and the servers where host-side tools (`salesflow dlq`,
    // the load generator's reconciliation, kcat, cqlsh) look with pipeline.toml's
    // addresses.
    for (port, service) in [
        (8080, "command-api"),
        (8081, "query-api"),
        (9090, "prometheus"),
        (3000, "grafana"),
        (9092, "kafka"),
        (9042, "cassandra"),
        (9200, "elasticsearch"),
    ] {
        assert_eq!(host_ports.get(&port).map(String::as_str), Some(service));
    }
}

#[test]
fn every_mounted_and_built_path_exists() {
    let compose = load(&compose_dir().join("docker-compose.yml"));
    let named_volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for (name, service) in services() {
        for volume in str_list(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                let path = compose_dir().join(source);
                assert!(
                    path.exists(),
                    "{name} mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    named_volumes.contains(source),
                    "{name}: undeclared volume {source}"
                );
            }
        }
        if let Some(build) = service["build"].as_mapping() {
            let context = compose_dir().join(build[&Value::from("context")].as_str().unwrap());
            assert!(context.is_dir(), "{name}: build context missing");
            let dockerfile = context.join(build[&Value::from("dockerfile")].as_str().unwrap());
            assert!(
                dockerfile.is_file(),
                "{name}: {} missing",
                dockerfile.display()
            );
            // Everything the Dockerfile copies from the context is there.
            let text = std::fs::read_to_string(&dockerfile).unwrap();
            for line in text
                .lines()
                .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
            {
                let words: Vec<&str> = line.split_whitespace().collect();
                for source in &words[1..words.len() - 1] {
                    assert!(
                        context.join(source).exists(),
                        "{name}: COPY {source} missing"
                    );
                }
            }
        }
    }
}

#[test]
fn prometheus_scrapes_the_salesflow_services_where_they_listen() {
    let services = services();
    let config = load(&repo().join("monitoring/prometheus-compose.yml"));
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    let salesflow = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("salesflow"))
        .expect("a salesflow job");
    let targets = str_list(&salesflow["static_configs"][0]["targets"]);
    for pipeline in ["command-api", "domain", "projections", "query-api"] {
        let address = services[pipeline]["environment"]["SALESFLOW__SERVER__ADDRESS"]
            .as_str()
            .expect("server address");
        let port = address.rsplit(':').next().unwrap();
        assert!(
            targets.contains(&format!("{pipeline}:{port}")),
            "{pipeline}:{port} is not scraped: {targets:?}"
        );
        let command = str_list(&services[pipeline]["command"]);
        assert_eq!(command, ["run", "--pipeline", pipeline]);
    }
}

#[test]
fn containers_run_the_versions_of_the_local_stack() {
    let services = services();
    let pom = std::fs::read_to_string(repo().join("compose/servers/kafka/pom.xml")).unwrap();
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("kafka.version in the pom");
    assert_eq!(
        services["kafka"]["image"].as_str(),
        Some(format!("apache/kafka:{version}").as_str())
    );
    assert!(
        services["cassandra"]["image"]
            .as_str()
            .unwrap()
            .starts_with("cassandra:5.0")
    );
    // Elasticsearch's major is the client crate's.
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let client_major = cargo
        .lines()
        .find(|l| l.starts_with("elasticsearch = "))
        .and_then(|l| l.split("version = \"").nth(1))
        .and_then(|v| v.split('.').next())
        .expect("the elasticsearch crate's version");
    let image = services["elasticsearch"]["image"].as_str().unwrap();
    assert!(
        image.contains(&format!("/elasticsearch:{client_major}.")),
        "{image} is not the client's major {client_major}"
    );
}
