//! The writer pool: [`WriterPool::start`] runs writer threads against any
//! set of NBD addresses, taking their blocks' histories out of an
//! [`Oracle`]; [`WriterPool::stop`] joins them and gives the histories
//! back, with the totals. Whoever drives the faults tells the pool about
//! them (so writers avoid a faulted node and failures are blamed on the
//! fault) and about moved ports. The chaos rounds keep one pool for the
//! whole run, the power-cut test starts one per cycle on the same oracle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::blocks::Workload;
use super::faults::{Blame, Timeline};
use super::lock;
use super::oracle::Oracle;
use super::report::{utc, IoEvent};
use super::writer::{writer, WriterResult};

/// When the last acknowledgement (of any writer) came, and the longest
/// window without one.
struct AckClock {
    last: Instant,
    longest: Duration,
    longest_end: Instant,
}

/// What the writers and whoever drives the faults share.
pub(super) struct Shared {
    pub(super) workload: Workload,
    pub(super) timeline: Timeline,
    /// NBD address per node (a restart may move a port).
    addrs: RwLock<Vec<SocketAddr>>,
    pub(super) stop: AtomicBool,
    pub(super) sent: AtomicU64,
    acked: AtomicU64,
    clock: Mutex<AckClock>,
    pub(super) events: Mutex<Vec<IoEvent>>,
    /// Longest acknowledged wait (ms) since the driver last reset it.
    pub(super) round_wait_ms: AtomicU64,
    pub(super) slow_writes: Mutex<Vec<String>>,
}

impl Shared {
    pub(super) fn nodes(&self) -> u64 {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).len() as u64
    }

    pub(super) fn addr(&self, node: u64) -> SocketAddr {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[(node - 1) as usize]
    }

    pub(super) fn acknowledged(&self, at: Instant) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        let mut c = lock(&self.clock);
        if at > c.last {
            let gap = at - c.last;
            if gap > c.longest {
                c.longest = gap;
                c.longest_end = at;
            }
            c.last = at;
        }
    }
}

/// What all writers of a pool did, once they stopped.
#[derive(Debug, Default)]
pub struct Totals {
    /// Writes sent.
    pub sent: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes answered with an NBD error.
    pub error_replies: u64,
    /// Writes whose connection died (or timed out) before a reply.
    pub lost: u64,
    /// New NBD connections after the first one per writer.
    pub reconnects: u64,
    /// Longest wait of one request for its acknowledgement, and where.
    pub longest_request: (Duration, String),
    /// Longest time one writer went without an acknowledgement, and where.
    pub longest_writer_gap: (Duration, String),
    /// Longest window in which no writer got any acknowledgement, and when.
    pub longest_no_ack: (Duration, String),
    /// Acknowledged writes that waited longer than 5 s, described.
    pub slow_writes: Vec<String>,
    /// Every NBD error reply and lost connection the writers saw.
    pub events: Vec<IoEvent>,
    /// Writers that panicked (their blocks' histories are lost).
    pub panicked: Vec<usize>,
}

/// Writer threads at work on one [`Workload`]; dropping the pool tells
/// them to stop (without waiting), [`WriterPool::stop`] waits for them.
pub struct WriterPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<WriterResult>>,
    started: SystemTime,
}

impl WriterPool {
    /// Starts `workload.writers` writers against the nodes at `addrs`
    /// (node `i + 1` at `addrs[i]`), taking their blocks' histories out of
    /// `oracle` until [`WriterPool::stop`]. `run` varies the writers'
    /// choices between pools of one oracle (0 for the first).
    pub fn start(
        workload: &Workload,
        addrs: Vec<SocketAddr>,
        oracle: &mut Oracle,
        run: u64,
    ) -> WriterPool {
        assert!(!addrs.is_empty(), "writers need a node");
        let t0 = Instant::now();
        let started = SystemTime::now();
        let shared = Arc::new(Shared {
            workload: workload.clone(),
            timeline: Timeline::new(t0, workload.grace),
            addrs: RwLock::new(addrs),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            clock: Mutex::new(AckClock {
                last: t0,
                longest: Duration::ZERO,
                longest_end: t0,
            }),
            events: Mutex::new(Vec::new()),
            round_wait_ms: AtomicU64::new(0),
            slow_writes: Mutex::new(Vec::new()),
        });
        let handles = (0..workload.writers)
            .map(|w| {
                let blocks = workload.blocks_of(w);
                let logs = oracle.take_for(workload, w);
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("chaos-writer-{w}"))
                    .spawn(move || writer(w, run, shared, blocks, logs))
                    .expect("spawn a writer thread")
            })
            .collect();
        WriterPool {
            shared,
            handles,
            started,
        }
    }

    /// When the writers started, as the daemon logs show time.
    pub fn started_utc(&self) -> String {
        utc(self.started)
    }

    /// Node `node` now serves NBD at `addr` (after a restart).
    pub fn set_addr(&self, node: u64, addr: SocketAddr) {
        self.shared.addrs.write().unwrap_or_else(|p| p.into_inner())[(node - 1) as usize] = addr;
    }

    /// A fault on `node` begins: writers avoid it, its failures are blamed on it.
    pub fn begin_fault(&self, node: u64, what: String) {
        self.shared.timeline.begin(node, what);
    }

    /// Every fault going on ends.
    pub fn end_fault(&self) {
        self.shared.timeline.end();
    }

    /// Writes sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// The longest acknowledged wait (ms) since the last call.
    pub fn take_longest_wait_ms(&self) -> u64 {
        self.shared.round_wait_ms.swap(0, Ordering::Relaxed)
    }

    /// Failed writes so far, and of those the ones not from a faulted node.
    pub fn failed_writes(&self) -> (usize, usize) {
        let events = lock(&self.shared.events);
        let healthy = events
            .iter()
            .filter(|e| e.blame != Blame::NodeFaulted)
            .count();
        (events.len(), healthy)
    }

    /// Stops the writers, waits for them and gives their blocks' histories
    /// back to `oracle`.
    pub fn stop(mut self, oracle: &mut Oracle) -> Totals {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut t = Totals::default();
        for (w, h) in std::mem::take(&mut self.handles).into_iter().enumerate() {
            match h.join() {
                Ok(r) => {
                    t.sent += r.sent;
                    t.acked += r.acked;
                    t.error_replies += r.error_replies;
                    t.lost += r.lost;
                    t.reconnects += r.reconnects;
                    if r.longest_request.0 > t.longest_request.0 {
                        t.longest_request = r.longest_request;
                    }
                    if r.longest_gap.0 > t.longest_writer_gap.0 {
                        t.longest_writer_gap =
                            (r.longest_gap.0, format!("writer {w}, {}", r.longest_gap.1));
                    }
                    oracle.give_back(r.logs);
                }
                Err(_) => t.panicked.push(w),
            }
        }
        let clock = lock(&self.shared.clock);
        t.longest_no_ack = (
            clock.longest,
            self.shared
                .timeline
                .describe(clock.longest_end - clock.longest, clock.longest_end),
        );
        t.events = lock(&self.shared.events).clone();
        t.slow_writes = lock(&self.shared.slow_writes).clone();
        t
    }
}

impl Drop for WriterPool {
    fn drop(&mut self) {
        // On a panic elsewhere: let the threads end on their own.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}
