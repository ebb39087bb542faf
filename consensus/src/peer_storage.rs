//! Raft's `Storage` for one replica, kept in the node's shared WAL: the log
//! entries are the WAL's entries of this group, and the replica's persistent
//! state (hard state, conf state, where the log was truncated, how far it was
//! applied) is the group's state blob, encoded with prost. Writes are staged
//! into a [`WalBatch`] that the log writer writes for many groups at once;
//! until it has, the staged entries are read from memory (`unpersisted`).

mod unpersisted;

use bytes::Bytes;
use prost::encoding::WireType;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::Arc;

use raftblock_storage::{EntryBytes, Wal, WalBatch, WalError};

use unpersisted::Unpersisted;

/// The persistent part of a replica, as stored in the WAL state blob.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
    #[prost(uint64, repeated, tag = "4")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "5")]
    learners: Vec<u64>,
    #[prost(uint64, repeated, tag = "6")]
    voters_outgoing: Vec<u64>,
    #[prost(uint64, repeated, tag = "7")]
    learners_next: Vec<u64>,
    #[prost(bool, tag = "8")]
    auto_leave: bool,
    /// Index of the last entry dropped from the log (a snapshot or compaction).
    #[prost(uint64, tag = "9")]
    truncated_index: u64,
    /// Its term (Raft needs `term(first_index - 1)`).
    #[prost(uint64, tag = "10")]
    truncated_term: u64,
    /// Entries up to here are applied and their effect is durable.
    #[prost(uint64, tag = "11")]
    applied: u64,
}

/// One log entry as stored in the WAL (index and term live in the WAL).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEntry {
    #[prost(int32, tag = "1")]
    entry_type: i32,
    #[prost(bytes = "bytes", tag = "2")]
    data: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    context: Bytes,
}

fn entry_type_code(t: EntryType) -> i32 {
    match t {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_of(code: i32) -> Option<EntryType> {
    match code {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

/// Entry data at least this long goes to the WAL by reference: the stored
/// entry is written as its other fields plus the data field's header, then
/// the data itself, so the payload is not copied into a second encoding.
const DATA_PIECE_MIN: usize = 16 << 10;
/// `StoredEntry.data`'s field number.
const DATA_FIELD: u32 = 2;

/// Encodes a Raft entry for the WAL. Joined, the two pieces are the prost
/// encoding of a `StoredEntry` (so a segment read back decodes as one).
pub fn encode_entry(e: &Entry) -> EntryBytes {
    let stored = StoredEntry {
        entry_type: entry_type_code(e.get_entry_type()),
        data: Bytes::new(),
        context: e.context.clone(),
    };
    if e.data.len() < DATA_PIECE_MIN {
        let whole = StoredEntry {
            data: e.data.clone(),
            ..stored
        };
        return Bytes::from(whole.encode_to_vec()).into();
    }
    let mut head = stored.encode_to_vec();
    prost::encoding::encode_key(DATA_FIELD, WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(e.data.len() as u64, &mut head);
    EntryBytes {
        head: head.into(),
        body: e.data.clone(),
    }
}

/// Where `payload`, a slice of entry data `data`, is in the entry as the
/// WAL stores it: bytes from the payload's start to the entry's end. Only
/// data stored as its own piece (`encode_entry`) is known to end the entry.
pub fn payload_from_end(data: &Bytes, payload: &Bytes) -> Option<u64> {
    let start = (payload.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let within = start + payload.len() <= data.len();
    (data.len() >= DATA_PIECE_MIN && within).then(|| (data.len() - start) as u64)
}

/// Why a replica's Raft state or log in the WAL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PeerStorageError {
    /// The group's stored hard state, conf state and indexes do not decode.
    #[error("group {group}: undecodable state in the WAL: {source}")]
    UndecodableState {
        /// The group.
        group: u64,
        /// What failed.
        source: prost::DecodeError,
    },
    /// A log entry does not decode.
    #[error("entry {index}: {source}")]
    UndecodableEntry {
        /// Its index.
        index: u64,
        /// What failed.
        source: prost::DecodeError,
    },
    /// A log entry has an entry type this version does not know.
    #[error("entry {index}: unknown type {code}")]
    UnknownEntryType {
        /// Its index.
        index: u64,
        /// The stored type.
        code: i32,
    },
    /// Compaction was asked to drop entries that are not durably applied.
    #[error("group {group}: compaction to {index} beyond the durable applied index {applied}")]
    CompactBeyondApplied {
        /// The group.
        group: u64,
        /// Where compaction was to end.
        index: u64,
        /// The durable applied index.
        applied: u64,
    },
    /// The WAL has no term for the entry compaction would end at.
    #[error("group {group}: no term for index {index}")]
    NoTerm {
        /// The group.
        group: u64,
        /// The index.
        index: u64,
    },
}

fn decode_entry(index: u64, term: u64, bytes: EntryBytes) -> Result<Entry, PeerStorageError> {
    let undecodable = |source| PeerStorageError::UndecodableEntry { index, source };
    let s = if bytes.body.is_empty() {
        // From `Bytes`, prost slices the data field instead of copying it.
        StoredEntry::decode(bytes.head).map_err(undecodable)?
    } else {
        // Still in the two pieces `encode_entry` made: the head ends with
        // the data field's key and length, the body is the data.
        let field = 1 + prost::encoding::encoded_len_varint(bytes.body.len() as u64);
        let fields = bytes.head.len().checked_sub(field).ok_or_else(|| {
            undecodable(prost::DecodeError::new(
                "entry head shorter than its data field",
            ))
        })?;
        let mut s = StoredEntry::decode(bytes.head.slice(..fields)).map_err(undecodable)?;
        s.data = bytes.body;
        s
    };
    let t = entry_type_of(s.entry_type).ok_or(PeerStorageError::UnknownEntryType {
        index,
        code: s.entry_type,
    })?;
    let mut e = Entry::default();
    e.set_entry_type(t);
    e.index = index;
    e.term = term;
    e.data = s.data;
    e.context = s.context;
    Ok(e)
}

/// A replica's Raft storage over the shared WAL.
pub struct PeerStorage {
    group: u64,
    wal: Arc<Wal>,
    state: StoredState,
    /// The latest snapshot this replica installed or built (metadata only;
    /// the data is streamed separately).
    snapshot: Option<Snapshot>,
    /// Entries staged but not yet written to the WAL.
    unpersisted: Option<Unpersisted>,
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl PeerStorage {
    /// Opens the replica of `group` from the WAL, if it has any state there.
    pub fn open(wal: Arc<Wal>, group: u64) -> Result<Option<PeerStorage>, PeerStorageError> {
        let Some(blob) = wal.state(group) else {
            return Ok(None);
        };
        let state = StoredState::decode(&blob[..])
            .map_err(|source| PeerStorageError::UndecodableState { group, source })?;
        Ok(Some(PeerStorage {
            group,
            wal,
            state,
            snapshot: None,
            unpersisted: None,
        }))
    }

    /// Creates a new replica whose initial members are `voters` (every
    /// initial member must be created with the same list) and stages its
    /// state into `batch`.
    pub fn create(wal: Arc<Wal>, group: u64, voters: &[u64], batch: &mut WalBatch) -> PeerStorage {
        PeerStorage::create_at(wal, group, (voters, &[]), 0, 0, batch)
    }

    /// Like [`PeerStorage::create`], but as if a snapshot at `index`/`term`
    /// had been installed: the log starts at `index + 1`, so a replica added
    /// later has to be sent a snapshot (it cannot rebuild the initial
    /// members from the log).
    /// `members`: its voters and learners.
    pub fn create_at(
        wal: Arc<Wal>,
        group: u64,
        (voters, learners): (&[u64], &[u64]),
        index: u64,
        term: u64,
        batch: &mut WalBatch,
    ) -> PeerStorage {
        let state = StoredState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            term,
            commit: index,
            applied: index,
            truncated_index: index,
            truncated_term: term,
            ..StoredState::default()
        };
        let s = PeerStorage {
            group,
            wal,
            state,
            snapshot: None,
            unpersisted: None,
        };
        s.stage_state(batch);
        s
    }

    /// Creates an empty replica that waits to be filled by a snapshot from
    /// the leader (a replica added to an existing group).
    pub fn create_empty(wal: Arc<Wal>, group: u64, batch: &mut WalBatch) -> PeerStorage {
        PeerStorage::create(wal, group, &[], batch)
    }

    /// The group id.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Applied index whose effect is durable (Raft's `Config::applied` on restart).
    pub fn applied(&self) -> u64 {
        self.state.applied
    }

    /// The current conf state.
    pub fn conf_state(&self) -> ConfState {
        ConfState {
            voters: self.state.voters.clone(),
            learners: self.state.learners.clone(),
            voters_outgoing: self.state.voters_outgoing.clone(),
            learners_next: self.state.learners_next.clone(),
            auto_leave: self.state.auto_leave,
            ..ConfState::default()
        }
    }

    fn stage_state(&self, batch: &mut WalBatch) {
        batch.set_state(self.group, self.state.encode_to_vec().into());
    }

    /// Stages new entries from Ready number `ready` (replacing any
    /// conflicting tail); Raft reads them back at once, the WAL has them
    /// once [`PeerStorage::persisted`] is called for that Ready.
    pub fn stage_entries(&mut self, ready: u64, entries: &[Entry], batch: &mut WalBatch) {
        batch.append(
            self.group,
            entries.iter().map(|e| (e.index, e.term, encode_entry(e))),
        );
        Unpersisted::stage(&mut self.unpersisted, ready, entries);
    }

    /// Readies up to number `ready` are written: their entries are read
    /// from the WAL now.
    pub fn persisted(&mut self, ready: u64) {
        Unpersisted::persisted(&mut self.unpersisted, ready);
    }

    /// Stages a new hard state.
    pub fn stage_hard_state(&mut self, hs: &HardState, batch: &mut WalBatch) {
        self.state.term = hs.term;
        self.state.vote = hs.vote;
        self.state.commit = hs.commit;
        self.stage_state(batch);
    }

    /// Stages a commit index learnt from a `LightReady`.
    pub fn stage_commit(&mut self, commit: u64, batch: &mut WalBatch) {
        if commit > self.state.commit {
            self.state.commit = commit;
            self.stage_state(batch);
        }
    }

    /// Stages the conf state that applying a conf change produced.
    pub fn stage_conf_state(&mut self, cs: &ConfState, batch: &mut WalBatch) {
        self.set_conf_state(cs);
        self.stage_state(batch);
    }

    fn set_conf_state(&mut self, cs: &ConfState) {
        self.state.voters = cs.voters.clone();
        self.state.learners = cs.learners.clone();
        self.state.voters_outgoing = cs.voters_outgoing.clone();
        self.state.learners_next = cs.learners_next.clone();
        self.state.auto_leave = cs.auto_leave;
    }

    /// Stages a new durable applied index.
    pub fn stage_applied(&mut self, applied: u64, batch: &mut WalBatch) {
        if applied > self.state.applied {
            self.state.applied = applied;
            // Applied entries are committed: keep the stored commit at least
            // as high, or a restart would find applied beyond commit.
            self.state.commit = self.state.commit.max(applied);
            self.stage_state(batch);
        }
    }

    /// Stages dropping the log up to and including `index` (which must be
    /// applied durably): the WAL can then free the space.
    pub fn stage_compact(
        &mut self,
        index: u64,
        batch: &mut WalBatch,
    ) -> Result<(), PeerStorageError> {
        if index <= self.state.truncated_index {
            return Ok(());
        }
        if index > self.state.applied {
            return Err(PeerStorageError::CompactBeyondApplied {
                group: self.group,
                index,
                applied: self.state.applied,
            });
        }
        let term = self
            .wal
            .term(self.group, index)
            .ok_or(PeerStorageError::NoTerm {
                group: self.group,
                index,
            })?;
        self.state.truncated_index = index;
        self.state.truncated_term = term;
        batch.compact(self.group, index + 1);
        self.stage_state(batch);
        Ok(())
    }

    /// Stages installing a snapshot received from the leader: the log is
    /// dropped up to its index and the conf state replaced. The caller
    /// installs the data before applying anything after it.
    pub fn stage_snapshot(&mut self, ready: u64, snap: &Snapshot, batch: &mut WalBatch) {
        let meta = snap.get_metadata();
        Unpersisted::reset(&mut self.unpersisted, ready, meta.index);
        self.state.truncated_index = meta.index;
        self.state.truncated_term = meta.term;
        self.state.commit = self.state.commit.max(meta.index);
        self.state.applied = meta.index;
        self.set_conf_state(meta.get_conf_state());
        // The whole log goes (MemStorage does the same): entries after the
        // snapshot index come again from the leader.
        batch.remove_group(self.group);
        self.stage_state(batch);
        self.snapshot = Some(snap.clone());
    }

    /// The index of the snapshot offered to followers (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.get_metadata().index)
    }

    /// Sets the snapshot `snapshot()` hands to Raft (built by the owner at
    /// its applied index).
    pub fn set_snapshot(&mut self, snap: Snapshot) {
        self.snapshot = Some(snap);
    }

    /// Stages deleting the replica and its log.
    pub fn stage_destroy(&self, batch: &mut WalBatch) {
        batch.remove_group(self.group);
    }

    fn wal_last(&self) -> Option<u64> {
        if let Some(tail) = &self.unpersisted {
            return Some(tail.last_index());
        }
        match self.wal.range(self.group) {
            Some((first, end)) if end > first => Some(end - 1),
            _ => None,
        }
    }
}

impl raft::Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let hs = HardState {
            term: self.state.term,
            vote: self.state.vote,
            commit: self.state.commit,
            ..HardState::default()
        };
        Ok(RaftState {
            hard_state: hs,
            conf_state: self.conf_state(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.state.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let Some(tail) = self.unpersisted.as_ref().filter(|t| high > t.first()) else {
            return self.wal_entries(low, high, max);
        };
        let mut out = if low < tail.first() {
            self.wal_entries(low, tail.first(), max)?
        } else {
            Vec::new()
        };
        if out.len() as u64 != tail.first().saturating_sub(low) {
            return Ok(out); // the size limit was reached in the WAL part
        }
        let mut size: u64 = out.iter().map(|e| u64::from(e.compute_size())).sum();
        for i in low.max(tail.first())..high {
            let e = tail
                .get(i)
                .ok_or(raft::Error::Store(StorageError::Unavailable))?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.state.truncated_index {
            return Ok(self.state.truncated_term);
        }
        if idx < self.state.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if let Some(tail) = self.unpersisted.as_ref().filter(|t| idx >= t.first()) {
            return tail
                .get(idx)
                .map(|e| e.term)
                .ok_or(raft::Error::Store(StorageError::Unavailable));
        }
        self.wal
            .term(self.group, idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self
            .wal_last()
            .unwrap_or(self.state.truncated_index)
            .max(self.state.truncated_index))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot {
            // One whose configuration lacks `to` would be refused (a
            // learner just added waits for the next one).
            Some(s)
                if s.get_metadata().index >= request_index
                    && s.get_metadata().index > 0
                    && names(s.get_metadata().get_conf_state(), to) =>
            {
                Ok(s.clone())
            }
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

/// Whether configuration `cs` names `node` (as a voter or a learner).
fn names(cs: &ConfState, node: u64) -> bool {
    cs.voters.contains(&node)
        || cs.learners.contains(&node)
        || cs.voters_outgoing.contains(&node)
        || cs.learners_next.contains(&node)
}

impl PeerStorage {
    /// Entries `[low, high)` as the WAL holds them, at most `max` bytes
    /// (at least one entry).
    fn wal_entries(&self, low: u64, high: u64, max: u64) -> raft::Result<Vec<Entry>> {
        let raw = self
            .wal
            .entries(self.group, low, high, max)
            .map_err(|e| match e {
                WalError::Missing { .. } => raft::Error::Store(StorageError::Unavailable),
                e => other(e),
            })?;
        raw.into_iter()
            .enumerate()
            .map(|(i, (term, data))| decode_entry(low + i as u64, term, data).map_err(other))
            .collect()
    }
}

#[cfg(test)]
mod tests;
