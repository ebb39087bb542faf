//! The storage error type: every variant names the volume (and where it
//! applies the chunk and offset) so a log line or an NBD error reply can say
//! exactly what failed.

use std::io;

/// Result alias for storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Errors from the chunk store and the catalog.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// volume `{0}` does not exist
    #[error("volume `{0}` does not exist")]
    VolumeNotFound(String),
    /// volume `{0}` already exists
    #[error("volume `{0}` already exists")]
    VolumeExists(String),
    /// volume is in use by open connections
    #[error("volume `{name}` is in use by {handles} open connection(s); disconnect them first")]
    VolumeBusy { name: String, handles: usize },
    /// invalid volume name
    #[error("invalid volume name `{name}`: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// invalid size or chunk size
    #[error("invalid {what} {value}: {reason}")]
    InvalidSize {
        what: &'static str,
        value: u64,
        reason: &'static str,
    },
    /// request outside the volume
    #[error("volume `{volume}`: range {offset}+{len} is beyond the end ({size} bytes)")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// checksum mismatch: the stored block does not match its crc32
    #[error("volume `{volume}` chunk {chunk}: checksum mismatch in the 4 KiB block at volume offset {offset}")]
    Checksum {
        volume: String,
        chunk: u64,
        offset: u64,
    },
    /// an I/O error from the device
    #[error("volume `{volume}` chunk {chunk}: {op} failed: {source}")]
    Io {
        volume: String,
        chunk: u64,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// a replicated request failed (no shard leader in time, or a replica's error)
    #[error("volume `{volume}` at offset {offset}: {reason}")]
    Replication {
        volume: String,
        offset: u64,
        errno: i32,
        reason: String,
    },
    /// a block whose newest data is only in the Raft log could not be read from it
    #[error("volume `{volume}` chunk {chunk}: reading the block at volume offset {offset} from the Raft log failed: {source}")]
    Log {
        volume: String,
        chunk: u64,
        offset: u64,
        #[source]
        source: crate::wal::WalError,
    },
    /// the I/O engine has stopped
    #[error("the I/O engine has stopped")]
    EngineStopped,
    /// the catalog database failed
    #[error("catalog: {0}")]
    Catalog(String),
    /// a file in the data directory could not be used
    #[error("{path}: {source}")]
    Path {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// a step of catching a shard up by copy (its staging area) failed
    #[error("{path}: {op} failed: {source}")]
    Staging {
        path: std::path::PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Linux errno values used at the edges (NBD maps these to its own codes).
pub mod errno {
    pub const EPERM: i32 = libc::EPERM;
    pub const EIO: i32 = libc::EIO;
    pub const EINVAL: i32 = libc::EINVAL;
    pub const ENOSPC: i32 = libc::ENOSPC;
    pub const ESHUTDOWN: i32 = libc::ESHUTDOWN;
}

impl StorageError {
    /// The errno a block-device client should see for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StorageError::OutOfRange { .. }
            | StorageError::InvalidName { .. }
            | StorageError::InvalidSize { .. } => errno::EINVAL,
            StorageError::Io { source, .. }
            | StorageError::Path { source, .. }
            | StorageError::Staging { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => errno::ENOSPC,
                _ => errno::EIO,
            },
            StorageError::EngineStopped => errno::ESHUTDOWN,
            StorageError::Replication { errno, .. } => *errno,
            _ => errno::EIO,
        }
    }

    /// Whether this is a checksum failure (counted separately in metrics).
    pub fn is_checksum(&self) -> bool {
        matches!(self, StorageError::Checksum { .. })
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Catalog(e.to_string())
    }
}
