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

    /// `len` bytes from `start`: a slice of one piece when they lie in one
    /// (a large payload passed as `body` always does), else a copy.
    pub fn slice(&self, start: usize, len: usize) -> Bytes {
        let h = self.head.len();
        if start + len <= h {
            self.head.slice(start..start + len)
        } else if start >= h {
            self.body.slice(start - h..start - h + len)
        } else {
            let mut v = Vec::with_capacity(len);
            v.extend_from_slice(&self.head[start..]);
            v.extend_from_slice(&self.body[..start + len - h]);
            v.into()
        }
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
