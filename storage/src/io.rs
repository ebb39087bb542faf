//! The `VolumeIo` trait: reads and writes at volume offsets. The NBD server
//! (and later the Docker attach path) is written against it; the local chunk
//! store implements it now and the replicated router implements it next.

use bytes::Bytes;
use std::future::Future;

use crate::Result;

/// Length of the shared run of zeros [`zeros`] hands out without allocating.
pub const ZERO_RUN: usize = 1 << 20;

static ZERO_BYTES: [u8; ZERO_RUN] = [0; ZERO_RUN];

/// `len` zero bytes: a slice of one static buffer when `len <= ZERO_RUN`
/// (holes in read replies, zero fills), allocated only beyond that.
pub fn zeros(len: usize) -> Bytes {
    if len <= ZERO_RUN {
        Bytes::from_static(&ZERO_BYTES[..len])
    } else {
        Bytes::from(vec![0u8; len])
    }
}

/// One piece of a read reply, in volume order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSegment {
    /// Bytes read from the device.
    Data(Bytes),
    /// A range that reads as zeros and holds no data.
    Hole(u64),
}

impl ReadSegment {
    /// Length of the segment in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ReadSegment::Data(b) => b.len() as u64,
            ReadSegment::Hole(n) => *n,
        }
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An allocation extent for block status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// True when the range holds no data (reads as zeros).
    pub hole: bool,
}

/// How WRITE_ZEROES may zero a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMode {
    /// Punch holes where whole blocks are covered.
    Punch,
    /// Keep the range allocated: write real zeros.
    Allocate,
}

/// Block I/O at volume offsets. Offsets and lengths are already checked
/// against the volume size by the caller, but implementations check again.
pub trait VolumeIo: Send + Sync + 'static {
    /// The volume's name.
    fn name(&self) -> &str;
    /// The volume's size in bytes.
    fn size(&self) -> u64;
    /// Reads `len` bytes at `offset`, as data and hole segments in order.
    fn read(&self, offset: u64, len: u64) -> impl Future<Output = Result<Vec<ReadSegment>>> + Send;
    /// Writes `data` at `offset`; with `fua` it is durable before returning.
    fn write(&self, offset: u64, data: Bytes, fua: bool)
        -> impl Future<Output = Result<()>> + Send;
    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
    /// Discards whole blocks inside the range (a hint: partial blocks stay).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> impl Future<Output = Result<()>> + Send;
    /// Makes the range read as zeros.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        mode: ZeroMode,
        fua: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Allocation extents covering at least `[offset, offset+len)` (the last may end early only at the volume end).
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<Extent>>> + Send;
}
