//! Blocks whose newest data is only in the Raft log. A large replicated
//! write is not copied into its chunk file when it is applied: the chunk
//! records, per 4 KiB block, the log entry that holds the block
//! ([`LogRef`]) and the block's checksum, and reads take the block from the
//! log. The block moves into the chunk file later ("settling", see
//! `volume::logged`), or never, when a newer write replaces it first; so a
//! large write reaches this node's disk once, in the log, on the hot path.
//!
//! Nothing on disk records that a block is logged: the chunk file and its
//! checksum slots keep the older version, consistent with each other. The
//! log keeps the entry because the shard's durable applied index, from
//! which a restart replays, is held below the oldest logged entry until
//! the block settles; after a crash the replay records the blocks again.
//! The crash argument is written out in docs/write-path.md.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::BLOCK_SIZE;

/// Where a block's data is in the log: `from_end` bytes before the end of
/// entry `index` of Raft group `group` as the log stores it (a write's
/// payload is the last field of its entry, so the offset from the end does
/// not depend on how the entry's header was encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRef {
    /// The shard's Raft group.
    pub group: u64,
    /// The entry's index.
    pub index: u64,
    /// Bytes from the block's first byte to the end of the stored entry.
    pub from_end: u64,
}

impl LogRef {
    /// The place of the block `blocks` blocks after this one.
    pub fn advance(self, blocks: u64) -> LogRef {
        LogRef {
            from_end: self.from_end - blocks * BLOCK_SIZE,
            ..self
        }
    }

    /// Whether `next` is the block right after this one in the same entry.
    pub fn precedes(&self, next: &LogRef) -> bool {
        self.group == next.group
            && self.index == next.index
            && self.from_end == next.from_end + BLOCK_SIZE
    }
}

/// One logged block: where its data is and its checksum slot value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedBlock {
    /// Where the block's bytes are.
    pub at: LogRef,
    /// Its checksum, as the chunk's slot would hold it.
    pub crc: u32,
}

#[derive(Default)]
struct Table {
    blocks: BTreeMap<u64, LoggedBlock>,
    /// Logged blocks per entry index: the oldest entry still needed.
    by_index: BTreeMap<u64, u32>,
}

impl Table {
    fn forget(&mut self, index: u64) {
        if let Some(n) = self.by_index.get_mut(&index) {
            *n -= 1;
            if *n == 0 {
                self.by_index.remove(&index);
            }
        }
    }
}

/// The logged blocks of one chunk, by block number within the chunk.
#[derive(Default)]
pub struct LoggedBlocks {
    table: Mutex<Table>,
    /// Blocks in the table, read without the lock on every read path.
    count: AtomicUsize,
}

impl LoggedBlocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no block of the chunk is logged (the common case, no lock).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Number of logged blocks.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Records blocks `first..first + crcs.len()` as held by the log from
    /// `at` on (block `first + i` at `at.advance(i)`), replacing what was
    /// recorded for them.
    pub fn insert(&self, first: u64, at: LogRef, crcs: &[u32]) {
        let mut t = self.lock();
        for (i, &crc) in crcs.iter().enumerate() {
            let b = first + i as u64;
            let block = LoggedBlock {
                at: at.advance(i as u64),
                crc,
            };
            if let Some(old) = t.blocks.insert(b, block) {
                t.forget(old.at.index);
            }
        }
        if !crcs.is_empty() {
            *t.by_index.entry(at.index).or_default() += crcs.len() as u32;
        }
        self.count.store(t.blocks.len(), Ordering::Release);
    }

    /// Forgets blocks `[b0, b1)` (their data is in the chunk file now).
    pub fn remove(&self, b0: u64, b1: u64) {
        if self.is_empty() || b0 >= b1 {
            return;
        }
        let mut t = self.lock();
        let gone: Vec<u64> = t.blocks.range(b0..b1).map(|(b, _)| *b).collect();
        for b in gone {
            if let Some(old) = t.blocks.remove(&b) {
                t.forget(old.at.index);
            }
        }
        self.count.store(t.blocks.len(), Ordering::Release);
    }

    /// Forgets block `b` if it is still recorded as `expect`; whether it was.
    pub fn remove_if(&self, b: u64, expect: &LoggedBlock) -> bool {
        let mut t = self.lock();
        if t.blocks.get(&b) != Some(expect) {
            return false;
        }
        t.blocks.remove(&b);
        t.forget(expect.at.index);
        self.count.store(t.blocks.len(), Ordering::Release);
        true
    }

    /// The logged blocks in `[b0, b1)`, in block order.
    pub fn range(&self, b0: u64, b1: u64) -> Vec<(u64, LoggedBlock)> {
        if self.is_empty() || b0 >= b1 {
            return Vec::new();
        }
        self.lock()
            .blocks
            .range(b0..b1)
            .map(|(b, l)| (*b, *l))
            .collect()
    }

    /// The lowest entry index any logged block still needs.
    pub fn lowest_index(&self) -> Option<u64> {
        if self.is_empty() {
            return None;
        }
        self.lock().by_index.keys().next().copied()
    }
}

/// A stretch of blocks `[start, end)` read the same way: from the chunk
/// file, or from one log entry (`Log(first block's place)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// From the chunk file.
    Chunk(u64, u64),
    /// From the log, contiguous in one entry.
    Log(u64, u64, LogRef),
}

/// Cuts `[b0, b1)` into runs, given the logged blocks in it (block order).
pub fn runs(b0: u64, b1: u64, logged: &[(u64, LoggedBlock)]) -> Vec<Run> {
    let mut out = Vec::new();
    let mut b = b0;
    let mut i = 0;
    while b < b1 {
        match logged.get(i) {
            Some((lb, l)) if *lb == b => {
                let mut end = b + 1;
                let mut last = l.at;
                i += 1;
                while let Some((nb, n)) = logged.get(i) {
                    if *nb != end || end >= b1 || !last.precedes(&n.at) {
                        break;
                    }
                    last = n.at;
                    end += 1;
                    i += 1;
                }
                out.push(Run::Log(b, end, l.at));
                b = end;
            }
            next => {
                let end = next.map_or(b1, |(nb, _)| (*nb).min(b1));
                out.push(Run::Chunk(b, end));
                b = end;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u64, from_end: u64) -> LogRef {
        LogRef {
            group: 7,
            index,
            from_end,
        }
    }

    #[test]
    fn insert_replace_remove_track_the_oldest_entry() {
        let t = LoggedBlocks::default();
        assert!(t.is_empty());
        t.insert(4, at(10, 4 * BLOCK_SIZE), &[1, 2, 3, 4]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.lowest_index(), Some(10));
        // A newer entry over two of them.
        t.insert(6, at(11, 2 * BLOCK_SIZE), &[5, 6]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.lowest_index(), Some(10));
        let r = t.range(0, 100);
        assert_eq!(r[1].1.at, at(10, 3 * BLOCK_SIZE));
        assert_eq!(
            r[2].1,
            LoggedBlock {
                at: at(11, 2 * BLOCK_SIZE),
                crc: 5
            }
        );
        // The chunk file takes the rest of entry 10.
        t.remove(4, 6);
        assert_eq!(t.lowest_index(), Some(11));
        assert!(!t.remove_if(
            6,
            &LoggedBlock {
                at: at(10, 0),
                crc: 5
            }
        ));
        assert!(t.remove_if(6, &r[2].1));
        t.remove(0, 100);
        assert!(t.is_empty());
        assert_eq!(t.lowest_index(), None);
    }

    #[test]
    fn runs_split_by_source_and_entry() {
        let t = LoggedBlocks::default();
        t.insert(2, at(10, 3 * BLOCK_SIZE), &[1, 2, 3]);
        t.insert(5, at(11, 2 * BLOCK_SIZE), &[4, 5]);
        let logged = t.range(0, 10);
        assert_eq!(
            runs(0, 10, &logged),
            vec![
                Run::Chunk(0, 2),
                Run::Log(2, 5, at(10, 3 * BLOCK_SIZE)),
                Run::Log(5, 7, at(11, 2 * BLOCK_SIZE)),
                Run::Chunk(7, 10),
            ]
        );
        let logged = t.range(3, 6);
        assert_eq!(
            runs(3, 6, &logged),
            vec![
                Run::Log(3, 5, at(10, 2 * BLOCK_SIZE)),
                Run::Log(5, 6, at(11, 2 * BLOCK_SIZE)),
            ]
        );
        assert_eq!(runs(0, 3, &[]), vec![Run::Chunk(0, 3)]);
    }
}
