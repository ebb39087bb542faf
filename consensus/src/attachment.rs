//! Exclusive attachment of a volume to one node, for the Docker plugin: a
//! lease in the metadata (`MetaCommand::Attach`, compare-and-set on the
//! volume's attach epoch) and then a Fence entry at the new epoch in every
//! shard's log, so a node that lost the volume (cut off, frozen, or dead and
//! later restarted) has its late writes refused by every replica. Another
//! node may take the volume over only once the holder has not been heard
//! from for the grace period, neither directly nor through the renewals it
//! writes into the metadata.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, ShardOp};
use crate::command::ShardCommand;
use crate::driver::ReplicaError;
use crate::meta::{MetaCommand, MetaError};
use crate::router::ClusterVolume;
use crate::rpc::RouteError;

/// A node unheard of for this long (pings go every second) is presumed
/// dead enough that attach waits out its grace rather than failing.
const SILENT: Duration = Duration::from_secs(2);
/// How often nodes ping each other.
const PING: Duration = Duration::from_secs(1);
/// How often a holder heard from lately is looked at again.
const WATCH_STEP: Duration = Duration::from_millis(250);

/// Why a volume could not be attached here.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// No such volume.
    #[error("no such volume: {0}")]
    NotFound(String),
    /// Another node holds it and was heard from within the grace period.
    #[error(
        "volume {name} is attached on node {node} (epoch {epoch}), which was heard from {silent_ms} ms ago; \
         it can be taken over once that node has been silent for {grace_ms} ms"
    )]
    HeldElsewhere {
        /// Volume.
        name: String,
        /// The holder.
        node: u64,
        /// Its epoch.
        epoch: u64,
        /// How long the holder has been silent.
        silent_ms: u128,
        /// The grace period.
        grace_ms: u128,
    },
    /// The metadata or a shard could not be reached.
    #[error("attaching volume {name}: {source}")]
    Route {
        /// Volume.
        name: String,
        /// What failed.
        source: RouteError,
    },
}

impl Cluster {
    /// Attaches `name` on this node with a new epoch, fences every shard at
    /// it, and returns the volume writing under that epoch. Taking it from
    /// another node needs that node silent for `grace`: a holder that keeps
    /// answering for a few seconds is an error, one that went quiet (or
    /// goes quiet while it is watched) is waited for.
    pub async fn attach_volume(
        self: &Arc<Self>,
        name: &str,
        grace: Duration,
    ) -> Result<ClusterVolume, AttachError> {
        let epoch = self.take_lease(name, grace).await?;
        let rec = self.record(name)?;
        // Fence every shard before the first write under the new epoch.
        for (group, replicas) in rec.groups() {
            let cmd = ShardCommand::fence(rec.meta.id, epoch).encode_bytes();
            self.execute(group, replicas, ShardOp::Propose(cmd))
                .await
                .map_err(|source| AttachError::Route {
                    name: name.to_string(),
                    source,
                })?;
        }
        tracing::info!(volume = name, epoch, "attached here");
        Ok(ClusterVolume::new(self.clone(), rec).with_epoch(epoch))
    }

    /// `name`'s record in this node's metadata.
    fn record(&self, name: &str) -> Result<crate::meta::VolumeRecord, AttachError> {
        self.view()
            .meta()
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| AttachError::NotFound(name.to_string()))
    }

    /// Commits this node's attachment of `name`; returns its epoch.
    async fn take_lease(&self, name: &str, grace: Duration) -> Result<u64, AttachError> {
        let mut attempts = 0;
        let mut waited = Duration::ZERO;
        let mut watched = Duration::ZERO;
        loop {
            attempts += 1;
            self.meta_barrier(Duration::from_secs(5)).await;
            let rec = self.record(name)?;
            let takeover = match &rec.attachment {
                Some(a) if a.node != self.node() => {
                    // Silent both to this node and to the metadata quorum
                    // (no renewals): a holder that another node can still
                    // reach keeps renewing.
                    let silent = self.silent_for(a.node).min(self.lease_silent_for(name));
                    if silent < grace && silent >= SILENT && waited < grace + SILENT {
                        // Likely dead: wait out its grace instead of failing
                        // (dockerd gives Mount two minutes; Swarm would
                        // retry only after its restart delay).
                        let nap = grace - silent + Duration::from_millis(100);
                        waited += nap;
                        tokio::time::sleep(nap).await;
                        continue;
                    }
                    if silent < grace && watched < SILENT + PING {
                        // Heard from lately: it may have died just now.
                        // Watch it for longer than a ping interval before
                        // calling it alive (dockerd sends Mount once).
                        watched += WATCH_STEP;
                        tokio::time::sleep(WATCH_STEP).await;
                        continue;
                    }
                    if silent < grace {
                        return Err(AttachError::HeldElsewhere {
                            name: name.to_string(),
                            node: a.node,
                            epoch: a.epoch,
                            silent_ms: silent.as_millis(),
                            grace_ms: grace.as_millis(),
                        });
                    }
                    tracing::warn!(
                        volume = name,
                        holder = a.node,
                        epoch = a.epoch,
                        silent_ms = silent.as_millis() as u64,
                        "taking over a volume from a silent node"
                    );
                    true
                }
                _ => false,
            };
            let cmd = MetaCommand::Attach {
                name: name.to_string(),
                node: self.node(),
                expect_epoch: rec.attach_epoch,
                takeover,
                since_unix: raftblock_storage::catalog::unix_now(),
            };
            match self.propose_meta(cmd).await {
                Ok(()) => {}
                // Someone attached it meanwhile: look again.
                Err(RouteError::Replica(ReplicaError::Meta(MetaError::EpochMoved { .. })))
                    if attempts < 3 =>
                {
                    continue
                }
                Err(source) => {
                    return Err(AttachError::Route {
                        name: name.to_string(),
                        source,
                    })
                }
            }
            match self.record(name)?.attachment {
                Some(a) if a.node == self.node() => return Ok(a.epoch),
                _ if attempts < 3 => continue,
                _ => return Err(AttachError::NotFound(name.to_string())),
            }
        }
    }

    /// Renews this node's attachments (`(volume, epoch)` pairs), so other
    /// nodes see it is alive through the metadata quorum.
    pub async fn renew_attachments(&self, volumes: Vec<(String, u64)>) -> Result<(), RouteError> {
        if volumes.is_empty() {
            return Ok(());
        }
        self.propose_meta(MetaCommand::Renew {
            node: self.node(),
            volumes,
        })
        .await
    }

    /// Ends this node's attachment of `name` at `epoch` (a no-op once the
    /// volume moved on).
    pub async fn detach_volume(&self, name: &str, epoch: u64) -> Result<(), RouteError> {
        self.propose_meta(MetaCommand::Detach {
            name: name.to_string(),
            epoch,
        })
        .await
    }
}
