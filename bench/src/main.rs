//! `raftblock-bench`: runs fio against the raftblock daemon and against
//! baselines on the same disk (NBD servers: nbdkit's file plugin, qemu-nbd;
//! or ext4 on a loop device), interleaving the targets workload by workload
//! so machine drift hits all of them alike, and reports IOPS, bandwidth and
//! latency side by side with raftblock/baseline ratios (table and JSON).
//!
//! Subcommands: `nbd` (a single node vs. the baselines) and `cluster` (a
//! local 3-node cluster at replicas 3 and 1 vs. the baselines, plus
//! queue-depth-1 latency runs and the CPU seconds per GiB; with
//! `--with-ceph` also against Ceph RBD with 3 replicas on the same machine,
//! set up and torn down by `ceph.rs`), and `mount`: fio with `libaio` and direct I/O
//! on a file in ext4 on cluster volumes (3 and 1 replicas) mounted through
//! the Docker volume plugin, against ext4 on a loop device over a file on the
//! same disk (setup and teardown in `mount.rs`; needs root). Every suite
//! also draws its results as an SVG next to the JSON (`chart.rs`). `idle`
//! measures what unused shard replicas cost (`idle.rs`), and `rebuild` how
//! fast a killed node's replicas are re-created on a 4-node cluster and
//! what that costs client IOPS (`rebuild.rs`; table and JSON only).

mod ceph;
mod chart;
mod fio;
mod idle;
mod mount;
mod rebuild;
mod report;
mod targets;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use raftblock::size::parse_size;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fio::{FioJob, IoTarget, Workload};
use report::{CpuPerGib, ProcessRow, Report, ReportConfig, ResultRow, TargetResources};
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
    /// The same suite plus 4k QD1 latency runs against a local 3-node
    /// cluster (volumes with 3 and with 1 replica), nbdkit and qemu-nbd
    /// (and with --with-ceph Ceph RBD, 3 replicas), interleaved.
    Cluster(ClusterArgs),
    /// fio (libaio, direct I/O) on a file in ext4 on cluster volumes mounted
    /// through the Docker plugin, against ext4 on a loop device (root).
    Mount(MountArgs),
    /// What idle shard replicas cost: a local 3-node cluster with many
    /// volumes of many shards, nothing written; CPU and memory per node.
    Idle(IdleCmd),
    /// Rebuild after a node dies: throughput against the disk's write
    /// bandwidth, time to full redundancy and client IOPS during the
    /// rebuild, throttled (default --recovery-rate) and unthrottled, on a
    /// local 4-node cluster.
    Rebuild(RebuildCmd),
}

/// Options of `raftblock-bench rebuild`.
#[derive(Args, Debug)]
struct RebuildCmd {
    #[command(flatten)]
    rebuild: rebuild::RebuildArgs,
    /// Where to write the results as JSON (default: <target dir>/bench-rebuild.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory under which the scratch directory with the nodes' data
    /// directories is created (default: the workspace's target dir; avoid
    /// tmpfs: the disk's bandwidth is measured there).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the existing target/release/raftblock instead of running `cargo build` first.
    #[arg(long)]
    no_build: bool,
}

/// Options of `raftblock-bench idle`.
#[derive(Args, Debug)]
struct IdleCmd {
    #[command(flatten)]
    idle: idle::IdleArgs,
    /// Where to write the results as JSON (default: <target dir>/bench-idle.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory under which the nodes' data directories are created
    /// (default: the workspace's target dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the existing target/release/raftblock instead of running `cargo build` first.
    #[arg(long)]
    no_build: bool,
}

/// Options of `raftblock-bench nbd` and `cluster`.
#[derive(Args, Debug)]
struct NbdArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// I/O engine passed to `raftblock serve --io-engine` (default: the daemon's choice).
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,
    /// Benchmark only this target.
    #[arg(long, value_enum)]
    only: Option<TargetKind>,
}

/// Options of `raftblock-bench cluster`.
#[derive(Args, Debug)]
struct ClusterArgs {
    #[command(flatten)]
    nbd: NbdArgs,
    /// Also benchmark `ceph-rbd-r3`: a local Ceph cluster (1 mon, 1 mgr, 3
    /// BlueStore OSDs on sparse files, pool size 3 / min_size 2) through
    /// fio's rbd engine. Installs Debian's ceph packages when missing (root).
    #[arg(long)]
    with_ceph: bool,
}

/// Options of `raftblock-bench mount`.
#[derive(Args, Debug)]
struct MountArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Benchmark only this target (raftblock-r3-mount, raftblock-r1-mount, ext4-loop).
    #[arg(long, value_enum)]
    only: Option<TargetKind>,
}

/// Options every suite shares.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Size of the exported device (for `mount`: of the fio file) on every
    /// target (K/M/G/T suffixes, whole MiB).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Measured seconds per fio run (after a 2 s ramp).
    #[arg(long, default_value_t = 10)]
    runtime: u64,
    /// Rounds over all workloads and targets; each row reports the run with
    /// the median IOPS (this machine's page cache and neighbours are noisy).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the results as JSON (default: <target dir>/bench-<suite>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory under which the scratch directory with all data files is
    /// created (default: the workspace's target dir; avoid tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Use the existing target/release/raftblock instead of running `cargo build` first.
    #[arg(long)]
    no_build: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    catch_interrupts();
    match cli.command {
        Command::Nbd(args) => run_nbd(args, false, false),
        Command::Cluster(args) => run_nbd(args.nbd, true, args.with_ceph),
        Command::Mount(args) => run_mount(args),
        Command::Idle(args) => run_idle(args),
        Command::Rebuild(args) => run_rebuild(args),
    }
}

fn run_rebuild(args: RebuildCmd) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let bin = target.join("release").join("raftblock");
    if !args.no_build {
        targets::build_raftblock(&root)?;
    }
    if !bin.is_file() {
        bail!("{} not found (build it or drop --no-build)", bin.display());
    }
    let base = args.dir.clone().unwrap_or_else(|| target.clone());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    if targets::is_tmpfs(&base) {
        eprintln!(
            "warning: {} is on tmpfs; results will not reflect disk I/O",
            base.display()
        );
    }
    let scratch = tempfile::Builder::new()
        .prefix("bench-rebuild-")
        .disable_cleanup(args.rebuild.keep)
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch dir under {}", base.display()))?;
    eprintln!(
        "scratch dir {}{}",
        scratch.path().display(),
        if args.rebuild.keep { " (kept)" } else { "" }
    );
    let json_path = args
        .json
        .unwrap_or_else(|| target.join("bench-rebuild.json"));
    rebuild::run(&args.rebuild, &bin, scratch.path(), &json_path).map(|_| ())
}

fn run_idle(args: IdleCmd) -> Result<()> {
    let root = workspace_root();
    let target = target_dir(&root);
    let bin = target.join("release").join("raftblock");
    if !args.no_build {
        targets::build_raftblock(&root)?;
    }
    if !bin.is_file() {
        bail!("{} not found (build it or drop --no-build)", bin.display());
    }
    let base = args.dir.clone().unwrap_or_else(|| target.clone());
    let scratch = tempfile::Builder::new()
        .prefix("bench-idle-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch dir under {}", base.display()))?;
    let json_path = args.json.unwrap_or_else(|| target.join("bench-idle.json"));
    idle::run(&args.idle, &bin, scratch.path(), &json_path).map(|_| ())
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

/// Something fio runs against: which target, where fio does its I/O, and
/// the indexes of the server processes behind it (empty for a kernel-only
/// baseline such as `ext4-loop`).
struct Target {
    kind: TargetKind,
    io: IoTarget,
    procs: Vec<usize>,
}

fn cpu_of(servers: &[&mut Server], procs: &[usize]) -> f64 {
    procs
        .iter()
        .filter_map(|i| servers.get(*i))
        .filter_map(|s| targets::proc_stats(s.pid()).ok())
        .map(|p| p.cpu_seconds)
        .sum()
}

/// The validated numbers of [`CommonArgs`].
struct Settings {
    size: u64,
    runtime: u64,
    rounds: usize,
}

impl CommonArgs {
    fn settings(&self) -> Result<Settings> {
        let size = parse_size(&self.size).context("--size")?;
        if size == 0 || size % (1 << 20) != 0 {
            bail!("--size must be a positive whole number of MiB, got {size} bytes");
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if self.runtime == 0 {
            bail!("--runtime must be at least 1 second");
        }
        Ok(Settings {
            size,
            runtime: self.runtime,
            rounds: self.rounds,
        })
    }

    /// Builds (unless --no-build) and returns target/release/raftblock.
    fn raftblock_bin(&self, root: &Path, target: &Path) -> Result<PathBuf> {
        let bin = target.join("release").join("raftblock");
        if !self.no_build {
            targets::build_raftblock(root)?;
        }
        if !bin.is_file() {
            bail!("{} not found (build it or drop --no-build)", bin.display());
        }
        Ok(bin)
    }

    /// Creates the scratch directory `<--dir or target>/<prefix>XXXXXX`.
    fn scratch(&self, target: &Path, prefix: &str) -> Result<tempfile::TempDir> {
        let base = self.dir.clone().unwrap_or_else(|| target.to_path_buf());
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        if targets::is_tmpfs(&base) {
            eprintln!(
                "warning: {} is on tmpfs; results will not reflect disk I/O",
                base.display()
            );
        }
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&base)
            .with_context(|| format!("creating a scratch dir under {}", base.display()))
    }
}

/// The targets of a suite, narrowed by `--only`.
fn select(all: Vec<TargetKind>, only: Option<TargetKind>) -> Result<Vec<TargetKind>> {
    match only {
        Some(k) if all.contains(&k) => Ok(vec![k]),
        Some(TargetKind::CephRbdR3) => {
            bail!("--only ceph-rbd-r3 needs `cluster --with-ceph`")
        }
        Some(k) => bail!("--only {k} is not a target of this suite"),
        None => Ok(all),
    }
}

fn run_nbd(args: NbdArgs, cluster: bool, with_ceph: bool) -> Result<()> {
    let set = args.common.settings()?;
    let size = set.size;
    let all: Vec<TargetKind> = if cluster {
        let mut all = vec![
            TargetKind::ClusterR3,
            TargetKind::ClusterR1,
            TargetKind::Nbdkit,
            TargetKind::QemuNbd,
        ];
        if with_ceph {
            all.push(TargetKind::CephRbdR3);
        }
        all
    } else {
        TargetKind::ALL.to_vec()
    };
    let kinds = select(all, args.only)?;
    let ours = |k: &TargetKind| TargetKind::OURS.contains(k);
    let workloads: &[Workload] = if cluster {
        &Workload::CLUSTER
    } else {
        &Workload::ALL
    };

    let root = workspace_root();
    let target = target_dir(&root);
    let fio_version = targets::tool_version("fio", &["--version"])?;
    if kinds.contains(&TargetKind::CephRbdR3) {
        ceph::ensure_installed()?;
    }

    // Binaries first, so a failed build costs nothing else.
    let raftblock_bin = if kinds.iter().any(ours) {
        Some(args.common.raftblock_bin(&root, &target)?)
    } else {
        None
    };

    let scratch = args.common.scratch(
        &target,
        if cluster {
            "bench-cluster-"
        } else {
            "bench-nbd-"
        },
    )?;
    let dir = scratch.path();
    eprintln!(
        "scratch dir {}; device size {} MiB; {} s per run",
        dir.display(),
        size >> 20,
        set.runtime
    );

    // Start every server up front and keep them all running; each `Server`
    // kills its process when dropped, also on an early return by `?`.
    let mut servers: Vec<Server> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut tgts: Vec<Target> = Vec::new();
    let mut cluster_started = false;
    // Its daemons are numbered after `servers` once everything runs.
    let mut ceph_cluster: Option<ceph::CephCluster> = None;
    for kind in &kinds {
        let bin = raftblock_bin.as_deref();
        match kind {
            TargetKind::CephRbdR3 => {
                let c = ceph::CephCluster::start(dir, size)?;
                tgts.push(Target {
                    kind: *kind,
                    io: c.io_target(),
                    procs: Vec::new(),
                });
                ceph_cluster = Some(c);
            }
            TargetKind::ClusterR3 | TargetKind::ClusterR1 => {
                if !cluster_started {
                    cluster_started = true;
                    let bin = bin.context("raftblock binary missing")?;
                    let (procs, r3, r1) = targets::start_cluster(bin, dir, size, args.engine)?;
                    let first = servers.len();
                    for (i, p) in procs.into_iter().enumerate() {
                        eprintln!("started cluster node {} (pid {})", i + 1, p.pid());
                        names.push(format!("raftblock node {}", i + 1));
                        servers.push(p);
                    }
                    let idx: Vec<usize> = (first..servers.len()).collect();
                    for (k, uri) in [(TargetKind::ClusterR3, r3), (TargetKind::ClusterR1, r1)] {
                        if kinds.contains(&k) {
                            tgts.push(Target {
                                kind: k,
                                io: IoTarget::Nbd(uri),
                                procs: idx.clone(),
                            });
                        }
                    }
                }
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
                    io: IoTarget::Nbd(server.uri.clone()),
                    procs: vec![servers.len()],
                });
                names.push(server.kind.to_string());
                servers.push(server);
            }
        }
    }

    let mut notes = Vec::new();
    let mut all: Vec<&mut Server> = servers.iter_mut().collect();
    if let Some(c) = ceph_cluster.as_mut() {
        notes.push(format!(
            "ceph-rbd-r3 setup (mon, mgr, 3 OSDs, pool, image) took {:.0} s",
            c.setup.as_secs_f64()
        ));
        let first = all.len();
        for d in c.daemons.iter_mut() {
            names.push(d.name.clone());
            all.push(d);
        }
        for t in tgts.iter_mut().filter(|t| t.kind == TargetKind::CephRbdR3) {
            t.procs = (first..all.len()).collect();
        }
    }

    let (rows, cpu) = measure(&set, dir, workloads, &tgts, &mut all)?;
    let processes = process_rows(&all, &names)?;
    let resources = target_resources(&tgts, &processes);
    drop(all);
    for server in servers.drain(..) {
        server.stop();
    }
    if let Some(c) = ceph_cluster.take() {
        c.stop();
    }
    if kinds.contains(&TargetKind::CephRbdR3) {
        notes.push(
            "(ceph-rbd-r3 CPU counts its daemons only; librbd runs inside fio, as fio's NBD client does for the others)"
                .into(),
        );
    }

    let json = if cluster {
        "bench-cluster.json"
    } else {
        "bench-nbd.json"
    };
    let config = report_config(&set, args.engine, fio_version);
    let json_path = args.common.json.unwrap_or_else(|| target.join(json));
    let title = if cluster {
        "raftblock-bench cluster"
    } else {
        "raftblock-bench nbd"
    };
    publish(
        config,
        Measured {
            rows,
            cpu,
            notes,
            processes,
            resources,
        },
        &json_path,
        title,
    )
}

fn run_mount(args: MountArgs) -> Result<()> {
    let set = args.common.settings()?;
    let kinds = select(mount::ALL.to_vec(), args.only)?;
    mount::check_prerequisites(&kinds)?;
    let root = workspace_root();
    let target = target_dir(&root);
    let fio_version = targets::tool_version("fio", &["--version"])?;
    let raftblock_bin = if kinds.iter().any(|k| TargetKind::OURS.contains(k)) {
        Some(args.common.raftblock_bin(&root, &target)?)
    } else {
        None
    };
    // Declared before the targets, so their teardown (unmounts) runs before
    // the scratch directory is deleted.
    let scratch = args.common.scratch(&target, "bench-mount-")?;
    let dir = scratch.path();
    eprintln!(
        "scratch dir {}; fio file {} MiB in a {} MiB filesystem; {} s per run",
        dir.display(),
        set.size >> 20,
        (set.size + mount::FS_OVERHEAD) >> 20,
        set.runtime
    );

    let mut mt = mount::MountTargets::start(raftblock_bin.as_deref(), dir, set.size, &kinds)?;
    // The raftblock targets count all three nodes, as in `cluster`.
    let all_nodes: Vec<usize> = (0..mt.nodes.len()).collect();
    let tgts: Vec<Target> = mt
        .targets
        .iter()
        .map(|t| Target {
            kind: t.kind,
            io: IoTarget::File(t.file.clone()),
            // ext4-loop is all kernel work (ext4, loop device), done by no
            // process of its own: no CPU figure and no process row for it.
            procs: if t.kind == TargetKind::Ext4Loop {
                Vec::new()
            } else {
                all_nodes.clone()
            },
        })
        .collect();
    let names: Vec<String> = (1..=mt.nodes.len())
        .map(|i| format!("raftblock node {i}"))
        .collect();

    let mut nodes: Vec<&mut Server> = mt.nodes.iter_mut().collect();
    let (rows, cpu) = measure(&set, dir, &Workload::ALL, &tgts, &mut nodes)?;
    let processes = process_rows(&nodes, &names)?;
    drop(nodes);
    let resources = target_resources(&tgts, &processes);
    let mut notes = Vec::new();
    if !mt.nodes.is_empty() {
        notes.push(
            "(CPU per GiB counts the three daemons only, not the kernel's ext4, loop and FUSE work)"
                .into(),
        );
    }
    eprintln!("unmounting and tearing down ...");
    let cleaned = mt.teardown();

    let config = report_config(&set, None, fio_version);
    let json_path = args
        .common
        .json
        .unwrap_or_else(|| target.join("bench-mount.json"));
    publish(
        config,
        Measured {
            rows,
            cpu,
            notes,
            processes,
            resources,
        },
        &json_path,
        "raftblock-bench mount",
    )?;
    cleaned
}

/// Runs every workload on every target, interleaved, for all rounds
/// (prefilling every target before the first read workload), and returns
/// the median-IOPS row of each (workload, target) and the CPU seconds per
/// GiB of every target with processes of its own.
fn measure(
    set: &Settings,
    dir: &Path,
    workloads: &[Workload],
    tgts: &[Target],
    servers: &mut [&mut Server],
) -> Result<(Vec<ResultRow>, Vec<CpuPerGib>)> {
    let size = set.size;
    let total = workloads.len() * tgts.len() * set.rounds;
    let mut step = 0;
    // Every run of every (workload, target), in order, with the CPU seconds
    // the target's processes used during it.
    let mut runs: Vec<(Workload, TargetKind, fio::FioResult, f64)> = Vec::new();
    let mut prefilled = false;
    // One bar over every run, with an ETA; each result is printed above it.
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{pos}/{len}] {msg} [{bar:30}] {elapsed} (ETA {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    for round in 1..=set.rounds {
        for &workload in workloads {
            if workload.is_read() && !prefilled {
                for t in tgts {
                    check_interrupted()?;
                    bar.set_message(format!(
                        "prefill {} ({} MiB sequential 1M writes)",
                        t.kind,
                        size >> 20
                    ));
                    let started = Instant::now();
                    let out = dir.join(format!("fio-prefill-{}.json", t.kind));
                    let done = fio::prefill(&t.io, size, &out);
                    check_interrupted()?;
                    done.with_context(|| format!("prefilling {}", t.kind))?;
                    for s in servers.iter_mut() {
                        s.check_alive()?;
                    }
                    let secs = started.elapsed().as_secs_f64();
                    bar.suspend(|| eprintln!("prefilled {} in {secs:.1} s", t.kind));
                }
                prefilled = true;
            }
            for t in tgts {
                check_interrupted()?;
                step += 1;
                let what = format!("round {round}: {} on {}", workload.name(), t.kind);
                bar.set_message(what.clone());
                drop_page_cache();
                let job = FioJob {
                    workload,
                    target: &t.io,
                    size,
                    runtime_s: set.runtime,
                };
                let out = dir.join(format!("fio-{step}.json"));
                let cpu0 = cpu_of(servers, &t.procs);
                let res = fio::run(&job, &out);
                check_interrupted()?;
                let res = res.with_context(|| format!("{} on {}", workload.name(), t.kind))?;
                let cpu = cpu_of(servers, &t.procs) - cpu0;
                for s in servers.iter_mut() {
                    s.check_alive()?;
                }
                bar.inc(1);
                // Printed whether or not the bar is drawn (stderr may be a file).
                bar.suspend(|| {
                    eprintln!(
                        "[{step}/{total}] {what}: {:.0} IOPS, {:.1} MiB/s",
                        res.iops, res.mib_s
                    )
                });
                runs.push((workload, t.kind, res, cpu));
            }
        }
    }
    bar.finish_and_clear();
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut cpu_per_gib = Vec::new();
    for &workload in workloads {
        for t in tgts {
            let mut mine: Vec<&fio::FioResult> = runs
                .iter()
                .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                .map(|(_, _, r, _)| r)
                .collect();
            mine.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            if let Some(median) = mine.get(mine.len() / 2) {
                rows.push(ResultRow::new(workload, t.kind, median));
            }
            // Targets without a process of their own (kernel baselines) get
            // no CPU figure: their work is not attributable to a pid.
            if !t.procs.is_empty() {
                // CPU of all the target's processes over fio's whole run
                // (ramp included) per GiB fio moved in that time.
                let (cpu, gib) = runs
                    .iter()
                    .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                    .fold((0.0, 0.0), |(c, g), (_, _, r, cpu)| {
                        let secs = (set.runtime + fio::RAMP_SECONDS) as f64;
                        (c + cpu, g + r.mib_s * secs / 1024.0)
                    });
                if gib > 0.0 {
                    cpu_per_gib.push(CpuPerGib {
                        workload: workload.name().to_string(),
                        target: t.kind.to_string(),
                        write: !workload.is_read(),
                        cpu_seconds: cpu,
                        gib,
                        cpu_s_per_gib: cpu / gib,
                    });
                }
            }
        }
    }
    Ok((rows, cpu_per_gib))
}

/// The processes of every distinct set of target processes (targets that
/// share processes, like raftblock-r3 and -r1, are summed once), from the
/// [`process_rows`] of the same server list.
fn target_resources(tgts: &[Target], processes: &[ProcessRow]) -> Vec<TargetResources> {
    let mut out: Vec<(Vec<usize>, TargetResources)> = Vec::new();
    for t in tgts.iter().filter(|t| !t.procs.is_empty()) {
        if let Some((_, r)) = out.iter_mut().find(|(p, _)| *p == t.procs) {
            r.targets.push(t.kind.to_string());
            continue;
        }
        let rows: Vec<&ProcessRow> = t.procs.iter().filter_map(|i| processes.get(*i)).collect();
        out.push((
            t.procs.clone(),
            TargetResources {
                targets: vec![t.kind.to_string()],
                processes: rows.iter().map(|p| p.target.clone()).collect(),
                cpu_seconds: rows.iter().map(|p| p.cpu_seconds).sum(),
                peak_rss_mib: rows.iter().map(|p| p.peak_rss_mib).sum(),
            },
        ));
    }
    out.into_iter().map(|(_, r)| r).collect()
}

/// CPU time and peak RSS of every server process so far.
fn process_rows(servers: &[&mut Server], names: &[String]) -> Result<Vec<ProcessRow>> {
    let mut processes = Vec::new();
    for (server, name) in servers.iter().zip(names) {
        let stats = targets::proc_stats(server.pid())
            .with_context(|| format!("reading /proc stats of {name}"))?;
        processes.push(ProcessRow {
            target: name.clone(),
            pid: server.pid(),
            cpu_seconds: stats.cpu_seconds,
            peak_rss_mib: stats.peak_rss_kib as f64 / 1024.0,
        });
    }
    Ok(processes)
}

/// The report's record of the settings, stamped with the current time.
fn report_config(set: &Settings, engine: Option<EngineArg>, fio_version: String) -> ReportConfig {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ReportConfig {
        size_bytes: set.size,
        runtime_s: set.runtime,
        rounds: set.rounds,
        ramp_s: fio::RAMP_SECONDS,
        engine: engine.map(|e| e.to_string()),
        fio_version,
        unix_time: timestamp,
    }
}

/// What [`measure`] and the process stats gave, for [`publish`].
struct Measured {
    rows: Vec<ResultRow>,
    cpu: Vec<CpuPerGib>,
    /// Notes printed before the CPU-per-GiB lines.
    notes: Vec<String>,
    processes: Vec<ProcessRow>,
    resources: Vec<TargetResources>,
}

/// Prints the report's table on stdout, writes its JSON to `json_path` and
/// its chart next to it (same name, `.svg`).
fn publish(config: ReportConfig, m: Measured, json_path: &Path, title: &str) -> Result<()> {
    let mut report = Report::new(config, m.rows, m.processes);
    report.notes = m.notes;
    report.notes.extend(m.cpu.iter().map(CpuPerGib::note));
    report.cpu_per_gib = m.cpu;
    report.resources = m.resources;
    println!("{}", report.render_text());
    report.write_json(json_path)?;
    eprintln!("wrote {}", json_path.display());
    let svg = json_path.with_extension("svg");
    chart::write_svg(&report, title, &svg)?;
    eprintln!("wrote chart {}", svg.display());
    Ok(())
}

/// Set by SIGINT or SIGTERM: the runs stop at the next check and everything
/// set up is torn down by its guards (servers, mounts, scratch directory).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`]. The servers run in their
/// own process groups, so a Ctrl-C reaches only us and fio (which stops its
/// run); we then undo the setup in order instead of dying with mounts left.
fn catch_interrupts() {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Fails once SIGINT or SIGTERM arrived.
fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
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
