//! I/O engines: how chunk files are read and written. One file per backend
//! (`uring.rs`, `threads.rs`); [`Engine`] picks one at start-up (io_uring when
//! the kernel allows it) or takes the one the operator forces. Both take owned
//! buffers so the same calls work for a completion-based ring and a thread pool.

mod threads;
mod uring;

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub use threads::ThreadEngine;
pub use uring::UringEngine;

/// Which I/O engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring submission and completion rings.
    Uring,
    /// Blocking pread/pwrite on a small thread pool.
    Threads,
    /// Blocking pread/pwrite on the calling thread: every request is done
    /// when its future is first polled. For the deterministic simulation,
    /// where no other thread may decide when I/O completes.
    Inline,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
            EngineKind::Inline => "inline",
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" | "io_uring" | "io-uring" => Ok(EngineKind::Uring),
            "threads" | "sync" => Ok(EngineKind::Threads),
            "inline" => Ok(EngineKind::Inline),
            other => Err(format!(
                "unknown I/O engine `{other}` (expected uring or threads)"
            )),
        }
    }
}

/// One I/O request handed to a backend.
pub(crate) enum OpKind {
    Read {
        buf: Vec<u8>,
        buf_off: usize,
        offset: u64,
    },
    Write {
        data: Bytes,
        offset: u64,
    },
    Sync,
    Punch {
        offset: u64,
        len: u64,
    },
}

/// What a backend returns: the read buffer (for reads) and the syscall result.
pub(crate) struct OpDone {
    pub buf: Option<Vec<u8>>,
    pub result: io::Result<usize>,
}

/// A running I/O engine, cheap to clone.
#[derive(Clone)]
pub struct Engine {
    backend: Backend,
    /// Try each read inline with RWF_NOWAIT first (page-cache hits never
    /// leave the calling thread); cleared if the kernel refuses the flag.
    nowait_reads: Arc<AtomicBool>,
    /// Same for writes (ext4 refuses RWF_NOWAIT on buffered writes).
    nowait_writes: Arc<AtomicBool>,
    /// Writes up to this size are done inline with a plain pwrite when the
    /// non-blocking attempt is unavailable (0 = always use the engine).
    inline_write_max: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Backend {
    Uring(Arc<UringEngine>),
    Threads(Arc<ThreadEngine>),
    Inline,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.kind())
    }
}

impl Engine {
    /// Starts the forced engine, or io_uring falling back to threads when `None`.
    pub fn start(kind: Option<EngineKind>, threads: usize) -> io::Result<Engine> {
        let backend = match kind {
            Some(EngineKind::Uring) => Backend::Uring(Arc::new(UringEngine::start()?)),
            Some(EngineKind::Threads) => Backend::Threads(Arc::new(ThreadEngine::start(threads))),
            Some(EngineKind::Inline) => Backend::Inline,
            None => match UringEngine::start() {
                Ok(u) => Backend::Uring(Arc::new(u)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using the thread-pool engine");
                    Backend::Threads(Arc::new(ThreadEngine::start(threads)))
                }
            },
        };
        Ok(Engine {
            backend,
            nowait_reads: Arc::new(AtomicBool::new(true)),
            nowait_writes: Arc::new(AtomicBool::new(true)),
            inline_write_max: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Enables or disables the inline RWF_NOWAIT fast path for reads and writes.
    pub fn set_nowait_fast_path(&self, on: bool) {
        self.nowait_reads.store(on, Ordering::Relaxed);
        self.nowait_writes.store(on, Ordering::Relaxed);
    }

    /// Writes up to `bytes` long are issued inline (0 turns this off).
    pub fn set_inline_write_max(&self, bytes: usize) {
        self.inline_write_max.store(bytes, Ordering::Relaxed);
    }

    /// One attempt on the calling thread: `Some(n)` bytes done, `None` =
    /// hand the request to the engine. Reads (and writes, where the kernel
    /// allows) use RWF_NOWAIT so they never block; writes up to
    /// `inline_write_max` fall back to a plain pwrite.
    fn try_inline(
        &self,
        file: &File,
        write: bool,
        ptr: *mut u8,
        len: usize,
        offset: u64,
    ) -> Option<usize> {
        if len == 0 {
            return None;
        }
        let flag = if write {
            &self.nowait_writes
        } else {
            &self.nowait_reads
        };
        if flag.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: ptr.cast(),
                iov_len: len,
            };
            // SAFETY: `iov` points at `len` bytes the caller owns for the call.
            let n = unsafe {
                if write {
                    libc::pwritev2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT)
                } else {
                    libc::preadv2(file.as_raw_fd(), &iov, 1, offset as i64, libc::RWF_NOWAIT)
                }
            };
            if n >= 0 {
                return Some(n as usize);
            }
            if let Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) =
                io::Error::last_os_error().raw_os_error()
            {
                tracing::info!(write, "RWF_NOWAIT not supported for this kind of I/O here");
                flag.store(false, Ordering::Relaxed);
            }
            // EAGAIN and real errors: fall through; the engine reports errors.
        }
        if write && len <= self.inline_write_max.load(Ordering::Relaxed) {
            // SAFETY: `ptr` points at `len` readable bytes owned by the caller.
            let n = unsafe { libc::pwrite(file.as_raw_fd(), ptr.cast(), len, offset as i64) };
            return (n > 0).then_some(n as usize);
        }
        None
    }

    /// The engine actually running.
    pub fn kind(&self) -> EngineKind {
        match self.backend {
            Backend::Uring(_) => EngineKind::Uring,
            Backend::Threads(_) => EngineKind::Threads,
            Backend::Inline => EngineKind::Inline,
        }
    }

    async fn submit(&self, file: &Arc<File>, op: OpKind) -> io::Result<OpDone> {
        let rx = match &self.backend {
            Backend::Uring(u) => u.submit(file.clone(), op),
            Backend::Threads(t) => t.submit(file.clone(), op),
            Backend::Inline => return Ok(threads::run(file, op)),
        };
        rx.await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "I/O engine stopped"))
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros.
    pub async fn read_at(&self, file: &Arc<File>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        // Uninitialised at first: a page-cache hit fills it whole, and
        // zeroing 1 MiB per read first cost more than the read itself.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        if let Some(n) = self.try_inline(file, false, buf.as_mut_ptr(), len, offset) {
            // SAFETY: the kernel initialised the first `n <= len` bytes.
            unsafe { buf.set_len(n.min(len)) };
            if n == len {
                return Ok(buf);
            }
            if n == 0 {
                buf.resize(len, 0); // end of file: the rest reads as zeros
                return Ok(buf);
            }
        }
        let mut done = buf.len();
        buf.resize(len, 0);
        while done < len {
            let op = OpKind::Read {
                buf,
                buf_off: done,
                offset: offset + done as u64,
            };
            let r = self.submit(file, op).await?;
            buf = r
                .buf
                .ok_or_else(|| io::Error::other("engine lost a read buffer"))?;
            match r.result {
                Ok(0) => break, // end of file: the rest stays zero
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }

    /// Writes all of `data` at `offset`.
    pub async fn write_at(
        &self,
        file: &Arc<File>,
        mut data: Bytes,
        mut offset: u64,
    ) -> io::Result<()> {
        // pwrite does not write through the pointer; the cast is for iovec.
        if let Some(n) = self.try_inline(file, true, data.as_ptr() as *mut u8, data.len(), offset) {
            data = data.slice(n..);
            offset += n as u64;
        }
        self.write_submitted(file, data, offset).await
    }

    /// Writes all of `data` at `offset` through the engine, never inline on
    /// the calling thread: for a file opened with O_DIRECT, where every
    /// write waits for the device. `data` must be aligned as O_DIRECT asks.
    pub async fn write_direct(&self, file: &Arc<File>, data: Bytes, offset: u64) -> io::Result<()> {
        self.write_submitted(file, data, offset).await
    }

    async fn write_submitted(
        &self,
        file: &Arc<File>,
        mut data: Bytes,
        mut offset: u64,
    ) -> io::Result<()> {
        while !data.is_empty() {
            let r = self
                .submit(
                    file,
                    OpKind::Write {
                        data: data.clone(),
                        offset,
                    },
                )
                .await?;
            match r.result {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
                Ok(n) => {
                    data = data.slice(n..);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// fdatasync: the file's data is on stable storage.
    pub async fn sync(&self, file: &Arc<File>) -> io::Result<()> {
        self.submit(file, OpKind::Sync).await?.result.map(|_| ())
    }

    /// Deallocates `[offset, offset+len)`; the range then reads as zeros.
    pub async fn punch(&self, file: &Arc<File>, offset: u64, len: u64) -> io::Result<()> {
        self.submit(file, OpKind::Punch { offset, len })
            .await?
            .result
            .map(|_| ())
    }
}

/// fallocate mode for punching a hole without changing the file size.
pub(crate) const PUNCH_MODE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
