//! What arrives on the driver's channel: each `DriverMsg` is handled here
//! between rounds. Peer messages are stepped (a shard snapshot is held back
//! until its data is copied), proposals and membership changes are
//! proposed and tracked until their entries commit.

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, Message, MessageType};

use crate::apply::ApplyMsg;
use crate::meta::META_GROUP;
use crate::snapshot::{SnapshotFetch, StagedCopy};
use crate::transport::Envelope;

use super::hibernation::{is_heartbeat, is_hibernation_msg};
use super::replica::{Proposal, Replica};
use super::{Driver, DriverMsg, ReplicaError, Reply};

impl Driver {
    /// Acts on one message; false when the driver is to stop.
    pub(super) fn handle_msg(&mut self, m: DriverMsg) -> bool {
        match m {
            DriverMsg::Raft { from, envelopes } => {
                self.liveness.heard_from(from, self.clock.now());
                for env in envelopes {
                    self.step(from, env);
                }
            }
            DriverMsg::Unreachable { to, groups } => {
                for g in groups {
                    if let Some(r) = self.replicas.get_mut(&g) {
                        r.node.report_unreachable(to);
                    }
                }
            }
            DriverMsg::Propose { group, data, reply } => self.propose(group, data, reply),
            DriverMsg::Read { group, reply } => {
                let Some(r) = self.replicas.get_mut(&group) else {
                    let _ = reply.send(Err(ReplicaError::NoReplica(group)));
                    return true;
                };
                r.wake(group, &mut self.awake);
                // A follower reads too: Raft forwards its ReadIndex to the
                // leader, and the read waits until this replica's apply
                // task has applied the index the leader confirmed. A shard
                // follower without a leader, or far behind, sends the
                // caller to the leader at once instead.
                let behind = r
                    .node
                    .raft
                    .raft_log
                    .committed
                    .saturating_sub(r.reads_applied);
                let unfit = r.leader().is_none() || behind > super::reads::FOLLOWER_READ_MAX_LAG;
                if group != META_GROUP && !r.is_leader() && unfit {
                    // (see `reads::FOLLOWER_READ_MAX_LAG`)
                    let leader = r.leader();
                    let _ = reply.send(Err(ReplicaError::NotLeader { group, leader }));
                } else {
                    r.reads_new.push((self.clock.now(), reply));
                }
            }
            DriverMsg::AddMember {
                node,
                learner,
                reply,
            } => self.add_member(node, learner, reply),
            DriverMsg::Applied { group, index } => {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.applied = r.applied.max(index);
                    r.reads_applied = r.reads_applied.max(index);
                    r.advance_raft_applied();
                    r.complete_reads();
                    r.publish_lease(group, &self.view.read_leases);
                    // Applied entries leave the WAL's memory; a leader keeps
                    // what a live follower has yet to receive (a follower
                    // that is down reads back from the segment files).
                    let now = self.clock.now();
                    let liveness = &self.liveness;
                    let keep_from = if r.is_leader() {
                        r.node
                            .raft
                            .prs()
                            .iter()
                            .filter(|(id, _)| liveness.is_up(**id, now))
                            .map(|(_, p)| p.matched + 1)
                            .min()
                            .unwrap_or(0)
                            .min(r.applied + 1)
                    } else {
                        r.applied + 1
                    };
                    self.wal.evict_cache(group, keep_from);
                }
            }
            DriverMsg::Durable { group, index } => self.durable(group, index),
            DriverMsg::Fenced { group, fences } => {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.fences = crate::fence::FenceHistory { fences };
                    // The snapshot offered to followers carries the fence.
                    r.set_shard_snapshot();
                }
            }
            DriverMsg::SnapshotFetched {
                group,
                from,
                msg,
                copy,
            } => self.snapshot_fetched(group, from, *msg, copy),
            DriverMsg::SnapshotPrepared { group, ok } => self.snapshot_prepared(group, ok),
            DriverMsg::TransferLeader { group, to } => {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.wake(group, &mut self.awake);
                    if r.is_leader() && to != self.cfg.node {
                        r.hand_over(to);
                        r.publish_lease(group, &self.view.read_leases);
                    }
                }
            }
            DriverMsg::Persisted => {
                let done = self.writer.done();
                self.on_persisted(done);
            }
            DriverMsg::Status(tx) => {
                let _ = tx.send(self.status());
            }
            DriverMsg::Stop => return false,
        }
        true
    }

    fn step(&mut self, from: u64, env: Envelope) {
        // From `Bytes`, entry payloads are slices of the frame, not copies.
        let msg = match Message::parse_from_carllerche_bytes(&env.message) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(from, group = env.group, error = %e, "undecodable raft message");
                return;
            }
        };
        let Some(r) = self.replicas.get_mut(&env.group) else {
            tracing::trace!(
                from,
                group = env.group,
                "message for a group this node does not hold"
            );
            return;
        };
        if raft::raw_node::is_local_msg(msg.get_msg_type()) {
            tracing::warn!(
                from,
                group = env.group,
                "peer sent a local-only raft message"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgAppend
            && msg.index == 0
            && env.group != META_GROUP
            && is_empty_conf(&r.node.store().conf_state())
        {
            // A replica created empty for a move would take entries from
            // index 1 as the group's whole history, which does not name
            // the first members: it waits for a snapshot instead.
            tracing::debug!(
                from,
                group = env.group,
                "empty replica: waiting for a snapshot"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgAppend
            && (self.fetching.contains(&env.group) || self.frozen.contains_key(&env.group))
        {
            // The replica is copying a snapshot's data: refusing entries
            // now would send the leader back to probing from the start of
            // its log, and it would send another snapshot, copied all over
            // again once this one is in. Once it is in, the next append
            // continues from it.
            tracing::trace!(
                from,
                group = env.group,
                "append held off during a snapshot copy"
            );
            return;
        }
        if env.group != META_GROUP
            && msg.get_msg_type() == MessageType::MsgSnapshot
            && msg.get_snapshot().get_metadata().index > r.node.raft.raft_log.committed
        {
            // Hold it back until the shard's data is staged (see
            // `snapshot`). One at or below the commit index is stepped at
            // once: Raft refuses it and tells the leader where this
            // replica is, and nothing is copied.
            if self.fetching.insert(env.group) {
                tracing::info!(
                    group = env.group,
                    from,
                    index = msg.get_snapshot().get_metadata().index,
                    "shard snapshot from the leader; copying its data"
                );
                let f = SnapshotFetch {
                    group: env.group,
                    from,
                    msg,
                };
                if self.snapshots.send(f).is_err() {
                    self.fetching.remove(&env.group);
                }
            }
            return;
        }
        let hibernation = is_hibernation_msg(&msg);
        if !hibernation && (r.hibernating || !is_heartbeat(&msg)) {
            r.wake(env.group, &mut self.awake);
        }
        let sleep_with =
            (hibernation && msg.get_msg_type() == MessageType::MsgHeartbeat).then(|| msg.clone());
        if let Err(e) = r.node.step(msg) {
            tracing::debug!(from, group = env.group, error = %e, "raft step");
        }
        if let Some(m) = sleep_with {
            // It stays among the awake groups for one more round.
            r.follow_into_hibernation(&m);
            self.awake.insert(env.group);
        }
    }

    /// A held-back snapshot's copy is staged: unless the replica got past
    /// the snapshot meanwhile, freeze the group and ask its apply task to
    /// commit to the swap (answered by `snapshot_prepared`).
    fn snapshot_fetched(&mut self, group: u64, from: u64, msg: Message, copy: Option<StagedCopy>) {
        let Some(r) = self.replicas.get_mut(&group) else {
            self.fetching.remove(&group);
            return;
        };
        let index = msg.get_snapshot().get_metadata().index;
        let Some(copy) = copy else {
            self.fetching.remove(&group);
            return;
        };
        let send = |m: ApplyMsg| r.apply.as_ref().is_some_and(|tx| tx.send(m).is_ok());
        if index <= r.node.raft.raft_log.committed {
            tracing::info!(
                group,
                index,
                "staged copy is stale; this replica got past it"
            );
            send(ApplyMsg::Discard);
            self.fetching.remove(&group);
            let _ = r.node.step(msg);
            return;
        }
        if send(ApplyMsg::Prepare(copy)) {
            self.frozen.insert(group, (from, msg));
        } else {
            self.fetching.remove(&group);
        }
    }

    /// The apply task committed to the staged copy (`ok`) or refused: the
    /// held MsgSnapshot is stepped, and the swap done only if Raft took it.
    fn snapshot_prepared(&mut self, group: u64, ok: bool) {
        let Some((from, msg)) = self.frozen.remove(&group) else {
            return;
        };
        if !self.replicas.contains_key(&group) {
            self.fetching.remove(&group);
            return;
        }
        if !ok {
            // Chunks it kept changed under the copy: compare and copy again.
            let f = SnapshotFetch { group, from, msg };
            if self.snapshots.send(f).is_err() {
                self.fetching.remove(&group);
            }
            return;
        }
        self.fetching.remove(&group);
        // Nothing of the group is left in flight to the log when Raft
        // takes the snapshot (TiKV waits the same way): the log the
        // snapshot replaces is on disk, and its removal comes after it.
        self.persist_all();
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        let index = msg.get_snapshot().get_metadata().index;
        if let Err(e) = r.node.step(msg) {
            tracing::warn!(group, error = %e, "stepping a staged snapshot");
        }
        let taken = r
            .node
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| s.get_metadata().index == index);
        let m = if taken {
            ApplyMsg::Install
        } else {
            tracing::info!(group, index, "raft did not take the staged snapshot");
            ApplyMsg::Discard
        };
        if let Some(tx) = &r.apply {
            let _ = tx.send(m);
        }
    }

    fn propose(&mut self, group: u64, data: Bytes, reply: Reply) {
        let Some(r) = self.replicas.get_mut(&group) else {
            let _ = reply.send(Err(ReplicaError::NoReplica(group)));
            return;
        };
        r.wake(group, &mut self.awake);
        if !r.is_leader() {
            let leader = r.leader();
            let _ = reply.send(Err(ReplicaError::NotLeader { group, leader }));
            return;
        }
        if r.node.raft.lead_transferee.is_some() {
            let _ = reply.send(Err(ReplicaError::Retry(group)));
            return;
        }
        // What `RawNode::propose` does, minus its copy of the payload into
        // a fresh Vec: the entry keeps the caller's `Bytes`.
        let entry = Entry {
            data,
            ..Entry::default()
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = r.node.raft.id;
        m.set_entries(vec![entry].into());
        let stepped = r.node.step(m);
        track_proposal(r, group, stepped, false, reply);
    }

    /// Admits `node` into the metadata group: as a voter or a learner, so
    /// voters stay odd and at most five (`membership`).
    fn add_member(&mut self, node: u64, learner: bool, reply: Reply) {
        let group = META_GROUP;
        let now = self.clock.now();
        let liveness = &self.liveness;
        let Some(r) = self.replicas.get_mut(&group) else {
            let _ = reply.send(Err(ReplicaError::NoReplica(group)));
            return;
        };
        r.wake(group, &mut self.awake);
        if !r.is_leader() {
            let leader = r.leader();
            let _ = reply.send(Err(ReplicaError::NotLeader { group, leader }));
            return;
        }
        let cs = r.node.store().conf_state();
        if !cs.voters_outgoing.is_empty() {
            // A joint configuration is still being left: one change at a time.
            let _ = reply.send(Err(ReplicaError::Retry(group)));
            return;
        }
        let changes = super::membership::admit(&cs.voters, &cs.learners, node, learner, |n| {
            liveness.is_up(n, now)
        });
        if changes.is_empty() {
            let _ = reply.send(Ok(()));
            return;
        }
        let mut cc = ConfChangeV2::default();
        for change in changes {
            let mut single = ConfChangeSingle::default();
            let (kind, id) = match change {
                super::membership::Admission::Voter(id) => (ConfChangeType::AddNode, id),
                super::membership::Admission::Learner(id) => (ConfChangeType::AddLearnerNode, id),
            };
            single.set_change_type(kind);
            single.node_id = id;
            cc.changes.push(single);
        }
        tracing::info!(node, changes = ?cc.changes, "changing the metadata group's members");
        let proposed = r.node.propose_conf_change(Vec::new(), cc);
        track_proposal(r, group, proposed, true, reply);
    }
}

/// A configuration naming no one: a replica created empty that has not
/// had its snapshot yet.
fn is_empty_conf(cs: &raft::prelude::ConfState) -> bool {
    cs.voters.is_empty() && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
}

/// Remembers a proposal raft-rs took (answered once its entry applies), or
/// answers Retry for one it dropped.
pub(super) fn track_proposal(
    r: &mut Replica,
    group: u64,
    taken: raft::Result<()>,
    conf: bool,
    reply: Reply,
) {
    match taken {
        Ok(()) => {
            let index = r.node.raft.raft_log.last_index();
            let term = r.node.raft.term;
            r.proposals.push_back(Proposal {
                index,
                term,
                conf,
                reply,
            });
        }
        Err(e) => {
            tracing::debug!(group, conf, error = %e, "proposal dropped");
            let _ = reply.send(Err(ReplicaError::Retry(group)));
        }
    }
}
