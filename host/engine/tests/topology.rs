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

/// What a reload compares: a pipeline's fingerprint changes with any of its components'
/// settings, wiring, lanes or buffers, and with nothing of another pipeline's.
#[test]
fn a_pipelines_fingerprint_follows_its_own_configuration_only() {
    use salesflow_host::supervisor::fingerprint;
    let two = |first_lanes: &str, second_buffer: &str| {
        format!(
            "{CHAIN}\n[pipelines.q.sources.in]\ntype = \"feed\"\nfeed = \"q\"\n\n\
             [pipelines.q.sinks.out]\ntype = \"collect\"\nsink = \"q\"\ninputs = [\"in\"]\n\
             buffer = {second_buffer}\n"
        )
        .replace("lanes = \"auto\"", &format!("lanes = {first_lanes}"))
    };
    let prints = |text: &str| -> Vec<String> {
        let plan = planned(text).unwrap();
        plan.pipelines
            .iter()
            .map(|p| fingerprint(p, &plan.loaded_plugins))
            .collect()
    };
    let base = prints(&two("\"auto\"", "4"));
    assert_eq!(
        base,
        prints(&two("\"auto\"", "4")),
        "the same text, the same prints"
    );
    let lanes = prints(&two("3", "4"));
    assert_ne!(base[0], lanes[0], "p's lanes changed");
    assert_eq!(base[1], lanes[1], "q did not change");
    let buffer = prints(&two("\"auto\"", "8"));
    assert_eq!(base[0], buffer[0], "p did not change");
    assert_ne!(base[1], buffer[1], "q's buffer changed");
    let setting = prints(&two("\"auto\"", "4").replace("sink = \"q\"", "sink = \"q2\""));
    assert_ne!(base[1], setting[1], "q's sink setting changed");
}
