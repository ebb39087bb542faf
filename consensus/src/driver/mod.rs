//! The node's multi-raft driver: one thread owns every Raft group replica
//! of the node (the meta group and all shard replicas) and runs them in
//! rounds, as TiKV's raftstore does. A round steps everything that arrived
//! (peer messages, proposals, read requests, apply progress), ticks when a
//! tick is due, then collects the Ready of every group that has one: leader
//! messages go out at once, committed entries go to the apply tasks, and all
//! groups' new entries and hard states go to the log writer as one task; the
//! driver goes on while the writer group-commits the tasks of several rounds
//! with one fdatasync and only then sends the follower messages (votes and
//! append acks, which promise persistence).
//!
//! The meta group is applied here, on the driver thread (its commands are
//! small and create or drop the shard replicas); shard groups are applied by
//! their own tasks (`apply`).
//!
//! This file holds the driver's public types, the `Driver` itself, its
//! start (`spawn`) and its loop (`run`); the rest is cut by concept:
//! `replica` (one group's replica and its lifecycle), `inbox` (what arrives
//! on the driver's channel: peer messages, proposals, membership changes),
//! `reads` (linearizable reads), `ready` (a round's Ready handling),
//! `log_writer` (the WAL writes, off this thread), `meta_apply` (the meta group applied inline), `compaction`
//! (log compaction and WAL purging), `config` (Raft configuration and
//! constants) and `health` (a group's health changes, logged once each).

mod compaction;
mod config;
mod encode;
mod health;
mod hibernation;
mod hosting;
mod inbox;
mod leadership;
mod liveness;
mod log_writer;
mod membership;
mod meta_apply;
mod ports;
mod reads;
mod ready;
mod reconfigure;
mod replica;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use raft::prelude::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

use raftblock_storage::{ChunkStore, Wal, WalBatch};

use crate::meta::MetaState;
use crate::snapshot::SnapshotFetch;
use crate::transport::{Envelope, Transport};

pub use log_writer::LogWriterMode;
pub use ports::{Clock, ManualClock, RaftNetwork, SystemClock};
use replica::Replica;

pub use crate::error::ReplicaError;

/// Where a proposal's or a read's outcome is sent.
pub type Reply = oneshot::Sender<Result<(), ReplicaError>>;

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
    /// A held-back shard snapshot's data is staged (`copy`), or copying
    /// it failed (`None`).
    SnapshotFetched {
        /// Group.
        group: u64,
        /// The node it was copied from.
        from: u64,
        /// The held-back MsgSnapshot.
        msg: Box<Message>,
        /// What was staged.
        copy: Option<crate::snapshot::StagedCopy>,
    },
    /// The shard's apply task committed to swapping the staged copy in
    /// (`ok`), or refused.
    SnapshotPrepared {
        /// Group.
        group: u64,
        /// Committed.
        ok: bool,
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
    /// A shard's fence history changed (or was loaded).
    Fenced {
        /// Group.
        group: u64,
        /// `(index, epoch)` of its fences.
        fences: Vec<(u64, u64)>,
    },
    /// Hand the leadership of `group` to node `to`, if this node leads it
    /// (the lease ends here first; see `handback_check`).
    TransferLeader {
        /// Group.
        group: u64,
        /// The new leader.
        to: u64,
    },
    /// The log writer finished more tasks.
    Persisted,
    /// The state of every replica.
    Status(oneshot::Sender<Vec<GroupStatus>>),
    /// Stop the driver.
    Stop,
}

/// A cheap handle for talking to the driver from anywhere.
#[derive(Clone)]
pub struct DriverHandle {
    tx: Sender<DriverMsg>,
    cuts: Arc<crate::cut::CutRegistry>,
}

impl DriverHandle {
    /// The checksum tables this node's replicas recorded at comparison cuts.
    pub fn cuts(&self) -> &crate::cut::CutRegistry {
        &self.cuts
    }

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

    /// Reports a shard's fence history.
    pub fn fenced(&self, group: u64, fences: Vec<(u64, u64)>) {
        self.send(DriverMsg::Fenced { group, fences });
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
    /// The group's voters, as this replica's configuration has them.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Its learners (non-voting replicas).
    #[serde(default)]
    pub learners: Vec<u64>,
    /// On the leader: how many voters were heard from lately (itself
    /// included).
    #[serde(default)]
    pub voters_up: Option<usize>,
}

/// What the driver shares with the rest of the node.
pub struct ClusterView {
    /// The latest applied cluster metadata.
    pub meta: watch::Sender<Arc<MetaState>>,
    /// Known leader node of each group this node has a replica of.
    pub leaders: RwLock<HashMap<u64, u64>>,
    /// Woken whenever `leaders` changes (requests waiting on an old leader).
    pub leader_change: tokio::sync::Notify,
    /// Leases of the shards this node leads, for reads without the driver.
    pub read_leases: crate::read_lease::ReadLeases,
    /// Shard groups led here whose voters the metadata does not know yet,
    /// by group (see `MembershipReport`).
    pub membership_reports: std::sync::Mutex<HashMap<u64, MembershipReport>>,
}

/// The voters of a shard group led on this node, which the metadata has
/// otherwise: for `MetaCommand::ShardMembership`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipReport {
    /// The voters (sorted).
    pub voters: Vec<u64>,
    /// The log index they hold as of.
    pub as_of: u64,
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
    /// Shard log entries younger than this are kept (a replica back within
    /// it catches up from the log).
    pub log_keep: Duration,
    /// At most this many bytes of a shard's log are kept for age's sake.
    pub log_keep_bytes: u64,
    /// Over this many bytes of log on the node, age stops counting.
    pub log_keep_node_bytes: u64,
    /// Elections after exactly `election_ticks` instead of a random number
    /// between it and twice it (raft-rs draws from its own RNG): for a
    /// simulation that must replay the same way from its seed.
    pub fixed_election_timeout: bool,
    /// How long a shard's preferred replica must have been caught up and
    /// answering before leadership goes back to it: a node that just
    /// restarted is let settle, and a flapping one never gets it.
    pub handback_quiet: Duration,
    /// Where the log is written: a thread of its own, or (simulation) the
    /// driver's thread when told to.
    pub log_writer: LogWriterMode,
    /// When blocks of large writes left in the log move to their chunks.
    pub settling: crate::apply::Settling,
}

impl DriverConfig {
    /// Defaults for node `node`: 100 ms ticks, elections after 1 s.
    pub fn new(node: u64) -> DriverConfig {
        DriverConfig {
            node,
            tick: Duration::from_millis(100),
            // Elections after 1 to 2 s of silence: a failover stall stays
            // under 3 s. Heartbeats every 200 ms.
            election_ticks: 10,
            heartbeat_ticks: 2,
            bootstrap: None,
            request_timeout: Duration::from_secs(3),
            log_keep: Duration::from_secs(90),
            log_keep_bytes: 256 << 20,
            log_keep_node_bytes: 1 << 30,
            fixed_election_timeout: false,
            handback_quiet: Duration::from_secs(20),
            log_writer: LogWriterMode::Thread,
            settling: crate::apply::Settling::default(),
        }
    }

    /// How long a confirmed leadership lets the leader serve reads locally:
    /// shorter than the time followers refuse to vote after hearing from it.
    fn lease(&self) -> Duration {
        self.tick * (self.election_ticks as u32) * 7 / 10
    }
}

/// The driver (runs on its own thread; see [`Driver::spawn`]).
pub struct Driver {
    cfg: DriverConfig,
    wal: Arc<Wal>,
    store: Arc<ChunkStore>,
    network: Arc<dyn RaftNetwork>,
    clock: Arc<dyn Clock>,
    view: Arc<ClusterView>,
    meta: MetaState,
    meta_path: PathBuf,
    handle: DriverHandle,
    rx: Receiver<DriverMsg>,
    /// Ordered, so a round visits groups the same way every time.
    replicas: BTreeMap<u64, Replica>,
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
    /// Groups whose staged copy waits for their apply task to commit to it:
    /// no Ready of theirs is handled meanwhile, so nothing is applied
    /// between that check and Raft's decision on the held MsgSnapshot.
    frozen: HashMap<u64, (u64, Message)>,
    /// Bytes of log the node held at the last look (`mark_log_ages`).
    retained_bytes: u64,
    /// Ticks since start, for once-a-second chores.
    ticks: u64,
    /// When the next tick is due.
    next_tick: Instant,
    /// Writes the log (`log_writer`).
    writer: log_writer::LogWriter,
    /// Which peers were heard from lately.
    liveness: liveness::PeerLiveness,
    /// The groups that are not asleep (`hibernation`), plus those that fell
    /// asleep and still get their last round: the driver's per-tick and
    /// per-round work runs over these only, so sleeping groups cost nothing.
    awake: std::collections::BTreeSet<u64>,
    /// Whether a replica of this node was being caught up at the last look
    /// (`catching_up`, once a second).
    catching_up: bool,
    /// The number the next write task gets.
    next_task: u64,
    /// Tasks handed to the writer and not yet reported written, with the
    /// Readies `(group, number)` each persists.
    in_flight: std::collections::VecDeque<(u64, Vec<(u64, u64)>)>,
}

fn lock_write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Why the driver could not start, or could not open a volume's replicas.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A thread could not be started.
    #[error("starting the {name} thread: {source}")]
    Thread {
        /// Which thread.
        name: &'static str,
        /// What failed.
        source: std::io::Error,
    },
    /// The saved metadata could not be loaded.
    #[error(transparent)]
    Meta(#[from] crate::meta::StateFileError),
    /// A replica's Raft state in the WAL cannot be used.
    #[error(transparent)]
    PeerStorage(#[from] crate::peer_storage::PeerStorageError),
    /// raft-rs refused to start a group's replica.
    #[error("group {group}: starting raft: {source}")]
    Raft {
        /// The group.
        group: u64,
        /// What failed.
        source: raft::Error,
    },
    /// This node's copy of a volume could not be adopted or opened.
    #[error("volume {volume}: {source}")]
    Volume {
        /// The volume.
        volume: String,
        /// What failed.
        source: raftblock_storage::StorageError,
    },
    /// A swap of a staged shard copy that a crash interrupted could not be
    /// finished.
    #[error("group {group}: staged copy: {source}")]
    StagedCopy {
        /// The shard group.
        group: u64,
        /// What failed.
        source: raftblock_storage::StorageError,
    },
}

/// Stops the node on an error it cannot go on after (the log or a swap
/// could not be written): a restart recovers from what is durable.
pub(crate) fn fatal(msg: &str) -> ! {
    tracing::error!("{msg}; stopping the node");
    eprintln!("raftblock: fatal: {msg}");
    std::process::exit(70);
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
    ) -> Result<(DriverHandle, Arc<ClusterView>, std::thread::JoinHandle<()>), DriverError> {
        let ports = (
            Arc::new(transport) as Arc<dyn RaftNetwork>,
            Arc::new(SystemClock) as Arc<dyn Clock>,
        );
        let (d, handle, view) = Driver::open(cfg, wal, store, ports, meta_path, peers, snapshots)?;
        let rt = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("raft-driver".into())
            .spawn(move || {
                let _guard = rt.enter();
                d.run();
            })
            .map_err(|source| DriverError::Thread {
                name: "raft driver",
                source,
            })?;
        Ok((handle, view, thread))
    }

    /// Opens every replica found in the WAL, as `spawn` does, without
    /// starting a thread: the caller drives it with [`Driver::turn`] (the
    /// simulation). Must be called inside a tokio runtime (apply tasks).
    pub fn open(
        cfg: DriverConfig,
        wal: Arc<Wal>,
        store: Arc<ChunkStore>,
        (network, clock): (Arc<dyn RaftNetwork>, Arc<dyn Clock>),
        meta_path: PathBuf,
        peers: &HashMap<u64, SocketAddr>,
        snapshots: mpsc::UnboundedSender<SnapshotFetch>,
    ) -> Result<(Driver, DriverHandle, Arc<ClusterView>), DriverError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let writer =
            log_writer::LogWriter::start(cfg.log_writer, wal.clone(), network.clone(), tx.clone())?;
        let handle = DriverHandle {
            tx,
            cuts: Arc::default(),
        };
        let meta = MetaState::load(&meta_path)?;
        let (meta_tx, _) = watch::channel(Arc::new(meta.clone()));
        let view = Arc::new(ClusterView {
            meta: meta_tx,
            leaders: RwLock::new(HashMap::new()),
            leader_change: tokio::sync::Notify::new(),
            read_leases: Default::default(),
            membership_reports: Default::default(),
        });
        let next_tick = clock.now() + cfg.tick;
        let cfg_node = cfg.node;
        let election_window = cfg.tick * cfg.election_ticks as u32;
        let mut d = Driver {
            cfg,
            wal,
            store,
            network,
            clock,
            view: view.clone(),
            meta,
            meta_path,
            handle: handle.clone(),
            rx,
            replicas: BTreeMap::new(),
            peer_addrs: HashMap::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            // Read contexts are unique across nodes: a leader drops a
            // forwarded ReadIndex whose context it already has pending.
            next_ctx: (cfg_node << 48) | 1,
            carry: WalBatch::new(),
            carry_sync: false,
            compacted: false,
            snapshots,
            fetching: HashSet::new(),
            frozen: HashMap::new(),
            retained_bytes: 0,
            ticks: 0,
            next_tick,
            writer,
            liveness: liveness::PeerLiveness::new(cfg_node, election_window),
            catching_up: false,
            awake: Default::default(),
            next_task: 1,
            in_flight: std::collections::VecDeque::new(),
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
        Ok((d, handle, view))
    }

    /// One turn of the loop without waiting: handles what arrived, ticks if
    /// a tick is due by the driver's clock, and runs a round. False once
    /// the driver was told to stop.
    pub fn turn(&mut self) -> bool {
        while let Ok(m) = self.rx.try_recv() {
            if !self.handle_msg(m) {
                self.shutdown();
                return false;
            }
        }
        self.tick_if_due();
        self.send_reads();
        self.round();
        true
    }

    /// Writes up to `max` rounds' log that a `Deferred` writer holds, as
    /// the writer thread would; returns how many round tasks were written.
    pub fn persist_pending(&mut self, max: usize) -> usize {
        let before = self.in_flight.len();
        if let Some(last) = self
            .writer
            .persist_queued(max, &self.wal, self.network.as_ref())
        {
            self.on_persisted(last);
        }
        before - self.in_flight.len()
    }

    /// The awake groups as they are now (the caller's loop may put some
    /// to sleep; a dropped replica leaves the set with it).
    fn awake_now(&self) -> Vec<u64> {
        self.awake.iter().copied().collect()
    }

    fn tick_if_due(&mut self) {
        let now = self.clock.now();
        if now >= self.next_tick {
            self.tick_all(now);
            self.next_tick += self.cfg.tick;
            if self.next_tick < now {
                self.next_tick = now + self.cfg.tick;
            }
        }
    }

    fn add_peer(&mut self, id: u64, addr: SocketAddr) {
        if id == self.cfg.node || self.peer_addrs.get(&id) == Some(&addr) {
            return;
        }
        self.peer_addrs.insert(id, addr);
        self.network.add_peer(id, addr);
    }

    fn run(mut self) {
        loop {
            let wait = self.next_tick.saturating_duration_since(self.clock.now());
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
            self.tick_if_due();
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
        self.persist_all();
        self.writer.stop();
        self.replicas.clear();
        tracing::info!("raft driver stopped");
    }

    /// Ticks every replica, then expires reads, moves leaderships and
    /// purges the WAL as due.
    fn tick_all(&mut self, now: Instant) {
        let timeout = self.cfg.request_timeout;
        let me = self.cfg.node;
        // Once a second is often enough (it looks at every replica).
        if self.ticks.is_multiple_of(10) {
            self.catching_up = self.catching_up(now);
        }
        let catching_up = self.catching_up;
        let lease = self.cfg.lease();
        let anyone_silent = self
            .peer_addrs
            .keys()
            .any(|p| !self.liveness.is_up(*p, now));
        if anyone_silent {
            for (&g, r) in self.replicas.iter_mut() {
                if r.hibernating && r.member_silent(&self.liveness, now) {
                    tracing::debug!(group = g, "a member went silent; waking the group");
                    r.wake(g, &mut self.awake);
                }
            }
        }
        for g in self.awake_now() {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            if r.hibernating {
                continue; // asleep, waiting for its last round
            }
            // A group with a replica move in flight stays awake: its
            // leader carries the move out (`reconfigure`).
            // So does one whose leadership is to go back to its preferred
            // replica, which is up: the handback needs the group ticking.
            let handback =
                r.preferred != 0 && r.preferred != me && self.liveness.is_up(r.preferred, now);
            if r.is_leader()
                && !handback
                && !self.meta.moves.contains_key(&g)
                && r.maybe_hibernate(g, &self.liveness, now, self.network.as_ref())
            {
                r.publish_lease(g, &self.view.read_leases);
                self.awake.remove(&g);
                continue;
            }
            // On a leader, right before the tick that ends its check-quorum
            // window: that tick clears every follower's `recent_active`,
            // and the check wants what the whole window saw.
            let raft = &r.node.raft;
            if raft.election_elapsed + 1 == raft.election_timeout() && r.is_leader() {
                let up = |node| self.liveness.is_up(node, now);
                r.handback_check(g, me, now, catching_up, self.cfg.handback_quiet, &up);
                r.publish_lease(g, &self.view.read_leases);
            }
            r.node.tick();
            r.ticks += 1;
            r.expire_reads(g, now, timeout);
            r.renew_wanted_lease(g, now, lease, &self.view.read_leases);
        }
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.mark_log_ages(now);
            self.reconfigure();
            self.watch_groups(now);
        }
        self.purge_if_compacted();
    }
}
