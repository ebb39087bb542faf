//! The metadata operations of a node, as the admin API, the Docker plugin
//! and start-up use them: proposing a meta command through the meta
//! group's leader (`propose_meta`) and waiting until this node applied it,
//! creating and deleting volumes, registering and adding nodes, recording
//! which node serves a volume. Routing the commands is `Cluster::execute`;
//! applying them is the driver's (`driver/meta_apply.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ShardOp};
use crate::driver::ReplicaError;
use crate::meta::{MetaCommand, MetaError, NodeInfo, VolumeRecord, META_GROUP};
use crate::rpc::RouteError;

impl Cluster {
    /// Every node the metadata knows (the meta group's replicas are among
    /// them): where metadata requests go.
    fn meta_nodes(&self) -> Vec<u64> {
        let meta = self.view().meta();
        let mut v: Vec<u64> = meta.nodes.keys().copied().collect();
        if v.is_empty() {
            v.push(self.node());
        }
        v
    }

    /// Proposes a metadata command and waits until this node applied it.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<(), RouteError> {
        let voters = self.meta_nodes();
        self.execute(META_GROUP, &voters, ShardOp::Propose(cmd.encode().into()))
            .await?;
        // The leader answered after applying; catch up locally so the
        // caller's next look at the metadata here sees the change.
        let _ = self.meta_barrier(Duration::from_secs(5)).await;
        Ok(())
    }

    /// Notes that clients use volume `name` through this node, so its
    /// shards' leaders move here (in the background; nothing waits on it).
    /// A volume attached on another node stays served there.
    pub fn serve_here(self: &Arc<Self>, name: &str) {
        let meta = self.view().meta();
        let Some(rec) = meta.volumes.get(name) else {
            return;
        };
        let elsewhere = rec
            .attachment
            .as_ref()
            .is_some_and(|a| a.node != self.node());
        if rec.served_by == Some(self.node()) || elsewhere || !rec.is_on(self.node()) {
            return;
        }
        let cluster = self.clone();
        let cmd = MetaCommand::Serve {
            name: name.to_string(),
            node: self.node(),
        };
        tokio::spawn(async move {
            if let Err(e) = cluster.propose_meta(cmd).await {
                tracing::debug!(error = %e, "recording the serving node");
            }
        });
    }

    /// Waits until this node's metadata includes everything committed
    /// before the call (false if the meta group could not confirm in time).
    pub async fn meta_barrier(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match tokio::time::timeout(within, self.driver().read_barrier(META_GROUP)).await {
                Ok(Ok(())) => return true,
                Ok(Err(ReplicaError::Stopped)) | Err(_) => return false,
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        false
    }

    /// Creates a volume: placement over the live nodes (under the spec's
    /// rules), then the meta command.
    pub async fn create_volume(
        &self,
        name: &str,
        spec: VolumeSpec,
    ) -> Result<VolumeRecord, RouteError> {
        // Right after start-up, members may not have registered or been
        // heard from yet: give placement a few seconds before refusing.
        let deadline = Instant::now() + Duration::from_secs(6);
        let shards = loop {
            let meta = self.view().meta();
            if meta.volumes.contains_key(name) {
                return Err(ReplicaError::Meta(MetaError::VolumeExists(name.into())).into());
            }
            match meta.place(spec.replicas, spec.shards, &self.live_nodes(), &spec.rules) {
                Ok(p) => break p,
                Err(e) if Instant::now() > deadline => return Err(ReplicaError::Meta(e).into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        self.propose_meta(MetaCommand::CreateVolume {
            name: name.to_string(),
            size: spec.size,
            chunk_size: spec.chunk_size,
            replicas: spec.replicas,
            shards,
            created_unix: raftblock_storage::catalog::unix_now(),
            labels: spec.labels,
            rules: spec.rules,
        })
        .await?;
        Ok(self.volume_record(name)?)
    }

    /// The metadata record of volume `name` as this node knows it.
    pub fn volume_record(&self, name: &str) -> Result<VolumeRecord, ReplicaError> {
        self.view()
            .meta()
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| ReplicaError::Meta(MetaError::VolumeNotFound(name.into())))
    }

    /// Deletes a volume everywhere.
    pub async fn delete_volume(&self, name: &str) -> Result<(), RouteError> {
        self.propose_meta(MetaCommand::DeleteVolume {
            name: name.to_string(),
        })
        .await
    }

    /// Records this node's addresses in the metadata (retrying until the
    /// meta group has a leader).
    pub async fn register(&self, info: NodeInfo) {
        loop {
            if self.view().meta().nodes.get(&info.id) == Some(&info) {
                return;
            }
            match self.propose_meta(MetaCommand::PutNode(info.clone())).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "registering this node; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Adds node `info` to the cluster: its addresses, then its meta replica
    /// (a voter or a learner, as keeps the voters odd and at most five).
    pub async fn add_node(&self, info: NodeInfo) -> Result<(), RouteError> {
        self.propose_meta(MetaCommand::PutNode(info.clone()))
            .await?;
        let nodes = self.meta_nodes();
        self.execute(
            META_GROUP,
            &nodes,
            ShardOp::AddMember {
                node: info.id,
                learner: false,
            },
        )
        .await?;
        Ok(())
    }

    /// Where node `id` listens for transport traffic, per the metadata.
    pub fn raft_addr(&self, id: u64) -> Option<SocketAddr> {
        self.view().meta().nodes.get(&id).map(|n| n.raft_addr)
    }
}

/// What a new volume is to be.
#[derive(Debug, Clone, Default)]
pub struct VolumeSpec {
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Replicas per shard.
    pub replicas: u32,
    /// Shards.
    pub shards: u32,
    /// Free-form labels (the Docker plugin's `fs`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Which nodes may hold its replicas.
    pub rules: crate::meta::PlacementRules,
}
