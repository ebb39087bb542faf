//! A group's leader steers its Raft configuration toward what the metadata
//! asks for, one membership change at a time, so that no step leaves the
//! group with fewer live voters than before (raft-rs ConfChangeV2):
//!
//! - a replica being moved in joins as a learner, which gets the shard by
//!   snapshot (its chunks copied from the leader) and then the log;
//! - once it is caught up, one joint change makes it a voter and removes
//!   the replica it replaces; the leader leaves the joint configuration at
//!   once (auto-leave, or an empty change after a leader change);
//! - a learner no move asks for is removed (an abandoned move);
//! - a leader whose own replica is to go hands leadership over first.
//!
//! The metadata group heals the same way: a voter on a node marked out is
//! replaced by a learner that is up, and members missing from the group
//! (back after their replica was removed) follow it again as learners.
//! Once a second, on awake groups this node leads; the decision is a pure
//! function of the configuration and the peers' progress.

use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};
use raft::{ProgressState, Storage as _};
use tokio::sync::oneshot;

use crate::meta::META_GROUP;

use super::replica::Replica;
use super::{Driver, MembershipReport};

/// A learner this many entries behind the commit index counts as caught up
/// (under load it is always a few entries behind).
const LEARNER_LAG: u64 = 256;

/// The next membership step of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Leave the joint configuration (its auto-leave entry went missing).
    LeaveJoint,
    /// Add a learner.
    AddLearner(u64),
    /// Make learner `add` a voter and remove voter `remove`, jointly.
    Swap {
        /// The learner.
        add: u64,
        /// The voter leaving, if any.
        remove: Option<u64>,
    },
    /// Remove a replica (a learner no one wants, or a voter already
    /// replaced).
    Remove(u64),
    /// Hand leadership to this voter: this node's replica is to go.
    HandOver(u64),
}

/// How the leader sees a peer.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerView {
    /// Its matched index.
    pub(super) matched: u64,
    /// Raft replicates to it (it is past probing and snapshots).
    pub(super) replicating: bool,
    /// Heard from lately.
    pub(super) up: bool,
}

/// The step a shard group's leader `me` takes toward moving a replica to
/// `add` in place of `remove` (`mv`), or toward no stray learners.
/// `pending`: a membership change is in flight.
pub(super) fn shard_change(
    cs: &ConfState,
    me: u64,
    pending: bool,
    mv: Option<(u64, Option<u64>)>,
    committed: u64,
    peer: &dyn Fn(u64) -> Option<PeerView>,
) -> Option<Change> {
    if !cs.voters_outgoing.is_empty() || pending {
        return (!pending).then_some(Change::LeaveJoint);
    }
    if let Some(l) = cs
        .learners
        .iter()
        .find(|l| mv.map(|(add, _)| add) != Some(**l))
    {
        return Some(Change::Remove(*l));
    }
    let (add, remove) = mv?;
    swap_step(cs, me, add, remove, committed, peer)
}

/// The step the metadata group's leader takes: replace a voter on an out
/// node by a learner that is up, or take back a member that is missing.
/// `members`: the cluster's nodes with whether each is out.
pub(super) fn meta_change(
    cs: &ConfState,
    me: u64,
    pending: bool,
    members: &[(u64, bool)],
    committed: u64,
    peer: &dyn Fn(u64) -> Option<PeerView>,
) -> Option<Change> {
    if !cs.voters_outgoing.is_empty() || pending {
        return (!pending).then_some(Change::LeaveJoint);
    }
    // Leaving: out, draining, or no longer a member at all.
    let out = |n: &u64| members.iter().all(|(id, o)| id != n || *o);
    let member = |n: &u64| members.iter().any(|(id, _)| id == n);
    let up = |n: &u64| peer(*n).is_some_and(|p| p.up);
    if let Some(v) = cs.voters.iter().find(|v| out(v)) {
        if let Some(l) = cs.learners.iter().find(|l| up(l) && !out(l)) {
            return swap_step(cs, me, *l, Some(*v), committed, peer);
        }
        // A removed node's voter goes even without a replacement, while
        // more than one voter stays.
        if !member(v) && cs.voters.len() > 1 {
            if *v != me {
                return Some(Change::Remove(*v));
            }
            return hand_over(cs, me, peer);
        }
    }
    if let Some(l) = cs.learners.iter().find(|l| !member(l)) {
        return Some(Change::Remove(*l));
    }
    members
        .iter()
        .map(|(id, _)| *id)
        .find(|n| {
            *n != me && !cs.voters.contains(n) && !cs.learners.contains(n) && up(n) && !out(n)
        })
        .map(Change::AddLearner)
}

/// Leadership to another voter that is up: raft-rs would keep a leader
/// that removed itself leading.
fn hand_over(cs: &ConfState, me: u64, peer: &dyn Fn(u64) -> Option<PeerView>) -> Option<Change> {
    cs.voters
        .iter()
        .find(|v| **v != me && peer(**v).is_some_and(|p| p.up))
        .map(|v| Change::HandOver(*v))
}

/// One step of putting `add` in the place of `remove`.
fn swap_step(
    cs: &ConfState,
    me: u64,
    add: u64,
    remove: Option<u64>,
    committed: u64,
    peer: &dyn Fn(u64) -> Option<PeerView>,
) -> Option<Change> {
    let remove = remove.filter(|r| cs.voters.contains(r));
    if remove == Some(me) {
        return hand_over(cs, me, peer);
    }
    if cs.voters.contains(&add) {
        return remove.map(Change::Remove);
    }
    if !cs.learners.contains(&add) {
        return Some(Change::AddLearner(add));
    }
    let p = peer(add)?;
    let caught_up = p.replicating && p.matched > 0 && p.matched + LEARNER_LAG >= committed;
    caught_up.then_some(Change::Swap { add, remove })
}

impl Driver {
    /// Takes the next membership step of every awake group this node
    /// leads (once a second).
    pub(super) fn reconfigure(&mut self) {
        let now = self.clock.now();
        let me = self.cfg.node;
        // Members with whether they are leaving (out or draining): a
        // metadata voter there is replaced.
        let members: Vec<(u64, bool)> = self
            .meta
            .nodes
            .keys()
            .map(|n| {
                let s = self.meta.node_state(*n);
                (*n, s.out || s.draining)
            })
            .collect();
        let mut reports = Vec::new();
        for g in self.awake_now() {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            if !r.is_leader() {
                continue;
            }
            let cs = r.node.store().conf_state();
            let mv = self.meta.moves.get(&g).map(|m| (m.add, m.remove));
            let first = r.node.store().first_index().unwrap_or(1);
            let stale = r.node.store().snapshot_index() + 1 < first;
            if g != META_GROUP && (stale || mv.is_some() || !cs.learners.is_empty()) {
                // A new learner is sent a snapshot that has it in its
                // configuration (raft-rs refuses one that does not), and
                // a snapshot behind the log's start is no use to anyone.
                r.set_shard_snapshot();
            }
            let liveness = &self.liveness;
            let raft = &r.node.raft;
            let peer = |id: u64| {
                let p = raft.prs().get(id);
                Some(PeerView {
                    matched: p.map_or(0, |p| p.matched),
                    replicating: p.is_some_and(|p| p.state == ProgressState::Replicate),
                    up: liveness.is_up(id, now),
                })
            };
            let pending = raft.has_pending_conf();
            let committed = raft.raft_log.committed;
            let change = if g == META_GROUP {
                meta_change(&cs, me, pending, &members, committed, &peer)
            } else {
                shard_change(&cs, me, pending, mv, committed, &peer)
            };
            if g != META_GROUP && cs.voters_outgoing.is_empty() {
                reports.push((g, cs.voters.clone(), r.conf_as_of));
            }
            let Some(change) = change else {
                continue;
            };
            if let Change::AddLearner(_) = change {
                let up = |n: u64| self.liveness.is_up(n, now);
                if g != META_GROUP && !log_starts_past_one(r, &up, &mut self.carry) {
                    continue; // compacted first; added at the next look
                }
            }
            tracing::info!(group = g, ?change, "changing the group's members");
            propose_change(r, g, change);
        }
        self.publish_memberships(reports);
    }

    /// Offers the metadata the voters of the shard groups led here whose
    /// voters it has otherwise, as of a newer log index
    /// (`MetaCommand::ShardMembership`, proposed by `shard_report`).
    fn publish_memberships(&self, reports: Vec<(u64, Vec<u64>, u64)>) {
        let mut out = self
            .view
            .membership_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (g, mut voters, as_of) in reports {
            let Some((rec, i)) = self.meta.shard(g) else {
                out.remove(&g);
                continue;
            };
            let mut known = rec.shards[i].clone();
            known.sort_unstable();
            voters.sort_unstable();
            if known != voters && as_of > self.meta.shard_conf(g) {
                out.insert(g, MembershipReport { voters, as_of });
            } else {
                out.remove(&g);
            }
        }
    }
}

/// A learner created empty takes entries from index 1 as the group's whole
/// history, but the group's first members are not in the log: it must be
/// sent a snapshot. True once the leader's log starts past index 1 (it is
/// compacted here when it does not yet). Only members that are `up` hold
/// the compaction back, as in `compaction`: the replica being replaced is
/// usually on a dead node, whose progress a leader elected since it died
/// has at 0 (waiting for it left the shard short of a replica until the
/// log aged out, 90 s).
fn log_starts_past_one(
    r: &mut Replica,
    up: &dyn Fn(u64) -> bool,
    carry: &mut raftblock_storage::WalBatch,
) -> bool {
    let first = r.node.store().first_index().unwrap_or(1);
    if first > 1 {
        return true;
    }
    let voters_have = r
        .node
        .raft
        .prs()
        .iter()
        .filter(|(id, _)| up(**id))
        .map(|(_, p)| p.matched)
        .min()
        .unwrap_or(0);
    let to = r.durable.min(voters_have);
    if to >= first && r.node.mut_store().stage_compact(to, carry).is_ok() {
        r.set_shard_snapshot();
    } else if let Some(tx) = &r.apply {
        // Logged blocks hold the durable index (and so the log) back for
        // up to 30 s: settle them now rather than leave the shard short
        // of a replica meanwhile.
        let _ = tx.send(crate::apply::ApplyMsg::SettleAll);
    }
    false
}

/// Proposes one membership step (or hands leadership over); nobody waits
/// for the outcome: the next look sees it.
fn propose_change(r: &mut Replica, group: u64, change: Change) {
    let single = |kind: ConfChangeType, node_id: u64| {
        let mut s = ConfChangeSingle::default();
        s.set_change_type(kind);
        s.node_id = node_id;
        s
    };
    let mut cc = ConfChangeV2::default();
    match change {
        Change::HandOver(to) => {
            r.hand_over(to);
            return;
        }
        Change::LeaveJoint => {}
        Change::AddLearner(n) => cc.changes.push(single(ConfChangeType::AddLearnerNode, n)),
        Change::Swap { add, remove } => {
            cc.changes.push(single(ConfChangeType::AddNode, add));
            if let Some(rm) = remove {
                cc.changes.push(single(ConfChangeType::RemoveNode, rm));
            }
        }
        Change::Remove(n) => cc.changes.push(single(ConfChangeType::RemoveNode, n)),
    }
    let (reply, _) = oneshot::channel();
    let taken = r.node.propose_conf_change(Vec::new(), cc);
    super::inbox::track_proposal(r, group, taken, true, reply);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn peers(matched: u64) -> impl Fn(u64) -> Option<PeerView> {
        move |id| {
            Some(PeerView {
                matched: if id == 4 { matched } else { 100 },
                replicating: matched > 0 || id != 4,
                up: id != 3,
            })
        }
    }

    #[test]
    fn a_move_goes_learner_then_joint_swap_and_never_loses_a_voter() {
        let mv = Some((4, Some(3)));
        let c = conf(&[1, 2, 3], &[]);
        assert_eq!(
            shard_change(&c, 1, false, mv, 100, &peers(0)),
            Some(Change::AddLearner(4))
        );
        // A learner still copying is not promoted.
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(shard_change(&c, 1, false, mv, 100, &peers(0)), None);
        assert_eq!(shard_change(&c, 1, false, mv, 1000, &peers(90)), None);
        // Caught up: promoted and the dead voter removed in one change.
        assert_eq!(
            shard_change(&c, 1, false, mv, 100, &peers(90)),
            Some(Change::Swap {
                add: 4,
                remove: Some(3)
            })
        );
        // Nothing while a change is pending; leave a joint config after one.
        assert_eq!(shard_change(&c, 1, true, mv, 100, &peers(90)), None);
        let joint = ConfState {
            voters: vec![1, 2, 4],
            voters_outgoing: vec![1, 2, 3],
            auto_leave: true,
            ..ConfState::default()
        };
        assert_eq!(
            shard_change(&joint, 1, false, mv, 100, &peers(90)),
            Some(Change::LeaveJoint)
        );
        // Done: nothing more to do.
        let c = conf(&[1, 2, 4], &[]);
        assert_eq!(shard_change(&c, 1, false, mv, 100, &peers(90)), None);
        // A learner promoted without the removal: the replaced voter goes.
        let c = conf(&[1, 2, 3, 4], &[]);
        assert_eq!(
            shard_change(&c, 1, false, mv, 100, &peers(90)),
            Some(Change::Remove(3))
        );
        // An abandoned move's learner is removed.
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(
            shard_change(&c, 1, false, None, 100, &peers(90)),
            Some(Change::Remove(4))
        );
        // The leader's own replica is to go: another live voter leads.
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(
            shard_change(&c, 1, false, Some((4, Some(1))), 100, &peers(90)),
            Some(Change::HandOver(2))
        );
    }

    #[test]
    fn the_meta_group_replaces_an_out_voter_and_takes_members_back() {
        let up_all = |id: u64| {
            Some(PeerView {
                matched: 50,
                replicating: true,
                up: id != 3,
            })
        };
        let members = [(1, false), (2, false), (3, true), (4, false)];
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(
            meta_change(&c, 1, false, &members, 50, &up_all),
            Some(Change::Swap {
                add: 4,
                remove: Some(3)
            })
        );
        // Not out yet: nothing moves.
        let in_all = [(1, false), (2, false), (3, false), (4, false)];
        assert_eq!(meta_change(&c, 1, false, &in_all, 50, &up_all), None);
        // No learner to replace it with: the out voter stays.
        let c = conf(&[1, 2, 3], &[]);
        let three = [(1, false), (2, false), (3, true)];
        assert_eq!(meta_change(&c, 1, false, &three, 50, &up_all), None);
        // A member back after its replica was removed follows again.
        let c = conf(&[1, 2, 4], &[]);
        let back = [(1, false), (2, false), (3, false), (4, false)];
        let all_up = |_| {
            Some(PeerView {
                matched: 50,
                replicating: true,
                up: true,
            })
        };
        assert_eq!(
            meta_change(&c, 1, false, &back, 50, &all_up),
            Some(Change::AddLearner(3))
        );
        // A removed node leaves the group: a learner at once, a voter
        // replaced by a learner when there is one, else removed.
        let removed = [(1, false), (2, false), (4, false)];
        let c = conf(&[1, 2, 4], &[3]);
        assert_eq!(
            meta_change(&c, 1, false, &removed, 50, &all_up),
            Some(Change::Remove(3))
        );
        let c = conf(&[1, 2, 3], &[4]);
        assert_eq!(
            meta_change(&c, 1, false, &removed, 50, &all_up),
            Some(Change::Swap {
                add: 4,
                remove: Some(3)
            })
        );
        let c = conf(&[1, 2, 3], &[]);
        let two = [(1, false), (2, false)];
        assert_eq!(
            meta_change(&c, 1, false, &two, 50, &all_up),
            Some(Change::Remove(3))
        );
    }
}
