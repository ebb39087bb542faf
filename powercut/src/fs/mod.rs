//! The FUSE filesystem: a passthrough view of a backing directory whose data
//! changes stay in memory until fsync. This module holds the state and the
//! [`Filesystem`] implementation, which only unpacks requests, calls the
//! handlers of [`names`] (directory entries, applied to the backing
//! directory at once) and [`data`] (file contents, kept pending) and turns
//! their `Result` into a reply or an errno.
//!
//! One thread serves all requests, so no locking is needed and the order
//! the kernel sends requests in is the order they take effect in.

mod attr;
mod data;
mod names;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use crate::error::{Errno, Result};
use crate::inodes::{Inodes, ROOT};
use crate::sys;
use attr::{timespec, to_attr};

/// How long the kernel may cache entries and attributes. Nothing but this
/// process changes the backing directory, so the value is only a trade of
/// request count against staleness should someone do so anyway.
const TTL: Duration = Duration::from_secs(1);

/// An open file.
#[derive(Debug)]
struct FileHandle {
    ino: u64,
    /// The backing file, opened with the caller's access mode only (never
    /// `O_DIRECT`, `O_APPEND` or `O_TRUNC`: writes never reach it directly).
    file: File,
}

/// One entry of a directory listing.
#[derive(Debug)]
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// The filesystem state.
#[derive(Debug)]
pub struct PowercutFs {
    inodes: Inodes,
    files: HashMap<u64, FileHandle>,
    /// Open directories: a listing taken at opendir, so offsets stay stable.
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
}

impl PowercutFs {
    /// A filesystem over the directory `backing`.
    pub fn new(backing: &Path) -> std::io::Result<PowercutFs> {
        let root = sys::open_dir_path(backing)?;
        let inodes = Inodes::new(root).map_err(|e| std::io::Error::from_raw_os_error(e.0))?;
        Ok(PowercutFs {
            inodes,
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
        })
    }

    fn new_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    /// Attributes of `ino`, with the size its pending changes give it.
    fn attr(&self, ino: u64) -> Result<FileAttr> {
        let inode = self.inodes.get(ino)?;
        let st = sys::fstat(inode.fd.as_fd())?;
        Ok(to_attr(ino, &st, inode.pending.as_ref().map(|p| p.size())))
    }
}

/// A negative or oversized offset from the kernel.
fn offset(o: i64) -> Result<u64> {
    u64::try_from(o).map_err(|_| Errno(libc::EINVAL))
}

fn reply_entry(r: Result<FileAttr>, reply: ReplyEntry) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, 0),
        Err(e) => reply.error(e.0),
    }
}

fn reply_empty(r: Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.0),
    }
}

impl Filesystem for PowercutFs {
    fn init(
        &mut self,
        _req: &Request<'_>,
        _config: &mut KernelConfig,
    ) -> std::result::Result<(), libc::c_int> {
        // Deliberately no FUSE_WRITEBACK_CACHE: without it every write()
        // (and every dirty mmap page at writeback) reaches us as a WRITE at
        // once, so the kernel's page cache holds nothing we do not know.
        Ok(())
    }

    fn destroy(&mut self) {
        // A clean unmount is not a power cut: like a real filesystem, write
        // everything out.
        self.sync_everything();
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        reply_entry(self.entry(parent, name), reply);
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.inodes.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e.0),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let times = (atime.map(timespec), mtime.map(timespec));
        match self.do_setattr(ino, mode, uid, gid, size, times) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e.0),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.do_readlink(ino) {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(e.0),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(self.do_mknod(parent, name, mode & !umask, rdev), reply);
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(self.do_mkdir(parent, name, mode & !umask), reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.do_unlink(parent, name, 0), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(self.do_unlink(parent, name, libc::AT_REMOVEDIR), reply);
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            self.do_symlink(parent, link_name, target.as_os_str()),
            reply,
        );
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            self.do_rename(parent, name, newparent, newname, flags),
            reply,
        );
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(self.do_link(ino, newparent, newname), reply);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        // Open flags 0: no FOPEN_DIRECT_IO (mmap needs the page cache) and
        // no FOPEN_KEEP_CACHE (each open rereads through us).
        match self.do_open(ino, flags) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e.0),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e.0),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino, fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.0),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh);
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, datasync: bool, reply: ReplyEmpty) {
        reply_empty(self.sync(ino, datasync), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(fh, 0),
            Err(e) => reply.error(e.0),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in entries.iter().enumerate().skip(skip) {
            // The offset of an entry is where the next readdir resumes.
            if reply.add(e.ino, i as i64 + 1, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(&fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are applied to the backing directory at once, so they are
        // already as durable as they get here; file data is not affected.
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        match self
            .inodes
            .get(ROOT)
            .and_then(|r| Ok(sys::statvfs(r.fd.as_fd())?))
        {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e.0),
        }
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        // Mounted with default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, 0, fh, 0),
            Err(e) => reply.error(e.0),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.do_fallocate(ino, fh, offset, length, mode), reply);
    }

    fn copy_file_range(
        &mut self,
        _req: &Request<'_>,
        ino_in: u64,
        fh_in: u64,
        offset_in: i64,
        ino_out: u64,
        fh_out: u64,
        offset_out: i64,
        len: u64,
        flags: u32,
        reply: ReplyWrite,
    ) {
        let r = self.do_copy_file_range(
            (ino_in, fh_in, offset_in),
            (ino_out, fh_out, offset_out),
            len,
            flags,
        );
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.0),
        }
    }
}
