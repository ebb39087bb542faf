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
//!
//! The pieces: `blocks` (where blocks live, what goes in them), `oracle`
//! (per-block write histories), `check` (reading every block back through
//! every node), `writer` (one writer thread), `pool` (starting and stopping
//! writers), `faults` (drawing and blaming faults), `report` (what a run
//! tells); this file runs the rounds.
//! The [`Oracle`] and the [`WriterPool`] work on any [`TestCluster`]; the
//! power-cut test uses them too.

mod blocks;
mod check;
mod faults;
mod oracle;
mod pool;
mod report;
mod writer;

pub use blocks::Workload;
pub use check::Check;
pub use faults::{Blame, FaultKind};
pub use oracle::Oracle;
pub use pool::{Totals, WriterPool};
pub use report::{log_excerpt, save_logs, utc, EventKind, IoEvent, Outcome, Report};

use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::cluster::{Netns, TestCluster};
use crate::require_tool;
use faults::{draw, shard_leaders, signal, target, wait_healthy};

/// The export every writer uses.
const VOLUME: &str = "chaos";
/// Four 64 MiB chunks, one per shard, so shard leaders spread over nodes.
const VOLUME_SIZE: u64 = 256 << 20;
const SHARDS: u32 = 4;
const NODES: u64 = 3;
/// The daemon's default chunk size: chunk `c` belongs to shard `c % SHARDS`.
const CHUNK_SIZE: u64 = 64 << 20;
/// How far a replica may trail its leader and still count as caught up
/// between rounds (the writers never pause, so exact zero is rare).
const LAG_OK: u64 = 256;
/// Longest a round may take to get every shard led and caught up again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

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

    /// What the writers do on the chaos volume.
    fn workload(&self) -> Workload {
        Workload {
            seed: self.seed,
            volume: VOLUME.into(),
            volume_size: VOLUME_SIZE,
            chunk_size: CHUNK_SIZE,
            shards: SHARDS,
            writers: self.writers,
            blocks_per_writer: self.blocks_per_writer,
            grace: self.grace,
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
    blocks::splitmix(&mut x)
}

/// The command that replays a run with the same fault schedule.
pub fn replay_command(cfg: &Config) -> String {
    format!(
        "cargo run -p raftblock-tests --bin raftblock-chaos -- --seed {} --rounds {}",
        cfg.seed, cfg.rounds
    )
}

/// A poisoned lock only means a writer panicked; its data is still good
/// for the report.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Heals the partition when the run unwinds (the writer pool stops its
/// writers itself when dropped).
struct Cleanup<'a> {
    net: &'a Netns,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
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

    let workload = cfg.workload();
    let mut oracle = Oracle::new();
    let started = Instant::now();
    let pool = WriterPool::start(
        &workload,
        c.nodes.iter().map(|d| d.nbd).collect(),
        &mut oracle,
        0,
    );
    let _cleanup = Cleanup { net: &net };

    let mut report = Report {
        seed,
        started_utc: pool.started_utc(),
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
        let acked_before = pool.acked();
        pool.take_longest_wait_ms();
        pool.begin_fault(node, what.clone());
        let fault_started = Instant::now();
        match d.kind {
            FaultKind::Kill => {
                c.node(node).kill9();
                std::thread::sleep(d.hold);
                c.node(node).restart();
                pool.set_addr(node, c.node(node).nbd);
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
        pool.end_fault();
        let faulted_for = fault_started.elapsed();
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
            let (failed, healthy_errors) = pool.failed_writes();
            println!(
                "{what} (faulted {:.1} s); healthy again {:.1} s later; longest ack wait {} ms; \
                 acked {} (+{}) of {} sent; failed writes {failed} ({healthy_errors} not from \
                 the faulted node)",
                faulted_for.as_secs_f64(),
                recovery.as_secs_f64(),
                pool.take_longest_wait_ms(),
                pool.acked(),
                pool.acked() - acked_before,
                pool.sent(),
            );
        }
        std::thread::sleep(d.quiet);
    }

    // Stop the writers and undo everything, then let every replica apply
    // everything before reading back.
    let totals = pool.stop(&mut oracle);
    problems.extend(
        totals
            .panicked
            .iter()
            .map(|w| format!("seed {seed}: writer {w} panicked")),
    );
    net.heal();
    for d in c.nodes.iter_mut() {
        if d.is_running() {
            signal(d.pid(), libc::SIGCONT);
        }
    }
    c.wait_converged(VOLUME, Duration::from_secs(120));

    let check = oracle.check(&c, &workload);
    report.blocks_written = oracle.blocks_written();
    report.blocks_checked = check.blocks_checked;
    report.read_back = check.read_back;
    problems.extend(check.problems);
    for y in 2..=NODES {
        problems.extend(
            c.chunk_differences(1, y)
                .into_iter()
                .map(|d| format!("seed {seed}: replicas differ: {d}")),
        );
    }
    problems.extend(report::unexcused(seed, &totals.events));
    report.sent = totals.sent;
    report.acked = totals.acked;
    report.error_replies = totals.error_replies;
    report.lost = totals.lost;
    report.reconnects = totals.reconnects;
    report.longest_request = totals.longest_request;
    report.longest_writer_gap = totals.longest_writer_gap;
    report.longest_no_ack = totals.longest_no_ack;
    report.slow_writes = totals.slow_writes;
    report.events = totals.events;
    report.elapsed = started.elapsed();
    // Kept on success too: the stalls are worth reading about.
    report.logs_dir = save_logs(&c, &format!("raftblock-chaos-{seed}"));
    if !problems.is_empty() {
        problems.push(format!(
            "seed {seed}: daemon logs saved in {}; replay: {}",
            report.logs_dir,
            replay_command(cfg)
        ));
    }
    Some(Outcome { report, problems })
}
