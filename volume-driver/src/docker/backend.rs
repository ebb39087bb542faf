//! What the Docker plugin needs from the store underneath: create, remove,
//! look up and list volumes, and take a volume for this node's exclusive
//! use. The binary implements it over the cluster; keeping it a trait keeps
//! this crate independent of the consensus layer.

use std::future::Future;
use std::sync::Arc;

use raftblock_storage::{StorageError, VolumeIo};

use super::api::CreateOptions;

/// A volume as the plugin shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Replicas per shard.
    pub replicas: u32,
    /// Filesystem to make on first mount (`None`: created outside Docker;
    /// ext4).
    pub fs: Option<String>,
    /// The node holding the volume's attachment, if any.
    pub attached_to: Option<u64>,
    /// The volume's attach epoch (that of its attachment, if any).
    pub attach_epoch: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
}

/// A failure of the layer underneath the store (the cluster), boxed: this
/// crate does not know its types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the store refused or failed a call. Each variant names the volume;
/// the text is what dockerd shows the user.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The name or the sizes do not make a valid volume; nothing was
    /// changed.
    #[error(transparent)]
    Invalid(#[from] StorageError),
    /// There is no volume of that name.
    #[error("no such volume: {volume}")]
    NotFound {
        /// The volume.
        volume: String,
    },
    /// A volume of that name exists, smaller than asked (the same size, or
    /// larger after a resize, is success).
    #[error("volume {volume} already exists with size {size} (asked for {asked})")]
    SizeDiffers {
        /// The volume.
        volume: String,
        /// Its size in bytes.
        size: u64,
        /// The size asked for.
        asked: u64,
    },
    /// A volume of that name exists with another number of replicas.
    #[error("volume {volume} already exists with {replicas} replica(s) (asked for {asked})")]
    ReplicasDiffer {
        /// The volume.
        volume: String,
        /// Its replicas per shard.
        replicas: u32,
        /// The replicas asked for.
        asked: u32,
    },
    /// The volume is attached on a node (this one, or one heard from
    /// within the grace period), so it cannot be removed.
    #[error("volume {volume} is in use: attached on node {node} (epoch {epoch})")]
    InUse {
        /// The volume.
        volume: String,
        /// The node holding it.
        node: u64,
        /// The holder's attach epoch.
        epoch: u64,
    },
    /// Another node holds the volume and was heard from within the grace
    /// period, so this node cannot take it over yet.
    #[error(
        "volume {volume} is attached on node {node} (epoch {epoch}), which was heard from {silent_ms} ms ago; \
         it can be taken over once that node has been silent for {grace_ms} ms"
    )]
    HeldElsewhere {
        /// The volume.
        volume: String,
        /// The node holding it.
        node: u64,
        /// The holder's attach epoch.
        epoch: u64,
        /// How long the holder has been silent.
        silent_ms: u128,
        /// The grace period.
        grace_ms: u128,
    },
    /// The cluster did not carry out an operation on the volume: no
    /// metadata leader, a placement that does not fit the live nodes, a
    /// shard that cannot be reached.
    #[error("{op} volume {volume}: {source}")]
    Cluster {
        /// What was being done (`creating`, `removing`, `attaching`,
        /// `detaching`).
        op: &'static str,
        /// The volume.
        volume: String,
        /// What the cluster answered.
        source: BoxError,
    },
    /// Renewing this node's attachments failed.
    #[error("renewing attachments: {source}")]
    Renew {
        /// What the cluster answered.
        source: BoxError,
    },
}

/// The store behind the plugin.
pub trait VolumeBackend: Send + Sync + 'static {
    /// An opened volume.
    type Volume: VolumeIo;

    /// This node's id, as attachments name it.
    fn local_node(&self) -> u64;

    /// Creates `name`. A volume that exists with the same size is success
    /// (Swarm calls Create on every node a task lands on).
    fn create(
        &self,
        name: &str,
        opts: &CreateOptions,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Deletes `name`; refused while it is attached anywhere.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// `name` from this node's view, without waiting for the cluster:
    /// dockerd forgets a volume whose Get fails, so Get must answer while
    /// the cluster is briefly unreachable.
    fn lookup(&self, name: &str) -> Option<VolumeInfo>;

    /// Every volume, from this node's view.
    fn list(&self) -> Vec<VolumeInfo>;

    /// Takes `name` for this node (its attachment, with a new epoch that
    /// fences every earlier holder) and opens it for I/O writing under
    /// that epoch.
    fn acquire(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(Arc<Self::Volume>, u64), BackendError>> + Send;

    /// Renews this node's attachments (`(volume, epoch)` pairs) so other
    /// nodes see the holder is alive.
    fn renew(
        &self,
        held: Vec<(String, u64)>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// How often attachments must be renewed.
    fn renew_every(&self) -> std::time::Duration;

    /// Gives up the attachment of `name` at `epoch` (after its last local
    /// user unmounted, or when a restart finds it stale).
    fn release(
        &self,
        name: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}
