//! When this node last heard from each other node over the transport (any
//! frame counts, the pings that `Cluster` sends every 250 ms included), by
//! its own clock. Placement of a new volume asks which nodes are up, and
//! attach takeover asks how long the holder has been silent. Not the
//! driver's `PeerLiveness` (driver/liveness.rs), which counts only Raft
//! messages, over one election timeout, for log and leadership decisions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
