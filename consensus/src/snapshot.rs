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

use raftblock_storage::staging::{self, ChunkSwap};
use raftblock_storage::{ChunkStore, LocalVolume, ReadSegment, VolumeIo};

use crate::layout::ShardId;
use crate::meta::{shard_of_group, MetaState};

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

/// Where a catch-up copy reads from: the snapshot's sender.
pub trait ChunkSource {
    /// The sender's checksum table of `chunk` (`None`: no data there).
    fn sums(&self, chunk: u64) -> impl Future<Output = Result<Option<Vec<u32>>, String>> + Send;
    /// The sender's copy of `[offset, offset + len)`, verified.
    fn read(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<ReadSegment>, String>> + Send;
}

/// Stages the chunks of the shard that differ from the sender's copy,
/// read through `src`; returns what the swap will do.
pub async fn fetch(
    meta: &MetaState,
    store: &ChunkStore,
    f: &SnapshotFetch,
    src: &impl ChunkSource,
) -> Result<StagedCopy, String> {
    let (vol, index) = shard_of_group(f.group);
    let snap_index = f.msg.get_snapshot().get_metadata().index;
    let rec = meta
        .volumes
        .values()
        .find(|v| v.meta.id == vol)
        .ok_or_else(|| format!("group {}: volume {vol} is not in the metadata", f.group))?;
    let volume = store
        .volume(&rec.meta.name)
        .map_err(|e| format!("group {}: {e}", f.group))?;
    let chunks: Vec<u64> = rec
        .layout()
        .chunks_of(ShardId { volume: vol, index })
        .collect();
    stage(&volume, f.group, &chunks, snap_index, src)
        .await
        .map_err(|e| format!("group {}: {e}", f.group))
}

/// Compares each of `chunks` with `src` and stages the ones that differ in
/// the shard's staging area; returns what the swap will do.
pub async fn stage(
    volume: &LocalVolume,
    group: u64,
    chunks: &[u64],
    snap_index: u64,
    src: &impl ChunkSource,
) -> Result<StagedCopy, String> {
    let (_, index) = shard_of_group(group);
    let staged = staging::create(volume, index).map_err(|e| e.to_string())?;
    let (cs, size) = (volume.meta().chunk_size, volume.meta().size);
    let started = Instant::now();
    let mut copy = StagedCopy {
        index: snap_index,
        swaps: Vec::new(),
        keeps: Vec::new(),
        bytes: 0,
    };
    let mut last_report = Instant::now();
    for (n, &chunk) in chunks.iter().enumerate() {
        let theirs = src
            .sums(chunk)
            .await
            .map_err(|e| format!("chunk {chunk}: {e}"))?;
        let ours = volume.chunk_sums(chunk).map_err(|e| e.to_string())?;
        if theirs == ours {
            copy.keeps.push((chunk, ours));
            continue;
        }
        if theirs.is_none() {
            copy.swaps.push(ChunkSwap::Remove(chunk));
            continue;
        }
        let end = ((chunk + 1) * cs).min(size);
        let mut off = chunk * cs;
        while off < end {
            let len = PIECE.min(end - off);
            let mut pos = off;
            for s in src.read(off, len).await? {
                let l = s.len();
                if let ReadSegment::Data(d) = s {
                    staged
                        .write(pos, d, false)
                        .await
                        .map_err(|e| e.to_string())?;
                    copy.bytes += l;
                }
                pos += l;
            }
            off += len;
        }
        // The sender may have trimmed the chunk to holes since its table
        // was read: then nothing was staged, and the live chunk must go.
        let staged_any = staged
            .chunk_sums(chunk)
            .map_err(|e| e.to_string())?
            .is_some();
        copy.swaps.push(if staged_any {
            ChunkSwap::Replace(chunk)
        } else {
            ChunkSwap::Remove(chunk)
        });
        if last_report.elapsed() > Duration::from_secs(2) {
            tracing::info!(
                group,
                chunks_done = n + 1,
                chunks = chunks.len(),
                mib = copy.bytes >> 20,
                "copying a shard snapshot"
            );
            last_report = Instant::now();
        }
    }
    staged.flush().await.map_err(|e| e.to_string())?;
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
