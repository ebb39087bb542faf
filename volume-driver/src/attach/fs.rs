//! Filesystems on attached volumes: find out whether a device holds one,
//! make one on first mount, mount and unmount. These run the system's own
//! tools (`blkid`, `mkfs.*`, `mount`), as an operator would.

use std::path::Path;
use std::process::Command;

use super::error::AttachError;
use super::tool::{check, output};

/// Filesystem made on a volume's first mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    /// ext4 (the default).
    Ext4,
    /// XFS.
    Xfs,
}

impl Filesystem {
    /// The name `mkfs.<name>` and `mount -t` use.
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }

    /// Parses `ext4` or `xfs`.
    pub fn parse(s: &str) -> Result<Filesystem, UnsupportedFilesystem> {
        match s {
            "ext4" => Ok(Filesystem::Ext4),
            "xfs" => Ok(Filesystem::Xfs),
            other => Err(UnsupportedFilesystem(other.to_string())),
        }
    }
}

/// A filesystem name other than `ext4` or `xfs` (in `-o fs=...`, or on a
/// volume created elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fs `{0}` is not supported (use ext4 or xfs)")]
pub struct UnsupportedFilesystem(pub String);

/// The filesystem type on `dev`, or `None` when it holds none.
pub fn probe(dev: &Path) -> Result<Option<String>, AttachError> {
    let out = output(
        Command::new("blkid")
            .args(["-p", "-o", "value", "-s", "TYPE"])
            .arg(dev),
    )?;
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        // 2: nothing recognised on the device.
        Some(2) => Ok(None),
        _ => Err(AttachError::Probe {
            device: dev.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// Makes a filesystem on `dev`.
pub fn make(dev: &Path, fs: Filesystem) -> Result<(), AttachError> {
    match fs {
        // No discard pass: a new volume is all holes already.
        Filesystem::Ext4 => check(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "nodiscard"])
                .arg(dev),
        ),
        Filesystem::Xfs => check(Command::new("mkfs.xfs").args(["-q", "-f", "-K"]).arg(dev)),
    }
}

/// Grows the filesystem `fs` on `dev`, mounted on `dir`, to fill the
/// device (online: ext4 with `resize2fs`, which needs CAP_SYS_RESOURCE,
/// XFS with `xfs_growfs`, which needs CAP_SYS_ADMIN).
pub fn grow(dev: &Path, dir: &Path, fs: &str) -> Result<(), AttachError> {
    match fs {
        "xfs" => check(Command::new("xfs_growfs").arg(dir)),
        _ => check(Command::new("resize2fs").arg(dev)),
    }
}

/// Mounts `dev` (holding `fs`) on `dir`, creating `dir`.
pub fn mount(dev: &Path, dir: &Path, fs: &str) -> Result<(), AttachError> {
    std::fs::create_dir_all(dir).map_err(|source| AttachError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    check(Command::new("mount").args(["-t", fs]).arg(dev).arg(dir))
}

/// Unmounts `dir` (flushing the filesystem to the volume).
pub fn unmount(dir: &Path) -> Result<(), AttachError> {
    check(Command::new("umount").arg(dir))
}

/// Detaches whatever is mounted on `dir` now and cleans up when it is no
/// longer busy (for mounts whose device is already dead).
pub fn unmount_lazy(dir: &Path) -> Result<(), AttachError> {
    check(Command::new("umount").arg("-l").arg(dir))
}

/// Mount points at or below `dir`, with their filesystem type (from
/// /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let point = std::path::PathBuf::from(l.split(' ').nth(4)?);
            // The filesystem type follows the " - " separator.
            let fstype = l.split(" - ").nth(1)?.split(' ').next()?.to_string();
            point.starts_with(dir).then_some((point, fstype))
        })
        .collect()
}

/// Whether something is mounted on `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|(p, _)| p == dir)
}
