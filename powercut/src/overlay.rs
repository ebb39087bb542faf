//! The unsynced changes of one file: an ordered list of operations on top of
//! the backing file, which stays exactly as it was at the last fsync. A read
//! is the backing bytes with every pending operation replayed, in order, onto
//! the read window; fsync replays them onto the backing file itself. Keeping
//! the operations as they came (rather than a merged extent map) makes both
//! obviously right: the view is by construction what the backing file would
//! hold after the same calls. Memory is the bytes written since the last
//! fsync, overwrites included.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::Errno;
use crate::sys;

/// One data change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// pwrite of `data` at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// ftruncate to this size (shrinking or growing).
    SetSize(u64),
    /// fallocate with a mode [`check_fallocate`] accepted.
    Fallocate { mode: i32, offset: u64, len: u64 },
}

/// Whether the kernel's fallocate `mode` is one we replay: allocate (0),
/// `KEEP_SIZE`, `PUNCH_HOLE|KEEP_SIZE`, `ZERO_RANGE` with or without
/// `KEEP_SIZE`. Collapse and insert range shift data; refused like a
/// filesystem that lacks them (EOPNOTSUPP).
pub fn check_fallocate(mode: i32) -> Result<(), Errno> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    match mode {
        0 | KEEP => Ok(()),
        m if m == PUNCH | KEEP => Ok(()),
        m if m == ZERO || m == ZERO | KEEP => Ok(()),
        _ => Err(Errno(libc::EOPNOTSUPP)),
    }
}

fn zeroes_data(mode: i32) -> bool {
    mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0
}

fn keeps_size(mode: i32) -> bool {
    mode & libc::FALLOC_FL_KEEP_SIZE != 0
}

/// The pending operations of one file and the size they leave it at.
#[derive(Debug, Clone)]
pub struct Pending {
    ops: Vec<Op>,
    size: u64,
}

impl Pending {
    /// Nothing pending over a backing file of `backing_size` bytes.
    pub fn new(backing_size: u64) -> Pending {
        Pending {
            ops: Vec::new(),
            size: backing_size,
        }
    }

    /// The file size as reads and stat must see it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The operations, oldest first.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Records a write.
    pub fn write(&mut self, offset: u64, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.size = self.size.max(offset.saturating_add(data.len() as u64));
        self.ops.push(Op::Write { offset, data });
    }

    /// Records a truncate (or extension) to `size`.
    pub fn set_size(&mut self, size: u64) {
        self.size = size;
        self.ops.push(Op::SetSize(size));
    }

    /// Records a fallocate; `mode` must have passed [`check_fallocate`].
    pub fn fallocate(&mut self, mode: i32, offset: u64, len: u64) {
        if !keeps_size(mode) {
            self.size = self.size.max(offset.saturating_add(len));
        }
        self.ops.push(Op::Fallocate { mode, offset, len });
    }

    /// Replays the operations onto `buf`, which holds the backing file's
    /// bytes from `offset` on (zeros past the backing file's end). Invariant
    /// kept after each step: `buf` is the file as of that step, with zeros
    /// past that step's size, so a later extension reads zeros as it must.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset.saturating_add(buf.len() as u64);
        // The part of [a, b) inside the window, as buffer indexes.
        let window = |a: u64, b: u64| -> Option<(usize, usize)> {
            let (s, e) = (a.max(offset), b.min(end));
            (s < e).then(|| ((s - offset) as usize, (e - offset) as usize))
        };
        for op in &self.ops {
            match op {
                Op::Write { offset: o, data } => {
                    let o_end = o.saturating_add(data.len() as u64);
                    if let Some((s, e)) = window(*o, o_end) {
                        let from = (offset + s as u64 - o) as usize;
                        buf[s..e].copy_from_slice(&data[from..from + (e - s)]);
                    }
                }
                Op::SetSize(size) => {
                    if let Some((s, e)) = window(*size, end) {
                        buf[s..e].fill(0);
                    }
                }
                Op::Fallocate {
                    mode,
                    offset: o,
                    len,
                } if zeroes_data(*mode) => {
                    if let Some((s, e)) = window(*o, o.saturating_add(*len)) {
                        buf[s..e].fill(0);
                    }
                }
                Op::Fallocate { .. } => {}
            }
        }
    }

    /// Applies the operations in order to `file` (the backing file, open for
    /// writing). Applied operations are removed even when a later one fails,
    /// so the view (backing + what is left) stays the same either way.
    pub fn apply(&mut self, file: &File) -> io::Result<()> {
        let mut done = 0;
        let mut result = Ok(());
        for op in &self.ops {
            if let Err(e) = apply_one(file, op) {
                result = Err(e);
                break;
            }
            done += 1;
        }
        self.ops.drain(..done);
        result
    }
}

fn apply_one(file: &File, op: &Op) -> io::Result<()> {
    match op {
        Op::Write { offset, data } => file.write_all_at(data, *offset),
        Op::SetSize(size) => file.set_len(*size),
        Op::Fallocate { mode, offset, len } => match sys::fallocate(file, *mode, *offset, *len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The backing filesystem lacks this mode (tmpfs has no
                // ZERO_RANGE); the request was already accepted, so get the
                // same bytes and size the plain way.
                emulate_fallocate(file, *mode, *offset, *len)
            }
            r => r,
        },
    }
}

fn emulate_fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let size = file.metadata()?.len();
    let end = offset.saturating_add(len);
    if zeroes_data(mode) {
        let zero_end = if keeps_size(mode) { end.min(size) } else { end };
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < zero_end {
            let n = (zero_end - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    if !keeps_size(mode) && end > size {
        file.set_len(end)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
