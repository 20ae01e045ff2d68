//! End to end on the local stack's cluster profile, beside the single-node figure of the
//! same run: the single-node stack is stopped, the cluster profile started (3 Kafka
//! brokers, 3 Cassandra nodes, 2 OpenSearch nodes, replicating as
//! `schemas/environments/cluster.toml` says), warmed up and measured with the same
//! end-to-end phase, then the single-node stack is started again.
//!
//! On one machine the cluster can only be slower: every record is written by 3 brokers,
//! every event by 3 Cassandra replicas (and each conditional append is a Paxos round among
//! them), every document by 2 OpenSearch nodes, all on the same cores. The row's CPU
//! accounting shows it per order.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use salesflow_bench::common::{Build, Replication};

use crate::Row;
use crate::e2e;

/// The `--set` overrides that point salesflow at every node of the cluster profile
/// (as `compose/local/cluster.env` does from the environment).
fn sets() -> Result<Vec<String>> {
    let file = salesflow_bench::common::repo().join("compose/local/cluster.env");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let sets: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("SALESFLOW__"))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let key: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            // Shell quoting of the file (`'["a","b"]'`) is not part of the value.
            let value = value.trim().trim_matches('\'');
            format!("{}={value}", key.join("."))
        })
        .collect();
    if sets.is_empty() {
        bail!("{} names no SALESFLOW__ setting", file.display());
    }
    Ok(sets)
}

/// The `localstack` binary `scripts/stack` builds.
fn localstack() -> PathBuf {
    if let Ok(path) = std::env::var("LOCALSTACK") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || salesflow_bench::common::repo().join("target"),
        PathBuf::from,
    );
    target.join("debug/localstack")
}

async fn stack(args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(localstack())
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} {}", localstack().display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "localstack {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub async fn run(
    clients: usize,
    duration: Duration,
    warmup: u64,
    rows: &[Row],
) -> Result<(Row, Vec<(String, String)>)> {
    let sets = sets()?;
    stack(&["down"]).await?;
    let measured = async {
        stack(&["up", "--cluster"]).await?;
        if warmup > 0 {
            println!("  warm-up on the cluster: {warmup} s, not measured");
            e2e::run(
                &Build::this(),
                clients,
                Duration::from_secs(warmup),
                &[],
                &sets,
                Replication::CLUSTER,
                e2e::ReadModels::at_launch(),
                e2e::Round::WarmUp,
            )
            .await?;
        }
        let quiet = crate::settle().await;
        e2e::run(
            &Build::this(),
            clients,
            duration,
            &[],
            &sets,
            Replication::CLUSTER,
            e2e::ReadModels::at_launch(),
            e2e::Round::Measured,
        )
        .await
        .map(|run| (quiet, run))
    }
    .await;
    // The single-node stack again, whatever happened on the cluster.
    let back = async {
        stack(&["down"]).await?;
        stack(&["up"]).await
    }
    .await;
    let (quiet, (cluster, figures)) = measured.context("end to end on the cluster profile")?;
    back.context("starting the single-node stack again")?;

    let single = rows.iter().find(|r| r.area == "End to end");
    let mut row = Row::new(
        "End to end, cluster profile",
        "orders/s",
        cluster.salesflow_value,
        single.map_or(0.0, |r| r.salesflow_value),
        None,
        "POST /orders/batch to queryable on 3 brokers, 3 Cassandra nodes, 2 OpenSearch nodes",
        "the single-node stack's end to end, same run",
    );
    row.note = "replication: Kafka 3 replicas (min ISR 2, acks=all), Cassandra 3 replicas \
                (LOCAL_QUORUM writes, LOCAL_SERIAL appends), OpenSearch 1 replica; all on \
                the same cores, so every order costs the servers about 2-3 times the work of \
                one node (the CPU accounting's cluster rows)"
        .into();
    row.phases = cluster
        .phases
        .into_iter()
        .map(|mut p| {
            p.name = format!("cluster: {}", p.name);
            p
        })
        .collect();
    let mut figures: Vec<(String, String)> = figures
        .into_iter()
        .filter(|(k, _)| k.starts_with("sustained") || k.starts_with("single orders"))
        .map(|(k, v)| (format!("cluster profile: {k}"), v))
        .collect();
    figures.push((
        "cluster profile: servers quiet before its measured run (waited, then their CPU)".into(),
        quiet.to_string(),
    ));
    Ok((row, figures))
}
