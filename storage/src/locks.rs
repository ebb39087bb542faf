//! Striped async locks that serialise writers of the same 1 MiB region of a
//! chunk, so a block's data and its checksum slot are always updated together
//! (and read-modify-write of partial blocks cannot lose a concurrent update).

use tokio::sync::{Mutex, MutexGuard};

const STRIPES: usize = 1024;
/// Writers are serialised per region of this many bytes.
pub const REGION: u64 = 1 << 20;

/// A fixed table of async mutexes indexed by a hash of (chunk, region).
pub struct StripeLocks {
    stripes: Vec<Mutex<()>>,
}

impl StripeLocks {
    pub fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Locks every stripe covering `[offset, offset+len)` of `chunk`, in
    /// ascending stripe order so two writers can never deadlock.
    pub async fn lock(&self, chunk: u64, offset: u64, len: u64) -> Vec<MutexGuard<'_, ()>> {
        let first = offset / REGION;
        let last = (offset + len.max(1) - 1) / REGION;
        let mut idx: Vec<usize> = (first..=last).map(|r| Self::stripe_of(chunk, r)).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards = Vec::with_capacity(idx.len());
        for i in idx {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    fn stripe_of(chunk: u64, region: u64) -> usize {
        let h = chunk
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(region.wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        ((h >> 32) as usize) % STRIPES
    }
}
