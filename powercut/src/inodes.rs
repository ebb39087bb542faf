//! The inode table: FUSE node ids ↔ backing inodes. Each entry holds an
//! `O_PATH` descriptor of its backing inode, so it follows renames and
//! survives unlinks, and is keyed by the backing (st_dev, st_ino) so a second
//! name or a second lookup finds the same entry. The pending (unsynced)
//! changes of a file live in its entry: they follow the inode through
//! renames, and because the entry's descriptor pins the backing inode, its
//! number cannot be reused by a new file while they exist.
//!
//! Lifetime: an entry counts kernel lookups (FUSE `nlookup`, decreased by
//! FORGET) and open handles. It goes away when both are zero and nothing is
//! pending. Pending changes of a file with no names left and no open
//! handles can never be read or synced again, so they are dropped then.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Errno, Result};
use crate::overlay::Pending;
use crate::sys;

/// FUSE node id of the root directory.
pub const ROOT: u64 = fuser::FUSE_ROOT_ID;

/// Identity of a backing inode.
pub type Key = (u64, u64);

/// The key of a stat result.
pub fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

/// One known inode.
#[derive(Debug)]
pub struct Inode {
    /// `O_PATH` descriptor of the backing inode.
    pub fd: OwnedFd,
    key: Key,
    nlookup: u64,
    /// Open file handles on it.
    pub open: u32,
    /// Unsynced changes; `None` when the backing file is the whole truth.
    pub pending: Option<Pending>,
}

impl Inode {
    /// The pending changes, started (from the backing file's size) if there
    /// were none. Only regular files have data to change.
    pub fn pending_mut(&mut self) -> Result<&mut Pending> {
        let Inode { fd, pending, .. } = self;
        if let Some(p) = pending {
            return Ok(p);
        }
        let st = sys::fstat(fd.as_fd())?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Ok(pending.insert(Pending::new(st.st_size as u64))),
            libc::S_IFDIR => Err(Errno(libc::EISDIR)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }
}

/// All known inodes.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Inode>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

impl Inodes {
    /// A table holding the root, `root` being its `O_PATH` descriptor.
    pub fn new(root: OwnedFd) -> Result<Inodes> {
        let key = key_of(&sys::fstat(root.as_fd())?);
        let inode = Inode {
            fd: root,
            key,
            // The kernel never forgets the root; one reference keeps it.
            nlookup: 1,
            open: 0,
            pending: None,
        };
        Ok(Inodes {
            by_ino: HashMap::from([(ROOT, inode)]),
            by_key: HashMap::from([(key, ROOT)]),
            next: ROOT + 1,
        })
    }

    /// The entry of `ino`; a node id we do not know is stale (ESTALE).
    pub fn get(&self, ino: u64) -> Result<&Inode> {
        self.by_ino.get(&ino).ok_or(Errno(libc::ESTALE))
    }

    /// Mutable [`Inodes::get`].
    pub fn get_mut(&mut self, ino: u64) -> Result<&mut Inode> {
        self.by_ino.get_mut(&ino).ok_or(Errno(libc::ESTALE))
    }

    /// The node id of a backing inode, if known.
    pub fn find(&self, key: Key) -> Option<u64> {
        self.by_key.get(&key).copied()
    }

    /// Counts one kernel lookup of the backing inode behind `fd`, adding an
    /// entry if it is new (else `fd` is just closed). Returns its node id.
    pub fn lookup(&mut self, fd: OwnedFd, key: Key) -> u64 {
        if let Some(ino) = self.find(key) {
            if let Some(inode) = self.by_ino.get_mut(&ino) {
                inode.nlookup += 1;
                return ino;
            }
        }
        // Node ids are never reused, so generation 0 is always right.
        let ino = self.next;
        self.next += 1;
        let inode = Inode {
            fd,
            key,
            nlookup: 1,
            open: 0,
            pending: None,
        };
        self.by_ino.insert(ino, inode);
        self.by_key.insert(key, ino);
        ino
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.nlookup = inode.nlookup.saturating_sub(n);
        }
        self.release_unused(ino);
    }

    /// After a lookup, handle or name of `ino` went away: drops pending
    /// changes nobody can reach any more, then the entry if it is unused.
    pub fn release_unused(&mut self, ino: u64) {
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        if inode.open == 0 && inode.pending.is_some() {
            // A failed fstat keeps the changes: losing them is the worse bug.
            if let Ok(st) = sys::fstat(inode.fd.as_fd()) {
                if st.st_nlink == 0 {
                    tracing::debug!(ino, "dropping pending changes of a deleted file");
                    inode.pending = None;
                }
            }
        }
        if ino != ROOT && inode.nlookup == 0 && inode.open == 0 && inode.pending.is_none() {
            let key = inode.key;
            self.by_ino.remove(&ino);
            self.by_key.remove(&key);
        }
    }

    /// Node ids of all entries with pending changes.
    pub fn with_pending(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .by_ino
            .iter()
            .filter(|(_, i)| i.pending.is_some())
            .map(|(ino, _)| *ino)
            .collect();
        v.sort_unstable();
        v
    }
}
