//! A deterministic simulation of the consensus layer: three nodes in one
//! process, each the real driver with its real WAL, chunk store, apply
//! tasks, compaction, catch-up by staged copy and leases, talking over a
//! simulated network under a simulated clock. A seed decides everything
//! the simulation adds: message loss, delay and reordering, partitions,
//! crashes and restarts, the clients' writes and reads, and the log
//! retention (none, to force catch-up by copy, or the default). The
//! oracle (`oracle`) checks every read as it completes and every replica
//! at the end.

mod clients;
mod faults;
pub mod net;
pub mod node;
pub mod oracle;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use raftblock_consensus::apply::Settling;
use raftblock_consensus::command::ShardCommand;
use raftblock_consensus::driver::DriverMsg;
use raftblock_consensus::meta::shard_group;
use raftblock_consensus::{
    DriverConfig, LogWriterMode, ManualClock, MetaCommand, NodeInfo, ReplicaError, META_GROUP,
};
use raftblock_storage::{LocalVolume, ReadSegment, VolumeIo};

use net::SimNet;
use node::SimNode;
use oracle::{Oracle, BLOCK};

const NODES: u64 = 3;
const VOLUME: &str = "sim";
const CHUNK: u64 = 1 << 20;
const SIZE: u64 = 4 * CHUNK;
/// Blocks the clients use in each chunk.
const BLOCKS_PER_CHUNK: u64 = 6;
const STEP: Duration = Duration::from_millis(1);

/// How long to simulate.
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Milliseconds of faults and load.
    pub fault_ms: u64,
    /// Milliseconds allowed to converge afterwards.
    pub settle_ms: u64,
}

/// What one seed did.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub acked: u64,
    pub unknown: u64,
    pub reads: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub transfers: u64,
    /// Seeds run without log retention (every catch-up by copy).
    pub no_retention: u64,
    pub messages: u64,
    pub lost: u64,
    /// Bytes the final replicas applied by leaving them in the log.
    pub logged: u64,
    /// ... and later moved into their chunk files.
    pub settled: u64,
}

enum Op {
    Write {
        offset: u64,
        version: u64,
        rx: oneshot::Receiver<Result<(), ReplicaError>>,
        started: u64,
    },
    Read {
        offset: u64,
        node: u64,
        floor: u64,
        rx: oneshot::Receiver<Result<(), ReplicaError>>,
        started: u64,
    },
}

struct Sim {
    rng: StdRng,
    net: Arc<SimNet>,
    clock: Arc<ManualClock>,
    nodes: Vec<SimNode>,
    now_ms: u64,
    oracle: Oracle,
    ops: Vec<Op>,
    /// node -> when it comes back / is healed.
    down_until: HashMap<u64, u64>,
    cut_until: HashMap<u64, u64>,
    deaf_until: HashMap<u64, u64>,
    stats: SimStats,
    volume_id: u64,
}

fn read_block(v: &LocalVolume, offset: u64) -> Vec<u8> {
    let len = oracle::block_len(offset);
    let segs = poll_once(v.read(offset, len as u64))
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(len);
    for s in segs {
        match s {
            ReadSegment::Data(d) => out.extend_from_slice(&d),
            ReadSegment::Hole(n) => out.resize(out.len() + n as usize, 0),
        }
    }
    out
}

/// Polls a future that completes without waiting (the inline engine).
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(fut).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

impl Sim {
    /// With no clients every group falls asleep (no Raft message for a
    /// second, only pings); crashing a leader's node then wakes the other
    /// replicas, which elect a new leader that takes a write.
    fn sleep_and_wake(&mut self) -> Result<(), String> {
        for _ in 0..1_500 {
            self.step();
        }
        let before = self.net.raft_sent();
        for _ in 0..1_000 {
            self.step();
        }
        let sent = self.net.raft_sent() - before;
        if sent > 0 {
            return Err(format!(
                "{sent} raft messages in a second with no clients: groups did not hibernate"
            ));
        }
        let group = shard_group(self.volume_id, 0);
        let leader = self.nodes[0]
            .view()
            .and_then(|v| v.leader(group))
            .ok_or("no leader known for shard 0")?;
        self.node(leader).crash();
        let data =
            ShardCommand::write(self.volume_id, 0, 0, Bytes::from(vec![7u8; BLOCK])).encode_bytes();
        let start = self.now_ms;
        while self.now_ms - start < 5_000 {
            for _ in 0..50 {
                self.step();
            }
            let Some(to) = self.up().into_iter().find(|n| {
                self.nodes[(*n - 1) as usize]
                    .view()
                    .and_then(|v| v.leader(group))
                    .is_some_and(|l| l == *n)
            }) else {
                continue;
            };
            let Some(mut rx) = self.propose(to, group, data.clone()) else {
                continue;
            };
            for _ in 0..200 {
                self.step();
                if let Ok(r) = rx.try_recv() {
                    if r.is_ok() {
                        return Ok(());
                    }
                    break;
                }
            }
        }
        Err(format!(
            "with node {leader} crashed while its groups slept, shard 0 took no write within 5 s"
        ))
    }

    fn up(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    fn node(&mut self, id: u64) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// One millisecond: deliver, turn every node, move time.
    fn step(&mut self) {
        self.now_ms += 1;
        self.clock.advance(STEP);
        for n in &self.nodes {
            n.advance(STEP);
        }
        if self.now_ms.is_multiple_of(100) {
            for from in 1..=NODES {
                for to in (1..=NODES).filter(|to| *to != from) {
                    if self.nodes[(from - 1) as usize].is_up() {
                        self.net.ping(from, to);
                    }
                }
            }
        }
        for m in self.net.due(self.now_ms * 1000) {
            if let Some(h) = self.nodes[(m.to - 1) as usize].handle() {
                let envelopes = if m.env.group == net::PING {
                    Vec::new()
                } else {
                    vec![m.env]
                };
                h.send(DriverMsg::Raft {
                    from: m.from,
                    envelopes,
                });
            }
        }
        let sources: HashMap<u64, Arc<LocalVolume>> = self
            .nodes
            .iter()
            .filter_map(|n| n.volume(VOLUME).map(|v| (n.id, v)))
            .collect();
        for n in self.nodes.iter_mut() {
            // Most turns the log writer keeps up; some it falls behind by
            // a round or more (a slow fdatasync), so acks, votes and
            // commits wait on the disk in ever different interleavings.
            let persist = match self.rng.gen_range(0..10) {
                0..=5 => usize::MAX,
                6..=7 => 1,
                _ => 0,
            };
            n.turn(&sources, persist);
        }
    }

    /// The node some live node believes leads `group`, else a random live one.
    fn guess_leader(&mut self, group: u64) -> Option<u64> {
        let up = self.up();
        if up.is_empty() {
            return None;
        }
        let asked = up[self.rng.gen_range(0..up.len())];
        let believed = self.nodes[(asked - 1) as usize]
            .view()
            .and_then(|v| v.leader(group))
            .filter(|l| up.contains(l));
        Some(believed.unwrap_or(asked))
    }

    fn propose(
        &mut self,
        node: u64,
        group: u64,
        data: Bytes,
    ) -> Option<oneshot::Receiver<Result<(), ReplicaError>>> {
        let (reply, rx) = oneshot::channel();
        let h = self.node(node).handle()?.clone();
        h.send(DriverMsg::Propose { group, data, reply });
        Some(rx)
    }

    /// Whether every group's replicas have applied all their leader has.
    fn converged(&mut self) -> bool {
        let statuses: Vec<_> = self.nodes.iter_mut().map(|n| n.status()).collect();
        let mut groups: Vec<u64> = statuses.iter().flatten().map(|s| s.group).collect();
        groups.sort_unstable();
        groups.dedup();
        groups.iter().all(|g| {
            let mine: Vec<_> = statuses
                .iter()
                .filter_map(|ss| ss.iter().find(|s| s.group == *g))
                .collect();
            let Some(leader) = mine.iter().find(|s| s.role == "leader") else {
                return false;
            };
            mine.len() == NODES as usize
                && mine
                    .iter()
                    .all(|s| s.applied == leader.commit && s.last_index == leader.last_index)
        })
    }

    /// Proposes a metadata command through whichever node leads the meta group.
    fn meta(&mut self, cmd: MetaCommand) -> Result<(), String> {
        let data = Bytes::from(cmd.encode());
        for _ in 0..20_000 {
            let Some(node) = self.guess_leader(META_GROUP) else {
                return Err("no node up".into());
            };
            let Some(mut rx) = self.propose(node, META_GROUP, data.clone()) else {
                continue;
            };
            for _ in 0..3_000 {
                self.step();
                match rx.try_recv() {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(ReplicaError::Meta(e))) => return Err(e.to_string()),
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => break,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
        }
        Err(format!("metadata command not applied: {cmd:?}"))
    }
}

/// Runs one seed in `dir`; an error says what the oracle caught.
pub fn run(seed: u64, opts: SimOptions, dir: &Path) -> Result<SimStats, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let snapshots = rng.gen_bool(0.5);
    // Half the seeds settle logged blocks within moments, so settling,
    // and crashes around it, happen while clients write.
    let quick_settling = rng.gen_bool(0.5);
    let clock = Arc::new(ManualClock::default());
    let net = SimNet::new(seed);
    let nodes = (1..=NODES)
        .map(|id| {
            let mut cfg = DriverConfig::new(id);
            cfg.tick = Duration::from_millis(10);
            // Distinct timeouts, so simultaneous candidacies do not repeat.
            cfg.election_ticks = 10 + 3 * id as usize;
            cfg.heartbeat_ticks = 2;
            cfg.fixed_election_timeout = true;
            cfg.bootstrap = Some(vec![1, 2, 3]);
            cfg.request_timeout = Duration::from_secs(2);
            cfg.handback_quiet = Duration::from_millis(800);
            // The log is written when the seed says (`step`), not at once.
            cfg.log_writer = LogWriterMode::Deferred;
            if snapshots {
                cfg.log_keep = Duration::ZERO;
            }
            if quick_settling {
                cfg.settling = Settling {
                    node_log_budget: 4 << 20,
                    keep_under_pressure: 1 << 20,
                    max_age: Duration::from_millis(300),
                    idle: Duration::from_millis(100),
                };
            }
            SimNode::new(id, dir.join(format!("node{id}")), cfg)
        })
        .collect();
    let mut sim = Sim {
        rng,
        net,
        clock,
        nodes,
        now_ms: 0,
        oracle: Oracle::default(),
        ops: Vec::new(),
        down_until: HashMap::new(),
        cut_until: HashMap::new(),
        deaf_until: HashMap::new(),
        stats: SimStats {
            no_retention: u64::from(snapshots),
            ..SimStats::default()
        },
        volume_id: 0,
    };
    for id in 1..=NODES {
        let (net, clock) = (sim.net.clone(), sim.clock.clone());
        sim.node(id).start(&net, &clock, &[1, 2, 3]);
    }
    for id in 1..=NODES {
        sim.meta(MetaCommand::PutNode(NodeInfo {
            id,
            raft_addr: ([127, 0, 0, 1], 9).into(),
            nbd_addr: None,
            admin_addr: None,
            labels: Default::default(),
        }))?;
    }
    sim.meta(MetaCommand::CreateVolume {
        name: VOLUME.into(),
        size: SIZE,
        chunk_size: CHUNK,
        replicas: 3,
        shards: vec![vec![1, 2, 3], vec![2, 3, 1]],
        created_unix: 0,
        labels: Default::default(),
        rules: Default::default(),
    })?;
    // Until every node has the volume and both shards have leaders.
    for _ in 0..20_000 {
        sim.step();
        let ready = sim.nodes.iter().all(|n| n.volume(VOLUME).is_some())
            && sim.nodes[0].view().is_some_and(|v| {
                let id = v.meta().volumes.get(VOLUME).map_or(0, |r| r.meta.id);
                id != 0 && (0..2).all(|s| v.leader(shard_group(id, s)).is_some())
            });
        if ready {
            break;
        }
    }
    sim.volume_id = sim.nodes[0]
        .view()
        .and_then(|v| v.meta().volumes.get(VOLUME).map(|r| r.meta.id))
        .ok_or("the volume was not created")?;
    let start = sim.now_ms;
    while sim.now_ms - start < opts.fault_ms {
        sim.faults();
        sim.client_ops();
        sim.step();
        sim.poll_ops()?;
    }
    // Heal everything, bring everyone back, let the clients' last requests
    // finish and the replicas converge.
    sim.net.set_quality(0.0, 1_000);
    for n in 1..=NODES {
        sim.net.set_cut(n, false);
        sim.net.set_deaf(n, false);
    }
    sim.cut_until.clear();
    sim.deaf_until.clear();
    let down: Vec<u64> = sim.down_until.drain().map(|(n, _)| n).collect();
    for n in down {
        let (net, clock) = (sim.net.clone(), sim.clock.clone());
        sim.node(n).start(&net, &clock, &[1, 2, 3]);
    }
    let settle = sim.now_ms;
    loop {
        sim.step();
        sim.poll_ops()?;
        if sim.ops.is_empty() && sim.now_ms.is_multiple_of(50) && sim.converged() {
            break;
        }
        if sim.now_ms - settle > opts.settle_ms {
            return Err(format!(
                "the replicas did not converge within {} ms after the faults ended",
                opts.settle_ms
            ));
        }
    }
    // Let the apply tasks finish what they were handed.
    for _ in 0..200 {
        sim.step();
    }
    let vols: Vec<Arc<LocalVolume>> = sim
        .nodes
        .iter()
        .map(|n| n.volume(VOLUME).ok_or("a node lost the volume"))
        .collect::<Result<_, _>>()?;
    for (i, v) in vols.iter().enumerate() {
        sim.oracle
            .check_final(i as u64 + 1, |off| read_block(v, off))
            .map_err(|e| format!("final state: {e}"))?;
    }
    for chunk in 0..SIZE / CHUNK {
        let sums: Vec<_> = vols
            .iter()
            .map(|v| v.chunk_sums(chunk).ok().flatten())
            .collect();
        if sums.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!(
                "chunk {chunk}: the replicas' checksum tables differ"
            ));
        }
    }
    if seed.is_multiple_of(4) {
        sim.sleep_and_wake()?;
    }
    let (messages, lost) = sim.net.counts();
    sim.stats.acked = sim.oracle.acked;
    sim.stats.unknown = sim.oracle.unknown;
    sim.stats.reads = sim.oracle.reads;
    sim.stats.messages = messages;
    sim.stats.lost = lost;
    let total = |f: fn(&raftblock_storage::VolumeStats) -> u64| {
        vols.iter().map(|v| f(v.stats())).sum::<u64>()
    };
    sim.stats.logged = total(|s| s.logged_bytes.load(std::sync::atomic::Ordering::Relaxed));
    sim.stats.settled = total(|s| s.settled_bytes.load(std::sync::atomic::Ordering::Relaxed));
    let _ = sim.oracle.offsets();
    Ok(sim.stats)
}
