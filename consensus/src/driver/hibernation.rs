//! Idle groups hibernate, as TiKV's hibernate regions do: a shard nobody
//! writes or reads costs nothing (no ticks, no heartbeats). A leader whose
//! group has been quiet for `QUIET_TICKS` (nothing in flight, every replica
//! up and holding the whole log, everything applied) sends its followers a
//! heartbeat marked `HIBERNATE` and stops ticking the group; a follower
//! that agrees with that heartbeat (same leader and term, its log complete
//! and committed) stops ticking too.
//!
//! Anything for the group wakes it: a Raft message (other than the marked
//! heartbeat and its answer), a proposal, a read, a leadership transfer, a
//! new preferred leader. So does a member's node falling silent: nodes
//! exchange pings even when all their groups sleep (`Cluster::start`), and
//! a follower whose leader's node is not heard from wakes and, after an
//! election timeout, campaigns; a leader missing a follower wakes, so check
//! quorum can step it down if it is the one cut off. Hibernation changes
//! only when Raft runs, never what it decides.

use raft::prelude::{Message, MessageType};
use raft::StateRole;
use std::collections::BTreeSet;
use std::time::Instant;

use super::liveness::PeerLiveness;
use super::replica::Replica;
use super::RaftNetwork;

/// Ticks a leader's group must stay quiet before it hibernates (3 s).
const QUIET_TICKS: u32 = 30;
/// The context of the heartbeat that puts followers to sleep.
pub(super) const HIBERNATE: &[u8] = b"raftblock/hibernate";

impl Replica {
    /// Whether this leader's group has nothing going on: no proposal, read
    /// or transfer in flight, every member up and holding the whole log,
    /// everything committed, persisted and applied here.
    fn quiet(&self, liveness: &PeerLiveness, now: Instant) -> bool {
        let raft = &self.node.raft;
        let last = raft.raft_log.last_index();
        raft.state == StateRole::Leader
            && raft.lead_transferee.is_none()
            && self.proposals.is_empty()
            && self.reads_new.is_empty()
            && self.reads_sent.is_empty()
            && self.reads_ready.is_empty()
            && self.unpersisted.is_none()
            && !self.renew_lease
            && raft.raft_log.committed == last
            && self.applied >= last
            && raft
                .prs()
                .iter()
                .all(|(id, p)| p.matched == last && liveness.is_up(*id, now))
    }

    /// On an awake leader, once a tick: after `QUIET_TICKS` quiet ticks the
    /// followers are told to sleep and the group stops ticking. True when
    /// it went to sleep.
    pub(super) fn maybe_hibernate(
        &mut self,
        group: u64,
        liveness: &PeerLiveness,
        now: Instant,
        network: &dyn RaftNetwork,
    ) -> bool {
        if !self.quiet(liveness, now) {
            self.quiet_ticks = 0;
            return false;
        }
        self.quiet_ticks += 1;
        if self.quiet_ticks < QUIET_TICKS {
            return false;
        }
        let raft = &self.node.raft;
        for (&to, _) in raft.prs().iter().filter(|(id, _)| **id != raft.id) {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.to = to;
            m.from = raft.id;
            m.term = raft.term;
            m.commit = raft.raft_log.committed;
            m.context = HIBERNATE.to_vec().into();
            super::ready::send_one(network, group, m);
        }
        self.hibernating = true;
        self.lease_until = None;
        true
    }

    /// A follower that stepped the leader's `HIBERNATE` heartbeat sleeps if
    /// it agrees: same leader and term, its log complete and committed.
    pub(super) fn follow_into_hibernation(&mut self, m: &Message) {
        let raft = &self.node.raft;
        if raft.state == StateRole::Follower
            && self.unpersisted.is_none()
            && raft.leader_id == m.from
            && raft.term == m.term
            && raft.raft_log.committed == m.commit
            && raft.raft_log.last_index() == m.commit
        {
            self.hibernating = true;
            self.settle_round = true;
        }
    }

    /// Whether a sleeping group must wake because a member's node went
    /// silent (its leader, for a follower; any follower, for a leader).
    pub(super) fn member_silent(&self, liveness: &PeerLiveness, now: Instant) -> bool {
        let raft = &self.node.raft;
        if raft.state == StateRole::Leader {
            raft.prs().iter().any(|(id, _)| !liveness.is_up(*id, now))
        } else {
            !liveness.is_up(raft.leader_id, now)
        }
    }

    /// Something happened in group `group` (a request, a message other
    /// than a heartbeat): it wakes, joins the driver's `awake` groups, and
    /// its quiet time starts over.
    pub(super) fn wake(&mut self, group: u64, awake: &mut BTreeSet<u64>) {
        awake.insert(group);
        self.stir();
    }

    /// Resets the sleep state without touching the awake set (the caller
    /// records the group as awake).
    pub(super) fn stir(&mut self) {
        self.hibernating = false;
        self.settle_round = false;
        self.quiet_ticks = 0;
    }
}

/// Whether `m` is a plain heartbeat or its answer: it wakes a sleeping
/// group but is no activity that keeps an awake one from sleeping.
pub(super) fn is_heartbeat(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    )
}

/// Whether `m` is part of putting a group to sleep (it must not wake it).
pub(super) fn is_hibernation_msg(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
    ) && m.context.as_ref() == HIBERNATE
}
