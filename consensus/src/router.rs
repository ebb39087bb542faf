//! A replicated volume as [`VolumeIo`]: requests are cut at chunk
//! boundaries (and writes into log-sized pieces), each piece goes to the
//! leader of the shard holding its chunk, and the pieces run concurrently.
//! A read of a shard this node leads under a valid lease is served from
//! the local chunk files in the caller's task (`read_lease`); other reads
//! go through the leader's driver. The NBD server serves this exactly like
//! a local volume.

use bytes::Bytes;
use futures_util::future::try_join_all;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use raftblock_storage::{
    error::errno, Extent, LocalVolume, ReadSegment, Result, StorageError, VolumeIo, ZeroMode,
};

use crate::cluster::{Cluster, ShardOp};
use crate::command::ShardCommand;
use crate::driver::ReplicaError;
use crate::layout::ShardLayout;
use crate::meta::{shard_group, VolumeRecord};
use crate::rpc::{self, RouteError};

/// Largest write payload in one log entry.
pub const MAX_ENTRY_DATA: u64 = 1 << 20;

static FOLLOWER_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads this process served from a replica it follows (a ReadIndex to the
/// leader, the data from the local chunk files).
pub fn follower_reads() -> u64 {
    FOLLOWER_READS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A volume of the cluster, reached through its shard leaders.
pub struct ClusterVolume {
    cluster: Arc<Cluster>,
    rec: VolumeRecord,
    layout: ShardLayout,
    epoch: u64,
    /// This node's copy of the volume, once looked up (lease reads).
    local: OnceLock<Arc<LocalVolume>>,
}

/// A piece of a request inside one chunk.
#[derive(Debug, Clone, Copy)]
struct Piece {
    offset: u64,
    len: u64,
    /// Offset of the piece within the request.
    at: u64,
}

impl ClusterVolume {
    /// The volume `rec` served through `cluster`.
    pub fn new(cluster: Arc<Cluster>, rec: VolumeRecord) -> ClusterVolume {
        ClusterVolume {
            layout: rec.layout(),
            cluster,
            rec,
            epoch: 0,
            local: OnceLock::new(),
        }
    }

    /// The same volume writing under attach epoch `epoch` (its writes are
    /// refused once the volume was attached again with a newer epoch).
    pub fn with_epoch(mut self, epoch: u64) -> ClusterVolume {
        self.epoch = epoch;
        self
    }

    /// The attach epoch writes carry (0: unfenced).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The volume's record.
    pub fn record(&self) -> &VolumeRecord {
        &self.rec
    }

    /// The volume's size as the metadata says now (it changes with a
    /// resize), or as it was when this handle was made if the volume has
    /// gone.
    fn live_size(&self) -> u64 {
        self.cluster
            .view()
            .meta()
            .volumes
            .get(&self.rec.meta.name)
            .filter(|r| r.meta.id == self.rec.meta.id)
            .map_or(self.rec.meta.size, |r| r.meta.size)
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.live_size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(StorageError::OutOfRange {
                volume: self.rec.meta.name.clone(),
                offset,
                len,
                size,
            }),
        }
    }

    /// Cuts `[offset, offset+len)` at chunk boundaries and every `max` bytes.
    fn pieces(&self, offset: u64, len: u64, max: u64) -> Vec<Piece> {
        let cs = self.rec.meta.chunk_size;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk_end = (pos / cs + 1) * cs;
            let n = (end.min(chunk_end) - pos).min(max);
            out.push(Piece {
                offset: pos,
                len: n,
                at: pos - offset,
            });
            pos += n;
        }
        out
    }

    fn group_of(&self, offset: u64) -> u64 {
        shard_group(self.rec.meta.id, self.layout.shard_of_offset(offset).index)
    }

    fn local_volume(&self) -> Option<&Arc<LocalVolume>> {
        if let Some(v) = self.local.get() {
            return Some(v);
        }
        let v = self.cluster.store().volume(&self.rec.meta.name).ok()?;
        Some(self.local.get_or_init(|| v))
    }

    /// Reads a piece from the local chunk files if this node leads its
    /// shard under a lease that holds before and after the read; `None`:
    /// ask the leader (a bad block is repaired on that path too).
    async fn read_leased(&self, p: Piece) -> Option<Vec<ReadSegment>> {
        let group = self.group_of(p.offset);
        let leases = &self.cluster.view().read_leases;
        if !leases.holds(group, Instant::now()) {
            return None;
        }
        let segs = self.local_volume()?.read(p.offset, p.len).await.ok()?;
        leases.holds(group, Instant::now()).then_some(segs)
    }

    /// Reads a piece from the local chunk files of a replica of its shard
    /// that this node holds but does not lead: a ReadIndex (forwarded to
    /// the leader by Raft, only a small message crosses nodes), then the
    /// read once this replica's apply task has applied that index. `None`:
    /// no local replica, no leader known, or a block failed its check (the
    /// leader's path repairs it).
    async fn read_following(&self, p: Piece) -> Option<Vec<ReadSegment>> {
        let shard = self.layout.shard_of_offset(p.offset).index;
        let me = self.cluster.node();
        if !self.rec.shards.get(shard as usize)?.contains(&me) {
            return None;
        }
        let group = self.group_of(p.offset);
        self.cluster.driver().read_barrier(group).await.ok()?;
        let segs = self.local_volume()?.read(p.offset, p.len).await.ok()?;
        FOLLOWER_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(segs)
    }

    async fn read_piece(&self, p: Piece) -> Result<Vec<ReadSegment>> {
        if let Some(segs) = self.read_leased(p).await {
            return Ok(segs);
        }
        if let Some(segs) = self.read_following(p).await {
            return Ok(segs);
        }
        let op = ShardOp::Read {
            offset: p.offset,
            len: p.len,
        };
        let part = self.run(p.offset, op).await?;
        rpc::read_of_segments(part).map_err(|e| StorageError::Replication {
            volume: self.rec.meta.name.clone(),
            offset: p.offset,
            errno: errno::EIO,
            reason: e.to_string(),
        })
    }

    async fn run(&self, offset: u64, op: ShardOp) -> Result<Vec<rpc::RpcSegment>> {
        let shard = self.layout.shard_of_offset(offset);
        let group = shard_group(self.rec.meta.id, shard.index);
        let replicas = self
            .rec
            .shards
            .get(shard.index as usize)
            .cloned()
            .unwrap_or_default();
        self.cluster
            .execute(group, &replicas, op)
            .await
            .map_err(|e| self.error(offset, group, e))
    }

    fn error(&self, offset: u64, group: u64, e: RouteError) -> StorageError {
        let (errno, reason) = match e {
            RouteError::Io { errno, message } => (errno, message),
            RouteError::Replica(e @ ReplicaError::Fenced { .. }) => (e.errno(), e.to_string()),
            RouteError::Replica(e) => (
                e.errno(),
                format!("shard group {group}: {e} (no leader could serve it in time)"),
            ),
        };
        StorageError::Replication {
            volume: self.rec.meta.name.clone(),
            offset,
            errno,
            reason,
        }
    }

    async fn propose_all(
        &self,
        pieces: Vec<Piece>,
        cmd: impl Fn(Piece) -> ShardCommand,
    ) -> Result<()> {
        try_join_all(pieces.into_iter().map(|p| {
            let data = cmd(p).encode_bytes();
            async move { self.run(p.offset, ShardOp::Propose(data)).await }
        }))
        .await?;
        Ok(())
    }
}

impl VolumeIo for ClusterVolume {
    fn name(&self) -> &str {
        &self.rec.meta.name
    }

    fn size(&self) -> u64 {
        self.live_size()
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.check(offset, len)?;
        let mut pieces = self.pieces(offset, len, u64::MAX);
        if pieces.len() == 1 {
            return self.read_piece(pieces.remove(0)).await;
        }
        let parts = try_join_all(pieces.into_iter().map(|p| self.read_piece(p))).await?;
        Ok(parts.into_iter().flatten().collect())
    }

    async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<()> {
        // A write is acknowledged once committed: it is in the fsync'd log
        // of a majority, so FUA needs nothing more.
        self.check(offset, data.len() as u64)?;
        let (id, epoch) = (self.rec.meta.id, self.epoch);
        let pieces = self.pieces(offset, data.len() as u64, MAX_ENTRY_DATA);
        self.propose_all(pieces, |p| {
            let d = data.slice(p.at as usize..(p.at + p.len) as usize);
            ShardCommand::write(id, epoch, p.offset, d)
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        // Every acknowledged write is already durable on a majority.
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<()> {
        self.check(offset, len)?;
        let (id, epoch) = (self.rec.meta.id, self.epoch);
        let pieces = self.pieces(offset, len, u64::MAX);
        self.propose_all(pieces, |p| ShardCommand::trim(id, epoch, p.offset, p.len))
            .await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode, _fua: bool) -> Result<()> {
        self.check(offset, len)?;
        let (id, epoch) = (self.rec.meta.id, self.epoch);
        let pieces = self.pieces(offset, len, u64::MAX);
        self.propose_all(pieces, |p| match mode {
            ZeroMode::Punch => ShardCommand::zero(id, epoch, p.offset, p.len),
            ZeroMode::Allocate => ShardCommand::zero_allocated(id, epoch, p.offset, p.len),
        })
        .await
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check(offset, len)?;
        let pieces = self.pieces(offset, len, u64::MAX);
        let parts = try_join_all(pieces.iter().map(|p| {
            self.run(
                p.offset,
                ShardOp::BlockStatus {
                    offset: p.offset,
                    len: p.len,
                },
            )
        }))
        .await?;
        let mut out: Vec<Extent> = Vec::new();
        for (p, segs) in pieces.iter().zip(parts) {
            // Each piece's extents are cut to the piece, so they line up.
            let mut left = p.len;
            for e in rpc::extents_of_segments(segs) {
                if left == 0 {
                    break;
                }
                let len = e.len.min(left);
                left -= len;
                match out.last_mut() {
                    Some(last) if last.hole == e.hole => last.len += len,
                    _ => out.push(Extent { len, hole: e.hole }),
                }
            }
            if left > 0 {
                out.push(Extent {
                    len: left,
                    hole: false,
                });
            }
        }
        Ok(out)
    }
}
