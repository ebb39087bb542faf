//! File contents: open, read, write, truncate, fallocate, copy, fsync,
//! release. Changes go to the inode's [`Pending`] list and nowhere else;
//! reads are the backing file with that list replayed on top; fsync applies
//! the list to the backing file, fdatasyncs it and empties the list.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use fuser::FileAttr;

use super::{offset, FileHandle, PowercutFs};
use crate::error::{Errno, Result};
use crate::overlay::{check_fallocate, Pending};
use crate::sys;

/// Most bytes one COPY_FILE_RANGE request copies; the copy is held in
/// memory and callers loop on short copies anyway.
const COPY_MAX: u64 = 8 << 20;

/// Largest end offset a file may reach (what `loff_t` can hold).
const MAX_END: u64 = i64::MAX as u64;

/// `[offset, offset + len)` must stay within `loff_t`.
fn check_end(offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_END => Ok(()),
        _ => Err(Errno(libc::EFBIG)),
    }
}

/// Reads `len` bytes of the file's current view at `offset` (fewer at its
/// end): the backing file through `file`, then the pending changes on top.
fn read_view(
    file: &File,
    pending: Option<&Pending>,
    offset: u64,
    len: usize,
) -> io::Result<Vec<u8>> {
    let len = match pending {
        Some(p) => p.size().saturating_sub(offset).min(len as u64) as usize,
        None => len,
    };
    // Zero-filled: past the backing file's end the view reads zeros.
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    match pending {
        Some(p) => p.overlay(offset, &mut buf),
        None => buf.truncate(got),
    }
    Ok(buf)
}

impl PowercutFs {
    pub(super) fn do_open(&mut self, ino: u64, flags: i32) -> Result<u64> {
        let inode = self.inodes.get_mut(ino)?;
        // Only the access mode: O_DIRECT, O_APPEND, O_SYNC and the like
        // describe how the caller writes, and its writes never reach this
        // descriptor; the kernel already computed offsets for O_APPEND.
        let file = sys::reopen(inode.fd.as_fd(), flags & libc::O_ACCMODE)?;
        inode.open += 1;
        let fh = self.new_fh();
        tracing::debug!(ino, fh, flags = format_args!("{flags:#o}"), "open");
        self.files.insert(fh, FileHandle { ino, file });
        Ok(fh)
    }

    pub(super) fn do_create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64)> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        // Without O_TRUNC: an existing file's truncation must stay pending.
        let open_flags = flags & (libc::O_ACCMODE | libc::O_EXCL);
        let file = sys::create_file(dir, name, open_flags, mode)?;
        let mut attr = self.entry(parent, name)?;
        let inode = self.inodes.get_mut(attr.ino)?;
        if flags & libc::O_TRUNC != 0 && attr.size > 0 {
            inode.pending_mut()?.set_size(0);
            attr.size = 0;
        }
        inode.open += 1;
        let fh = self.new_fh();
        self.files.insert(
            fh,
            FileHandle {
                ino: attr.ino,
                file,
            },
        );
        Ok((attr, fh))
    }

    pub(super) fn do_read(&mut self, ino: u64, fh: u64, off: i64, size: u32) -> Result<Vec<u8>> {
        let off = offset(off)?;
        let handle = self.files.get(&fh).ok_or(Errno(libc::EBADF))?;
        let pending = self.inodes.get(ino)?.pending.as_ref();
        Ok(read_view(&handle.file, pending, off, size as usize)?)
    }

    pub(super) fn do_write(&mut self, ino: u64, fh: u64, off: i64, data: &[u8]) -> Result<u32> {
        let off = offset(off)?;
        if !self.files.contains_key(&fh) {
            return Err(Errno(libc::EBADF));
        }
        check_end(off, data.len() as u64)?;
        let n = u32::try_from(data.len()).map_err(|_| Errno(libc::EINVAL))?;
        self.inodes
            .get_mut(ino)?
            .pending_mut()?
            .write(off, data.to_vec());
        Ok(n)
    }

    pub(super) fn do_setattr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        (atime, mtime): (Option<libc::timespec>, Option<libc::timespec>),
    ) -> Result<FileAttr> {
        let inode = self.inodes.get_mut(ino)?;
        // Metadata goes to the backing file at once, like names.
        if let Some(m) = mode {
            sys::chmod(inode.fd.as_fd(), m & 0o7777)?;
        }
        if uid.is_some() || gid.is_some() {
            sys::chown(inode.fd.as_fd(), uid, gid)?;
        }
        if let Some(size) = size {
            check_end(size, 0)?;
            inode.pending_mut()?.set_size(size);
        }
        if atime.is_some() || mtime.is_some() {
            sys::utimens(inode.fd.as_fd(), atime, mtime)?;
        }
        self.attr(ino)
    }

    pub(super) fn do_fallocate(
        &mut self,
        ino: u64,
        fh: u64,
        off: i64,
        len: i64,
        mode: i32,
    ) -> Result<()> {
        if !self.files.contains_key(&fh) {
            return Err(Errno(libc::EBADF));
        }
        let off = offset(off)?;
        let len = u64::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or(Errno(libc::EINVAL))?;
        check_end(off, len)?;
        check_fallocate(mode)?;
        self.inodes
            .get_mut(ino)?
            .pending_mut()?
            .fallocate(mode, off, len);
        Ok(())
    }

    /// Copies by value: the bytes the source shows now become a pending
    /// write of the destination.
    pub(super) fn do_copy_file_range(
        &mut self,
        (ino_in, fh_in, off_in): (u64, u64, i64),
        (ino_out, fh_out, off_out): (u64, u64, i64),
        len: u64,
        flags: u32,
    ) -> Result<u32> {
        if flags != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let (off_in, off_out) = (offset(off_in)?, offset(off_out)?);
        if !self.files.contains_key(&fh_out) {
            return Err(Errno(libc::EBADF));
        }
        let src = self.files.get(&fh_in).ok_or(Errno(libc::EBADF))?;
        let pending = self.inodes.get(ino_in)?.pending.as_ref();
        let data = read_view(&src.file, pending, off_in, len.min(COPY_MAX) as usize)?;
        check_end(off_out, data.len() as u64)?;
        let n = data.len() as u32;
        if n > 0 {
            self.inodes
                .get_mut(ino_out)?
                .pending_mut()?
                .write(off_out, data);
        }
        Ok(n)
    }

    /// fsync/fdatasync: makes the pending changes of `ino` durable.
    pub(super) fn sync(&mut self, ino: u64, datasync: bool) -> Result<()> {
        let inode = self.inodes.get_mut(ino)?;
        let Some(pending) = inode.pending.as_mut() else {
            return Ok(());
        };
        let (ops, size) = (pending.ops().len(), pending.size());
        // A descriptor of our own: the caller's may be read-only, and
        // fsync on a read-only descriptor is allowed.
        let file = sys::reopen(inode.fd.as_fd(), libc::O_WRONLY)?;
        pending.apply(&file)?;
        inode.pending = None;
        if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        let backing = file.metadata()?.len();
        if backing != size {
            // The view promised `size`; anything else is a bug here.
            tracing::error!(
                ino,
                size,
                backing,
                "backing size differs from the view after fsync"
            );
            return Err(Errno(libc::EIO));
        }
        tracing::debug!(ino, ops, size, "synced");
        Ok(())
    }

    pub(super) fn do_release(&mut self, fh: u64) {
        let Some(handle) = self.files.remove(&fh) else {
            return;
        };
        if let Ok(inode) = self.inodes.get_mut(handle.ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.inodes.release_unused(handle.ino);
    }

    /// Syncs every file with pending changes (clean unmount).
    pub(super) fn sync_everything(&mut self) {
        for ino in self.inodes.with_pending() {
            if let Err(e) = self.sync(ino, false) {
                tracing::error!(ino, error = %e, "sync at unmount failed");
            }
        }
    }
}
