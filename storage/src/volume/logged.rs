//! A volume's blocks whose newest data is only in the Raft log (see
//! `crate::logged`): recording a large write by reference instead of
//! writing it, reading such blocks back from the log, and settling them into
//! their chunk files. Every change to a block's record happens under the
//! block's stripe lock, as writes do, so a read sees either the record and
//! the log entry it names, or the chunk file with its checksum slot.

use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::LocalVolume;
use crate::checksum;
use crate::chunk::Chunk;
use crate::logged::{runs, LogRef, LoggedBlock, Run};
use crate::{Result, StorageError, TailBytes, Wal, WalError, BLOCK_SIZE};

/// What a volume's logged blocks in some chunks amount to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoggedSummary {
    /// Logged blocks.
    pub blocks: u64,
    /// The oldest log entry they need.
    pub lowest_index: Option<u64>,
}

impl LocalVolume {
    /// Records the block-aligned write of `data` at `offset`, whose bytes
    /// the node's log `wal` holds at `at`, instead of writing them: reads
    /// take them from the log until they settle. Returns `false`, having
    /// changed nothing, when the write is not block-aligned or the log does
    /// not hold the entry as `at` says; the caller then writes it.
    pub async fn write_logged(
        &self,
        wal: &Arc<Wal>,
        offset: u64,
        data: &Bytes,
        at: LogRef,
    ) -> Result<bool> {
        let len = data.len() as u64;
        if len == 0 || !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
            return Ok(false);
        }
        self.check_range(offset, len)?;
        // The entry is normally still cached when it is applied: then check
        // that it holds these very bytes where `at` says (a mistaken offset
        // would otherwise only show as checksum errors on every replica).
        match wal.locate_tail(at.group, at.index, at.from_end, data.len()) {
            Ok(TailBytes::Cached(b)) if b.as_ptr() == data.as_ptr() || b == *data => {}
            Ok(TailBytes::OnDisk { .. }) => {}
            _ => return Ok(false),
        }
        let log = self.log.get_or_init(|| wal.clone());
        if !Arc::ptr_eq(log, wal) {
            return Ok(false);
        }
        for p in self.pieces(offset, len) {
            let c = self
                .chunk(p.chunk, true)?
                .ok_or_else(|| StorageError::Catalog("chunk vanished".into()))?;
            let piece = data.slice(p.at as usize..(p.at + p.len) as usize);
            let crcs: Vec<u32> = piece
                .chunks(BLOCK_SIZE as usize)
                .map(checksum::block_slot)
                .collect();
            let _g = self.locks.lock(c.index, p.off, p.len).await;
            c.logged
                .insert(p.off / BLOCK_SIZE, at.advance(p.at / BLOCK_SIZE), &crcs);
        }
        self.stats.logged_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(true)
    }

    /// Bytes of the volume's blocks whose newest data is only in the log.
    pub fn logged_bytes_now(&self) -> u64 {
        let open = super::lock(&self.chunks);
        open.values().map(|c| c.logged.len() as u64).sum::<u64>() * BLOCK_SIZE
    }

    /// The logged blocks of chunks `chunks` (open ones; others have none).
    pub fn logged_summary(&self, chunks: &[u64]) -> LoggedSummary {
        let open = super::lock(&self.chunks);
        let mut s = LoggedSummary::default();
        for c in chunks.iter().filter_map(|i| open.get(i)) {
            s.blocks += c.logged.len() as u64;
            if let Some(i) = c.logged.lowest_index() {
                s.lowest_index = Some(s.lowest_index.map_or(i, |l| l.min(i)));
            }
        }
        s
    }

    /// Moves the logged blocks of chunks `chunks` whose entries are at or
    /// below `upto` into their chunk files (not synced: the caller flushes
    /// before it lets the log go). Returns the bytes moved. A block written
    /// again meanwhile is left to its newer data.
    pub async fn settle(&self, chunks: &[u64], upto: u64) -> Result<u64> {
        let open: Vec<Arc<Chunk>> = {
            let map = super::lock(&self.chunks);
            chunks.iter().filter_map(|i| map.get(i).cloned()).collect()
        };
        let mut moved = 0;
        let mut failed = None;
        for c in open {
            let blocks = self.meta.chunk_size / BLOCK_SIZE;
            let due: Vec<(u64, LoggedBlock)> = c
                .logged
                .range(0, blocks)
                .into_iter()
                .filter(|(_, l)| l.at.index <= upto)
                .collect();
            for run in runs(0, blocks, &due) {
                let Run::Log(b0, b1, _) = run else { continue };
                let _g = self
                    .locks
                    .lock(c.index, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE)
                    .await;
                // Only what is still recorded as it was: a newer write of a
                // block already replaced it.
                let now = c.logged.range(b0, b1);
                let still: Vec<(u64, LoggedBlock)> = now
                    .into_iter()
                    .filter(|(b, l)| {
                        due.binary_search_by_key(b, |d| d.0)
                            .is_ok_and(|i| due[i].1 == *l)
                    })
                    .collect();
                for run in runs(b0, b1, &still) {
                    let Run::Log(s, e, at) = run else { continue };
                    let data = match self.read_log_run(&c, s, e, at, &still).await {
                        Ok(Ok(d)) => d,
                        // Left logged for repair; the others still move.
                        Ok(Err(bad)) => {
                            failed = Some(self.checksum_err(c.index, bad));
                            continue;
                        }
                        Err(err) => {
                            failed = Some(err);
                            continue;
                        }
                    };
                    self.put_blocks(&c, s * BLOCK_SIZE, data).await?;
                    moved += (e - s) * BLOCK_SIZE;
                    self.stats
                        .settled_bytes
                        .fetch_add((e - s) * BLOCK_SIZE, Ordering::Relaxed);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// Reads blocks `[b0, b1)` of `c` that hold data, each from where its
    /// newest bytes are, verified; retried once under the stripe lock, so
    /// a read racing a write or a settle of the same blocks is not taken
    /// for corruption.
    pub(super) async fn read_run(
        &self,
        c: &Arc<Chunk>,
        b0: u64,
        b1: u64,
        locked: bool,
    ) -> Result<Bytes> {
        let logged = c.logged.range(b0, b1);
        self.read_run_known(c, b0, b1, &logged, locked).await
    }

    /// [`LocalVolume::read_run`] for a caller that has just looked up the
    /// logged blocks among `[b0, b1)` (`logged`, in block order).
    pub(super) async fn read_run_known(
        &self,
        c: &Arc<Chunk>,
        b0: u64,
        b1: u64,
        logged: &[(u64, LoggedBlock)],
        locked: bool,
    ) -> Result<Bytes> {
        if logged.is_empty() {
            return self.read_verified(c, b0, b1, locked).await.map(Bytes::from);
        }
        let first = self.read_mixed(c, b0, b1, logged).await;
        if let Ok(Ok(b)) = first {
            return Ok(b);
        }
        // Once more, under the lock: a racing write or settle changed the
        // blocks, or a segment rotation recycled the file the entry was in
        // (the log has it elsewhere now). Locked, nothing races but the
        // rotation, which a second look at the log's index settles.
        let _g = match locked {
            true => None,
            false => Some(
                self.locks
                    .lock(c.index, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE)
                    .await,
            ),
        };
        let logged = c.logged.range(b0, b1);
        match self.read_mixed(c, b0, b1, &logged).await? {
            Ok(b) => Ok(b),
            Err(bad) => Err(self.checksum_err(c.index, bad)),
        }
    }

    /// Blocks `[b0, b1)` from the chunk file and the log (`logged` are the
    /// logged ones among them); `Err(block)` names the first that fails
    /// its checksum.
    async fn read_mixed(
        &self,
        c: &Arc<Chunk>,
        b0: u64,
        b1: u64,
        logged: &[(u64, LoggedBlock)],
    ) -> Result<std::result::Result<Bytes, u64>> {
        let runs = runs(b0, b1, logged);
        if let [Run::Log(s, e, at)] = runs[..] {
            // All from one entry: no copy.
            return self.read_log_run(c, s, e, at, logged).await;
        }
        let mut out = Vec::with_capacity(((b1 - b0) * BLOCK_SIZE) as usize);
        for run in runs {
            let part = match run {
                Run::Chunk(s, e) => self.read_blocks(c, s, e).await?.map(Bytes::from),
                Run::Log(s, e, at) => self.read_log_run(c, s, e, at, logged).await?,
            };
            match part {
                Ok(b) => out.extend_from_slice(&b),
                Err(bad) => return Ok(Err(bad)),
            }
        }
        Ok(Ok(out.into()))
    }

    /// Blocks `[b0, b1)`, contiguous in one log entry from `at` on, checked
    /// against their sums in `logged`.
    async fn read_log_run(
        &self,
        c: &Arc<Chunk>,
        b0: u64,
        b1: u64,
        at: LogRef,
        logged: &[(u64, LoggedBlock)],
    ) -> Result<std::result::Result<Bytes, u64>> {
        let len = ((b1 - b0) * BLOCK_SIZE) as usize;
        let log_err = |source: WalError| StorageError::Log {
            volume: self.meta.name.clone(),
            chunk: c.index,
            offset: c.index * self.meta.chunk_size + b0 * BLOCK_SIZE,
            source,
        };
        let wal = self.log.get().ok_or_else(|| {
            log_err(WalError::Missing {
                group: at.group,
                low: at.index,
                high: at.index + 1,
                first: 0,
                end: 0,
            })
        })?;
        let data = match wal
            .locate_tail(at.group, at.index, at.from_end, len)
            .map_err(log_err)?
        {
            TailBytes::Cached(b) => b,
            TailBytes::OnDisk { file, path, offset } => self
                .engine
                .read_at(&file, len, offset)
                .await
                .map(Bytes::from)
                .map_err(|e| {
                    log_err(WalError::Io {
                        path,
                        op: "read a logged block",
                        source: e,
                    })
                })?,
        };
        if data.len() != len {
            return Ok(Err(b0));
        }
        for (i, block) in data.chunks_exact(BLOCK_SIZE as usize).enumerate() {
            let b = b0 + i as u64;
            let crc = logged
                .binary_search_by_key(&b, |l| l.0)
                .map(|i| logged[i].1.crc);
            if !crc.is_ok_and(|crc| checksum::verify(crc, block)) {
                return Ok(Err(b));
            }
        }
        Ok(Ok(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CHECKSUM_SCHEME;
    use crate::{Engine, EngineKind, EntryBytes, ReadSegment, VolumeIo, VolumeMeta, WalBatch};

    const MIB: u64 = 1 << 20;

    fn volume(dir: &std::path::Path) -> LocalVolume {
        let meta = VolumeMeta {
            id: 1,
            name: "t".into(),
            size: 4 * MIB,
            chunk_size: MIB,
            created_unix: 0,
            checksum: CHECKSUM_SCHEME.into(),
        };
        let engine = Engine::start(Some(EngineKind::Threads), 2).expect("engine");
        LocalVolume::new(meta, dir.to_path_buf(), engine)
    }

    async fn read(v: &LocalVolume, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in v.read(offset, len).await.expect("read") {
            match s {
                ReadSegment::Data(b) => out.extend_from_slice(&b),
                ReadSegment::Hole(n) => out.extend(std::iter::repeat_n(0, n as usize)),
            }
        }
        out
    }

    /// A node's log and a volume in a fresh directory (kept while the
    /// `TempDir` lives).
    fn setup() -> (tempfile::TempDir, Arc<Wal>, std::path::PathBuf, LocalVolume) {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = Arc::new(Wal::open(&dir.path().join("wal"), Default::default()).expect("wal"));
        let data_dir = dir.path().join("v");
        std::fs::create_dir_all(&data_dir).expect("mkdir");
        let v = volume(&data_dir);
        (dir, wal, data_dir, v)
    }

    /// Appends an entry made of a small header and `payload` to the log.
    fn log_entry(wal: &Wal, group: u64, index: u64, payload: &Bytes) {
        let mut batch = WalBatch::new();
        let entry = EntryBytes {
            head: Bytes::from_static(b"header"),
            body: payload.clone(),
        };
        batch.append(group, [(index, 1, entry)]);
        wal.write(batch, true).expect("log write");
    }

    fn pattern(seed: u8, len: usize) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>()
            .into()
    }

    fn at(index: u64, payload: &Bytes) -> LogRef {
        LogRef {
            group: 9,
            index,
            from_end: payload.len() as u64,
        }
    }

    #[tokio::test]
    async fn logged_blocks_read_from_the_log_until_they_settle() {
        let (_dir, wal, data_dir, v) = setup();
        // 256 KiB across the boundary of chunks 0 and 1.
        let off = MIB - 128 * 1024;
        let payload = pattern(1, 256 * 1024);
        log_entry(&wal, 9, 1, &payload);
        assert!(v
            .write_logged(&wal, off, &payload, at(1, &payload))
            .await
            .expect("logged"));
        let mut expect = vec![0u8; 4 * MIB as usize];
        expect[off as usize..off as usize + payload.len()].copy_from_slice(&payload);
        assert_eq!(read(&v, 0, 4 * MIB).await, expect, "from the log's cache");
        wal.evict_cache(9, 2);
        assert_eq!(
            read(&v, off, 256 * 1024).await,
            &expect[off as usize..][..256 * 1024],
            "from disk"
        );
        // Nothing reached the chunk files.
        assert_eq!(
            v.logged_summary(&[0, 1]),
            LoggedSummary {
                blocks: 64,
                lowest_index: Some(1)
            }
        );
        let sums = v.chunk_sums(0).expect("sums").expect("data");
        assert_eq!(
            sums[255],
            checksum::block_slot(&payload[124 * 1024..128 * 1024])
        );

        // A small unaligned write over a logged block, and a trim.
        v.write(off + 5000, Bytes::from_static(b"xyz"), false)
            .await
            .expect("write");
        expect[(off + 5000) as usize..][..3].copy_from_slice(b"xyz");
        v.trim(off + 64 * 1024, 8192, false).await.expect("trim");
        expect[(off + 64 * 1024) as usize..][..8192].fill(0);
        assert_eq!(read(&v, 0, 4 * MIB).await, expect);
        assert_eq!(v.logged_summary(&[0, 1]).blocks, 61);
        let status = v.block_status(off, 256 * 1024).await.expect("status");
        assert_eq!(
            status.iter().filter(|e| e.hole).map(|e| e.len).sum::<u64>(),
            8192
        );

        // Settling moves what is left into the chunk files, which keep it.
        let moved = v.settle(&[0, 1], 1).await.expect("settle");
        assert_eq!(moved, 61 * BLOCK_SIZE);
        assert_eq!(v.logged_summary(&[0, 1]), LoggedSummary::default());
        assert_eq!(read(&v, 0, 4 * MIB).await, expect);
        v.flush().await.expect("flush");
        drop(v);
        let v = volume(&data_dir);
        assert_eq!(read(&v, 0, 4 * MIB).await, expect, "after reopening");
    }

    #[tokio::test]
    async fn settling_leaves_newer_data_and_a_bad_log_copy_is_an_error() {
        let (_dir, wal, _data_dir, v) = setup();
        let old = pattern(2, 128 * 1024);
        let new = pattern(3, 128 * 1024);
        log_entry(&wal, 9, 1, &old);
        log_entry(&wal, 9, 2, &new);
        assert!(v
            .write_logged(&wal, 0, &old, at(1, &old))
            .await
            .expect("logged"));
        assert!(v
            .write_logged(&wal, 64 * 1024, &new, at(2, &new))
            .await
            .expect("logged"));
        // Only entry 1's blocks settle; entry 2's stay in the log.
        assert_eq!(v.settle(&[0], 1).await.expect("settle"), 64 * 1024);
        assert_eq!(
            v.logged_summary(&[0]),
            LoggedSummary {
                blocks: 32,
                lowest_index: Some(2)
            }
        );
        let mut expect = old.to_vec();
        expect.resize(192 * 1024, 0);
        expect[64 * 1024..].copy_from_slice(&new);
        assert_eq!(read(&v, 0, 192 * 1024).await, expect);

        // Not block-aligned, or not in the log as said: refused, unchanged.
        assert!(!v
            .write_logged(&wal, 512, &old, at(1, &old))
            .await
            .expect("unaligned"));
        let too_far = LogRef {
            from_end: 1 << 30,
            ..at(1, &old)
        };
        assert!(!v
            .write_logged(&wal, 0, &old, too_far)
            .await
            .expect("beyond"));
        assert!(!v
            .write_logged(&wal, 0, &old, at(7, &old))
            .await
            .expect("no entry"));

        // While the entry is cached, a record naming bytes that are not the
        // write's is refused. From disk it is taken, and a record whose log
        // bytes are not the data it claims reads as a checksum error, not
        // as wrong data; settling leaves it (and moves the rest).
        assert!(!v
            .write_logged(&wal, MIB, &new, at(1, &old))
            .await
            .expect("checked against the cache"));
        wal.evict_cache(9, 3);
        assert!(v
            .write_logged(&wal, MIB, &new, at(1, &old))
            .await
            .expect("logged"));
        let err = v.read(MIB, 4096).await.expect_err("bad copy");
        assert!(err.is_checksum(), "{err}");
        assert!(v.settle(&[0, 1], 2).await.is_err());
        assert_eq!(v.logged_summary(&[0]).blocks, 0, "chunk 0 settled");
        assert_eq!(v.logged_summary(&[1]).blocks, 32, "chunk 1 left");
        assert_eq!(
            v.scrub_chunk(1, &crate::pace::TokenBucket::new(0))
                .await
                .expect("scrub"),
            (0..32).map(|b| MIB + b * BLOCK_SIZE).collect::<Vec<_>>()
        );
        // A good copy from elsewhere repairs it into the chunk file.
        assert!(v
            .repair_block(MIB, new.slice(..4096))
            .await
            .expect("repair"));
        assert_eq!(read(&v, MIB, 4096).await, &new[..4096]);
    }
}
