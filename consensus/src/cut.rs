//! The replica side of comparing a shard's replicas (`verify`): the state a
//! consistent cut leaves on each replica. Every replica records its
//! checksum tables when it applies a `Cut` entry (`CutRegistry`, until the
//! comparing node collects them), and its apply task tracks which blocks
//! were written after the cut (`OpenCut`), so a repair never undoes a later
//! write. Kept apart from the comparison itself, which routes requests
//! through `Cluster`, so the driver and the apply tasks do not depend on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftblock_storage::BLOCK_SIZE;

/// Cut tables nobody collected are dropped after this long.
const CUT_TTL: Duration = Duration::from_secs(600);
/// A cut older than this many entries is closed by every replica alike
/// (deterministically, by log index), should its `CutEnd` never come.
pub(crate) const CUT_MAX_ENTRIES: u64 = 1_000_000;

/// One replica's checksum tables at a cut.
pub struct CutTables {
    /// `(chunk, table)`; `None`: no data in the chunk.
    pub sums: HashMap<u64, Option<Vec<u32>>>,
    recorded: Instant,
}

impl CutTables {
    /// Tables collected now.
    pub(crate) fn new(sums: HashMap<u64, Option<Vec<u32>>>) -> CutTables {
        CutTables {
            sums,
            recorded: Instant::now(),
        }
    }
}

/// The cut tables this node's replicas recorded, until collected.
#[derive(Default)]
pub struct CutRegistry {
    cuts: Mutex<HashMap<(u64, u64), Arc<CutTables>>>,
}

impl CutRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<CutTables>>> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records group `group`'s tables at cut `id`.
    pub fn record(&self, group: u64, id: u64, sums: HashMap<u64, Option<Vec<u32>>>) {
        let mut cuts = self.lock();
        cuts.retain(|_, t| t.recorded.elapsed() < CUT_TTL);
        cuts.insert((group, id), Arc::new(CutTables::new(sums)));
    }

    /// The tables of cut `id` of `group`, once recorded.
    pub fn get(&self, group: u64, id: u64) -> Option<Arc<CutTables>> {
        self.lock().get(&(group, id)).cloned()
    }

    /// Forgets cut `id` of `group`.
    pub fn remove(&self, group: u64, id: u64) {
        self.lock().remove(&(group, id));
    }
}

/// The cut a shard replica's apply task keeps open: which blocks were
/// written after it (a bit per block of each touched chunk).
pub(crate) struct OpenCut {
    pub(crate) id: u64,
    pub(crate) index: u64,
    chunk_size: u64,
    written: HashMap<u64, Vec<u64>>,
}

impl OpenCut {
    pub(crate) fn new(id: u64, index: u64, chunk_size: u64) -> OpenCut {
        OpenCut {
            id,
            index,
            chunk_size,
            written: HashMap::new(),
        }
    }

    /// Notes that `[offset, offset + len)` was written after the cut.
    pub(crate) fn mark(&mut self, offset: u64, len: u64) {
        let words = (self.chunk_size / BLOCK_SIZE).div_ceil(64) as usize;
        let end = offset.saturating_add(len);
        let mut b = offset / BLOCK_SIZE;
        while b * BLOCK_SIZE < end {
            let pos = b * BLOCK_SIZE;
            let (chunk, blk) = (pos / self.chunk_size, (pos % self.chunk_size) / BLOCK_SIZE);
            let bits = self.written.entry(chunk).or_insert_with(|| vec![0; words]);
            if let Some(w) = bits.get_mut((blk / 64) as usize) {
                *w |= 1 << (blk % 64);
            }
            b += 1;
        }
    }

    /// Whether the block at `offset` was written after the cut.
    pub(crate) fn written(&self, offset: u64) -> bool {
        let (chunk, blk) = (
            offset / self.chunk_size,
            (offset % self.chunk_size) / BLOCK_SIZE,
        );
        self.written
            .get(&chunk)
            .and_then(|bits| bits.get((blk / 64) as usize))
            .is_some_and(|w| w & (1 << (blk % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_cut_remembers_the_blocks_written_after_it() {
        let mut c = OpenCut::new(1, 10, 1 << 20);
        c.mark(4096 * 3 + 100, 10);
        c.mark((1 << 20) - 4096, 8192); // spans two chunks
        assert!(c.written(4096 * 3));
        assert!(!c.written(4096 * 2) && !c.written(4096 * 4));
        assert!(c.written((1 << 20) - 4096) && c.written(1 << 20));
        assert!(!c.written((1 << 20) + 4096));
    }
}
