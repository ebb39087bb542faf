//! Resizing a volume across the cluster. The node the user asked records
//! the resize in the metadata (`BeginResize`) and waits; the metadata
//! leader carries every pending resize through, from its watch loop: one
//! `Resize` entry in each shard's log, then `FinishResize`. Because the
//! leader works from what the metadata says is pending, a resize whose
//! asking node died, or whose leader died half-way, is finished by the next
//! leader; each shard applies a given resize once (by its number), so
//! proposing its entries again is harmless.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ShardOp};
use crate::command::ShardCommand;
use crate::driver::ReplicaError;
use crate::meta::{shard_group, MetaCommand, MetaError, PendingResize, VolumeRecord};
use crate::rpc::RouteError;

/// How long a resize may take before the asking node gives up waiting (it
/// still completes).
const RESIZE_WAIT: Duration = Duration::from_secs(120);

/// Test hook: the leader waits this many milliseconds between the shards'
/// entries and `FinishResize`, so a test can kill it in between.
const PAUSE_ENV: &str = "RAFTBLOCK_TEST_RESIZE_PAUSE_MS";

impl Cluster {
    /// Resizes volume `name` to `size` bytes and waits until every shard
    /// applied it; returns the volume's record then. See `meta::resize` for
    /// what is refused (a shrink without `allow_shrink`, or while attached).
    pub async fn resize_volume(
        &self,
        name: &str,
        size: u64,
        allow_shrink: bool,
    ) -> Result<VolumeRecord, RouteError> {
        self.propose_meta(MetaCommand::BeginResize {
            name: name.to_string(),
            size,
            allow_shrink,
            since_unix: raftblock_storage::catalog::unix_now(),
        })
        .await?;
        let Some(seq) = self.volume_record(name)?.resize.map(|p| p.seq) else {
            return Ok(self.volume_record(name)?); // already that size
        };
        let deadline = Instant::now() + RESIZE_WAIT;
        loop {
            let rec = self.volume_record(name)?;
            if rec.resize.as_ref().is_none_or(|p| p.seq != seq) {
                return Ok(rec);
            }
            if Instant::now() > deadline {
                return Err(ReplicaError::Meta(MetaError::Resize {
                    name: name.to_string(),
                    reason: format!(
                        "not finished after {} s; the metadata leader keeps carrying it through \
                         (see `cluster status`)",
                        RESIZE_WAIT.as_secs()
                    ),
                })
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// On the metadata leader: starts carrying each pending resize through,
/// one task per volume (`running` holds them between calls).
pub(crate) fn drive_pending(cluster: &Arc<Cluster>, running: &mut HashMap<String, JoinHandle<()>>) {
    running.retain(|_, t| !t.is_finished());
    let meta = cluster.view().meta();
    for rec in meta.volumes.values() {
        let Some(p) = rec.resize.clone() else {
            continue;
        };
        if running.contains_key(&rec.meta.name) {
            continue;
        }
        let (cluster, rec) = (cluster.clone(), rec.clone());
        let name = rec.meta.name.clone();
        running.insert(
            name.clone(),
            tokio::spawn(async move {
                match carry_through(&cluster, &rec, &p).await {
                    Ok(()) => tracing::info!(
                        volume = %name,
                        from = p.from,
                        size = p.size,
                        "volume resized"
                    ),
                    Err(e) => {
                        tracing::warn!(volume = %name, error = %e, "resize not finished; retrying")
                    }
                }
            }),
        );
    }
}

/// Proposes resize `p` in every shard of `rec`, then finishes it.
async fn carry_through(
    cluster: &Cluster,
    rec: &VolumeRecord,
    p: &PendingResize,
) -> Result<(), RouteError> {
    let id = rec.meta.id;
    try_join_all(rec.shards.iter().enumerate().map(|(i, nodes)| {
        let cmd = ShardCommand::resize(id, p.seq, p.from, p.size).encode_bytes();
        cluster.execute(shard_group(id, i as u32), nodes, ShardOp::Propose(cmd))
    }))
    .await?;
    if let Some(ms) = std::env::var(PAUSE_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::info!(volume = %rec.meta.name, ms, "test hook: pausing before finishing the resize");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    cluster
        .propose_meta(MetaCommand::FinishResize {
            name: rec.meta.name.clone(),
            size: p.size,
        })
        .await
}
