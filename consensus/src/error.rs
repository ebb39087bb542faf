//! The errors a replica and a routed request end with, below every other
//! module of the crate: the driver produces `ReplicaError`, the RPC layer
//! carries it and `RouteError` between nodes, and the router turns both into
//! an errno. Kept in a leaf module so those layers share the words without
//! importing each other.

use raftblock_storage::StorageError;

use crate::meta::MetaError;

/// Why a replica could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// This node is not the group's leader; `leader` is, if known.
    #[error("this node is not the leader of group {group} (leader: {leader:?})")]
    NotLeader {
        /// The group.
        group: u64,
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// This node holds no replica of the group.
    #[error("no replica of group {0} on this node")]
    NoReplica(u64),
    /// The group could not take the request now (no leader yet, a leader
    /// change, a full queue): the caller retries.
    #[error("group {0} could not take the request now; retry")]
    Retry(u64),
    /// The metadata command was refused.
    #[error("{0}")]
    Meta(MetaError),
    /// Applying the command failed on this replica.
    #[error("applying failed: {0}")]
    Apply(String),
    /// The write came from an attachment that was fenced off: the volume
    /// was attached again with a newer epoch.
    #[error("volume {volume} shard {shard}: write with attach epoch {epoch} refused; the volume was attached again (epoch {current})")]
    Fenced {
        /// Volume name.
        volume: String,
        /// Shard index.
        shard: u32,
        /// The write's epoch.
        epoch: u64,
        /// The shard's fence.
        current: u64,
    },
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

impl ReplicaError {
    /// The errno an NBD client sees when its request ends with this error
    /// (the one place replica errors become errnos).
    pub fn errno(&self) -> i32 {
        use raftblock_storage::error::errno;
        match self {
            ReplicaError::Fenced { .. } => errno::EPERM,
            ReplicaError::Stopped => errno::ESHUTDOWN,
            _ => errno::EIO,
        }
    }
}

/// Why a routed request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The replica refused (leadership, retry, metadata).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The I/O failed on the serving node.
    #[error("{message}")]
    Io {
        /// Errno for the client.
        errno: i32,
        /// What failed.
        message: String,
    },
}

/// A storage failure on the serving node, as a routed request ends with it.
pub(crate) fn io_error(e: StorageError) -> RouteError {
    RouteError::Io {
        errno: e.errno(),
        message: e.to_string(),
    }
}
