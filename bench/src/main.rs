//! `raftblock-bench`: runs fio against the raftblock daemon and against
//! baselines on the same disk (NBD servers: nbdkit's file plugin, qemu-nbd;
//! or ext4 on a loop device), interleaving the targets workload by workload
//! so machine drift hits all of them alike, and reports IOPS, bandwidth and
//! latency side by side with raftblock/baseline ratios (table and JSON).
//!
//! Subcommands: `nbd` (a single node vs. the baselines) and `cluster` (a
//! local 3-node cluster at replicas 3 and 1 vs. the baselines, plus the CPU
//! seconds per GiB written), and `mount`: fio with `libaio` and direct I/O
//! on a file in ext4 on cluster volumes (3 and 1 replicas) mounted through
//! the Docker volume plugin, against ext4 on a loop device over a file on the
//! same disk (setup and teardown in `mount.rs`; needs root).

mod fio;
mod mount;
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
    /// fio (libaio, direct I/O) on a file in ext4 on cluster volumes mounted
    /// through the Docker plugin, against ext4 on a loop device (root).
    Mount(MountArgs),
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
        Command::Nbd(args) => run_nbd(args, false),
        Command::Cluster(args) => run_nbd(args, true),
        Command::Mount(args) => run_mount(args),
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

/// Something fio runs against: which target, where fio does its I/O, and
/// the indexes of the server processes behind it (empty for a kernel-only
/// baseline such as `ext4-loop`).
struct Target {
    kind: TargetKind,
    io: IoTarget,
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
        Some(k) => bail!("--only {k} is not a target of this suite"),
        None => Ok(all),
    }
}

fn run_nbd(args: NbdArgs, cluster: bool) -> Result<()> {
    let set = args.common.settings()?;
    let size = set.size;
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
    let kinds = select(all, args.only)?;
    let ours = |k: &TargetKind| TargetKind::OURS.contains(k);

    let root = workspace_root();
    let target = target_dir(&root);
    let fio_version = targets::tool_version("fio", &["--version"])?;

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
    for kind in &kinds {
        let bin = raftblock_bin.as_deref();
        match kind {
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

    let (rows, notes) = measure(&set, dir, &tgts, &mut servers)?;
    let processes = process_rows(&servers, &names)?;
    for server in servers.drain(..) {
        server.stop();
    }

    let json = if cluster {
        "bench-cluster.json"
    } else {
        "bench-nbd.json"
    };
    let config = report_config(&set, args.engine, fio_version);
    let json_path = args.common.json.unwrap_or_else(|| target.join(json));
    publish(config, rows, notes, processes, &json_path)
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

    let (rows, mut notes) = measure(&set, dir, &tgts, &mut mt.nodes)?;
    let processes = process_rows(&mt.nodes, &names)?;
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
    publish(config, rows, notes, processes, &json_path)?;
    cleaned
}

/// Runs every workload on every target, interleaved, for all rounds
/// (prefilling every target before the first read workload), and returns
/// the median-IOPS row of each (workload, target) and the CPU-per-GiB notes.
fn measure(
    set: &Settings,
    dir: &Path,
    tgts: &[Target],
    servers: &mut [Server],
) -> Result<(Vec<ResultRow>, Vec<String>)> {
    let size = set.size;
    let total = Workload::ALL.len() * tgts.len() * set.rounds;
    let mut step = 0;
    // Every run of every (workload, target), in order, with the CPU seconds
    // the target's processes used during it.
    let mut runs: Vec<(Workload, TargetKind, fio::FioResult, f64)> = Vec::new();
    let mut prefilled = false;
    for round in 1..=set.rounds {
        for workload in Workload::ALL {
            if workload.is_read() && !prefilled {
                for t in tgts {
                    check_interrupted()?;
                    eprint!(
                        "prefill {} ({} MiB sequential 1M writes) ... ",
                        t.kind,
                        size >> 20
                    );
                    flush_stderr();
                    let started = Instant::now();
                    let out = dir.join(format!("fio-prefill-{}.json", t.kind));
                    let done = fio::prefill(&t.io, size, &out);
                    check_interrupted()?;
                    done.with_context(|| format!("prefilling {}", t.kind))?;
                    for s in servers.iter_mut() {
                        s.check_alive()?;
                    }
                    eprintln!("{:.1} s", started.elapsed().as_secs_f64());
                }
                prefilled = true;
            }
            for t in tgts {
                check_interrupted()?;
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
                eprintln!("{:.0} IOPS, {:.1} MiB/s", res.iops, res.mib_s);
                runs.push((workload, t.kind, res, cpu));
            }
        }
    }
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut notes = Vec::new();
    for workload in Workload::ALL {
        for t in tgts {
            let mut mine: Vec<&fio::FioResult> = runs
                .iter()
                .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                .map(|(_, _, r, _)| r)
                .collect();
            mine.sort_by(|a, b| a.iops.total_cmp(&b.iops));
            if let Some(median) = mine.get(mine.len() / 2) {
                rows.push(ResultRow::new(workload.name(), t.kind, median));
            }
            // Targets without a process of their own (kernel baselines) get
            // no CPU figure: their work is not attributable to a pid.
            if !workload.is_read() && !t.procs.is_empty() {
                // CPU of all the target's processes over fio's whole run
                // (ramp included) per GiB fio wrote in that time.
                let (cpu, gib) = runs
                    .iter()
                    .filter(|(w, k, _, _)| *w == workload && *k == t.kind)
                    .fold((0.0, 0.0), |(c, g), (_, _, r, cpu)| {
                        let secs = (set.runtime + fio::RAMP_SECONDS) as f64;
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
    Ok((rows, notes))
}

/// CPU time and peak RSS of every server process so far.
fn process_rows(servers: &[Server], names: &[String]) -> Result<Vec<ProcessRow>> {
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

/// Prints the report's table on stdout and writes its JSON to `json_path`.
fn publish(
    config: ReportConfig,
    rows: Vec<ResultRow>,
    notes: Vec<String>,
    processes: Vec<ProcessRow>,
    json_path: &Path,
) -> Result<()> {
    let mut report = Report::new(config, rows, processes);
    report.notes = notes;
    println!("{}", report.render_text());
    report.write_json(json_path)?;
    eprintln!("wrote {}", json_path.display());
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
