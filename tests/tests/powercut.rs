//! Power loss of the whole cluster at once. All three nodes keep their data
//! directories on one power-cut filesystem (one power domain): it holds
//! every write in memory until the file is fsync'd or fdatasync'd and
//! throws away everything unsynced when it is SIGKILLed, as a disk with a
//! volatile cache does. kill -9 of the daemons alone cannot show this: the
//! page cache survives a process kill.
//!
//! Each cut: three writers overwrite their own blocks through the three
//! nodes for a random 0.3-3 s, then the power goes out (the filesystem is
//! killed first, then the three daemons), the filesystem and the daemons
//! start again on the same directories, and once every shard has a leader
//! and every replica caught up, every block is read back through every
//! node: it must hold its last acknowledged version or a later one whose
//! outcome the writer never learned, and the replicas' chunk files must be
//! identical. What every node read back becomes the floor for the next cut
//! (it was committed, so it must not vanish later either).
//!
//! CI runs `RAFTBLOCK_POWERCUTS` cuts (default 5, to stay short); 20 in a
//! row is the number to run by hand: `RAFTBLOCK_POWERCUTS=20 cargo test -p
//! raftblock-tests --test powercut -- --nocapture`. The seed (random,
//! printed) draws the write times and the writers' choices;
//! `RAFTBLOCK_POWERCUT_SEED=S` replays them (the moment the power goes out
//! relative to the writes still depends on the machine). A failure names
//! the seed, the cut, each bad block with what each node returned, and
//! saves the daemons' and the filesystem's logs.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use raftblock_tests::chaos::{self, Oracle, Workload, WriterPool};
use raftblock_tests::cluster::TestCluster;
use raftblock_tests::powercut::{fuse_available, PowercutFs};
use raftblock_tests::require_tool;

const VOLUME: &str = "powercut";
const MIB: u64 = 1 << 20;
/// Four 32 MiB chunks, one per shard, so shard leaders spread over nodes.
const VOLUME_SIZE: u64 = 128 * MIB;
const CHUNK_SIZE: u64 = 32 * MIB;
const SHARDS: u32 = 4;
const NODES: u64 = 3;
/// Daemons on a FUSE mount replay their logs slowly; be generous.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(240);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// What one cut did, for the summary.
struct Cut {
    writes_for: Duration,
    sent: u64,
    acked: u64,
    failed: usize,
    /// Failed writes not explained by the power cut (a healthy cluster
    /// answered with an error or dropped the connection).
    failed_before_cut: usize,
    restart: Duration,
    converge: Duration,
    check: Duration,
}

#[test]
fn acknowledged_writes_survive_power_cuts_of_all_nodes() {
    if !fuse_available() || !require_tool("sha256sum") {
        return;
    }
    let seed = env_u64("RAFTBLOCK_POWERCUT_SEED").unwrap_or_else(chaos::random_seed);
    let cuts = env_u64("RAFTBLOCK_POWERCUTS").unwrap_or(5);
    let replay = format!(
        "RAFTBLOCK_POWERCUT_SEED={seed} RAFTBLOCK_POWERCUTS={cuts} \
         cargo test -p raftblock-tests --test powercut -- --nocapture"
    );
    println!("powercut: seed {seed}, {cuts} cuts; replay: {replay}");
    let started = Instant::now();

    let mut fs = PowercutFs::start_new();
    let mnt = fs.mountpoint().to_path_buf();
    let dir = move |id: u64| -> PathBuf { mnt.join(format!("node{id}")) };
    for id in 1..=NODES {
        std::fs::create_dir(dir(id)).expect("data dir on the power-cut filesystem");
    }
    let mut c = TestCluster::start_each_at(NODES as usize, dir, |_| Vec::new());
    c.create_volume_json(&json!({
        "name": VOLUME,
        "size": VOLUME_SIZE,
        "replicas": NODES,
        "shards": SHARDS,
        "chunk_size": CHUNK_SIZE,
    }));
    c.wait_converged(VOLUME, CONVERGE_TIMEOUT);

    let workload = Workload {
        seed,
        volume: VOLUME.into(),
        volume_size: VOLUME_SIZE,
        chunk_size: CHUNK_SIZE,
        shards: SHARDS,
        writers: NODES as usize,
        blocks_per_writer: 64,
        grace: Duration::ZERO,
    };
    let mut oracle = Oracle::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done: Vec<Cut> = Vec::new();
    let logs_dir = format!("raftblock-powercut-{seed}");

    // A panic (a daemon that will not come back, a cluster that never
    // converges) still saves the logs and names the seed and the cut.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        for cut in 1..=cuts {
            let writes_for = Duration::from_millis(rng.gen_range(300..=3000));
            let addrs = c.nodes.iter().map(|d| d.nbd).collect();
            let pool = WriterPool::start(&workload, addrs, &mut oracle, cut);
            std::thread::sleep(writes_for);
            // The writers stop using the nodes, and what fails from here on
            // is the cut's doing.
            for id in 1..=NODES {
                pool.begin_fault(id, format!("power cut {cut}"));
            }
            // The power goes out: the filesystem first, so nothing unsynced
            // survives, then the processes that were using it.
            fs.kill();
            for d in c.nodes.iter_mut() {
                d.kill9();
            }
            let totals = pool.stop(&mut oracle);
            if !totals.panicked.is_empty() {
                return Err(format!("cut {cut}: writers {:?} panicked", totals.panicked));
            }
            // Reported, not failed on: this test is about durability.
            let before_cut: Vec<_> = totals
                .events
                .iter()
                .filter(|e| e.blame != chaos::Blame::NodeFaulted)
                .collect();
            let failed_before_cut = before_cut.len();
            for e in before_cut {
                println!(
                    "  cut {cut}: writer {} got {} from node {} at +{:.3} s, before the power cut",
                    e.writer,
                    e.what,
                    e.node,
                    e.at.as_secs_f64()
                );
            }

            // Power back on: same backing directory, same data dirs.
            let t = Instant::now();
            fs.detach();
            fs.start();
            for d in c.nodes.iter_mut() {
                d.restart();
            }
            let restart = t.elapsed();
            let t = Instant::now();
            c.wait_converged(VOLUME, CONVERGE_TIMEOUT);
            let converge = t.elapsed();

            let t = Instant::now();
            let check = oracle.check(&c, &workload);
            let mut problems = check.problems.clone();
            for y in 2..=NODES {
                problems.extend(
                    c.chunk_differences(1, y)
                        .into_iter()
                        .map(|d| format!("seed {seed}: replicas differ: {d}")),
                );
            }
            let check_took = t.elapsed();
            if !problems.is_empty() {
                return Err(format!(
                    "cut {cut} of {cuts} (writes ran {} ms: {} sent, {} acknowledged before \
                     the power went out): {} problem(s):\n{}",
                    writes_for.as_millis(),
                    totals.sent,
                    totals.acked,
                    problems.len(),
                    problems.join("\n")
                ));
            }
            oracle.settle(&check);
            println!(
                "cut {cut}: writes ran {} ms: {} acknowledged of {} sent, {} failed ({} before \
                 the cut); power on + daemons up {:.1} s, converged {:.1} s, checked {:.1} s: \
                 {} blocks through {NODES} nodes ({} at their last ack, {} at a later unknown, \
                 {} never written), chunk files identical",
                writes_for.as_millis(),
                totals.acked,
                totals.sent,
                totals.events.len(),
                failed_before_cut,
                restart.as_secs_f64(),
                converge.as_secs_f64(),
                check_took.as_secs_f64(),
                check.blocks_checked,
                check.read_back.0,
                check.read_back.1,
                check.read_back.2,
            );
            done.push(Cut {
                writes_for,
                sent: totals.sent,
                acked: totals.acked,
                failed: totals.events.len(),
                failed_before_cut,
                restart,
                converge,
                check: check_took,
            });
        }
        Ok(())
    }));

    let saved = chaos::save_logs(&c, &logs_dir);
    let _ = std::fs::write(
        std::path::Path::new(&saved).join("powercut-fs.log"),
        fs.log_text(),
    );
    let acked: u64 = done.iter().map(|d| d.acked).sum();
    let summary =
        format!(
        "powercut: {} of {cuts} cuts done, {acked} writes acknowledged ({} sent, {} failed, {} \
         of them before a cut; per cut {:?}), writes ran {:.1} s in all, longest restart {:.1} \
         s, converge {:.1} s, check {:.1} s; seed {seed}; {:.0} s; logs in {saved}",
        done.len(),
        done.iter().map(|d| d.sent).sum::<u64>(),
        done.iter().map(|d| d.failed).sum::<usize>(),
        done.iter().map(|d| d.failed_before_cut).sum::<usize>(),
        done.iter().map(|d| d.acked).collect::<Vec<_>>(),
        done.iter().map(|d| d.writes_for).sum::<Duration>().as_secs_f64(),
        done.iter().map(|d| d.restart).max().unwrap_or_default().as_secs_f64(),
        done.iter().map(|d| d.converge).max().unwrap_or_default().as_secs_f64(),
        done.iter().map(|d| d.check).max().unwrap_or_default().as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    println!("{summary}");
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("powercut seed {seed}: {e}\n{summary}\nreplay: {replay}"),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "powercut seed {seed} failed in cut {}: {msg}\n{summary}\nreplay: {replay}",
                done.len() + 1
            );
        }
    }
}
