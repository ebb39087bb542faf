//! Leader leases published for reads that skip the driver (TiKV's
//! `ReadDelegate`). The driver publishes, per shard it leads, until when its
//! lease holds, and only while every write acknowledged so far is in its
//! chunk files: it leads with no transfer under way and has applied an
//! entry of its own term (entries of earlier terms, acknowledged by earlier
//! leaders, are applied before it; entries of its own are acknowledged only
//! after they are applied here). A reader that finds the lease valid
//! before and after reading the local chunk files returned what a
//! linearizable read may return, with no hop through the driver thread.
//!
//! Readers mark the lease wanted; the driver renews a wanted lease before
//! it runs out (a ReadIndex with no waiters), so steady reads never wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// One shard's published lease.
#[derive(Debug, Default)]
struct GroupLease {
    /// Nanoseconds after `ReadLeases::base` the lease ends (0: none).
    until: AtomicU64,
    /// A reader used (or tried) the lease since the driver last looked.
    wanted: AtomicBool,
}

/// The leases of the shards this node leads.
#[derive(Debug)]
pub struct ReadLeases {
    base: Instant,
    groups: RwLock<HashMap<u64, Arc<GroupLease>>>,
}

impl Default for ReadLeases {
    fn default() -> Self {
        ReadLeases {
            base: Instant::now(),
            groups: RwLock::default(),
        }
    }
}

impl ReadLeases {
    fn get(&self, group: u64) -> Option<Arc<GroupLease>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Whether reads of `group` may be served locally at `now`.
    pub fn holds(&self, group: u64, now: Instant) -> bool {
        // Under the read lock, no Arc clone: this runs for every read.
        let groups = self.groups.read().unwrap_or_else(|p| p.into_inner());
        let Some(l) = groups.get(&group) else {
            return false;
        };
        l.wanted.store(true, Ordering::Relaxed);
        self.nanos(now) < l.until.load(Ordering::Acquire)
    }

    /// Publishes `group`'s lease (`None`: local reads stop now).
    pub(crate) fn publish(&self, group: u64, until: Option<Instant>) {
        let v = until.map_or(0, |t| self.nanos(t).max(1));
        match self.get(group) {
            Some(l) => l.until.store(v, Ordering::Release),
            None if v != 0 => {
                let l = Arc::new(GroupLease::default());
                l.until.store(v, Ordering::Release);
                self.groups
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(group, l);
            }
            None => {}
        }
    }

    /// Whether a reader wanted `group`'s lease since the last call.
    pub(crate) fn take_wanted(&self, group: u64) -> bool {
        self.get(group)
            .is_some_and(|l| l.wanted.swap(false, Ordering::Relaxed))
    }

    /// Forgets `group` (its replica left this node).
    pub(crate) fn remove(&self, group: u64) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_holds_until_its_end_or_until_withdrawn() {
        let leases = ReadLeases::default();
        let now = Instant::now();
        assert!(!leases.holds(7, now), "never published");
        leases.publish(7, Some(now + Duration::from_millis(500)));
        assert!(leases.holds(7, now + Duration::from_millis(499)));
        assert!(!leases.holds(7, now + Duration::from_millis(500)));
        assert!(leases.take_wanted(7));
        assert!(!leases.take_wanted(7), "taken");
        leases.publish(7, None);
        assert!(!leases.holds(7, now));
    }
}
