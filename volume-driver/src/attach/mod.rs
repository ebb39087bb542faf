//! Attaching a volume to this node as a block device, and the filesystem on
//! it. The volume becomes a file in a FUSE filesystem served by the daemon,
//! bound to a loop device: that works on machines without the kernel `nbd`
//! module (the kernel NBD path for hosts that have it is still to come).
//! The caller gets a `/dev/...` path and a handle that detaches.

pub mod fs;
pub mod fuse_file;
pub mod loop_dev;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raftblock_storage::VolumeIo;
use tokio::runtime::Handle;

/// How volumes are attached here, as the mount table records it.
pub const METHOD: &str = "fuse-loop";

/// Logs which attach path this machine gets. The kernel NBD path (for
/// hosts with the `nbd` module) is not built yet: FUSE + loop everywhere.
pub fn log_method() {
    if Path::new("/sys/module/nbd").exists() {
        tracing::info!("the nbd module is loaded, but kernel NBD attach is not built yet; attaching through FUSE + loop");
    }
}

/// A volume attached as a block device; [`Attached::detach`] undoes it.
pub struct Attached {
    /// The block device.
    pub device: PathBuf,
    fuse_dir: PathBuf,
    file: Option<fuse_file::MountedFile>,
}

impl Attached {
    /// Releases the device and unmounts the FUSE file.
    pub fn detach(mut self) -> Result<(), String> {
        loop_dev::release(&self.device)?;
        // Dropping the session unmounts the FUSE filesystem.
        self.file.take();
        let _ = std::fs::remove_dir(&self.fuse_dir);
        Ok(())
    }
}

/// Attaches `volume` under `work_dir` (where its FUSE file lives), doing
/// its I/O on `rt`.
pub fn attach<V: VolumeIo>(
    volume: Arc<V>,
    rt: Handle,
    work_dir: &Path,
) -> Result<Attached, String> {
    let fuse_dir = work_dir.join("fuse");
    let file = fuse_file::mount(volume, rt, &fuse_dir)?;
    match loop_dev::bind(&fuse_dir.join(fuse_file::FILE_NAME)) {
        Ok(device) => Ok(Attached {
            device,
            fuse_dir,
            file: Some(file),
        }),
        Err(e) => {
            drop(file);
            Err(e)
        }
    }
}

/// Undoes attachments an earlier run left under `root` (one directory per
/// volume, each with `mnt` and `fuse`): lazily unmounts their filesystems
/// and FUSE files and frees loop devices bound to files there. Returns what
/// it did, for the log.
pub fn clean_stale(root: &Path) -> Vec<String> {
    let mut did = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root) else {
        return did;
    };
    let dirs: Vec<PathBuf> = dirs.flatten().map(|e| e.path()).collect();
    for d in &dirs {
        let mnt = d.join("mnt");
        if fs::is_mounted(&mnt) {
            match fs::unmount_lazy(&mnt) {
                Ok(()) => did.push(format!("unmounted stale filesystem {}", mnt.display())),
                Err(e) => did.push(format!("stale filesystem {}: {e}", mnt.display())),
            }
        }
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
    for d in &dirs {
        let fuse = d.join("fuse");
        if fs::is_mounted(&fuse) {
            match fs::unmount_lazy(&fuse) {
                Ok(()) => did.push(format!("unmounted stale FUSE file {}", fuse.display())),
                Err(e) => did.push(format!("stale FUSE file {}: {e}", fuse.display())),
            }
        }
    }
    did
}
