//! ARCHITECTURE.md's code map is the rule: every workspace crate has its row, imports
//! only the workspace crates its row allows, and never (even through others) what its row
//! forbids. Read from `cargo metadata`, so a dependency added against the map fails here.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// A row of the dependency table: (may import, never imports).
type Rule = (BTreeSet<String>, BTreeSet<String>);

/// The table of ARCHITECTURE.md headed `| crate | folder | may import | never imports |`.
fn rules() -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(salesflow_testkit::repo().join("ARCHITECTURE.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("| crate | folder | may import | never imports |") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .filter(|n| !n.is_empty() && n != "-")
                .collect()
        };
        rows.insert(
            cells[0].trim_matches('`').to_owned(),
            (names(cells[2]), names(cells[3])),
        );
    }
    assert!(!rows.is_empty(), "ARCHITECTURE.md has no dependency table");
    rows
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(salesflow_testkit::repo())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_crate_imports_only_what_the_code_map_allows() {
    let rules = rules();
    let meta = metadata();
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    let packages: BTreeMap<String, &Value> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap().to_owned(), p))
        .collect();
    let name_of = |id: &str| packages[id]["name"].as_str().unwrap().to_owned();
    let workspace: BTreeSet<String> = members.iter().map(|id| name_of(id)).collect();
    // Normal (not dev, not build) dependencies of every package, by id.
    let mut normal: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_owned())
            .collect();
        normal.insert(node["id"].as_str().unwrap().to_owned(), deps);
    }
    let mut problems = Vec::new();
    for id in &members {
        let name = name_of(id);
        let Some((allowed, never)) = rules.get(&name) else {
            problems.push(format!("{name} has no row in ARCHITECTURE.md's code map"));
            continue;
        };
        for dep in &normal[id] {
            let dep_name = name_of(dep);
            if workspace.contains(&dep_name) && !allowed.contains(&dep_name) {
                problems.push(format!(
                    "{name} imports {dep_name}, which its row does not allow"
                ));
            }
        }
        // Everything it pulls in, however indirectly.
        let mut seen = BTreeSet::new();
        let mut stack = normal[id].clone();
        while let Some(dep) = stack.pop() {
            if seen.insert(dep.clone()) {
                stack.extend(normal[&dep].iter().cloned());
            }
        }
        for dep in seen {
            let dep_name = name_of(&dep);
            if never.contains(&dep_name) {
                problems.push(format!("{name} pulls in {dep_name}, which its row forbids"));
            }
        }
    }
    for row in rules.keys() {
        if !workspace.contains(row) {
            problems.push(format!(
                "ARCHITECTURE.md names {row}, which is not a workspace crate"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
