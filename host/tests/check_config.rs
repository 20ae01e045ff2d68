//! `salesflow check` rejects each kind of bad configuration before anything connects,
//! naming the file, the line and the key path (or the override that set it), and never
//! prints a secret. `salesflow graph` draws the default pipeline.toml. `salesflow check
//! --connect` reaches the real servers and names what does not answer.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use salesflow_testkit as support;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow");

fn salesflow(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let config = config.display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend(args);
    let ran = support::run(std::path::Path::new(BIN), &all, env);
    (ran.ok, ran.stdout, ran.stderr)
}

const VALID: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["a"]
group_id = "g"

[pipelines.relay.stages.batch]
type = "batch"
inputs = ["in"]
max_events = 100

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["batch"]
topic = "b"
"#;

/// Replaces `from` in the valid config, checks it, and returns stderr.
fn rejected(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from}");
    let text = VALID.replacen(from, to, 1);
    let (_dir, path) = support::config(&text);
    let (ok, _, stderr) = salesflow(&path, &["check"], &[]);
    assert!(!ok, "accepted:\n{text}");
    assert!(stderr.contains("invalid; nothing was started"), "{stderr}");
    stderr.replace(&path.display().to_string(), "pipeline.toml")
}

#[test]
fn a_valid_config_passes() {
    let (_dir, path) = support::config(VALID);
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("valid, 1 pipeline(s)"), "{stdout}");
    assert!(stdout.contains("sink out (kafka) <- batch"), "{stdout}");
}

#[test]
fn unknown_keys_name_file_line_and_path() {
    let e = rejected("topic = \"b\"", "topic = \"b\"\ntopik = \"c\"");
    assert!(
        e.contains("pipeline.toml:19: pipelines.relay.sinks.out.topik: unknown field `topik`"),
        "{e}"
    );

    let e = rejected("[kafka]", "[kafkaa]");
    assert!(e.contains("pipeline.toml:2: kafkaa: unknown key"), "{e}");
}

#[test]
fn unknown_plugin_types_list_the_known_ones() {
    let e = rejected("type = \"batch\"", "type = \"batcher\"");
    assert!(e.contains("pipeline.toml:11: pipelines.relay.stages.batch.type: unknown stage type \"batcher\"; known: batch"), "{e}");
}

#[test]
fn missing_inputs_and_dangling_outputs_are_named() {
    let e = rejected("inputs = [\"batch\"]", "inputs = [\"bacth\"]");
    assert!(
        e.contains("pipelines.relay.sinks.out.inputs: no source or stage named \"bacth\""),
        "{e}"
    );
    assert!(
        e.contains("pipelines.relay.stages.batch: its output goes nowhere"),
        "{e}"
    );

    let e = rejected("inputs = [\"batch\"]\n", "\n");
    assert!(
        e.contains("pipelines.relay.sinks.out.inputs: a sink needs `inputs = [...]`"),
        "{e}"
    );
}

#[test]
fn cycles_are_refused() {
    let text = VALID.replacen("inputs = [\"in\"]", "inputs = [\"in\", \"again\"]", 1)
        + "\n[pipelines.relay.stages.again]\ntype = \"batch\"\ninputs = [\"batch\"]\n";
    let (_dir, path) = support::config(&text);
    let (ok, _, stderr) = salesflow(&path, &["check"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("form a cycle through their inputs"),
        "{stderr}"
    );
}

#[test]
fn a_plugins_own_invalid_settings_are_named() {
    let e = rejected("max_events = 100", "max_events = 0");
    assert!(
        e.contains("pipeline.toml:13: pipelines.relay.stages.batch.max_events: must be at least 1"),
        "{e}"
    );

    let e = rejected("topic = \"b\"", "topic = \"has space\"");
    assert!(
        e.contains("pipelines.relay.sinks.out.topic: is not a valid topic name"),
        "{e}"
    );

    // A bad shared default is reported where it is written.
    let e = rejected(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        "bootstrap_servers = 9092",
    );
    assert!(
        e.contains("pipeline.toml:3: kafka.bootstrap_servers"),
        "{e}"
    );
}

#[test]
fn sink_concurrency_is_the_plugins_default_a_number_or_adaptive() {
    // The Kafka sink's own default is a fixed number (its producer batches).
    let (_dir, path) = support::config(VALID);
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("sink out (kafka) <- batch; lanes 1, buffer 4, concurrency 4"),
        "{stdout}"
    );

    for (set, shown) in [
        ("topic = \"b\"\nconcurrency = 8", "concurrency 8"),
        (
            "topic = \"b\"\nconcurrency = \"adaptive\"\nmax_concurrency = 24",
            "concurrency adaptive (1 to 24)",
        ),
        (
            "topic = \"b\"\nconcurrency = \"adaptive\"",
            "concurrency adaptive (1 to 64)",
        ),
        (
            "topic = \"b\"\nmax_concurrency = 12",
            "concurrency adaptive (1 to 12)",
        ),
    ] {
        let (_dir, path) = support::config(&VALID.replacen("topic = \"b\"", set, 1));
        let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains(shown), "{stdout}");
    }

    let e = rejected("topic = \"b\"", "topic = \"b\"\nconcurrency = \"auto\"");
    assert!(
        e.contains("pipelines.relay.sinks.out.concurrency: must be \"adaptive\" or a whole number from 1 to 1024"),
        "{e}"
    );
    let e = rejected(
        "topic = \"b\"",
        "topic = \"b\"\nconcurrency = 4\nmax_concurrency = 8",
    );
    assert!(
        e.contains(
            "pipelines.relay.sinks.out.max_concurrency: only an adaptive concurrency has a maximum"
        ),
        "{e}"
    );
    let e = rejected("max_events = 100", "max_events = 100\nmax_concurrency = 8");
    assert!(
        e.contains("pipelines.relay.stages.batch.max_concurrency: only sinks take concurrency"),
        "{e}"
    );
}

#[test]
fn the_runtimes_worker_threads_are_checked_and_shown() {
    let (_dir, path) = support::config(&format!("[runtime]\nworker_threads = 1\n{VALID}"));
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("async runtime: 1 worker thread(s)"),
        "{stdout}"
    );

    let (_dir, path) = support::config(VALID);
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[("TOKIO_WORKER_THREADS", "3")]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("async runtime: 3 worker thread(s), from TOKIO_WORKER_THREADS"),
        "{stdout}"
    );
    let (ok, stdout, _) = salesflow(&path, &["check"], &[]);
    assert!(ok);
    assert!(
        stdout.contains("async runtime: one worker thread per core"),
        "{stdout}"
    );

    // tokio would panic on these; salesflow names them and starts nothing.
    for bad in ["0", "two", ""] {
        let (ok, _, stderr) = salesflow(&path, &["check"], &[("TOKIO_WORKER_THREADS", bad)]);
        assert!(!ok, "TOKIO_WORKER_THREADS={bad:?} accepted");
        assert!(
            stderr.contains(&format!(
                "runtime.worker_threads: unset, so the environment decides, and TOKIO_WORKER_THREADS={bad:?} is not a whole number of at least 1"
            )),
            "{stderr}"
        );
        let (ok, _, stderr) = salesflow(&path, &["run"], &[("TOKIO_WORKER_THREADS", bad)]);
        assert!(
            !ok && stderr.contains("invalid; nothing was started"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // The setting wins over the variable.
    let (ok, stdout, stderr) = salesflow(
        &path,
        &["check", "--set", "runtime.worker_threads=2"],
        &[("TOKIO_WORKER_THREADS", "two")],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("async runtime: 2 worker thread(s)\n"),
        "{stdout}"
    );

    let (ok, _, stderr) = salesflow(&path, &["check", "--set", "runtime.worker_threads=0"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "--set runtime.worker_threads=0: runtime.worker_threads: invalid value: integer `0`"
        ),
        "{stderr}"
    );
    let (_dir, path) = support::config(&format!("[runtime]\nworkers = 2\n{VALID}"));
    let (ok, _, stderr) = salesflow(&path, &["check"], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("runtime.workers: unknown field `workers`"),
        "{stderr}"
    );
}

/// Limits that become a semaphore's permits are bounded when the file is read: a number
/// past what tokio's semaphore holds panicked a running process's listener (or its
/// start) instead of naming the key.
#[test]
fn connection_and_request_limits_out_of_range_are_refused() {
    let http = "\n[pipelines.api.sources.in]\ntype = \"http\"\npath = \"/in\"\n\n\
                [pipelines.api.sinks.out]\ntype = \"kafka\"\ninputs = [\"in\"]\ntopic = \"b\"\n";
    let (_dir, path) = support::config(&format!("{VALID}{http}"));
    for (key, value) in [
        ("server.max_connections", "2305843009213693952"),
        ("server.max_connections", "0"),
        (
            "pipelines.api.sources.in.max_concurrent_requests",
            "2305843009213693952",
        ),
        (
            "pipelines.api.sources.in.max_concurrent_requests",
            "1000001",
        ),
    ] {
        let set = format!("{key}={value}");
        let (ok, _, stderr) = salesflow(&path, &["check", "--set", &set], &[]);
        assert!(!ok, "{set} accepted");
        assert!(
            stderr.contains(&format!("{key}: must be between 1 and 1000000")),
            "{set}: {stderr}"
        );
    }
    let (ok, _, stderr) = salesflow(
        &path,
        &[
            "check",
            "--set",
            "server.max_connections=1000000",
            "--set",
            "pipelines.api.sources.in.max_concurrent_requests=1000000",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
}

/// A duration is added to a clock reading (a request's deadline, the next commit), and a
/// sum past what the clock holds panicked: `request_timeout = "500000000000y"` was
/// accepted, and every request's task then panicked. A setting's duration is at most a
/// year, in the host's settings and the plugins' alike.
#[test]
fn durations_longer_than_a_year_are_refused() {
    let (_dir, path) = support::config(VALID);
    for set in [
        "server.request_timeout=\"500000000000y\"",
        "server.shutdown_grace=\"366d\"",
        "pipelines.relay.sources.in.drain_timeout=\"2y\"",
        "pipelines.relay.stages.batch.max_wait=\"500000000000y\"",
    ] {
        let (ok, _, stderr) = salesflow(&path, &["check", "--set", set], &[]);
        assert!(!ok, "{set} accepted");
        let key = set.split('=').next().unwrap_or_default();
        assert!(
            stderr.contains(&format!("{key}: ")) && stderr.contains("longer than the longest"),
            "{set}: {stderr}"
        );
    }
    let (ok, _, stderr) = salesflow(
        &path,
        &["check", "--set", "server.shutdown_grace=\"365d\""],
        &[],
    );
    assert!(ok, "{stderr}");
}

#[test]
fn overrides_are_named_when_they_are_wrong() {
    let (_dir, path) = support::config(VALID);
    let (ok, _, stderr) = salesflow(
        &path,
        &[
            "check",
            "--set",
            "pipelines.relay.stages.batch.max_events=-5",
        ],
        &[],
    );
    assert!(!ok);
    assert!(stderr.contains("--set pipelines.relay.stages.batch.max_events=-5: pipelines.relay.stages.batch.max_events"), "{stderr}");

    let (ok, _, stderr) = salesflow(
        &path,
        &["check"],
        &[("SALESFLOW__SERVER__ADDRESS", "nowhere")],
    );
    assert!(!ok);
    assert!(
        stderr.contains("environment variable SALESFLOW__SERVER__ADDRESS: server.address"),
        "{stderr}"
    );

    // And a good override is taken.
    let (ok, stdout, _) = salesflow(
        &path,
        &["check"],
        &[("SALESFLOW__SERVER__ADDRESS", "127.0.0.1:9999")],
    );
    assert!(ok);
    assert!(stdout.contains("HTTP on 127.0.0.1:9999"), "{stdout}");
}

#[test]
fn secrets_never_show() {
    let text = VALID.replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        "bootstrap_servers = \"127.0.0.1:9092\"\nproperties = { \"sasl.password\" = \"hunter2-secret\", \"security.protocol\" = \"SASL_PLAINTEXT\" }",
    );
    let (_dir, path) = support::config(&text);
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
    // An error elsewhere in the same config does not print it either.
    let broken = text.replace("max_events = 100", "max_events = 0");
    let (_dir, path) = support::config(&broken);
    let (ok, stdout, stderr) = salesflow(&path, &["check"], &[]);
    assert!(!ok);
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

/// A secret given with `--set` is never echoed, even when the configuration around it is
/// wrong; an all-digit secret (from the environment or `--set`) is its text, not a number.
#[test]
fn secrets_from_set_and_the_environment_stay_secret_and_stay_text() {
    let default = support::repo().join("pipeline.toml");
    // username without password is an error at [cassandra]: the message names the
    // override, never its value.
    let (ok, stdout, stderr) = salesflow(
        &default,
        &["--set", "cassandra.password=93812hunter", "check"],
        &[],
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("username and password go together"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("93812hunter") && !stderr.contains("93812hunter"),
        "{stderr}"
    );
    // Digits only, with a leading zero: accepted as the text it is.
    for (args, env) in [
        (
            vec![
                "--set",
                "cassandra.username=app",
                "--set",
                "cassandra.password=007123",
                "check",
            ],
            vec![],
        ),
        (
            vec!["--set", "cassandra.username=app", "check"],
            vec![("SALESFLOW__CASSANDRA__PASSWORD", "007123")],
        ),
    ] {
        let (ok, stdout, stderr) = salesflow(&default, &args, &env);
        assert!(ok, "{args:?} {env:?}: {stderr}");
        assert!(!stdout.contains("007123") && !stderr.contains("007123"));
    }
}

#[test]
fn graph_draws_the_default_pipeline_toml() {
    let default = support::repo().join("pipeline.toml");
    let (ok, stdout, stderr) = salesflow(&default, &["graph"], &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("flowchart LR"));
    let (ok, _, stderr) = salesflow(&default, &["check"], &[]);
    assert!(ok, "{stderr}");
    // Every component of every pipeline is drawn, and every input is an edge.
    let table: toml::Table = std::fs::read_to_string(&default).unwrap().parse().unwrap();
    let mut edges = 0;
    for (pipeline, def) in table["pipelines"].as_table().unwrap() {
        assert!(stdout.contains(&format!("[\"{pipeline}\"]")), "{pipeline}");
        for kind in ["sources", "stages", "sinks"] {
            for (name, spec) in def
                .get(kind)
                .and_then(|k| k.as_table())
                .into_iter()
                .flatten()
            {
                assert!(
                    stdout.contains(&format!("\"{name}<br/>")),
                    "{name}:\n{stdout}"
                );
                edges += spec
                    .get("inputs")
                    .and_then(|i| i.as_array())
                    .map_or(0, Vec::len);
            }
        }
    }
    assert_eq!(stdout.matches(" -->").count(), edges);
    let (ok, dot, _) = salesflow(&default, &["graph", "--format", "dot"], &[]);
    assert!(ok && dot.starts_with("digraph salesflow"));
}

/// `check --connect` builds every component against the real servers and runs each health
/// check once: all ok on the local stack, exit 0; a server that does not answer is a
/// FAILED line naming the component and why, and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_runs_every_health_check_and_names_what_failed() {
    let (input, output) = (
        support::unique("connect-in"),
        support::unique("connect-out"),
    );
    support::create_topic(&input, 1).await;
    support::create_topic(&output, 1).await;
    let relay = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"

[pipelines.relay.sources.in]
type = "kafka"
topics = ["{input}"]
group_id = "{input}"

[pipelines.relay.sinks.out]
type = "kafka"
inputs = ["in"]
topic = "{output}"
"#,
        bootstrap = support::bootstrap()
    );
    let (_dir, config) = support::config(&relay);
    let (ok, stdout, stderr) = salesflow(&config, &["check", "--connect"], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("ok      relay/in: kafka topics {input}")),
        "{stdout}"
    );
    assert!(stdout.contains("2 check(s): 2 ok, 0 failed"), "{stdout}");

    // An Elasticsearch node nobody listens on: the check fails, by name, and says why.
    let broken = format!(
        "{relay}\n[pipelines.relay.sinks.search]\ntype = \"elasticsearch\"\ninputs = [\"in\"]\n\
         url = \"http://127.0.0.1:1\"\naliases = [\"nowhere\"]\n"
    );
    let (_dir, config) = support::config(&broken);
    let (ok, stdout, stderr) = salesflow(&config, &["check", "--connect"], &[]);
    assert!(!ok, "{stdout}{stderr}");
    assert!(stdout.contains("FAILED  relay/search"), "{stdout}");
    assert!(stdout.contains("1 failed"), "{stdout}");
    support::delete_topics(&[&input, &output]).await;
}
