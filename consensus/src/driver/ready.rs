//! A round's Ready handling: the Ready of every group that has one is
//! collected, its leader messages sent at once, its committed entries
//! dispatched (shard entries to their apply tasks, meta entries applied
//! inline, membership changes applied), its snapshot installed and its
//! entries and hard state staged; all of it goes to the log writer as one
//! task, which sends the messages that promise persistence once it is
//! durable (`log_writer`).

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot, SnapshotStatus,
};
use raft::StateRole;
use tokio::sync::mpsc;

use raftblock_storage::WalBatch;

use crate::apply::ApplyMsg;
use crate::meta::{MetaEffect, MetaState, META_GROUP};
use crate::transport::OutgoingEnvelope;

use super::{encode, RaftNetwork};

use super::log_writer::WriteTask;
use super::meta_apply::{apply_meta_entries, install_meta_snapshot};
use super::replica::Replica;
use super::{lock_write, Driver, ReplicaError};

impl Driver {
    /// One round of Ready handling for every group. What the round must
    /// persist goes to the log writer as one task; the driver does not wait
    /// for it (raft-rs `advance_append_async`), the writer's report does
    /// the rest (`on_persisted`).
    pub(super) fn round(&mut self) {
        let lease = self.cfg.lease();
        let mut task = WriteTask {
            seq: self.next_task,
            batch: std::mem::take(&mut self.carry),
            sync: std::mem::take(&mut self.carry_sync),
            messages: Vec::new(),
        };
        let mut persisting = Vec::new();
        let mut effects = Vec::new();
        let mut meta_changed = false;
        let mut snap_sent = Vec::new();
        let mut leader_changes = Vec::new();
        for g in self.awake_now() {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            // A group that fell asleep has one last round (the answer to
            // the heartbeat that put it to sleep, the entries it committed)
            // and then leaves the awake groups.
            if r.hibernating {
                self.awake.remove(&g);
                if !std::mem::take(&mut r.settle_round) {
                    continue;
                }
            }
            if !r.node.has_ready() || self.frozen.contains_key(&g) {
                continue;
            }
            let mut rd = r.node.ready();
            let number = rd.number();
            if let Some(ss) = rd.ss() {
                leader_changes.push((g, ss.leader_id));
                if ss.raft_state != StateRole::Leader {
                    r.lease_until = None;
                    self.view.read_leases.publish(g, None);
                    let leader = Some(ss.leader_id).filter(|l| *l != 0);
                    r.fail_all(g, ReplicaError::NotLeader { group: g, leader });
                }
            }
            let msgs = rd.take_messages();
            if msgs
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow)
            {
                // Leadership is being handed over (raft-rs may also do it
                // on its own): the transferee's forced election can win
                // inside this leader's lease, so the lease ends now, for
                // local readers too, before the message leaves.
                r.lease_until = None;
                self.view.read_leases.publish(g, None);
            }
            send_messages(self.network.as_ref(), g, msgs, &mut snap_sent);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                install_snapshot(
                    g,
                    r,
                    number,
                    &snap,
                    &mut task.batch,
                    &mut self.meta,
                    &mut effects,
                    &mut meta_changed,
                );
            }
            let committed = rd.take_committed_entries();
            dispatch(
                g,
                r,
                committed,
                &mut task.batch,
                &mut self.meta,
                &mut effects,
                &mut meta_changed,
            );
            if !rd.entries().is_empty() {
                r.node
                    .mut_store()
                    .stage_entries(number, rd.entries(), &mut task.batch);
            }
            if let Some(hs) = rd.hs() {
                r.node.mut_store().stage_hard_state(hs, &mut task.batch);
            }
            r.on_read_states(g, rd.take_read_states(), self.clock.now(), lease);
            r.complete_reads();
            let writes = !rd.entries().is_empty() || rd.hs().is_some() || !rd.snapshot().is_empty();
            let persisted_msgs = rd.take_persisted_messages();
            if writes || r.unpersisted.is_some() {
                // Its messages promise what this task (or an earlier one
                // of the group) writes: they leave after the write.
                task.sync |= rd.must_sync();
                encode_messages(g, persisted_msgs, &mut task.messages);
                persisting.push((g, number));
                r.unpersisted = Some(number);
                r.node.advance_append_async(rd);
            } else {
                send_messages(self.network.as_ref(), g, persisted_msgs, &mut snap_sent);
                let mut light = r.node.advance_append(rd);
                send_messages(
                    self.network.as_ref(),
                    g,
                    light.take_messages(),
                    &mut snap_sent,
                );
                let committed = light.take_committed_entries();
                dispatch(
                    g,
                    r,
                    committed,
                    &mut self.carry,
                    &mut self.meta,
                    &mut effects,
                    &mut meta_changed,
                );
            }
            r.advance_raft_applied();
            r.publish_lease(g, &self.view.read_leases);
        }
        if !task.batch.is_empty() || !task.messages.is_empty() || !persisting.is_empty() {
            self.next_task += 1;
            self.in_flight.push_back((task.seq, persisting));
            self.writer.submit(task);
        }
        for (g, to) in snap_sent {
            if let Some(r) = self.replicas.get_mut(&g) {
                r.node.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
        if !leader_changes.is_empty() {
            let mut l = lock_write(&self.view.leaders);
            for (g, leader) in &leader_changes {
                l.insert(*g, *leader);
            }
            drop(l);
            self.view.leader_change.notify_waiters();
            let now = self.clock.now();
            for (g, leader) in leader_changes {
                self.log_leader(g, leader, now);
            }
        }
        if meta_changed {
            self.meta_applied(effects);
        }
    }

    /// Tasks up to `upto` are written: their Readies are persisted, and the
    /// next round picks up what that commits.
    pub(super) fn on_persisted(&mut self, upto: u64) {
        while self.in_flight.front().is_some_and(|(seq, _)| *seq <= upto) {
            let Some((_, readies)) = self.in_flight.pop_front() else {
                break;
            };
            for (g, number) in readies {
                let Some(r) = self.replicas.get_mut(&g) else {
                    continue;
                };
                r.node.on_persist_ready(number);
                r.node.mut_store().persisted(number);
                // What the write unblocks (commits, applies) needs a round.
                if !r.hibernating {
                    self.awake.insert(g);
                }
                if r.unpersisted.is_some_and(|n| n <= number) {
                    r.unpersisted = None;
                }
                r.advance_raft_applied();
            }
        }
    }

    /// Hands what was staged outside a round to the log writer now.
    pub(super) fn flush_carry(&mut self) {
        if self.carry.is_empty() {
            return;
        }
        let task = WriteTask {
            seq: self.next_task,
            batch: std::mem::take(&mut self.carry),
            sync: std::mem::take(&mut self.carry_sync),
            messages: Vec::new(),
        };
        self.next_task += 1;
        self.in_flight.push_back((task.seq, Vec::new()));
        self.writer.submit(task);
    }

    /// Waits until everything handed to the log writer is written.
    pub(super) fn persist_all(&mut self) {
        let last = self.next_task - 1;
        self.writer
            .wait_idle(last, &self.wal, self.network.as_ref());
        self.on_persisted(last);
    }
}

fn encode_messages(group: u64, msgs: Vec<Message>, out: &mut Vec<(u64, OutgoingEnvelope)>) {
    for m in msgs {
        let to = m.to;
        match encode::envelope(group, m) {
            Ok(env) => out.push((to, env)),
            Err(e) => tracing::error!(group, to, error = %e, "encoding a raft message"),
        }
    }
}

fn send_messages(
    transport: &dyn RaftNetwork,
    group: u64,
    msgs: Vec<Message>,
    snap_sent: &mut Vec<(u64, u64)>,
) {
    for m in msgs {
        if m.get_msg_type() == MessageType::MsgSnapshot {
            snap_sent.push((group, m.to));
        }
        send_one(transport, group, m);
    }
}

/// Encodes and sends one message of `group`.
pub(super) fn send_one(transport: &dyn RaftNetwork, group: u64, m: Message) {
    let to = m.to;
    match encode::envelope(group, m) {
        Ok(env) => transport.send(to, env),
        Err(e) => tracing::error!(group, to, error = %e, "encoding a raft message"),
    }
}

/// Hands committed entries to the state machine: the meta group applies
/// here; a shard's entries go to its apply task with the replies of the
/// proposals among them.
fn dispatch(
    group: u64,
    r: &mut Replica,
    entries: Vec<Entry>,
    batch: &mut WalBatch,
    meta: &mut MetaState,
    effects: &mut Vec<MetaEffect>,
    meta_changed: &mut bool,
) {
    let Some(last) = entries.last().map(|e| e.index) else {
        return;
    };
    let mut replies = Vec::new();
    for e in &entries {
        while r.proposals.front().is_some_and(|p| p.index <= e.index) {
            let Some(p) = r.proposals.pop_front() else {
                break;
            };
            let is_conf = e.get_entry_type() != EntryType::EntryNormal;
            if p.index == e.index && p.term == e.term && p.conf == is_conf {
                replies.push((p.index, p.reply));
            } else {
                // Another leader's entry replaced the proposal, or Raft
                // refused a membership change by logging an empty entry.
                let _ = p.reply.send(Err(ReplicaError::Retry(group)));
            }
        }
        match e.get_entry_type() {
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                apply_conf_change(group, r, e, batch);
                r.last_conf = r.last_conf.max(e.index);
            }
            EntryType::EntryNormal => {}
        }
    }
    r.conf_as_of = r.conf_as_of.max(last);
    if group != META_GROUP {
        match &r.apply {
            Some(tx) => {
                if let Err(mpsc::error::SendError(ApplyMsg::Entries(_, replies))) =
                    tx.send(ApplyMsg::Entries(entries, replies))
                {
                    for (_, reply) in replies {
                        let _ = reply.send(Err(ReplicaError::Stopped));
                    }
                }
            }
            None => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(ReplicaError::NoReplica(group)));
                }
            }
        }
        return;
    }
    apply_meta_entries(&entries, replies, meta, effects, meta_changed);
    r.applied = r.applied.max(last);
    r.reads_applied = r.applied;
    r.complete_reads();
}

fn apply_conf_change(group: u64, r: &mut Replica, e: &Entry, batch: &mut WalBatch) {
    let cs = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        ConfChangeV2::parse_from_bytes(&e.data)
            .map_err(|err| err.to_string())
            .and_then(|cc| r.node.apply_conf_change(&cc).map_err(|err| err.to_string()))
    } else {
        ConfChange::parse_from_bytes(&e.data)
            .map_err(|err| err.to_string())
            .and_then(|cc| r.node.apply_conf_change(&cc).map_err(|err| err.to_string()))
    };
    match cs {
        Ok(cs) => {
            // Debug: this fires on every replica, twice per joint change.
            // The group's leader says at INFO what it changes, and the
            // metadata leader when a move starts and ends.
            tracing::debug!(group, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
            r.node.mut_store().stage_conf_state(&cs, batch);
        }
        Err(err) => tracing::warn!(group, index = e.index, error = %err, "conf change refused"),
    }
}

/// Installs a snapshot from the leader. For the meta group it carries the
/// whole metadata; the difference to what this node had becomes effects.
#[allow(clippy::too_many_arguments)]
fn install_snapshot(
    group: u64,
    r: &mut Replica,
    ready: u64,
    snap: &Snapshot,
    batch: &mut WalBatch,
    meta: &mut MetaState,
    effects: &mut Vec<MetaEffect>,
    meta_changed: &mut bool,
) {
    let index = snap.get_metadata().index;
    if group == META_GROUP {
        install_meta_snapshot(index, snap, meta, effects, meta_changed);
    } else {
        // The data was staged and synced, and the swap committed, before
        // the message was stepped (`inbox`); the fence that held at the
        // snapshot's index comes with it.
        let fence = crate::fence::fence_of_marker(snap.get_data());
        tracing::info!(group, index, fence, "shard snapshot installed");
        if let Some(tx) = &r.apply {
            let _ = tx.send(ApplyMsg::Snapshot(index, fence));
        }
    }
    r.node.mut_store().stage_snapshot(ready, snap, batch);
    r.applied = index;
    r.durable = index;
    r.conf_as_of = index;
    r.last_conf = index;
}
