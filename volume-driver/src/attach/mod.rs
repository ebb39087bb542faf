//! Attaching a volume to this node as a block device, and the filesystem on
//! it. One interface, two backends chosen at run time: the kernel NBD
//! device (`kernel_nbd`) where the `nbd` module is present, and otherwise
//! the volume exposed as a file in a FUSE filesystem served by the daemon
//! (`fuse_file`) bound to a loop device (`loop_dev`). Either way the
//! caller gets a `/dev/...` path and a handle that detaches.

mod error;
pub mod fs;
pub mod fuse_file;
pub mod kernel_nbd;
pub mod loop_dev;
mod tool;

pub use error::AttachError;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raftblock_storage::VolumeIo;
use tokio::runtime::Handle;

/// The FUSE file + loop device backend, as the mount table records it.
pub const FUSE_LOOP: &str = "fuse-loop";
/// The kernel NBD backend, as the mount table records it.
pub const KERNEL_NBD: &str = "kernel-nbd";

/// Which backend attaches volumes on this host.
pub fn method() -> &'static str {
    if kernel_nbd::available() {
        KERNEL_NBD
    } else {
        FUSE_LOOP
    }
}

/// Logs which attach path this machine gets.
pub fn log_method() {
    tracing::info!(
        method = method(),
        "volumes attach through {}",
        match method() {
            KERNEL_NBD => "kernel NBD devices",
            _ => "a FUSE file on a loop device (no nbd kernel module here)",
        }
    );
}

enum Backend {
    FuseLoop {
        fuse_dir: PathBuf,
        file: Option<fuse_file::MountedFile>,
    },
    KernelNbd(kernel_nbd::KernelDevice),
}

/// A volume attached as a block device; [`Attached::detach`] undoes it.
pub struct Attached {
    /// The block device.
    pub device: PathBuf,
    /// Which backend ([`FUSE_LOOP`] or [`KERNEL_NBD`]).
    pub method: &'static str,
    /// The volume's size as the device last showed it.
    pub size: u64,
    backend: Backend,
}

impl Attached {
    /// Makes the device show the volume's new size `size`: the FUSE file's
    /// cached size is dropped and the loop device's capacity refreshed, or
    /// the kernel NBD device is told the new size.
    pub fn grow(&mut self, size: u64) -> Result<(), AttachError> {
        match &self.backend {
            Backend::FuseLoop {
                file: Some(file), ..
            } => {
                let seen = file.refresh_size()?;
                if seen < size {
                    return Err(AttachError::GrowNotSeen {
                        device: self.device.clone(),
                        seen,
                        want: size,
                    });
                }
                loop_dev::refresh_capacity(&self.device)?;
            }
            Backend::FuseLoop { file: None, .. } => return Ok(()),
            Backend::KernelNbd(d) => d.set_size(size)?,
        }
        self.size = size;
        Ok(())
    }

    /// Releases the device (and unmounts the FUSE file).
    pub fn detach(self) -> Result<(), AttachError> {
        match self.backend {
            Backend::FuseLoop { fuse_dir, mut file } => {
                loop_dev::release(&self.device)?;
                if !loop_dev::wait_released(&self.device, std::time::Duration::from_secs(10)) {
                    tracing::warn!(device = %self.device.display(), "loop device still busy after release");
                }
                // Dropping the session unmounts the FUSE filesystem; if the
                // kernel still held the file, finish that lazily.
                file.take();
                if fs::is_mounted(&fuse_dir) {
                    fs::unmount_lazy(&fuse_dir)?;
                }
                let _ = std::fs::remove_dir(&fuse_dir);
                Ok(())
            }
            Backend::KernelNbd(d) => d.detach(),
        }
    }
}

/// Attaches `volume`, doing its I/O on `rt`; `work_dir` holds the FUSE
/// file when that backend is used. Kernel NBD is tried first where the
/// module is present; if it fails, FUSE + loop is used.
pub fn attach<V: VolumeIo>(
    volume: Arc<V>,
    rt: Handle,
    work_dir: &Path,
) -> Result<Attached, AttachError> {
    if method() == KERNEL_NBD {
        match kernel_nbd::attach(volume.clone(), rt.clone()) {
            Ok(d) => {
                return Ok(Attached {
                    device: d.device.clone(),
                    method: KERNEL_NBD,
                    size: volume.size(),
                    backend: Backend::KernelNbd(d),
                })
            }
            Err(e) => {
                tracing::warn!(volume = volume.name(), error = %e, "kernel NBD attach failed; using FUSE + loop")
            }
        }
    }
    let fuse_dir = work_dir.join("fuse");
    let size = volume.size();
    let file = fuse_file::mount(volume, rt, &fuse_dir)?;
    match loop_dev::bind(&fuse_dir.join(fuse_file::FILE_NAME)) {
        Ok(device) => Ok(Attached {
            device,
            method: FUSE_LOOP,
            size,
            backend: Backend::FuseLoop {
                fuse_dir,
                file: Some(file),
            },
        }),
        Err(e) => {
            drop(file);
            Err(e)
        }
    }
}

/// Undoes whatever is attached below `root` (what an earlier run of the
/// daemon left, or a test or benchmark that failed): lazily unmounts the
/// filesystems, frees the loop devices bound to files there, then unmounts
/// the FUSE files under them. Returns what it did, for the log.
pub fn clean_stale(root: &Path) -> Vec<String> {
    let mut did = Vec::new();
    let mut mounts = fs::mounts_under(root);
    // Deepest first; filesystems before the FUSE files their devices sit on.
    mounts.sort_by(|a, b| b.0.cmp(&a.0));
    let (fuse, other): (Vec<_>, Vec<_>) = mounts.into_iter().partition(|m| m.1.starts_with("fuse"));
    let unmount =
        |(p, t): (std::path::PathBuf, String), did: &mut Vec<String>| match fs::unmount_lazy(&p) {
            Ok(()) => did.push(format!("unmounted stale {t} mount {}", p.display())),
            Err(e) => did.push(format!("stale {t} mount {}: {e}", p.display())),
        };
    for m in other {
        unmount(m, &mut did);
    }
    for (dev, file) in loop_dev::bound_under(root) {
        match loop_dev::release(&dev) {
            Ok(()) => did.push(format!(
                "freed stale loop device {} ({})",
                dev.display(),
                file.display()
            )),
            Err(e) => did.push(format!("stale loop device {}: {e}", dev.display())),
        }
    }
    for m in fuse {
        unmount(m, &mut did);
    }
    did
}
