//! One Raft group replica of the node (`Replica`: its `RawNode`, the
//! proposals and reads waiting on it, its apply progress) and the replicas'
//! lifecycle in the driver: opening them from the WAL at start, creating a
//! volume's shard replicas, and reporting their state.

use bytes::Bytes;
use raft::prelude::{Snapshot, SnapshotMetadata};
use raft::{RawNode, StateRole, Storage as _};
use std::collections::VecDeque;
use std::time::Instant;
use tokio::sync::mpsc;

use crate::apply::{self, ApplyMsg};
use crate::meta::{shard_of_group, META_GROUP};
use crate::peer_storage::PeerStorage;

use super::config::META_INIT_INDEX;
use super::{Driver, DriverError, GroupStatus, ReplicaError, Reply};

/// A proposal of this node waiting for its entry to commit.
pub(super) struct Proposal {
    pub(super) index: u64,
    pub(super) term: u64,
    /// A membership change (Raft may silently turn it into an empty entry).
    pub(super) conf: bool,
    pub(super) reply: Reply,
}

/// Reads sent as one ReadIndex request, waiting for its ReadState.
pub(super) struct ReadBatch {
    pub(super) ctx: u64,
    pub(super) issued: Instant,
    pub(super) waiters: Vec<Reply>,
}

/// One Raft group replica of this node and what waits on it.
pub(super) struct Replica {
    pub(super) node: RawNode<PeerStorage>,
    /// The shard's apply task (none for the meta group).
    pub(super) apply: Option<mpsc::UnboundedSender<ApplyMsg>>,
    pub(super) proposals: VecDeque<Proposal>,
    pub(super) reads_new: Vec<(Instant, Reply)>,
    pub(super) reads_sent: VecDeque<ReadBatch>,
    /// Reads that have their read index, waiting for `reads_applied`
    /// to reach it: `(index, since when, reply)`.
    pub(super) reads_ready: Vec<(u64, Instant, Reply)>,
    pub(super) applied: u64,
    /// What a read may see: the index this replica's chunk files hold, as
    /// its apply task reported it (not the snapshot index Raft installed
    /// before the apply task swapped the copy in). The meta group applies
    /// in the driver, so there it is `applied`.
    pub(super) reads_applied: u64,
    pub(super) durable: u64,
    pub(super) lease_until: Option<Instant>,
    /// Node that should lead this group when it can: the node serving the
    /// volume, else the first replica of its placement.
    pub(super) preferred: u64,
    /// `preferred` is the node serving the volume: leadership goes there
    /// as soon as it is caught up (it is alive: its clients are using it).
    pub(super) serving: bool,
    pub(super) ticks: u64,
    /// Since when the preferred replica has been caught up (on a leader
    /// that is not it).
    pub(super) handback_since: Option<Instant>,
    /// `(when, last index then)`, once a second, for compaction by age.
    pub(super) log_marks: VecDeque<(Instant, u64)>,
    /// The shard's fences as its apply task reported them (for snapshots).
    pub(super) fences: crate::fence::FenceHistory,
    /// The newest Ready handed to the log writer and not yet persisted.
    pub(super) unpersisted: Option<u64>,
    /// Local readers use the lease and it runs out soon: confirm the
    /// leadership again (a ReadIndex) at the next round.
    pub(super) renew_lease: bool,
    /// The group sleeps: not ticked until something wakes it
    /// (`hibernation`).
    pub(super) hibernating: bool,
    /// Ticks this leader's group has been quiet in a row.
    pub(super) quiet_ticks: u32,
    /// A group that just fell asleep still gets one round.
    pub(super) settle_round: bool,
    /// The configuration is the group's as of this log index (entries up
    /// to it were handed to the state machine, membership changes applied).
    pub(super) conf_as_of: u64,
    /// Index of the last membership change applied (or a bound above it):
    /// a snapshot must not be older, or its configuration would be wrong.
    pub(super) last_conf: u64,
    /// The group's leadership as this replica saw it, for the log (`health`).
    pub(super) leader_watch: super::health::LeaderWatch,
    /// On a leader: its voters that went silent, for the log (`health`).
    pub(super) voter_watch: super::health::VoterWatch,
}

impl Replica {
    pub(super) fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub(super) fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|l| *l != 0)
    }

    pub(super) fn fail_all(&mut self, group: u64, err: ReplicaError) {
        for p in self.proposals.drain(..) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for (_, r) in self.reads_new.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
        for b in self.reads_sent.drain(..) {
            for r in b.waiters {
                let _ = r.send(Err(err.clone()));
            }
        }
        for (_, _, r) in self.reads_ready.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
        let _ = group;
    }

    /// Takes the volume's current preferred leader for a shard placed on
    /// `nodes`.
    /// True when it changed (the group woke: its leader checks whether to
    /// hand over).
    pub(super) fn set_preferred(&mut self, rec: &crate::meta::VolumeRecord, nodes: &[u64]) -> bool {
        let preferred = rec.preferred_leader(nodes);
        let serving = rec.served_by == Some(preferred);
        if (preferred, serving) == (self.preferred, self.serving) {
            return false;
        }
        self.preferred = preferred;
        self.serving = serving;
        self.handback_since = None;
        self.stir(); // the caller records the group awake
        true
    }

    /// Points the shard's Raft snapshot at what its chunks hold now (the
    /// applied index): the data behind it is the shard's chunks, copied by
    /// the follower (`snapshot`), which hold that index or later. Its
    /// configuration is the current one, so it is set only when no
    /// membership change came after the applied index (else the last one
    /// stays).
    pub(super) fn set_shard_snapshot(&mut self) {
        let store = self.node.store();
        let index = self.applied;
        let first = store.first_index().unwrap_or(1);
        if index == 0 || index < self.last_conf || index + 1 < first {
            return;
        }

        let Ok(term) = store.term(index) else {
            return;
        };
        let mut md = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        md.set_conf_state(store.conf_state());
        let mut snap = Snapshot {
            data: Bytes::from(crate::fence::snapshot_marker(self.fences.at(index))),
            ..Snapshot::default()
        };
        snap.set_metadata(md);
        self.node.mut_store().set_snapshot(snap);
    }

    pub(super) fn advance_raft_applied(&mut self) {
        let log = &self.node.raft.raft_log;
        let to = self.applied.min(log.committed).min(log.persisted);
        if to > log.applied {
            self.node.advance_apply_to(to);
        }
    }
}

impl Driver {
    pub(super) fn open_replicas(&mut self) -> Result<(), DriverError> {
        let me = self.cfg.node;
        // The meta group.
        let meta_store = match PeerStorage::open(self.wal.clone(), META_GROUP)? {
            Some(s) => s,
            None => match &self.cfg.bootstrap {
                Some(nodes) => {
                    // Odd voters, the rest learners, as for nodes that join.
                    let (voters, learners) = super::membership::initial(nodes);
                    PeerStorage::create_at(
                        self.wal.clone(),
                        META_GROUP,
                        (&voters, &learners),
                        META_INIT_INDEX,
                        1,
                        &mut self.carry,
                    )
                }
                None => PeerStorage::create_empty(self.wal.clone(), META_GROUP, &mut self.carry),
            },
        };
        self.carry_sync = true;
        let first_start = meta_store.applied() == META_INIT_INDEX && self.meta.applied == 0;
        self.insert_replica(META_GROUP, meta_store, None, 0)?;
        if first_start && self.cfg.bootstrap.as_ref().and_then(|v| v.iter().min()) == Some(&me) {
            if let Some(r) = self.replicas.get_mut(&META_GROUP) {
                let _ = r.node.campaign();
            }
        }
        self.refresh_meta_snapshot();
        // Shard replicas in the WAL whose volume the metadata no longer
        // has were deleted while this node was down.
        for g in self.wal.groups() {
            if g == META_GROUP {
                continue;
            }
            let (vol, _) = shard_of_group(g);
            let known = self.meta.volumes.values().any(|v| v.meta.id == vol);
            if !known {
                tracing::info!(group = g, "dropping the replica of a deleted volume");
                self.carry.remove_group(g);
            }
        }
        let vols: Vec<_> = self.meta.volumes.values().cloned().collect();
        for rec in vols {
            self.start_volume(&rec)?;
        }
        self.open_unhosted()
    }

    fn insert_replica(
        &mut self,
        group: u64,
        storage: PeerStorage,
        apply: Option<mpsc::UnboundedSender<ApplyMsg>>,
        preferred: u64,
    ) -> Result<(), DriverError> {
        let applied = storage.applied();
        let last_conf = storage.last_index().unwrap_or(applied).max(applied);
        let node = RawNode::new(&self.raft_config(applied), storage, &self.logger)
            .map_err(|source| DriverError::Raft { group, source })?;
        self.awake.insert(group);
        self.replicas.insert(
            group,
            Replica {
                node,
                apply,
                proposals: VecDeque::new(),
                reads_new: Vec::new(),
                reads_sent: VecDeque::new(),
                reads_ready: Vec::new(),
                applied,
                reads_applied: applied,
                durable: applied,
                lease_until: None,
                preferred,
                serving: false,
                ticks: 0,
                handback_since: None,
                log_marks: VecDeque::new(),
                fences: Default::default(),
                unpersisted: None,
                renew_lease: false,
                hibernating: false,
                quiet_ticks: 0,
                settle_round: false,
                conf_as_of: applied,
                // Changes between the durable applied index and the end of
                // the log may already be in the stored configuration.
                last_conf,
                leader_watch: super::health::LeaderWatch::new(self.clock.now()),
                voter_watch: Default::default(),
            },
        );
        Ok(())
    }

    /// Opens or creates this node's replicas of a volume's shards: those
    /// the metadata says it hosts (`MetaState::hosts`).
    pub(super) fn start_volume(
        &mut self,
        rec: &crate::meta::VolumeRecord,
    ) -> Result<(), DriverError> {
        let me = self.cfg.node;
        // The current record (an effect may carry an older one).
        let Some(current) = self
            .meta
            .volumes
            .get(&rec.meta.name)
            .filter(|v| v.meta.id == rec.meta.id)
        else {
            return Ok(());
        };
        let hosted: Vec<(u64, Vec<u64>)> = current
            .groups()
            .filter(|(g, _)| self.meta.hosts(me, *g) && !self.replicas.contains_key(g))
            .map(|(g, nodes)| (g, nodes.clone()))
            .collect();
        if hosted.is_empty() {
            return Ok(());
        }
        let rec = current.clone();
        let volume_error = |source| DriverError::Volume {
            volume: rec.meta.name.clone(),
            source,
        };
        self.store.adopt_volume(&rec.meta).map_err(volume_error)?;
        for (group, nodes) in hosted {
            let (storage, fresh) = match PeerStorage::open(self.wal.clone(), group)? {
                Some(s) => (s, false),
                None => {
                    self.carry_sync = true;
                    // A group whose members never changed starts from its
                    // placement. A replica added later (a move's target)
                    // starts empty and waits for a snapshot: the log does
                    // not name the group's first members.
                    let added = self.meta.shard_conf(group) > 0
                        || self.meta.moves.get(&group).is_some_and(|m| m.add == me);
                    let s = if added {
                        tracing::info!(group, "new replica of a shard; waiting for its data");
                        PeerStorage::create_empty(self.wal.clone(), group, &mut self.carry)
                    } else {
                        PeerStorage::create(self.wal.clone(), group, &nodes, &mut self.carry)
                    };
                    (s, !added)
                }
            };
            self.run_replica(&rec, group, storage)?;
            if fresh && nodes.first() == Some(&me) {
                if let Some(r) = self.replicas.get_mut(&group) {
                    let _ = r.node.campaign();
                }
            }
        }
        Ok(())
    }

    /// Starts a shard replica over `storage`: its apply task first, after
    /// finishing a swap a crash interrupted.
    pub(super) fn run_replica(
        &mut self,
        rec: &crate::meta::VolumeRecord,
        group: u64,
        storage: PeerStorage,
    ) -> Result<(), DriverError> {
        let volume = self
            .store
            .volume(&rec.meta.name)
            .map_err(|source| DriverError::Volume {
                volume: rec.meta.name.clone(),
                source,
            })?;
        let shard = shard_of_group(group).1;
        match raftblock_storage::staging::recover(&volume, shard) {
            Ok(Some(index)) => {
                tracing::info!(group, index, "finished swapping in a staged shard copy")
            }
            Ok(None) => {}
            Err(source) => return Err(DriverError::StagedCopy { group, source }),
        }
        // A resize may be half done: the shard holds chunks up to the span.
        volume
            .cover(rec.span())
            .map_err(|source| DriverError::Volume {
                volume: rec.meta.name.clone(),
                source,
            })?;
        let tx = apply::spawn(
            group,
            volume,
            rec.layout(),
            rec.resizes - rec.resize.is_some() as u64,
            storage.applied(),
            self.handle.clone(),
            self.wal.clone(),
            self.cfg.settling.clone(),
        );
        let nodes = &rec.shards[shard as usize];
        self.insert_replica(
            group,
            storage,
            Some(tx),
            nodes.first().copied().unwrap_or(0),
        )?;
        if let Some(r) = self.replicas.get_mut(&group) {
            r.set_shard_snapshot();
            let _ = r.set_preferred(rec, &self.meta.may_lead(nodes));
        }
        Ok(())
    }

    /// The state of every replica, by group.
    pub(super) fn status(&self) -> Vec<GroupStatus> {
        let now = self.clock.now();
        let mut out: Vec<GroupStatus> = self
            .replicas
            .iter()
            .map(|(&g, r)| {
                let raft = &r.node.raft;
                let matched = if r.is_leader() {
                    let mut m: Vec<(u64, u64)> =
                        raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect();
                    m.sort_unstable();
                    m
                } else {
                    Vec::new()
                };
                let cs = r.node.store().conf_state();
                let voters_up = r.is_leader().then(|| {
                    cs.voters
                        .iter()
                        .filter(|v| **v == self.cfg.node || self.liveness.is_up(**v, now))
                        .count()
                });
                let (mut voters, mut learners) = (cs.voters.clone(), cs.learners.clone());
                voters.sort_unstable();
                learners.sort_unstable();
                GroupStatus {
                    voters,
                    learners,
                    voters_up,
                    group: g,
                    role: format!("{:?}", raft.state).to_lowercase(),
                    leader: raft.leader_id,
                    term: raft.term,
                    commit: raft.raft_log.committed,
                    applied: r.applied,
                    durable: r.durable,
                    first_index: r.node.store().first_index().unwrap_or(0),
                    last_index: raft.raft_log.last_index(),
                    matched,
                }
            })
            .collect();
        out.sort_by_key(|s| s.group);
        out
    }
}
