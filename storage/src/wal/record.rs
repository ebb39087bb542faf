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
//! ```
//! Integers are little-endian. The header has its own crc so a scan can
//! recognise a record start without trusting its length.

use bytes::Bytes;

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
}

/// Builds one record's payload.
pub struct RecordBuilder {
    buf: Vec<u8>,
}

impl Default for RecordBuilder {
    // Not derived: the buffer must start with room for the header.
    fn default() -> Self {
        RecordBuilder::new()
    }
}

impl RecordBuilder {
    /// An empty payload with room for the header in front.
    pub fn new() -> RecordBuilder {
        RecordBuilder {
            buf: vec![0; HEADER_LEN],
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    /// Payload bytes so far (header excluded).
    pub fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Adds an entry; returns the offset of its data within the payload.
    pub fn entry(&mut self, group: u64, index: u64, term: u64, data: &[u8]) -> usize {
        self.buf.push(KIND_ENTRY);
        self.buf.extend_from_slice(&group.to_le_bytes());
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf.extend_from_slice(&term.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        let at = self.payload_len();
        self.buf.extend_from_slice(data);
        at
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

    /// Fills in the header and returns the whole record (header + payload).
    pub fn finish(mut self) -> Vec<u8> {
        let payload_len = (self.buf.len() - HEADER_LEN) as u32;
        let payload_crc = crc32fast::hash(&self.buf[HEADER_LEN..]);
        self.buf[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&self.buf[0..12]);
        self.buf[12..16].copy_from_slice(&header_crc.to_le_bytes());
        self.buf
    }
}

/// A header that passed its own checksum.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// crc32 of the payload.
    pub payload_crc: u32,
}

/// Parses a header; `None` if the magic, the header crc or the length is wrong.
pub fn parse_header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN {
        return None;
    }
    if le32(&b[0..4]) != RECORD_MAGIC || crc32fast::hash(&b[0..12]) != le32(&b[12..16]) {
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
        let off = r.entry(7, 10, 2, b"hello");
        r.state(7, b"st");
        r.compact(3, 99);
        r.remove(4);
        let rec = r.finish();
        let h = parse_header(&rec).ok_or("header")?;
        assert_eq!(h.payload_len as usize, rec.len() - HEADER_LEN);
        let payload = Bytes::copy_from_slice(&rec[HEADER_LEN..]);
        assert_eq!(crc32fast::hash(&payload), h.payload_crc);
        let items = decode_payload(&payload)?;
        assert_eq!(items.len(), 4);
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
        assert_eq!(
            items[2],
            Item::Compact {
                group: 3,
                first_index: 99
            }
        );
        assert_eq!(items[3], Item::Remove { group: 4 });
        Ok(())
    }

    #[test]
    fn damaged_header_is_rejected() {
        let mut r = RecordBuilder::new();
        r.state(1, b"x");
        let mut rec = r.finish();
        rec[5] ^= 1;
        assert!(parse_header(&rec).is_none());
    }

    #[test]
    fn truncated_item_is_an_error() {
        let mut r = RecordBuilder::new();
        r.entry(1, 1, 1, b"abcdef");
        let rec = r.finish();
        let short = Bytes::copy_from_slice(&rec[HEADER_LEN..rec.len() - 2]);
        assert!(decode_payload(&short).is_err());
    }
}
