//! A volume exposed as one file, `disk`, in a FUSE filesystem served by the
//! daemon itself: the fallback attach path where the kernel has no `nbd`
//! module (a loop device is then bound to the file). Reads and writes of the
//! file are reads and writes of the volume; discards punch holes.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
};
use raftblock_storage::{ReadSegment, VolumeIo, ZeroMode};
use tokio::runtime::Handle;

use super::error::AttachError;

/// Name of the one file.
pub const FILE_NAME: &str = "disk";
const ROOT: u64 = 1;
const FILE: u64 = 2;
/// Attributes change only with a resize, which invalidates them
/// (`MountedFile::refresh_size`); let the kernel keep them meanwhile.
const TTL: Duration = Duration::from_secs(3600);

/// The FUSE filesystem of one volume.
struct VolumeFile<V: VolumeIo> {
    volume: Arc<V>,
    rt: Handle,
}

impl<V: VolumeIo> VolumeFile<V> {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o700, 0, 2)
        } else {
            (FileType::RegularFile, 0o600, self.volume.size(), 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl<V: VolumeIo> Filesystem for VolumeFile<V> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        // Fewer, larger requests from the loop device, and many of them in
        // flight (they are answered from tasks, out of order).
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        // Let the loop device's asynchronous direct I/O reach us as many
        // requests at once instead of one at a time.
        let _ = config.add_capabilities(fuser::consts::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.attr(FILE), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT | FILE => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        if ino == FILE {
            // Direct I/O: the loop device above caches already.
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        } else {
            reply.error(libc::EISDIR);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != FILE || offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let end = (offset as u64 + size as u64).min(self.volume.size());
        let len = end.saturating_sub(offset as u64);
        if len == 0 {
            return reply.data(&[]);
        }
        // Replies go out from the task, so the session thread takes the
        // next request at once and requests run concurrently.
        let v = self.volume.clone();
        self.rt.spawn(async move {
            match v.read(offset as u64, len).await {
                // One data segment (the common case) goes out as it is;
                // only a mix of data and holes is gathered into one buffer.
                Ok(segs) => match segs.as_slice() {
                    [ReadSegment::Data(b)] => reply.data(b),
                    _ => {
                        let mut out = Vec::with_capacity(len as usize);
                        for s in segs {
                            match s {
                                ReadSegment::Data(b) => out.extend_from_slice(&b),
                                ReadSegment::Hole(n) => out.resize(out.len() + n as usize, 0),
                            }
                        }
                        reply.data(&out);
                    }
                },
                Err(e) => {
                    tracing::warn!(volume = v.name(), offset, error = %e, "FUSE read failed");
                    reply.error(e.errno());
                }
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if ino != FILE || offset < 0 {
            return reply.error(libc::EINVAL);
        }
        if offset as u64 + data.len() as u64 > self.volume.size() {
            return reply.error(libc::ENOSPC);
        }
        let bytes = Bytes::copy_from_slice(data);
        let len = data.len() as u32;
        let v = self.volume.clone();
        self.rt.spawn(async move {
            match v.write(offset as u64, bytes, false).await {
                Ok(()) => reply.written(len),
                Err(e) => {
                    tracing::warn!(volume = v.name(), offset, error = %e, "FUSE write failed");
                    reply.error(e.errno());
                }
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        // Every write was replied to after it was committed; the flush
        // covers those that completed before this fsync was sent.
        let v = self.volume.clone();
        self.rt.spawn(async move {
            match v.flush().await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.errno()),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE || offset < 0 || length < 0 {
            return reply.error(libc::EINVAL);
        }
        let (off, len) = (offset as u64, length as u64);
        let len = len.min(self.volume.size().saturating_sub(off));
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            // Collapse/insert range would move data: not for a block device.
            return reply.error(libc::EOPNOTSUPP);
        }
        let v = self.volume.clone();
        self.rt.spawn(async move {
            let r = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
                // Discard: the range reads as zeros and gives its space back.
                v.trim(off, len, false).await
            } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
                // Write-zeroes from the loop device.
                v.write_zeroes(off, len, ZeroMode::Allocate, false).await
            } else {
                // The volume has its full size already; nothing to allocate.
                Ok(())
            };
            match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.errno()),
            }
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(libc::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted volume file; dropping it unmounts the FUSE filesystem.
pub struct MountedFile {
    session: fuser::BackgroundSession,
    path: std::path::PathBuf,
}

impl MountedFile {
    /// Makes the kernel drop the file's cached attributes and look them up
    /// again (the volume was resized); returns the size it now shows.
    pub fn refresh_size(&self) -> Result<u64, AttachError> {
        let grow_err = |step, source| AttachError::Grow {
            step,
            device: self.path.clone(),
            source,
        };
        // Offset -1: the attributes only (the file has no page cache).
        self.session
            .notifier()
            .inval_inode(FILE, -1, 0)
            .map_err(|e| grow_err("invalidating the FUSE file's attributes", e))?;
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| grow_err("reading the FUSE file's size", e))
    }
}

/// Mounts the FUSE filesystem of `volume` on `dir`; the volume is then the
/// file `dir/disk`. I/O is run on `rt`.
pub fn mount<V: VolumeIo>(
    volume: Arc<V>,
    rt: Handle,
    dir: &Path,
) -> Result<MountedFile, AttachError> {
    std::fs::create_dir_all(dir).map_err(|source| AttachError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = volume.name().to_string();
    let fs = VolumeFile { volume, rt };
    let opts = [
        MountOption::FSName(format!("raftblock:{name}")),
        MountOption::Subtype("raftblock".into()),
        MountOption::RW,
        MountOption::NoExec,
    ];
    let session = fuser::spawn_mount2(fs, dir, &opts).map_err(|source| AttachError::FuseMount {
        volume: name,
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(MountedFile {
        session,
        path: dir.join(FILE_NAME),
    })
}
