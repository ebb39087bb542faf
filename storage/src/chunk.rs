//! One chunk of a volume on disk: a sparse data file plus its checksum table
//! (one 32-bit slot per 4 KiB block, see `checksum`). The table is the file
//! `NNNNNNNN.crc` mapped shared: reading or updating a slot costs no system
//! call, an update lands in the page cache at once (it survives `kill -9`,
//! and fdatasync of the file makes it durable), and there is no second copy
//! to keep in step. The file is preallocated so a page fault never needs space.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::logged::LoggedBlocks;
use crate::BLOCK_SIZE;

/// An open chunk: data file, checksum file and the in-memory slot table.
pub struct Chunk {
    /// Index of the chunk within its volume.
    pub index: u64,
    pub(crate) data: Arc<File>,
    pub(crate) crc: Arc<File>,
    /// The data file opened for direct I/O on first use (`None` where the
    /// filesystem refuses O_DIRECT); large writes go through it.
    direct: OnceLock<Option<Arc<File>>>,
    path: PathBuf,
    slots: SlotMap,
    /// Written since the last fdatasync.
    pub(crate) dirty: AtomicBool,
    /// Held across clearing `dirty` and the fdatasync: a second flush
    /// waits for one in progress instead of taking the clear flag for a
    /// finished sync.
    pub(crate) sync_lock: tokio::sync::Mutex<()>,
    /// Blocks whose newest data is still only in the Raft log.
    pub(crate) logged: LoggedBlocks,
}

/// The checksum file mapped shared and writable.
struct SlotMap {
    ptr: *mut AtomicU32,
    len: usize,
}

// SAFETY: the mapping is only accessed through atomics and unmapped once.
unsafe impl Send for SlotMap {}
// SAFETY: as above.
unsafe impl Sync for SlotMap {}

impl SlotMap {
    fn new(file: &File, slots: usize) -> io::Result<SlotMap> {
        let len = slots * 4;
        // SAFETY: mapping a file we hold open, length within its size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SlotMap {
            ptr: ptr.cast(),
            len,
        })
    }

    fn len(&self) -> usize {
        self.len / 4
    }

    fn get(&self, i: usize) -> &AtomicU32 {
        assert!(i * 4 < self.len);
        // SAFETY: in bounds (checked above), page-aligned base, lives as long as self.
        unsafe { &*self.ptr.add(i) }
    }
}

impl Drop for SlotMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Path of a chunk's data file.
pub fn data_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:08}.data"))
}

/// Path of a chunk's checksum file.
pub fn crc_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:08}.crc"))
}

impl Chunk {
    /// Opens chunk `index` in `dir`. Returns `None` when it was never written
    /// and `create` is false; with `create` the files are made (and the
    /// directory synced so they survive a crash).
    pub fn open(
        dir: &Path,
        index: u64,
        chunk_size: u64,
        create: bool,
    ) -> io::Result<Option<Chunk>> {
        let dpath = data_path(dir, index);
        let cpath = crc_path(dir, index);
        let exists = dpath.exists();
        if !exists && !create {
            return Ok(None);
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(create);
        let data = opts.open(&dpath)?;
        let crc = opts.open(&cpath)?;
        if !exists {
            File::open(dir)?.sync_all()?;
        }
        let blocks = (chunk_size / BLOCK_SIZE) as usize;
        let table_len = (blocks * 4) as u64;
        if crc.metadata()?.len() < table_len {
            crc.set_len(table_len)?;
        }
        // Allocate the table's blocks now so writing a slot can never fault
        // for lack of space (which would be SIGBUS, not an error).
        // SAFETY: fallocate on an open descriptor with plain integers.
        if unsafe { libc::fallocate(crc.as_raw_fd(), 0, 0, table_len as i64) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let slots = SlotMap::new(&crc, blocks)?;
        Ok(Some(Chunk {
            index,
            data: Arc::new(data),
            crc: Arc::new(crc),
            direct: OnceLock::new(),
            path: dpath,
            slots,
            dirty: AtomicBool::new(false),
            sync_lock: tokio::sync::Mutex::new(()),
            logged: LoggedBlocks::default(),
        }))
    }

    /// The data file opened with O_DIRECT for writing, if the filesystem
    /// allows it (tmpfs does not). Opened through `/proc/self/fd`, so it is
    /// the very file `data` is even if another file was renamed over the
    /// chunk's path since (a catch-up copy swapping in staged chunks while
    /// a settle still held this one): by path, the data would go to the
    /// new file and the checksums to this chunk's table, leaving the new
    /// table wrong for its data.
    pub(crate) fn direct(&self) -> Option<&Arc<File>> {
        self.direct
            .get_or_init(|| {
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(format!("/proc/self/fd/{}", self.data.as_raw_fd()))
                    .map_err(|e| tracing::debug!(path = %self.path.display(), error = %e, "no direct I/O"))
                    .ok()
                    .map(Arc::new)
            })
            .as_ref()
    }

    /// The checksum slot of block `b` (block index within the chunk).
    pub fn slot(&self, b: u64) -> u32 {
        u32::from_le(self.slots.get(b as usize).load(Ordering::Acquire))
    }

    /// Sets the slots of blocks starting at `first` in the mapped table.
    pub(crate) fn set_slots(&self, first: u64, values: &[u32]) {
        for (i, v) in values.iter().enumerate() {
            self.slots
                .get(first as usize + i)
                .store(v.to_le(), Ordering::Release);
        }
        self.dirty.store(true, Ordering::Release);
    }

    /// Number of blocks holding data.
    pub fn allocated_blocks(&self) -> u64 {
        (0..self.slots.len())
            .filter(|&i| self.slots.get(i).load(Ordering::Relaxed) != 0)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_direct_handle_is_the_open_data_file_even_after_a_rename_over_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let chunk = Chunk::open(dir.path(), 0, 1 << 20, true)
            .expect("open")
            .expect("created");
        // A catch-up copy swaps another file in under the same name.
        let other = dir.path().join("staged");
        std::fs::write(&other, b"staged").expect("write");
        std::fs::rename(&other, data_path(dir.path(), 0)).expect("rename");
        let Some(direct) = chunk.direct() else {
            panic!("O_DIRECT refused in {}", dir.path().display());
        };
        let ino = |f: &File| f.metadata().expect("stat").ino();
        assert_eq!(ino(direct), ino(&chunk.data));
        assert_ne!(
            ino(direct),
            std::fs::metadata(data_path(dir.path(), 0))
                .expect("stat")
                .ino()
        );
    }
}
