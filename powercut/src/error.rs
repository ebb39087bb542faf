//! Errors. Inside a FUSE request every failure ends as an errno in the reply
//! to the kernel, so request handlers work in `Result<T, Errno>` and convert
//! I/O errors on the way; an I/O error without an OS code (std makes those
//! only for its own checks, e.g. a short write) becomes EIO. Mounting and
//! serving fail with a [`ServeError`] that names the step.

use std::io;
use std::path::PathBuf;

/// An errno value for a FUSE reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// Result of a request handler.
pub type Result<T> = std::result::Result<T, Errno>;

/// Why [`crate::serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The backing directory could not be opened.
    #[error("opening backing directory {path}: {source}")]
    Backing { path: PathBuf, source: io::Error },
    /// fusermount3 (or mount(2)) failed.
    #[error("mounting on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    /// Reading requests from /dev/fuse failed.
    #[error("serving FUSE requests: {0}")]
    Session(io::Error),
}
