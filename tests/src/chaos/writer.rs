//! One writer: a thread that keeps overwriting its own 4 KiB blocks over
//! NBD, starting on its own node (so every node serves one) and moving to
//! another when its node stops answering, back home once it is up again.
//! Every write goes into its block's history for the oracle: acknowledged,
//! or of unknown outcome (error reply, connection lost). Failed writes are
//! blamed against the fault timeline; acknowledgement gaps and slow writes
//! are measured for the report.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::blocks::{encode, Stamp};
use super::lock;
use super::oracle::{BlockLog, WriteEnd, WriteRecord};
use super::pool::Shared;
use super::report::{utc, EventKind, IoEvent};
use crate::nbd::RawNbd;

/// Connect plus NBD handshake; a stopped node accepts in the kernel and
/// never greets, so this must be short.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may wait for its reply before the connection is
/// given up: twice the daemon's default `--leader-wait`, so only a real
/// hang hits it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A writer away from its own node tries to go back this often.
const HOME_RETRY: Duration = Duration::from_secs(2);
/// An acknowledged write that waited longer than this is listed.
pub(super) const SLOW_WRITE: Duration = Duration::from_secs(5);

/// What one writer did, handed to the pool when it stops.
#[derive(Default)]
pub(super) struct WriterResult {
    pub(super) logs: BTreeMap<u64, BlockLog>,
    pub(super) sent: u64,
    pub(super) acked: u64,
    pub(super) error_replies: u64,
    pub(super) lost: u64,
    pub(super) reconnects: u64,
    pub(super) longest_request: (Duration, String),
    pub(super) longest_gap: (Duration, String),
}

fn connect(shared: &Shared, node: u64) -> Option<RawNbd> {
    let volume = &shared.workload.volume;
    RawNbd::connect_timeout(shared.addr(node), volume, CONNECT_TIMEOUT, IO_TIMEOUT).ok()
}

/// A connection to `home` if it is up, else to another node that is.
fn connect_any(shared: &Shared, home: u64) -> Option<(u64, RawNbd)> {
    let nodes = shared.nodes();
    (0..nodes)
        .map(|i| (home - 1 + i) % nodes + 1)
        .filter(|n| !shared.timeline.faulted_now(*n))
        .find_map(|n| connect(shared, n).map(|c| (n, c)))
}

/// Writes until `shared.stop`; `run` varies the random choices between
/// pools of one oracle.
pub(super) fn writer(
    id: usize,
    run: u64,
    shared: Arc<Shared>,
    blocks: Vec<(u64, u64)>,
    logs: BTreeMap<u64, BlockLog>,
) -> WriterResult {
    let seed = shared.workload.seed;
    let mut rng = StdRng::seed_from_u64(
        seed ^ 0x5851_f42d_4c95_7f2d_u64.wrapping_mul(id as u64 + 1)
            ^ run.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let home = id as u64 % shared.nodes() + 1;
    let t0 = shared.timeline.t0;
    let mut out = WriterResult {
        logs,
        ..WriterResult::default()
    };
    let mut conn: Option<(u64, RawNbd)> = None;
    let mut connections = 0u64;
    let mut last_home_try = Instant::now();
    let mut last_ack = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        // Back to its own node once that is up again, so every node keeps
        // serving a writer.
        if let Some((n, _)) = &conn {
            if *n != home
                && last_home_try.elapsed() >= HOME_RETRY
                && !shared.timeline.faulted_now(home)
            {
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
            seed,
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
        let at = sent - t0;
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
            let (blame, since_fault_end, fault) = shared.timeline.blame(node, sent, done);
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
                out.longest_gap = (gap, shared.timeline.describe(last_ack, done));
            }
            last_ack = done;
            shared
                .round_wait_ms
                .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
            if took > SLOW_WRITE {
                lock(&shared.slow_writes).push(format!(
                    "{} ms: writer {id} block {block} (shard {}) via node {node}, sent {}, {}",
                    took.as_millis(),
                    shared.workload.shard_of(offset),
                    utc(sent_wall),
                    shared.timeline.describe(sent, done)
                ));
            }
            if took > out.longest_request.0 {
                out.longest_request = (
                    took,
                    format!(
                        "writer {id} via node {node}, {}",
                        shared.timeline.describe(sent, done)
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
