//! The Docker plugin's view of the cluster: volumes are the cluster's
//! volumes (global scope: every node sees every one), created with the
//! plugin's options and opened for I/O through the router like any NBD
//! client would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use raftblock_consensus::{Cluster, ClusterVolume, VolumeRecord};
use raftblock_storage::catalog::{validate_name, validate_sizes};
use raftblock_storage::DEFAULT_CHUNK_SIZE;
use raftblock_volume_driver::docker::api::CreateOptions;
use raftblock_volume_driver::docker::{VolumeBackend, VolumeInfo};

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

    async fn create(&self, name: &str, opts: &CreateOptions) -> Result<(), String> {
        validate_name(name).map_err(|e| e.to_string())?;
        let chunk_size = opts.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        validate_sizes(opts.size, chunk_size).map_err(|e| e.to_string())?;
        let same = |rec: &VolumeRecord| -> Result<(), String> {
            if rec.meta.size != opts.size {
                Err(format!(
                    "volume {name} already exists with size {} (asked for {})",
                    rec.meta.size, opts.size
                ))
            } else if rec.replicas != opts.replicas {
                Err(format!(
                    "volume {name} already exists with {} replica(s) (asked for {})",
                    rec.replicas, opts.replicas
                ))
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
        let shards = raftblock_consensus::layout::default_shards(opts.size, chunk_size).max(3);
        let labels = BTreeMap::from([(FS_LABEL.to_string(), opts.fs.name().to_string())]);
        match self
            .cluster
            .create_volume(name, opts.size, chunk_size, opts.replicas, shards, labels)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.cluster.view().meta().volumes.get(name) {
                // Created by a concurrent call in the meantime.
                Some(rec) => same(rec),
                None => Err(format!("creating volume {name}: {e}")),
            },
        }
    }

    async fn remove(&self, name: &str) -> Result<(), String> {
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
                return Err(format!(
                    "volume {name} is in use: attached on node {} (epoch {})",
                    a.node, a.epoch
                ));
            }
            self.cluster
                .detach_volume(name, a.epoch)
                .await
                .map_err(|e| format!("removing volume {name}: {e}"))?;
        }
        self.cluster
            .delete_volume(name)
            .await
            .map_err(|e| format!("removing volume {name}: {e}"))
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

    async fn acquire(&self, name: &str) -> Result<(Arc<ClusterVolume>, u64), String> {
        let v = self
            .cluster
            .attach_volume(name, self.grace)
            .await
            .map_err(|e| e.to_string())?;
        let epoch = v.epoch();
        Ok((Arc::new(v), epoch))
    }

    async fn renew(&self, held: Vec<(String, u64)>) -> Result<(), String> {
        self.cluster
            .renew_attachments(held)
            .await
            .map_err(|e| format!("renewing attachments: {e}"))
    }

    fn renew_every(&self) -> Duration {
        // Three renewals per grace period, so one lost renewal never looks
        // like a dead holder.
        (self.grace / 3).max(Duration::from_millis(500))
    }

    async fn release(&self, name: &str, epoch: u64) -> Result<(), String> {
        self.cluster
            .detach_volume(name, epoch)
            .await
            .map_err(|e| format!("detaching volume {name}: {e}"))
    }
}
