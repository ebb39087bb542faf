//! The node's catch-up copies (shard snapshots it receives: a lagging
//! replica, or a new one being built by a move): at most `MAX_COPIES` run
//! at once, their bytes are paced by a token bucket (`--recovery-rate`)
//! so client I/O keeps going, and their progress (bytes done of the bytes
//! that differ, rate, ETA) is kept for `cluster status` and `/metrics`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use raftblock_storage::pace::TokenBucket;

/// Catch-up copies received at once per node.
pub const MAX_COPIES: usize = 2;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Progress of one copy, shared with its task.
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// Bytes to copy (the sender's data in the chunks that differ; known
    /// once the checksum tables are compared).
    pub total: AtomicU64,
    /// Bytes copied so far.
    pub done: AtomicU64,
}

/// One copy as `cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyStatus {
    /// The shard group.
    pub group: u64,
    /// The node it copies from.
    pub from: u64,
    /// Bytes copied.
    pub done: u64,
    /// Bytes to copy (0 while the tables are compared).
    pub total: u64,
    /// Seconds since it started (waiting for a slot included).
    pub secs: f64,
    /// Bytes per second so far.
    pub rate: u64,
    /// Seconds left at that rate, once known.
    pub eta_secs: Option<u64>,
}

struct Copy {
    from: u64,
    started: Instant,
    progress: Arc<CopyProgress>,
}

/// Paces and tracks the node's catch-up copies.
pub struct Recovery {
    /// Bytes per second for all copies together.
    rate: TokenBucket,
    slots: Arc<Semaphore>,
    copies: Mutex<BTreeMap<u64, Copy>>,
    bytes: AtomicU64,
}

impl Recovery {
    /// Copies paced at `rate` bytes per second (0: unpaced).
    pub fn new(rate: u64) -> Recovery {
        Recovery {
            rate: TokenBucket::new(rate),
            slots: Arc::new(Semaphore::new(MAX_COPIES)),
            copies: Mutex::new(BTreeMap::new()),
            bytes: AtomicU64::new(0),
        }
    }

    /// Registers a copy of `group` from `from` and waits for a slot; the
    /// copy counts as in progress until the returned guard drops.
    pub async fn begin(self: &Arc<Self>, group: u64, from: u64) -> CopyGuard {
        let progress = Arc::new(CopyProgress::default());
        lock(&self.copies).insert(
            group,
            Copy {
                from,
                started: Instant::now(),
                progress: progress.clone(),
            },
        );
        let permit = self.slots.clone().acquire_owned().await.ok();
        CopyGuard {
            recovery: self.clone(),
            group,
            progress,
            _permit: permit,
        }
    }

    /// Waits until `bytes` more may be copied at the configured rate.
    pub async fn pace(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.rate.pace(bytes).await;
    }

    /// Bytes copied by catch-up copies since start.
    pub fn bytes_total(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The copies in progress.
    pub fn status(&self) -> Vec<CopyStatus> {
        lock(&self.copies)
            .iter()
            .map(|(g, c)| {
                let secs = c.started.elapsed().as_secs_f64();
                let done = c.progress.done.load(Ordering::Relaxed);
                let total = c.progress.total.load(Ordering::Relaxed);
                let rate = if secs > 0.0 {
                    (done as f64 / secs) as u64
                } else {
                    0
                };
                let eta_secs =
                    (total > 0 && rate > 0).then(|| total.saturating_sub(done) / rate.max(1));
                CopyStatus {
                    group: *g,
                    from: c.from,
                    done,
                    total,
                    secs,
                    rate,
                    eta_secs,
                }
            })
            .collect()
    }
}

/// A copy in progress (see [`Recovery::begin`]).
pub struct CopyGuard {
    recovery: Arc<Recovery>,
    group: u64,
    /// Its progress, for the copy to update.
    pub progress: Arc<CopyProgress>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for CopyGuard {
    fn drop(&mut self) {
        let mut copies = lock(&self.recovery.copies);
        if copies
            .get(&self.group)
            .is_some_and(|c| Arc::ptr_eq(&c.progress, &self.progress))
        {
            copies.remove(&self.group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn copies_are_paced_limited_and_tracked() {
        let r = Arc::new(Recovery::new(10 << 20));
        let t0 = tokio::time::Instant::now();
        // 40 MiB at 10 MiB/s, after a second's burst: about 3 s.
        for _ in 0..10 {
            r.pace(4 << 20).await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(3), "{took:?}");
        assert_eq!(r.bytes_total(), 40 << 20);
        let a = r.begin(1, 7).await;
        let _b = r.begin(2, 7).await;
        a.progress.total.store(100, Ordering::Relaxed);
        a.progress.done.store(25, Ordering::Relaxed);
        let st = r.status();
        assert_eq!(st.len(), 2);
        assert_eq!((st[0].group, st[0].done, st[0].total), (1, 25, 100));
        // A third waits for a slot, and shows as waiting meanwhile.
        let r2 = r.clone();
        let third = tokio::spawn(async move { r2.begin(3, 7).await });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        assert_eq!(r.status().len(), 3);
        drop(a);
        let _c = third.await.expect("third copy");
        let groups: Vec<u64> = r.status().iter().map(|c| c.group).collect();
        assert_eq!(groups, vec![2, 3]);
    }
}
