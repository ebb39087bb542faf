//! The node's write-ahead log, shared by every Raft group on the node. One
//! [`Wal::write`] is one record holding everything a driver round produced
//! (entries, states and compactions of many groups), written with one
//! `write` and made durable with one `fdatasync`: that is the group commit.
//!
//! The log is opaque to Raft types: groups are `u64`s, entries are
//! `(index, term, bytes)` and a group's state is a blob its owner encodes.
//! An in-memory index maps every live entry to its place in a segment file
//! (with the bytes cached until the owner says they were applied), so reads
//! of recent entries never touch the disk and old ones are one `pread`.
//!
//! Segments rotate at a size limit. The first record of a new segment
//! restates every group's state and first index, so old segments are only
//! pinned by live entries and are retired as soon as every group has
//! compacted past them: kept as spares for the next rotations (see
//! `segment`), deleted beyond [`MAX_SPARES`].

mod entry_bytes;
mod record;
mod segment;

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use entry_bytes::EntryBytes;
use record::{Item, RecordBuilder};
use segment::{
    create_segment, list_segments, list_spares, reuse_segment, scan_segment, segment_path,
    spare_path, SEGMENT_HEADER_LEN,
};

/// Retired segment files kept for reuse; more are deleted.
pub const MAX_SPARES: usize = 8;
/// Live entry bytes a rotation copies forward out of the oldest segment.
const REWRITE_MAX_BYTES: u64 = 4 << 20;

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// an I/O operation on a WAL file failed
    #[error("WAL {path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// a record in the middle of the log is damaged: acknowledged data is at stake
    #[error("WAL {path} is corrupt at offset {offset}: {reason}; refusing to start (the node's other replicas can rebuild it)")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// an earlier write or sync failed, so nothing after it can be trusted
    #[error("WAL is unusable after an earlier failure: {0}")]
    Poisoned(String),
    /// an append would leave a gap in a group's log
    #[error("group {group}: appending index {index} after last index {last} would leave a gap")]
    Gap {
        /// Group id.
        group: u64,
        /// First index of the append.
        index: u64,
        /// Current last index.
        last: u64,
    },
    /// entries were asked for that the log no longer (or never) held
    #[error(
        "group {group}: entries [{low}, {high}) are not in the log (it holds [{first}, {end}))"
    )]
    Missing {
        /// Group id.
        group: u64,
        /// Requested low index.
        low: u64,
        /// Requested high index (exclusive).
        high: u64,
        /// First index held.
        first: u64,
        /// One past the last index held.
        end: u64,
    },
}

impl WalError {
    fn io(path: &Path, op: &'static str, source: std::io::Error) -> WalError {
        WalError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// Tunables of the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Rotate to a new segment once the active one is larger than this.
    pub segment_size: u64,
    /// Allocate a new segment's whole size when it is created (appends
    /// then change no file metadata); off, the file grows with the log.
    pub preallocate: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            preallocate: true,
        }
    }
}

/// What a batch does to one group, in order.
enum Op {
    Entries(u64, Vec<(u64, u64, EntryBytes, usize)>),
    State(u64, Bytes),
    Compact(u64, u64),
    Remove(u64),
}

/// Writes for many groups that go to disk as one record.
pub struct WalBatch {
    record: RecordBuilder,
    ops: Vec<Op>,
}

impl Default for WalBatch {
    fn default() -> Self {
        WalBatch::new()
    }
}

impl WalBatch {
    /// An empty batch.
    pub fn new() -> WalBatch {
        WalBatch {
            record: RecordBuilder::new(),
            ops: Vec::new(),
        }
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes the record will carry.
    pub fn len_bytes(&self) -> usize {
        self.record.payload_len()
    }

    /// Appends entries `(index, term, data)` with consecutive indexes to
    /// `group`; entries already at or after the first index are replaced.
    pub fn append<D: Into<EntryBytes>>(
        &mut self,
        group: u64,
        entries: impl IntoIterator<Item = (u64, u64, D)>,
    ) {
        let mut v = Vec::new();
        for (index, term, data) in entries {
            let data = data.into();
            let at = self.record.entry(group, index, term, &data);
            v.push((index, term, data, at));
        }
        if !v.is_empty() {
            self.ops.push(Op::Entries(group, v));
        }
    }

    /// Appends everything `other` holds after this batch's own writes, as
    /// if it had been staged here (the log writer merges several rounds
    /// into one record).
    pub fn absorb(&mut self, other: WalBatch) {
        let WalBatch { record, ops } = other;
        let shift = self.record.absorb(record);
        for mut op in ops {
            if let Op::Entries(_, v) = &mut op {
                for e in v.iter_mut() {
                    e.3 += shift;
                }
            }
            self.ops.push(op);
        }
    }

    /// Sets the group's state (replacing the previous one).
    pub fn set_state(&mut self, group: u64, state: Bytes) {
        self.record.state(group, &state);
        self.ops.push(Op::State(group, state));
    }

    /// Drops the group's entries below `first_index`.
    pub fn compact(&mut self, group: u64, first_index: u64) {
        self.record.compact(group, first_index);
        self.ops.push(Op::Compact(group, first_index));
    }

    /// Deletes the group, its state and all its entries.
    pub fn remove_group(&mut self, group: u64) {
        self.record.remove(group);
        self.ops.push(Op::Remove(group));
    }
}

/// Where one live entry is.
struct EntryMeta {
    term: u64,
    seq: u64,
    offset: u64,
    len: u32,
    cached: Option<EntryBytes>,
}

/// One group's part of the index.
#[derive(Default)]
struct GroupLog {
    state: Option<Bytes>,
    /// Index of `entries[0]` (or of the next entry when empty).
    first_index: u64,
    entries: VecDeque<EntryMeta>,
    /// Entries below this index hold no cached payload any more.
    evicted_to: u64,
    /// Bytes of `entries` on disk.
    bytes: u64,
}

/// The indexes a group's log holds, `[first, end)`, and the rules every
/// change follows: the index applies them to its entries, and a batch is
/// checked against them before anything is written.
#[derive(Clone, Copy, Default)]
struct Span {
    first: u64,
    end: u64,
}

impl Span {
    /// The span after writing `count` entries from `index` on: they replace
    /// everything at and after `index`; an empty log starts at `index`.
    fn after_append(self, group: u64, index: u64, count: u64) -> Result<Span, WalError> {
        let empty = self.first == self.end;
        if !empty && index > self.end {
            return Err(WalError::Gap {
                group,
                index,
                last: self.end - 1,
            });
        }
        let first = if empty || index < self.first {
            index
        } else {
            self.first
        };
        Ok(Span {
            first,
            end: index + count,
        })
    }

    /// The span after dropping everything below `to`.
    fn after_compact(self, to: u64) -> Span {
        if to >= self.end {
            Span { first: to, end: to }
        } else {
            Span {
                first: self.first.max(to),
                end: self.end,
            }
        }
    }
}

impl GroupLog {
    fn span(&self) -> Span {
        Span {
            first: self.first_index,
            end: self.first_index + self.entries.len() as u64,
        }
    }

    fn end(&self) -> u64 {
        self.span().end
    }

    fn append(&mut self, group: u64, index: u64, meta: EntryMeta) -> Result<(), WalError> {
        let next = self.span().after_append(group, index, 1)?;
        let keep = (index - next.first) as usize;
        let cut: u64 = self.entries.iter().skip(keep).map(|e| e.len as u64).sum();
        self.entries.truncate(keep);
        self.first_index = next.first;
        self.bytes = self.bytes - cut + meta.len as u64;
        self.entries.push_back(meta);
        Ok(())
    }

    fn compact(&mut self, to: u64) {
        let next = self.span().after_compact(to);
        let dropped = ((next.first - self.first_index) as usize).min(self.entries.len());
        let cut: u64 = self.entries.drain(..dropped).map(|e| e.len as u64).sum();
        self.bytes -= cut;
        self.first_index = next.first;
    }
}

struct Inner {
    groups: HashMap<u64, GroupLog>,
    /// Open handles of every segment, by sequence number (the active one,
    /// the last, is also written through its handle).
    segments: BTreeMap<u64, Arc<File>>,
    active_seq: u64,
    active_len: u64,
    /// Retired segment files waiting to be reused, oldest first.
    spares: Vec<PathBuf>,
    poisoned: Option<String>,
}

/// Where the bytes [`Wal::locate_tail`] found are.
pub enum TailBytes {
    /// In memory (the entry is still cached).
    Cached(Bytes),
    /// At `offset` in a segment file (which a later rotation may recycle:
    /// callers verify what they read).
    OnDisk {
        /// The segment, open.
        file: Arc<File>,
        /// Its path, for errors.
        path: PathBuf,
        /// Where the bytes start.
        offset: u64,
    },
}

/// What recovery found, for the log line at start-up.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Segment files read.
    pub segments: usize,
    /// Records replayed.
    pub records: usize,
    /// A torn tail that was cut: (file, offset).
    pub torn_tail: Option<(PathBuf, u64)>,
}

/// The write-ahead log of one node.
pub struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    /// Serialises writers so the record order on disk is the order of
    /// calls; holds the active segment's direct-write state.
    writer: Mutex<segment::DirectAppender>,
    recovery: Recovery,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying every segment.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, "create", e))?;
        let seqs = list_segments(dir)?;
        let mut groups: HashMap<u64, GroupLog> = HashMap::new();
        let mut segments = BTreeMap::new();
        let mut recovery = Recovery::default();
        let mut last_valid = None;
        let mut sealed = false;
        for (i, &seq) in seqs.iter().enumerate() {
            let is_last = i + 1 == seqs.len();
            let scan = scan_segment(dir, seq, is_last)?;
            recovery.segments += 1;
            if let Some(at) = scan.torn_at {
                recovery.torn_tail = Some((segment_path(dir, seq), at));
            }
            if scan.valid_len == 0 {
                continue; // an empty last segment was removed
            }
            for rec in scan.records {
                recovery.records += 1;
                for item in rec.items {
                    replay(&mut groups, seq, rec.payload_offset, item, dir)?;
                }
            }
            let path = segment_path(dir, seq);
            // Writable: the last intact segment becomes the active one.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io(&path, "open", e))?;
            segments.insert(seq, Arc::new(f));
            last_valid = Some((seq, scan.valid_len));
            sealed = scan.sealed;
        }
        let spares = list_spares(dir)?;
        let (active_seq, active_len) = match last_valid {
            // A sealed segment takes no more records (the crash came between
            // sealing it and starting the next).
            Some(last) if !sealed => last,
            _ => {
                let seq = seqs.last().map_or(1, |s| s + 1);
                segments.insert(
                    seq,
                    Arc::new(create_segment(
                        dir,
                        seq,
                        opts.preallocate.then_some(opts.segment_size),
                    )?),
                );
                (seq, SEGMENT_HEADER_LEN)
            }
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(Inner {
                groups,
                segments,
                active_seq,
                active_len,
                spares,
                poisoned: None,
            }),
            writer: Mutex::new(segment::DirectAppender::default()),
            recovery,
        })
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the index as it was between
        // two writes; keep going with it rather than cascading panics.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `batch` as one record; with `sync`, returns once it is durable.
    /// Readers see the new entries as soon as the record is written, before
    /// the sync (Raft reads its own unpersisted entries back).
    pub fn write(&self, batch: WalBatch, sync: bool) -> Result<(), WalError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut appender = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let WalBatch { record, ops } = batch;
        // Check and place the record under the lock, write it without: Raft
        // reads entries from other threads meanwhile. Only writers (held
        // apart by `writer`) change the active segment and the groups.
        let (file, seq, offset) = {
            let inner = self.lock();
            if let Some(why) = &inner.poisoned {
                return Err(WalError::Poisoned(why.clone()));
            }
            check_ops(&inner.groups, &ops)?;
            let file = inner.segments.get(&inner.active_seq).cloned();
            (file, inner.active_seq, inner.active_len)
        };
        let rec = record.finish(seq);
        let path = segment_path(&self.dir, seq);
        let file =
            file.ok_or_else(|| WalError::io(&path, "write", std::io::ErrorKind::NotFound.into()))?;
        if let Err(e) = fail_point_write(&self.dir)
            .and_then(|_| appender.write(&path, &file, seq, &rec, offset))
        {
            // Cut whatever part of the record reached the file; the next
            // record goes to the same offset.
            if file.set_len(offset).is_err() {
                self.lock().poisoned = Some(format!("write to {} failed: {e}", path.display()));
            }
            return Err(WalError::io(&path, "write", e));
        }
        let full = {
            let mut inner = self.lock();
            inner.active_len += rec.byte_len() as u64;
            let payload_offset = offset + record::HEADER_LEN as u64;
            for op in ops {
                if let Err(e) = apply_op(&mut inner.groups, seq, payload_offset, op) {
                    inner.poisoned = Some(e.to_string());
                    return Err(e);
                }
            }
            inner.active_len > self.opts.segment_size
        };
        if sync {
            if let Err(e) = file.sync_data() {
                // After a failed fsync the page state is unknown (fsyncgate):
                // never claim durability again from this log.
                self.lock().poisoned = Some(format!("fdatasync of {} failed: {e}", path.display()));
                return Err(WalError::io(&path, "fdatasync", e));
            }
        }
        if full {
            if let Err(e) = self.rotate() {
                // The active segment may be sealed already: appending to it
                // would write records recovery ignores.
                self.lock().poisoned = Some(format!("segment rotation failed: {e}"));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Seals the active segment, starts a new one (a spare if there is one)
    /// whose first record restates every group, then retires the segments
    /// nothing needs any more.
    fn rotate(&self) -> Result<(), WalError> {
        let mut inner = self.lock();
        let old = inner.active_seq;
        let old_path = segment_path(&self.dir, old);
        if let Some(f) = inner.segments.get(&old).cloned() {
            // Synced with the seal: records written without `sync` must not
            // be left behind in a segment no later fsync covers.
            let mut seal = RecordBuilder::new();
            seal.seal();
            segment::write_record_at(&f, &seal.finish(old), inner.active_len)
                .and_then(|_| f.sync_data())
                .map_err(|e| WalError::io(&old_path, "seal", e))?;
        }
        let seq = old + 1;
        let file = match inner.spares.pop() {
            Some(spare) => reuse_segment(&self.dir, &spare, seq)?,
            None => create_segment(
                &self.dir,
                seq,
                self.opts.preallocate.then_some(self.opts.segment_size),
            )?,
        };
        let mut rec = RecordBuilder::new();
        // Small logs in older segments (an idle group's last few entries,
        // the metadata log) move into the checkpoint, oldest first, so the
        // segments they would pin can retire.
        let mut candidates: Vec<(u64, u64)> = Vec::new();
        for (&g, log) in &inner.groups {
            rec.compact(g, log.first_index);
            if let Some(s) = &log.state {
                rec.state(g, s);
            }
            if let Some(front) = log.entries.front() {
                if front.seq < old {
                    candidates.push((front.seq, g));
                }
            }
        }
        candidates.sort_unstable();
        let mut budget = REWRITE_MAX_BYTES;
        let mut moved: Vec<(u64, Vec<usize>)> = Vec::new();
        for (_, g) in candidates {
            let Some(log) = inner.groups.get(&g) else {
                continue;
            };
            let live: u64 = log.entries.iter().map(|e| e.len as u64).sum();
            if live > budget {
                continue;
            }
            budget -= live;
            let mut at = Vec::with_capacity(log.entries.len());
            for (i, e) in log.entries.iter().enumerate() {
                let data = match &e.cached {
                    Some(b) => b.clone(),
                    None => {
                        let path = segment_path(&self.dir, e.seq);
                        let f = inner.segments.get(&e.seq).ok_or_else(|| {
                            WalError::io(&path, "read entry", std::io::ErrorKind::NotFound.into())
                        })?;
                        segment::read_at(f, &path, e.offset, e.len as usize)?.into()
                    }
                };
                at.push(rec.entry(g, log.first_index + i as u64, e.term, &data));
            }
            moved.push((g, at));
        }
        let mut len = SEGMENT_HEADER_LEN;
        if !rec.is_empty() {
            let bytes = rec.finish(seq);
            segment::write_record_at(&file, &bytes, len)
                .and_then(|_| file.sync_data())
                .map_err(|e| WalError::io(&segment_path(&self.dir, seq), "write checkpoint", e))?;
            let payload_offset = len + record::HEADER_LEN as u64;
            for (g, at) in moved {
                if let Some(log) = inner.groups.get_mut(&g) {
                    for (e, at) in log.entries.iter_mut().zip(at) {
                        e.seq = seq;
                        e.offset = payload_offset + at as u64;
                    }
                }
            }
            len += bytes.byte_len() as u64;
        }
        inner.segments.insert(seq, Arc::new(file));
        inner.active_seq = seq;
        inner.active_len = len;
        drop(inner);
        self.purge().map(|_| ())
    }

    /// Retires segments older than every live entry (keeping up to
    /// [`MAX_SPARES`] for reuse, deleting the rest); returns how many.
    pub fn purge(&self) -> Result<usize, WalError> {
        let mut inner = self.lock();
        let pinned = inner
            .groups
            .values()
            .filter_map(|g| g.entries.front().map(|e| e.seq))
            .min()
            .unwrap_or(inner.active_seq)
            .min(inner.active_seq);
        // The newest segment with a full checkpoint at or below `pinned`
        // holds every state; everything before it can go.
        let doomed: Vec<u64> = inner.segments.range(..pinned).map(|(s, _)| *s).collect();
        for seq in &doomed {
            let path = segment_path(&self.dir, *seq);
            if inner.spares.len() < MAX_SPARES {
                let spare = spare_path(&self.dir, *seq);
                std::fs::rename(&path, &spare).map_err(|e| WalError::io(&path, "retire", e))?;
                inner.spares.push(spare);
            } else {
                std::fs::remove_file(&path).map_err(|e| WalError::io(&path, "remove", e))?;
            }
            inner.segments.remove(seq);
        }
        if !doomed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }

    /// Segment files currently on disk.
    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }

    /// Ids of the groups that have a state or entries.
    pub fn groups(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.lock().groups.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The group's last written state.
    pub fn state(&self, group: u64) -> Option<Bytes> {
        self.lock().groups.get(&group).and_then(|g| g.state.clone())
    }

    /// `[first, end)`: the indexes of the group's live entries (empty when
    /// `first == end`; then `first` is where the next entry goes).
    pub fn range(&self, group: u64) -> Option<(u64, u64)> {
        self.lock()
            .groups
            .get(&group)
            .map(|g| (g.first_index, g.end()))
    }

    /// The term of entry `index`, if the log holds it.
    pub fn term(&self, group: u64, index: u64) -> Option<u64> {
        let inner = self.lock();
        let g = inner.groups.get(&group)?;
        let i = index.checked_sub(g.first_index)?;
        g.entries.get(i as usize).map(|e| e.term)
    }

    /// Entries `[low, high)` as `(term, data)`, stopping once `max_bytes` is
    /// exceeded but always returning at least one.
    pub fn entries(
        &self,
        group: u64,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Result<Vec<(u64, EntryBytes)>, WalError> {
        let mut wanted = Vec::new();
        {
            let inner = self.lock();
            let g = inner.groups.get(&group);
            let Span { first, end } = g.map(GroupLog::span).unwrap_or_default();
            let g = match g {
                Some(g) if low >= first && high <= end && low <= high => g,
                _ => {
                    return Err(WalError::Missing {
                        group,
                        low,
                        high,
                        first,
                        end,
                    })
                }
            };
            let mut total = 0u64;
            for idx in low..high {
                let e = &g.entries[(idx - first) as usize];
                total += e.len as u64;
                if !wanted.is_empty() && total > max_bytes {
                    break;
                }
                let src = match &e.cached {
                    Some(b) => Ok(b.clone()),
                    None => Err((inner.segments.get(&e.seq).cloned(), e.seq, e.offset, e.len)),
                };
                wanted.push((e.term, src));
            }
        }
        // Disk reads happen outside the lock.
        let mut out = Vec::with_capacity(wanted.len());
        for (term, src) in wanted {
            let data = match src {
                Ok(b) => b,
                Err((file, seq, offset, len)) => {
                    let path = segment_path(&self.dir, seq);
                    let file = file.ok_or_else(|| {
                        WalError::io(&path, "read entry", std::io::ErrorKind::NotFound.into())
                    })?;
                    segment::read_at(&file, &path, offset, len as usize)?.into()
                }
            };
            out.push((term, data));
        }
        Ok(out)
    }

    /// The highest index `i` such that the group's entries after `i` (up to
    /// `upto`, inclusive) hold at most `max_bytes`: how far the log must be
    /// compacted to keep that many bytes behind `upto`.
    pub fn index_keeping(&self, group: u64, upto: u64, max_bytes: u64) -> u64 {
        let inner = self.lock();
        let Some(g) = inner.groups.get(&group) else {
            return 0;
        };
        let end = upto.saturating_add(1).min(g.end());
        let mut total = 0u64;
        let mut idx = end;
        while idx > g.first_index {
            let e = &g.entries[(idx - 1 - g.first_index) as usize];
            if total + e.len as u64 > max_bytes {
                return idx - 1;
            }
            total += e.len as u64;
            idx -= 1;
        }
        g.first_index.saturating_sub(1)
    }

    /// Bytes of every group's live entries: the log the node retains.
    pub fn live_bytes(&self) -> u64 {
        self.lock().groups.values().map(|g| g.bytes).sum()
    }

    /// Where `len` bytes of entry `index` of `group` are, starting
    /// `from_end` bytes before the end of its stored bytes: a payload the
    /// entry ends with, found without reading the rest of the entry
    /// (volumes serve blocks whose data is still only in the log this way,
    /// see `logged`).
    pub fn locate_tail(
        &self,
        group: u64,
        index: u64,
        from_end: u64,
        len: usize,
    ) -> Result<TailBytes, WalError> {
        let inner = self.lock();
        let g = inner.groups.get(&group);
        let Span { first, end } = g.map(GroupLog::span).unwrap_or_default();
        let e = g
            .zip(index.checked_sub(first))
            .and_then(|(g, i)| g.entries.get(i as usize))
            .ok_or(WalError::Missing {
                group,
                low: index,
                high: index + 1,
                first,
                end,
            })?;
        let total = e.len as u64;
        let path = segment_path(&self.dir, e.seq);
        if from_end > total || len as u64 > from_end {
            return Err(WalError::Corrupt {
                path,
                offset: e.offset,
                reason: format!(
                    "group {group} entry {index} holds {total} bytes; {len} bytes from {from_end} before its end were asked for"
                ),
            });
        }
        let start = total - from_end;
        if let Some(b) = &e.cached {
            return Ok(TailBytes::Cached(b.slice(start as usize, len)));
        }
        let file = inner.segments.get(&e.seq).cloned().ok_or_else(|| {
            WalError::io(&path, "read entry", std::io::ErrorKind::NotFound.into())
        })?;
        Ok(TailBytes::OnDisk {
            file,
            path,
            offset: e.offset + start,
        })
    }

    /// [`Wal::locate_tail`] and the read, on this thread.
    pub fn read_tail(
        &self,
        group: u64,
        index: u64,
        from_end: u64,
        len: usize,
    ) -> Result<Bytes, WalError> {
        match self.locate_tail(group, index, from_end, len)? {
            TailBytes::Cached(b) => Ok(b),
            TailBytes::OnDisk { file, path, offset } => segment::read_at(&file, &path, offset, len),
        }
    }

    /// Forgets the cached bytes of the group's entries below `index` (they
    /// stay readable from disk).
    pub fn evict_cache(&self, group: u64, index: u64) {
        let mut inner = self.lock();
        if let Some(g) = inner.groups.get_mut(&group) {
            // Only the part not evicted before: this runs after every apply.
            let from = g.evicted_to.max(g.first_index) - g.first_index;
            let to = index
                .saturating_sub(g.first_index)
                .min(g.entries.len() as u64);
            for e in g.entries.range_mut(from.min(to) as usize..to as usize) {
                e.cached = None;
            }
            g.evicted_to = g.evicted_to.max(index);
        }
    }
}

/// Fail point `wal::write`: an injected error instead of the record write.
/// Its argument scopes it so logs running beside each other (in-process
/// clusters, parallel tests) are not all hit: `return(DIR)` fails only the
/// log in DIR; `return(delay:MS:DIR,DIR..)` makes those logs' writes take
/// MS milliseconds longer and succeed.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn fail_point_write(dir: &Path) -> std::io::Result<()> {
    fail::fail_point!("wal::write", |arg: Option<String>| {
        let arg = arg.unwrap_or_default();
        let listed = |dirs: &str| dirs.split(',').any(|d| Path::new(d) == dir);
        if let Some((ms, dirs)) = arg
            .strip_prefix("delay:")
            .and_then(|rest| rest.split_once(':'))
        {
            if listed(dirs) {
                std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
            }
            return Ok(());
        }
        if arg.is_empty() || listed(&arg) {
            Err(std::io::Error::other("injected WAL write error"))
        } else {
            Ok(())
        }
    });
    Ok(())
}

/// Refuses a batch whose appends would leave a gap, before anything is
/// written (replaying such a record would fail the same way).
fn check_ops(groups: &HashMap<u64, GroupLog>, ops: &[Op]) -> Result<(), WalError> {
    // The span of every touched group as the batch would leave it.
    let mut sim: HashMap<u64, Span> = HashMap::new();
    for op in ops {
        let group = match op {
            Op::Entries(g, _) | Op::State(g, _) | Op::Compact(g, _) | Op::Remove(g) => *g,
        };
        let current = sim
            .get(&group)
            .copied()
            .unwrap_or_else(|| groups.get(&group).map(GroupLog::span).unwrap_or_default());
        let next = match op {
            Op::Entries(_, entries) => match entries.first() {
                Some(&(index, ..)) => current.after_append(group, index, entries.len() as u64)?,
                None => continue,
            },
            Op::Compact(_, to) => current.after_compact(*to),
            Op::Remove(_) => Span::default(),
            Op::State(..) => continue,
        };
        sim.insert(group, next);
    }
    Ok(())
}

fn apply_op(
    groups: &mut HashMap<u64, GroupLog>,
    seq: u64,
    payload_offset: u64,
    op: Op,
) -> Result<(), WalError> {
    match op {
        Op::Entries(group, entries) => {
            let log = groups.entry(group).or_default();
            for (index, term, data, at) in entries {
                let meta = EntryMeta {
                    term,
                    seq,
                    offset: payload_offset + at as u64,
                    len: data.len() as u32,
                    cached: Some(data),
                };
                log.append(group, index, meta)?;
            }
        }
        Op::State(group, s) => groups.entry(group).or_default().state = Some(s),
        Op::Compact(group, first) => groups.entry(group).or_default().compact(first),
        Op::Remove(group) => {
            groups.remove(&group);
        }
    }
    Ok(())
}

fn replay(
    groups: &mut HashMap<u64, GroupLog>,
    seq: u64,
    payload_offset: u64,
    item: Item,
    dir: &Path,
) -> Result<(), WalError> {
    let corrupt = |reason: String| WalError::Corrupt {
        path: segment_path(dir, seq),
        offset: payload_offset,
        reason,
    };
    match item {
        Item::Entry {
            group,
            index,
            term,
            data_offset,
            data,
        } => {
            let meta = EntryMeta {
                term,
                seq,
                offset: payload_offset + data_offset as u64,
                len: data.len() as u32,
                cached: None,
            };
            groups
                .entry(group)
                .or_default()
                .append(group, index, meta)
                .map_err(|e| corrupt(e.to_string()))?;
        }
        Item::State { group, data } => {
            groups.entry(group).or_default().state = Some(Bytes::copy_from_slice(&data));
        }
        Item::Compact { group, first_index } => {
            groups.entry(group).or_default().compact(first_index)
        }
        Item::Remove { group } => {
            groups.remove(&group);
        }
        Item::Seal => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests;
