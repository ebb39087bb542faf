//! The meta group is applied inline, on the driver thread: its committed
//! entries and snapshots change the metadata here, and after a round the
//! metadata is saved, the meta log compacted, the meta snapshot refreshed
//! and the effects acted on (peers to reach, shard replicas to create or
//! drop).

use raft::prelude::{Entry, EntryType, Snapshot, SnapshotMetadata};
use raft::Storage as _;
use std::sync::Arc;

use crate::meta::{MetaCommand, MetaEffect, MetaState, META_GROUP};

use super::config::META_LOG_KEEP;
use super::{fatal, lock_write, Driver, ReplicaError, Reply};

impl Driver {
    /// Saves the metadata after meta entries were applied and acts on what
    /// changed (peers to reach, shard replicas to create or drop).
    pub(super) fn meta_applied(&mut self, effects: Vec<MetaEffect>) {
        if let Err(e) = self.meta.save(&self.meta_path) {
            fatal(&format!(
                "saving the cluster metadata to {}: {e}",
                self.meta_path.display()
            ));
        }
        let applied = self.meta.applied;
        if let Some(r) = self.replicas.get_mut(&META_GROUP) {
            r.node.mut_store().stage_applied(applied, &mut self.carry);
            let first = r.node.store().first_index().unwrap_or(1);
            if applied > first + 2 * META_LOG_KEEP {
                let to = applied - META_LOG_KEEP;
                if let Err(e) = r.node.mut_store().stage_compact(to, &mut self.carry) {
                    tracing::warn!(error = %e, "compacting the meta log");
                }
                self.compacted = true;
            }
        }
        self.refresh_meta_snapshot();
        let mut hosting_changed = false;
        for e in effects {
            match e {
                MetaEffect::None => {}
                MetaEffect::NodePut(n) => {
                    tracing::info!(node = n.id, raft = %n.raft_addr, "cluster member");
                    self.add_peer(n.id, n.raft_addr);
                }
                MetaEffect::VolumeCreated(rec) => {
                    if let Err(e) = self.start_volume(&rec) {
                        tracing::error!(volume = %rec.meta.name, error = %e, "starting shard replicas");
                    }
                }
                MetaEffect::VolumeDeleted(rec) => self.drop_volume(&rec),
                MetaEffect::ReplicasChanged => hosting_changed = true,
            }
        }
        if hosting_changed {
            self.sync_hosted();
            // Groups with a move in flight wake: their leaders carry it out.
            let moving: Vec<u64> = self.meta.moves.keys().copied().collect();
            for g in moving {
                if let Some(r) = self.replicas.get_mut(&g) {
                    r.wake(g, &mut self.awake);
                }
            }
        }
        for rec in self.meta.volumes.values() {
            for (g, nodes) in rec.groups() {
                if let Some(r) = self.replicas.get_mut(&g) {
                    // Leaders leave draining nodes.
                    if r.set_preferred(rec, &self.meta.may_lead(nodes)) {
                        self.awake.insert(g);
                    }
                }
            }
        }
        self.view.meta.send_replace(Arc::new(self.meta.clone()));
        self.flush_carry();
    }

    fn drop_volume(&mut self, rec: &crate::meta::VolumeRecord) {
        for (g, _) in rec.groups() {
            self.awake.remove(&g);
            if let Some(mut r) = self.replicas.remove(&g) {
                r.fail_all(g, ReplicaError::NoReplica(g));
                self.carry.remove_group(g);
                self.carry_sync = true;
            }
            lock_write(&self.view.leaders).remove(&g);
            self.view.read_leases.remove(g);
        }
        // Deleted here even where no shard is hosted any more: the volume
        // directory stays after its last replica moved away.
        let here = self.store.meta(&rec.meta.name);
        if here.is_ok_and(|m| m.id == rec.meta.id) {
            if let Err(e) = self.store.delete_volume(&rec.meta.name) {
                tracing::warn!(volume = %rec.meta.name, error = %e, "deleting local volume data");
            }
        }
    }

    /// The meta group's snapshot is the whole metadata at its applied index.
    pub(super) fn refresh_meta_snapshot(&mut self) {
        let Some(r) = self.replicas.get_mut(&META_GROUP) else {
            return;
        };
        let index = self.meta.applied.max(r.node.store().applied());
        let Ok(term) = r.node.store().term(index) else {
            return;
        };
        let mut md = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        md.set_conf_state(r.node.store().conf_state());
        let mut snap = Snapshot {
            data: serde_json::to_vec(&self.meta).unwrap_or_default().into(),
            ..Snapshot::default()
        };
        snap.set_metadata(md);
        r.node.mut_store().set_snapshot(snap);
    }
}

/// Applies committed meta entries to the metadata and answers the local
/// proposals among them (`replies`, `(index, reply)` in log order).
pub(super) fn apply_meta_entries(
    entries: &[Entry],
    replies: Vec<(u64, Reply)>,
    meta: &mut MetaState,
    effects: &mut Vec<MetaEffect>,
    meta_changed: &mut bool,
) {
    let mut replies = replies.into_iter().peekable();
    for e in entries {
        let mut result = Ok(());
        if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
            result = MetaCommand::decode(&e.data)
                .and_then(|cmd| meta.apply(e.index, cmd))
                .map(|eff| effects.push(eff));
            if let Err(err) = &result {
                tracing::info!(index = e.index, error = %err, "metadata command refused");
            }
        }
        meta.applied = meta.applied.max(e.index);
        *meta_changed = true;
        if replies.peek().is_some_and(|(i, _)| *i == e.index) {
            if let Some((_, reply)) = replies.next() {
                let _ = reply.send(result.map_err(ReplicaError::Meta));
            }
        }
    }
}

/// Takes the whole metadata from a meta snapshot; the difference to what
/// this node had becomes effects.
pub(super) fn install_meta_snapshot(
    index: u64,
    snap: &Snapshot,
    meta: &mut MetaState,
    effects: &mut Vec<MetaEffect>,
    meta_changed: &mut bool,
) {
    match serde_json::from_slice::<MetaState>(&snap.data) {
        Ok(new) => {
            for n in new.nodes.values() {
                effects.push(MetaEffect::NodePut(n.clone()));
            }
            for (name, old) in &meta.volumes {
                if new.volumes.get(name).map(|v| v.meta.id) != Some(old.meta.id) {
                    effects.push(MetaEffect::VolumeDeleted(old.clone()));
                }
            }
            for (name, v) in &new.volumes {
                if meta.volumes.get(name).map(|o| o.meta.id) != Some(v.meta.id) {
                    effects.push(MetaEffect::VolumeCreated(v.clone()));
                }
            }
            effects.push(MetaEffect::ReplicasChanged);
            *meta = new;
            meta.applied = meta.applied.max(index);
            *meta_changed = true;
        }
        Err(e) => {
            fatal(&format!(
                "the meta snapshot at index {index} is undecodable: {e}"
            ));
        }
    }
}
