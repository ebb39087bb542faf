//! Requests one node forwards to another over the transport: a proposal to
//! a shard's leader, a linearizable read or a block-status query served by
//! the leader. The answer says who the leader is when the callee is not it,
//! so the caller retries in one hop. Encoded with prost like raft traffic.

use bytes::Bytes;

use raftblock_storage::{Extent, ReadSegment};

use crate::error::ReplicaError;

pub use crate::error::RouteError;
use crate::meta::MetaError;

/// Request kinds.
pub mod kind {
    /// Propose `data` (a shard or meta command); answered after apply.
    pub const PROPOSE: i32 = 1;
    /// Read `[offset, offset + len)` of the shard's volume.
    pub const READ: i32 = 2;
    /// Allocation extents of `[offset, offset + len)`.
    pub const BLOCK_STATUS: i32 = 3;
    /// Read this node's own copy of a range, without a read barrier (the
    /// fuzzy copy a snapshot is made of).
    pub const READ_LOCAL: i32 = 5;
    /// Add node `offset` to the meta group (`len` != 0: as a learner).
    pub const ADD_MEMBER: i32 = 4;
    /// The checksum table of this node's copy of chunk `offset` (one
    /// segment: a hole when it holds no data there), to find the chunks
    /// two replicas disagree on.
    pub const CHUNK_SUMS: i32 = 6;
    /// The checksum table of chunk `len` as this node recorded it at
    /// comparison cut `offset` (Retry until it has applied the cut).
    pub const CUT_SUMS: i32 = 7;
}

/// Response statuses.
pub mod status {
    /// Done.
    pub const OK: i32 = 0;
    /// The callee is not the leader; see `leader`.
    pub const NOT_LEADER: i32 = 1;
    /// The callee holds no replica.
    pub const NO_REPLICA: i32 = 2;
    /// Try again.
    pub const RETRY: i32 = 3;
    /// A metadata command was refused; `message` holds the JSON MetaError.
    pub const META: i32 = 4;
    /// Applying or the local I/O failed; `errno` and `message` say how.
    pub const FAILED: i32 = 5;
    /// The callee is stopping.
    pub const STOPPED: i32 = 6;
}

/// A forwarded request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcRequest {
    /// Caller-chosen id, echoed in the response.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Raft group.
    #[prost(uint64, tag = "2")]
    pub group: u64,
    /// One of [`kind`].
    #[prost(int32, tag = "3")]
    pub kind: i32,
    /// Command for a proposal.
    #[prost(bytes = "bytes", tag = "4")]
    pub data: Bytes,
    /// Volume offset of a read or block-status query.
    #[prost(uint64, tag = "5")]
    pub offset: u64,
    /// Its length.
    #[prost(uint64, tag = "6")]
    pub len: u64,
    /// Wall-clock time (ms since the epoch) after which the caller no
    /// longer waits: a request that arrives later (it sat in a TCP buffer
    /// through a partition) is dropped instead of applied behind the back
    /// of a client that was already told it failed. 0: none.
    #[prost(uint64, tag = "7")]
    pub deadline_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A piece of a read reply or a block-status extent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcSegment {
    /// A hole (no data follows).
    #[prost(bool, tag = "1")]
    pub hole: bool,
    /// Length in bytes.
    #[prost(uint64, tag = "2")]
    pub len: u64,
    /// The bytes of a data segment of a read.
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
    /// crc32 of `data`, checked by the receiver (end to end, on top of TCP's).
    #[prost(uint32, tag = "4")]
    pub crc: u32,
}

/// The answer to an [`RpcRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcResponse {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// One of [`status`].
    #[prost(int32, tag = "2")]
    pub status: i32,
    /// The leader the callee knows of (0: none).
    #[prost(uint64, tag = "3")]
    pub leader: u64,
    /// Errno of a failure.
    #[prost(int32, tag = "4")]
    pub errno: i32,
    /// Error text.
    #[prost(string, tag = "5")]
    pub message: String,
    /// Read data or extents.
    #[prost(message, repeated, tag = "6")]
    pub segments: Vec<RpcSegment>,
}

impl RpcResponse {
    /// A response carrying `result`.
    pub fn from_result(id: u64, result: Result<Vec<RpcSegment>, RouteError>) -> RpcResponse {
        let mut r = RpcResponse {
            id,
            ..RpcResponse::default()
        };
        match result {
            Ok(segments) => r.segments = segments,
            Err(RouteError::Io { errno, message }) => {
                r.status = status::FAILED;
                r.errno = errno;
                r.message = message;
            }
            Err(RouteError::Replica(e)) => {
                r.message = e.to_string();
                r.status = match e {
                    ReplicaError::NotLeader { leader, .. } => {
                        r.leader = leader.unwrap_or(0);
                        status::NOT_LEADER
                    }
                    ReplicaError::NoReplica(_) => status::NO_REPLICA,
                    ReplicaError::Retry(_) => status::RETRY,
                    ReplicaError::Meta(m) => {
                        r.message = serde_json::to_string(&m).unwrap_or_default();
                        status::META
                    }
                    ReplicaError::Apply(_) | ReplicaError::Fenced { .. } => {
                        r.errno = e.errno();
                        status::FAILED
                    }
                    ReplicaError::Stopped => status::STOPPED,
                };
            }
        }
        r
    }

    /// The result this response carries, for a request to `group`.
    pub fn into_result(self, group: u64) -> Result<Vec<RpcSegment>, RouteError> {
        let e = match self.status {
            status::OK => return Ok(self.segments),
            status::NOT_LEADER => ReplicaError::NotLeader {
                group,
                leader: Some(self.leader).filter(|l| *l != 0),
            },
            status::NO_REPLICA => ReplicaError::NoReplica(group),
            status::META => match serde_json::from_str::<MetaError>(&self.message) {
                Ok(m) => ReplicaError::Meta(m),
                Err(_) => ReplicaError::Apply(self.message),
            },
            status::STOPPED => ReplicaError::Stopped,
            status::FAILED => {
                return Err(RouteError::Io {
                    errno: if self.errno == 0 {
                        raftblock_storage::error::errno::EIO
                    } else {
                        self.errno
                    },
                    message: self.message,
                })
            }
            _ => ReplicaError::Retry(group),
        };
        Err(RouteError::Replica(e))
    }
}

/// Read segments as RPC segments.
pub fn segments_of_read(segs: Vec<ReadSegment>) -> Vec<RpcSegment> {
    segs.into_iter()
        .map(|s| match s {
            ReadSegment::Data(b) => RpcSegment {
                hole: false,
                len: b.len() as u64,
                crc: crc32fast::hash(&b),
                data: b,
            },
            ReadSegment::Hole(n) => RpcSegment {
                hole: true,
                len: n,
                data: Bytes::new(),
                crc: 0,
            },
        })
        .collect()
}

/// Why the segments of an RPC answer are not what they should carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// A data segment's bytes disagree with its length or its crc.
    #[error("a forwarded read segment at +{at} ({len} bytes) failed its checksum")]
    ReadChecksum {
        /// Where the segment starts, from the start of the read.
        at: u64,
        /// Its length.
        len: u64,
    },
    /// A checksum-table answer carried no segment.
    #[error("a checksum table answer without a segment")]
    NoSums,
    /// A checksum table's bytes are not whole 32-bit words or disagree
    /// with their crc.
    #[error("a checksum table of {len} bytes failed its own checksum")]
    SumsChecksum {
        /// Bytes received.
        len: usize,
    },
}

/// RPC segments as read segments; a data segment whose crc does not match
/// (or whose length disagrees) is an error naming its position.
pub fn read_of_segments(segs: Vec<RpcSegment>) -> Result<Vec<ReadSegment>, SegmentError> {
    let mut at = 0u64;
    segs.into_iter()
        .map(|s| {
            let seg = if s.hole {
                ReadSegment::Hole(s.len)
            } else {
                if s.data.len() as u64 != s.len || crc32fast::hash(&s.data) != s.crc {
                    return Err(SegmentError::ReadChecksum { at, len: s.len });
                }
                ReadSegment::Data(s.data)
            };
            at += s.len;
            Ok(seg)
        })
        .collect()
}

/// A chunk's checksum table as one RPC segment (a hole for none).
pub fn segments_of_sums(sums: Option<Vec<u32>>) -> Vec<RpcSegment> {
    let seg = match sums {
        None => RpcSegment {
            hole: true,
            ..RpcSegment::default()
        },
        Some(sums) => {
            let data: Bytes = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
            RpcSegment {
                hole: false,
                len: data.len() as u64,
                crc: crc32fast::hash(&data),
                data,
            }
        }
    };
    vec![seg]
}

/// The checksum table an RPC answer carries ([`segments_of_sums`]).
pub fn sums_of_segments(segs: Vec<RpcSegment>) -> Result<Option<Vec<u32>>, SegmentError> {
    let Some(s) = segs.into_iter().next() else {
        return Err(SegmentError::NoSums);
    };
    if s.hole {
        return Ok(None);
    }
    if s.data.len() % 4 != 0 || crc32fast::hash(&s.data) != s.crc {
        return Err(SegmentError::SumsChecksum { len: s.data.len() });
    }
    Ok(Some(
        s.data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

/// Extents as RPC segments.
pub fn segments_of_extents(ext: Vec<Extent>) -> Vec<RpcSegment> {
    ext.into_iter()
        .map(|e| RpcSegment {
            hole: e.hole,
            len: e.len,
            data: Bytes::new(),
            crc: 0,
        })
        .collect()
}

/// RPC segments as extents.
pub fn extents_of_segments(segs: Vec<RpcSegment>) -> Vec<Extent> {
    segs.into_iter()
        .map(|s| Extent {
            len: s.len,
            hole: s.hole,
        })
        .collect()
}
