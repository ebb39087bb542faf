//! Catching a shard replica up by snapshot. A leader that dropped log
//! entries a follower still needs sends Raft's MsgSnapshot, whose data is
//! only a marker: the follower holds the message back, copies the shard's
//! chunks from the sender (forwarded local reads, each data piece checked
//! against its crc32), makes them durable, and only then steps the message
//! into Raft. The copy is fuzzy, taken while the sender keeps applying, and
//! that is fine: it holds at least every entry up to the snapshot index,
//! and the entries after it are applied again on top (block commands are
//! idempotent byte ranges, applied in log order).

use raft::prelude::Message;
use std::time::{Duration, Instant};

use raftblock_storage::{VolumeIo, ZeroMode};

use crate::cluster::{Cluster, ShardOp};
use crate::layout::ShardId;
use crate::meta::shard_of_group;
use crate::rpc;

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

/// Copies the shard's chunks from `f.from` into this node's copy of the
/// volume; returns the bytes copied.
pub async fn fetch(c: &Cluster, f: &SnapshotFetch) -> Result<u64, String> {
    let (vol, index) = shard_of_group(f.group);
    let meta = c.view().meta();
    let rec = meta
        .volumes
        .values()
        .find(|v| v.meta.id == vol)
        .ok_or_else(|| format!("group {}: volume {vol} is not in the metadata", f.group))?;
    let volume = c
        .store()
        .volume(&rec.meta.name)
        .map_err(|e| format!("group {}: {e}", f.group))?;
    let layout = rec.layout();
    let (cs, size) = (rec.meta.chunk_size, rec.meta.size);
    let chunks: Vec<u64> = layout.chunks_of(ShardId { volume: vol, index }).collect();
    let started = Instant::now();
    let mut copied = 0u64;
    let mut last_report = Instant::now();
    for (n, chunk) in chunks.iter().enumerate() {
        let end = ((chunk + 1) * cs).min(size);
        let mut off = chunk * cs;
        while off < end {
            let len = PIECE.min(end - off);
            let deadline = Instant::now() + Duration::from_secs(30);
            let segs = c
                .call_node(
                    f.from,
                    f.group,
                    &ShardOp::ReadLocal { offset: off, len },
                    deadline,
                )
                .await
                .map_err(|e| {
                    format!(
                        "group {}: copying {off}+{len} from node {}: {e}",
                        f.group, f.from
                    )
                })?;
            let segs = rpc::read_of_segments(segs)
                .map_err(|e| format!("group {}: at {off}: {e}", f.group))?;
            // Zero the range first so holes on the sender are holes here.
            volume
                .write_zeroes(off, len, ZeroMode::Punch, false)
                .await
                .map_err(|e| e.to_string())?;
            let mut pos = off;
            for s in segs {
                let l = s.len();
                if let raftblock_storage::ReadSegment::Data(d) = s {
                    volume
                        .write(pos, d, false)
                        .await
                        .map_err(|e| e.to_string())?;
                    copied += l;
                }
                pos += l;
            }
            off += len;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            tracing::info!(
                group = f.group,
                from = f.from,
                chunks_done = n + 1,
                chunks = chunks.len(),
                mib = copied >> 20,
                "copying a shard snapshot"
            );
            last_report = Instant::now();
        }
    }
    volume.flush().await.map_err(|e| e.to_string())?;
    tracing::info!(
        group = f.group,
        from = f.from,
        mib = copied >> 20,
        secs = started.elapsed().as_secs_f64(),
        "shard snapshot copied"
    );
    Ok(copied)
}
