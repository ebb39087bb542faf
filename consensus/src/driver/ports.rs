//! What the driver reaches outside itself, behind small traits: the network
//! its Raft messages go out on and the clock its ticks, leases and log ages
//! are measured by. The node uses the TCP transport and the system clock;
//! the deterministic simulation (`consensus/tests/simulation.rs`) plugs in
//! a seeded network and a clock it advances itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::transport::{OutgoingEnvelope, Transport};

/// Where Raft messages go.
pub trait RaftNetwork: Send + Sync {
    /// Queues `env` for node `to` (never blocks; a dead peer drops it).
    fn send(&self, to: u64, env: OutgoingEnvelope);
    /// Learns where node `node` listens.
    fn add_peer(&self, node: u64, addr: SocketAddr);
}

impl RaftNetwork for Transport {
    fn send(&self, to: u64, env: OutgoingEnvelope) {
        Transport::send(self, to, env)
    }

    fn add_peer(&self, node: u64, addr: SocketAddr) {
        Transport::add_peer(self, node, addr)
    }
}

/// The driver's now.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for simulations): a fixed origin
/// plus the time advanced so far.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    micros: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            origin: Instant::now(),
            micros: AtomicU64::new(0),
        }
    }
}

impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.micros
            .fetch_add(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Time advanced since the origin.
    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }
}
