//! `raftblock-bench rebuild`: how fast a lost node's replicas are rebuilt
//! and what the rebuild costs the clients. The disk's own sequential write
//! bandwidth is measured first (fio, 1 MiB, direct I/O, on a file in the
//! scratch directory). Then, twice (with the daemon's default
//! `--recovery-rate`, and with `--recovery-rate 0`, no limit), a fresh local
//! 4-node cluster (`--down-out-interval 3s`) gets one 3-replica volume,
//! filled completely through NBD on node 1; fio measures 4 KiB random-write
//! IOPS on it, then the node other than node 1 (and, when possible, other
//! than the metadata leader) holding the most replicas is killed with
//! SIGKILL while the same fio job runs on. The cluster status is polled
//! every 250 ms for when the node is marked out, when the first move
//! starts and when every shard is back to three healthy voters on live
//! nodes with no move left; the bytes copied come from the live nodes'
//! `raftblock_recovery_bytes_total` counters. The report gives the rebuild
//! throughput against the disk's bandwidth, the time from death to full
//! redundancy, and the IOPS during the rebuild (from fio's IOPS log, over
//! the window from the first move to full redundancy) against before, and
//! checks the goals: unthrottled rebuild at least 50% of the disk's write
//! bandwidth, client IOPS during a throttled rebuild at least 70% of before.

use anyhow::{bail, Context, Result};
use raftblock::client::AdminClient;
use raftblock::size::parse_size;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::fio::{self, FioJob, IoTarget, Workload};
use crate::targets::{self, Nodes, TargetKind};

/// Nodes in each run's cluster.
const NODES: usize = 4;
/// Replicas of the volume.
const REPLICAS: usize = 3;
/// `--down-out-interval` of every node.
const DOWN_OUT: &str = "3s";
/// Queue depth of the 4 KiB random-write client job.
const CLIENT_IODEPTH: u32 = 16;
/// How often the cluster status is polled during the rebuild.
const POLL: Duration = Duration::from_millis(250);
/// fio's IOPS log averaging interval, ms.
const LOG_AVG_MS: u64 = 250;
/// Goal: unthrottled rebuild throughput as a share of the disk's bandwidth.
const GOAL_REBUILD_SHARE: f64 = 0.5;
/// Goal: client IOPS during a throttled rebuild as a share of before.
const GOAL_IOPS_RATIO: f64 = 0.7;

/// Options of the rebuild suite.
#[derive(clap::Args, Debug)]
pub struct RebuildArgs {
    /// Size of the volume, filled completely before the node dies (K/M/G/T
    /// suffixes, whole MiB).
    #[arg(long, default_value = "2G")]
    pub size: String,
    /// Shards of the volume (each a Raft group with 3 replicas over the 4
    /// nodes).
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// Seconds of the 4 KiB random-write run before the node dies (after a
    /// 2 s ramp).
    #[arg(long, default_value_t = 10)]
    pub runtime: u64,
    /// Seconds of the disk bandwidth measurement (after a 2 s ramp).
    #[arg(long, default_value_t = 10)]
    pub disk_runtime: u64,
    /// Seconds to wait for full redundancy after the kill before giving up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Keep the scratch directory (node logs, fio output and IOPS logs,
    /// the nodes' data) instead of removing it, also on errors.
    #[arg(long)]
    pub keep: bool,
}

/// The two runs: name and the `--recovery-rate` passed to every node (none:
/// the daemon's default, 64M; `0` means no limit, see `serve --help`).
const RUNS: [(&str, Option<&str>); 2] = [("throttled", None), ("unthrottled", Some("0"))];

/// One run's figures.
#[derive(Debug, Serialize)]
pub struct RunResult {
    /// `throttled` or `unthrottled`.
    pub name: String,
    /// `--recovery-rate` given to the nodes (`default` when none).
    pub recovery_rate: String,
    /// Seconds the fill took, and its MiB/s.
    pub fill_s: f64,
    pub fill_mib_s: f64,
    /// The node killed, the shard replicas it held, the metadata leader then.
    pub victim: u64,
    pub victim_replicas: usize,
    pub meta_leader: Option<u64>,
    /// 4 KiB random-write IOPS (QD16) before the kill.
    pub iops_before: f64,
    /// Seconds from the kill until the node was seen out, the first move
    /// was seen, and full redundancy was seen.
    pub out_s: Option<f64>,
    pub first_move_s: Option<f64>,
    pub redundant_s: f64,
    /// Most moves in flight at once.
    pub max_moves: usize,
    /// Bytes the live nodes copied (their `raftblock_recovery_bytes_total`
    /// after minus before), and the data the victim's shards hold.
    pub bytes_copied: u64,
    pub bytes_expected: u64,
    /// Seconds from the first move to full redundancy, and the rebuild
    /// throughput over it.
    pub rebuild_window_s: f64,
    pub rebuild_mib_s: f64,
    /// That throughput as a percentage of the disk's write bandwidth.
    pub rebuild_pct_of_disk: f64,
    /// Client IOPS from the first move to full redundancy, and from the
    /// kill to full redundancy (including the failover stall and the
    /// down-out interval), by fio's IOPS log.
    pub iops_during: f64,
    pub iops_kill_to_redundant: f64,
    /// `iops_during / iops_before`.
    pub iops_ratio: f64,
    /// Status polls that failed (the cluster status can time out while
    /// leaders change); the rebuild wait only fails at its deadline.
    pub status_errors: usize,
}

/// Runs the suite with the binary `bin` under `dir`; writes `json_path`.
pub fn run(args: &RebuildArgs, bin: &Path, dir: &Path, json_path: &Path) -> Result<Vec<RunResult>> {
    let size = parse_size(&args.size).context("--size")?;
    if size == 0 || size % (1 << 20) != 0 {
        bail!("--size must be a positive whole number of MiB, got {size} bytes");
    }
    if args.shards == 0 || args.runtime == 0 || args.disk_runtime == 0 || args.timeout == 0 {
        bail!("--shards, --runtime, --disk-runtime and --timeout must be at least 1");
    }
    let fio_version = targets::tool_version("fio", &["--version"])?;

    let disk_mib_s = disk_bandwidth(dir, size, args.disk_runtime)?;
    let mut runs = Vec::new();
    for (name, rate) in RUNS {
        crate::check_interrupted()?;
        let run_dir = dir.join(name);
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let r = run_one(args, size, name, rate, bin, &run_dir, disk_mib_s)
            .with_context(|| format!("{name} run"))?;
        // Free the disk for the next run (the scratch dir goes at the end).
        if !args.keep {
            if let Err(e) = std::fs::remove_dir_all(&run_dir) {
                eprintln!("warning: removing {}: {e}", run_dir.display());
            }
        }
        runs.push(r);
    }

    let text = render(&runs, disk_mib_s, args);
    println!("{text}");
    let report = report_json(&runs, disk_mib_s, args, size, &fio_version);
    std::fs::write(json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("wrote {}", json_path.display());
    Ok(runs)
}

/// fio 1 MiB sequential writes, direct I/O, QD8, on a file in `dir`; MiB/s.
fn disk_bandwidth(dir: &Path, size: u64, runtime: u64) -> Result<f64> {
    eprint!("disk write bandwidth (fio 1M seqwrite, direct, QD8, {runtime} s) ... ");
    crate::flush_stderr();
    let file = dir.join("disk-bw.img");
    crate::drop_page_cache();
    let res = fio::run(
        &FioJob {
            workload: Workload::SeqWrite1m,
            target: &IoTarget::File(file.clone()),
            size,
            runtime_s: runtime,
        },
        &dir.join("fio-disk.json"),
    );
    if let Err(e) = std::fs::remove_file(&file) {
        eprintln!("warning: removing {}: {e}", file.display());
    }
    crate::check_interrupted()?;
    let res = res.context("measuring the disk's write bandwidth")?;
    eprintln!("{:.1} MiB/s", res.mib_s);
    Ok(res.mib_s)
}

/// The moment something happened: when, for durations, and the Unix time
/// in ms, to match fio's log.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    at: Instant,
    unix_ms: u64,
}

impl Stamp {
    fn now() -> Stamp {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Stamp {
            at: Instant::now(),
            unix_ms,
        }
    }

    fn secs_since(&self, earlier: &Stamp) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }
}

fn run_one(
    args: &RebuildArgs,
    size: u64,
    name: &str,
    rate: Option<&str>,
    bin: &Path,
    dir: &Path,
    disk_mib_s: f64,
) -> Result<RunResult> {
    let rate_label = rate.unwrap_or("default").to_string();
    eprintln!("== {name} run (--recovery-rate {rate_label}) ==");
    let mut extra = vec!["--down-out-interval", DOWN_OUT];
    if let Some(r) = rate {
        extra.extend(["--recovery-rate", r]);
    }
    let mut nodes =
        targets::start_n_nodes(bin, dir, TargetKind::ClusterR3, NODES, None, None, &extra)?;
    for (i, s) in nodes.servers.iter_mut().enumerate() {
        s.name = format!("node {}", i + 1);
    }
    let client = AdminClient::with_timeout(&nodes.admin[0].to_string(), Duration::from_secs(10));
    let volume = "rebuild";

    wait_for(
        &mut nodes,
        &format!("all {NODES} nodes registered and up in GET /v1/cluster"),
        Duration::from_secs(60),
        |_| {
            let st = client.cluster_status()?;
            let nodes = st["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            Ok(nodes.len() == NODES && nodes.iter().all(|n| n["up"] == true))
        },
    )?;
    let body = json!({"name": volume, "size": size, "replicas": REPLICAS, "shards": args.shards});
    wait_for(
        &mut nodes,
        &format!("POST /v1/volumes ({volume})"),
        Duration::from_secs(60),
        |_| match client.post("/v1/volumes", &body) {
            Ok(_) => Ok(true),
            // Before the metadata group has a leader the API answers 503.
            Err(e) if e.to_string().contains("HTTP 503") => Ok(false),
            Err(e) => Err(e),
        },
    )?;
    let converged = |client: &AdminClient| -> Result<bool> {
        let st = client.cluster_status()?;
        Ok(shards_ok(&st, volume, args.shards, None, true))
    };
    wait_for(
        &mut nodes,
        &format!("every shard of {volume} with a leader and {REPLICAS} healthy voters"),
        Duration::from_secs(120),
        |_| converged(&client),
    )?;
    let nbd = nodes.nbd[0];
    wait_for(
        &mut nodes,
        "node 1's NBD listener",
        Duration::from_secs(30),
        |_| Ok(targets::nbd_greets(nbd)),
    )?;
    let target = IoTarget::Nbd(format!("nbd://{nbd}/{volume}"));

    eprint!("filling {} MiB through node 1 ... ", size >> 20);
    crate::flush_stderr();
    let started = Instant::now();
    let filled = fio::prefill(&target, size, &dir.join("fio-fill.json"));
    crate::check_interrupted()?;
    filled.context("filling the volume")?;
    let fill_s = started.elapsed().as_secs_f64();
    let fill_mib_s = (size >> 20) as f64 / fill_s;
    eprintln!("{fill_s:.1} s ({fill_mib_s:.0} MiB/s)");
    wait_for(
        &mut nodes,
        &format!("every replica of {volume} caught up after the fill (lag 0)"),
        Duration::from_secs(300),
        |_| converged(&client),
    )?;
    // The fill's large writes stay in the Raft logs until they settle into
    // the chunk files (within 30 s); settling them during the measured
    // windows would be counted against the rebuild.
    let all: Vec<usize> = (0..nodes.servers.len()).collect();
    wait_for(
        &mut nodes,
        "every node to settle the fill's logged blocks (raftblock_logged_bytes 0)",
        Duration::from_secs(180),
        |n| Ok(logged_bytes(n, &all)?.iter().all(|b| *b == 0)),
    )?;

    eprint!(
        "4k randwrite QD{CLIENT_IODEPTH} before ({} s) ... ",
        args.runtime
    );
    crate::flush_stderr();
    crate::drop_page_cache();
    let out = dir.join("fio-before.json");
    let mut cmd = randwrite(&target, size, &out);
    cmd.arg(format!("--ramp_time={}", fio::RAMP_SECONDS))
        .arg(format!("--runtime={}", args.runtime));
    let ran = fio::execute(
        cmd,
        &out,
        Duration::from_secs(args.runtime + fio::RAMP_SECONDS + 60),
    );
    crate::check_interrupted()?;
    ran.context("4k randwrite before the kill")?;
    let text = std::fs::read_to_string(&out)
        .with_context(|| format!("reading fio output {}", out.display()))?;
    let iops_before = fio::parse(&text, false)?.iops;
    eprintln!("{iops_before:.0} IOPS");
    check_all_alive(&mut nodes, None)?;

    let st = client.cluster_status().context("GET /v1/cluster")?;
    let meta_leader = st["meta_leader"].as_u64();
    let (victim, victim_replicas) = pick_victim(&st, meta_leader)?;
    let victim_shards = shards_on(&st, volume, victim);
    let bytes_expected = victim_shards as u64 * size / u64::from(args.shards);
    // Node N is at index N - 1.
    let victim_idx = usize::try_from(victim)
        .ok()
        .and_then(|v| v.checked_sub(1))
        .with_context(|| format!("bad node id {victim} to kill"))?;
    let live: Vec<usize> = (0..NODES).filter(|i| *i != victim_idx).collect();
    let counters_before = recovery_bytes(&nodes, &live)?;

    crate::drop_page_cache();
    let during = dir.join("fio-during.json");
    let log_prefix = dir.join("during");
    let mut cmd = randwrite(&target, size, &during);
    cmd.arg(format!("--runtime={}", args.timeout + 120))
        .arg(format!("--write_iops_log={}", log_prefix.display()))
        .arg(format!("--log_avg_msec={LOG_AVG_MS}"))
        .arg("--log_unix_epoch=1");
    let mut bg = Background::start(cmd, &during)?;
    // Let fio connect and get going before the kill.
    sleep_checked(Duration::from_secs(1))?;
    bg.check_running()?;

    eprintln!(
        "killing node {victim} ({victim_replicas} shard replicas, {victim_shards} of {volume}; metadata leader: {})",
        meta_leader.map_or("unknown".into(), |l| l.to_string())
    );
    let server = nodes
        .servers
        .get_mut(victim_idx)
        .with_context(|| format!("no process for node {victim}"))?;
    let killed = Stamp::now();
    server.kill()?;

    let deadline = killed.at + Duration::from_secs(args.timeout);
    let mut out_at: Option<Stamp> = None;
    let mut move_at: Option<Stamp> = None;
    let mut max_moves = 0;
    let mut status_errors = 0;
    let redundant = loop {
        crate::check_interrupted()?;
        check_all_alive(&mut nodes, Some(victim_idx))?;
        bg.check_running()?;
        let polled = Instant::now();
        let last = match client.cluster_status() {
            Ok(st) => {
                let now = Stamp::now();
                let out = st["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["id"].as_u64() == Some(victim) && n["out"] == true);
                if out && out_at.is_none() {
                    eprintln!(
                        "  {:5.1} s: node {victim} marked out",
                        now.secs_since(&killed)
                    );
                    out_at = Some(now);
                }
                let moves = st["moves"].as_array().map_or(0, Vec::len);
                max_moves = max_moves.max(moves);
                if moves > 0 && move_at.is_none() {
                    eprintln!("  {:5.1} s: first move started", now.secs_since(&killed));
                    move_at = Some(now);
                }
                if moves == 0 && shards_ok(&st, volume, args.shards, Some(victim), false) {
                    eprintln!("  {:5.1} s: full redundancy", now.secs_since(&killed));
                    break now;
                }
                summary(&st, volume)
            }
            Err(e) => {
                status_errors += 1;
                format!("GET /v1/cluster failed: {e:#}")
            }
        };
        if Instant::now() > deadline {
            bail!(
                "no full redundancy (every shard of {volume} with {REPLICAS} healthy voters off node {victim}, no move in flight) within {} s of killing node {victim}; last status: {}",
                args.timeout,
                last
            );
        }
        std::thread::sleep(POLL.saturating_sub(polled.elapsed()));
    };
    // A little client I/O past the end, so the log covers the window.
    sleep_checked(Duration::from_secs(1))?;
    bg.finish()?;
    let counters_after = recovery_bytes(&nodes, &live)?;
    let bytes_copied: u64 = counters_after
        .iter()
        .zip(&counters_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();

    let log = log_prefix.with_file_name(format!(
        "{}_iops.1.log",
        log_prefix
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let samples = read_iops_log(&log)?;
    let first = move_at.or(out_at).unwrap_or(killed);
    let iops_during =
        window_iops(&samples, first.unix_ms, redundant.unix_ms).with_context(|| {
            format!(
                "no fio IOPS samples in the rebuild window ({})",
                log.display()
            )
        })?;
    let iops_kill_to_redundant = window_iops(&samples, killed.unix_ms, redundant.unix_ms)
        .with_context(|| format!("no fio IOPS samples after the kill ({})", log.display()))?;
    let window = redundant.secs_since(&first);
    let rebuild_mib_s = if window > 0.0 {
        bytes_copied as f64 / (1u64 << 20) as f64 / window
    } else {
        0.0
    };

    let mut servers: Vec<_> = nodes.servers.drain(..).collect();
    for s in servers.iter_mut() {
        s.signal_term();
    }
    for s in servers {
        s.stop();
    }

    let r = RunResult {
        name: name.to_string(),
        recovery_rate: rate_label,
        fill_s,
        fill_mib_s,
        victim,
        victim_replicas,
        meta_leader,
        iops_before,
        out_s: out_at.map(|s| s.secs_since(&killed)),
        first_move_s: move_at.map(|s| s.secs_since(&killed)),
        redundant_s: redundant.secs_since(&killed),
        max_moves,
        bytes_copied,
        bytes_expected,
        rebuild_window_s: window,
        rebuild_mib_s,
        rebuild_pct_of_disk: pct(rebuild_mib_s, disk_mib_s),
        iops_during,
        iops_kill_to_redundant,
        iops_ratio: if iops_before > 0.0 {
            iops_during / iops_before
        } else {
            0.0
        },
        status_errors,
    };
    eprintln!(
        "{name}: {:.0} MiB copied in {:.1} s ({:.1} MiB/s); IOPS {:.0} -> {:.0} ({:.2})",
        r.bytes_copied as f64 / (1u64 << 20) as f64,
        r.rebuild_window_s,
        r.rebuild_mib_s,
        r.iops_before,
        r.iops_during,
        r.iops_ratio
    );
    Ok(r)
}

/// `a` as a percentage of `b` (0 when `b` is not positive).
fn pct(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a * 100.0 / b
    } else {
        0.0
    }
}

/// fio 4 KiB random writes at QD16, time-based (runtime added by the caller).
fn randwrite(target: &IoTarget, size: u64, out: &Path) -> Command {
    let mut cmd = fio::base_command(target, size, out);
    cmd.arg("--rw=randwrite")
        .arg("--bs=4k")
        .arg(format!("--iodepth={CLIENT_IODEPTH}"))
        .arg("--norandommap")
        .arg("--time_based");
    cmd
}

/// Polls `ready` every 250 ms until it holds; fails after `within` naming
/// `what` (with the last error `ready` gave), when a node dies, or on an
/// interrupt. Errors from `ready` are retried until the deadline.
fn wait_for(
    nodes: &mut Nodes,
    what: &str,
    within: Duration,
    mut ready: impl FnMut(&mut Nodes) -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last_err = None;
    loop {
        crate::check_interrupted()?;
        check_all_alive(nodes, None)?;
        match ready(nodes) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            let why = last_err.map_or(String::new(), |e| format!(" (last error: {e:#})"));
            bail!(
                "timed out after {} s waiting for {what}{why}",
                within.as_secs()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Fails if a node other than `except` (an index) has exited.
fn check_all_alive(nodes: &mut Nodes, except: Option<usize>) -> Result<()> {
    for (i, s) in nodes.servers.iter_mut().enumerate() {
        if Some(i) != except {
            s.check_alive()?;
        }
    }
    Ok(())
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        crate::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
    Ok(())
}

/// The shards of `volume` in a `/v1/cluster` answer.
fn shards<'a>(st: &'a Value, volume: &str) -> &'a [Value] {
    st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == volume))
        .and_then(|v| v["shards"].as_array())
        .map_or(&[], Vec::as_slice)
}

/// Whether all `count` shards of `volume` are healthy, with a leader and
/// exactly [`REPLICAS`] voters that answer (no learner, none unreachable),
/// none on node `dead`; with `caught_up` also every replica at lag 0.
fn shards_ok(st: &Value, volume: &str, count: u32, dead: Option<u64>, caught_up: bool) -> bool {
    let shards = shards(st, volume);
    shards.len() == count as usize
        && shards.iter().all(|s| {
            let leader = s["leader"].as_u64().unwrap_or(0);
            let reps = s["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            leader != 0
                && Some(leader) != dead
                && s["state"] == "healthy"
                && reps.len() == REPLICAS
                && reps.iter().all(|r| {
                    let role = r["role"].as_str().unwrap_or("unreachable");
                    role != "learner"
                        && role != "unreachable"
                        && r["node"].as_u64().is_some()
                        && r["node"].as_u64() != dead
                        && (!caught_up || r["lag"].as_u64() == Some(0))
                })
        })
}

/// Shards of `volume` with a replica on `node`.
fn shards_on(st: &Value, volume: &str, node: u64) -> usize {
    shards(st, volume)
        .iter()
        .filter(|s| {
            s["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["node"].as_u64() == Some(node))
        })
        .count()
}

/// The node to kill: not node 1 (fio's), not the metadata leader if
/// another will do, the most shard replicas first (then the lowest id).
fn pick_victim(st: &Value, meta_leader: Option<u64>) -> Result<(u64, usize)> {
    let mut candidates: Vec<(u64, usize)> = st["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let id = n["id"].as_u64()?;
            let replicas = n["replicas"].as_u64()? as usize;
            Some((id, replicas))
        })
        .filter(|(id, _)| *id != 1)
        .collect();
    if candidates.iter().any(|(id, _)| Some(*id) != meta_leader) {
        candidates.retain(|(id, _)| Some(*id) != meta_leader);
    }
    candidates.sort_by_key(|(id, replicas)| (std::cmp::Reverse(*replicas), *id));
    candidates
        .first()
        .copied()
        .with_context(|| format!("no node other than node 1 to kill in the cluster status: {st}"))
}

/// One line on where the shards of `volume` stand, for a timeout message.
fn summary(st: &Value, volume: &str) -> String {
    let shards: Vec<String> = shards(st, volume)
        .iter()
        .map(|s| {
            let nodes: Vec<String> = s["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}:{}",
                        r["node"].as_u64().unwrap_or(0),
                        r["role"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!(
                "shard {} {} [{}]{}",
                s["index"].as_u64().unwrap_or(0),
                s["state"].as_str().unwrap_or("?"),
                nodes.join(" "),
                s["reason"]
                    .as_str()
                    .map_or(String::new(), |r| format!(" ({r})"))
            )
        })
        .collect();
    format!(
        "moves: {}; {}",
        st["moves"].as_array().map_or(0, Vec::len),
        shards.join("; ")
    )
}

/// The `/metrics` text of the nodes at `idx`.
fn metrics_of(nodes: &Nodes, idx: &[usize]) -> Result<Vec<String>> {
    idx.iter()
        .map(|i| {
            let addr = nodes
                .admin
                .get(*i)
                .with_context(|| format!("no admin address for node {}", i + 1))?;
            AdminClient::with_timeout(&addr.to_string(), Duration::from_secs(10))
                .metrics()
                .with_context(|| format!("node {}: GET /metrics", i + 1))
        })
        .collect()
}

/// `raftblock_recovery_bytes_total` of the nodes at `idx`.
fn recovery_bytes(nodes: &Nodes, idx: &[usize]) -> Result<Vec<u64>> {
    metrics_of(nodes, idx)?
        .iter()
        .zip(idx)
        .map(|(text, i)| {
            metric(text, "raftblock_recovery_bytes_total")
                .with_context(|| format!("node {}: no raftblock_recovery_bytes_total", i + 1))
        })
        .collect()
}

/// `raftblock_logged_bytes` of the nodes at `idx`, over all volumes.
fn logged_bytes(nodes: &Nodes, idx: &[usize]) -> Result<Vec<u64>> {
    Ok(metrics_of(nodes, idx)?
        .iter()
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("raftblock_logged_bytes{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .collect())
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(name))
            .then(|| it.next())
            .flatten()
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    })
}

/// One line of fio's IOPS log: Unix time in ms at the end of the interval,
/// and the average IOPS over it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    unix_ms: u64,
    iops: f64,
}

/// Reads fio's write IOPS log (`--log_unix_epoch=1`: `ms, iops, ddir, bs,
/// offset[, prio]`).
fn read_iops_log(path: &Path) -> Result<Vec<Sample>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_iops_log(&text).with_context(|| format!("parsing {}", path.display()))
}

fn parse_iops_log(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(t), Some(v), Some(dir)) = (fields.first(), fields.get(1), fields.get(2)) else {
            bail!("line {}: too few fields: {line:?}", n + 1);
        };
        // 1 is the write direction.
        if *dir != "1" {
            continue;
        }
        let unix_ms = t
            .parse()
            .with_context(|| format!("line {}: bad time {t:?}", n + 1))?;
        let iops = v
            .parse()
            .with_context(|| format!("line {}: bad value {v:?}", n + 1))?;
        out.push(Sample { unix_ms, iops });
    }
    Ok(out)
}

/// Average IOPS over the samples whose interval ends in `(from, to]`, each
/// weighted by its length (the time since the sample before); `None`
/// without such samples.
fn window_iops(samples: &[Sample], from: u64, to: u64) -> Option<f64> {
    let mut ios = 0.0;
    let mut ms = 0u64;
    let mut prev: Option<u64> = None;
    for s in samples {
        if s.unix_ms > from && s.unix_ms <= to {
            let start = prev.unwrap_or(s.unix_ms.saturating_sub(LOG_AVG_MS));
            let len = s.unix_ms.saturating_sub(start);
            ios += s.iops * len as f64 / 1000.0;
            ms += len;
        }
        prev = Some(s.unix_ms);
    }
    (ms > 0).then(|| ios * 1000.0 / ms as f64)
}

/// A fio run in the background; killed when dropped.
struct Background {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    fn start(mut cmd: Command, out: &Path) -> Result<Background> {
        let err = out.with_extension("stderr");
        let file =
            std::fs::File::create(&err).with_context(|| format!("creating {}", err.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting fio (is it installed?)")?;
        Ok(Background {
            child,
            out: out.to_path_buf(),
            err,
        })
    }

    /// Fails if fio has exited (it runs until told to stop).
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling fio")? {
            bail!(
                "background fio exited early ({status}){}",
                fio::stderr_tail(&self.err)
            );
        }
        Ok(())
    }

    /// Stops fio with SIGINT (it then writes its logs and JSON) and waits
    /// up to 30 s for it to exit.
    fn finish(mut self) -> Result<()> {
        self.check_running()?;
        let pid = libc::pid_t::try_from(self.child.id()).context("fio pid")?;
        // SAFETY: kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // fio exits non-zero when stopped by a signal; only its logs matter.
            if self.child.try_wait().context("waiting for fio")?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "fio did not exit within 30 s of SIGINT (output {}){}",
                    self.out.display(),
                    fio::stderr_tail(&self.err)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Best effort during teardown.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a goal was met, as the table prints it.
fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// The printed report.
fn render(runs: &[RunResult], disk_mib_s: f64, args: &RebuildArgs) -> String {
    let mut s = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "rebuild: {NODES} nodes, volume {} in {} shards x {REPLICAS} replicas, down-out {DOWN_OUT}; client 4k randwrite QD{CLIENT_IODEPTH} on node 1",
        args.size, args.shards
    );
    let _ = writeln!(
        s,
        "disk write bandwidth (fio 1M seqwrite, direct, QD8, {} s): {disk_mib_s:.1} MiB/s",
        args.disk_runtime
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9} {:>9} {:>8} {:>9} {:>7} {:>8} {:>8} {:>9} {:>6}",
        "run",
        "rate",
        "killed",
        "shards",
        "out s",
        "move s",
        "redund s",
        "copy MiB",
        "window s",
        "rebuild",
        "% disk",
        "IOPS bef",
        "IOPS dur",
        "kill-red",
        "ratio"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:<12} {:>8} {:>6} {:>6} {:>7} {:>7} {:>9.1} {:>9.0} {:>8.1} {:>9.1} {:>6.1}% {:>8.0} {:>8.0} {:>9.0} {:>6.2}",
            r.name,
            r.recovery_rate,
            format!("n{}", r.victim),
            r.victim_replicas,
            opt_s(r.out_s),
            opt_s(r.first_move_s),
            r.redundant_s,
            r.bytes_copied as f64 / (1u64 << 20) as f64,
            r.rebuild_window_s,
            r.rebuild_mib_s,
            r.rebuild_pct_of_disk,
            r.iops_before,
            r.iops_during,
            r.iops_kill_to_redundant,
            r.iops_ratio
        );
    }
    let _ = writeln!(
        s,
        "(times from the kill; rebuild = MiB copied / window from the first move to full redundancy, MiB/s; IOPS dur over that window, kill-red from the kill)"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{}: victim held {:.0} MiB of the volume, copied {:.0} MiB; up to {} moves at once; fill {:.1} s ({:.0} MiB/s); {} failed status polls",
            r.name,
            r.bytes_expected as f64 / (1u64 << 20) as f64,
            r.bytes_copied as f64 / (1u64 << 20) as f64,
            r.max_moves,
            r.fill_s,
            r.fill_mib_s,
            r.status_errors
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "goals:");
    for g in goals(runs, disk_mib_s) {
        let _ = writeln!(s, "  {}: {} -- {}", g.goal, g.value, met(g.met));
    }
    if let Some(t) = runs.iter().find(|r| r.name == "throttled") {
        let _ = writeln!(
            s,
            "  throttled (default --recovery-rate): node death to full redundancy in {:.1} s",
            t.redundant_s
        );
    }
    s
}

/// One goal and whether it was met.
#[derive(Debug, Serialize)]
struct Goal {
    goal: String,
    value: String,
    met: bool,
}

fn goals(runs: &[RunResult], disk_mib_s: f64) -> Vec<Goal> {
    let mut out = Vec::new();
    if let Some(u) = runs.iter().find(|r| r.name == "unthrottled") {
        out.push(Goal {
            goal: format!(
                "unthrottled rebuild >= {:.0}% of the disk's write bandwidth",
                GOAL_REBUILD_SHARE * 100.0
            ),
            value: format!(
                "{:.1}% ({:.1} of {disk_mib_s:.1} MiB/s)",
                u.rebuild_pct_of_disk, u.rebuild_mib_s
            ),
            met: u.rebuild_mib_s >= GOAL_REBUILD_SHARE * disk_mib_s,
        });
    }
    if let Some(t) = runs.iter().find(|r| r.name == "throttled") {
        out.push(Goal {
            goal: format!(
                "client 4k IOPS during a throttled rebuild >= {:.0}% of before",
                GOAL_IOPS_RATIO * 100.0
            ),
            value: format!(
                "{:.2} ({:.0} of {:.0} IOPS)",
                t.iops_ratio, t.iops_during, t.iops_before
            ),
            met: t.iops_ratio >= GOAL_IOPS_RATIO,
        });
    }
    out
}

fn report_json(
    runs: &[RunResult],
    disk_mib_s: f64,
    args: &RebuildArgs,
    size: u64,
    fio_version: &str,
) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "suite": "rebuild",
        "config": {
            "nodes": NODES,
            "replicas": REPLICAS,
            "size_bytes": size,
            "shards": args.shards,
            "down_out_interval": DOWN_OUT,
            "client_job": format!("fio nbd 4k randwrite iodepth {CLIENT_IODEPTH} on node 1"),
            "runtime_s": args.runtime,
            "disk_runtime_s": args.disk_runtime,
            "timeout_s": args.timeout,
            "fio_version": fio_version,
            "unix_time": unix_time,
        },
        "disk_write_mib_s": disk_mib_s,
        "runs": runs,
        "goals": goals(runs, disk_mib_s),
        "throttled_redundant_s": runs.iter().find(|r| r.name == "throttled").map(|r| r.redundant_s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iops_log_is_parsed_and_averaged_by_time() -> Result<()> {
        let log = "1000, 100, 1, 0, 0\n1250, 200, 1, 0, 0\n1300, 7, 0, 0, 0\n2000, 400, 1, 0, 0\n";
        let s = parse_iops_log(log)?;
        assert_eq!(s.len(), 3);
        // (1000, 2000]: 200 over 250 ms, 400 over 750 ms.
        let v = window_iops(&s, 1000, 2000).context("no samples")?;
        assert!((v - 350.0).abs() < 1e-9, "{v}");
        assert!(window_iops(&s, 2000, 3000).is_none());
        assert!(parse_iops_log("12\n").is_err());
        Ok(())
    }

    #[test]
    fn metric_values_are_found() {
        let text = "# TYPE raftblock_recovery_bytes_total counter\nraftblock_recovery_bytes_total 1048576\nraftblock_recovery_copies 2\n";
        assert_eq!(
            metric(text, "raftblock_recovery_bytes_total"),
            Some(1 << 20)
        );
        assert_eq!(metric(text, "raftblock_recovery_remaining_bytes"), None);
    }

    #[test]
    fn victim_is_not_node_1_nor_the_meta_leader() -> Result<()> {
        let st = json!({"nodes": [
            {"id": 1, "replicas": 9},
            {"id": 2, "replicas": 6},
            {"id": 3, "replicas": 6},
            {"id": 4, "replicas": 5},
        ]});
        assert_eq!(pick_victim(&st, Some(2))?, (3, 6));
        assert_eq!(pick_victim(&st, Some(1))?, (2, 6));
        let only = json!({"nodes": [{"id": 1, "replicas": 3}, {"id": 2, "replicas": 3}]});
        assert_eq!(pick_victim(&only, Some(2))?, (2, 3));
        Ok(())
    }

    #[test]
    fn redundancy_needs_three_live_voters_off_the_dead_node() {
        let shard = |nodes: [u64; 3], state: &str| json!({"leader": nodes[0], "state": state, "replicas": nodes.iter().map(|n| json!({"node": n, "role": "follower", "lag": 0})).collect::<Vec<_>>()});
        let st = |shards: Vec<Value>| json!({"volumes": [{"name": "v", "shards": shards}]});
        let healed = st(vec![
            shard([1, 2, 4], "healthy"),
            shard([1, 2, 4], "healthy"),
        ]);
        assert!(shards_ok(&healed, "v", 2, Some(3), true));
        assert!(!shards_ok(&healed, "v", 3, Some(3), true));
        let not = st(vec![
            shard([1, 2, 3], "healthy"),
            shard([1, 2, 4], "healthy"),
        ]);
        assert!(!shards_ok(&not, "v", 2, Some(3), false));
        let rebuilding = st(vec![shard([1, 2, 4], "rebuilding")]);
        assert!(!shards_ok(&rebuilding, "v", 1, Some(3), false));
    }
}
