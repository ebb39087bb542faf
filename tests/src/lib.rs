//! The harness the integration tests share: starting real `raftblock serve`
//! processes on free loopback ports with their own data directories, killing
//! them with SIGKILL and restarting them on the same data, a bare-bones NBD
//! client for speaking (and mis-speaking) the protocol byte by byte, and the
//! rule for external tools: a missing tool skips the test with a message, or
//! fails it when `RAFTBLOCK_REQUIRE_TOOLS=1` (as in CI).

pub mod browser;
pub mod chaos;
pub mod cluster;
pub mod docker;
pub mod fio;
pub mod nbd;
pub mod powercut;

use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to come up on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Names an executable that runs the `raftblock` program in place of
/// `raftblock-it` (`raftblock-chaos` points it at itself, so `cargo run` of
/// that one binary never starts daemons from a stale `raftblock-it`).
pub const RAFTBLOCK_BIN_ENV: &str = "RAFTBLOCK_IT_BIN";

/// The `raftblock` executable under test (the `raftblock-it` binary of this
/// package, built by cargo next to the test executables, unless
/// [`RAFTBLOCK_BIN_ENV`] names another).
pub fn raftblock_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os(RAFTBLOCK_BIN_ENV) {
        return PathBuf::from(bin);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(format!("raftblock-it{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not found; run the tests through `cargo test`",
        bin.display()
    );
    bin
}

/// Whether external tool `name` is on PATH. When it is not, the test should
/// return early: this prints why, or panics if `RAFTBLOCK_REQUIRE_TOOLS=1`.
pub fn require_tool(name: &str) -> bool {
    if which(name).is_some() {
        return true;
    }
    if std::env::var("RAFTBLOCK_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("`{name}` is required (RAFTBLOCK_REQUIRE_TOOLS=1) but not on PATH");
    }
    eprintln!("SKIPPED: `{name}` is not installed (install it, or see .ci/run)");
    false
}

/// Where `name` is on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    // Below the kernel's ephemeral range (32768 and up): a port the kernel
    // handed out and took back could be handed out again, to another
    // test's listener or to any outgoing connection, before the daemon
    // binds it. Each test process walks its own stretch of ports.
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 20) as u16 * 1_000;
    for _ in 0..1_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 1_000;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        }
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    l.local_addr()
        .expect("local address of an ephemeral listener")
}

/// One `raftblock serve` process and the directory it keeps its data in.
pub struct Daemon {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    /// Where its NBD server listens.
    pub nbd: SocketAddr,
    /// Where its admin API listens.
    pub admin: SocketAddr,
    extra: Vec<String>,
    /// Command the daemon runs under (e.g. `ip netns exec NS`), if any.
    prefix: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Daemon {
    /// Starts a daemon on a fresh temporary data directory.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts a daemon with extra `serve` arguments (e.g. `--io-engine threads`).
    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_custom(&[], free_addr(), free_addr(), extra)
    }

    /// Starts a daemon under `prefix` (e.g. `ip netns exec NS`) with the
    /// given NBD and admin addresses.
    pub fn start_custom(
        prefix: &[&str],
        nbd: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> Daemon {
        Daemon::start_custom_at(prefix, nbd, admin, extra, None)
    }

    /// Like [`Daemon::start_custom`], with the data in `data_dir` (e.g. on
    /// a test filesystem) instead of a fresh temporary directory; its log,
    /// plugin socket and everything else stay in the temporary directory.
    /// `extra` must not hold `--data-dir`: the daemon gets it from here.
    pub fn start_custom_at(
        prefix: &[&str],
        nbd: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
        data_dir: Option<PathBuf>,
    ) -> Daemon {
        assert!(
            !extra.contains(&"--data-dir"),
            "pass the data directory as `data_dir`, not in `extra`"
        );
        let tmp = tempfile::Builder::new()
            .prefix("raftblock-it-")
            .tempdir()
            .expect("create a temporary directory");
        let data_dir = data_dir.unwrap_or_else(|| tmp.path().join("data"));
        let log = tmp.path().join("daemon.log");
        // Cluster nodes serve the Docker plugin; never on the host's real
        // socket unless a test asks for it.
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.iter().any(|a| a == "--plugin-socket") {
            extra.push("--plugin-socket".into());
            extra.push(tmp.path().join("plugin.sock").display().to_string());
        }
        let mut d = Daemon {
            child: None,
            data_dir,
            log,
            nbd,
            admin,
            extra,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        d.spawn().expect("start raftblock serve");
        d
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `nbd://` URI of export `volume`.
    pub fn uri(&self, volume: &str) -> String {
        format!("nbd://{}/{}", self.nbd, volume)
    }

    /// Process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("daemon is running")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("open the daemon log")?;
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(raftblock_bin());
                c
            }
            None => Command::new(raftblock_bin()),
        };
        let child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--nbd-listen")
            .arg(self.nbd.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .args(["--worker-threads", "2", "--io-threads", "2"])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .context("spawn raftblock serve")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let admin = self.admin_client();
        loop {
            if admin.healthy() && TcpStream::connect(self.nbd).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "daemon exited during start-up ({status}):\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon not ready after {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return false;
                }
            }
        }
    }

    /// Starts the daemon again on the same data directory and addresses.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        // The old listeners died with the process; if a port was taken
        // meanwhile, move to a fresh one.
        if self.prefix.is_empty() && TcpListener::bind(self.nbd).is_err() {
            self.nbd = free_addr();
        }
        if self.prefix.is_empty() && TcpListener::bind(self.admin).is_err() {
            self.admin = free_addr();
        }
        self.spawn().expect("restart raftblock serve");
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates a volume through the CLI, panicking with its stderr on failure.
    pub fn create_volume(&self, name: &str, size: &str) {
        let out = self.cli(&["volume", "create", name, "--size", size]);
        assert!(
            out.status.success(),
            "volume create {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `raftblock <args>` against this daemon's admin API.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(raftblock_bin())
            .args(args)
            .env("RAFTBLOCK_SERVER", self.admin.to_string())
            .output()
            .expect("run the raftblock CLI")
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        match self.admin_client().metrics() {
            Ok(body) => body,
            Err(e) => panic!("GET /metrics: {e:#}"),
        }
    }

    /// The daemon's admin API client (the one the CLI uses).
    pub fn admin_client(&self) -> raftblock::client::AdminClient {
        raftblock::client::AdminClient::new(&self.admin.to_string())
    }

    /// The value of one metric sample (`name{labels}`), if present.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == sample).then(|| value.parse().ok()).flatten()
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log_text());
        }
    }
}

/// Runs a command and returns its output, panicking with stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The sha256 of a file, as hex (through `sha256sum`).
pub fn sha256_of(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Deterministic pseudo-random bytes (so a failure is reproducible).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Runs `qemu-io -f raw -c CMD... URI` and fails the test if any command
/// failed or a read did not match its pattern; returns qemu-io's output.
pub fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(uri);
    let out = run_ok(&mut c);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {cmds:?} on {uri}: {text}"
    );
    text
}
