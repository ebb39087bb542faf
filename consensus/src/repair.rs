//! Keeping this node's copy of a volume's bytes good: a block whose bytes
//! no longer match their recorded checksum is fetched from the shard's
//! other replicas and rewritten with the first copy that does match. A
//! leader's read does it on the way (`read_repairing`), and a scrub does it
//! for every chunk of the node's copy (`Cluster::scrub_volume`, on demand
//! or every `--scrub-interval`). Comparing replicas with each other, for
//! damage that a replica's own checksums cannot see, is `verify`.

use bytes::Bytes;
use std::time::{Duration, Instant};

use raftblock_storage::{LocalVolume, StorageError, VolumeIo};

use crate::cluster::{Cluster, ShardOp};
use crate::error::io_error;
use crate::meta::shard_of_group;
use crate::rpc::{self, RouteError, RpcSegment};

/// Corrupt blocks one read may repair from other replicas before failing.
const MAX_REPAIRS: u32 = 64;

/// What a scrub of one node's copy of a volume found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ScrubReport {
    /// The node.
    pub node: u64,
    /// Chunks verified.
    pub chunks: u64,
    /// Blocks whose bytes did not match their checksum.
    pub bad: u64,
    /// Of those, repaired from another replica.
    pub repaired: u64,
    /// Volume offsets of bad blocks no replica had a good copy of.
    pub unrepaired: Vec<u64>,
}

impl Cluster {
    /// Reads `[offset, offset + len)` of this node's copy `v` of `group`;
    /// a block whose bytes went bad here is repaired from another replica
    /// and the read tried again (up to `MAX_REPAIRS` blocks per read).
    pub(crate) async fn read_repairing(
        &self,
        group: u64,
        v: &LocalVolume,
        offset: u64,
        len: u64,
    ) -> Result<Vec<RpcSegment>, RouteError> {
        let mut repaired = 0;
        loop {
            match v.read(offset, len).await {
                Ok(segs) => return Ok(rpc::segments_of_read(segs)),
                Err(StorageError::Checksum { offset: bad, .. }) if repaired < MAX_REPAIRS => {
                    if !self.repair_block(group, v, bad).await {
                        let e = v.read(offset, len).await.err();
                        return Err(io_error(e.unwrap_or(StorageError::Checksum {
                            volume: v.name().to_string(),
                            chunk: bad / v.meta().chunk_size,
                            offset: bad,
                        })));
                    }
                    repaired += 1;
                }
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Verifies this node's copy of every shard of `name` it holds against
    /// the recorded checksums, and repairs bad blocks from other replicas
    /// (as a read on the leader does): Ceph's deep scrub, on demand.
    pub async fn scrub_volume(&self, name: &str) -> Result<ScrubReport, RouteError> {
        let rec = self.volume_record(name)?;
        let v = self.store().volume(name).map_err(io_error)?;
        let mut report = ScrubReport {
            node: self.node(),
            ..ScrubReport::default()
        };
        let started = Instant::now();
        let mine: u64 = rec
            .shards
            .iter()
            .enumerate()
            .filter(|(_, nodes)| nodes.contains(&self.node()))
            .map(|(i, _)| rec.shard_chunks(i as u32).len() as u64)
            .sum();
        let mut last_report = Instant::now();
        let progress = crate::progress::Running::start(self.node(), "scrub", name, mine, "chunks");
        for (index, nodes) in rec.shards.iter().enumerate() {
            if !nodes.contains(&self.node()) {
                continue;
            }
            let group = crate::meta::shard_group(rec.meta.id, index as u32);
            for chunk in rec.shard_chunks(index as u32) {
                report.chunks += 1;
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = Instant::now();
                    tracing::info!(
                        volume = name,
                        done = report.chunks,
                        of = mine,
                        bad = report.bad,
                        "scrubbing"
                    );
                }
                let bad_blocks = v
                    .scrub_chunk(chunk, self.scrub_pace())
                    .await
                    .map_err(io_error)?;
                for bad in bad_blocks {
                    report.bad += 1;
                    if self.repair_block(group, &v, bad).await {
                        report.repaired += 1;
                    } else {
                        report.unrepaired.push(bad);
                    }
                }
                progress.advance(1);
            }
        }
        tracing::info!(
            volume = name,
            chunks = report.chunks,
            bad = report.bad,
            repaired = report.repaired,
            secs = started.elapsed().as_secs_f64(),
            "scrub done"
        );
        Ok(report)
    }

    /// Fetches the block at volume offset `bad` from the shard's other
    /// replicas and rewrites this node's copy with the first one whose bytes
    /// match the block's recorded checksum (a stale replica's older bytes
    /// do not match, so only the committed content is ever written back).
    async fn repair_block(&self, group: u64, v: &LocalVolume, bad: u64) -> bool {
        let (vol, _) = shard_of_group(group);
        let replicas: Vec<u64> = {
            let meta = self.view().meta();
            let Some(rec) = meta.volumes.values().find(|r| r.meta.id == vol) else {
                return false;
            };
            let (_, index) = shard_of_group(group);
            rec.shards.get(index as usize).cloned().unwrap_or_default()
        };
        let block = raftblock_storage::BLOCK_SIZE;
        for n in replicas.into_iter().filter(|n| *n != self.node()) {
            let op = ShardOp::ReadLocal {
                offset: bad,
                len: block,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            let Ok(segs) = self.call_node(n, group, &op, deadline).await else {
                continue;
            };
            let mut data = Vec::with_capacity(block as usize);
            for s in segs {
                if s.hole {
                    data.resize(data.len() + s.len as usize, 0);
                } else {
                    data.extend_from_slice(&s.data);
                }
            }
            if data.len() as u64 != block {
                continue;
            }
            match v.repair_block(bad, Bytes::from(data)).await {
                Ok(true) => {
                    tracing::warn!(
                        group,
                        offset = bad,
                        from = n,
                        "corrupt block repaired from a replica"
                    );
                    return true;
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(group, offset = bad, error = %e, "repairing a corrupt block");
                    return false;
                }
            }
        }
        tracing::error!(
            group,
            offset = bad,
            "no replica holds a good copy of a corrupt block"
        );
        false
    }
}
