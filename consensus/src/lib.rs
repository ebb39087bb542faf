//! Replication layer of raftblock. A volume's chunks are grouped into shards
//! (`layout`) and every shard is a Raft group (raft-rs `RawNode`). One
//! driver thread per node runs all of the node's groups with one WAL write
//! per round (`driver`); shard logs carry block commands (`command`) that
//! apply tasks write to the local chunk store (`apply`); Raft's storage is
//! the node's shared WAL (`peer_storage`); nodes talk over one transport
//! (`transport`) carrying Raft messages and forwarded requests (`rpc`). The
//! meta group (`meta`) holds members, volumes and placement. `cluster`
//! routes requests to shard leaders and `router` presents a replicated
//! volume as a `VolumeIo` for the NBD server.

pub mod apply;
pub mod attachment;
pub mod cluster;
pub mod command;
pub mod cut;
pub mod driver;
pub mod error;
pub mod events;
pub mod fence;
pub mod healing;
mod last_heard;
pub mod layout;
pub mod meta;
mod meta_client;
pub use meta_client::VolumeSpec;
pub mod node_watch;
pub mod peer_storage;
pub mod progress;
pub mod read_lease;
pub mod recovery;
pub mod repair;
mod resize;
pub mod router;
pub mod rpc;
pub mod snapshot;
pub mod transport;
pub mod verify;

pub use attachment::AttachError;
pub use cluster::{BackgroundRates, Cluster, ShardOp};
pub use driver::{
    Clock, ClusterView, Driver, DriverConfig, DriverError, DriverHandle, DriverMsg, GroupStatus,
    LogWriterMode, ManualClock, MembershipReport, RaftNetwork, ReplicaError, SystemClock,
};
pub use layout::{ShardId, ShardLayout};
pub use meta::{
    MetaCommand, MetaError, MetaState, NodeInfo, NodeState, PlacementRules, VolumeRecord,
    META_GROUP,
};
pub use peer_storage::PeerStorage;
pub use repair::ScrubReport;
pub use router::ClusterVolume;
pub use rpc::RouteError;
pub use transport::{Transport, TransportEvent};
