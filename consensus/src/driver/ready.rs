//! A round's Ready handling: the Ready of every group that has one is
//! collected, its leader messages sent at once, its committed entries
//! dispatched (shard entries to their apply tasks, meta entries applied
//! inline, membership changes applied), its snapshot installed and its
//! entries and hard state staged; all of it goes to the WAL as one record
//! before the messages that promise persistence are sent.

use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot, SnapshotStatus,
};
use raft::StateRole;
use tokio::sync::mpsc;

use raftblock_storage::WalBatch;

use crate::apply::ApplyMsg;
use crate::meta::{MetaEffect, MetaState, META_GROUP};
use crate::transport::Envelope;

use super::RaftNetwork;

use super::meta_apply::{apply_meta_entries, install_meta_snapshot};
use super::replica::Replica;
use super::{fatal, lock_write, Driver, ReplicaError};

impl Driver {
    /// One round of Ready handling for every group, with one WAL write.
    pub(super) fn round(&mut self) {
        let lease = self.cfg.lease();
        let me = self.cfg.node;
        let mut batch = std::mem::take(&mut self.carry);
        let mut sync = std::mem::take(&mut self.carry_sync);
        let mut readies = Vec::new();
        let mut effects = Vec::new();
        let mut meta_changed = false;
        let mut snap_sent = Vec::new();
        let mut leader_changes = Vec::new();
        for (&g, r) in self.replicas.iter_mut() {
            if !r.node.has_ready() || self.frozen.contains_key(&g) {
                continue;
            }
            let mut rd = r.node.ready();
            if let Some(ss) = rd.ss() {
                leader_changes.push((g, ss.leader_id));
                if ss.raft_state != StateRole::Leader {
                    r.lease_until = None;
                    let leader = Some(ss.leader_id).filter(|l| *l != 0);
                    r.fail_all(g, ReplicaError::NotLeader { group: g, leader });
                }
                if ss.raft_state == StateRole::Leader {
                    tracing::info!(group = g, term = r.node.raft.term, "became leader");
                }
            }
            let msgs = rd.take_messages();
            if msgs
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgTimeoutNow)
            {
                // Leadership is being handed over (raft-rs may also do it
                // on its own): the transferee's forced election can win
                // inside this leader's lease, so the lease ends now.
                r.lease_until = None;
            }
            send_messages(self.network.as_ref(), g, msgs, &mut snap_sent);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                install_snapshot(
                    g,
                    r,
                    &snap,
                    &mut batch,
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
                &mut batch,
                &mut self.meta,
                &mut effects,
                &mut meta_changed,
            );
            if !rd.entries().is_empty() {
                r.node.mut_store().stage_entries(rd.entries(), &mut batch);
            }
            if let Some(hs) = rd.hs() {
                r.node.mut_store().stage_hard_state(hs, &mut batch);
            }
            r.on_read_states(rd.take_read_states(), lease);
            r.complete_reads();
            sync |= rd.must_sync();
            readies.push((g, rd));
        }
        if !batch.is_empty() {
            if let Err(e) = self.wal.write(batch, sync) {
                fatal(&format!("writing the raft log failed: {e}"));
            }
        }
        for (g, rd) in readies {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            send_messages(
                self.network.as_ref(),
                g,
                rd.persisted_messages().to_vec(),
                &mut snap_sent,
            );
            let mut light = r.node.advance_append(rd);
            if let Some(c) = light.commit_index() {
                r.node.mut_store().stage_commit(c, &mut self.carry);
            }
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
            r.advance_raft_applied();
        }
        for (g, to) in snap_sent {
            if let Some(r) = self.replicas.get_mut(&g) {
                r.node.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
        if !leader_changes.is_empty() {
            let mut l = lock_write(&self.view.leaders);
            for (g, leader) in leader_changes {
                l.insert(g, leader);
            }
            drop(l);
            self.view.leader_change.notify_waiters();
        }
        if meta_changed {
            self.meta_applied(effects);
        }
        let _ = me;
    }

    /// Writes what was staged outside a round to the WAL now.
    pub(super) fn flush_carry(&mut self) {
        if self.carry.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.carry);
        let sync = std::mem::take(&mut self.carry_sync);
        if let Err(e) = self.wal.write(batch, sync) {
            fatal(&format!("writing the raft log failed: {e}"));
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
        let to = m.to;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            snap_sent.push((group, to));
        }
        match m.write_to_bytes() {
            Ok(b) => transport.send(
                to,
                Envelope {
                    group,
                    message: b.into(),
                },
            ),
            Err(e) => tracing::error!(group, to, error = %e, "encoding a raft message"),
        }
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
            }
            EntryType::EntryNormal => {}
        }
    }
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
            tracing::info!(group, voters = ?cs.voters, learners = ?cs.learners, "membership changed");
            r.node.mut_store().stage_conf_state(&cs, batch);
        }
        Err(err) => tracing::warn!(group, index = e.index, error = %err, "conf change refused"),
    }
}

/// Installs a snapshot from the leader. For the meta group it carries the
/// whole metadata; the difference to what this node had becomes effects.
fn install_snapshot(
    group: u64,
    r: &mut Replica,
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
    r.node.mut_store().stage_snapshot(snap, batch);
    r.applied = index;
    r.durable = index;
}
