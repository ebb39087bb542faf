//! Which shard replicas this node runs. The metadata says which nodes host
//! each shard group (its voters as last reported, and a move's target;
//! `MetaState::hosts`): replicas it hosts and lacks are started, and one
//! it no longer hosts is removed with its files. A removal must never take
//! a vote away from a group, so a replica goes only when it is no voter by
//! its own configuration, or when the metadata's view of the group is
//! newer than that configuration (the node was replaced while it was away;
//! a replica that is a voter by a newer configuration than the
//! metadata's waits for the leader's report to catch the metadata up).

use raft::prelude::ConfState;

use crate::apply::{self, ApplyMsg};
use crate::meta::{shard_of_group, META_GROUP};
use crate::peer_storage::PeerStorage;

use super::{lock_write, Driver, DriverError, ReplicaError};

impl Driver {
    /// After the metadata changed: starts the replicas this node hosts and
    /// lacks, and removes those it no longer hosts.
    pub(super) fn sync_hosted(&mut self) {
        let vols: Vec<_> = self.meta.volumes.values().cloned().collect();
        for rec in &vols {
            if let Err(e) = self.start_volume(rec) {
                tracing::error!(volume = %rec.meta.name, error = %e, "starting shard replicas");
            }
        }
        let me = self.cfg.node;
        // Only replicas no longer hosted have their configuration looked at.
        let doomed: Vec<u64> = self
            .replicas
            .iter()
            .filter(|(g, _)| !self.meta.hosts(me, **g))
            .filter(|(g, r)| self.removable(**g, &r.node.store().conf_state(), r.conf_as_of))
            .map(|(g, _)| *g)
            .collect();
        for g in doomed {
            self.remove_replica(g);
        }
    }

    /// Whether this node's replica of `group`, whose configuration `cs`
    /// holds as of log index `as_of`, is to be removed.
    fn removable(&self, group: u64, cs: &ConfState, as_of: u64) -> bool {
        let me = self.cfg.node;
        if group == META_GROUP || self.meta.shard(group).is_none() || self.meta.hosts(me, group) {
            return false; // a deleted volume's replicas go with it (`drop_volume`)
        }
        let voter = cs.voters.contains(&me) || cs.voters_outgoing.contains(&me);
        if voter && self.meta.shard_conf(group) <= as_of {
            tracing::debug!(
                group,
                "not hosted here by the metadata, but a voter by a newer configuration; kept"
            );
            return false;
        }
        true
    }

    /// Stops this node's replica of `group` and deletes it: its log now,
    /// its files in its apply task once that has stopped applying.
    fn remove_replica(&mut self, group: u64) {
        self.awake.remove(&group);
        self.fetching.remove(&group);
        self.frozen.remove(&group);
        if let Some(mut r) = self.replicas.remove(&group) {
            tracing::warn!(
                group,
                "this node no longer holds a replica of the shard; removing it"
            );
            r.fail_all(group, ReplicaError::NoReplica(group));
            if let Some(tx) = r.apply.take() {
                let _ = tx.send(ApplyMsg::Remove);
            }
            r.node.store().stage_destroy(&mut self.carry);
            self.carry_sync = true;
        }
        lock_write(&self.view.leaders).remove(&group);
        self.view.read_leases.remove(group);
    }

    /// At start, after the hosted replicas: a shard replica in the WAL that
    /// is not hosted here is removed (or kept, while it is still a voter;
    /// see the module doc), and chunk files of shards not hosted here that
    /// a crash left behind are deleted.
    pub(super) fn open_unhosted(&mut self) -> Result<(), DriverError> {
        for g in self.wal.groups() {
            if g == META_GROUP || self.replicas.contains_key(&g) {
                continue;
            }
            let Some((rec, _)) = self.meta.shard(g) else {
                continue;
            };
            let rec = rec.clone();
            let Some(storage) = PeerStorage::open(self.wal.clone(), g)? else {
                continue;
            };
            if self.removable(g, &storage.conf_state(), storage.applied()) {
                tracing::warn!(
                    group = g,
                    "this node was replaced in the shard while it was away; removing its replica"
                );
                storage.stage_destroy(&mut self.carry);
                self.carry_sync = true;
            } else {
                self.store
                    .adopt_volume(&rec.meta)
                    .map_err(|source| DriverError::Volume {
                        volume: rec.meta.name.clone(),
                        source,
                    })?;
                self.run_replica(&rec, g, storage)?;
            }
        }
        let me = self.cfg.node;
        for rec in self.meta.volumes.values() {
            let here = self.store.meta(&rec.meta.name);
            if !here.is_ok_and(|m| m.id == rec.meta.id) {
                continue;
            }
            let Ok(volume) = self.store.volume(&rec.meta.name) else {
                continue;
            };
            for (g, _) in rec.groups() {
                if self.replicas.contains_key(&g) || self.meta.hosts(me, g) {
                    continue;
                }
                let shard = shard_of_group(g).1;
                let chunks = rec.shard_chunks(shard);
                use raftblock_storage::chunk::{crc_path, data_path};
                let dir = volume.dir();
                let leftovers = chunks
                    .iter()
                    .any(|c| data_path(dir, *c).exists() || crc_path(dir, *c).exists())
                    || raftblock_storage::staging::staging_dir(&volume, shard).exists();
                if leftovers {
                    apply::remove_shard(g, &volume, &chunks);
                }
            }
        }
        Ok(())
    }
}
