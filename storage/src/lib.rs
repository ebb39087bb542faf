//! Node-local storage for raftblock: the chunk store that holds volume data on
//! the node's device, the I/O engines that move bytes (io_uring, or a thread
//! pool where io_uring is unavailable), per-4 KiB checksums, and the sled
//! catalog of volumes. Every front end (NBD now, replication next) reaches the
//! data through the [`VolumeIo`] trait defined here.

pub mod catalog;
pub mod checksum;
pub mod chunk;
pub mod engine;
pub mod error;
pub mod gather;
pub mod io;
mod locks;
pub mod logged;
pub mod pace;
pub mod size;
pub mod staging;
pub mod store;
pub mod volume;
pub mod wal;

pub use catalog::{Catalog, VolumeMeta};
pub use engine::{Engine, EngineKind};
pub use error::{Result, StorageError};
pub use io::{zeros, Extent, ReadSegment, VolumeIo, ZeroMode, ZERO_RUN};
pub use logged::LogRef;
pub use store::{ChunkStore, DiskUsage};
pub use volume::{LocalVolume, LoggedSummary, VolumeStats};
pub use wal::{EntryBytes, TailBytes, Wal, WalBatch, WalError, WalOptions};

/// Size of a checksummed block: the unit of verification and of hole tracking.
pub const BLOCK_SIZE: u64 = 4096;
/// Default chunk size for new volumes (64 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
/// Smallest chunk size a volume may use.
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
/// Largest chunk size a volume may use.
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
