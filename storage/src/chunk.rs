//! One chunk of a volume on disk: a sparse data file plus its checksum table
//! (one 32-bit slot per 4 KiB block, see `checksum`). The table is kept in
//! memory while the chunk is open and written through to `NNNNNNNN.crc` with
//! every write, so a read costs one device access and is still verified.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::BLOCK_SIZE;

/// An open chunk: data file, checksum file and the in-memory slot table.
pub struct Chunk {
    /// Index of the chunk within its volume.
    pub index: u64,
    pub(crate) data: Arc<File>,
    pub(crate) crc: Arc<File>,
    slots: Box<[AtomicU32]>,
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
        let mut raw = vec![0u8; blocks * 4];
        let mut got = 0;
        while got < raw.len() {
            match crc.read_at(&mut raw[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let slots = raw
            .chunks_exact(4)
            .map(|b| AtomicU32::new(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect();
        Ok(Some(Chunk {
            index,
            data: Arc::new(data),
            crc: Arc::new(crc),
            slots,
        }))
    }

    /// The checksum slot of block `b` (block index within the chunk).
    pub fn slot(&self, b: u64) -> u32 {
        self.slots[b as usize].load(Ordering::Acquire)
    }

    /// Sets the slots of blocks starting at `first`; returns their on-disk bytes.
    pub(crate) fn set_slots(&self, first: u64, values: &[u32]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(values.len() * 4);
        for (i, v) in values.iter().enumerate() {
            self.slots[first as usize + i].store(*v, Ordering::Release);
            raw.extend_from_slice(&v.to_le_bytes());
        }
        raw
    }

    /// Number of blocks holding data.
    pub fn allocated_blocks(&self) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count() as u64
    }
}
