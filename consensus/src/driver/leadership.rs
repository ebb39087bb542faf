//! Leadership moves: handing a shard's leadership back to its preferred
//! replica (the first of its placement, so leaders stay spread over the
//! nodes) once that replica has settled, and the rule that a leader which
//! hands leadership over gives up its read lease first.

use std::time::{Duration, Instant};

use super::replica::Replica;
use super::Driver;

/// How long the node serving a volume must have been caught up before its
/// shards' leadership moves to it.
const SERVING_QUIET: Duration = Duration::from_millis(500);

impl Driver {
    /// Whether a replica of this node is being caught up (a copy in flight,
    /// or a follower of a group led here in snapshot or probe state): no
    /// leadership moves back then, it would cost a second stall for nothing.
    pub(super) fn catching_up(&self, now: Instant) -> bool {
        // Sleeping groups have every replica caught up.
        !self.fetching.is_empty()
            || self
                .awake
                .iter()
                .filter_map(|g| self.replicas.get(g))
                .any(|r| {
                    r.is_leader()
                        && r.node.raft.prs().iter().any(|(id, p)| {
                            p.state == raft::ProgressState::Snapshot
                                || (self.liveness.is_up(*id, now)
                                    && p.state == raft::ProgressState::Probe)
                        })
                })
    }
}

impl Replica {
    /// Hands leadership back to the preferred replica once it has been
    /// caught up for `quiet` (`DriverConfig::handback_quiet`), so leaders
    /// stay spread over the nodes. The lease goes with it: the transferee may win its election
    /// inside the lease (raft-rs forces the vote), and a lease read here
    /// could then miss a write the new leader acknowledged.
    pub(super) fn handback_check(
        &mut self,
        g: u64,
        me: u64,
        now: Instant,
        catching_up: bool,
        quiet: Duration,
        up: &dyn Fn(u64) -> bool,
    ) {
        let want = self.is_leader()
            && self.preferred != 0
            && self.preferred != me
            && self.node.raft.lead_transferee.is_none();
        let last = self.node.raft.raft_log.last_index();
        let caught_up = want
            && self.node.raft.prs().get(self.preferred).is_some_and(|p| {
                up(self.preferred)
                    && p.state == raft::ProgressState::Replicate
                    && p.matched + 64 >= last
            });
        if !caught_up {
            self.handback_since = None;
            return;
        }
        let since = *self.handback_since.get_or_insert(now);
        let matched_all = self
            .node
            .raft
            .prs()
            .get(self.preferred)
            .is_some_and(|p| p.matched == last);
        // A serving node is alive (its clients use it) and is caught up
        // under load only within the entries in flight: Raft finishes the
        // transfer once it matches. A node that merely came back settles.
        let quiet = if self.serving { SERVING_QUIET } else { quiet };
        if catching_up || !(matched_all || self.serving) || now.duration_since(since) < quiet {
            return;
        }
        tracing::info!(
            group = g,
            to = self.preferred,
            serving = self.serving,
            "moving leadership to the preferred replica"
        );
        self.handback_since = None;
        self.hand_over(self.preferred);
    }

    /// Starts handing leadership to `to`. The lease ends first: raft-rs lets
    /// the transferee win a forced election inside it.
    pub(super) fn hand_over(&mut self, to: u64) {
        self.lease_until = None;
        self.node.transfer_leader(to);
    }
}
