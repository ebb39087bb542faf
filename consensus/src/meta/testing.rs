//! Metadata states for unit tests: nodes on loopback addresses, and a
//! volume `v` with a given placement.

use super::{MetaCommand, MetaState, NodeInfo};

/// A member node `id` with no labels.
pub(crate) fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        raft_addr: format!("127.0.0.1:{}", 7000 + id).parse().expect("addr"),
        nbd_addr: None,
        admin_addr: None,
        labels: Default::default(),
    }
}

/// Nodes `1..=nodes`, and a volume `v` (1 GiB, three replicas per shard)
/// placed on `shards` (none when empty).
pub(crate) fn state(nodes: u64, shards: Vec<Vec<u64>>) -> MetaState {
    let mut m = MetaState::default();
    for id in 1..=nodes {
        m.apply(id, MetaCommand::PutNode(node(id))).expect("node");
    }
    if !shards.is_empty() {
        m.apply(
            100,
            MetaCommand::CreateVolume {
                name: "v".into(),
                size: 1 << 30,
                chunk_size: 64 << 20,
                replicas: 3,
                shards,
                created_unix: 0,
                labels: Default::default(),
                rules: Default::default(),
            },
        )
        .expect("create");
    }
    m
}
