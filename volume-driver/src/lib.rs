//! Front ends that expose raftblock volumes to clients: the NBD server
//! (`nbd`) with per-volume request metrics (`metrics`), the Docker volume
//! plugin (`docker`) and attaching a volume to this host as a block device
//! (`attach`). Everything here reaches data only through
//! `raftblock_storage::VolumeIo`, so replication slots in underneath.

pub mod attach;
pub mod docker;
pub mod metrics;
pub mod nbd;

pub use metrics::NbdMetrics;
pub use nbd::client::NbdClient;
pub use nbd::{ExportCatalog, ExportInfo, NbdServer, OpenExport};
