//! Why attaching, detaching or preparing a volume's device failed. Each
//! variant names what it is about (device, file, directory, volume or the
//! command that was run) and keeps the underlying error; the Docker plugin
//! shows the text to the user as it is.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Why an attach-side operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A system tool (`blkid`, `mkfs.*`, `mount`, `umount`, `losetup`)
    /// could not be started: not installed, or not permitted.
    #[error("{command}: {source}")]
    Spawn {
        /// The command line, as run.
        command: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A system tool ran and exited with a failure.
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        /// The command line, as run.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on standard error (trimmed).
        stderr: String,
    },
    /// `blkid` could not tell what the device holds.
    #[error("blkid {}: {stderr}", device.display())]
    Probe {
        /// The device probed.
        device: PathBuf,
        /// What `blkid` printed on standard error (trimmed).
        stderr: String,
    },
    /// `losetup` succeeded but printed no device name.
    #[error("losetup printed no device for {}", file.display())]
    NoLoopDevice {
        /// The file that was to be bound.
        file: PathBuf,
    },
    /// A directory (a mountpoint, the FUSE file's directory) could not be
    /// created.
    #[error("creating {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The FUSE filesystem exposing a volume as a file could not be
    /// mounted.
    #[error("FUSE mount of volume {volume} on {}: {source}", dir.display())]
    FuseMount {
        /// The volume.
        volume: String,
        /// Where it was to be mounted.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A step of setting up, serving or disconnecting a kernel NBD device
    /// failed.
    #[error("{step} {}: {source}", device.display())]
    Nbd {
        /// What was being done (`opening`, `configuring`, `NBD_DISCONNECT`, ...).
        step: &'static str,
        /// The device (`/dev/nbdN`).
        device: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A step of growing an attached device to its volume's new size failed.
    #[error("growing {}: {step}: {source}", device.display())]
    Grow {
        /// What was being done.
        step: &'static str,
        /// The device or file.
        device: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// After a resize the device still shows the old size.
    #[error("growing {}: it shows {seen} bytes, not the volume's {want}", device.display())]
    GrowNotSeen {
        /// The device or file.
        device: PathBuf,
        /// The size it shows.
        seen: u64,
        /// The volume's size.
        want: u64,
    },
    /// This host has no `/dev/nbdN` devices at all.
    #[error("no /dev/nbdN devices")]
    NoNbdDevices,
    /// Every `/dev/nbdN` was connected already or could not be set up.
    #[error("no free kernel NBD device: {last}")]
    NoFreeNbdDevice {
        /// How the last device tried failed ([`AttachError::NoNbdDevices`]
        /// when none was free to try).
        #[source]
        last: Box<AttachError>,
    },
}
