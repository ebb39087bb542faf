//! The node's side of the cluster: routes a request for a shard to the
//! shard's leader (this node, or another one in one hop over the transport),
//! serves requests other nodes forward here, and retries while a shard has
//! no leader, for a bounded time, so an ordinary failover is a stall and not
//! an I/O error. `Cluster::start` also runs the node's background tasks
//! (transport events, snapshot fetches, pings, the lease watch).
//!
//! The rest of `Cluster` is implemented by concern in other files:
//! `meta_client` (metadata operations: volumes, nodes), `repair` (read
//! repair and scrub), `verify` (comparing replicas), `attachment`
//! (exclusive attach and fencing); `last_heard` keeps when other nodes and
//! attachment leases were last heard from.

use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use raftblock_storage::{ChunkStore, LocalVolume, ReadSegment, VolumeIo};

use crate::driver::{ClusterView, DriverHandle, DriverMsg, ReplicaError};
use crate::error::io_error;
use crate::events::Severity;
use crate::last_heard::{LastHeard, LeaseRenewals, NodeChange};
use crate::meta::shard_of_group;
use crate::recovery::Recovery;
use crate::rpc::{self, kind, RouteError, RpcRequest, RpcResponse, RpcSegment};
use crate::snapshot::{self, ChunkSource, SnapshotFetch, SourceError};
use crate::transport::{Transport, TransportEvent};
use raftblock_storage::pace::TokenBucket;

/// How long a forwarded request may go unanswered before it is retried.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do on a shard's leader.
#[derive(Debug, Clone)]
pub enum ShardOp {
    /// Propose an encoded command; done once it is applied on the leader.
    Propose(Bytes),
    /// Read a range of the volume (linearizable).
    Read {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Allocation extents of a range.
    BlockStatus {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Read this node's own copy (no read barrier; for snapshots).
    ReadLocal {
        /// Volume offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// This node's checksum table of a chunk (for catch-up by copy).
    ChunkSums {
        /// Chunk index within the volume.
        chunk: u64,
    },
    /// This node's checksum table of a chunk at a comparison cut.
    CutSums {
        /// The cut.
        cut: u64,
        /// Chunk index within the volume.
        chunk: u64,
    },
    /// Add a node to the meta group.
    AddMember {
        /// Node id.
        node: u64,
        /// As a learner.
        learner: bool,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The replication service of one node.
pub struct Cluster {
    node: u64,
    driver: DriverHandle,
    view: Arc<ClusterView>,
    transport: Transport,
    store: Arc<ChunkStore>,
    /// Forwarded requests awaiting an answer: id -> (callee, reply).
    pending: Mutex<HashMap<u64, (u64, oneshot::Sender<RpcResponse>)>>,
    next_id: AtomicU64,
    heard: LastHeard,
    hints: RwLock<HashMap<u64, u64>>,
    leader_wait: Duration,
    renewals: LeaseRenewals,
    recovery: Arc<Recovery>,
    scrub_pace: TokenBucket,
}

/// Byte rates of a node's background work, so client I/O keeps going
/// (0: no limit).
#[derive(Debug, Clone, Copy)]
pub struct BackgroundRates {
    /// For all the catch-up copies it receives together.
    pub recovery: u64,
    /// For the reads of its scrubs.
    pub scrub: u64,
}

impl Cluster {
    /// Starts the service and the task that routes transport events.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        node: u64,
        driver: DriverHandle,
        view: Arc<ClusterView>,
        transport: Transport,
        store: Arc<ChunkStore>,
        events: mpsc::UnboundedReceiver<TransportEvent>,
        snapshots: mpsc::UnboundedReceiver<SnapshotFetch>,
        leader_wait: Duration,
        rates: BackgroundRates,
    ) -> Arc<Cluster> {
        let c = Arc::new(Cluster {
            node,
            driver,
            view,
            transport,
            store,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            heard: LastHeard::new(node),
            hints: RwLock::new(HashMap::new()),
            leader_wait,
            renewals: LeaseRenewals::default(),
            recovery: Arc::new(Recovery::new(rates.recovery)),
            scrub_pace: TokenBucket::new(rates.scrub),
        });
        tokio::spawn(route_events(c.clone(), events));
        tokio::spawn(fetch_snapshots(c.clone(), snapshots));
        let watcher = c.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            loop {
                every.tick().await;
                if Arc::strong_count(&watcher) == 1 {
                    return;
                }
                let meta = watcher.view.meta();
                watcher.renewals.watch(&meta);
                watcher.log_node_changes(&meta);
            }
        });
        let pinger = c.clone();
        tokio::spawn(async move {
            // Several pings per election timeout: with every group asleep
            // they are all that tells the drivers their peers are up.
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                if Arc::strong_count(&pinger) == 1 {
                    return; // the node stopped
                }
                pinger.transport.ping_all();
            }
        });
        c
    }

    /// Tells the transport where members are before the metadata says so
    /// (a node that just joined must answer the leader to get it).
    pub fn learn_peers(&self, peers: &[(u64, SocketAddr)]) {
        for &(id, addr) in peers {
            if id != self.node {
                self.transport.add_peer(id, addr);
            }
        }
    }

    /// The catch-up copies this node receives (pacing, progress).
    pub fn recovery(&self) -> &Arc<Recovery> {
        &self.recovery
    }

    /// The rate its scrubs read at.
    pub fn scrub_pace(&self) -> &TokenBucket {
        &self.scrub_pace
    }

    /// This node's id.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The driver.
    pub fn driver(&self) -> &DriverHandle {
        &self.driver
    }

    /// The shared view (metadata, leaders).
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.view
    }

    /// Nodes heard from lately, and this one.
    pub fn live_nodes(&self) -> Vec<u64> {
        self.heard.live()
    }

    /// How long `node` has not been heard from (since this node started,
    /// if never).
    pub fn silent_for(&self, node: u64) -> Duration {
        self.heard.silent_for(node)
    }

    /// Logs each member node seen going down or coming back, once per
    /// transition: the only word on the other nodes that one died.
    fn log_node_changes(&self, meta: &crate::meta::MetaState) {
        let members: Vec<u64> = meta.nodes.keys().copied().collect();
        for (node, change) in self.heard.changes(&members) {
            let addr = meta.nodes.get(&node).map(|n| n.raft_addr);
            let addr = addr.map_or_else(String::new, |a| a.to_string());
            let (severity, key, message) = match change {
                NodeChange::Down {
                    silent,
                    ever_heard: true,
                } => (
                    Severity::Warning,
                    "down",
                    format!(
                        "node {node} is down: not heard from for {:.1} s",
                        silent.as_secs_f64()
                    ),
                ),
                NodeChange::Down {
                    silent,
                    ever_heard: false,
                } => (
                    Severity::Warning,
                    "down",
                    format!(
                        "node {node} is down: not heard from since this node started {:.1} s ago",
                        silent.as_secs_f64()
                    ),
                ),
                NodeChange::Back { after } => (
                    Severity::Info,
                    "back",
                    format!("node {node} is back after {:.0} s", after.as_secs_f64()),
                ),
            };
            let key = format!("node/{node}/{key}");
            crate::events::say!(self.node, severity, key, message; node, %addr,);
        }
    }

    /// How long the attachment of `name` has gone without a renewal, by
    /// this node's clock (zero for one it has not watched yet).
    pub fn lease_silent_for(&self, name: &str) -> Duration {
        self.renewals.watch(&self.view.meta());
        self.renewals.silent_for(name)
    }

    fn on_event(self: &Arc<Self>, ev: TransportEvent) {
        match ev {
            TransportEvent::Received { from, envelopes } => {
                self.heard.seen(from);
                // Even an empty frame (a ping) tells the driver the peer is
                // up: sleeping groups wake when a member's node goes silent.
                self.driver.send(DriverMsg::Raft { from, envelopes });
            }
            TransportEvent::Requests { from, requests } => {
                self.heard.seen(from);
                for req in requests {
                    let c = self.clone();
                    tokio::spawn(async move {
                        let id = req.id;
                        let result = c.serve(req).await;
                        c.transport
                            .send_response(from, RpcResponse::from_result(id, result));
                    });
                }
            }
            TransportEvent::Responses { from, responses } => {
                self.heard.seen(from);
                let mut pending = lock(&self.pending);
                for r in responses {
                    if let Some((_, tx)) = pending.remove(&r.id) {
                        let _ = tx.send(r);
                    }
                }
            }
            TransportEvent::Unreachable {
                to,
                groups,
                requests,
            } => {
                if !groups.is_empty() {
                    self.driver.send(DriverMsg::Unreachable { to, groups });
                }
                // The connection to `to` failed: requests it already took
                // will get no answer either (it may have died), so every
                // request waiting on it is retried now rather than after
                // the RPC timeout.
                let _ = requests;
                let mut pending = lock(&self.pending);
                let lost: Vec<u64> = pending
                    .iter()
                    .filter(|(_, (callee, _))| *callee == to)
                    .map(|(id, _)| *id)
                    .collect();
                for id in lost {
                    if let Some((_, tx)) = pending.remove(&id) {
                        let _ = tx.send(RpcResponse {
                            id,
                            status: rpc::status::RETRY,
                            ..RpcResponse::default()
                        });
                    }
                }
            }
        }
    }

    async fn serve(&self, req: RpcRequest) -> Result<Vec<RpcSegment>, RouteError> {
        if req.deadline_ms != 0 && rpc::unix_ms() > req.deadline_ms {
            tracing::warn!(
                group = req.group,
                late_ms = rpc::unix_ms() - req.deadline_ms,
                "dropping a forwarded request that arrived after its caller gave up"
            );
            return Err(ReplicaError::Retry(req.group).into());
        }
        let op = match req.kind {
            kind::PROPOSE => ShardOp::Propose(req.data),
            kind::READ => ShardOp::Read {
                offset: req.offset,
                len: req.len,
            },
            kind::BLOCK_STATUS => ShardOp::BlockStatus {
                offset: req.offset,
                len: req.len,
            },
            kind::READ_LOCAL => ShardOp::ReadLocal {
                offset: req.offset,
                len: req.len,
            },
            kind::CHUNK_SUMS => ShardOp::ChunkSums { chunk: req.offset },
            kind::CUT_SUMS => ShardOp::CutSums {
                cut: req.offset,
                chunk: req.len,
            },
            kind::ADD_MEMBER => ShardOp::AddMember {
                node: req.offset,
                learner: req.len != 0,
            },
            k => {
                return Err(RouteError::Io {
                    errno: raftblock_storage::error::errno::EINVAL,
                    message: format!("unknown request kind {k}"),
                })
            }
        };
        self.local(req.group, &op).await
    }

    /// Runs `op` on this node's replica of `group`.
    async fn local(&self, group: u64, op: &ShardOp) -> Result<Vec<RpcSegment>, RouteError> {
        match op {
            ShardOp::Propose(data) => {
                self.driver.propose(group, data.clone()).await?;
                Ok(Vec::new())
            }
            ShardOp::AddMember { node, learner } => {
                let (reply, rx) = oneshot::channel();
                self.driver.send(DriverMsg::AddMember {
                    node: *node,
                    learner: *learner,
                    reply,
                });
                rx.await.unwrap_or(Err(ReplicaError::Stopped))?;
                Ok(Vec::new())
            }
            ShardOp::Read { offset, len } => {
                self.driver.read_barrier(group).await?;
                let v = self.local_volume(group)?;
                self.read_repairing(group, &v, *offset, *len).await
            }
            ShardOp::ReadLocal { offset, len } => {
                let v = self.local_volume(group)?;
                let segs = v.read(*offset, *len).await.map_err(io_error)?;
                Ok(rpc::segments_of_read(segs))
            }
            ShardOp::ChunkSums { chunk } => {
                let v = self.local_volume(group)?;
                let sums = v.chunk_sums(*chunk).map_err(io_error)?;
                Ok(rpc::segments_of_sums(sums))
            }
            ShardOp::CutSums { cut, chunk } => {
                let t = self
                    .driver
                    .cuts()
                    .get(group, *cut)
                    .ok_or(ReplicaError::Retry(group))?;
                Ok(rpc::segments_of_sums(t.sums.get(chunk).cloned().flatten()))
            }
            ShardOp::BlockStatus { offset, len } => {
                self.driver.read_barrier(group).await?;
                let v = self.local_volume(group)?;
                let ext = v.block_status(*offset, *len).await.map_err(io_error)?;
                Ok(rpc::segments_of_extents(ext))
            }
        }
    }

    fn local_volume(&self, group: u64) -> Result<Arc<LocalVolume>, RouteError> {
        let (vol, _) = shard_of_group(group);
        let meta = self.view.meta();
        let rec = meta
            .volumes
            .values()
            .find(|v| v.meta.id == vol)
            .ok_or(ReplicaError::NoReplica(group))?;
        self.store.volume(&rec.meta.name).map_err(io_error)
    }

    /// Sends `op` for `group` to node `to` and waits for the answer (no
    /// leader following, no retries).
    pub(crate) async fn call_node(
        &self,
        to: u64,
        group: u64,
        op: &ShardOp,
        deadline: Instant,
    ) -> Result<Vec<RpcSegment>, RouteError> {
        self.call(to, group, op, deadline).await
    }

    /// The node's chunk store.
    pub(crate) fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    async fn call(
        &self,
        to: u64,
        group: u64,
        op: &ShardOp,
        deadline: Instant,
    ) -> Result<Vec<RpcSegment>, RouteError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(RPC_TIMEOUT)
            .max(Duration::from_millis(100));
        let mut req = RpcRequest {
            id,
            group,
            deadline_ms: rpc::unix_ms() + wait.as_millis() as u64,
            ..RpcRequest::default()
        };
        match op {
            ShardOp::Propose(data) => {
                req.kind = kind::PROPOSE;
                req.data = data.clone();
            }
            ShardOp::Read { offset, len } => {
                req.kind = kind::READ;
                (req.offset, req.len) = (*offset, *len);
            }
            ShardOp::BlockStatus { offset, len } => {
                req.kind = kind::BLOCK_STATUS;
                (req.offset, req.len) = (*offset, *len);
            }
            ShardOp::ReadLocal { offset, len } => {
                req.kind = kind::READ_LOCAL;
                (req.offset, req.len) = (*offset, *len);
            }
            ShardOp::ChunkSums { chunk } => {
                req.kind = kind::CHUNK_SUMS;
                req.offset = *chunk;
            }
            ShardOp::CutSums { cut, chunk } => {
                req.kind = kind::CUT_SUMS;
                (req.offset, req.len) = (*cut, *chunk);
            }
            ShardOp::AddMember { node, learner } => {
                req.kind = kind::ADD_MEMBER;
                (req.offset, req.len) = (*node, u64::from(*learner));
            }
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, (to, tx));
        let to_leader = matches!(
            op,
            ShardOp::Propose(_) | ShardOp::Read { .. } | ShardOp::BlockStatus { .. }
        );
        self.transport.send_request(to, req);
        let answer = tokio::select! {
            r = tokio::time::timeout(wait, rx) => r.ok().and_then(Result::ok),
            // A callee cut off by a partition answers nothing and its TCP
            // connection does not fail either: once this node sees another
            // leader of the group, the request goes there instead of
            // waiting out the timeout (the callee drops it at its deadline,
            // and a block write applied twice writes the same bytes).
            leader = self.leader_moved_from(group, to), if to_leader => {
                tracing::debug!(group, from = to, to = leader, "leader moved; retrying there");
                None
            }
        };
        match answer {
            Some(resp) => resp.into_result(group),
            None => {
                lock(&self.pending).remove(&id);
                Err(ReplicaError::Retry(group).into())
            }
        }
    }

    /// Resolves once this node learns of a new leader of `group`, neither
    /// the one it knew when called nor `from` (never, for a group it holds
    /// no replica of). Woken by the driver's leader changes: no timer per
    /// request.
    async fn leader_moved_from(&self, group: u64, from: u64) -> u64 {
        let known = self.view.leader(group);
        loop {
            let changed = self.view.leader_change.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change in between is not missed.
            changed.as_mut().enable();
            match self.view.leader(group) {
                Some(l) if l != from && Some(l) != known => return l,
                _ => changed.await,
            }
        }
    }

    /// Where to send an operation on `group` next: the leader this node's
    /// replica knows of (Raft keeps it current) unless that one just
    /// failed (`last`), then a hint from an earlier answer, then the
    /// replicas in turn.
    fn guess_leader(&self, group: u64, replicas: &[u64], attempt: usize, last: Option<u64>) -> u64 {
        if let Some(l) = self.view.leader(group) {
            if Some(l) != last {
                return l;
            }
        }
        if attempt == 0 {
            if let Some(l) = self
                .hints
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&group)
            {
                return *l;
            }
        }
        if replicas.is_empty() {
            return self.node;
        }
        let next = replicas[attempt % replicas.len()];
        if Some(next) == last && replicas.len() > 1 {
            return replicas[(attempt + 1) % replicas.len()];
        }
        next
    }

    /// Runs `op` on the leader of `group` (whose replicas are on
    /// `replicas`), following leader hints and retrying while there is no
    /// leader, for up to the configured wait.
    pub async fn execute(
        &self,
        group: u64,
        replicas: &[u64],
        op: ShardOp,
    ) -> Result<Vec<RpcSegment>, RouteError> {
        let deadline = Instant::now() + self.leader_wait;
        let mut attempt = 0usize;
        let mut target = self.guess_leader(group, replicas, 0, None);
        let mut hops = 0;
        let mut backoff = Duration::from_millis(10);
        loop {
            let r = if target == self.node {
                self.local(group, &op).await
            } else {
                self.call(target, group, &op, deadline).await
            };
            let e = match r {
                Ok(v) => {
                    if target != self.node {
                        self.hints
                            .write()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(group, target);
                    }
                    return Ok(v);
                }
                Err(RouteError::Replica(e)) => e,
                Err(e) => return Err(e),
            };
            match e {
                ReplicaError::NotLeader {
                    leader: Some(l), ..
                } if l != target && hops < 3 => {
                    hops += 1;
                    target = l;
                    continue;
                }
                ReplicaError::NotLeader { .. }
                | ReplicaError::NoReplica(_)
                | ReplicaError::Retry(_) => {}
                e => return Err(e.into()),
            }
            if Instant::now() + backoff > deadline {
                return Err(e.into());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
            hops = 0;
            attempt += 1;
            target = self.guess_leader(group, replicas, attempt, Some(target));
        }
    }
}

/// Copies the shard data behind each MsgSnapshot the driver holds back from
/// the snapshot's sender (`snapshot`), and hands the message back.
async fn fetch_snapshots(c: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<SnapshotFetch>) {
    while let Some(f) = rx.recv().await {
        let c = c.clone();
        tokio::spawn(async move {
            // Waits for a slot: a few copies at a time per node.
            let guard = c.recovery.begin(f.group, f.from).await;
            let src = SnapshotSender {
                c: &c,
                from: f.from,
                group: f.group,
            };
            let meta = c.view.meta();
            let copy = match snapshot::fetch(&meta, &c.store, &f, &src, &guard.progress).await {
                Ok(copy) => Some(copy),
                Err(e) => {
                    tracing::warn!(group = f.group, error = %e, "shard snapshot failed; the leader will send another");
                    None
                }
            };
            c.driver.send(DriverMsg::SnapshotFetched {
                group: f.group,
                from: f.from,
                msg: Box::new(f.msg),
                copy,
            });
        });
    }
}

/// A snapshot's sender (the shard's leader), reached over the node-to-node
/// RPC: where a catch-up copy reads from.
struct SnapshotSender<'a> {
    c: &'a Cluster,
    from: u64,
    group: u64,
}

impl SnapshotSender<'_> {
    async fn call(&self, op: ShardOp) -> Result<Vec<RpcSegment>, RouteError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.c.call_node(self.from, self.group, &op, deadline).await
    }
}

impl ChunkSource for SnapshotSender<'_> {
    async fn sums(&self, chunk: u64) -> Result<Option<Vec<u32>>, SourceError> {
        let from = self.from;
        let segs = self
            .call(ShardOp::ChunkSums { chunk })
            .await
            .map_err(|source| SourceError::Sums { from, source })?;
        rpc::sums_of_segments(segs).map_err(|source| SourceError::Corrupt { from, source })
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>, SourceError> {
        let from = self.from;
        let segs = self
            .call(ShardOp::ReadLocal { offset, len })
            .await
            .map_err(|source| SourceError::Read {
                from,
                offset,
                len,
                source,
            })?;
        let read =
            rpc::read_of_segments(segs).map_err(|source| SourceError::Corrupt { from, source })?;
        // Paced by the data that came (holes cost the sender nothing).
        let data: u64 = read
            .iter()
            .filter(|s| matches!(s, ReadSegment::Data(_)))
            .map(|s| s.len())
            .sum();
        self.c.recovery.pace(data).await;
        Ok(read)
    }
}

async fn route_events(c: Arc<Cluster>, mut events: mpsc::UnboundedReceiver<TransportEvent>) {
    while let Some(ev) = events.recv().await {
        c.on_event(ev);
    }
}
