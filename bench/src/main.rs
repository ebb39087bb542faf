//! `raftblock-bench`: runs fio (its `nbd` engine) against the raftblock daemon
//! and against baseline NBD servers (nbdkit's file plugin, qemu-nbd) serving
//! files on the same disk, interleaving the targets workload by workload so
//! machine drift hits all of them alike, and reports IOPS, bandwidth and
//! latency side by side with raftblock/baseline ratios (table and JSON).
//!
//! Subcommands: `nbd` (a single node vs. the baselines) and `cluster` (a
//! local 3-node cluster at replicas 3 and 1 vs. the baselines, plus the CPU
//! seconds per GiB written).

mod fio;
mod report;
mod targets;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use raftblock::size::parse_size;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fio::{FioJob, Workload};
use report::{ProcessRow, Report, ReportConfig, ResultRow};
use targets::{EngineArg, Server, TargetKind};

/// Benchmarks for raftblock.
#[derive(Parser, Debug)]
#[command(name = "raftblock-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// fio over NBD against raftblock, nbdkit and qemu-nbd, interleaved.
    Nbd(NbdArgs),
    /// The same suite against a local 3-node cluster (volumes with 3 and
    /// with 1 replica), nbdkit and qemu-nbd, interleaved.
    Cluster(NbdArgs),
}

/// Options of `raftblock-bench nbd`.
#[derive(Args, Debug)]
struct NbdArgs {
    /// Size of the exported device on every target (K/M/G/T suffixes, whole MiB).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Measured seconds per fio run (after a 2 s ramp).
    #[arg(long, default_value_t = 10)]
    runtime: u64,
    /// Rounds over all workloads and targets; each row reports the run with
    /// the median IOPS (this machine's page cache and neighbours are noisy).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the results as JSON (default: <target dir>/bench-nbd.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory under which the scratch directory with all data files is
    /// created (default: the workspace's target dir; avoid tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// I/O engine passed to `raftblock serve --io-engine` (default: the daemon's choice).
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,
    /// Benchmark only this target.
    #[arg(long, value_enum)]
    only: Option<TargetKind>,
    /// Use the existing target/release/raftblock instead of running `cargo build` first.
    #[arg(long)]
    no_build: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Nbd(args) => run_nbd(args, false),
        Command::Cluster(args) => run_nbd(args, true),
    }
}

/// The workspace root (parent of this crate's manifest directory).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory for the workspace.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                root.join(d)
            }
        }
        None => root.join("target"),
    }
}

/// Something fio runs against: which target, its URI, and the indexes of
/// the server processes behind it.
struct Target {
    kind: TargetKind,
    uri: String,
    procs: Vec<usize>,
}

fn cpu_of(servers: &[Server], procs: &[usize]) -> f64 {
    procs
        .iter()
        .filter_map(|i| servers.get(*i))
        .filter_map(|s| targets::proc_stats(s.pid()).ok())
        .map(|p| p.cpu_seconds)
        .sum()
}

fn run_nbd(args: NbdArgs, cluster: bool) -> Result<()> {
    let size = parse_size(&args.size).context("--size")?;
    if size == 0 || size % (1 << 20) != 0 {
        bail!("--size must be a positive whole number of MiB, got {size} bytes");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if args.runtime == 0 {
        bail!("--runtime must be at least 1 second");
    }
    let all: Vec<TargetKind> = if cluster {
        vec![
            TargetKind::ClusterR3,
            TargetKind::ClusterR1,
            TargetKind::Nbdkit,
            TargetKind::QemuNbd,
        ]
    } else {
        TargetKind::ALL.to_vec()
    };
    let kinds: Vec<TargetKind> = match args.only {
        Some(k) if all.contains(&k) => vec![k],
        Some(k) => bail!("--only {k} is not a target of this suite"),
        None => all,
    };
    let ours = |k: &TargetKind| TargetKind::OURS.contains(k);

    let root = workspace_root();
    let target = target_dir(&root);
    let fio_version = targets::tool_version("fio", &["--version"])?;

    // Binaries first, so a failed build costs nothing else.
    let raftblock_bin = if kinds.iter().any(ours) {
        let bin = target.join("release").join("raftblock");
        if !args.no_build {
            targets::build_raftblock(&root)?;
        }
        if !bin.is_file() {
            bail!("{} not found (build it or drop --no-build)", bin.display());
        }
        Some(bin)
    } else {
        None
    };

    let base = args.dir.clone().unwrap_or_else(|| target.clone());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    if targets::is_tmpfs(&base) {
        eprintln!(
            "warning: {} is on tmpfs; results will not reflect disk I/O",
            base.display()
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix(if cluster {
            "bench-cluster-"
        } else {
            "bench-nbd-"
        })
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch dir under {}", base.display()))?;
    let dir = scratch.path();
    eprintln!(
        "scratch dir {}; device size {} MiB; {} s per run",
        dir.display(),
        size >> 20,
        args.runtime
    );

    // Start every server up front and keep them all running; each `Server`
    // kills its process when dropped, also on an early return by `?`.
    let mut servers: Vec<Server> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut tgts: Vec<Target> = Vec::new();
    let mut cluster_nodes: Option<Vec<usize>> = None;
    for kind in &kinds {
        let bin = raftblock_bin.as_deref();
        match kind {
            TargetKind::ClusterR3 | TargetKind::ClusterR1 => {
                let nodes = match &cluster_nodes {
                    Some(n) => n.clone(),
                    None => {
                        let bin = bin.context("raftblock binary missing")?;
                        let (procs, r3, r1) = targets::start_cluster(bin, dir, size)?;
                        let first = servers.len();
                        for (i, p) in procs.into_iter().enumerate() {
                            eprintln!("started cluster node {} (pid {})", i + 1, p.pid());
                            names.push(format!("raftblock node {}", i + 1));
                            servers.push(p);
                        }
                        let idx: Vec<usize> = (first..servers.len()).collect();
                        cluster_nodes = Some(idx.clone());
                        for (k, uri) in [(TargetKind::ClusterR3, r3), (TargetKind::ClusterR1, r1)] {
                            if kinds.contains(&k) {
                                tgts.push(Target {
                                    kind: k,
                                    uri,
                                    procs: idx.clone(),
                                });
                            }
                        }
                        idx
                    }
                };
                let _ = nodes;
            }
            k => {
                let server = match k {
                    TargetKind::Raftblock => targets::start_raftblock(
                        bin.context("raftblock binary missing")?,
                        dir,
                        size,
                        args.engine,
                    )?,
                    TargetKind::Nbdkit => targets::start_nbdkit(dir, size)?,
                    _ => targets::start_qemu_nbd(dir, size)?,
                };
                eprintln!(
                    "started {} (pid {}) at {}",
                    server.kind,
                    server.pid(),
                    server.uri
                );
                tgts.push(Target {
                    kind: *k,
                    uri: server.uri.clone(),
                    procs: vec![servers.len()],
                });
                names.push(server.kind.to_string());
                servers.push(server);
            }
        }
    }

    let total = Workload::ALL.len() * tgts.len() * args.rounds;
    let mut step = 0;
    // Every run of every (workload, target), in order, with the CPU seconds
    // the target's processes used during it.
    let mut runs: Vec<(Workload, TargetKind, fio::FioResult, f64)> = Vec::new();
    let mut prefilled = false;
    for round in 1..=args.rounds {
        for workload in Workload::ALL {
            if workload.is_read() && !prefilled {
                for t in &tgts {
                    eprint!(
                        "prefill {} ({} MiB sequential 1M writes) ... ",
                        t.kind,
                        size >> 20
                    );
                    flush_stderr();
                    let started = Instant::now();
                    let out = dir.join(format!("fio-prefill-{}.json", t.kind));
                    fio::prefill(&t.uri, size, &out)
                        .with_context(|| format!("prefilling {}", t.kind))?;
                    for s in &mut servers {
                        s.check_alive()?;
                    }
                    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
                }
                prefilled = true;
            }
            for t in &tgts {
                step += 1;
                eprint!(
                    "[{step}/{total}] round {round}: {} on {} ... ",
                    workload.name(),
                    t.kind
                );
                flush_stderr();
                drop_page_cache();
                let job = FioJob {
                    workload,
                    uri: &t.uri,
                    size,
                    runtime_s: args.runtime,
                };
                let out = dir.join(format!("fio-{step}.json"));
                let cpu0 = cpu_of(&servers, &t.procs);
                let res = fio::run(&job, &out)
                    .with_context(|| format!("{} on {}", workload.name(), t.kind))?;
                let cpu = cpu_of(&servers, &t.procs) - cpu0;
                for s in &mut servers {
                    s.check_alive()?;
                }
                eprintln!("{:.0} IOPS, {:.1} MiB/s", res.iops, res.mib_s);
                runs.push((workload, t.kind, res, cpu));
            }
        }
    }
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut notes = Vec::new();
    for workload in Workload::ALL {
        for t in &tgts {
            let mut mine: Vec<&fio::FioResult> = runs
                .iter()
                .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                .map(|(_, _, r, _)| r)
                .collect();
            mine.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            if let Some(median) = mine.get(mine.len() / 2) {
                rows.push(ResultRow::new(workload.name(), t.kind, median));
            }
            if !workload.is_read() {
                // CPU of all the target's processes over fio's whole run
                // (ramp included) per GiB fio wrote in that time.
                let (cpu, gib) = runs
                    .iter()
                    .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                    .fold((0.0, 0.0), |(c, g), (_, _, r, cpu)| {
                        let secs = (args.runtime + fio::RAMP_SECONDS) as f64;
                        (c + cpu, g + r.mib_s * secs / 1024.0)
                    });
                if gib > 0.0 {
                    notes.push(format!(
                        "{} on {}: {:.1} CPU s per GiB written",
                        workload.name(),
                        t.kind,
                        cpu / gib
                    ));
                }
            }
        }
    }

    let mut processes = Vec::new();
    for (server, name) in servers.iter().zip(&names) {
        let stats = targets::proc_stats(server.pid())
            .with_context(|| format!("reading /proc stats of {name}"))?;
        processes.push(ProcessRow {
            target: name.clone(),
            pid: server.pid(),
            cpu_seconds: stats.cpu_seconds,
            peak_rss_mib: stats.peak_rss_kib as f64 / 1024.0,
        });
    }
    for server in servers.drain(..) {
        server.stop();
    }

    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = Report::new(
        ReportConfig {
            size_bytes: size,
            runtime_s: args.runtime,
            rounds: args.rounds,
            ramp_s: fio::RAMP_SECONDS,
            engine: args.engine.map(|e| e.to_string()),
            fio_version,
            unix_time: timestamp,
        },
        rows,
        processes,
    );
    report.notes = notes;
    println!("{}", report.render_text());

    let default_json = if cluster {
        "bench-cluster.json"
    } else {
        "bench-nbd.json"
    };
    let json_path = args.json.unwrap_or_else(|| target.join(default_json));
    report.write_json(&json_path)?;
    eprintln!("wrote {}", json_path.display());
    Ok(())
}

/// Writes back and drops the page cache so every run starts from the same
/// cache state: page-cache folios left by an earlier sequential run make small
/// buffered writes much slower for whichever target runs next, which would
/// skew the comparison. Needs root; without it the runs go on and say so once.
fn drop_page_cache() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!("warning: cannot drop the page cache ({e}); results depend on cache state")
        });
    }
}

/// Flushes stderr so a progress line shows before a long fio run.
fn flush_stderr() {
    // Progress output only; a failed flush is not worth aborting the run.
    let _ = std::io::stderr().flush();
}
