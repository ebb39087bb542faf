//! A volume stored on this node: maps volume offsets to chunks, reads with
//! checksum verification, writes data and checksum slots together under a
//! stripe lock, punches holes for TRIM and WRITE_ZEROES, and tracks which
//! chunks need an fdatasync at the next FLUSH. Blocks of large replicated
//! writes may still be only in the Raft log; `logged` records, reads and
//! settles them.

mod logged;
pub use logged::LoggedSummary;

use bytes::Bytes;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::checksum::{self, HOLE};
use crate::chunk::Chunk;
use crate::io::{zeros, Extent, ReadSegment, VolumeIo, ZeroMode, ZERO_RUN};
use crate::locks::StripeLocks;
use crate::pace::TokenBucket;
use crate::{Engine, Result, StorageError, VolumeMeta, Wal, BLOCK_SIZE};

/// Counters a volume keeps about itself.
#[derive(Debug, Default)]
pub struct VolumeStats {
    /// Blocks whose contents did not match their checksum when read.
    pub checksum_errors: AtomicU64,
    /// Device I/O errors.
    pub io_errors: AtomicU64,
    /// Bytes of writes applied by leaving them in the Raft log.
    pub logged_bytes: AtomicU64,
    /// Bytes of logged blocks moved into their chunk files since.
    pub settled_bytes: AtomicU64,
}

/// A volume whose chunks live in one directory on this node.
pub struct LocalVolume {
    meta: VolumeMeta,
    /// The size this node holds the volume at (`meta.size` is the size it
    /// was opened with); see [`LocalVolume::cover`].
    size: AtomicU64,
    /// Held while the size is being persisted, so two changes do not race.
    size_file: Mutex<()>,
    dir: PathBuf,
    engine: Engine,
    chunks: Mutex<HashMap<u64, Arc<Chunk>>>,
    locks: StripeLocks,
    handles: AtomicUsize,
    stats: VolumeStats,
    /// The node's Raft log, once a block was recorded as held by it.
    log: OnceLock<Arc<Wal>>,
}

/// One piece of a request that falls inside a single chunk.
#[derive(Debug, Clone, Copy)]
struct Piece {
    chunk: u64,
    /// Offset within the chunk.
    off: u64,
    len: u64,
    /// Offset of the piece within the request.
    at: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalVolume {
    /// Opens the volume stored in `dir`.
    pub fn new(meta: VolumeMeta, dir: PathBuf, engine: Engine) -> LocalVolume {
        LocalVolume {
            size: AtomicU64::new(meta.size),
            size_file: Mutex::new(()),
            meta,
            dir,
            engine,
            chunks: Mutex::new(HashMap::new()),
            locks: StripeLocks::new(),
            handles: AtomicUsize::new(0),
            stats: VolumeStats::default(),
            log: OnceLock::new(),
        }
    }

    /// The directory holding the volume's chunks on this node.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The catalog entry as the volume was opened (its size may have
    /// changed since: [`LocalVolume::size`]).
    pub fn meta(&self) -> &VolumeMeta {
        &self.meta
    }

    /// The size this node holds the volume at.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Grows the size this node holds the volume at to at least `end`, and
    /// records it in `volume.json` before returning (a restart must not
    /// find applied data past the size it reopens with); whether it grew.
    pub fn cover(&self, end: u64) -> Result<bool> {
        if end <= self.size() {
            return Ok(false);
        }
        let _g = lock(&self.size_file);
        if end <= self.size() {
            return Ok(false);
        }
        self.persist_size(end)?;
        self.size.store(end, Ordering::Release);
        Ok(true)
    }

    /// Sets the size to `size` (a shrink: the caller cleared what lies
    /// past it), recorded in `volume.json`.
    pub fn set_size(&self, size: u64) -> Result<()> {
        let _g = lock(&self.size_file);
        if size != self.size() {
            self.persist_size(size)?;
            self.size.store(size, Ordering::Release);
        }
        Ok(())
    }

    fn persist_size(&self, size: u64) -> Result<()> {
        let meta = VolumeMeta {
            size,
            ..self.meta.clone()
        };
        crate::catalog::write_volume_json(&self.dir, &meta).map_err(|source| StorageError::Io {
            volume: self.meta.name.clone(),
            chunk: 0,
            op: "record the volume size in volume.json",
            source,
        })?;
        tracing::info!(volume = %self.meta.name, size, "volume size on this node changed");
        Ok(())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &VolumeStats {
        &self.stats
    }

    /// The I/O engine the volume's chunks are read and written with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Closes the open chunks `chunks` and runs `change`, which renames or
    /// removes their files, before any of them can be opened again: the
    /// next use opens whatever files are there then. Opening is locked out
    /// meanwhile, since a chunk opened between the rename of its data file
    /// and that of its checksum table would pair the new data with the old
    /// table, and its checksums would go to a file no longer there.
    pub(crate) fn change_chunk_files<T>(&self, chunks: &[u64], change: impl FnOnce() -> T) -> T {
        let mut map = lock(&self.chunks);
        for c in chunks {
            map.remove(c);
        }
        fail::fail_point!("storage::chunk_files_changing");
        let out = change();
        drop(map);
        out
    }

    /// The checksum table of chunk `chunk` (one slot per 4 KiB block, 0 for
    /// a hole), or `None` when this node holds no data in it: what two
    /// replicas compare to find the chunks that differ.
    pub fn chunk_sums(&self, chunk: u64) -> Result<Option<Vec<u32>>> {
        let Some(c) = self.chunk(chunk, false)? else {
            return Ok(None);
        };
        let blocks = self.meta.chunk_size / BLOCK_SIZE;
        let mut sums: Vec<u32> = (0..blocks).map(|b| c.slot(b)).collect();
        // What the block holds is what it reads as: a logged block's own sum.
        for (b, l) in c.logged.range(0, blocks) {
            sums[b as usize] = l.crc;
        }
        Ok(sums.iter().any(|s| *s != HOLE).then_some(sums))
    }

    /// Number of open handles (NBD connections, attaches).
    pub fn handles(&self) -> usize {
        self.handles.load(Ordering::SeqCst)
    }

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn drop_handle(&self) {
        self.handles.fetch_sub(1, Ordering::SeqCst);
    }

    /// Verifies every block of chunk `chunk` held on this node against its
    /// recorded checksum, reading at the rate `pace` allows; returns the
    /// volume offsets of the blocks that fail (each confirmed once more
    /// under the block lock, so a block being written meanwhile is not
    /// reported).
    pub async fn scrub_chunk(&self, chunk: u64, pace: &TokenBucket) -> Result<Vec<u64>> {
        let Some(c) = self.chunk(chunk, false)? else {
            return Ok(Vec::new());
        };
        let blocks = self
            .size()
            .saturating_sub(chunk * self.meta.chunk_size)
            .min(self.meta.chunk_size)
            / BLOCK_SIZE;
        const BATCH: u64 = 256; // 1 MiB per read
        let mut bad = Vec::new();
        let mut b = 0;
        while b < blocks {
            let end = (b + BATCH).min(blocks);
            if (b..end).all(|i| c.slot(i) == HOLE) && c.logged.range(b, end).is_empty() {
                b = end;
                continue;
            }
            let buf = self
                .engine
                .read_at(&c.data, ((end - b) * BLOCK_SIZE) as usize, b * BLOCK_SIZE)
                .await
                .map_err(|e| self.io_err(chunk, "scrub read", e))?;
            pace.pace((end - b) * BLOCK_SIZE).await;
            let logged = c.logged.range(b, end);
            for (i, block) in buf.chunks_exact(BLOCK_SIZE as usize).enumerate() {
                let blk = b + i as u64;
                let slot = c.slot(blk);
                // A logged block's chunk copy is not what it reads as.
                if slot != HOLE
                    && !checksum::verify(slot, block)
                    && logged.binary_search_by_key(&blk, |l| l.0).is_err()
                {
                    bad.push(blk);
                }
            }
            b = end;
        }
        for (blk, _) in c.logged.range(0, blocks) {
            if self.read_run(&c, blk, blk + 1, false).await.is_err() {
                bad.push(blk);
            }
        }
        let mut confirmed = Vec::new();
        for blk in bad {
            if let Err(StorageError::Checksum { offset, .. }) =
                self.read_run(&c, blk, blk + 1, false).await
            {
                confirmed.push(offset);
            }
        }
        Ok(confirmed)
    }

    /// Rewrites the 4 KiB block at volume offset `offset` with `data` if,
    /// and only if, `data` matches the checksum the block is recorded with:
    /// repairing a block whose stored bytes went bad from a good copy held
    /// elsewhere (another replica), without changing what the block holds.
    /// Returns whether the block was rewritten.
    pub async fn repair_block(&self, offset: u64, data: Bytes) -> Result<bool> {
        if offset & (BLOCK_SIZE - 1) != 0
            || data.len() as u64 != BLOCK_SIZE
            || offset >= self.size()
        {
            return Err(StorageError::OutOfRange {
                volume: self.meta.name.clone(),
                offset,
                len: data.len() as u64,
                size: self.size(),
            });
        }
        let (chunk, off) = (offset / self.meta.chunk_size, offset % self.meta.chunk_size);
        let Some(c) = self.chunk(chunk, false)? else {
            return Ok(false);
        };
        let block = off / BLOCK_SIZE;
        let _g = self.locks.lock(chunk, off, BLOCK_SIZE).await;
        if let Some((_, l)) = c.logged.range(block, block + 1).pop() {
            // The block reads from the log: a good copy goes to the chunk
            // file, which it then reads from.
            if !checksum::verify(l.crc, &data) {
                return Ok(false);
            }
            self.put_blocks(&c, off, data).await?;
        } else {
            let slot = c.slot(block);
            if slot == HOLE || !checksum::verify(slot, &data) {
                return Ok(false);
            }
            self.engine
                .write_at(&c.data, data, off)
                .await
                .map_err(|e| self.io_err(chunk, "repair write", e))?;
            c.dirty.store(true, Ordering::Release);
        }
        tracing::warn!(volume = %self.meta.name, chunk, offset, "repaired a corrupt block from a good copy");
        Ok(true)
    }

    /// Deletes the files of `chunks` (this node no longer holds the shard
    /// they belong to); their blocks left in the log go with them. Returns
    /// how many files were removed.
    pub fn remove_chunks(&self, chunks: &[u64]) -> Result<u64> {
        let removed = self.change_chunk_files(chunks, || {
            let mut removed = 0;
            for &c in chunks {
                for p in [
                    crate::chunk::data_path(&self.dir, c),
                    crate::chunk::crc_path(&self.dir, c),
                ] {
                    match std::fs::remove_file(&p) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => {
                            return Err(StorageError::Io {
                                volume: self.meta.name.clone(),
                                chunk: c,
                                op: "remove chunk file",
                                source,
                            })
                        }
                    }
                }
            }
            Ok(removed)
        })?;
        if removed > 0 {
            crate::staging::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Bytes of blocks that hold data (sparse allocation), over open chunks
    /// and chunk files on disk.
    pub fn allocated_bytes(&self) -> Result<u64> {
        Ok(self.allocated_by_chunk()?.iter().map(|(_, b)| b).sum())
    }

    /// Bytes allocated in each chunk that has a file here, by chunk index
    /// (what a shard's replica holds is the sum over its chunks).
    pub fn allocated_by_chunk(&self) -> Result<Vec<(u64, u64)>> {
        let chunks = self.size().div_ceil(self.meta.chunk_size);
        let mut out = Vec::new();
        for i in 0..chunks {
            if let Some(c) = self.chunk(i, false)? {
                let blocks = self.meta.chunk_size / BLOCK_SIZE;
                let logged_holes = c
                    .logged
                    .range(0, blocks)
                    .iter()
                    .filter(|(b, _)| c.slot(*b) == HOLE)
                    .count() as u64;
                out.push((i, (c.allocated_blocks() + logged_holes) * BLOCK_SIZE));
            }
        }
        Ok(out)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(StorageError::OutOfRange {
                volume: self.meta.name.clone(),
                offset,
                len,
                size: self.size(),
            }),
        }
    }

    fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let cs = self.meta.chunk_size;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / cs;
            let off = pos % cs;
            let plen = (cs - off).min(end - pos);
            out.push(Piece {
                chunk,
                off,
                len: plen,
                at: pos - offset,
            });
            pos += plen;
        }
        out
    }

    fn chunk(&self, index: u64, create: bool) -> Result<Option<Arc<Chunk>>> {
        let mut map = lock(&self.chunks);
        if let Some(c) = map.get(&index) {
            return Ok(Some(c.clone()));
        }
        match Chunk::open(&self.dir, index, self.meta.chunk_size, create) {
            Ok(Some(c)) => {
                let c = Arc::new(c);
                map.insert(index, c.clone());
                Ok(Some(c))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(self.io_err(index, "opening the chunk", source)),
        }
    }

    fn io_err(&self, chunk: u64, op: &'static str, source: std::io::Error) -> StorageError {
        self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(volume = %self.meta.name, chunk, op, error = %source, "device I/O error");
        StorageError::Io {
            volume: self.meta.name.clone(),
            chunk,
            op,
            source,
        }
    }

    fn checksum_err(&self, chunk: u64, block: u64) -> StorageError {
        self.stats.checksum_errors.fetch_add(1, Ordering::Relaxed);
        let offset = chunk * self.meta.chunk_size + block * BLOCK_SIZE;
        tracing::error!(volume = %self.meta.name, chunk, offset, "checksum mismatch; returning EIO");
        StorageError::Checksum {
            volume: self.meta.name.clone(),
            chunk,
            offset,
        }
    }

    /// Reads blocks `[b0, b1)` of `c` and verifies them. Returns the index of
    /// the first bad block on mismatch.
    async fn read_blocks(&self, c: &Arc<Chunk>, b0: u64, b1: u64) -> Result<Result<Vec<u8>, u64>> {
        let len = ((b1 - b0) * BLOCK_SIZE) as usize;
        let buf = self
            .engine
            .read_at(&c.data, len, b0 * BLOCK_SIZE)
            .await
            .map_err(|e| self.io_err(c.index, "read", e))?;
        for (i, block) in buf.chunks_exact(BLOCK_SIZE as usize).enumerate() {
            let b = b0 + i as u64;
            if !checksum::verify(c.slot(b), block) {
                return Ok(Err(b));
            }
        }
        Ok(Ok(buf))
    }

    /// Reads and verifies blocks, retrying once under the write lock so a
    /// read racing a write of the same block is not mistaken for corruption.
    async fn read_verified(
        &self,
        c: &Arc<Chunk>,
        b0: u64,
        b1: u64,
        locked: bool,
    ) -> Result<Vec<u8>> {
        match self.read_blocks(c, b0, b1).await? {
            Ok(buf) => Ok(buf),
            Err(bad) if locked => Err(self.checksum_err(c.index, bad)),
            Err(_) => {
                let _g = self
                    .locks
                    .lock(c.index, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE)
                    .await;
                match self.read_blocks(c, b0, b1).await? {
                    Ok(buf) => Ok(buf),
                    Err(bad) => Err(self.checksum_err(c.index, bad)),
                }
            }
        }
    }

    async fn read_piece(&self, p: Piece, out: &mut Vec<ReadSegment>) -> Result<()> {
        let Some(c) = self.chunk(p.chunk, false)? else {
            out.push(ReadSegment::Hole(p.len));
            return Ok(());
        };
        let end = p.off + p.len;
        let mut b = p.off / BLOCK_SIZE;
        let b_end = end.div_ceil(BLOCK_SIZE);
        let logged = c.logged.range(b, b_end);
        let is_logged = |b: u64| logged.binary_search_by_key(&b, |l| l.0).is_ok();
        let is_hole = |b: u64| c.slot(b) == HOLE && !is_logged(b);
        while b < b_end {
            let hole = is_hole(b);
            let mut run_end = b + 1;
            while run_end < b_end && is_hole(run_end) == hole {
                run_end += 1;
            }
            let from = p.off.max(b * BLOCK_SIZE);
            let to = end.min(run_end * BLOCK_SIZE);
            if hole {
                out.push(ReadSegment::Hole(to - from));
            } else {
                // The logged blocks of this run, from the look above.
                let lo = logged.partition_point(|l| l.0 < b);
                let hi = logged.partition_point(|l| l.0 < run_end);
                let buf = self
                    .read_run_known(&c, b, run_end, &logged[lo..hi], false)
                    .await?;
                let base = b * BLOCK_SIZE;
                out.push(ReadSegment::Data(
                    buf.slice((from - base) as usize..(to - base) as usize),
                ));
            }
            b = run_end;
        }
        Ok(())
    }

    async fn write_piece(&self, p: Piece, data: Bytes) -> Result<()> {
        let c = self
            .chunk(p.chunk, true)?
            .ok_or_else(|| StorageError::Catalog("chunk vanished".into()))?;
        let a0 = p.off / BLOCK_SIZE * BLOCK_SIZE;
        let a1 = (p.off + p.len).div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
        let _g = self.locks.lock(c.index, a0, a1 - a0).await;
        let buf = if a0 == p.off && a1 == p.off + p.len {
            data
        } else {
            // Read-modify-write of partial head/tail blocks.
            let mut v = vec![0u8; (a1 - a0) as usize];
            let first = a0 / BLOCK_SIZE;
            let last = a1 / BLOCK_SIZE - 1;
            if p.off != a0 {
                let blk = self.read_run(&c, first, first + 1, true).await?;
                v[..BLOCK_SIZE as usize].copy_from_slice(&blk);
            }
            if p.off + p.len != a1 && (last != first || p.off == a0) {
                let blk = self.read_run(&c, last, last + 1, true).await?;
                let at = ((last - first) * BLOCK_SIZE) as usize;
                v[at..at + BLOCK_SIZE as usize].copy_from_slice(&blk);
            }
            let at = (p.off - a0) as usize;
            v[at..at + data.len()].copy_from_slice(&data);
            Bytes::from(v)
        };
        self.put_blocks(&c, a0, buf).await
    }

    /// Writes whole blocks `buf` at chunk offset `a0` with their checksum
    /// slots (the caller holds the stripe lock); they read from the chunk
    /// file from then on, not from the log.
    async fn put_blocks(&self, c: &Arc<Chunk>, a0: u64, buf: Bytes) -> Result<()> {
        let slots: Vec<u32> = buf
            .chunks(BLOCK_SIZE as usize)
            .map(checksum::block_slot)
            .collect();
        fail::fail_point!("storage::before_data_write", |_| Err(self.io_err(
            c.index,
            "write",
            std::io::Error::other("injected failure")
        )));
        let direct = match c.direct() {
            Some(f) if buf.len() >= DIRECT_WRITE_MIN => aligned_copy(&buf).map(|b| (f, b)),
            _ => None,
        };
        let mut written = false;
        if let Some((f, aligned)) = direct {
            match self.engine.write_direct(f, aligned, a0).await {
                Ok(()) => written = true,
                Err(e) => tracing::debug!(chunk = c.index, error = %e,
                    "direct write failed; writing through the page cache"),
            }
        }
        if !written {
            self.engine
                .write_at(&c.data, buf, a0)
                .await
                .map_err(|e| self.io_err(c.index, "write", e))?;
        }
        c.set_slots(a0 / BLOCK_SIZE, &slots);
        c.logged
            .remove(a0 / BLOCK_SIZE, a0 / BLOCK_SIZE + slots.len() as u64);
        Ok(())
    }

    /// Punches whole blocks `[b0, b1)` of chunk `index` (if it exists).
    async fn punch_blocks(&self, index: u64, b0: u64, b1: u64) -> Result<()> {
        if b0 >= b1 {
            return Ok(());
        }
        let Some(c) = self.chunk(index, false)? else {
            return Ok(());
        };
        let _g = self
            .locks
            .lock(index, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE)
            .await;
        // Slots first: a crash after this leaves a hole slot over stale data,
        // which reads as zeros (what the trim asked for).
        c.set_slots(b0, &vec![HOLE; (b1 - b0) as usize]);
        c.logged.remove(b0, b1);
        self.engine
            .punch(&c.data, b0 * BLOCK_SIZE, (b1 - b0) * BLOCK_SIZE)
            .await
            .map_err(|e| self.io_err(index, "punch hole", e))?;
        Ok(())
    }

    /// Syncs the chunks `chunks` that have a file here.
    pub async fn sync_chunks(&self, mut chunks: Vec<u64>) -> Result<()> {
        chunks.sort_unstable();
        chunks.dedup();
        for index in chunks {
            let Some(c) = self.chunk(index, false)? else {
                continue;
            };
            self.sync_chunk(&c).await?;
        }
        Ok(())
    }

    async fn sync_chunk(&self, c: &Chunk) -> Result<()> {
        let _syncing = c.sync_lock.lock().await;
        if !c.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let (d, k) = tokio::join!(self.engine.sync(&c.data), self.engine.sync(&c.crc));
        if let Err(e) = d.and(k) {
            c.dirty.store(true, Ordering::Release);
            return Err(self.io_err(c.index, "fdatasync", e));
        }
        Ok(())
    }
}

fn merge(segs: Vec<ReadSegment>) -> Vec<ReadSegment> {
    let mut out: Vec<ReadSegment> = Vec::with_capacity(segs.len());
    for s in segs {
        if s.is_empty() {
            continue;
        }
        match (out.last_mut(), s) {
            (Some(ReadSegment::Hole(a)), ReadSegment::Hole(b)) => *a += b,
            (_, s) => out.push(s),
        }
    }
    out
}

impl VolumeIo for LocalVolume {
    fn name(&self) -> &str {
        &self.meta.name
    }

    fn size(&self) -> u64 {
        LocalVolume::size(self)
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>> {
        self.check_range(offset, len)?;
        let mut segs = Vec::new();
        for p in self.pieces(offset, len) {
            self.read_piece(p, &mut segs).await?;
        }
        Ok(merge(segs))
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let pieces = self.pieces(offset, data.len() as u64);
        for p in &pieces {
            let slice = data.slice(p.at as usize..(p.at + p.len) as usize);
            self.write_piece(*p, slice).await?;
        }
        if fua {
            self.sync_chunks(pieces.iter().map(|p| p.chunk).collect())
                .await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let open: Vec<Arc<Chunk>> = lock(&self.chunks).values().cloned().collect();
        for c in open {
            self.sync_chunk(&c).await?;
        }
        Ok(())
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.check_range(offset, len)?;
        let pieces = self.pieces(offset, len);
        for p in &pieces {
            let b0 = p.off.div_ceil(BLOCK_SIZE);
            let b1 = (p.off + p.len) / BLOCK_SIZE;
            self.punch_blocks(p.chunk, b0, b1).await?;
        }
        if fua {
            self.sync_chunks(pieces.iter().map(|p| p.chunk).collect())
                .await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, mode: ZeroMode, fua: bool) -> Result<()> {
        self.check_range(offset, len)?;
        let pieces = self.pieces(offset, len);
        const STEP: u64 = ZERO_RUN as u64;
        for p in &pieces {
            match mode {
                ZeroMode::Punch => {
                    if self.chunk(p.chunk, false)?.is_none() {
                        continue; // never written: already zeros
                    }
                    let b0 = p.off.div_ceil(BLOCK_SIZE);
                    let b1 = (p.off + p.len) / BLOCK_SIZE;
                    if b0 >= b1 {
                        self.write_piece(*p, zeros(p.len as usize)).await?;
                        continue;
                    }
                    let head = b0 * BLOCK_SIZE - p.off;
                    if head > 0 {
                        let hp = Piece { len: head, ..*p };
                        self.write_piece(hp, zeros(head as usize)).await?;
                    }
                    self.punch_blocks(p.chunk, b0, b1).await?;
                    let tail = p.off + p.len - b1 * BLOCK_SIZE;
                    if tail > 0 {
                        let tp = Piece {
                            off: b1 * BLOCK_SIZE,
                            len: tail,
                            ..*p
                        };
                        self.write_piece(tp, zeros(tail as usize)).await?;
                    }
                }
                ZeroMode::Allocate => {
                    let mut done = 0;
                    while done < p.len {
                        let n = STEP.min(p.len - done);
                        let sp = Piece {
                            off: p.off + done,
                            len: n,
                            ..*p
                        };
                        self.write_piece(sp, zeros(n as usize)).await?;
                        done += n;
                    }
                }
            }
        }
        if fua {
            self.sync_chunks(pieces.iter().map(|p| p.chunk).collect())
                .await?;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        let mut push = |len: u64, hole: bool| match out.last_mut() {
            Some(e) if e.hole == hole => e.len += len,
            _ => out.push(Extent { len, hole }),
        };
        for p in self.pieces(offset, len) {
            let Some(c) = self.chunk(p.chunk, false)? else {
                push(p.len, true);
                continue;
            };
            let end = p.off + p.len;
            // One look at the logged blocks per piece, not one per block.
            let logged = c.logged.range(p.off / BLOCK_SIZE, end.div_ceil(BLOCK_SIZE));
            let mut pos = p.off;
            while pos < end {
                let b = pos / BLOCK_SIZE;
                let next = ((b + 1) * BLOCK_SIZE).min(end);
                let is_logged = logged.binary_search_by_key(&b, |l| l.0).is_ok();
                push(next - pos, c.slot(b) == HOLE && !is_logged);
                pos = next;
            }
        }
        Ok(out)
    }
}

/// Block-aligned writes at least this long bypass the page cache (O_DIRECT):
/// copying them into fresh page-cache pages cost about twice the CPU of the
/// rest of a replicated 1 MiB write here, and the data is in the Raft log
/// until the chunk is synced anyway. Smaller writes stay buffered, where a
/// 4 KiB pwrite is cheaper than a device round trip.
const DIRECT_WRITE_MIN: usize = 128 << 10;

/// `data` copied into a buffer aligned for O_DIRECT (`None` if the copy
/// did not come out aligned).
fn aligned_copy(data: &Bytes) -> Option<Bytes> {
    const ALIGN: usize = BLOCK_SIZE as usize;
    let mut v: Vec<u8> = Vec::with_capacity(data.len() + ALIGN);
    let skew = v.as_ptr().align_offset(ALIGN);
    v.resize(skew, 0);
    v.extend_from_slice(data);
    let b = Bytes::from(v).slice(skew..);
    (b.as_ptr().align_offset(ALIGN) == 0).then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{catalog::CHECKSUM_SCHEME, EngineKind};

    fn volume(dir: &std::path::Path, kind: EngineKind) -> LocalVolume {
        let meta = VolumeMeta {
            id: 1,
            name: "t".into(),
            size: 4 << 20,
            chunk_size: 1 << 20,
            created_unix: 0,
            checksum: CHECKSUM_SCHEME.into(),
        };
        let engine = Engine::start(Some(kind), 2).expect("engine");
        LocalVolume::new(meta, dir.to_path_buf(), engine)
    }

    fn flatten(segs: Vec<ReadSegment>) -> Vec<u8> {
        let mut v = Vec::new();
        for s in segs {
            match s {
                ReadSegment::Data(b) => v.extend_from_slice(&b),
                ReadSegment::Hole(n) => v.extend(std::iter::repeat_n(0, n as usize)),
            }
        }
        v
    }

    async fn roundtrip(kind: EngineKind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = volume(dir.path(), kind);
        // Unwritten reads are one hole.
        assert_eq!(
            v.read(0, 8192).await.expect("read"),
            vec![ReadSegment::Hole(8192)]
        );
        // An unaligned write spanning a chunk boundary.
        let off = (1 << 20) - 1000;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        v.write(off, Bytes::from(data.clone()), false)
            .await
            .expect("write");
        let got = flatten(v.read(off, 5000).await.expect("read"));
        assert_eq!(got, data);
        // Bytes around the write are still zero.
        let around = flatten(v.read(off - 3000, 3000).await.expect("read"));
        assert!(around.iter().all(|&b| b == 0));
        // Trim the second chunk's first block: reads as zeros, reported as a hole.
        v.trim(1 << 20, 4096, false).await.expect("trim");
        let got = flatten(v.read(1 << 20, 4096).await.expect("read"));
        assert!(got.iter().all(|&b| b == 0));
        let ext = v.block_status(0, 4 << 20).await.expect("status");
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4 << 20);
        assert!(ext.iter().any(|e| !e.hole));
        v.flush().await.expect("flush");
        // Out of range is refused.
        assert!(v.read(4 << 20, 1).await.is_err());
    }

    /// Large writes go around the page cache, small ones through it, and
    /// both views of the same blocks agree (O_DIRECT drops cached pages it
    /// overwrites; a later buffered write lands over a direct one).
    async fn large_writes_bypass_the_page_cache(kind: EngineKind) {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = volume(dir.path(), kind);
        let pattern = |seed: u32, n: usize| -> Vec<u8> {
            (0..n as u32)
                .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
                .collect()
        };
        // A small buffered write first, so the page cache holds the block.
        v.write(8192, Bytes::from(pattern(1, 4096)), false)
            .await
            .expect("small write");
        assert_eq!(
            flatten(v.read(8192, 4096).await.expect("read")),
            pattern(1, 4096)
        );
        // A large aligned write over it, from an unaligned buffer.
        let big = Bytes::from(pattern(2, DIRECT_WRITE_MIN + 4097)).slice(1..);
        v.write(0, big.clone(), false).await.expect("large write");
        let c = v.chunk(0, false).expect("chunk").expect("exists");
        assert!(c.direct().is_some(), "direct I/O on this filesystem");
        assert_eq!(
            flatten(v.read(0, big.len() as u64).await.expect("read")),
            big
        );
        // A small write inside the large one, then everything again.
        v.write(4096, Bytes::from(pattern(3, 4096)), false)
            .await
            .expect("small write");
        let mut want = big.to_vec();
        want[4096..8192].copy_from_slice(&pattern(3, 4096));
        assert_eq!(
            flatten(v.read(0, want.len() as u64).await.expect("read")),
            want
        );
        v.flush().await.expect("flush");
        // A fresh open reads the same from disk, checksums included.
        let again = volume(dir.path(), kind);
        assert_eq!(
            flatten(again.read(0, want.len() as u64).await.expect("read")),
            want
        );
    }

    #[tokio::test]
    async fn large_writes_bypass_the_page_cache_threads() {
        large_writes_bypass_the_page_cache(EngineKind::Threads).await;
    }

    #[tokio::test]
    async fn large_writes_bypass_the_page_cache_uring() {
        if Engine::start(Some(EngineKind::Uring), 1).is_err() {
            eprintln!("skipped: io_uring unavailable on this kernel");
            return;
        }
        large_writes_bypass_the_page_cache(EngineKind::Uring).await;
    }

    #[tokio::test]
    async fn roundtrip_threads() {
        roundtrip(EngineKind::Threads).await;
    }

    #[tokio::test]
    async fn roundtrip_uring() {
        if Engine::start(Some(EngineKind::Uring), 1).is_err() {
            eprintln!("skipped: io_uring unavailable on this kernel");
            return;
        }
        roundtrip(EngineKind::Uring).await;
    }

    #[tokio::test]
    async fn flipped_byte_is_an_error_and_neighbours_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = volume(dir.path(), EngineKind::Threads);
        v.write(0, Bytes::from(vec![0x5a; 3 * 4096]), true)
            .await
            .expect("write");
        let path = crate::chunk::data_path(dir.path(), 0);
        let mut raw = std::fs::read(&path).expect("read chunk");
        raw[4096 + 17] ^= 0xff;
        std::fs::write(&path, raw).expect("corrupt");
        let err = v.read(4096, 4096).await.expect_err("corrupt block read");
        assert!(err.is_checksum(), "{err}");
        assert_eq!(err.errno(), libc::EIO);
        assert!(v.read(0, 4096).await.is_ok());
        assert!(v.read(8192, 4096).await.is_ok());
        assert_eq!(v.stats().checksum_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn concurrent_overlapping_writes_keep_checksums_consistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = Arc::new(volume(dir.path(), EngineKind::Threads));
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let v = v.clone();
            tasks.push(tokio::spawn(async move {
                let off = (i as u64 % 4) * 512;
                v.write(off, Bytes::from(vec![i; 6000]), false).await
            }));
        }
        for t in tasks {
            t.await.expect("join").expect("write");
        }
        // Whatever order won, every block verifies.
        v.read(0, 16384)
            .await
            .expect("read after concurrent writes");
    }
}
