//! An entry's bytes as the WAL takes and gives them: two pieces stored back
//! to back. A caller that frames a large payload with a header of its own
//! passes the payload as `body`, by reference, instead of first copying it
//! behind the header; the WAL writes both pieces in one record (large ones
//! through `pwritev`, see `record.rs`) and keeps them as they are in its
//! cache. What is read back from a segment is one piece, all in `head`.

use bytes::Bytes;

/// The bytes of one log entry: `head` followed by `body`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryBytes {
    /// The first piece (all of it when the entry is one piece).
    pub head: Bytes,
    /// The rest, often a payload shared with the caller; may be empty.
    pub body: Bytes,
}

impl EntryBytes {
    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether the entry holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry as one buffer (a copy when it is in two pieces).
    pub fn to_bytes(&self) -> Bytes {
        if self.body.is_empty() {
            self.head.clone()
        } else {
            [&self.head[..], &self.body[..]].concat().into()
        }
    }
}

impl From<Bytes> for EntryBytes {
    fn from(head: Bytes) -> Self {
        EntryBytes {
            head,
            body: Bytes::new(),
        }
    }
}
