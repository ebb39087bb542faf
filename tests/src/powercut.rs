//! A power domain for the power-loss tests: the `raftblock-powercut`
//! filesystem (built here as `raftblock-powercut-it`, next to
//! `raftblock-it`) mounted over a backing directory. It keeps every write
//! in its own memory until the file is fsync'd, so SIGKILLing it is a
//! power cut: whatever was not synced is gone, unlike a SIGKILL of the
//! daemon alone, after which the page cache still holds everything.
//!
//! Killing the filesystem leaves a dead mount (every access fails with
//! ENOTCONN) until it is lazily unmounted; a test kills the filesystem
//! first (the moment power is lost), then the processes that used it, then
//! detaches the mount and starts the filesystem again on the same backing
//! directory. Dropping the harness kills and unmounts, also when the test
//! panics, before the temporary directory goes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{raftblock_bin, require_tool};

/// How long a mount may take to print `ready` on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether this machine can mount the filesystem (root, `/dev/fuse`,
/// `fusermount3`). When it cannot, the test should return early: this
/// prints why, or panics if `RAFTBLOCK_REQUIRE_TOOLS=1`.
pub fn fuse_available() -> bool {
    if !require_tool("fusermount3") {
        return false;
    }
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if Path::new("/dev/fuse").exists() && root {
        return true;
    }
    if std::env::var("RAFTBLOCK_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("/dev/fuse and root are required (RAFTBLOCK_REQUIRE_TOOLS=1)");
    }
    eprintln!("SKIPPED: needs /dev/fuse and root to mount the power-cut filesystem");
    false
}

/// The power-cut filesystem binary, next to the `raftblock` under test.
fn powercut_bin() -> PathBuf {
    let name = format!("raftblock-powercut-it{}", std::env::consts::EXE_SUFFIX);
    let bin = raftblock_bin().with_file_name(name);
    assert!(
        bin.is_file(),
        "{} not found; run the tests through `cargo test`",
        bin.display()
    );
    bin
}

/// One mounted power-cut filesystem over its own backing directory.
pub struct PowercutFs {
    child: Option<Child>,
    backing: PathBuf,
    mount: PathBuf,
    log: PathBuf,
    /// Times the filesystem was started.
    starts: u32,
    // Last: removed after Drop has unmounted.
    _dir: tempfile::TempDir,
}

impl PowercutFs {
    /// Mounts a fresh filesystem over an empty backing directory (check
    /// [`fuse_available`] first).
    pub fn start_new() -> PowercutFs {
        let dir = tempfile::Builder::new()
            .prefix("raftblock-powercut-")
            .tempdir()
            .expect("create a temporary directory");
        let backing = dir.path().join("backing");
        let mount = dir.path().join("mnt");
        for d in [&backing, &mount] {
            std::fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        let mut fs = PowercutFs {
            child: None,
            backing,
            log: dir.path().join("powercut.log"),
            mount,
            starts: 0,
            _dir: dir,
        };
        fs.start();
        fs
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mount
    }

    /// The directory that holds what was synced.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// What the filesystem processes logged so far (stderr, every start).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the filesystem on the backing directory and waits for its
    /// `ready` line (the mount is in place then).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the filesystem is already running");
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the filesystem log");
        // A marker, so the log shows which power-on said what.
        let _ = std::io::Write::write_all(
            &mut log,
            format!("--- start {} ---\n", self.starts).as_bytes(),
        );
        let mut child = Command::new(powercut_bin())
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mount")
            .arg(&self.mount)
            // Its own default (warnings, no unmount noise), whatever the
            // test runner's RUST_LOG says.
            .env("RUST_LOG", "warn,fuser::mnt=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn raftblock-powercut-it");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining, so the filesystem never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "raftblock-powercut-it exited before it was ready ({status}):\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.detach();
                panic!(
                    "raftblock-powercut-it not ready after {READY_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
        }
        self.child = Some(child);
    }

    /// The power goes out: SIGKILL the filesystem. Everything not synced is
    /// gone from this instant; the mount stays, dead, until [`Self::detach`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Lazily unmounts whatever is mounted on the mountpoint (nothing: a
    /// quiet no-op), so the filesystem can be started there again.
    pub fn detach(&self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mount)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A power cut of the filesystem alone: [`Self::kill`], then [`Self::detach`].
    pub fn cut(&mut self) {
        self.kill();
        self.detach();
    }

    /// Whether the filesystem process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for PowercutFs {
    fn drop(&mut self) {
        self.cut();
        if std::thread::panicking() {
            eprintln!("--- powercut filesystem log ---\n{}", self.log_text());
        }
    }
}
