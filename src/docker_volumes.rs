//! The Docker plugin's view of the cluster: volumes are the cluster's
//! volumes (global scope: every node sees every one), created with the
//! plugin's options and opened for I/O through the router like any NBD
//! client would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftblock_consensus::{AttachError, Cluster, ClusterVolume, VolumeRecord};
use raftblock_storage::catalog::{validate_name, validate_sizes};
use raftblock_storage::DEFAULT_CHUNK_SIZE;
use raftblock_volume_driver::docker::api::CreateOptions;
use raftblock_volume_driver::docker::{BackendError, VolumeBackend, VolumeInfo};

/// Label under which a volume records the filesystem Docker asked for.
pub const FS_LABEL: &str = "fs";

/// Cluster volumes as the Docker plugin's store.
pub struct ClusterVolumes {
    cluster: Arc<Cluster>,
    /// How long a node holding a volume must be silent before another
    /// node may take the volume over.
    grace: Duration,
}

impl ClusterVolumes {
    /// The store over `cluster`.
    pub fn new(cluster: Arc<Cluster>, grace: Duration) -> ClusterVolumes {
        ClusterVolumes { cluster, grace }
    }

    fn info(rec: &VolumeRecord) -> VolumeInfo {
        VolumeInfo {
            name: rec.meta.name.clone(),
            size: rec.meta.size,
            replicas: rec.replicas,
            fs: rec.labels.get(FS_LABEL).cloned(),
            attached_to: rec.attachment.as_ref().map(|a| a.node),
            attach_epoch: rec.attach_epoch,
            created_unix: rec.meta.created_unix,
        }
    }
}

impl VolumeBackend for ClusterVolumes {
    type Volume = ClusterVolume;

    fn local_node(&self) -> u64 {
        self.cluster.node()
    }

    async fn create(&self, name: &str, opts: &CreateOptions) -> Result<(), BackendError> {
        validate_name(name)?;
        let chunk_size = opts.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        validate_sizes(opts.size, chunk_size)?;
        let same = |rec: &VolumeRecord| -> Result<(), BackendError> {
            // Larger is fine: it was grown with `volume resize`, and Swarm
            // creates it again with the size in its service spec.
            if rec.meta.size < opts.size {
                Err(BackendError::SizeDiffers {
                    volume: name.to_string(),
                    size: rec.meta.size,
                    asked: opts.size,
                })
            } else if rec.replicas != opts.replicas {
                Err(BackendError::ReplicasDiffer {
                    volume: name.to_string(),
                    replicas: rec.replicas,
                    asked: opts.replicas,
                })
            } else {
                Ok(())
            }
        };
        // Swarm creates the volume on every node a task lands on: an
        // existing one is success.
        self.cluster
            .meta_barrier(std::time::Duration::from_secs(5))
            .await;
        if let Some(rec) = self.cluster.view().meta().volumes.get(name) {
            return same(rec);
        }
        let spec = raftblock_consensus::VolumeSpec {
            size: opts.size,
            chunk_size,
            replicas: opts.replicas,
            shards: raftblock_consensus::layout::default_shards(opts.size, chunk_size).max(3),
            labels: BTreeMap::from([(FS_LABEL.to_string(), opts.fs.name().to_string())]),
            rules: raftblock_consensus::PlacementRules {
                spread: opts.spread.clone(),
                require: opts.require.clone(),
            },
        };
        match self.cluster.create_volume(name, spec).await {
            Ok(_) => Ok(()),
            Err(e) => match self.cluster.view().meta().volumes.get(name) {
                // Created by a concurrent call in the meantime.
                Some(rec) => same(rec),
                None => Err(cluster_err("creating", name)(e)),
            },
        }
    }

    async fn remove(&self, name: &str) -> Result<(), BackendError> {
        self.cluster.meta_barrier(Duration::from_secs(5)).await;
        let held = self
            .cluster
            .view()
            .meta()
            .volumes
            .get(name)
            .and_then(|v| v.attachment.clone());
        if let Some(a) = held {
            // A holder that died keeps its lease; once it has been silent
            // for the grace period its attachment is ended here.
            if a.node == self.cluster.node() || self.cluster.silent_for(a.node) < self.grace {
                return Err(BackendError::InUse {
                    volume: name.to_string(),
                    node: a.node,
                    epoch: a.epoch,
                });
            }
            self.cluster
                .detach_volume(name, a.epoch)
                .await
                .map_err(cluster_err("removing", name))?;
        }
        self.cluster
            .delete_volume(name)
            .await
            .map_err(cluster_err("removing", name))
    }

    fn lookup(&self, name: &str) -> Option<VolumeInfo> {
        self.cluster.view().meta().volumes.get(name).map(Self::info)
    }

    fn list(&self) -> Vec<VolumeInfo> {
        self.cluster
            .view()
            .meta()
            .volumes
            .values()
            .map(Self::info)
            .collect()
    }

    async fn acquire(&self, name: &str) -> Result<(Arc<ClusterVolume>, u64), BackendError> {
        let v = self
            .cluster
            .attach_volume(name, self.grace)
            .await
            .map_err(|e| match e {
                AttachError::NotFound(volume) => BackendError::NotFound { volume },
                AttachError::HeldElsewhere {
                    name,
                    node,
                    epoch,
                    silent_ms,
                    grace_ms,
                } => BackendError::HeldElsewhere {
                    volume: name,
                    node,
                    epoch,
                    silent_ms,
                    grace_ms,
                },
                AttachError::Route { name, source } => BackendError::Cluster {
                    op: "attaching",
                    volume: name,
                    source: source.into(),
                },
            })?;
        let epoch = v.epoch();
        Ok((Arc::new(v), epoch))
    }

    async fn renew(&self, held: Vec<(String, u64)>) -> Result<(), BackendError> {
        self.cluster
            .renew_attachments(held)
            .await
            .map_err(|e| BackendError::Renew { source: e.into() })
    }

    fn renew_every(&self) -> Duration {
        // Three renewals per grace period, so one lost renewal never looks
        // like a dead holder.
        (self.grace / 3).max(Duration::from_millis(500))
    }

    async fn release(&self, name: &str, epoch: u64) -> Result<(), BackendError> {
        self.cluster
            .detach_volume(name, epoch)
            .await
            .map_err(cluster_err("detaching", name))
    }
}

/// Builds the error for a cluster call doing `op` on `volume` that failed.
fn cluster_err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    volume: &str,
) -> impl FnOnce(E) -> BackendError {
    let volume = volume.to_string();
    move |e| BackendError::Cluster {
        op,
        volume,
        source: Box::new(e),
    }
}
