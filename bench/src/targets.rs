//! Starting, probing and stopping the NBD servers under test: the raftblock
//! daemon (built from the workspace, volume created over its admin API), a
//! local 3-node cluster of them (optionally serving the Docker plugin, for
//! the `mount` suite), and the baselines nbdkit (`file` plugin) and qemu-nbd, each serving a file of
//! the same size in the same scratch directory. A [`Server`] kills its
//! process when dropped, so every exit path tears the servers down; the
//! children also get SIGTERM if the benchmark process dies.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use raftblock::client::AdminClient;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Export name used on every target.
pub const EXPORT: &str = "bench";

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which NBD server a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// The raftblock daemon.
    Raftblock,
    /// nbdkit with the file plugin.
    Nbdkit,
    /// qemu-nbd serving a raw file.
    #[value(name = "qemu-nbd")]
    QemuNbd,
    /// A volume with 3 replicas on a local 3-node raftblock cluster.
    #[value(name = "raftblock-r3")]
    ClusterR3,
    /// A volume with 1 replica on the same cluster.
    #[value(name = "raftblock-r1")]
    ClusterR1,
    /// ext4 on a 3-replica cluster volume mounted through the Docker plugin.
    #[value(name = "raftblock-r3-mount")]
    MountR3,
    /// ext4 on a 1-replica cluster volume mounted through the Docker plugin.
    #[value(name = "raftblock-r1-mount")]
    MountR1,
    /// ext4 on a loop device over a file (the `mount` suite's baseline).
    #[value(name = "ext4-loop")]
    Ext4Loop,
    /// An RBD image in a 3-replica pool of a local Ceph cluster (one
    /// monitor, one manager, three BlueStore OSDs; `cluster --with-ceph`).
    #[value(name = "ceph-rbd-r3")]
    CephRbdR3,
}

impl TargetKind {
    /// All targets in the order they are run.
    pub const ALL: [TargetKind; 3] = [
        TargetKind::Raftblock,
        TargetKind::Nbdkit,
        TargetKind::QemuNbd,
    ];

    /// Our targets (rows that get ratio columns); every other one is a baseline.
    pub const OURS: [TargetKind; 5] = [
        TargetKind::Raftblock,
        TargetKind::ClusterR3,
        TargetKind::ClusterR1,
        TargetKind::MountR3,
        TargetKind::MountR1,
    ];

    /// Name used in tables, JSON and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Raftblock => "raftblock",
            TargetKind::Nbdkit => "nbdkit",
            TargetKind::QemuNbd => "qemu-nbd",
            TargetKind::ClusterR3 => "raftblock-r3",
            TargetKind::ClusterR1 => "raftblock-r1",
            TargetKind::MountR3 => "raftblock-r3-mount",
            TargetKind::MountR1 => "raftblock-r1-mount",
            TargetKind::Ext4Loop => "ext4-loop",
            TargetKind::CephRbdR3 => "ceph-rbd-r3",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// I/O engine of the raftblock daemon (`serve --io-engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// io_uring.
    Uring,
    /// Blocking I/O on a thread pool.
    Threads,
}

impl std::fmt::Display for EngineArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineArg::Uring => "uring",
            EngineArg::Threads => "threads",
        })
    }
}

/// A running server process (an NBD server, a cluster node or a Ceph
/// daemon); dropping it stops the process.
#[derive(Debug)]
pub struct Server {
    /// Which target the process belongs to.
    pub kind: TargetKind,
    /// The process's name in messages (the target name unless set, e.g. `ceph-osd.0`).
    pub name: String,
    /// URI for fio, `nbd://127.0.0.1:PORT/EXPORT`.
    pub uri: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the log tail) if the server process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling server process")? {
            bail!(
                "{} exited unexpectedly ({status}){}",
                self.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Sends SIGTERM without waiting (so several servers can shut down at
    /// once before they are stopped one by one).
    pub fn signal_term(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: plain kill(2) on our own child, which has not been reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    /// Kills the process with SIGKILL (no shutdown, as in a crash) and
    /// reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("polling server process")? {
            bail!("{} had already exited ({status})", self.name);
        }
        self.child
            .kill()
            .with_context(|| format!("killing {}", self.name))?;
        self.child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        Ok(())
    }

    /// Where the process's stdout and stderr go.
    pub fn log(&self) -> &Path {
        &self.log
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Best effort during teardown: nothing useful to do on failure.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs `cargo build --release --bin raftblock` in the workspace root (a no-op when fresh).
pub fn build_raftblock(root: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building raftblock (cargo build --release --bin raftblock) ...");
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "raftblock"])
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build --release --bin raftblock failed ({status})");
    }
    Ok(())
}

/// First line of `tool ARGS` output, e.g. `fio-3.33`; fails if the tool is missing.
pub fn tool_version(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    if !out.status.success() {
        bail!("{tool} {} failed ({})", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// Whether `path` lives on a tmpfs (RAM) file system.
pub fn is_tmpfs(path: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) with a valid NUL-terminated path and a zeroed out-struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut st) != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast)]
        let fs_type = st.f_type as i64;
        fs_type == TMPFS_MAGIC
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a probe port")?;
    Ok(l.local_addr().context("probe port address")?.port())
}

/// Spawns `cmd` with output going to `log`, in its own process group (a
/// Ctrl-C is ours to handle, so we can unmount before the servers stop),
/// and with SIGTERM on our death.
pub fn spawn(kind: TargetKind, mut cmd: Command, log: PathBuf, uri: String) -> Result<Server> {
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("duplicating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {program} (is it installed?)"))?;
    Ok(Server {
        kind,
        name: kind.to_string(),
        uri,
        child,
        log,
    })
}

/// Polls `ready` until it holds, the process dies, or the timeout passes.
pub fn wait_ready(server: &mut Server, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    loop {
        server.check_alive()?;
        if ready() {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{}: {what} not ready after {} s{}",
                server.name,
                READY_TIMEOUT.as_secs(),
                log_tail(&server.log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an NBD server at `addr` answers with the `NBDMAGIC` greeting.
pub fn nbd_greets(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let mut magic = [0u8; 8];
    s.read_exact(&mut magic).is_ok() && &magic == b"NBDMAGIC"
}

/// Creates a sparse file of `size` bytes for a baseline server.
pub fn backing_file(dir: &Path, name: &str, size: u64) -> Result<PathBuf> {
    let path = dir.join(name);
    let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(path)
}

/// The nodes of a local cluster started by [`start_nodes`].
pub struct Nodes {
    /// One `raftblock serve` process per node.
    pub servers: Vec<Server>,
    /// Admin API address of every node.
    pub admin: Vec<SocketAddr>,
    /// NBD listener of every node.
    pub nbd: Vec<SocketAddr>,
}

/// The plugin socket node `n` (1-based) of a cluster in `dir` serves.
pub fn plugin_socket(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node{n}.sock"))
}

/// Starts a local 3-node cluster (one `raftblock serve` process per node,
/// each with its own data directory under `dir` and loopback ports) and
/// waits until every node answers `/health`. With `plugin_grace` (an
/// `--attach-grace` such as `3s`) node N serves the Docker plugin on
/// [`plugin_socket`]`(dir, N)`, else none; `kind` names the processes in
/// error messages.
pub fn start_nodes(
    bin: &Path,
    dir: &Path,
    kind: TargetKind,
    plugin_grace: Option<&str>,
    engine: Option<EngineArg>,
) -> Result<Nodes> {
    start_n_nodes(bin, dir, kind, 3, plugin_grace, engine, &[])
}

/// Like [`start_nodes`] with `count` nodes, each also given the `serve`
/// options `extra` (e.g. `--down-out-interval 3s`).
pub fn start_n_nodes(
    bin: &Path,
    dir: &Path,
    kind: TargetKind,
    count: usize,
    plugin_grace: Option<&str>,
    engine: Option<EngineArg>,
    extra: &[&str],
) -> Result<Nodes> {
    let mut raft = Vec::new();
    for _ in 0..count {
        raft.push(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)));
    }
    let peers = raft
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Nodes {
        servers: Vec::new(),
        admin: Vec::new(),
        nbd: Vec::new(),
    };
    for (i, listen) in raft.iter().enumerate() {
        let data = dir.join(format!("node{}", i + 1));
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let nbd = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--node-id")
            .arg((i + 1).to_string())
            .arg("--listen")
            .arg(listen.to_string());
        if let Some(e) = engine {
            cmd.arg("--io-engine").arg(e.to_string());
        }
        match plugin_grace {
            Some(grace) => {
                cmd.arg("--plugin-socket")
                    .arg(plugin_socket(dir, i + 1))
                    .args(["--attach-grace", grace]);
            }
            None => {
                cmd.args(["--plugin-socket", "off"]);
            }
        }
        cmd.arg("--peers")
            .arg(&peers)
            .arg("--nbd-listen")
            .arg(nbd.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .args(extra);
        let log = dir.join(format!("node{}.log", i + 1));
        let mut server = spawn(kind, cmd, log, format!("nbd://{nbd}/"))?;
        let client = AdminClient::new(&admin.to_string());
        wait_ready(&mut server, "GET /health", || client.healthy())?;
        nodes.servers.push(server);
        nodes.admin.push(admin);
        nodes.nbd.push(nbd);
    }
    Ok(nodes)
}

/// Starts a local 3-node cluster ([`start_nodes`], no plugin) and creates
/// volumes `bench-r3` (3 replicas) and `bench-r1` (1 replica); returns the
/// node processes and the NBD URIs (through node 1) of both volumes.
pub fn start_cluster(
    bin: &Path,
    dir: &Path,
    size: u64,
    engine: Option<EngineArg>,
) -> Result<(Vec<Server>, String, String)> {
    let mut nodes = start_nodes(bin, dir, TargetKind::ClusterR3, None, engine)?;
    let client = AdminClient::new(&nodes.admin[0].to_string());
    for (name, replicas) in [("bench-r3", 3), ("bench-r1", 1)] {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match client.create_volume_with(name, size, None, Some(replicas)) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("HTTP 503") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e).with_context(|| format!("creating volume {name}")),
            }
        }
    }
    let nbd = nodes.nbd[0];
    wait_ready(&mut nodes.servers[0], "NBD listener", || nbd_greets(nbd))?;
    Ok((
        nodes.servers,
        format!("nbd://{nbd}/bench-r3"),
        format!("nbd://{nbd}/bench-r1"),
    ))
}

/// Starts `raftblock serve`, waits for `/health`, creates volume `bench`.
pub fn start_raftblock(
    bin: &Path,
    dir: &Path,
    size: u64,
    engine: Option<EngineArg>,
) -> Result<Server> {
    let data = dir.join("raftblock-data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let nbd = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    while admin.port() == nbd.port() {
        admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    }
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .arg("--nbd-listen")
        .arg(nbd.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string());
    if let Some(e) = engine {
        cmd.arg("--io-engine").arg(e.to_string());
    }
    let uri = format!("nbd://{nbd}/{EXPORT}");
    let mut server = spawn(TargetKind::Raftblock, cmd, dir.join("raftblock.log"), uri)?;
    let client = AdminClient::new(&admin.to_string());
    wait_ready(&mut server, "GET /health", || client.healthy())?;
    client
        .create_volume(EXPORT, size, None)
        .context("creating the benchmark volume")?;
    wait_ready(&mut server, "NBD listener", || nbd_greets(nbd))?;
    Ok(server)
}

/// Starts `nbdkit file` on a sparse file of `size` bytes.
pub fn start_nbdkit(dir: &Path, size: u64) -> Result<Server> {
    let file = backing_file(dir, "nbdkit.img", size)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut cmd = Command::new("nbdkit");
    cmd.args(["--exit-with-parent", "-f", "-i", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .arg("file")
        .arg(&file);
    // The file plugin serves the same file under any export name.
    let uri = format!("nbd://{addr}/{EXPORT}");
    let mut server = spawn(TargetKind::Nbdkit, cmd, dir.join("nbdkit.log"), uri)?;
    wait_ready(&mut server, "NBD listener", || nbd_greets(addr))?;
    Ok(server)
}

/// Starts persistent, 4-client `qemu-nbd` on a sparse raw file of `size` bytes.
pub fn start_qemu_nbd(dir: &Path, size: u64) -> Result<Server> {
    let file = backing_file(dir, "qemu-nbd.img", size)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
    let mut cmd = Command::new("qemu-nbd");
    cmd.args([
        "-f",
        "raw",
        "-t",
        "--shared=4",
        "--cache=writeback",
        "-x",
        EXPORT,
    ])
    .args(["-b", "127.0.0.1", "-p"])
    .arg(addr.port().to_string())
    .arg(&file);
    let uri = format!("nbd://{addr}/{EXPORT}");
    let mut server = spawn(TargetKind::QemuNbd, cmd, dir.join("qemu-nbd.log"), uri)?;
    wait_ready(&mut server, "NBD listener", || nbd_greets(addr))?;
    Ok(server)
}

/// CPU time and peak memory of a process.
#[derive(Clone, Copy, Debug)]
pub struct ProcStats {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM) in KiB.
    pub peak_rss_kib: u64,
}

/// Reads utime+stime from `/proc/PID/stat` and VmHWM from `/proc/PID/status`.
pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("malformed {stat_path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. indices 11 and 12 here.
    let tick = |i: usize, name: &str| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{stat_path}: no {name}"))
    };
    let ticks = tick(11, "utime")? + tick(12, "stime")?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };

    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("{status_path}: no VmHWM"))?;
    Ok(ProcStats {
        cpu_seconds: ticks as f64 / hz,
        peak_rss_kib,
    })
}

/// The last lines of a server log, formatted for an error message.
pub fn log_tail(path: &Path) -> String {
    log_tail_lines(path, 15)
}

/// The last `n` lines of a log, formatted for an error message.
pub fn log_tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Ceph's daemons put a blank line after every stderr entry.
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if tail.trim().is_empty() {
        format!(" (log {} is empty)", path.display())
    } else {
        format!("; last lines of {}:\n{tail}", path.display())
    }
}
