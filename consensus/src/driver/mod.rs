//! The node's multi-raft driver: one thread owns every Raft group replica
//! of the node (the meta group and all shard replicas) and runs them in
//! rounds, as TiKV's raftstore does. A round steps everything that arrived
//! (peer messages, proposals, read requests, apply progress), ticks when a
//! tick is due, then collects the Ready of every group that has one: leader
//! messages go out at once, committed entries go to the apply tasks, and all
//! groups' new entries and hard states are written to the node's WAL as one
//! record with one fdatasync (group commit). Only then are follower messages
//! (votes and append acks, which promise persistence) sent.
//!
//! The meta group is applied here, on the driver thread (its commands are
//! small and create or drop the shard replicas); shard groups are applied by
//! their own tasks (`apply`).

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Config, Entry, EntryType, Message,
    MessageType, Snapshot, SnapshotMetadata, SnapshotStatus,
};
use raft::{RawNode, ReadOnlyOption, StateRole, Storage as _};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

use raftblock_storage::{ChunkStore, Wal, WalBatch};

use crate::apply::{self, ApplyBatch};
use crate::meta::{shard_of_group, MetaCommand, MetaEffect, MetaError, MetaState, META_GROUP};
use crate::peer_storage::PeerStorage;
use crate::snapshot::SnapshotFetch;
use crate::transport::{Envelope, Transport};

/// Where a proposal's or a read's outcome is sent.
pub type Reply = oneshot::Sender<Result<(), ReplicaError>>;

/// Why a replica could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// This node is not the group's leader; `leader` is, if known.
    #[error("this node is not the leader of group {group} (leader: {leader:?})")]
    NotLeader {
        /// The group.
        group: u64,
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// This node holds no replica of the group.
    #[error("no replica of group {0} on this node")]
    NoReplica(u64),
    /// The group could not take the request now (no leader yet, a leader
    /// change, a full queue): the caller retries.
    #[error("group {0} could not take the request now; retry")]
    Retry(u64),
    /// The metadata command was refused.
    #[error("{0}")]
    Meta(MetaError),
    /// Applying the command failed on this replica.
    #[error("applying failed: {0}")]
    Apply(String),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

/// What the driver is asked to do.
pub enum DriverMsg {
    /// Raft messages from a peer.
    Raft {
        /// Sending node.
        from: u64,
        /// The messages.
        envelopes: Vec<Envelope>,
    },
    /// Messages to `to` were lost.
    Unreachable {
        /// The peer.
        to: u64,
        /// Groups whose messages were lost.
        groups: Vec<u64>,
    },
    /// Propose `data` to `group` (answered after it is applied here).
    Propose {
        /// Group.
        group: u64,
        /// Encoded command.
        data: Bytes,
        /// Outcome.
        reply: Reply,
    },
    /// Answer once this replica has applied everything committed before
    /// the request (a linearizable read barrier).
    Read {
        /// Group.
        group: u64,
        /// Outcome.
        reply: Reply,
    },
    /// Add `node` to the meta group (as a learner when `learner`).
    AddMember {
        /// Node id.
        node: u64,
        /// Add as a learner instead of a voter.
        learner: bool,
        /// Outcome (after the change is applied here).
        reply: Reply,
    },
    /// A held-back shard snapshot's data is here (`msg` is stepped), or
    /// copying it failed (`None`).
    SnapshotFetched {
        /// Group.
        group: u64,
        /// The MsgSnapshot to step.
        msg: Option<Message>,
    },
    /// A shard's apply task applied up to `index`.
    Applied {
        /// Group.
        group: u64,
        /// Applied index.
        index: u64,
    },
    /// A shard's applied data up to `index` is durable.
    Durable {
        /// Group.
        group: u64,
        /// Durable applied index.
        index: u64,
    },
    /// The state of every replica.
    Status(oneshot::Sender<Vec<GroupStatus>>),
    /// Stop the driver.
    Stop,
}

/// A cheap handle for talking to the driver from anywhere.
#[derive(Clone)]
pub struct DriverHandle {
    tx: Sender<DriverMsg>,
}

impl DriverHandle {
    /// Sends a message; false when the driver has stopped.
    pub fn send(&self, m: DriverMsg) -> bool {
        self.tx.send(m).is_ok()
    }

    /// Proposes `data` to `group` on this node; resolves after it is applied here.
    pub async fn propose(&self, group: u64, data: Bytes) -> Result<(), ReplicaError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(DriverMsg::Propose { group, data, reply }) {
            return Err(ReplicaError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicaError::Stopped))
    }

    /// Waits until this replica of `group` may serve a linearizable read.
    pub async fn read_barrier(&self, group: u64) -> Result<(), ReplicaError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(DriverMsg::Read { group, reply }) {
            return Err(ReplicaError::Stopped);
        }
        rx.await.unwrap_or(Err(ReplicaError::Stopped))
    }

    /// Reports apply progress of a shard.
    pub fn applied(&self, group: u64, index: u64) {
        self.send(DriverMsg::Applied { group, index });
    }

    /// Reports durable apply progress of a shard.
    pub fn durable(&self, group: u64, index: u64) {
        self.send(DriverMsg::Durable { group, index });
    }

    /// The state of every replica on this node.
    pub async fn status(&self) -> Vec<GroupStatus> {
        let (tx, rx) = oneshot::channel();
        if !self.send(DriverMsg::Status(tx)) {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops the driver.
    pub fn stop(&self) {
        self.send(DriverMsg::Stop);
    }
}

/// One replica's state, for `cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group id.
    pub group: u64,
    /// leader, follower, candidate or pre-candidate.
    pub role: String,
    /// Known leader (0: none).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Applied index whose data is durable.
    pub durable: u64,
    /// First index still in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// On the leader: each replica's matched index.
    pub matched: Vec<(u64, u64)>,
}

/// What the driver shares with the rest of the node.
pub struct ClusterView {
    /// The latest applied cluster metadata.
    pub meta: watch::Sender<Arc<MetaState>>,
    /// Known leader node of each group this node has a replica of.
    pub leaders: RwLock<HashMap<u64, u64>>,
}

impl ClusterView {
    /// The current metadata.
    pub fn meta(&self) -> Arc<MetaState> {
        self.meta.borrow().clone()
    }

    /// The leader of `group` as this node knows it.
    pub fn leader(&self, group: u64) -> Option<u64> {
        self.leaders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .copied()
            .filter(|l| *l != 0)
    }
}

/// Timing and identity of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// This node's id (its peer id in every group).
    pub node: u64,
    /// Length of a Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election.
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Initial voters of the meta group when this node creates it.
    pub bootstrap: Option<Vec<u64>>,
    /// How long a read or proposal may wait in the driver for a leader.
    pub request_timeout: Duration,
}

impl DriverConfig {
    /// Defaults for node `node`: 100 ms ticks, elections after 2 s.
    pub fn new(node: u64) -> DriverConfig {
        DriverConfig {
            node,
            tick: Duration::from_millis(100),
            election_ticks: 20,
            heartbeat_ticks: 3,
            bootstrap: None,
            request_timeout: Duration::from_secs(3),
        }
    }

    /// How long a confirmed leadership lets the leader serve reads locally:
    /// shorter than the time followers refuse to vote after hearing from it.
    fn lease(&self) -> Duration {
        self.tick * (self.election_ticks as u32) * 7 / 10
    }
}

/// Index of the meta group's initial snapshot: its log starts after it, so
/// a node that joins later is sent the metadata as a snapshot.
const META_INIT_INDEX: u64 = 5;
/// Meta log entries kept behind the applied index.
const META_LOG_KEEP: u64 = 200;
/// Shard log entries a busy follower keeps behind its durable applied index
/// (should it become leader, a briefly lagging peer catches up from them).
const FOLLOWER_LOG_KEEP: u64 = 256;
/// Entries a log must be able to drop before it is compacted.
const COMPACT_MIN: u64 = 64;

struct Proposal {
    index: u64,
    term: u64,
    /// A membership change (Raft may silently turn it into an empty entry).
    conf: bool,
    reply: Reply,
}

struct ReadBatch {
    ctx: u64,
    issued: Instant,
    waiters: Vec<Reply>,
}

struct Replica {
    node: RawNode<PeerStorage>,
    /// The shard's apply task (none for the meta group).
    apply: Option<mpsc::UnboundedSender<ApplyBatch>>,
    proposals: VecDeque<Proposal>,
    reads_new: Vec<(Instant, Reply)>,
    reads_sent: VecDeque<ReadBatch>,
    reads_ready: Vec<(u64, Reply)>,
    applied: u64,
    durable: u64,
    lease_until: Option<Instant>,
    /// Node that should lead this group when it can (first replica).
    preferred: u64,
    ticks: u64,
}

impl Replica {
    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|l| *l != 0)
    }

    fn fail_all(&mut self, group: u64, err: ReplicaError) {
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
        let _ = group;
    }

    fn complete_reads(&mut self) {
        let applied = self.applied;
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].0 <= applied {
                let (_, r) = self.reads_ready.swap_remove(i);
                let _ = r.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    fn advance_raft_applied(&mut self) {
        let log = &self.node.raft.raft_log;
        let to = self.applied.min(log.committed).min(log.persisted);
        if to > log.applied {
            self.node.advance_apply_to(to);
        }
    }
}

/// The driver (runs on its own thread; see [`Driver::spawn`]).
pub struct Driver {
    cfg: DriverConfig,
    wal: Arc<Wal>,
    store: Arc<ChunkStore>,
    transport: Transport,
    view: Arc<ClusterView>,
    meta: MetaState,
    meta_path: PathBuf,
    handle: DriverHandle,
    rx: Receiver<DriverMsg>,
    replicas: HashMap<u64, Replica>,
    peer_addrs: HashMap<u64, SocketAddr>,
    logger: slog::Logger,
    next_ctx: u64,
    /// State staged outside a round's Readies (commit, applied, compaction,
    /// new replicas), written with the next round's record.
    carry: WalBatch,
    carry_sync: bool,
    compacted: bool,
    /// Where held-back shard snapshots go to have their data copied.
    snapshots: mpsc::UnboundedSender<SnapshotFetch>,
    /// Groups whose snapshot data is being copied.
    fetching: HashSet<u64>,
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// The Raft configuration of every group on a node.
fn raft_config(cfg: &DriverConfig, applied: u64) -> Config {
    Config {
        id: cfg.node,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        // raft-rs defaults to one entry per append message.
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        // Off: it merges appends without a size limit (a catching-up
        // follower would get one message past the transport's frame limit);
        // the transport batches messages per peer anyway.
        batch_append: false,
        max_uncommitted_size: 256 << 20,
        max_committed_size_per_ready: 16 << 20,
        ..Config::default()
    }
}

impl Driver {
    /// Opens every replica found in the WAL (creating the meta group from
    /// `cfg.bootstrap` if it is new) and starts the driver thread. Must be
    /// called inside a tokio runtime.
    pub fn spawn(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        store: Arc<ChunkStore>,
        transport: Transport,
        meta_path: PathBuf,
        peers: &HashMap<u64, SocketAddr>,
        snapshots: mpsc::UnboundedSender<SnapshotFetch>,
    ) -> Result<(DriverHandle, Arc<ClusterView>, std::thread::JoinHandle<()>), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = DriverHandle { tx };
        let meta = MetaState::load(&meta_path)?;
        let (meta_tx, _) = watch::channel(Arc::new(meta.clone()));
        let view = Arc::new(ClusterView {
            meta: meta_tx,
            leaders: RwLock::new(HashMap::new()),
        });
        let mut d = Driver {
            cfg,
            wal,
            store,
            transport,
            view: view.clone(),
            meta,
            meta_path,
            handle: handle.clone(),
            rx,
            replicas: HashMap::new(),
            peer_addrs: HashMap::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            next_ctx: 1,
            carry: WalBatch::new(),
            carry_sync: false,
            compacted: false,
            snapshots,
            fetching: HashSet::new(),
        };
        for (id, addr) in peers {
            d.add_peer(*id, *addr);
        }
        let nodes: Vec<_> = d.meta.nodes.values().cloned().collect();
        for n in nodes {
            d.add_peer(n.id, n.raft_addr);
        }
        d.open_replicas()?;
        d.flush_carry();
        let rt = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("raft-driver".into())
            .spawn(move || {
                let _guard = rt.enter();
                d.run();
            })
            .map_err(|e| format!("starting the raft driver thread: {e}"))?;
        Ok((handle, view, thread))
    }

    fn raft_config(&self, applied: u64) -> Config {
        raft_config(&self.cfg, applied)
    }

    fn open_replicas(&mut self) -> Result<(), String> {
        let me = self.cfg.node;
        // The meta group.
        let meta_store = match PeerStorage::open(self.wal.clone(), META_GROUP)? {
            Some(s) => s,
            None => match &self.cfg.bootstrap {
                Some(voters) => PeerStorage::create_at(
                    self.wal.clone(),
                    META_GROUP,
                    voters,
                    META_INIT_INDEX,
                    1,
                    &mut self.carry,
                ),
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
        // Shard replicas in the WAL that the metadata no longer has were
        // deleted while this node was down.
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
        Ok(())
    }

    fn insert_replica(
        &mut self,
        group: u64,
        storage: PeerStorage,
        apply: Option<mpsc::UnboundedSender<ApplyBatch>>,
        preferred: u64,
    ) -> Result<(), String> {
        let applied = storage.applied();
        let node = RawNode::new(&self.raft_config(applied), storage, &self.logger)
            .map_err(|e| format!("group {group}: starting raft: {e}"))?;
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
                durable: applied,
                lease_until: None,
                preferred,
                ticks: 0,
            },
        );
        Ok(())
    }

    /// Opens or creates this node's replicas of a volume's shards.
    fn start_volume(&mut self, rec: &crate::meta::VolumeRecord) -> Result<(), String> {
        let me = self.cfg.node;
        if !rec.is_on(me) {
            return Ok(());
        }
        self.store
            .adopt_volume(&rec.meta)
            .map_err(|e| format!("volume {}: {e}", rec.meta.name))?;
        let volume = self
            .store
            .volume(&rec.meta.name)
            .map_err(|e| format!("volume {}: {e}", rec.meta.name))?;
        for (group, nodes) in rec.groups() {
            if !nodes.contains(&me) || self.replicas.contains_key(&group) {
                continue;
            }
            let (storage, fresh) = match PeerStorage::open(self.wal.clone(), group)? {
                Some(s) => (s, false),
                None => {
                    self.carry_sync = true;
                    (
                        PeerStorage::create(self.wal.clone(), group, nodes, &mut self.carry),
                        true,
                    )
                }
            };
            let tx = apply::spawn(group, volume.clone(), self.handle.clone());
            self.insert_replica(group, storage, Some(tx), nodes[0])?;
            if let Some(r) = self.replicas.get_mut(&group) {
                set_shard_snapshot(r);
            }
            if fresh && nodes[0] == me {
                if let Some(r) = self.replicas.get_mut(&group) {
                    let _ = r.node.campaign();
                }
            }
        }
        Ok(())
    }

    fn add_peer(&mut self, id: u64, addr: SocketAddr) {
        if id == self.cfg.node || self.peer_addrs.get(&id) == Some(&addr) {
            return;
        }
        self.peer_addrs.insert(id, addr);
        self.transport.add_peer(id, addr);
    }

    fn run(mut self) {
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    if !self.handle_msg(m) {
                        break;
                    }
                    let mut n = 0;
                    while let Ok(m) = self.rx.try_recv() {
                        if !self.handle_msg(m) {
                            self.shutdown();
                            return;
                        }
                        n += 1;
                        if n >= 8192 {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick_all(now);
                next_tick += self.cfg.tick;
                if next_tick < now {
                    next_tick = now + self.cfg.tick;
                }
            }
            self.send_reads();
            self.round();
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for (g, r) in self.replicas.iter_mut() {
            r.fail_all(*g, ReplicaError::Stopped);
        }
        self.flush_carry();
        self.replicas.clear();
        tracing::info!("raft driver stopped");
    }

    fn handle_msg(&mut self, m: DriverMsg) -> bool {
        match m {
            DriverMsg::Raft { from, envelopes } => {
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
                // Shard reads are served by the leader; the meta group may
                // also be read on a follower (Raft forwards the ReadIndex).
                if group != META_GROUP && !r.is_leader() {
                    let leader = r.leader();
                    let _ = reply.send(Err(ReplicaError::NotLeader { group, leader }));
                } else {
                    r.reads_new.push((Instant::now(), reply));
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
                    r.advance_raft_applied();
                    r.complete_reads();
                    // Applied entries leave the WAL's memory; a leader keeps
                    // what a live follower has yet to receive (a follower
                    // that is down reads back from the segment files).
                    let keep_from = if r.is_leader() {
                        r.node
                            .raft
                            .prs()
                            .iter()
                            .filter(|(_, p)| p.recent_active)
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
            DriverMsg::SnapshotFetched { group, msg } => {
                self.fetching.remove(&group);
                if let (Some(m), Some(r)) = (msg, self.replicas.get_mut(&group)) {
                    if let Err(e) = r.node.step(m) {
                        tracing::warn!(group, error = %e, "stepping a copied snapshot");
                    }
                }
            }
            DriverMsg::Status(tx) => {
                let _ = tx.send(self.status());
            }
            DriverMsg::Stop => return false,
        }
        true
    }

    fn step(&mut self, from: u64, env: Envelope) {
        let msg = match Message::parse_from_bytes(&env.message) {
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
        if env.group != META_GROUP && msg.get_msg_type() == MessageType::MsgSnapshot {
            // Hold it back until the shard's data is copied (see `snapshot`).
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
        if let Err(e) = r.node.step(msg) {
            tracing::debug!(from, group = env.group, error = %e, "raft step");
        }
    }

    fn propose(&mut self, group: u64, data: Bytes, reply: Reply) {
        let Some(r) = self.replicas.get_mut(&group) else {
            let _ = reply.send(Err(ReplicaError::NoReplica(group)));
            return;
        };
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
        match r.node.step(m) {
            Ok(()) => {
                let index = r.node.raft.raft_log.last_index();
                let term = r.node.raft.term;
                r.proposals.push_back(Proposal {
                    index,
                    term,
                    conf: false,
                    reply,
                });
            }
            Err(e) => {
                tracing::debug!(group, error = %e, "proposal dropped");
                let _ = reply.send(Err(ReplicaError::Retry(group)));
            }
        }
    }

    fn add_member(&mut self, node: u64, learner: bool, reply: Reply) {
        let group = META_GROUP;
        let Some(r) = self.replicas.get_mut(&group) else {
            let _ = reply.send(Err(ReplicaError::NoReplica(group)));
            return;
        };
        if !r.is_leader() {
            let leader = r.leader();
            let _ = reply.send(Err(ReplicaError::NotLeader { group, leader }));
            return;
        }
        let cs = r.node.store().conf_state();
        if cs.voters.contains(&node) || (learner && cs.learners.contains(&node)) {
            let _ = reply.send(Ok(()));
            return;
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(if learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        });
        single.node_id = node;
        let mut cc = ConfChangeV2::default();
        cc.changes.push(single);
        match r.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => {
                let index = r.node.raft.raft_log.last_index();
                let term = r.node.raft.term;
                r.proposals.push_back(Proposal {
                    index,
                    term,
                    conf: true,
                    reply,
                });
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "membership change dropped");
                let _ = reply.send(Err(ReplicaError::Retry(group)));
            }
        }
    }

    fn tick_all(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        let me = self.cfg.node;
        for (&g, r) in self.replicas.iter_mut() {
            r.node.tick();
            r.ticks += 1;
            // Reads that got no ReadState (Raft drops them silently without
            // a leader, or right after an election) fail so callers retry.
            while r
                .reads_sent
                .front()
                .is_some_and(|b| now.duration_since(b.issued) > timeout)
            {
                if let Some(b) = r.reads_sent.pop_front() {
                    for w in b.waiters {
                        let _ = w.send(Err(ReplicaError::Retry(g)));
                    }
                }
            }
            let mut i = 0;
            while i < r.reads_new.len() {
                if now.duration_since(r.reads_new[i].0) > timeout {
                    let (_, w) = r.reads_new.swap_remove(i);
                    let _ = w.send(Err(ReplicaError::Retry(g)));
                } else {
                    i += 1;
                }
            }
            // Hand leadership back to the preferred replica once it has
            // caught up, so leaders stay spread over the nodes.
            if r.ticks % 50 == 0
                && r.is_leader()
                && r.preferred != 0
                && r.preferred != me
                && r.node.raft.lead_transferee.is_none()
            {
                let last = r.node.raft.raft_log.last_index();
                let ready = r
                    .node
                    .raft
                    .prs()
                    .get(r.preferred)
                    .is_some_and(|p| p.matched == last && p.recent_active);
                if ready {
                    tracing::info!(
                        group = g,
                        to = r.preferred,
                        "moving leadership to the preferred replica"
                    );
                    r.node.transfer_leader(r.preferred);
                }
            }
        }
        if self.compacted && self.replicas.values().any(|r| r.ticks % 10 == 0) {
            self.compacted = false;
            match self.wal.purge() {
                Ok(n) if n > 0 => tracing::debug!(segments = n, "purged WAL segments"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging WAL segments failed"),
            }
        }
    }

    /// Turns queued reads into ReadIndex requests (one per group per round)
    /// or, under a valid lease, into reads at the current commit index.
    fn send_reads(&mut self) {
        let now = Instant::now();
        let lease = self.cfg.lease();
        for r in self.replicas.values_mut() {
            if r.reads_new.is_empty() {
                continue;
            }
            if r.is_leader() {
                // Raft drops a ReadIndex until the leader has committed an
                // entry of its term: keep the reads queued until then.
                if !r.node.raft.commit_to_current_term() {
                    continue;
                }
                if r.lease_until.is_some_and(|t| t > now) {
                    let index = r.node.raft.raft_log.committed;
                    for (_, w) in r.reads_new.drain(..) {
                        r.reads_ready.push((index, w));
                    }
                    r.complete_reads();
                    continue;
                }
            } else if r.leader().is_none() {
                continue; // dropped silently by Raft: wait for a leader
            }
            let ctx = self.next_ctx;
            self.next_ctx += 1;
            r.node.read_index(ctx.to_le_bytes().to_vec());
            let waiters = r.reads_new.drain(..).map(|(_, w)| w).collect();
            r.reads_sent.push_back(ReadBatch {
                ctx,
                issued: now,
                waiters,
            });
            let _ = lease;
        }
    }

    /// One round of Ready handling for every group, with one WAL write.
    fn round(&mut self) {
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
            if !r.node.has_ready() {
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
            send_messages(&self.transport, g, rd.take_messages(), &mut snap_sent);
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
            for rs in rd.take_read_states() {
                let ctx = rs
                    .request_ctx
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .unwrap_or(0);
                while let Some(b) = r.reads_sent.pop_front() {
                    if b.ctx == ctx {
                        if r.is_leader() {
                            r.lease_until = Some(b.issued + lease);
                        }
                        for w in b.waiters {
                            r.reads_ready.push((rs.index, w));
                        }
                        break;
                    }
                    // Older batches are answered by this newer ReadState.
                    for w in b.waiters {
                        r.reads_ready.push((rs.index, w));
                    }
                }
            }
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
                &self.transport,
                g,
                rd.persisted_messages().to_vec(),
                &mut snap_sent,
            );
            let mut light = r.node.advance_append(rd);
            if let Some(c) = light.commit_index() {
                r.node.mut_store().stage_commit(c, &mut self.carry);
            }
            send_messages(&self.transport, g, light.take_messages(), &mut snap_sent);
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
        }
        if meta_changed {
            self.meta_applied(effects);
        }
        let _ = me;
    }

    /// Saves the metadata after meta entries were applied and acts on what
    /// changed (peers to reach, shard replicas to create or drop).
    fn meta_applied(&mut self, effects: Vec<MetaEffect>) {
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
            }
        }
        self.view.meta.send_replace(Arc::new(self.meta.clone()));
        self.flush_carry();
    }

    fn drop_volume(&mut self, rec: &crate::meta::VolumeRecord) {
        for (g, _) in rec.groups() {
            if let Some(mut r) = self.replicas.remove(&g) {
                r.fail_all(g, ReplicaError::NoReplica(g));
                self.carry.remove_group(g);
                self.carry_sync = true;
            }
            lock_write(&self.view.leaders).remove(&g);
        }
        if rec.is_on(self.cfg.node) {
            if let Err(e) = self.store.delete_volume(&rec.meta.name) {
                tracing::warn!(volume = %rec.meta.name, error = %e, "deleting local volume data");
            }
        }
    }

    /// The meta group's snapshot is the whole metadata at its applied index.
    fn refresh_meta_snapshot(&mut self) {
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

    fn durable(&mut self, group: u64, index: u64) {
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        r.durable = r.durable.max(index);
        let store = r.node.mut_store();
        store.stage_applied(r.durable, &mut self.carry);
        let first = store.first_index().unwrap_or(1);
        // Everything in the log is applied and durable: the group is idle,
        // and what is left of its log would only pin WAL segments.
        let idle = r.durable >= store.last_index().unwrap_or(0);
        let to = if r.node.raft.state == StateRole::Leader {
            // Keep what a live follower still needs; one that is down does
            // not pin the log: it is sent a snapshot when it is back.
            r.node
                .raft
                .prs()
                .iter()
                .filter(|(_, p)| p.recent_active)
                .map(|(_, p)| p.matched)
                .min()
                .unwrap_or(0)
                .min(r.durable)
        } else if idle {
            r.durable
        } else {
            r.durable.saturating_sub(FOLLOWER_LOG_KEEP)
        };
        if to > first + COMPACT_MIN || (idle && to > first) {
            if let Err(e) = r.node.mut_store().stage_compact(to, &mut self.carry) {
                tracing::warn!(group, error = %e, "compacting a shard log");
            } else {
                self.compacted = true;
                set_shard_snapshot(r);
            }
        }
    }

    fn flush_carry(&mut self) {
        if self.carry.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.carry);
        let sync = std::mem::take(&mut self.carry_sync);
        if let Err(e) = self.wal.write(batch, sync) {
            fatal(&format!("writing the raft log failed: {e}"));
        }
    }

    fn status(&self) -> Vec<GroupStatus> {
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
                GroupStatus {
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

/// Points the shard's Raft snapshot at where its log now starts: the data
/// behind it is the shard's chunks, copied by the follower (`snapshot`).
fn set_shard_snapshot(r: &mut Replica) {
    let store = r.node.store();
    let index = store.first_index().unwrap_or(1).saturating_sub(1);
    if index == 0 {
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
        data: Bytes::from_static(b"raftblock shard chunks"),
        ..Snapshot::default()
    };
    snap.set_metadata(md);
    r.node.mut_store().set_snapshot(snap);
}

fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}; stopping the node");
    eprintln!("raftblock: fatal: {msg}");
    std::process::exit(70);
}

fn send_messages(
    transport: &Transport,
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
                if let Err(mpsc::error::SendError(b)) = tx.send(ApplyBatch { entries, replies }) {
                    for (_, reply) in b.replies {
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
    let mut replies = replies.into_iter().peekable();
    for e in &entries {
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
    } else {
        // The data was copied and synced before the message was stepped.
        tracing::info!(group, index, "shard snapshot installed");
    }
    r.node.mut_store().stage_snapshot(snap, batch);
    r.applied = index;
    r.durable = index;
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::storage::MemStorage;

    fn node(id: u64) -> RawNode<MemStorage> {
        let store = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        RawNode::new(&raft_config(&DriverConfig::new(id), 0), store, &logger).expect("node")
    }

    /// One Ready per node, persisted at once; returns the messages sent.
    fn pump(nodes: &mut [RawNode<MemStorage>]) -> Vec<Message> {
        let mut out = Vec::new();
        for n in nodes.iter_mut() {
            if !n.has_ready() {
                continue;
            }
            let mut rd = n.ready();
            out.extend(rd.take_messages());
            let store = n.raft.raft_log.store.clone();
            if let Some(hs) = rd.hs() {
                store.wl().set_hardstate(hs.clone());
            }
            store.wl().append(rd.entries()).expect("append");
            out.extend(rd.take_persisted_messages());
            let mut light = n.advance(rd);
            out.extend(light.take_messages());
            n.advance_apply();
        }
        out
    }

    #[test]
    fn a_lagging_follower_gets_many_entries_per_append() {
        let mut nodes: Vec<_> = (1..=3).map(node).collect();
        nodes[0].campaign().expect("campaign");
        let mut appends_to_3: Vec<usize> = Vec::new();
        let mut largest_bytes = 0usize;
        let mut cut_off = false;
        for round in 0..200 {
            if round == 20 {
                // Node 3 stops hearing anything while 200 entries go in.
                cut_off = true;
                for i in 0..200u32 {
                    // 16 KiB each, 3.2 MiB in all.
                    nodes[0]
                        .propose(vec![], i.to_le_bytes().repeat(4096))
                        .expect("propose");
                }
            }
            if round == 60 {
                cut_off = false;
                nodes[0].tick(); // a heartbeat tick brings node 3 back into view
            }
            for m in pump(&mut nodes) {
                if m.to == 3 && cut_off {
                    continue;
                }
                if m.to == 3 && m.get_msg_type() == MessageType::MsgAppend && !cut_off {
                    appends_to_3.push(m.entries.len());
                    largest_bytes = largest_bytes.max(m.entries.iter().map(|e| e.data.len()).sum());
                }
                let to = (m.to - 1) as usize;
                let _ = nodes[to].step(m);
            }
            if round > 60 && round % 3 == 0 {
                nodes[0].tick();
            }
        }
        assert_eq!(nodes[0].raft.state, StateRole::Leader);
        let caught_up = nodes[2].raft.raft_log.last_index();
        assert_eq!(
            caught_up,
            nodes[0].raft.raft_log.last_index(),
            "{appends_to_3:?}"
        );
        let most = appends_to_3.iter().copied().max().unwrap_or(0);
        assert!(
            most > 30,
            "appends to the lagging follower carried at most {most} entries: {appends_to_3:?}"
        );
        // Bounded too: one message must stay far below the transport's
        // frame limit however far behind the follower is.
        assert!(largest_bytes <= (1 << 20) + (16 << 10), "{largest_bytes}");
    }
}
