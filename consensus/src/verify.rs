//! Comparing the replicas of a shard with each other, not only each with its
//! own checksums: a replica whose bytes *and* checksums went wrong together
//! (a lost write, a bad catch-up) passes its own scrub, and only a
//! comparison finds it.
//!
//! The comparison is made at a consistent cut: a `Cut` entry goes through
//! the shard's log, and every replica records its checksum tables of the
//! shard's chunks when it applies it, at the same index. The comparing node
//! collects the tables, takes the majority value of every block, fetches
//! the majority's bytes and proposes a `Repair` entry per divergent block.
//! Every replica applies a repair only if the block was not written after
//! the cut (each replica tracks that from its own log, so all decide alike):
//! a repair can never undo a later write. A `CutEnd` entry closes the cut.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftblock_storage::checksum::{self, HOLE};
use raftblock_storage::BLOCK_SIZE;

use crate::cluster::{Cluster, ShardOp};
use crate::command::ShardCommand;
use crate::driver::ReplicaError;
use crate::meta::{shard_group, MetaError};
use crate::rpc::{self, RouteError, SegmentError};

pub use crate::cut::{CutRegistry, CutTables};

/// Divergent blocks listed in a report (all are counted).
const LIST_MAX: usize = 1000;

static FOUND: AtomicU64 = AtomicU64::new(0);
static REPAIRED: AtomicU64 = AtomicU64::new(0);

/// Blocks found to differ between replicas, since the node started.
pub fn divergences_found() -> u64 {
    FOUND.load(Ordering::Relaxed)
}

/// Of those, repaired from the majority.
pub fn divergences_repaired() -> u64 {
    REPAIRED.load(Ordering::Relaxed)
}

/// A block whose replicas disagree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Divergence {
    /// Shard index.
    pub shard: u32,
    /// Chunk index in the volume.
    pub chunk: u64,
    /// Volume offset of the 4 KiB block.
    pub offset: u64,
    /// Nodes whose copy differs from the majority (all, when there is none).
    pub minority: Vec<u64>,
    /// Repaired from the majority.
    pub repaired: bool,
    /// Why it was not repaired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What comparing a volume's replicas found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The volume.
    pub volume: String,
    /// Shards compared.
    pub shards: u64,
    /// Chunks compared.
    pub chunks: u64,
    /// Blocks that differed.
    pub divergent: u64,
    /// Of those, repaired.
    pub repaired: u64,
    /// The first of them, with where they are.
    pub blocks: Vec<Divergence>,
    /// Replicas or shards that could not be compared, and why.
    pub skipped: Vec<String>,
}

/// Why a replica's checksum tables at a cut could not be had.
#[derive(Debug, thiserror::Error)]
enum CutTablesError {
    /// This node did not apply the cut within the wait.
    #[error("this node did not apply the cut in time")]
    NotAppliedHere,
    /// Asking the replica's node failed.
    #[error(transparent)]
    Route(RouteError),
    /// The replica's answer did not pass its checksums.
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

impl Cluster {
    /// Compares the replicas of every shard of `name` at a consistent cut
    /// and repairs the minority from the majority. With `led_here_only`,
    /// only the shards this node leads (the periodic scrub, so each shard
    /// is compared by one node).
    pub async fn verify_volume(
        &self,
        name: &str,
        led_here_only: bool,
    ) -> Result<VerifyReport, RouteError> {
        let rec = self.volume_record(name)?;
        let mut report = VerifyReport {
            volume: name.to_string(),
            ..VerifyReport::default()
        };
        let started = Instant::now();
        let compared = |index: usize| {
            !led_here_only
                || self.view().leader(shard_group(rec.meta.id, index as u32)) == Some(self.node())
        };
        let total: u64 = (0..rec.shards.len())
            .filter(|i| compared(*i))
            .map(|i| rec.shard_chunks(i as u32).len() as u64)
            .sum();
        let progress =
            crate::progress::Running::start(self.node(), "verify", name, total, "chunks");
        for (index, replicas) in rec.shards.iter().enumerate() {
            if !compared(index) {
                continue;
            }
            let chunks = rec.shard_chunks(index as u32);
            report.shards += 1;
            report.chunks += chunks.len() as u64;
            if let Err(e) = self
                .verify_shard(rec.meta.id, index as u32, replicas, &chunks, &mut report)
                .await
            {
                report.skipped.push(format!("shard {index}: {e}"));
            }
            progress.advance(chunks.len() as u64);
        }
        tracing::info!(
            volume = name,
            shards = report.shards,
            divergent = report.divergent,
            repaired = report.repaired,
            skipped = report.skipped.len(),
            secs = started.elapsed().as_secs_f64(),
            "replicas compared"
        );
        Ok(report)
    }

    async fn verify_shard(
        &self,
        volume: u64,
        shard: u32,
        replicas: &[u64],
        chunks: &[u64],
        report: &mut VerifyReport,
    ) -> Result<(), RouteError> {
        let group = shard_group(volume, shard);
        let id = rpc::unix_ms() << 16 | (self.node() & 0xffff);
        let propose =
            |cmd: ShardCommand| self.execute(group, replicas, ShardOp::Propose(cmd.encode_bytes()));
        propose(ShardCommand::cut(volume, id)).await?;
        let result = self
            .compare_at_cut(volume, shard, id, replicas, chunks, report)
            .await;
        // Close the cut whatever happened (replicas also close it by index).
        if let Err(e) = propose(ShardCommand::cut_end(volume, id)).await {
            tracing::warn!(group, error = %e, "closing a comparison cut");
        }
        result
    }

    async fn compare_at_cut(
        &self,
        volume: u64,
        shard: u32,
        id: u64,
        replicas: &[u64],
        chunks: &[u64],
        report: &mut VerifyReport,
    ) -> Result<(), RouteError> {
        let group = shard_group(volume, shard);
        // Each replica's tables, or why it could not be compared.
        let mut tables: Vec<(u64, Arc<CutTables>)> = Vec::new();
        for &n in replicas {
            match self.cut_tables(group, n, id, chunks).await {
                Ok(t) => tables.push((n, t)),
                Err(e) => report
                    .skipped
                    .push(format!("shard {shard}: node {n} not compared: {e}")),
            }
        }
        if tables.len() < 2 {
            return Ok(());
        }
        let blocks_per_chunk = (self.chunk_size_of(volume)? / BLOCK_SIZE) as usize;
        for &chunk in chunks {
            let views: Vec<(u64, &Option<Vec<u32>>)> = tables
                .iter()
                .map(|(n, t)| (*n, t.sums.get(&chunk).unwrap_or(&None)))
                .collect();
            if views.windows(2).all(|w| w[0].1 == w[1].1) {
                continue;
            }
            for b in 0..blocks_per_chunk {
                let slot = |s: &Option<Vec<u32>>| {
                    s.as_ref().and_then(|v| v.get(b).copied()).unwrap_or(HOLE)
                };
                let slots: Vec<(u64, u32)> = views.iter().map(|(n, s)| (*n, slot(s))).collect();
                if slots.windows(2).all(|w| w[0].1 == w[1].1) {
                    continue;
                }
                let offset = chunk * blocks_per_chunk as u64 * BLOCK_SIZE + b as u64 * BLOCK_SIZE;
                let d = self
                    .repair_divergence(volume, shard, id, replicas, chunk, offset, &slots)
                    .await;
                FOUND.fetch_add(1, Ordering::Relaxed);
                report.divergent += 1;
                if d.repaired {
                    REPAIRED.fetch_add(1, Ordering::Relaxed);
                    report.repaired += 1;
                }
                tracing::warn!(
                    volume,
                    shard,
                    chunk,
                    offset,
                    minority = ?d.minority,
                    repaired = d.repaired,
                    reason = d.reason.as_deref().unwrap_or(""),
                    "replicas disagree on a block"
                );
                if report.blocks.len() < LIST_MAX {
                    report.blocks.push(d);
                }
            }
        }
        Ok(())
    }

    /// Repairs one divergent block from the majority of `slots`.
    #[allow(clippy::too_many_arguments)]
    async fn repair_divergence(
        &self,
        volume: u64,
        shard: u32,
        cut: u64,
        replicas: &[u64],
        chunk: u64,
        offset: u64,
        slots: &[(u64, u32)],
    ) -> Divergence {
        let group = shard_group(volume, shard);
        let mut counts: HashMap<u32, Vec<u64>> = HashMap::new();
        for (n, s) in slots {
            counts.entry(*s).or_default().push(*n);
        }
        let majority = counts
            .iter()
            .find(|(_, nodes)| nodes.len() * 2 > replicas.len())
            .map(|(s, nodes)| (*s, nodes.clone()));
        let mut d = Divergence {
            shard,
            chunk,
            offset,
            minority: slots.iter().map(|(n, _)| *n).collect(),
            repaired: false,
            reason: None,
        };
        let Some((good, holders)) = majority else {
            d.reason = Some("no majority among the replicas".into());
            return d;
        };
        d.minority.retain(|n| !holders.contains(n));
        let data = if good == HOLE {
            Some(Bytes::new())
        } else {
            let mut found = None;
            for &n in &holders {
                if let Some(b) = self.fetch_block(group, n, offset).await {
                    if checksum::verify(good, &b) {
                        found = Some(b);
                        break;
                    }
                }
            }
            found
        };
        let Some(data) = data else {
            d.reason = Some("the majority's bytes could not be read (written since?)".into());
            return d;
        };
        let cmd = ShardCommand::repair(volume, cut, offset, data);
        match self
            .execute(group, replicas, ShardOp::Propose(cmd.encode_bytes()))
            .await
        {
            Ok(_) => d.repaired = true,
            Err(e) => d.reason = Some(e.to_string()),
        }
        d
    }

    /// Node `n`'s copy of the block at `offset` (zeros for a hole).
    async fn fetch_block(&self, group: u64, n: u64, offset: u64) -> Option<Bytes> {
        let op = ShardOp::ReadLocal {
            offset,
            len: BLOCK_SIZE,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let segs = self.call_node(n, group, &op, deadline).await.ok()?;
        let segs = rpc::read_of_segments(segs).ok()?;
        let mut out = Vec::with_capacity(BLOCK_SIZE as usize);
        for s in segs {
            match s {
                raftblock_storage::ReadSegment::Data(d) => out.extend_from_slice(&d),
                raftblock_storage::ReadSegment::Hole(l) => out.resize(out.len() + l as usize, 0),
            }
        }
        (out.len() as u64 == BLOCK_SIZE).then(|| Bytes::from(out))
    }

    /// Node `n`'s tables at cut `id`, waiting for it to apply the cut.
    async fn cut_tables(
        &self,
        group: u64,
        n: u64,
        id: u64,
        chunks: &[u64],
    ) -> Result<Arc<CutTables>, CutTablesError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        if n == self.node() {
            loop {
                if let Some(t) = self.driver().cuts().get(group, id) {
                    return Ok(t);
                }
                if Instant::now() > deadline {
                    return Err(CutTablesError::NotAppliedHere);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut sums = HashMap::new();
        for &chunk in chunks {
            loop {
                let op = ShardOp::CutSums { cut: id, chunk };
                match self.call_node(n, group, &op, deadline).await {
                    Ok(segs) => {
                        sums.insert(chunk, rpc::sums_of_segments(segs)?);
                        break;
                    }
                    Err(RouteError::Replica(ReplicaError::Retry(_)))
                        if Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(CutTablesError::Route(e)),
                }
            }
        }
        Ok(Arc::new(CutTables::new(sums)))
    }

    fn chunk_size_of(&self, volume: u64) -> Result<u64, RouteError> {
        self.view()
            .meta()
            .volumes
            .values()
            .find(|v| v.meta.id == volume)
            .map(|v| v.meta.chunk_size)
            .ok_or_else(|| {
                ReplicaError::Meta(MetaError::VolumeNotFound(format!("id {volume}"))).into()
            })
    }
}
