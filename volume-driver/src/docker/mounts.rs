//! The plugin's record of what it mounted: per volume, the mount IDs dockerd
//! gave (one per container mount point), the attached device and the
//! mountpoint. Kept in a JSON file so a daemon restart still knows which
//! IDs it owes an attachment to (dockerd does not send Mount again).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One mounted volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountedVolume {
    /// IDs of the mount points using it.
    pub ids: BTreeSet<String>,
    /// The block device the filesystem is on.
    pub device: PathBuf,
    /// Where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// How it is attached (`fuse-loop` or `kernel-nbd`).
    pub attach: String,
    /// The attach epoch its writes carry.
    #[serde(default)]
    pub epoch: u64,
}

/// Every volume mounted by this node's plugin.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MountTable {
    /// By volume name.
    pub volumes: BTreeMap<String, MountedVolume>,
    #[serde(skip)]
    path: PathBuf,
}

impl MountTable {
    /// Loads the table at `path` (empty if there is none).
    pub fn load(path: &Path) -> Result<MountTable, MountTableError> {
        let mut t = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice::<MountTable>(&b).map_err(|source| {
                MountTableError::Parse {
                    path: path.to_path_buf(),
                    source,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MountTable::default(),
            Err(source) => {
                return Err(MountTableError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        t.path = path.to_path_buf();
        Ok(t)
    }

    /// Writes the table (atomically: a crash leaves the old or the new one).
    pub fn save(&self) -> Result<(), MountTableError> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(self)?;
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut &f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| MountTableError::Save {
            path: self.path.clone(),
            source,
        })
    }
}

/// Why the mount table could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum MountTableError {
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a mount table.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: serde_json::Error,
    },
    /// The table could not be written.
    #[error("saving {}: {source}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("docker/mounts.json");
        let mut t = MountTable::load(&path)?;
        assert!(t.volumes.is_empty());
        t.volumes.insert(
            "v".into(),
            MountedVolume {
                ids: ["a".to_string(), "b".to_string()].into(),
                device: "/dev/loop7".into(),
                mountpoint: "/m/v".into(),
                attach: "fuse-loop".into(),
                epoch: 3,
            },
        );
        t.save()?;
        let back = MountTable::load(&path)?;
        assert_eq!(back.volumes, t.volumes);
        Ok(())
    }
}
