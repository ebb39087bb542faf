//! Catching a shard replica up by copy. A leader that dropped log entries a
//! follower still needs sends Raft's MsgSnapshot, whose data is only a
//! marker. The follower holds the message back and copies from the sender
//! only the chunks whose checksum tables differ from its own, into the
//! shard's staging area (`raftblock_storage::staging`), where nothing reads
//! or applies; the copy is synced there. The driver then asks the shard's
//! apply task to commit to the swap (it checks that it has applied less
//! than the snapshot and that the chunks it keeps are still the ones it
//! compared), steps the message into Raft, and has the apply task swap the
//! staged chunks in only if Raft took the snapshot. docs/catch-up.md gives
//! the reasons and the crash argument.
//!
//! The copy is fuzzy, taken while the sender keeps applying: each block
//! holds what the sender had at some index at or after the snapshot's, and
//! every entry after the snapshot is applied again on top (block commands
//! are idempotent byte ranges, applied in log order).

use raft::prelude::Message;
use std::future::Future;
use std::time::{Duration, Instant};

use raftblock_storage::checksum::HOLE;
use raftblock_storage::staging::{self, ChunkSwap};
use raftblock_storage::{ChunkStore, LocalVolume, ReadSegment, StorageError, VolumeIo, BLOCK_SIZE};
use std::sync::atomic::Ordering;

use crate::error::RouteError;
use crate::meta::{shard_of_group, MetaState};
use crate::recovery::CopyProgress;
use crate::rpc::SegmentError;

/// Bytes copied per request.
const PIECE: u64 = 4 << 20;

/// A MsgSnapshot held back until its shard data is here.
pub struct SnapshotFetch {
    /// The shard group.
    pub group: u64,
    /// The node that sent it (the leader), to copy from.
    pub from: u64,
    /// The held-back Raft message.
    pub msg: Message,
}

/// A copy staged and synced, waiting to be swapped in.
#[derive(Debug, Clone)]
pub struct StagedCopy {
    /// The snapshot's index.
    pub index: u64,
    /// What the swap does to each chunk that differed.
    pub swaps: Vec<ChunkSwap>,
    /// Chunks left as they are, with the checksum table they were found
    /// equal at (`None`: no data on either side); checked again before the
    /// swap, since this replica may have applied entries meanwhile.
    pub keeps: Vec<(u64, Option<Vec<u32>>)>,
    /// Bytes copied.
    pub bytes: u64,
}

/// Why a shard's catch-up copy could not be staged (the driver then lets
/// the leader send another snapshot).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The shard's volume is not in this node's metadata.
    #[error("group {group}: volume {volume} is not in the metadata")]
    VolumeUnknown {
        /// The shard group.
        group: u64,
        /// The volume id.
        volume: u64,
    },
    /// This node's copy of the volume or the shard's staging area failed
    /// (the storage error names the volume, chunk and offset).
    #[error("group {group}: {source}")]
    Local {
        /// The shard group.
        group: u64,
        /// What failed.
        source: StorageError,
    },
    /// The sender could not give a chunk's checksum table or bytes.
    #[error("group {group}: chunk {chunk}: {source}")]
    Source {
        /// The shard group.
        group: u64,
        /// The chunk being compared or copied.
        chunk: u64,
        /// What failed.
        source: SourceError,
    },
}

/// Why a `ChunkSource` could not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Asking the sender for a chunk's checksum table failed.
    #[error("checksum table from node {from}: {source}")]
    Sums {
        /// The sender.
        from: u64,
        /// What failed.
        source: RouteError,
    },
    /// Reading `[offset, offset + len)` from the sender failed.
    #[error("reading {len} bytes at {offset} from node {from}: {source}")]
    Read {
        /// The sender.
        from: u64,
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u64,
        /// What failed.
        source: RouteError,
    },
    /// The sender's answer did not pass its checksums.
    #[error("answer from node {from}: {source}")]
    Corrupt {
        /// The sender.
        from: u64,
        /// What was wrong with it.
        source: SegmentError,
    },
    /// The source's own storage failed (a source that reads a copy
    /// directly, as the simulation's does).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Where a catch-up copy reads from: the snapshot's sender.
pub trait ChunkSource {
    /// The sender's checksum table of `chunk` (`None`: no data there).
    fn sums(
        &self,
        chunk: u64,
    ) -> impl Future<Output = Result<Option<Vec<u32>>, SourceError>> + Send;
    /// The sender's copy of `[offset, offset + len)`, verified.
    fn read(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<ReadSegment>, SourceError>> + Send;
}

/// Stages the chunks of the shard that differ from the sender's copy,
/// read through `src`; returns what the swap will do.
pub async fn fetch(
    meta: &MetaState,
    store: &ChunkStore,
    f: &SnapshotFetch,
    src: &impl ChunkSource,
    progress: &CopyProgress,
) -> Result<StagedCopy, SnapshotError> {
    let (vol, index) = shard_of_group(f.group);
    let snap_index = f.msg.get_snapshot().get_metadata().index;
    let rec =
        meta.volumes
            .values()
            .find(|v| v.meta.id == vol)
            .ok_or(SnapshotError::VolumeUnknown {
                group: f.group,
                volume: vol,
            })?;
    let volume = store
        .volume(&rec.meta.name)
        .map_err(|source| SnapshotError::Local {
            group: f.group,
            source,
        })?;
    volume
        .cover(rec.span())
        .map_err(|source| SnapshotError::Local {
            group: f.group,
            source,
        })?;
    let chunks = rec.shard_chunks(index);
    stage(&volume, f.group, &chunks, snap_index, src, progress).await
}

/// Compares each of `chunks` with `src` and stages the ones that differ in
/// the shard's staging area; returns what the swap will do. All tables are
/// compared first, so `progress` knows the bytes to copy from the start.
pub async fn stage(
    volume: &LocalVolume,
    group: u64,
    chunks: &[u64],
    snap_index: u64,
    src: &impl ChunkSource,
    progress: &CopyProgress,
) -> Result<StagedCopy, SnapshotError> {
    let local = |source| SnapshotError::Local { group, source };
    let (cs, size) = (volume.meta().chunk_size, volume.size());
    let started = Instant::now();
    let mut copy = StagedCopy {
        index: snap_index,
        swaps: Vec::new(),
        keeps: Vec::new(),
        bytes: 0,
    };
    let mut differ = Vec::new();
    for &chunk in chunks {
        let theirs = src
            .sums(chunk)
            .await
            .map_err(|source| SnapshotError::Source {
                group,
                chunk,
                source,
            })?;
        let ours = volume.chunk_sums(chunk).map_err(local)?;
        match theirs {
            _ if theirs == ours => copy.keeps.push((chunk, ours)),
            None => copy.swaps.push(ChunkSwap::Remove(chunk)),
            Some(sums) => {
                let blocks = sums.iter().filter(|s| **s != HOLE).count() as u64;
                progress
                    .total
                    .fetch_add(blocks * BLOCK_SIZE, Ordering::Relaxed);
                differ.push(chunk);
            }
        }
    }
    let (_, index) = shard_of_group(group);
    let staged = staging::create(volume, index).map_err(local)?;
    let mut last_report = Instant::now();
    for (n, &chunk) in differ.iter().enumerate() {
        let from_source = |source| SnapshotError::Source {
            group,
            chunk,
            source,
        };
        let end = ((chunk + 1) * cs).min(size);
        let mut off = chunk * cs;
        while off < end {
            let len = PIECE.min(end - off);
            let mut pos = off;
            for s in src.read(off, len).await.map_err(from_source)? {
                let l = s.len();
                if let ReadSegment::Data(d) = s {
                    staged.write(pos, d, false).await.map_err(local)?;
                    copy.bytes += l;
                    progress.done.fetch_add(l, Ordering::Relaxed);
                }
                pos += l;
            }
            off += len;
        }
        // The sender may have trimmed the chunk to holes since its table
        // was read: then nothing was staged, and the live chunk must go.
        let staged_any = staged.chunk_sums(chunk).map_err(local)?.is_some();
        copy.swaps.push(if staged_any {
            ChunkSwap::Replace(chunk)
        } else {
            ChunkSwap::Remove(chunk)
        });
        if last_report.elapsed() > Duration::from_secs(2) {
            tracing::info!(
                group,
                chunks_done = n + 1,
                chunks = differ.len(),
                mib = copy.bytes >> 20,
                of_mib = progress.total.load(Ordering::Relaxed) >> 20,
                "copying a shard snapshot"
            );
            last_report = Instant::now();
        }
    }
    staged.flush().await.map_err(local)?;
    tracing::info!(
        group,
        index = snap_index,
        chunks = chunks.len(),
        differed = copy.swaps.len(),
        mib = copy.bytes >> 20,
        secs = started.elapsed().as_secs_f64(),
        "shard snapshot staged"
    );
    Ok(copy)
}
