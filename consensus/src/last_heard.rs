//! Signs of life as this node sees them, by its own clock: when it last
//! heard from each other node over the transport (`LastHeard`; any frame
//! counts, the pings that `Cluster` sends every 250 ms included), and when
//! each attachment's lease was last seen renewed in the metadata
//! (`LeaseRenewals`). Placement of a new volume asks which nodes are up;
//! attach takeover (`attachment`) asks how long the holder has been silent
//! both ways. Not the driver's `PeerLiveness` (driver/liveness.rs), which
//! counts only Raft messages, over one election timeout, for log and
//! leadership decisions.
//!
//! `LastHeard::changes` also turns that record into events, one per
//! transition, for the log: a node unheard for `LIVE_WINDOW` went down, a
//! node heard again after that came back.

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
    /// Nodes reported down by `changes`, with when their silence began:
    /// each transition is reported once, not at every look.
    down: Mutex<HashMap<u64, Instant>>,
}

/// A node's transition as `LastHeard::changes` reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NodeChange {
    /// Unheard for `LIVE_WINDOW` or longer: silent for this long, and
    /// whether it was ever heard since this node started.
    Down { silent: Duration, ever_heard: bool },
    /// Heard again; it had been silent this long.
    Back { after: Duration },
}

impl LastHeard {
    /// Nothing heard yet; `me` is this node.
    pub(crate) fn new(me: u64) -> LastHeard {
        LastHeard {
            me,
            started: Instant::now(),
            at: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
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
        self.silent_at(node, Instant::now())
    }

    fn silent_at(&self, node: u64, now: Instant) -> Duration {
        if node == self.me {
            return Duration::ZERO;
        }
        let since = self.lock().get(&node).copied().unwrap_or(self.started);
        now.saturating_duration_since(since)
    }

    /// The nodes among `members` that went down or came back since the
    /// last call, each transition once. Nodes no longer members are
    /// forgotten without a word.
    pub(crate) fn changes(&self, members: &[u64]) -> Vec<(u64, NodeChange)> {
        self.changes_at(members, Instant::now())
    }

    fn changes_at(&self, members: &[u64], now: Instant) -> Vec<(u64, NodeChange)> {
        let heard: HashMap<u64, Instant> = self.lock().clone();
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|n, _| members.contains(n));
        let mut out = Vec::new();
        for &n in members.iter().filter(|n| **n != self.me) {
            let last = heard.get(&n).copied();
            let since = last.unwrap_or(self.started);
            let silent = now.saturating_duration_since(since);
            match down.get(&n) {
                None if silent >= LIVE_WINDOW => {
                    down.insert(n, since);
                    let ever_heard = last.is_some();
                    out.push((n, NodeChange::Down { silent, ever_heard }));
                }
                Some(since) if silent < LIVE_WINDOW => {
                    // The outage ran from the last word before it to the
                    // first one after it.
                    let after = last.map_or(silent, |t| t.saturating_duration_since(*since));
                    down.remove(&n);
                    out.push((n, NodeChange::Back { after }));
                }
                _ => {}
            }
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transition_is_reported_once() {
        let h = LastHeard::new(1);
        let t0 = h.started;
        let s = Duration::from_secs;
        let at = |secs: u64| t0 + s(secs);
        let members = [1, 2, 3];
        h.lock().insert(2, t0);
        assert!(
            h.changes_at(&members, at(4)).is_empty(),
            "within the window"
        );
        // Both silent past the window; node 3 was never heard at all.
        assert_eq!(
            h.changes_at(&members, at(5)),
            vec![
                (
                    2,
                    NodeChange::Down {
                        silent: s(5),
                        ever_heard: true
                    }
                ),
                (
                    3,
                    NodeChange::Down {
                        silent: s(5),
                        ever_heard: false
                    }
                ),
            ]
        );
        assert!(h.changes_at(&members, at(6)).is_empty(), "said once");
        assert!(h.changes_at(&members, at(30)).is_empty(), "and not again");
        // Node 2 heard again: back after its 42 s of silence.
        h.lock().insert(2, at(42));
        assert_eq!(
            h.changes_at(&members, at(43)),
            vec![(2, NodeChange::Back { after: s(42) })]
        );
        assert!(h.changes_at(&members, at(44)).is_empty());
        // A node that leaves the cluster while down is forgotten quietly.
        assert!(h.changes_at(&[1, 2], at(45)).is_empty());
        assert!(h.down.lock().expect("lock").get(&3).is_none());
    }
}
