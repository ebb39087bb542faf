//! Signs of life as this node sees them, by its own clock: when it last
//! heard from each other node over the transport (`LastHeard`; any frame
//! counts, the pings that `Cluster` sends every 250 ms included), and when
//! each attachment's lease was last seen renewed in the metadata
//! (`LeaseRenewals`). Placement of a new volume asks which nodes are up;
//! attach takeover (`attachment`) asks how long the holder has been silent
//! both ways. Not the driver's `PeerLiveness` (driver/liveness.rs), which
//! counts only Raft messages, over one election timeout, for log and
//! leadership decisions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::meta::MetaState;

/// A node counts as up while it was heard from this recently.
const LIVE_WINDOW: Duration = Duration::from_secs(5);

/// When each other node was last heard from.
pub(crate) struct LastHeard {
    me: u64,
    /// When this node started: a node never heard from has been silent
    /// since then.
    started: Instant,
    at: Mutex<HashMap<u64, Instant>>,
}

impl LastHeard {
    /// Nothing heard yet; `me` is this node.
    pub(crate) fn new(me: u64) -> LastHeard {
        LastHeard {
            me,
            started: Instant::now(),
            at: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `node` was heard from now.
    pub(crate) fn seen(&self, node: u64) {
        self.lock().insert(node, Instant::now());
    }

    /// Nodes heard from lately, and this one, in order.
    pub(crate) fn live(&self) -> Vec<u64> {
        let now = Instant::now();
        let mut live: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, t)| now.duration_since(**t) < LIVE_WINDOW)
            .map(|(n, _)| *n)
            .collect();
        live.push(self.me);
        live.sort_unstable();
        live.dedup();
        live
    }

    /// How long `node` has not been heard from (since this node started,
    /// if never; zero for this node).
    pub(crate) fn silent_for(&self, node: u64) -> Duration {
        if node == self.me {
            return Duration::ZERO;
        }
        self.lock()
            .get(&node)
            .copied()
            .unwrap_or(self.started)
            .elapsed()
    }
}

/// Per attached volume: the attachment's `(epoch, renewals)` as last seen
/// here, and when they last changed by this node's clock.
#[derive(Default)]
pub(crate) struct LeaseRenewals {
    seen: Mutex<HashMap<String, (u64, u64, Instant)>>,
}

impl LeaseRenewals {
    /// Notes which attachments in `meta` renewed since the last look.
    pub(crate) fn watch(&self, meta: &MetaState) {
        let mut leases = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|name, _| {
            meta.volumes
                .get(name)
                .is_some_and(|v| v.attachment.is_some())
        });
        for (name, v) in &meta.volumes {
            let Some(a) = &v.attachment else { continue };
            let now = (a.epoch, a.renewed);
            match leases.get_mut(name) {
                Some(l) if (l.0, l.1) == now => {}
                Some(l) => *l = (now.0, now.1, Instant::now()),
                None => {
                    leases.insert(name.clone(), (now.0, now.1, Instant::now()));
                }
            }
        }
    }

    /// How long the attachment of `name` has gone without a renewal, by
    /// this node's clock (zero for one not watched yet).
    pub(crate) fn silent_for(&self, name: &str) -> Duration {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(Duration::ZERO, |l| l.2.elapsed())
    }
}
