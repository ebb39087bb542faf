//! The on-disk record format of the write-ahead log. One record is what one
//! `Wal::write` call produced (a whole driver round: many groups' entries and
//! states), so one record is also one unit of atomicity: after a crash it is
//! either entirely there (both checksums match) or it is the torn tail.
//!
//! ```text
//! header (16 bytes): magic u32 | payload_len u32 | payload_crc u32 | header_crc u32
//! payload: items, each  kind u8 | group u64 | body
//!   ENTRY   index u64 | term u64 | len u32 | data
//!   STATE   len u32 | data          (the group's opaque state; latest wins)
//!   COMPACT first_index u64         (entries below it are gone)
//!   REMOVE                          (the group is gone)
//!   SEAL                            (group 0; the segment ends here)
//! ```
//! Integers are little-endian. The header has its own crc so a scan can
//! recognise a record start without trusting its length. In version-2
//! segments the header crc also covers the segment's sequence number: a
//! recycled segment file still holds records of its previous life, and
//! those must never pass for records of the new one.

use bytes::Bytes;

use super::EntryBytes;

/// Marks the start of a record ("RBLG").
pub const RECORD_MAGIC: u32 = 0x4742_4c52;
/// Bytes of a record header.
pub const HEADER_LEN: usize = 16;
/// The largest payload a record may carry; a header claiming more is invalid.
pub const MAX_PAYLOAD: u32 = 1 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_STATE: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_REMOVE: u8 = 4;
const KIND_SEAL: u8 = 5;

/// One item of a record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A log entry of `group`; the first entry of a batch replaces any
    /// existing entries at and after its index.
    Entry {
        /// Group (shard) id.
        group: u64,
        /// Raft index.
        index: u64,
        /// Raft term.
        term: u64,
        /// Where the data starts inside the payload (for reads from disk).
        data_offset: usize,
        /// The entry's bytes.
        data: Bytes,
    },
    /// The group's opaque persistent state.
    State {
        /// Group id.
        group: u64,
        /// State bytes, owned by the caller's encoding.
        data: Bytes,
    },
    /// Entries of `group` below `first_index` are dropped.
    Compact {
        /// Group id.
        group: u64,
        /// The first index that stays.
        first_index: u64,
    },
    /// The group is deleted with all its entries.
    Remove {
        /// Group id.
        group: u64,
    },
    /// The segment was closed by a rotation: whatever follows in the file
    /// is left over from an earlier use of it.
    Seal,
}

/// Entry data at least this long is referenced, not copied, by the record
/// and reaches the file through `pwritev` (one copy less per entry).
const REFERENCE_MIN: usize = 8 << 10;

/// Builds one record's payload.
pub struct RecordBuilder {
    /// Header room, then the payload with referenced data left out.
    buf: Vec<u8>,
    /// Referenced data: (where in `buf` it goes, the bytes).
    referenced: Vec<(usize, Bytes)>,
    referenced_len: usize,
}

impl Default for RecordBuilder {
    // Not derived: the buffer must start with room for the header.
    fn default() -> Self {
        RecordBuilder::new()
    }
}

/// A finished record: header and payload as pieces to write in order.
pub struct Record {
    parts: Vec<Bytes>,
    len: usize,
}

impl Record {
    /// The pieces, in file order.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// Bytes in all.
    pub fn byte_len(&self) -> usize {
        self.len
    }

    /// The record as one buffer.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.parts {
            v.extend_from_slice(p);
        }
        v
    }
}

impl RecordBuilder {
    /// An empty payload with room for the header in front.
    pub fn new() -> RecordBuilder {
        RecordBuilder {
            buf: vec![0; HEADER_LEN],
            referenced: Vec::new(),
            referenced_len: 0,
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.payload_len() == 0
    }

    /// Payload bytes so far (header excluded).
    pub fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_LEN + self.referenced_len
    }

    /// Adds an entry; returns the offset of its data within the payload.
    pub fn entry(&mut self, group: u64, index: u64, term: u64, data: &EntryBytes) -> usize {
        self.buf.push(KIND_ENTRY);
        self.buf.extend_from_slice(&group.to_le_bytes());
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf.extend_from_slice(&term.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        let at = self.payload_len();
        for piece in [&data.head, &data.body] {
            if piece.len() >= REFERENCE_MIN {
                self.referenced.push((self.buf.len(), piece.clone()));
                self.referenced_len += piece.len();
            } else {
                self.buf.extend_from_slice(piece);
            }
        }
        at
    }

    /// Appends `other`'s items after this builder's; returns how far
    /// `other`'s payload offsets moved.
    pub fn absorb(&mut self, other: RecordBuilder) -> usize {
        let shift = self.payload_len();
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf[HEADER_LEN..]);
        for (at, data) in other.referenced {
            self.referenced.push((base + at - HEADER_LEN, data));
        }
        self.referenced_len += other.referenced_len;
        shift
    }

    /// Adds a group state.
    pub fn state(&mut self, group: u64, data: &[u8]) {
        self.buf.push(KIND_STATE);
        self.buf.extend_from_slice(&group.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
    }

    /// Adds a compaction mark.
    pub fn compact(&mut self, group: u64, first_index: u64) {
        self.buf.push(KIND_COMPACT);
        self.buf.extend_from_slice(&group.to_le_bytes());
        self.buf.extend_from_slice(&first_index.to_le_bytes());
    }

    /// Adds a group removal.
    pub fn remove(&mut self, group: u64) {
        self.buf.push(KIND_REMOVE);
        self.buf.extend_from_slice(&group.to_le_bytes());
    }

    /// Adds the seal that closes a segment.
    pub fn seal(&mut self) {
        self.buf.push(KIND_SEAL);
        self.buf.extend_from_slice(&0u64.to_le_bytes());
    }

    /// Fills in the header for a record of segment `seq` and returns the
    /// whole record (header + payload).
    pub fn finish(mut self, seq: u64) -> Record {
        let payload_len = self.payload_len();
        // The payload crc runs over the pieces in file order.
        let mut crc = crc32fast::Hasher::new();
        let mut from = HEADER_LEN;
        for (at, data) in &self.referenced {
            crc.update(&self.buf[from..*at]);
            crc.update(data);
            from = *at;
        }
        crc.update(&self.buf[from..]);
        let payload_crc = crc.finalize();
        self.buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
        self.buf[8..12].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = header_crc(&self.buf[0..12], Some(seq));
        self.buf[12..16].copy_from_slice(&header_crc.to_le_bytes());
        let buf = Bytes::from(self.buf);
        let mut parts = Vec::with_capacity(2 * self.referenced.len() + 1);
        let mut from = 0;
        for (at, data) in self.referenced {
            parts.push(buf.slice(from..at));
            parts.push(data);
            from = at;
        }
        parts.push(buf.slice(from..));
        Record {
            parts,
            len: HEADER_LEN + payload_len,
        }
    }
}

/// The crc of a header's first 12 bytes, bound to the segment's sequence
/// number (`None`: a version-1 segment, unbound).
fn header_crc(fields: &[u8], seq: Option<u64>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(seq) = seq {
        h.update(&seq.to_le_bytes());
    }
    h.update(fields);
    h.finalize()
}

/// A header that passed its own checksum.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// crc32 of the payload.
    pub payload_crc: u32,
}

/// Parses a header of segment `seq` (`None` for a version-1 segment);
/// `None` if the magic, the header crc or the length is wrong.
pub fn parse_header(b: &[u8], seq: Option<u64>) -> Option<Header> {
    if b.len() < HEADER_LEN {
        return None;
    }
    if le32(&b[0..4]) != RECORD_MAGIC || header_crc(&b[0..12], seq) != le32(&b[12..16]) {
        return None;
    }
    let payload_len = le32(&b[4..8]);
    (payload_len <= MAX_PAYLOAD).then_some(Header {
        payload_len,
        payload_crc: le32(&b[8..12]),
    })
}

/// Decodes a payload whose crc already matched. An error means the payload
/// is malformed (a bug or corruption the crc did not catch).
pub fn decode_payload(payload: &Bytes) -> Result<Vec<Item>, &'static str> {
    let mut items = Vec::new();
    let mut at = 0usize;
    let b = &payload[..];
    let take = |at: &mut usize, n: usize| -> Result<usize, &'static str> {
        let start = *at;
        let end = start.checked_add(n).ok_or("length overflow")?;
        if end > b.len() {
            return Err("item runs past the end of the record");
        }
        *at = end;
        Ok(start)
    };
    while at < b.len() {
        let kind = b[take(&mut at, 1)?];
        let group = le64(&b[take(&mut at, 8)?..]);
        match kind {
            KIND_ENTRY => {
                let index = le64(&b[take(&mut at, 8)?..]);
                let term = le64(&b[take(&mut at, 8)?..]);
                let len = le32(&b[take(&mut at, 4)?..]) as usize;
                let start = take(&mut at, len)?;
                items.push(Item::Entry {
                    group,
                    index,
                    term,
                    data_offset: start,
                    data: payload.slice(start..start + len),
                });
            }
            KIND_STATE => {
                let len = le32(&b[take(&mut at, 4)?..]) as usize;
                let start = take(&mut at, len)?;
                items.push(Item::State {
                    group,
                    data: payload.slice(start..start + len),
                });
            }
            KIND_COMPACT => {
                let first_index = le64(&b[take(&mut at, 8)?..]);
                items.push(Item::Compact { group, first_index });
            }
            KIND_REMOVE => items.push(Item::Remove { group }),
            KIND_SEAL => items.push(Item::Seal),
            _ => return Err("unknown item kind"),
        }
    }
    Ok(items)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<(), &'static str> {
        let mut r = RecordBuilder::new();
        let off = r.entry(7, 10, 2, &Bytes::from_static(b"hello").into());
        let big = Bytes::from(vec![3u8; REFERENCE_MIN + 1]);
        let big_off = r.entry(7, 11, 2, &big.clone().into());
        r.state(7, b"st");
        r.compact(3, 99);
        r.remove(4);
        r.seal();
        let rec = r.finish(9).to_vec();
        let h = parse_header(&rec, Some(9)).ok_or("header")?;
        assert_eq!(h.payload_len as usize, rec.len() - HEADER_LEN);
        let payload = Bytes::copy_from_slice(&rec[HEADER_LEN..]);
        assert_eq!(crc32fast::hash(&payload), h.payload_crc);
        let items = decode_payload(&payload)?;
        assert_eq!(items.len(), 6);
        match &items[0] {
            Item::Entry {
                group: 7,
                index: 10,
                term: 2,
                data_offset,
                data,
            } => {
                assert_eq!(*data_offset, off);
                assert_eq!(&data[..], b"hello");
            }
            other => panic!("{other:?}"),
        }
        match &items[1] {
            Item::Entry {
                data_offset, data, ..
            } => {
                assert_eq!(*data_offset, big_off);
                assert_eq!(data, &big, "referenced data lands in place");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            items[3],
            Item::Compact {
                group: 3,
                first_index: 99
            }
        );
        assert_eq!(items[4], Item::Remove { group: 4 });
        assert_eq!(items[5], Item::Seal);
        Ok(())
    }

    #[test]
    fn a_header_only_passes_in_its_own_segment() {
        let mut r = RecordBuilder::new();
        r.state(1, b"x");
        let rec = r.finish(7).to_vec();
        assert!(parse_header(&rec, Some(7)).is_some());
        // A recycled file's leftovers: the same bytes read as segment 8.
        assert!(parse_header(&rec, Some(8)).is_none());
        assert!(parse_header(&rec, None).is_none());
    }

    #[test]
    fn damaged_header_is_rejected() {
        let mut r = RecordBuilder::new();
        r.state(1, b"x");
        let mut rec = r.finish(1).to_vec();
        rec[5] ^= 1;
        assert!(parse_header(&rec, Some(1)).is_none());
    }

    #[test]
    fn truncated_item_is_an_error() {
        let mut r = RecordBuilder::new();
        r.entry(1, 1, 1, &Bytes::from_static(b"abcdef").into());
        let rec = r.finish(1).to_vec();
        let short = Bytes::copy_from_slice(&rec[HEADER_LEN..rec.len() - 2]);
        assert!(decode_payload(&short).is_err());
    }
}
