//! Profiles and nodes: which processes a stack runs and where each listens.
//!
//! The single-node profile runs one process of each server on 127.0.0.1, on the servers'
//! usual ports. The cluster profile runs 3 Kafka brokers (KRaft, each a broker and a
//! controller), 3 Cassandra nodes and 2 OpenSearch nodes, replicating between them. Its
//! first node of each kind takes the single-node addresses, so a client configured for
//! one node still finds the cluster:
//!
//! ```text
//! kafka-N       127.0.0.1:9092 / :9192 / :9292   (controllers :9093 / :9193 / :9293)
//! cassandra-N   127.0.0.1 / 127.0.0.2 / 127.0.0.3, CQL :9042, gossip :7000 on each
//! opensearch-N  127.0.0.1:9200 / :9201           (transport :9300 / :9301)
//! prometheus    127.0.0.1:9090
//! ```
//!
//! Cassandra nodes of one cluster share their ports, so each has its own loopback address
//! (Linux routes all of 127.0.0.0/8 to the loopback interface); nothing listens beyond it.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Result, bail};

use crate::servers::ServerKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Single,
    Cluster,
}

impl Profile {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "single" => Some(Self::Single),
            "cluster" => Some(Self::Cluster),
            _ => None,
        }
    }

    /// How many nodes of a kind the profile runs.
    pub fn count(self, kind: ServerKind) -> u8 {
        match (self, kind) {
            (Self::Single, _) | (_, ServerKind::Prometheus) => 1,
            (Self::Cluster, ServerKind::Kafka | ServerKind::Cassandra) => 3,
            (Self::Cluster, ServerKind::Opensearch) => 2,
        }
    }

    pub fn nodes(self, kind: ServerKind) -> impl Iterator<Item = Node> {
        (1..=self.count(kind)).map(move |index| Node {
            kind,
            index,
            profile: self,
        })
    }

    /// Every node of these kinds, in start order.
    pub fn all_nodes(self, kinds: &[ServerKind]) -> Vec<Node> {
        kinds.iter().flat_map(|&kind| self.nodes(kind)).collect()
    }

    /// The replication environment of `schemas/environments/` the profile applies.
    pub fn schema_environment(self) -> &'static str {
        match self {
            Self::Single => "local",
            Self::Cluster => "cluster",
        }
    }

    /// The addresses a client lists to reach every node of a kind (`host:port`).
    pub fn client_addresses(self, kind: ServerKind) -> Vec<String> {
        self.nodes(kind).map(Node::client_address).collect()
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        })
    }
}

/// One server process of a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: ServerKind,
    /// From 1.
    pub index: u8,
    pub profile: Profile,
}

impl Node {
    /// `kafka` in the single-node profile, `kafka-2` in the cluster one.
    pub fn name(self) -> String {
        if self.profile.count(self.kind) == 1 {
            self.kind.to_string()
        } else {
            format!("{}-{}", self.kind, self.index)
        }
    }

    /// The loopback address the node listens on.
    pub fn host(self) -> Ipv4Addr {
        match self.kind {
            ServerKind::Cassandra => Ipv4Addr::new(127, 0, 0, self.index),
            _ => Ipv4Addr::LOCALHOST,
        }
    }

    /// Every port the node listens on, the clients' first.
    pub fn ports(self) -> Vec<u16> {
        let i = u16::from(self.index - 1);
        match self.kind {
            ServerKind::Kafka => vec![9092 + 100 * i, 9093 + 100 * i],
            ServerKind::Cassandra => vec![9042, 7000],
            ServerKind::Opensearch => vec![9200 + i, 9300 + i],
            ServerKind::Prometheus => vec![9090],
        }
    }

    pub fn sockets(self) -> Vec<SocketAddr> {
        self.ports()
            .into_iter()
            .map(|port| SocketAddr::from((self.host(), port)))
            .collect()
    }

    /// `host:port` of the port clients use.
    pub fn client_address(self) -> String {
        format!("{}:{}", self.host(), self.ports()[0])
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// What a command line names: every node of a kind (`cassandra`) or one (`cassandra-2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub kind: ServerKind,
    pub index: Option<u8>,
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, index) = match text.rsplit_once('-') {
            Some((kind, index)) if index.chars().all(|c| c.is_ascii_digit()) => {
                let index: u8 = index
                    .parse()
                    .ok()
                    .filter(|&i| i >= 1)
                    .ok_or_else(|| format!("{text:?}: a node number starts at 1"))?;
                (kind, Some(index))
            }
            _ => (text, None),
        };
        let kind = <ServerKind as clap::ValueEnum>::from_str(kind, true).map_err(|_| {
            format!(
                "{text:?} is not a server: kafka, cassandra, opensearch or prometheus, \
                 optionally with a node number (cassandra-2)"
            )
        })?;
        Ok(Self { kind, index })
    }
}

/// The nodes of `profile` the selectors name (all, when none is given), in start order.
pub fn select(profile: Profile, selectors: &[Selector]) -> Result<Vec<Node>> {
    if selectors.is_empty() {
        return Ok(profile.all_nodes(ServerKind::ALL));
    }
    let mut nodes = Vec::new();
    for node in profile.all_nodes(ServerKind::ALL) {
        if selectors
            .iter()
            .any(|s| s.kind == node.kind && s.index.is_none_or(|i| i == node.index))
        {
            nodes.push(node);
        }
    }
    for selector in selectors {
        if let Some(index) = selector.index
            && index > profile.count(selector.kind)
        {
            bail!(
                "{}-{index}: the {profile} profile runs {} {} node(s)",
                selector.kind,
                profile.count(selector.kind),
                selector.kind
            );
        }
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_profile_keeps_the_usual_names_and_ports() {
        let nodes = Profile::Single.all_nodes(ServerKind::ALL);
        let names: Vec<_> = nodes.iter().map(|n| n.name()).collect();
        assert_eq!(names, ["kafka", "cassandra", "opensearch", "prometheus"]);
        let addresses: Vec<_> = nodes.iter().map(|n| n.sockets()).collect();
        assert_eq!(
            addresses,
            [
                vec![
                    "127.0.0.1:9092".parse().unwrap(),
                    "127.0.0.1:9093".parse().unwrap()
                ],
                vec![
                    "127.0.0.1:9042".parse().unwrap(),
                    "127.0.0.1:7000".parse().unwrap()
                ],
                vec![
                    "127.0.0.1:9200".parse().unwrap(),
                    "127.0.0.1:9300".parse().unwrap()
                ],
                vec!["127.0.0.1:9090".parse::<SocketAddr>().unwrap()],
            ]
        );
    }

    #[test]
    fn cluster_nodes_never_share_an_address() {
        let nodes = Profile::Cluster.all_nodes(ServerKind::ALL);
        assert_eq!(nodes.len(), 9);
        let mut sockets: Vec<SocketAddr> = nodes.iter().flat_map(|n| n.sockets()).collect();
        let count = sockets.len();
        sockets.sort();
        sockets.dedup();
        assert_eq!(sockets.len(), count, "two nodes listen on one address");
        assert_eq!(
            Profile::Cluster.client_addresses(ServerKind::Cassandra),
            ["127.0.0.1:9042", "127.0.0.2:9042", "127.0.0.3:9042"]
        );
        assert_eq!(
            Profile::Cluster.client_addresses(ServerKind::Kafka),
            ["127.0.0.1:9092", "127.0.0.1:9192", "127.0.0.1:9292"]
        );
    }

    #[test]
    fn selectors_name_a_kind_or_one_node() {
        let pick = |text: &str| {
            let selectors: Vec<Selector> = text.split(' ').map(|s| s.parse().unwrap()).collect();
            select(Profile::Cluster, &selectors)
                .unwrap()
                .iter()
                .map(|n| n.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(pick("opensearch"), ["opensearch-1", "opensearch-2"]);
        assert_eq!(pick("cassandra-2 kafka-3"), ["kafka-3", "cassandra-2"]);
        let error = select(Profile::Cluster, &["opensearch-3".parse().unwrap()]).unwrap_err();
        assert!(
            error.to_string().contains("runs 2 opensearch node(s)"),
            "{error}"
        );
        assert!("cassandra-0".parse::<Selector>().is_err());
        assert!(
            "redis"
                .parse::<Selector>()
                .unwrap_err()
                .contains("not a server")
        );
        assert_eq!(
            select(Profile::Single, &["kafka".parse().unwrap()]).unwrap()[0].name(),
            "kafka"
        );
    }
}
