//! Directory entries: lookup, create, remove, rename, link, listing. These
//! are applied to the backing directory at once and are therefore durable
//! at once (the simplification documented at the crate root). What they do
//! to pending data: none moves, because pending changes belong to the inode,
//! not the name; a name removal may leave a file with no names, whose
//! changes are dropped once no handle is open on it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{DirEntryExt, FileTypeExt};

use fuser::{FileAttr, FileType};

use super::{to_attr, DirEntry, PowercutFs};
use crate::error::{Errno, Result};
use crate::inodes::{key_of, ROOT};
use crate::sys;

impl PowercutFs {
    /// Looks `name` up in `parent`, counting the lookup (every successful
    /// entry reply is one, per the FUSE protocol).
    pub(super) fn entry(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        let fd = sys::open_path(dir, name)?;
        let st = sys::fstat(fd.as_fd())?;
        let ino = self.inodes.lookup(fd, key_of(&st));
        let pending = self.inodes.get(ino)?.pending.as_ref().map(|p| p.size());
        Ok(to_attr(ino, &st, pending))
    }

    pub(super) fn do_mknod(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        sys::mknod_at(dir, name, mode, u64::from(rdev))?;
        self.entry(parent, name)
    }

    pub(super) fn do_mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        sys::mkdir_at(dir, name, mode)?;
        self.entry(parent, name)
    }

    pub(super) fn do_symlink(
        &mut self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<FileAttr> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        sys::symlink_at(target, dir, name)?;
        self.entry(parent, name)
    }

    pub(super) fn do_link(
        &mut self,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<FileAttr> {
        let fd = self.inodes.get(ino)?.fd.as_fd();
        let dir = self.inodes.get(newparent)?.fd.as_fd();
        sys::link_at(fd, dir, newname)?;
        self.entry(newparent, newname)
    }

    pub(super) fn do_readlink(&mut self, ino: u64) -> Result<OsString> {
        Ok(sys::readlink(self.inodes.get(ino)?.fd.as_fd())?)
    }

    /// unlink (`flags` 0) or rmdir (`AT_REMOVEDIR`).
    pub(super) fn do_unlink(&mut self, parent: u64, name: &OsStr, flags: i32) -> Result<()> {
        let dir = self.inodes.get(parent)?.fd.as_fd();
        let victim = sys::stat_at(dir, name)
            .ok()
            .and_then(|st| self.inodes.find(key_of(&st)));
        sys::unlink_at(dir, name, flags)?;
        if let Some(ino) = victim {
            self.inodes.release_unused(ino);
        }
        Ok(())
    }

    pub(super) fn do_rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let olddir = self.inodes.get(parent)?.fd.as_fd();
        let newdir = self.inodes.get(newparent)?.fd.as_fd();
        // A replaced target may lose its last name (not so on exchange).
        let victim = if flags & libc::RENAME_EXCHANGE == 0 {
            sys::stat_at(newdir, newname)
                .ok()
                .and_then(|st| self.inodes.find(key_of(&st)))
        } else {
            None
        };
        sys::rename_at(olddir, name, newdir, newname, flags)?;
        if let Some(ino) = victim {
            self.inodes.release_unused(ino);
        }
        Ok(())
    }

    /// Lists the directory now; readdir serves from this listing.
    pub(super) fn do_opendir(&mut self, ino: u64) -> Result<u64> {
        let fd = self.inodes.get(ino)?.fd.as_fd();
        let st = sys::fstat(fd)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        let mut entries = vec![
            DirEntry {
                ino: st.st_ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                // Only a hint (and never 0, which libc would skip).
                ino: if ino == ROOT { st.st_ino } else { 1 },
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for e in std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))? {
            let e = e?;
            entries.push(DirEntry {
                ino: e.ino(),
                kind: entry_kind(e.file_type()?),
                name: e.file_name(),
            });
        }
        let fh = self.new_fh();
        self.dirs.insert(fh, entries);
        Ok(fh)
    }
}

fn entry_kind(t: std::fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else {
        FileType::RegularFile
    }
}
