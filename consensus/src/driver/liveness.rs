//! Which peers are up, as the driver sees it: a peer is up when a Raft
//! message from it arrived within one election timeout. raft-rs's own
//! `Progress::recent_active` is cleared at the end of every check-quorum
//! window and set again only by the next message, so right after that
//! tick it calls every follower down; log eviction, compaction and
//! leadership moves ask here instead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// When each peer was last heard from.
#[derive(Debug)]
pub(super) struct PeerLiveness {
    me: u64,
    window: Duration,
    heard: HashMap<u64, Instant>,
}

impl PeerLiveness {
    /// Node `me` calls a peer up for `window` after hearing from it.
    pub(super) fn new(me: u64, window: Duration) -> PeerLiveness {
        PeerLiveness {
            me,
            window,
            heard: HashMap::new(),
        }
    }

    /// A message from `node` arrived at `now`.
    pub(super) fn heard_from(&mut self, node: u64, now: Instant) {
        self.heard.insert(node, now);
    }

    /// When a message from `node` last arrived (never: `None`).
    pub(super) fn heard_at(&self, node: u64) -> Option<Instant> {
        self.heard.get(&node).copied()
    }

    /// Whether `node` (this node always is) was heard from lately.
    pub(super) fn is_up(&self, node: u64, now: Instant) -> bool {
        node == self.me
            || self
                .heard
                .get(&node)
                .is_some_and(|t| now.saturating_duration_since(*t) <= self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_up_for_a_window_after_it_was_heard() {
        let t0 = Instant::now();
        let mut l = PeerLiveness::new(1, Duration::from_secs(1));
        assert!(l.is_up(1, t0), "this node");
        assert!(!l.is_up(2, t0), "never heard");
        l.heard_from(2, t0);
        assert!(l.is_up(2, t0 + Duration::from_millis(900)));
        assert!(!l.is_up(2, t0 + Duration::from_millis(1100)));
    }
}
