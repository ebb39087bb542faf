//! Replication layer of raftblock. A volume's chunks are grouped into shards
//! and every shard becomes a Raft group (raft-rs `RawNode`), driven by one
//! multi-raft loop per node. This crate starts with the placement of chunks
//! on shards (`layout`), which the router and the meta group share; the Raft
//! driver, the shared WAL's `Storage` implementation and the transport build
//! on it.

pub mod layout;
pub mod peer_storage;
pub mod transport;

pub use layout::{ShardId, ShardLayout};
pub use peer_storage::PeerStorage;
