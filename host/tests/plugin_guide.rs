//! docs/plugins.md, step by step, as a user follows it: `salesflow plugin new` outside the
//! repository, `cargo test` and `cargo build --release` in the new project, the library
//! copied into a plugins folder, the guide's own `pipeline.toml` (topics and paths made
//! unique), and events through the new stage and sink on the real Kafka — with the
//! `salesflow` binary as built, not rebuilt for the plugin. Then step 6: the same library
//! added to the running sales system by one save of its pipeline.toml (`run --watch`),
//! only the projections restarting, and the carts' activity arriving in the file.

#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use salesflow_testkit as support;
use support::sales::{self, Sales};
use support::{Host, Record, create_topic, produce, read_all, unique};

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_salesflow");

/// The guide's `pipeline.toml`: its TOML block that sets `[plugins]`.
fn guide_pipeline(guide: &str) -> String {
    let mut blocks = guide.split("```toml\n").skip(1);
    blocks
        .find(|b| b.starts_with("[plugins]"))
        .and_then(|b| b.split("```").next())
        .expect("docs/plugins.md has a ```toml block starting with [plugins]")
        .to_owned()
}

/// The guide's step 6: its TOML block that adds the stage to the projections.
fn guide_sales_block(guide: &str) -> String {
    let mut blocks = guide.split("```toml\n").skip(1);
    blocks
        .find(|b| b.starts_with("[pipelines.projections.stages.cart-activity]"))
        .and_then(|b| b.split("```").next())
        .expect("docs/plugins.md has the cart-activity block")
        .to_owned()
}

/// One series' value in an exposition, a count (0 when absent).
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // A count.
            let count = v.round() as u64;
            count
        })
}

fn cargo(project: &Path, args: &[&str]) {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| support::repo().join("target"), std::path::PathBuf::from);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(project)
        .args(args)
        // Its own target folder, kept between runs (outside any clone).
        .env("CARGO_TARGET_DIR", target.join("plugin-guide"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo {} in the new project failed",
        args.join(" ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_guide_works_as_written() {
    const COUNT: usize = 200;
    let guide = std::fs::read_to_string(support::repo().join("docs/plugins.md")).unwrap();
    assert!(guide.contains("salesflow plugin new shop-window"));

    // 1. The project, outside the repository.
    let home = tempfile::tempdir().unwrap();
    let made = support::run(
        Path::new(BIN),
        &[
            "plugin",
            "new",
            "shop-window",
            "--dir",
            home.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(made.ok, "{}{}", made.stdout, made.stderr);
    let project = home.path().join("shop-window");

    // 2. Its tests, without any server; 3. the release build, copied into a folder.
    cargo(&project, &["test", "--quiet"]);
    cargo(&project, &["build", "--release", "--quiet"]);
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| support::repo().join("target"), std::path::PathBuf::from)
        .join("plugin-guide/release/libshop_window.so");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&target, plugins.path().join("libshop_window.so")).unwrap();

    // 4. The guide's pipeline.toml, with this run's topics, group and paths.
    let (orders, summaries, dead, group) = (
        unique("shop-orders"),
        unique("shop-summaries"),
        unique("shop-dead"),
        unique("shop-window"),
    );
    let lines = home.path().join("shop-window.jsonl");
    let text = guide_pipeline(&guide)
        .replace("/srv/salesflow/plugins.d", plugins.path().to_str().unwrap())
        .replace("/srv/salesflow/shop-window.jsonl", lines.to_str().unwrap())
        .replace("\"shop-window-summaries\"", &format!("\"{summaries}\""))
        .replace("\"shop-window-dead\"", &format!("\"{dead}\""))
        .replace("\"shop-orders\"", &format!("\"{orders}\""))
        .replace(
            "group_id = \"shop-window\"",
            &format!("group_id = \"{group}\""),
        )
        .replace("127.0.0.1:9092", &support::bootstrap());
    let (_dir, config) = support::config(&text);
    let config_arg = config.to_str().unwrap();
    let checked = support::run(Path::new(BIN), &["--config", config_arg, "check"], &[]);
    assert!(checked.ok, "{}{}", checked.stdout, checked.stderr);
    let listed = support::run(Path::new(BIN), &["--config", config_arg, "plugins"], &[]);
    assert!(
        listed.stdout.contains("shop-window") && listed.stdout.contains("shop-window-file"),
        "{}",
        listed.stdout
    );

    // 5. Run it: every event counted once, in Kafka and in the file.
    for topic in [&orders, &summaries, &dead] {
        create_topic(topic, 2).await;
    }
    produce(&orders, COUNT, 4, |_| String::new()).await;
    let host = Host::start(Path::new(BIN), &config, &["run"]);
    let total = |records: &[Record]| -> usize {
        records
            .iter()
            .map(|r| usize::try_from(r.payload["count"].as_u64().unwrap()).unwrap())
            .sum()
    };
    let out = read_all(&summaries, Duration::from_secs(60), |r| total(r) >= COUNT);
    let (status, log) = host.stop(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(
        log.contains("shop-window"),
        "the log names the plugins:\n{log}"
    );
    assert_eq!(total(&out), COUNT, "{out:?}");
    let in_file: usize = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            usize::try_from(v["count"].as_u64().unwrap()).unwrap()
        })
        .sum();
    assert_eq!(in_file, COUNT);
    support::delete_topics(&[&orders, &summaries, &dead]).await;

    // 6. Into the running sales system, by one save of its pipeline.toml.
    let sales = Sales::new(BIN).await;
    let repo = support::repo();
    let original = std::fs::read_to_string(Sales::config()).unwrap().replace(
        "openapi = \"schemas/openapi.json\"",
        &format!(
            "openapi = \"{}\"",
            repo.join("schemas/openapi.json").display()
        ),
    );
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("pipeline.toml");
    std::fs::write(&config, &original).unwrap();
    let mut args = sales.overrides();
    args.extend(["run".to_owned(), "--watch".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Host::start(Path::new(BIN), &config, &args);
    let base = format!("http://{}", host.address());
    let client = reqwest::Client::new();
    support::ready(&client, &base).await;
    let activity = home.path().join("cart-activity.jsonl");
    let edited = format!(
        "[plugins]\ndir = \"{}\"\n\n{original}\n{}",
        plugins.path().display(),
        guide_sales_block(&guide).replace(
            "/srv/salesflow/cart-activity.jsonl",
            activity.to_str().unwrap()
        )
    );
    let saved = folder.path().join("pipeline.toml.new");
    std::fs::write(&saved, edited).unwrap();
    std::fs::rename(&saved, &config).unwrap();
    let starts = |metrics: &str, pipeline: &str| {
        value(
            metrics,
            &format!("salesflow_pipeline_starts_total{{pipeline=\"{pipeline}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let metrics = loop {
        let metrics = support::get_text(&client, format!("{base}/metrics")).await;
        if starts(&metrics, "projections") >= 2 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the projections never restarted:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pipeline in ["command-api", "domain", "query-api"] {
        assert_eq!(starts(&metrics, pipeline), 1, "{pipeline} restarted");
    }

    // Orders for a few carts: each cart's activity reaches the file.
    let mut rng = sales::fresh_rng("plugin-guide-sales");
    let carts: Vec<_> = (0..4).map(|n| sales::cart(n, &mut rng)).collect();
    let orders: Vec<serde_json::Value> = (0..12)
        .map(|seq| sales::order(seq % 4, &carts[seq % 4], &mut rng, seq).json)
        .collect();
    sales::post_accepted(&client, &base, &orders).await;
    let wanted: std::collections::BTreeSet<String> =
        carts.iter().map(|c| c.id.to_string()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen: std::collections::BTreeMap<String, u64> = std::fs::read_to_string(&activity)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["key"].as_str()?.to_owned(), v["count"].as_u64()?)))
            .fold(
                std::collections::BTreeMap::new(),
                |mut all, (key, count)| {
                    *all.entry(key).or_default() += count;
                    all
                },
            );
        if wanted
            .iter()
            .all(|cart| seen.get(cart).is_some_and(|n| *n >= 3))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cart activity never arrived: {seen:?}\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, log) = host.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    sales.cleanup().await;
}
