//! Test harness: a backing directory and a mountpoint in a temp dir, the
//! filesystem binary mounted on it, power cuts (SIGKILL plus lazy unmount)
//! and remounts. Dropping the fixture kills the filesystem and detaches the
//! mount even when the test panicked, before the temp dir is removed.
//!
//! Needs root, /dev/fuse and fusermount3. Without them a test prints
//! SKIPPED and passes, unless RAFTBLOCK_REQUIRE_TOOLS=1 (as in raftblock's
//! CI), which makes it fail.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test crates; tests may unwrap

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Fixture {
    fs: Option<Child>,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    // Last: removed after Drop has unmounted.
    _dir: tempfile::TempDir,
}

/// Whether this machine can mount FUSE filesystems; `None` means skip.
fn fuse_available(test: &str) -> Option<()> {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
        // SAFETY: geteuid cannot fail.
        && unsafe { libc::geteuid() } == 0;
    if ok {
        return Some(());
    }
    if std::env::var("RAFTBLOCK_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: needs root, /dev/fuse and fusermount3");
    }
    eprintln!("SKIPPED {test}: needs root, /dev/fuse and fusermount3");
    None
}

impl Fixture {
    /// A mounted filesystem over an empty backing dir, or `None` to skip.
    pub fn new(test: &str) -> Option<Fixture> {
        fuse_available(test)?;
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        std::fs::create_dir(&backing).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let mut f = Fixture {
            fs: None,
            backing,
            mnt,
            _dir: dir,
        };
        f.mount();
        Some(f)
    }

    /// Starts the filesystem and waits for its `ready` line.
    pub fn mount(&mut self) {
        assert!(self.fs.is_none(), "already mounted");
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftblock-powercut"))
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mount")
            .arg(&self.mnt)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.fs = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining so the child never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("filesystem did not print ready");
    }

    /// The power cut: SIGKILL the filesystem, detach its dead mount.
    pub fn power_cut(&mut self) {
        let mut child = self.fs.take().expect("not mounted");
        child.kill().unwrap();
        child.wait().unwrap();
        lazy_unmount(&self.mnt);
    }

    /// Power cut, then mount again over the same backing dir.
    pub fn power_cut_and_remount(&mut self) {
        self.power_cut();
        self.mount();
    }

    /// A clean unmount; the filesystem must write everything and exit 0.
    pub fn unmount_clean(&mut self) {
        let mut child = self.fs.take().expect("not mounted");
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "fusermount3 -u failed");
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "filesystem exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!("filesystem did not exit after unmount");
    }

    /// A path in the mounted view.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.fs.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        lazy_unmount(&self.mnt);
    }
}

/// Detaches whatever is mounted on `mnt` (nothing: a quiet no-op).
fn lazy_unmount(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

pub fn fdatasync(f: &File) {
    // SAFETY: fdatasync on an open descriptor.
    assert_eq!(
        unsafe { libc::fdatasync(f.as_raw_fd()) },
        0,
        "{}",
        std::io::Error::last_os_error()
    );
}

pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) {
    // SAFETY: fallocate on an open descriptor with plain integers.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(
        r,
        0,
        "fallocate mode {mode:#x}: {}",
        std::io::Error::last_os_error()
    );
}

pub const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// `n` bytes of a pattern that differs per `seed`, never all zeros.
pub fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Writes `data` as a new file at `path` and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) {
    let f = File::create(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, data, 0).unwrap();
    f.sync_all().unwrap();
}
