//! Loop devices: bind a file to `/dev/loopN` and release it again, with
//! util-linux's `losetup`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::AttachError;
use super::tool::{check, run};

/// Binds `file` to a free loop device and returns the device. Direct I/O
/// is asked for (the loop device then keeps many requests in flight and no
/// second page cache); where it is refused, buffered I/O is used.
pub fn bind(file: &Path) -> Result<PathBuf, AttachError> {
    bind_with(file, &["--direct-io=on"]).or_else(|e| {
        tracing::debug!(error = %e, "loop device with direct I/O refused; binding without");
        bind_with(file, &[])
    })
}

fn bind_with(file: &Path, extra: &[&str]) -> Result<PathBuf, AttachError> {
    let out = run(Command::new("losetup")
        .args(["--find", "--show"])
        .args(extra)
        .arg(file))?;
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dev.is_empty() {
        return Err(AttachError::NoLoopDevice {
            file: file.to_path_buf(),
        });
    }
    Ok(PathBuf::from(dev))
}

/// Makes `dev` take its backing file's current size (`losetup -c`).
pub fn refresh_capacity(dev: &Path) -> Result<(), AttachError> {
    check(Command::new("losetup").arg("-c").arg(dev))
}

/// Releases `dev`.
pub fn release(dev: &Path) -> Result<(), AttachError> {
    check(Command::new("losetup").arg("-d").arg(dev))
}

/// Waits (up to `within`) until `dev` no longer holds its backing file:
/// `losetup -d` of a device still in use only marks it for release, and the
/// file below it cannot be unmounted before that happens.
pub fn wait_released(dev: &Path, within: std::time::Duration) -> bool {
    let Some(name) = dev.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    let deadline = std::time::Instant::now() + within;
    while backing.exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Loop devices bound to files under `dir` (left over from an earlier run).
pub fn bound_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(out) = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let dev = PathBuf::from(it.next()?);
            let file = PathBuf::from(it.next()?);
            file.starts_with(dir).then_some((dev, file))
        })
        .collect()
}
