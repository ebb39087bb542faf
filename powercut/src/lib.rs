//! raftblock-powercut: a FUSE filesystem for power-loss tests, in the spirit
//! of Jepsen's LazyFS. It mounts a passthrough view of a backing directory
//! but keeps every data change (write, truncate, fallocate, copy) in this
//! process's memory until the file is fsync'd or fdatasync'd. Killing the
//! process (SIGKILL, or SIGTERM/SIGINT, which are not caught) is the power
//! cut: whatever was not synced is gone, as on a disk with a volatile write
//! cache. A clean unmount writes everything out, as a real filesystem does.
//!
//! Simplification: names are durable at once. Create, mknod, mkdir, unlink,
//! rmdir, rename, link and symlink, and metadata (mode, owner, times), are
//! applied to the backing directory immediately, so fsync of a directory
//! has nothing left to do; only file *data* and *size* wait for fsync. A
//! test therefore cannot catch a missing directory fsync, only a missing
//! file fsync.
//!
//! Reads see the unsynced state: the backing file with the file's pending
//! changes replayed in order on top, and stat reports the size they leave.
//! The kernel page cache is used (no `direct_io`), so shared writable mmap
//! works: dirty pages reach the filesystem as writes at writeback, and
//! msync/fdatasync sends the fsync that makes them durable. `O_DIRECT` opens
//! are accepted; the kernel sends their writes straight to us.

pub mod cli;
pub mod error;
mod fs;
mod inodes;
pub mod overlay;
mod sys;

use std::path::Path;

use fuser::MountOption;

pub use error::{Errno, ServeError};
pub use fs::PowercutFs;

/// Mounts a filesystem over `backing` on `mountpoint`, calls `ready` once
/// the mount is in place, and serves requests until the filesystem is
/// unmounted (then writes out everything pending) or the process is killed.
///
/// Sets the process umask to 0: the kernel has already applied the caller's
/// umask to the modes it sends, and the backing files must get them as is.
pub fn serve(backing: &Path, mountpoint: &Path, ready: impl FnOnce()) -> Result<(), ServeError> {
    sys::set_umask(0);
    let fs = PowercutFs::new(backing).map_err(|source| ServeError::Backing {
        path: backing.to_owned(),
        source,
    })?;
    let options = [
        MountOption::FSName("raftblock-powercut".into()),
        MountOption::Subtype("raftblock-powercut".into()),
        MountOption::RW,
        // The kernel checks permissions from the modes we report, so
        // access() and open need no checks of their own.
        MountOption::DefaultPermissions,
    ];
    let mut session =
        fuser::Session::new(fs, mountpoint, &options).map_err(|source| ServeError::Mount {
            path: mountpoint.to_owned(),
            source,
        })?;
    ready();
    session.run().map_err(ServeError::Session)?;
    // Dropping the session calls destroy (write-out) and unmounts.
    Ok(())
}
