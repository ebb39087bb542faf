//! Chaos with an acknowledged-write oracle. A 3-node cluster (node 3 in a
//! network namespace, so it can be cut off) takes one fault per round —
//! SIGKILL and restart, SIGSTOP and SIGCONT, or a partition of node 3 —
//! chosen by a seeded RNG, while writer threads keep overwriting their own
//! 4 KiB blocks over NBD through different nodes. Every block written
//! carries (seed, writer, block, version) and a checksum; the oracle keeps
//! per block the last acknowledged version and the versions sent after it
//! whose outcome is unknown (error reply, connection lost). At the end every
//! block is read back through every node and must hold one of those, never
//! anything older and never garbage, and the replicas' chunk files must be
//! identical. I/O errors from nodes that were healthy and in the majority
//! count as failures too. The bounded CI test (`tests/tests/chaos.rs`) and
//! long runs by hand (`raftblock-chaos --rounds N --seed S`) share this
//! engine; a failure names its seed so the fault schedule can be replayed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::cluster::{Netns, TestCluster};
use crate::nbd::RawNbd;
use crate::require_tool;

/// The export every writer uses.
const VOLUME: &str = "chaos";
/// Four 64 MiB chunks, one per shard, so shard leaders spread over nodes.
const VOLUME_SIZE: u64 = 256 << 20;
const SHARDS: u32 = 4;
const NODES: u64 = 3;
const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"RBCHAOS1";
/// Where the checksum (FNV-1a 64 of everything before it) sits in a block.
const SUM_AT: usize = BLOCK - 8;
/// Connect plus NBD handshake; a stopped node accepts in the kernel and
/// never greets, so this must be short.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may wait for its reply before the connection is
/// given up: twice the daemon's default `--leader-wait`, so only a real
/// hang hits it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A writer away from its own node tries to go back this often.
const HOME_RETRY: Duration = Duration::from_secs(2);
/// How far a replica may trail its leader and still count as caught up
/// between rounds (the writers never pause, so exact zero is rare).
const LAG_OK: u64 = 256;
/// Longest a round may take to get every shard led and caught up again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// Acknowledged write records kept per block for failure reports.
const RECENT_ACKS: usize = 4;
/// The daemon's default chunk size: chunk `c` belongs to shard `c % SHARDS`.
const CHUNK_SIZE: u64 = 64 << 20;
/// An acknowledged write that waited longer than this is listed.
const SLOW_WRITE: Duration = Duration::from_secs(5);

/// What one chaos run does.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds the fault schedule, the writers' choices and the block contents.
    pub seed: u64,
    /// Fault rounds.
    pub rounds: usize,
    /// Writer threads, at most 3: writer `w` starts on node `w + 1`.
    pub writers: usize,
    /// 4 KiB blocks each writer owns (spread over the whole volume).
    pub blocks_per_writer: u64,
    /// An I/O error from a healthy node up to this long after a fault
    /// ended is reported but tolerated.
    pub grace: Duration,
    /// Print a line per round as it ends.
    pub progress: bool,
}

impl Config {
    /// The defaults: 3 writers of 64 blocks each, no grace period.
    pub fn new(seed: u64, rounds: usize) -> Config {
        Config {
            seed,
            rounds,
            writers: 3,
            blocks_per_writer: 64,
            grace: Duration::ZERO,
            progress: true,
        }
    }
}

/// A seed for a fresh run (time and pid; printed, so it can be replayed).
pub fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    splitmix(&mut x)
}

/// The command that replays a run with the same fault schedule.
pub fn replay_command(cfg: &Config) -> String {
    format!(
        "cargo run -p raftblock-tests --bin raftblock-chaos -- --seed {} --rounds {}",
        cfg.seed, cfg.rounds
    )
}

/// The result of a run: what happened, and every violation found (each
/// line names the seed).
#[derive(Debug)]
pub struct Outcome {
    /// Counts and timings.
    pub report: Report,
    /// Lost or stale writes, garbage, diverging replicas, I/O errors from
    /// healthy nodes, a cluster that did not recover. Empty on success.
    pub problems: Vec<String>,
}

/// Counts and timings of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Fault rounds completed.
    pub rounds: usize,
    /// Wall time from the writers' start to the end of the checks.
    pub elapsed: Duration,
    /// When the writers started (the `+N s` times count from here), as
    /// the daemon logs show time.
    pub started_utc: String,
    /// Where the daemons' logs were saved.
    pub logs_dir: String,
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
    /// Blocks written at least once / blocks checked through each node.
    pub blocks_written: usize,
    /// Blocks read back through each node.
    pub blocks_checked: usize,
    /// Of those, blocks every node returned at their last acknowledged
    /// version, at a later version of unknown outcome, and as never written.
    pub read_back: (usize, usize, usize),
    /// Longest wait of one request for its acknowledgement, and where.
    pub longest_request: (Duration, String),
    /// Longest time one writer went without an acknowledgement
    /// (reconnects included), and where.
    pub longest_writer_gap: (Duration, String),
    /// Longest window in which no writer got any acknowledgement, and when.
    pub longest_no_ack: (Duration, String),
    /// Longest time from the end of a fault until every shard was led and
    /// caught up again.
    pub longest_recovery: Duration,
    /// Acknowledged writes that waited longer than 5 s, described.
    pub slow_writes: Vec<String>,
    /// Faults injected, by kind and by the target's role.
    pub faults: BTreeMap<String, usize>,
    /// Every NBD error reply and lost connection the writers saw.
    pub events: Vec<IoEvent>,
}

/// One failed write as a writer saw it.
#[derive(Clone, Debug)]
pub struct IoEvent {
    /// Writer thread.
    pub writer: usize,
    /// The node it was connected to.
    pub node: u64,
    /// `errno 5`, `connection lost: ...`, `protocol: ...`.
    pub what: String,
    /// Whether it was an error reply, a lost connection or a protocol
    /// violation.
    pub kind: EventKind,
    /// How the faults at the time excuse it.
    pub blame: Blame,
    /// Time since the most recent fault ended (None during a fault or
    /// before the first one).
    pub since_fault_end: Option<Duration>,
    /// When the request was sent, from the writers' start.
    pub at: Duration,
    /// The fault it is attributed to, if any.
    pub fault: Option<String>,
}

/// The kinds of failed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// An NBD error reply.
    ErrorReply,
    /// The connection died or the reply did not come within the I/O timeout.
    Lost,
    /// The server broke the protocol (bad magic, wrong handle).
    Protocol,
}

/// Whose fault a failed write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blame {
    /// The node the writer used was itself killed, stopped or cut off
    /// while the request was out.
    NodeFaulted,
    /// The node was healthy and in the majority; another node was faulted.
    DuringOtherFault,
    /// No fault at the time, but one ended within the grace period.
    Grace,
    /// No fault at the time, nor within the grace period before.
    Quiet,
}

/// The fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL, then restart on the same data.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Stop,
    /// Node 3's link down, then up.
    Partition,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Partition => "partition",
        })
    }
}

// ---------------------------------------------------------------------------
// Block contents.

/// Who wrote a block's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    seed: u64,
    writer: u32,
    block: u64,
    version: u64,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The 4 KiB a stamp stands for: header, filler derived from the stamp (so
/// a torn or shifted block cannot pass as another version), checksum.
fn encode(s: Stamp) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[0..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&s.seed.to_le_bytes());
    b[16..20].copy_from_slice(&s.writer.to_le_bytes());
    b[20..28].copy_from_slice(&s.block.to_le_bytes());
    b[28..36].copy_from_slice(&s.version.to_le_bytes());
    let mut x = s.seed
        ^ s.block.rotate_left(17)
        ^ s.version.rotate_left(41)
        ^ u64::from(s.writer).rotate_left(7);
    for chunk in b[36..SUM_AT].chunks_mut(8) {
        let v = splitmix(&mut x).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let sum = fnv1a(&b[..SUM_AT]);
    b[SUM_AT..].copy_from_slice(&sum.to_le_bytes());
    b
}

/// What a read of a block returned, as far as the oracle is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// All zeroes: never written.
    Zero,
    /// A version this block's writer wrote.
    Version(u64),
    /// Anything else, described.
    Garbage(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Zero => f.write_str("zeroes"),
            Seen::Version(v) => write!(f, "version {v}"),
            Seen::Garbage(g) => write!(f, "garbage ({g})"),
        }
    }
}

/// Decodes what was read from `want`'s block (its version is ignored).
fn decode(data: &[u8], want: Stamp) -> Seen {
    if data.len() != BLOCK {
        return Seen::Garbage(format!("{} bytes instead of {BLOCK}", data.len()));
    }
    if data.iter().all(|b| *b == 0) {
        return Seen::Zero;
    }
    if &data[0..8] != MAGIC {
        return Seen::Garbage(format!("no block header, starts {:02x?}", &data[..16]));
    }
    let got = Stamp {
        seed: le64(&data[8..16]),
        writer: u32::from_le_bytes([data[16], data[17], data[18], data[19]]),
        block: le64(&data[20..28]),
        version: le64(&data[28..36]),
    };
    if fnv1a(&data[..SUM_AT]) != le64(&data[SUM_AT..]) {
        return Seen::Garbage(format!(
            "checksum mismatch; header says seed {} writer {} block {} version {}",
            got.seed, got.writer, got.block, got.version
        ));
    }
    if (got.seed, got.writer, got.block) != (want.seed, want.writer, want.block) {
        return Seen::Garbage(format!(
            "holds seed {} writer {} block {} version {} (misplaced)",
            got.seed, got.writer, got.block, got.version
        ));
    }
    if encode(got) != data {
        return Seen::Garbage(format!(
            "header and checksum of version {} but other contents",
            got.version
        ));
    }
    Seen::Version(got.version)
}

// ---------------------------------------------------------------------------
// The oracle.

/// How one write ended.
#[derive(Clone, Debug)]
enum WriteEnd {
    Acked,
    Errno(u32),
    Lost(String),
}

/// One write, for the report of a violation.
#[derive(Clone, Debug)]
struct WriteRecord {
    version: u64,
    node: u64,
    /// Wall clock, to find the daemons' log lines of the time.
    sent_wall: SystemTime,
    /// From the writers' start.
    at: Duration,
    took: Duration,
    end: WriteEnd,
}

impl fmt::Display for WriteRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match &self.end {
            WriteEnd::Acked => "acknowledged".to_string(),
            WriteEnd::Errno(e) => format!("error reply errno {e}"),
            WriteEnd::Lost(e) => format!("connection lost ({e})"),
        };
        write!(
            f,
            "v{} via node {} sent at +{:.3} s, {end} after {} ms",
            self.version,
            self.node,
            self.at.as_secs_f64(),
            self.took.as_millis()
        )
    }
}

/// What the oracle knows of one block.
#[derive(Clone, Debug, Default)]
struct BlockLog {
    /// Highest version sent.
    sent: u64,
    /// Last acknowledged version.
    acked: Option<u64>,
    /// Versions sent after `acked` whose outcome is unknown.
    unknown: Vec<u64>,
    /// Every write that was not acknowledged (rare: faults only).
    unacked: Vec<WriteRecord>,
    /// The last few acknowledged writes.
    recent: VecDeque<WriteRecord>,
}

impl BlockLog {
    fn record(&mut self, r: WriteRecord) {
        match r.end {
            WriteEnd::Acked => {
                // Everything sent before it is now older than the last
                // acknowledged version: no longer an acceptable outcome.
                self.acked = Some(r.version);
                self.unknown.clear();
                if self.recent.len() == RECENT_ACKS {
                    self.recent.pop_front();
                }
                self.recent.push_back(r);
            }
            _ => {
                self.unknown.push(r.version);
                self.unacked.push(r);
            }
        }
    }

    fn find(&self, version: u64) -> Option<&WriteRecord> {
        self.recent
            .iter()
            .chain(self.unacked.iter())
            .find(|r| r.version == version)
    }

    /// Whether a read may return `seen`: the last acknowledged version or a
    /// later one of unknown outcome (zeroes only if nothing was acknowledged).
    fn judge(&self, seen: &Seen) -> Result<(), String> {
        let v = match seen {
            Seen::Garbage(g) => return Err(format!("garbage: {g}")),
            Seen::Zero => {
                return match self.acked {
                    None => Ok(()),
                    Some(a) => Err(format!(
                        "LOST WRITE: reads as never written, but version {a} was acknowledged"
                    )),
                }
            }
            Seen::Version(v) => *v,
        };
        if self.acked == Some(v) || self.unknown.contains(&v) {
            return Ok(());
        }
        if v > self.sent {
            return Err(format!(
                "version {v} was never sent (highest sent {})",
                self.sent
            ));
        }
        match self.acked {
            Some(a) if v < a => Err(format!(
                "STALE: version {v}, older than the last acknowledged version {a}"
            )),
            _ => Err(format!(
                "version {v} is neither the last acknowledged ({:?}) nor a later one of \
                 unknown outcome ({:?})",
                self.acked, self.unknown
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// State the fault driver and the writers share.

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One fault, from just before it was injected until it was undone (for a
/// kill: until the restarted daemon answered again).
#[derive(Clone, Debug)]
struct Span {
    node: u64,
    start: Instant,
    end: Option<Instant>,
    what: String,
}

/// When the last acknowledgement (of any writer) came, and the longest
/// window without one.
struct AckClock {
    last: Instant,
    longest: Duration,
    longest_end: Instant,
}

/// What the fault driver and the writers share.
struct Shared {
    seed: u64,
    /// When the writers started; report times count from here.
    t0: Instant,
    grace: Duration,
    /// NBD address per node (a restart may move a port).
    addrs: RwLock<Vec<SocketAddr>>,
    spans: Mutex<Vec<Span>>,
    stop: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    clock: Mutex<AckClock>,
    events: Mutex<Vec<IoEvent>>,
    /// Longest acknowledged wait (ms) since the driver last reset it.
    round_wait_ms: AtomicU64,
    slow_writes: Mutex<Vec<String>>,
}

impl Shared {
    fn addr(&self, node: u64) -> SocketAddr {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[(node - 1) as usize]
    }

    fn faulted_now(&self, node: u64) -> bool {
        lock(&self.spans)
            .iter()
            .any(|s| s.node == node && s.end.is_none())
    }

    fn begin_fault(&self, node: u64, what: String) {
        lock(&self.spans).push(Span {
            node,
            start: Instant::now(),
            end: None,
            what,
        });
    }

    fn end_fault(&self) {
        let now = Instant::now();
        for s in lock(&self.spans).iter_mut().filter(|s| s.end.is_none()) {
            s.end = Some(now);
        }
    }

    /// Who is to blame for a request to `node` sent at `sent` that failed
    /// at `failed`; also the time since the last fault ended, and which
    /// fault it is attributed to.
    fn blame(
        &self,
        node: u64,
        sent: Instant,
        failed: Instant,
    ) -> (Blame, Option<Duration>, Option<String>) {
        let spans = lock(&self.spans);
        let overlaps = |s: &&Span| s.start <= failed && s.end.is_none_or(|e| e >= sent);
        if let Some(s) = spans.iter().filter(|s| s.node == node).find(overlaps) {
            return (Blame::NodeFaulted, None, Some(s.what.clone()));
        }
        if let Some(s) = spans
            .iter()
            .find(|s| s.start <= failed && s.end.is_none_or(|e| e >= failed))
        {
            return (Blame::DuringOtherFault, None, Some(s.what.clone()));
        }
        let last = spans
            .iter()
            .filter_map(|s| s.end.filter(|e| *e <= failed).map(|e| (e, s)))
            .max_by_key(|(e, _)| *e);
        match last {
            Some((e, s)) => {
                let since = failed - e;
                let blame = if since <= self.grace {
                    Blame::Grace
                } else {
                    Blame::Quiet
                };
                (blame, Some(since), Some(s.what.clone()))
            }
            None => (Blame::Quiet, None, None),
        }
    }

    /// The time from `from` to `to` and the faults during it, for the
    /// stall report.
    fn describe(&self, from: Instant, to: Instant) -> String {
        let spans = lock(&self.spans);
        let during: Vec<&str> = spans
            .iter()
            .filter(|s| s.start <= to && s.end.is_none_or(|e| e >= from))
            .map(|s| s.what.as_str())
            .collect();
        let at = format!(
            "+{:.1}..+{:.1} s",
            from.saturating_duration_since(self.t0).as_secs_f64(),
            to.saturating_duration_since(self.t0).as_secs_f64()
        );
        if during.is_empty() {
            format!("{at}, no fault")
        } else {
            format!("{at}, during {}", during.join("; "))
        }
    }

    fn acknowledged(&self, at: Instant) {
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

// ---------------------------------------------------------------------------
// Writers.

/// Byte offset of block `b` of `total`: spread evenly over the volume, so
/// every writer's blocks fall into every chunk and shard.
fn block_offset(b: u64, total: u64) -> u64 {
    let stride = (VOLUME_SIZE / BLOCK as u64) / total;
    b * stride * BLOCK as u64
}

#[derive(Default)]
struct WriterResult {
    logs: BTreeMap<u64, BlockLog>,
    sent: u64,
    acked: u64,
    error_replies: u64,
    lost: u64,
    reconnects: u64,
    longest_request: (Duration, String),
    longest_gap: (Duration, String),
}

fn connect(shared: &Shared, node: u64) -> Option<RawNbd> {
    RawNbd::connect_timeout(shared.addr(node), VOLUME, CONNECT_TIMEOUT, IO_TIMEOUT).ok()
}

/// A connection to `home` if it is up, else to another node that is.
fn connect_any(shared: &Shared, home: u64) -> Option<(u64, RawNbd)> {
    (0..NODES)
        .map(|i| (home - 1 + i) % NODES + 1)
        .filter(|n| !shared.faulted_now(*n))
        .find_map(|n| connect(shared, n).map(|c| (n, c)))
}

fn writer(id: usize, shared: Arc<Shared>, blocks: Vec<(u64, u64)>) -> WriterResult {
    let mut rng =
        StdRng::seed_from_u64(shared.seed ^ 0x5851_f42d_4c95_7f2d_u64.wrapping_mul(id as u64 + 1));
    let home = id as u64 % NODES + 1;
    let mut out = WriterResult::default();
    let mut conn: Option<(u64, RawNbd)> = None;
    let mut connections = 0u64;
    let mut last_home_try = Instant::now();
    let mut last_ack = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        // Back to its own node once that is up again, so every node keeps
        // serving a writer.
        if let Some((n, _)) = &conn {
            if *n != home && last_home_try.elapsed() >= HOME_RETRY && !shared.faulted_now(home) {
                last_home_try = Instant::now();
                if let Some(c) = connect(&shared, home) {
                    conn = Some((home, c));
                    connections += 1;
                }
            }
        }
        let (node, nbd) = match &mut conn {
            Some((n, c)) => (*n, c),
            None => {
                match connect_any(&shared, home) {
                    Some(c) => {
                        conn = Some(c);
                        connections += 1;
                        last_home_try = Instant::now();
                    }
                    None => std::thread::sleep(Duration::from_millis(100)),
                }
                continue;
            }
        };
        let (block, offset) = blocks[rng.gen_range(0..blocks.len())];
        let log = out.logs.entry(block).or_default();
        log.sent += 1;
        let stamp = Stamp {
            seed: shared.seed,
            writer: id as u32,
            block,
            version: log.sent,
        };
        let data = encode(stamp);
        out.sent += 1;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let sent_wall = SystemTime::now();
        let sent = Instant::now();
        let r = nbd.write(offset, &data, false);
        let done = Instant::now();
        let took = done - sent;
        let at = sent - shared.t0;
        // Only I/O errors mean the connection went away; anything else is
        // the server breaking the protocol.
        let (end, failed) = match r {
            Ok(0) => (WriteEnd::Acked, None),
            Ok(errno) => (
                WriteEnd::Errno(errno),
                Some((EventKind::ErrorReply, format!("errno {errno}"))),
            ),
            Err(e) if e.chain().any(|c| c.is::<std::io::Error>()) => (
                WriteEnd::Lost(format!("{e:#}")),
                Some((EventKind::Lost, format!("connection lost: {e:#}"))),
            ),
            Err(e) => (
                WriteEnd::Lost(format!("{e:#}")),
                Some((EventKind::Protocol, format!("protocol: {e:#}"))),
            ),
        };
        if let Some((kind, what)) = failed {
            let (blame, since_fault_end, fault) = shared.blame(node, sent, done);
            lock(&shared.events).push(IoEvent {
                writer: id,
                node,
                what,
                kind,
                blame,
                since_fault_end,
                at,
                fault,
            });
            match kind {
                EventKind::ErrorReply => {
                    out.error_replies += 1;
                    // The node is up but could not do it; do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    out.lost += 1;
                    conn = None;
                }
            }
        } else {
            out.acked += 1;
            shared.acknowledged(done);
            let gap = done - last_ack;
            if gap > out.longest_gap.0 {
                out.longest_gap = (gap, shared.describe(last_ack, done));
            }
            last_ack = done;
            shared
                .round_wait_ms
                .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
            if took > SLOW_WRITE {
                lock(&shared.slow_writes).push(format!(
                    "{} ms: writer {id} block {block} (shard {}) via node {node}, sent {}, {}",
                    took.as_millis(),
                    offset / CHUNK_SIZE % u64::from(SHARDS),
                    utc(sent_wall),
                    shared.describe(sent, done)
                ));
            }
            if took > out.longest_request.0 {
                out.longest_request = (
                    took,
                    format!(
                        "writer {id} via node {node}, {}",
                        shared.describe(sent, done)
                    ),
                );
            }
        }
        log.record(WriteRecord {
            version: stamp.version,
            node,
            sent_wall,
            at,
            took,
            end,
        });
    }
    out.reconnects = connections.saturating_sub(1);
    out
}

// ---------------------------------------------------------------------------
// Faults and recovery.

/// Leader per shard of the volume (0: none).
fn shard_leaders(st: &Value) -> Vec<u64> {
    st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == VOLUME))
        .and_then(|v| v["shards"].as_array())
        .map(|s| {
            s.iter()
                .map(|s| s["leader"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// Every node up, every shard led, every replica within [`LAG_OK`].
fn healthy(st: &Value) -> bool {
    let nodes_up = st["nodes"]
        .as_array()
        .is_some_and(|n| n.len() == NODES as usize && n.iter().all(|n| n["up"] == true));
    let shards_ok = st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == VOLUME))
        .and_then(|v| v["shards"].as_array())
        .is_some_and(|shards| {
            shards.len() == SHARDS as usize
                && shards.iter().all(|s| {
                    s["leader"].as_u64().unwrap_or(0) != 0
                        && s["replicas"].as_array().is_some_and(|r| {
                            r.iter()
                                .all(|r| r["lag"].as_u64().is_some_and(|l| l <= LAG_OK))
                        })
                })
        });
    nodes_up && shards_ok
}

/// Waits until the cluster is [`healthy`]; how long that took, or the last
/// status seen.
fn wait_healthy(c: &mut TestCluster, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let st = c.status();
        if healthy(&st) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("{st:#}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a daemon this harness started.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// One round's fault, drawn before it is known which node leads what, so
/// the schedule (kinds, durations) replays exactly from the seed.
struct Draw {
    kind: FaultKind,
    want_leader: bool,
    shard: usize,
    other: usize,
    hold: Duration,
    quiet: Duration,
}

fn draw(rng: &mut StdRng) -> Draw {
    let kind = match rng.gen_range(0..3) {
        0 => FaultKind::Kill,
        1 => FaultKind::Stop,
        _ => FaultKind::Partition,
    };
    let want_leader = rng.gen_bool(0.5);
    let shard = rng.gen_range(0..SHARDS as usize);
    let other = rng.gen_range(0..2);
    let hold_ms = match kind {
        FaultKind::Kill => rng.gen_range(1000..=4000),
        FaultKind::Stop => rng.gen_range(1000..=3000),
        FaultKind::Partition => rng.gen_range(2000..=5000),
    };
    let quiet = Duration::from_millis(rng.gen_range(2000..=4000));
    Draw {
        kind,
        want_leader,
        shard,
        other,
        hold: Duration::from_millis(hold_ms),
        quiet,
    }
}

/// The node a drawn fault hits: node 3 for a partition (the only one in a
/// namespace), else the leader of the drawn shard or one of its followers.
fn target(d: &Draw, leaders: &[u64]) -> u64 {
    if d.kind == FaultKind::Partition {
        return NODES;
    }
    let leader = leaders.get(d.shard).copied().unwrap_or(0);
    if leader == 0 {
        return d.other as u64 + 1;
    }
    if d.want_leader {
        return leader;
    }
    let followers: Vec<u64> = (1..=NODES).filter(|n| *n != leader).collect();
    followers[d.other % followers.len()]
}

// ---------------------------------------------------------------------------
// Checks at the end.

/// Parses the RFC 3339 UTC timestamp a daemon log line starts with.
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !ts.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = ts.get(19..ts.len() - 1).unwrap_or("");
    let nanos = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.len() <= 9 => {
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
        _ => 0,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's
    // days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `t` as the daemons' log timestamps show it (RFC 3339 UTC, ms).
fn utc(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Each node's log lines from `from` to `to` (at most `max` per node).
fn log_excerpt(c: &TestCluster, from: SystemTime, to: SystemTime, max: usize) -> String {
    let mut out = String::new();
    for (i, d) in c.nodes.iter().enumerate() {
        let text = d.log_text();
        let mut lines = Vec::new();
        let mut inside = false;
        for l in text.lines() {
            // Continuation lines (no timestamp) follow the line before.
            if let Some(t) = log_time(l) {
                inside = t >= from && t <= to;
            }
            if inside {
                lines.push(l);
            }
        }
        out.push_str(&format!(
            "  --- node {} log ({} lines) ---\n",
            i + 1,
            lines.len()
        ));
        for l in lines.iter().take(max) {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        if lines.len() > max {
            out.push_str(&format!("  ... {} more\n", lines.len() - max));
        }
    }
    out
}

/// Copies every daemon log where it outlives the run; returns the directory.
fn save_logs(c: &TestCluster, seed: u64) -> String {
    let dir = std::env::temp_dir().join(format!("raftblock-chaos-{seed}"));
    let _ = std::fs::create_dir_all(&dir);
    for (i, d) in c.nodes.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("node{}.log", i + 1)), d.log_text());
    }
    dir.display().to_string()
}

/// Reads the block at `offset` through the NBD server at `addr`,
/// reconnecting once if the connection is gone.
fn read_block(conn: &mut Option<RawNbd>, addr: SocketAddr, offset: u64) -> Result<Vec<u8>, String> {
    for _ in 0..2 {
        if conn.is_none() {
            *conn = Some(
                RawNbd::connect_timeout(addr, VOLUME, Duration::from_secs(10), IO_TIMEOUT)
                    .map_err(|e| format!("connect: {e:#}"))?,
            );
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.read(offset, BLOCK as u32) {
            Ok(Ok(data)) => return Ok(data),
            Ok(Err(errno)) => return Err(format!("read error reply errno {errno}")),
            Err(e) => {
                *conn = None;
                if !e.chain().any(|c| c.is::<std::io::Error>()) {
                    return Err(format!("protocol: {e:#}"));
                }
            }
        }
    }
    Err("connection lost twice".into())
}

/// Reads every block through every node and judges it; one problem per
/// bad block, the first few with the daemons' log lines of the time.
fn verify(
    c: &TestCluster,
    cfg: &Config,
    logs: &BTreeMap<u64, BlockLog>,
    total: u64,
    report: &mut Report,
) -> Vec<String> {
    let seed = cfg.seed;
    let mut problems = Vec::new();
    let mut seen: BTreeMap<u64, Vec<Seen>> = BTreeMap::new();
    for (i, d) in c.nodes.iter().enumerate() {
        let mut conn = None;
        for b in 0..total {
            let want = Stamp {
                seed,
                writer: (b % cfg.writers as u64) as u32,
                block: b,
                version: 0,
            };
            let s = match read_block(&mut conn, d.nbd, block_offset(b, total)) {
                Ok(data) => decode(&data, want),
                Err(e) => Seen::Garbage(format!("read through node {} failed: {e}", i + 1)),
            };
            seen.entry(b).or_default().push(s);
        }
    }
    let empty = BlockLog::default();
    let mut detailed = 0;
    for (b, per_node) in &seen {
        let log = logs.get(b).unwrap_or(&empty);
        let verdicts: Vec<String> = per_node
            .iter()
            .enumerate()
            .filter_map(|(i, s)| log.judge(s).err().map(|e| format!("node {}: {e}", i + 1)))
            .collect();
        let agree = per_node.windows(2).all(|w| w[0] == w[1]);
        if verdicts.is_empty() && agree {
            match per_node.first() {
                Some(Seen::Version(v)) if log.acked == Some(*v) => report.read_back.0 += 1,
                Some(Seen::Version(_)) => report.read_back.1 += 1,
                _ => report.read_back.2 += 1,
            }
            continue;
        }
        let mut p = format!(
            "seed {seed}: block {b} (writer {}, offset {}): {}{}\n  nodes returned: {}\n  \
             oracle: last acknowledged {:?}, later of unknown outcome {:?}, highest sent {}\n",
            b % cfg.writers as u64,
            block_offset(*b, total),
            verdicts.join("; "),
            if agree { "" } else { "; nodes disagree" },
            per_node
                .iter()
                .enumerate()
                .map(|(i, s)| format!("node {} {s}", i + 1))
                .collect::<Vec<_>>()
                .join(", "),
            log.acked,
            log.unknown,
            log.sent,
        );
        // The writes that matter: the last acknowledged one and whatever
        // version the nodes returned instead.
        let mut records: Vec<&WriteRecord> = log.recent.iter().collect();
        for s in per_node {
            if let Seen::Version(v) = s {
                if let Some(r) = log.find(*v) {
                    if !records.iter().any(|x| x.version == r.version) {
                        records.push(r);
                    }
                }
            }
        }
        records.extend(log.unacked.iter().filter(|r| Some(r.version) > log.acked));
        records.sort_by_key(|r| r.version);
        records.dedup_by_key(|r| r.version);
        for r in &records {
            p.push_str(&format!("  write {r}\n"));
        }
        if detailed < 3 {
            detailed += 1;
            for r in records
                .iter()
                .filter(|r| !matches!(r.end, WriteEnd::Acked) || Some(r.version) == log.acked)
            {
                let from = r.sent_wall - Duration::from_secs(1);
                let to = r.sent_wall + r.took + Duration::from_secs(1);
                p.push_str(&format!(
                    "  daemon logs around v{} (sent at +{:.3} s):\n{}",
                    r.version,
                    r.at.as_secs_f64(),
                    log_excerpt(c, from, to, 40)
                ));
            }
        }
        problems.push(p);
    }
    problems
}

// ---------------------------------------------------------------------------
// The run.

/// Runs the chaos engine; None when this machine cannot (no `ip netns`,
/// not root), after saying why. A panic inside (a daemon that will not
/// restart, a cluster that never converges) is re-raised naming the seed.
pub fn run(cfg: &Config) -> Option<Outcome> {
    assert!(
        (1..=NODES as usize).contains(&cfg.writers),
        "1 to {NODES} writers"
    );
    println!(
        "chaos: seed {}, {} rounds, {} writers; replay: {}",
        cfg.seed,
        cfg.rounds,
        cfg.writers,
        replay_command(cfg)
    );
    match std::panic::catch_unwind(AssertUnwindSafe(|| run_inner(cfg))) {
        Ok(o) => o,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "chaos seed {} failed: {msg}\nreplay: {}",
                cfg.seed,
                replay_command(cfg)
            );
        }
    }
}

/// Stops the writers and undoes any fault when the run unwinds.
struct Cleanup<'a> {
    shared: &'a Shared,
    net: &'a Netns,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            self.net.heal();
        }
    }
}

fn run_inner(cfg: &Config) -> Option<Outcome> {
    if !require_tool("ip") || !require_tool("sha256sum") {
        return None;
    }
    let net = Netns::create()?;
    let seed = cfg.seed;
    let mut c = TestCluster::start_with_node3_in(&net, &[]);
    c.create_volume(VOLUME, VOLUME_SIZE, NODES as u32, Some(SHARDS));
    c.wait_converged(VOLUME, Duration::from_secs(60));

    let total = cfg.writers as u64 * cfg.blocks_per_writer;
    let now = Instant::now();
    let shared = Arc::new(Shared {
        seed,
        t0: now,
        grace: cfg.grace,
        addrs: RwLock::new(c.nodes.iter().map(|d| d.nbd).collect()),
        spans: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        clock: Mutex::new(AckClock {
            last: now,
            longest: Duration::ZERO,
            longest_end: now,
        }),
        events: Mutex::new(Vec::new()),
        round_wait_ms: AtomicU64::new(0),
        slow_writes: Mutex::new(Vec::new()),
    });
    let _cleanup = Cleanup {
        shared: &shared,
        net: &net,
    };
    let handles: Vec<_> = (0..cfg.writers)
        .map(|w| {
            let blocks: Vec<(u64, u64)> = (0..total)
                .filter(|b| b % cfg.writers as u64 == w as u64)
                .map(|b| (b, block_offset(b, total)))
                .collect();
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("chaos-writer-{w}"))
                .spawn(move || writer(w, shared, blocks))
                .expect("spawn a writer thread")
        })
        .collect();

    let mut report = Report {
        seed,
        started_utc: utc(SystemTime::now() - now.elapsed()),
        ..Report::default()
    };
    let mut problems = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    // Let the writers get going before the first fault.
    std::thread::sleep(Duration::from_secs(2));
    for round in 1..=cfg.rounds {
        let d = draw(&mut rng);
        let leaders = shard_leaders(&c.status());
        let node = target(&d, &leaders);
        let led: Vec<usize> = (0..leaders.len()).filter(|s| leaders[*s] == node).collect();
        // The role toward the drawn shard; a node usually leads some other
        // shard too (four shards on three nodes), which the text says.
        let role = if leaders.get(d.shard) == Some(&node) {
            "leader"
        } else {
            "follower"
        };
        let what = format!(
            "round {round}: {} node {node} ({role} of shard {}, leads {}) for {:.1} s",
            d.kind,
            d.shard,
            if led.is_empty() {
                "no shard".to_string()
            } else {
                format!("shards {led:?}")
            },
            d.hold.as_secs_f64()
        );
        *report
            .faults
            .entry(format!("{} {role}", d.kind))
            .or_default() += 1;
        let acked_before = shared.acked.load(Ordering::Relaxed);
        shared.round_wait_ms.store(0, Ordering::Relaxed);
        shared.begin_fault(node, what.clone());
        let started = Instant::now();
        match d.kind {
            FaultKind::Kill => {
                c.node(node).kill9();
                std::thread::sleep(d.hold);
                c.node(node).restart();
                let addr = c.node(node).nbd;
                shared.addrs.write().unwrap_or_else(|p| p.into_inner())[(node - 1) as usize] = addr;
            }
            FaultKind::Stop => {
                let pid = c.node(node).pid();
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(d.hold);
                signal(pid, libc::SIGCONT);
            }
            FaultKind::Partition => {
                net.cut();
                std::thread::sleep(d.hold);
                net.heal();
            }
        }
        shared.end_fault();
        let faulted_for = started.elapsed();
        let recovered = wait_healthy(&mut c, RECOVERY_TIMEOUT);
        report.rounds = round;
        let recovery = match recovered {
            Ok(t) => t,
            Err(st) => {
                problems.push(format!(
                    "seed {seed}: {what}: the cluster was not healthy (every shard led, \
                     replicas caught up) {RECOVERY_TIMEOUT:?} after the fault ended; last status:\n{st}"
                ));
                break;
            }
        };
        report.longest_recovery = report.longest_recovery.max(recovery);
        if cfg.progress {
            let events = lock(&shared.events);
            let healthy_errors = events
                .iter()
                .filter(|e| e.blame != Blame::NodeFaulted)
                .count();
            println!(
                "{what} (faulted {:.1} s); healthy again {:.1} s later; longest ack wait {} ms; \
                 acked {} (+{}) of {} sent; failed writes {} ({} not from the faulted node)",
                faulted_for.as_secs_f64(),
                recovery.as_secs_f64(),
                shared.round_wait_ms.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed),
                shared.acked.load(Ordering::Relaxed) - acked_before,
                shared.sent.load(Ordering::Relaxed),
                events.len(),
                healthy_errors
            );
        }
        std::thread::sleep(d.quiet);
    }

    // Stop the writers and undo everything, then let every replica apply
    // everything before reading back.
    shared.stop.store(true, Ordering::Relaxed);
    let mut logs = BTreeMap::new();
    for (w, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => {
                report.sent += r.sent;
                report.acked += r.acked;
                report.error_replies += r.error_replies;
                report.lost += r.lost;
                report.reconnects += r.reconnects;
                if r.longest_request.0 > report.longest_request.0 {
                    report.longest_request = r.longest_request;
                }
                if r.longest_gap.0 > report.longest_writer_gap.0 {
                    report.longest_writer_gap =
                        (r.longest_gap.0, format!("writer {w}, {}", r.longest_gap.1));
                }
                logs.extend(r.logs);
            }
            Err(_) => problems.push(format!("seed {seed}: writer {w} panicked")),
        }
    }
    {
        let clock = lock(&shared.clock);
        report.longest_no_ack = (
            clock.longest,
            shared.describe(clock.longest_end - clock.longest, clock.longest_end),
        );
    }
    net.heal();
    for d in c.nodes.iter_mut() {
        if d.is_running() {
            signal(d.pid(), libc::SIGCONT);
        }
    }
    c.wait_converged(VOLUME, Duration::from_secs(120));

    report.blocks_written = logs.len();
    report.blocks_checked = total as usize;
    problems.extend(verify(&c, cfg, &logs, total, &mut report));
    for y in 2..=NODES {
        problems.extend(
            c.chunk_differences(1, y)
                .into_iter()
                .map(|d| format!("seed {seed}: replicas differ: {d}")),
        );
    }
    report.events = lock(&shared.events).clone();
    report.slow_writes = lock(&shared.slow_writes).clone();
    for e in &report.events {
        let bad = match (e.kind, e.blame) {
            (EventKind::Protocol, _) => true,
            (_, Blame::DuringOtherFault | Blame::Quiet) => true,
            (_, Blame::NodeFaulted | Blame::Grace) => false,
        };
        if bad {
            problems.push(format!(
                "seed {seed}: writer {} got {} from node {} at +{:.3} s although that node was \
                 healthy and in the majority ({:?}{}{})",
                e.writer,
                e.what,
                e.node,
                e.at.as_secs_f64(),
                e.blame,
                e.since_fault_end
                    .map(|s| format!(", {} ms after the last fault ended", s.as_millis()))
                    .unwrap_or_default(),
                e.fault
                    .as_ref()
                    .map(|f| format!(", fault: {f}"))
                    .unwrap_or_default(),
            ));
        }
    }
    report.elapsed = shared.t0.elapsed();
    // Kept on success too: the stalls are worth reading about.
    report.logs_dir = save_logs(&c, seed);
    if !problems.is_empty() {
        problems.push(format!(
            "seed {seed}: daemon logs saved in {}; replay: {}",
            report.logs_dir,
            replay_command(cfg)
        ));
    }
    Some(Outcome { report, problems })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos report: seed {}, {} rounds in {:.0} s (writers started at {}; daemon logs in {})",
            self.seed,
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.started_utc,
            self.logs_dir
        )?;
        writeln!(
            f,
            "  writes: {} sent, {} acknowledged, {} error replies, {} lost with their \
             connection; {} reconnects",
            self.sent, self.acked, self.error_replies, self.lost, self.reconnects
        )?;
        writeln!(
            f,
            "  blocks: {} written, {} read back through each node: {} at their last \
             acknowledged version, {} at a later version of unknown outcome, {} never written",
            self.blocks_written,
            self.blocks_checked,
            self.read_back.0,
            self.read_back.1,
            self.read_back.2
        )?;
        writeln!(
            f,
            "  longest wait of one write for its ack: {} ms ({})",
            self.longest_request.0.as_millis(),
            self.longest_request.1
        )?;
        writeln!(
            f,
            "  longest time one writer went without an ack: {} ms ({})",
            self.longest_writer_gap.0.as_millis(),
            self.longest_writer_gap.1
        )?;
        writeln!(
            f,
            "  longest window with no ack at all: {} ms ({})",
            self.longest_no_ack.0.as_millis(),
            self.longest_no_ack.1
        )?;
        writeln!(
            f,
            "  longest recovery after a fault: {:.1} s",
            self.longest_recovery.as_secs_f64()
        )?;
        writeln!(
            f,
            "  writes that waited over {} s for their ack: {}",
            SLOW_WRITE.as_secs(),
            self.slow_writes.len()
        )?;
        for w in self.slow_writes.iter().take(20) {
            writeln!(f, "    {w}")?;
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  faults: {}", faults.join(", "))?;
        let mut by: BTreeMap<(u64, Blame, EventKind), usize> = BTreeMap::new();
        for e in &self.events {
            *by.entry((e.node, e.blame, e.kind)).or_default() += 1;
        }
        if by.is_empty() {
            writeln!(f, "  failed writes: none")?;
        }
        for ((node, blame, kind), n) in by {
            writeln!(f, "  failed writes: node {node}, {blame:?}, {kind:?}: {n}")?;
        }
        for e in self.events.iter().filter(|e| e.blame != Blame::NodeFaulted) {
            writeln!(
                f,
                "    writer {} node {} +{:.3} s {:?}: {}{}",
                e.writer,
                e.node,
                e.at.as_secs_f64(),
                e.blame,
                e.what,
                e.since_fault_end
                    .map(|s| format!(" ({} ms after a fault ended)", s.as_millis()))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(version: u64) -> Stamp {
        Stamp {
            seed: 42,
            writer: 1,
            block: 7,
            version,
        }
    }

    fn record(version: u64, end: WriteEnd) -> WriteRecord {
        WriteRecord {
            version,
            node: 1,
            sent_wall: SystemTime::now(),
            at: Duration::ZERO,
            took: Duration::ZERO,
            end,
        }
    }

    #[test]
    fn blocks_decode_to_their_version_and_damage_is_garbage() {
        let b = encode(stamp(9));
        assert_eq!(decode(&b, stamp(0)), Seen::Version(9));
        assert_eq!(decode(&vec![0u8; BLOCK], stamp(0)), Seen::Zero);
        let mut torn = b.clone();
        torn[2048..].copy_from_slice(&encode(stamp(10))[2048..]);
        assert!(matches!(decode(&torn, stamp(0)), Seen::Garbage(_)));
        let other = encode(Stamp {
            block: 8,
            ..stamp(9)
        });
        assert!(matches!(decode(&other, stamp(0)), Seen::Garbage(_)));
        let other_seed = encode(Stamp {
            seed: 43,
            ..stamp(9)
        });
        assert!(matches!(decode(&other_seed, stamp(0)), Seen::Garbage(_)));
    }

    #[test]
    fn the_oracle_accepts_the_last_ack_or_later_unknowns_only() {
        let mut log = BlockLog::default();
        assert!(log.judge(&Seen::Zero).is_ok());
        for (v, end) in [
            (1, WriteEnd::Acked),
            (2, WriteEnd::Lost("reset".into())),
            (3, WriteEnd::Acked),
            (4, WriteEnd::Errno(5)),
            (5, WriteEnd::Lost("reset".into())),
        ] {
            log.sent = v;
            log.record(record(v, end));
        }
        for ok in [3, 4, 5] {
            assert!(log.judge(&Seen::Version(ok)).is_ok(), "v{ok}");
        }
        // Older than the last ack, even one of unknown outcome: a lost write.
        for stale in [1, 2] {
            let e = log.judge(&Seen::Version(stale)).expect_err("stale");
            assert!(e.contains("STALE"), "{e}");
        }
        assert!(log.judge(&Seen::Zero).is_err());
        assert!(log.judge(&Seen::Version(6)).is_err());
        assert!(log.judge(&Seen::Garbage("x".into())).is_err());
    }

    #[test]
    fn daemon_log_timestamps_parse() {
        let t = log_time("2025-11-27T14:32:00.123456Z  INFO raftblock: hello").expect("time");
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch");
        assert_eq!(d.as_secs(), 1_764_253_920);
        assert_eq!(d.subsec_micros(), 123_456);
        assert!(log_time("  continuation").is_none());
        assert_eq!(utc(t), "2025-11-27T14:32:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00.000Z");
    }
}
