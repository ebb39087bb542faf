//! The simulated network: every Raft message a driver sends is queued with
//! a seeded delay (so messages are reordered), lost with a seeded
//! probability, and dropped while either end is cut off (or the receiver
//! is deaf: a one-way failure); the simulation
//! delivers what is due at each step.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use raftblock_consensus::transport::{Envelope, OutgoingEnvelope};
use raftblock_consensus::RaftNetwork;

/// A message on its way.
pub struct InFlight {
    pub from: u64,
    pub to: u64,
    pub env: Envelope,
}

struct State {
    rng: StdRng,
    /// `(due at µs, sequence)` -> message.
    queue: BTreeMap<(u64, u64), InFlight>,
    seq: u64,
    now_us: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Messages take between 0 and this long.
    pub max_delay_us: u64,
    /// Nodes cut off from everyone.
    cut: HashSet<u64>,
    /// Nodes that send but hear nothing (a one-way link failure).
    deaf: HashSet<u64>,
    raft_sent: u64,
    sent: u64,
    lost: u64,
}

/// The network all simulated nodes share.
pub struct SimNet {
    state: Mutex<State>,
}

impl SimNet {
    pub fn new(seed: u64) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                queue: BTreeMap::new(),
                seq: 0,
                now_us: 0,
                loss: 0.0,
                max_delay_us: 2_000,
                cut: HashSet::new(),
                deaf: HashSet::new(),
                raft_sent: 0,
                sent: 0,
                lost: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how lossy and slow the network is.
    pub fn set_quality(&self, loss: f64, max_delay_us: u64) {
        let mut s = self.lock();
        s.loss = loss;
        s.max_delay_us = max_delay_us.max(1);
    }

    /// Cuts `node` off (true) or heals it (false).
    pub fn set_cut(&self, node: u64, cut: bool) {
        let mut s = self.lock();
        if cut {
            s.cut.insert(node);
        } else {
            s.cut.remove(&node);
        }
    }

    /// Makes `node` hear nothing (true) or hear again (false).
    pub fn set_deaf(&self, node: u64, deaf: bool) {
        let mut s = self.lock();
        if deaf {
            s.deaf.insert(node);
        } else {
            s.deaf.remove(&node);
        }
    }

    /// Messages due by `now_us`, in delivery order.
    pub fn due(&self, now_us: u64) -> Vec<InFlight> {
        let mut s = self.lock();
        s.now_us = now_us;
        let later = s.queue.split_off(&(now_us + 1, 0));
        let due = std::mem::replace(&mut s.queue, later);
        due.into_values()
            .filter(|m| {
                !s.cut.contains(&m.from) && !s.cut.contains(&m.to) && !s.deaf.contains(&m.to)
            })
            .collect()
    }

    /// Queues a ping from `from` to `to` (nodes ping each other so their
    /// drivers know who is up while every group sleeps).
    pub fn ping(&self, from: u64, to: u64) {
        let env = Envelope {
            group: PING,
            message: bytes::Bytes::new(),
        };
        self.push(from, to, env);
    }

    /// Raft messages (not pings) sent so far.
    pub fn raft_sent(&self) -> u64 {
        self.lock().raft_sent
    }

    /// `(sent, lost)` so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.sent, s.lost)
    }

    fn push(&self, from: u64, to: u64, env: Envelope) {
        let mut s = self.lock();
        s.sent += 1;
        if env.group != PING {
            s.raft_sent += 1;
        }
        if s.cut.contains(&from) || s.cut.contains(&to) {
            s.lost += 1;
            return;
        }
        let loss = s.loss;
        if loss > 0.0 && s.rng.gen_bool(loss) {
            s.lost += 1;
            return;
        }
        let max = s.max_delay_us;
        let at = s.now_us + s.rng.gen_range(0..max);
        s.seq += 1;
        let seq = s.seq;
        s.queue.insert((at, seq), InFlight { from, to, env });
    }
}

/// The group id a ping travels under (no group has it).
pub const PING: u64 = u64::MAX;

/// One node's end of the simulated network.
pub struct NodeNet {
    pub net: Arc<SimNet>,
    pub me: u64,
}

impl RaftNetwork for NodeNet {
    fn send(&self, to: u64, env: OutgoingEnvelope) {
        self.net.push(self.me, to, env.to_envelope());
    }

    fn add_peer(&self, _node: u64, _addr: SocketAddr) {}
}
