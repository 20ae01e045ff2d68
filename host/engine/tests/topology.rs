//! Planning in process: what `topology::plan` makes of a configuration, and what it
//! refuses, naming where — with no plugin of the product, only the tests' own.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

mod common;

use salesflow_host::config::Loaded;
use salesflow_host::topology::{Lanes, plan};

fn planned(text: &str) -> Result<salesflow_host::topology::Plan, Vec<String>> {
    let loaded = Loaded::from_str("test.toml", text).unwrap();
    plan(&loaded, common::registry())
}

fn problems(text: &str) -> String {
    match planned(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(problems) => problems.join("\n"),
    }
}

const CHAIN: &str = r#"
[pipelines.p.sources.in]
type = "feed"
feed = "in"

[pipelines.p.stages.first]
type = "pass"
inputs = ["in"]

[pipelines.p.stages.second]
type = "pass"
inputs = ["first", "in"]
lanes = "auto"

[pipelines.p.sinks.out]
type = "collect"
sink = "out"
inputs = ["second"]
lanes = 3
"#;

#[test]
fn nodes_come_sources_first_then_stages_in_order_then_sinks() {
    let plan = planned(CHAIN).unwrap();
    let names: Vec<&str> = plan.pipelines[0]
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, vec!["in", "first", "second", "out"]);
    assert_eq!(plan.pipelines[0].nodes[2].lanes, Lanes::PerKey);
    assert_eq!(plan.pipelines[0].nodes[3].lanes, Lanes::Fixed(3));
}

#[test]
fn a_cycle_is_refused() {
    let text = CHAIN.replace(
        "inputs = [\"in\"]\n\n[pipelines.p.stages.second]",
        "inputs = [\"second\"]\n\n[pipelines.p.stages.second]",
    );
    assert!(problems(&text).contains("cycle"), "{}", problems(&text));
}

#[test]
fn unknown_types_and_inputs_are_named_with_their_line() {
    let text = CHAIN.replace(
        "type = \"pass\"\ninputs = [\"in\"]",
        "type = \"nope\"\ninputs = [\"in\"]",
    );
    let found = problems(&text);
    assert!(
        found.contains("test.toml:7") && found.contains("nope"),
        "{found}"
    );
    let text = CHAIN.replace("inputs = [\"second\"]", "inputs = [\"missing\"]");
    assert!(problems(&text).contains("missing"), "{}", problems(&text));
}

#[test]
fn lanes_are_a_number_or_auto() {
    for bad in ["lanes = 0", "lanes = \"some\"", "lanes = 5000"] {
        let text = CHAIN.replace("lanes = 3", bad);
        assert!(
            problems(&text).contains("lanes"),
            "{bad}: {}",
            problems(&text)
        );
    }
}

#[test]
fn named_outputs_must_exist() {
    let text = CHAIN.replace("inputs = [\"second\"]", "inputs = [\"second.nothing\"]");
    assert!(problems(&text).contains("nothing"), "{}", problems(&text));
    let text = CHAIN.replace(
        "inputs = [\"second\"]",
        "inputs = [\"second\", \"second.rejected\"]",
    );
    assert!(planned(&text).is_ok());
}

#[test]
fn names_follow_the_rule() {
    let text = CHAIN.replace(
        "[pipelines.p.stages.first]",
        "[pipelines.p.stages.\"fi rst\"]",
    );
    assert!(
        problems(&text).contains("[a-zA-Z0-9_-]+"),
        "{}",
        problems(&text)
    );
}
