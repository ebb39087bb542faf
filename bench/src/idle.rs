//! `raftblock-bench idle`: what shard replicas cost when nobody uses them.
//! A local 3-node cluster gets `--volumes` volumes of `--shards` shards with
//! three replicas each (so every node holds volumes × shards replicas), the
//! cluster settles (leaders elected, idle groups hibernate), and then each
//! node's CPU time is read over `--measure` seconds, with its resident and
//! peak memory. Nothing is written to the volumes.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::targets::{self, proc_stats, TargetKind};

/// Options of the idle suite.
#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    /// Volumes to create.
    #[arg(long, default_value_t = 100)]
    pub volumes: u32,
    /// Shards per volume (each a Raft group with a replica on every node).
    #[arg(long, default_value_t = 100)]
    pub shards: u32,
    /// Seconds to let the cluster settle after the last volume was created
    /// (10,000 groups take most of a minute to all fall asleep).
    #[arg(long, default_value_t = 90)]
    pub settle: u64,
    /// Seconds over which the nodes' CPU time is measured (a minute takes in
    /// the once-a-minute compaction sweep over every group).
    #[arg(long, default_value_t = 60)]
    pub measure: u64,
}

/// One node's idle cost.
#[derive(Debug, Serialize)]
pub struct IdleNode {
    /// Node id.
    pub node: usize,
    /// Shard replicas (and the metadata group) it holds.
    pub replicas: u64,
    /// Percent of one core used while idle.
    pub core_percent: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: f64,
}

/// Runs the suite with the binary `bin` under `dir`; writes `json`.
pub fn run(args: &IdleArgs, bin: &Path, dir: &Path, json_path: &Path) -> Result<Vec<IdleNode>> {
    if args.volumes == 0 || args.shards == 0 || args.measure == 0 {
        bail!("--volumes, --shards and --measure must be at least 1");
    }
    let mut nodes = targets::start_nodes(bin, dir, TargetKind::ClusterR3, None, None)?;
    let client = raftblock::client::AdminClient::new(&nodes.admin[0].to_string());
    let started = Instant::now();
    let size = u64::from(args.shards) * (64 << 20);
    for v in 1..=args.volumes {
        let body = json!({"name": format!("idle-{v}"), "size": size, "replicas": 3, "shards": args.shards});
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(e) = client.post("/v1/volumes", &body) {
            if Instant::now() > deadline {
                return Err(e).with_context(|| format!("creating volume idle-{v}"));
            }
            crate::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(500));
        }
        if v % 10 == 0 || v == args.volumes {
            eprintln!("created {v} of {} volumes", args.volumes);
        }
    }
    eprintln!(
        "{} volumes x {} shards created in {:.1} s; settling for {} s",
        args.volumes,
        args.shards,
        started.elapsed().as_secs_f64(),
        args.settle
    );
    sleep_checked(Duration::from_secs(args.settle))?;
    for s in nodes.servers.iter_mut() {
        s.check_alive()?;
    }
    let before: Vec<f64> = nodes
        .servers
        .iter()
        .map(|s| proc_stats(s.pid()).map(|p| p.cpu_seconds))
        .collect::<Result<_>>()?;
    sleep_checked(Duration::from_secs(args.measure))?;
    let mut out = Vec::new();
    for (i, s) in nodes.servers.iter().enumerate() {
        let after = proc_stats(s.pid())?;
        let local = raftblock::client::AdminClient::new(&nodes.admin[i].to_string())
            .local_replicas()
            .with_context(|| format!("node {}: GET /v1/cluster/local", i + 1))?;
        let replicas = local["groups"].as_array().map_or(0, |g| g.len() as u64);
        out.push(IdleNode {
            node: i + 1,
            replicas,
            core_percent: (after.cpu_seconds - before[i]) * 100.0 / args.measure as f64,
            rss_mib: rss_kib(s.pid())? as f64 / 1024.0,
            peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
        });
    }
    for n in &out {
        println!(
            "node {}: {} replicas, {:.2}% of a core idle, RSS {:.0} MiB (peak {:.0} MiB)",
            n.node, n.replicas, n.core_percent, n.rss_mib, n.peak_rss_mib
        );
    }
    let report = json!({
        "suite": "idle",
        "volumes": args.volumes,
        "shards": args.shards,
        "settle_s": args.settle,
        "measure_s": args.measure,
        "nodes": out,
    });
    std::fs::write(json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("wrote {}", json_path.display());
    for s in nodes.servers.drain(..) {
        s.stop();
    }
    Ok(out)
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        crate::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(200).min(end - Instant::now()));
    }
    Ok(())
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: no VmRSS"))
}
