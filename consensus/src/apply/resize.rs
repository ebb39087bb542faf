//! A volume's size on one replica. The metadata decides a resize
//! (`meta::resize`); each shard's log orders a `Resize` entry among its
//! writes, and applying it clears the shard's blocks between the two sizes:
//! past the new end on a shrink, and between the old end and the new one
//! on a grow (nothing lawful is there, but a write from a node that had not
//! yet seen a shrink could be). Every replica clears the same blocks at the
//! same log index, so they stay alike whatever size each was opened at.
//! Writes past this node's size grow it ([`cover`]): the proposer checked
//! them against the metadata, and a replica that learns of a grow late
//! must not skip what the others applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::mpsc;

use raftblock_storage::catalog::MAX_VOLUME_SIZE;
use raftblock_storage::{LocalVolume, Result, StorageError, VolumeIo};

use super::{ApplyMsg, ShardState};
use crate::command::{ResizeOp, ShardCommand};
use crate::driver::ReplicaError;

/// The last resize a shard replica applied, kept in a small file beside
/// the volume's chunks (`resize-<shard>.json`). An entry after it in the
/// log whose number is not higher is a late duplicate and changes nothing;
/// an entry at or before it is a replay after a restart (applied data is
/// synced lazily, so a restart applies the entries since the last sync
/// again) and is applied again like every other entry there.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct AppliedResize {
    /// Its number (`ResizeOp::seq`).
    pub seq: u64,
    /// Its log index.
    #[serde(default)]
    pub index: u64,
    #[serde(skip)]
    path: PathBuf,
}

impl AppliedResize {
    /// Where shard `shard`'s record lives in the volume directory `dir`.
    pub fn path(dir: &Path, shard: u32) -> PathBuf {
        dir.join(format!("resize-{shard}.json"))
    }

    /// Loads the record; a replica without one has applied `done` resizes
    /// (what the metadata held when it started: a new replica copies its
    /// data from one that applied them).
    pub fn load(dir: &Path, shard: u32, done: u64) -> AppliedResize {
        let path = Self::path(dir, shard);
        let (seq, index) = match crate::meta::load_json::<Option<AppliedResize>>(&path) {
            Ok(Some(r)) => (r.seq, r.index),
            Ok(None) => (done, 0),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "unreadable resize record; taking the metadata's count");
                (done, 0)
            }
        };
        AppliedResize { seq, index, path }
    }

    /// Whether resize number `seq` at log index `index` is a late
    /// duplicate of one applied already.
    fn is_duplicate(&self, seq: u64, index: u64) -> bool {
        index > self.index && seq <= self.seq
    }

    fn save(&mut self, seq: u64, index: u64) -> std::io::Result<()> {
        if index <= self.index {
            return Ok(()); // a replay: the record is already past it
        }
        let data = serde_json::to_vec(&AppliedResize {
            seq,
            index,
            path: PathBuf::new(),
        })
        .map_err(std::io::Error::other)?;
        crate::meta::write_atomic(&self.path, &data)?;
        (self.seq, self.index) = (seq, index);
        Ok(())
    }
}

/// Grows this node's size of the volume to hold what `cmd` touches.
pub(super) fn cover(volume: &LocalVolume, cmd: &ShardCommand) -> Result<()> {
    let Some((offset, len)) = cmd.range() else {
        return Ok(());
    };
    match offset.checked_add(len) {
        Some(end) if end <= volume.size() => Ok(()),
        Some(end) if end <= MAX_VOLUME_SIZE => volume.cover(end).map(|_| ()),
        _ => Err(StorageError::OutOfRange {
            volume: volume.name().to_string(),
            offset,
            len,
            size: volume.size(),
        }),
    }
}

/// Applies a resize entry (retrying device errors, as other entries do).
pub(super) async fn apply(
    group: u64,
    index: u64,
    volume: &LocalVolume,
    r: &ResizeOp,
    state: &mut ShardState,
    rx: &mpsc::UnboundedReceiver<ApplyMsg>,
) -> std::result::Result<(), ReplicaError> {
    if state.resized.is_duplicate(r.seq, index) {
        tracing::info!(
            group,
            index,
            seq = r.seq,
            "late duplicate of a resize entry; skipped"
        );
        return Ok(());
    }
    // Blocks change under an open comparison: its repairs no longer apply.
    state.cut = None;
    let mut delay = Duration::from_millis(10);
    let mut reported = false;
    loop {
        let done = match clear(volume, r, state).await {
            Ok(()) => state.resized.save(r.seq, index).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let Err(e) = done else { break };
        if rx.is_closed() {
            return Err(ReplicaError::Apply(format!(
                "replica removed while resizing at entry {index}: {e}"
            )));
        }
        if !reported {
            tracing::error!(group, index, error = %e, "resizing the shard failed; retrying");
            reported = true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
    state.chunks = state
        .layout
        .with_size(volume.size())
        .chunks_of(state.shard)
        .collect();
    tracing::info!(group, index, from = r.from, size = r.size, "shard resized");
    Ok(())
}

/// Clears the shard's blocks between the two sizes: whole chunks go, a
/// chunk cut by the boundary is trimmed from it.
async fn clear(volume: &LocalVolume, r: &ResizeOp, state: &ShardState) -> Result<()> {
    let (lo, hi) = if r.size >= r.from {
        volume.cover(r.size)?;
        (r.from, r.size)
    } else {
        (r.size, volume.size())
    };
    let cs = volume.meta().chunk_size;
    let mut whole = Vec::new();
    for c in state.layout.with_size(hi).chunks_of(state.shard) {
        let (start, end) = (c * cs, (c + 1) * cs);
        if end <= lo || start >= hi {
            continue;
        }
        if start >= lo {
            whole.push(c);
        } else {
            volume.trim(lo, end.min(hi) - lo, false).await?;
        }
    }
    volume.remove_chunks(&whole)?;
    if r.size < r.from {
        volume.set_size(r.size)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_with_old_numbers_are_duplicates_earlier_ones_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = AppliedResize::load(dir.path(), 0, 1);
        assert!(
            r.is_duplicate(1, 5),
            "a new replica has applied what the metadata counted"
        );
        assert!(!r.is_duplicate(2, 5));
        r.save(2, 5).expect("save");
        assert!(r.is_duplicate(2, 9), "the same resize proposed again");
        assert!(r.is_duplicate(1, 9), "an older one arriving late");
        assert!(!r.is_duplicate(2, 5), "the entry itself, replayed");
        assert!(!r.is_duplicate(1, 3), "an older entry, replayed");
        assert!(!r.is_duplicate(3, 9));
        r.save(1, 3).expect("a replay keeps the record");
        let back = AppliedResize::load(dir.path(), 0, 0);
        assert_eq!((back.seq, back.index), (2, 5));
    }
}
