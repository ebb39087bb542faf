//! What the Docker plugin needs from the store underneath: create, remove,
//! look up and list volumes, and take a volume for this node's exclusive
//! use. The binary implements it over the cluster; keeping it a trait keeps
//! this crate independent of the consensus layer.

use std::future::Future;
use std::sync::Arc;

use raftblock_storage::VolumeIo;

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
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Deletes `name`; refused while it is attached anywhere.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;

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
    ) -> impl Future<Output = Result<(Arc<Self::Volume>, u64), String>> + Send;

    /// Renews this node's attachments (`(volume, epoch)` pairs) so other
    /// nodes see the holder is alive.
    fn renew(&self, held: Vec<(String, u64)>) -> impl Future<Output = Result<(), String>> + Send;

    /// How often attachments must be renewed.
    fn renew_every(&self) -> std::time::Duration;

    /// Gives up the attachment of `name` at `epoch` (after its last local
    /// user unmounted, or when a restart finds it stale).
    fn release(&self, name: &str, epoch: u64) -> impl Future<Output = Result<(), String>> + Send;
}
