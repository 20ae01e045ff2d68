//! `localstack wipe`: a node's folder (its data and generated configuration) removed, so
//! that `up` starts it empty, as on a fresh machine. The way to give the disk back what a
//! day of benchmark runs left in topics, tables and indices.

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use crate::layout::Layout;
use crate::node::Node;
use crate::process;

/// Removes each node's folder and says what it freed. Refuses, removing nothing, while any
/// of the nodes runs: a server whose files vanish under it fails at its next write.
pub fn wipe(layout: &Layout, nodes: &[Node]) -> Result<Vec<(Node, Option<u64>)>> {
    let running: Vec<String> = nodes
        .iter()
        .filter(|&&node| process::running_pid(layout, node).is_some())
        .map(|node| node.name())
        .collect();
    if !running.is_empty() {
        bail!(
            "{} still running, so its files are in use; nothing was removed. Stop it first: \
             localstack down {}",
            running.join(", "),
            running.join(" ")
        );
    }
    nodes
        .iter()
        .map(|&node| Ok((node, remove(layout, node)?)))
        .collect()
}

/// The bytes on disk a node's folder held, `None` when it had none.
fn remove(layout: &Layout, node: Node) -> Result<Option<u64>> {
    let dir = layout.server_dir(node);
    if std::fs::symlink_metadata(&dir).is_err() {
        return Ok(None);
    }
    // Blocks, not lengths: Kafka's index files are sparse (10 MiB long, mostly unwritten).
    let bytes = walkdir::WalkDir::new(&dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.blocks() * 512)
        .sum();
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Profile;
    use crate::servers::ServerKind;

    fn layout(stack: &std::path::Path) -> Layout {
        Layout {
            root: stack.to_owned(),
            stack: stack.to_owned(),
        }
    }

    fn node(kind: ServerKind) -> Node {
        Profile::Single.all_nodes(&[kind])[0]
    }

    #[test]
    fn a_stopped_nodes_folder_is_removed_and_its_size_said() {
        let stack = tempfile::tempdir().unwrap();
        let layout = layout(stack.path());
        let kafka = node(ServerKind::Kafka);
        let data = layout.server_dir(kafka).join("data/orders-0");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("00000000000000000000.log"), vec![7u8; 64 * 1024]).unwrap();
        let cassandra = node(ServerKind::Cassandra);

        let done = wipe(&layout, &[kafka, cassandra]).unwrap();

        assert!(!layout.server_dir(kafka).exists());
        assert_eq!(done[0].0, kafka);
        assert!(done[0].1.is_some_and(|b| b >= 64 * 1024), "{done:?}");
        // A node that never ran has nothing to remove.
        assert_eq!(done[1], (cassandra, None));
    }

    #[test]
    fn a_running_node_is_named_and_nothing_is_removed() {
        let stack = tempfile::tempdir().unwrap();
        let layout = layout(stack.path());
        let (kafka, opensearch) = (node(ServerKind::Kafka), node(ServerKind::Opensearch));
        for n in [kafka, opensearch] {
            std::fs::create_dir_all(layout.server_dir(n)).unwrap();
        }
        // A process whose command line names the node's folder, as a server's does.
        let mut server = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 60",
                &layout.server_dir(opensearch).to_string_lossy(),
            ])
            .spawn()
            .unwrap();
        std::fs::create_dir_all(layout.run()).unwrap();
        process::write_pid(&layout, opensearch, server.id()).unwrap();

        let refused = wipe(&layout, &[kafka, opensearch]);
        server.kill().unwrap();
        server.wait().unwrap();

        let message = format!("{:#}", refused.unwrap_err());
        assert!(message.starts_with("opensearch still running"), "{message}");
        assert!(message.contains("localstack down opensearch"), "{message}");
        assert!(layout.server_dir(kafka).exists() && layout.server_dir(opensearch).exists());
    }
}
