//! The monitoring configuration is valid and its alert rules behave: `promtool check
//! config`, `promtool check rules`, `promtool test rules`; every dashboard panel queries
//! the provisioned Prometheus datasource. (Whether every query returns data on a live run
//! is `plugins/sales/tests/tests/observability.rs`.)

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::PathBuf;
use std::process::Command;

fn monitoring() -> PathBuf {
    salesflow_monitoring::dir()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .current_dir(monitoring())
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus package) is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn prometheus_configs_are_valid() {
    promtool(&["check", "config", "--syntax-only", "prometheus.yml"]);
    promtool(&["check", "config", "--syntax-only", "prometheus-compose.yml"]);
}

#[test]
fn alert_rules_are_valid_and_their_tests_pass() {
    let text = promtool(&["check", "rules", "rules/salesflow.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", "rules-tests/salesflow_test.yml"]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_panel_queries_the_provisioned_datasource() {
    let provisioned = std::fs::read_to_string(
        monitoring().join("grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(provisioned.contains("uid: prometheus"));
    let mut dashboards = 0;
    for entry in std::fs::read_dir(monitoring().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        dashboards += 1;
        let panels = dashboard["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{}", path.display());
        let mut ids = std::collections::BTreeSet::new();
        for panel in panels {
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{}: duplicate panel id",
                path.display()
            );
            assert_eq!(
                panel["datasource"]["uid"],
                "${datasource}",
                "{}",
                path.display()
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(
                !targets.is_empty(),
                "{}: panel {} has no query",
                path.display(),
                panel["title"]
            );
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                assert!(expr.contains("salesflow") || expr.contains("up{"), "{expr}");
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{expr}");
                // Every series a panel reads follows the instance picked, and those of
                // a pipeline the pipeline picked.
                assert!(expr.contains(r#"instance=~"$instance""#), "{expr}");
                let per_pipeline = ["salesflow_events", "salesflow_kafka", "salesflow_sink"];
                if per_pipeline.iter().any(|m| expr.contains(m)) {
                    assert!(expr.contains(r#"pipeline=~"$pipeline""#), "{expr}");
                }
            }
        }
    }
    assert_eq!(dashboards, 4, "overview, kafka, stages, http");
}

/// Every dashboard has the data source, pipeline and instance variables, the pipeline
/// and instance ones offering "All" (`.*`, which the live test expands them to).
#[test]
fn every_dashboard_has_datasource_pipeline_and_instance_variables() {
    for entry in std::fs::read_dir(monitoring().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let find = |name: &str| {
            variables
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{}: no ${name} variable", path.display()))
        };
        let datasource = find("datasource");
        assert_eq!(datasource["type"], "datasource", "{}", path.display());
        assert_eq!(datasource["query"], "prometheus", "{}", path.display());
        for (name, all) in salesflow_monitoring::VARIABLES {
            let variable = find(name.trim_start_matches('$'));
            assert_eq!(variable["type"], "query", "{}", path.display());
            assert_eq!(variable["includeAll"], true, "{}", path.display());
            assert_eq!(variable["allValue"], all, "{}", path.display());
            assert_eq!(
                variable["datasource"]["uid"],
                "${datasource}",
                "{}",
                path.display()
            );
        }
    }
}

/// Every alert links its runbook section (`docs/runbook.md`), and the section exists: a
/// heading named after the alert, which is what the link's anchor points at.
#[test]
fn every_alert_links_a_runbook_section_that_exists() {
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(monitoring().join("rules/salesflow.yml")).unwrap(),
    )
    .unwrap();
    let runbook = std::fs::read_to_string(monitoring().join("../docs/runbook.md")).unwrap();
    let headings: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_lowercase)
        .collect();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
            let anchor = url
                .strip_prefix("https://github.com/salesflow/salesflow/blob/main/docs/runbook.md#")
                .unwrap_or_else(|| panic!("{alert}: {url} is not a section of docs/runbook.md"));
            assert_eq!(anchor, alert.to_lowercase(), "{alert}: {url}");
            assert!(
                headings.contains(&anchor.to_owned()),
                "{alert}: docs/runbook.md has no section `## {alert}`"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
}
