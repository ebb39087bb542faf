//! The attach-epoch fence of one shard replica: the epochs of the Fence
//! entries it applied, with their log indexes, kept in a small file beside
//! the volume's chunks. Writes whose epoch is below the current fence are
//! refused when applied, on every replica alike (the decision depends only
//! on the log). The file outlives log compaction, and the history lets a
//! shard snapshot carry the fence that held at its own index.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Writes refused by this process's replicas (for `/metrics`).
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many writes this process's shard replicas refused as fenced.
pub fn refused_writes() -> u64 {
    REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts a refused write.
pub fn count_refused() {
    REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Fences remembered per replica (only the latest matters for new writes;
/// older ones answer snapshots taken at older indexes).
const KEEP: usize = 8;

/// `(log index, epoch)` of the Fence entries a shard replica applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceHistory {
    /// Oldest first; epochs increase.
    pub fences: Vec<(u64, u64)>,
}

impl FenceHistory {
    /// Where shard `index`'s fence lives in the volume directory `dir`.
    pub fn path(dir: &Path, shard: u32) -> PathBuf {
        dir.join(format!("fence-{shard}.json"))
    }

    /// Loads the history (empty when there is none yet).
    pub fn load(path: &Path) -> Result<FenceHistory, crate::meta::StateFileError> {
        crate::meta::load_json(path)
    }

    /// Saves it durably (a crash leaves the old or the new file).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::meta::write_atomic(path, &data)
    }

    /// The epoch writes must reach now (0: never fenced).
    pub fn current(&self) -> u64 {
        self.fences.last().map_or(0, |f| f.1)
    }

    /// The fence that held after applying log index `index`.
    pub fn at(&self, index: u64) -> u64 {
        self.fences
            .iter()
            .rev()
            .find(|f| f.0 <= index)
            .map_or(0, |f| f.1)
    }

    /// Records a fence at `index`; false if it does not raise the epoch.
    pub fn record(&mut self, index: u64, epoch: u64) -> bool {
        if epoch <= self.current() {
            return false;
        }
        self.fences.push((index, epoch));
        if self.fences.len() > KEEP {
            self.fences.remove(0);
        }
        true
    }

    /// Whether a write with `epoch` at log index `index` must be refused:
    /// its epoch is below the fence in force at that index (epoch 0:
    /// unfenced writers such as plain NBD clients). Deciding by the entry's
    /// own index keeps a replay after a crash (entries since the last
    /// durable applied index, some of them before a fence the file already
    /// holds) deciding exactly as the first apply did.
    pub fn refuses(&self, epoch: u64, index: u64) -> bool {
        epoch != 0 && epoch < self.at(index)
    }
}

/// Marker data of a shard snapshot: says the data is copied from the
/// leader's chunks, and carries the fence at the snapshot's index.
pub fn snapshot_marker(fence: u64) -> Vec<u8> {
    format!("raftblock shard chunks; fence={fence}").into_bytes()
}

/// The fence a shard snapshot's marker carries (0 for markers without one).
pub fn fence_of_marker(data: &[u8]) -> u64 {
    std::str::from_utf8(data)
        .ok()
        .and_then(|s| s.split("fence=").nth(1))
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_answers_by_index_and_survives_a_reload() {
        let mut h = FenceHistory::default();
        assert!(!h.refuses(5, 1));
        assert!(h.record(10, 2));
        assert!(!h.record(11, 2), "same epoch is no new fence");
        assert!(h.record(20, 3));
        assert!(h.refuses(2, 21) && !h.refuses(3, 21) && !h.refuses(0, 21));
        // Replayed entries from before the fence decide as they did then.
        assert!(!h.refuses(2, 15) && h.refuses(1, 15) && !h.refuses(1, 9));
        assert_eq!((h.at(9), h.at(10), h.at(19), h.at(25)), (0, 2, 2, 3));
        for i in 0..20 {
            h.record(100 + i, 10 + i);
        }
        assert_eq!(h.fences.len(), KEEP);
        let dir = tempfile::tempdir().expect("tmp");
        let p = FenceHistory::path(dir.path(), 4);
        h.save(&p).expect("save");
        assert_eq!(FenceHistory::load(&p).expect("load"), h);
        assert_eq!(fence_of_marker(&snapshot_marker(7)), 7);
        assert_eq!(fence_of_marker(b"raftblock shard chunks"), 0);
    }
}
