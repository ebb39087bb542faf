//! Front ends that expose raftblock volumes to clients. Today that is the NBD
//! server (`nbd`), with per-volume request metrics (`metrics`); the Docker
//! volume plugin joins it next. Everything here reaches data only through
//! `raftblock_storage::VolumeIo`, so replication slots in underneath.

pub mod metrics;
pub mod nbd;

pub use metrics::NbdMetrics;
pub use nbd::client::NbdClient;
pub use nbd::{ExportCatalog, ExportInfo, NbdServer, OpenExport};
