//! I/O engines: how chunk files are read and written. One file per backend
//! (`uring.rs`, `threads.rs`); [`Engine`] picks one at start-up (io_uring when
//! the kernel allows it) or takes the one the operator forces. Both take owned
//! buffers so the same calls work for a completion-based ring and a thread pool.

mod threads;
mod uring;

use bytes::Bytes;
use std::fs::File;
use std::io;
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
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Uring => "uring",
            EngineKind::Threads => "threads",
        })
    }
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" | "io_uring" | "io-uring" => Ok(EngineKind::Uring),
            "threads" | "sync" => Ok(EngineKind::Threads),
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
}

#[derive(Clone)]
enum Backend {
    Uring(Arc<UringEngine>),
    Threads(Arc<ThreadEngine>),
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
            None => match UringEngine::start() {
                Ok(u) => Backend::Uring(Arc::new(u)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using the thread-pool engine");
                    Backend::Threads(Arc::new(ThreadEngine::start(threads)))
                }
            },
        };
        Ok(Engine { backend })
    }

    /// The engine actually running.
    pub fn kind(&self) -> EngineKind {
        match self.backend {
            Backend::Uring(_) => EngineKind::Uring,
            Backend::Threads(_) => EngineKind::Threads,
        }
    }

    async fn submit(&self, file: &Arc<File>, op: OpKind) -> io::Result<OpDone> {
        let rx = match &self.backend {
            Backend::Uring(u) => u.submit(file.clone(), op),
            Backend::Threads(t) => t.submit(file.clone(), op),
        };
        rx.await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "I/O engine stopped"))
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros.
    pub async fn read_at(&self, file: &Arc<File>, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut done = 0usize;
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
