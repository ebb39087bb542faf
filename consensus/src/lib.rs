//! Replication layer of raftblock. A volume's chunks are grouped into shards
//! and every shard becomes a Raft group (raft-rs `RawNode`), driven by one
//! multi-raft loop per node. Built so far: where chunks live (`layout`), what
//! a shard log carries (`command`), Raft's storage over the node's shared WAL
//! (`peer_storage`) and the node-to-node transport (`transport`). The driver,
//! the meta group and the router build on these.

pub mod command;
pub mod layout;
pub mod peer_storage;
pub mod transport;

pub use layout::{ShardId, ShardLayout};
pub use peer_storage::PeerStorage;
