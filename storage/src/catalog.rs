//! The node-local catalog of volumes, in sled. sled is a cache here, not the
//! only copy: every volume directory also holds a `volume.json`, and when the
//! sled database is missing or unreadable the catalog is rebuilt from those.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Result, StorageError, BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// What the node knows about one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// Stable numeric id (names the volume's directory).
    pub id: u64,
    /// The user-facing name (the NBD export name).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Checksum scheme of the chunk files.
    pub checksum: String,
}

/// The checksum scheme written by this version.
pub const CHECKSUM_SCHEME: &str = "crc32/4KiB";
/// Longest volume name accepted.
pub const MAX_NAME_LEN: usize = 64;
/// Largest volume accepted (1 PiB).
pub const MAX_VOLUME_SIZE: u64 = 1 << 50;

/// Checks a volume name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(StorageError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        return bad("path separators and `..` are not allowed");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it may not start with `.` or `-`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Checks a volume size and chunk size.
pub fn validate_sizes(size: u64, chunk_size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) || size > MAX_VOLUME_SIZE {
        return Err(StorageError::InvalidSize {
            what: "volume size",
            value: size,
            reason: "must be a non-zero multiple of 4096 and at most 1 PiB",
        });
    }
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(StorageError::InvalidSize {
            what: "chunk size",
            value: chunk_size,
            reason: "must be a power of two between 1 MiB and 1 GiB",
        });
    }
    Ok(())
}

/// Writes `volume.json` of a volume in `dir` atomically (a new file synced,
/// renamed over the old one, the directory synced).
pub fn write_volume_json(dir: &Path, meta: &VolumeMeta) -> std::io::Result<()> {
    use std::io::Write;
    let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    let tmp = dir.join("volume.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("volume.json"))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The sled-backed catalog.
pub struct Catalog {
    db: sled::Db,
    volumes: sled::Tree,
}

impl Catalog {
    /// Opens the catalog under `root`, rebuilding it from `volumes_dir` when
    /// the database is unreadable or has lost volumes that exist on disk.
    pub fn open(root: &Path, volumes_dir: &Path) -> Result<Catalog> {
        let path = root.join("catalog");
        let db = match sled::open(&path) {
            Ok(db) => db,
            Err(e @ sled::Error::Corruption { .. }) => {
                let aside = root.join(format!("catalog.damaged-{}", unix_now()));
                tracing::error!(error = %e, path = %path.display(), aside = %aside.display(),
                    "catalog unreadable; moving it aside and rebuilding from volume directories");
                std::fs::rename(&path, &aside).map_err(|source| StorageError::Path {
                    path: path.clone(),
                    source,
                })?;
                sled::open(&path)?
            }
            Err(e) => return Err(e.into()),
        };
        let volumes = db.open_tree("volumes")?;
        let cat = Catalog { db, volumes };
        cat.reconcile(volumes_dir)?;
        Ok(cat)
    }

    fn reconcile(&self, volumes_dir: &Path) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(volumes_dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let meta_path = entry.path().join("volume.json");
            let Ok(raw) = std::fs::read(&meta_path) else {
                continue;
            };
            let meta: VolumeMeta = match serde_json::from_slice(&raw) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(path = %meta_path.display(), error = %e, "unreadable volume.json; volume skipped");
                    continue;
                }
            };
            match self.get(&meta.name)? {
                None => {
                    tracing::warn!(volume = %meta.name, "volume missing from the catalog; restored from volume.json");
                    self.put(&meta)?;
                }
                // volume.json is written first when a volume is resized.
                Some(cur) if cur.id == meta.id && cur.size != meta.size => {
                    tracing::info!(volume = %meta.name, size = meta.size, was = cur.size,
                        "catalog size behind volume.json (a resize); taking volume.json's");
                    self.put(&meta)?;
                }
                Some(_) => {}
            }
            self.bump_id(meta.id)?;
        }
        self.db.flush()?;
        Ok(())
    }

    fn bump_id(&self, seen: u64) -> Result<()> {
        let cur = self.next_id_raw()?;
        if seen >= cur {
            self.db.insert("next_id", &(seen + 1).to_be_bytes())?;
        }
        Ok(())
    }

    fn next_id_raw(&self) -> Result<u64> {
        Ok(match self.db.get("next_id")? {
            Some(v) if v.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v);
                u64::from_be_bytes(b)
            }
            _ => 1,
        })
    }

    /// Allocates a new volume id.
    pub fn allocate_id(&self) -> Result<u64> {
        let id = self.next_id_raw()?;
        self.db.insert("next_id", &(id + 1).to_be_bytes())?;
        Ok(id)
    }

    /// Looks a volume up by name.
    pub fn get(&self, name: &str) -> Result<Option<VolumeMeta>> {
        match self.volumes.get(name)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| StorageError::Catalog(format!("entry for `{name}`: {e}"))),
        }
    }

    /// Stores (or replaces) a volume entry durably.
    pub fn put(&self, meta: &VolumeMeta) -> Result<()> {
        let raw = serde_json::to_vec(meta).map_err(|e| StorageError::Catalog(e.to_string()))?;
        self.volumes.insert(meta.name.as_bytes(), raw)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes a volume entry durably.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.volumes.remove(name)?;
        self.db.flush()?;
        Ok(())
    }

    /// All volumes, by name.
    pub fn list(&self) -> Result<Vec<VolumeMeta>> {
        let mut out = Vec::new();
        for kv in self.volumes.iter() {
            let (_, raw) = kv?;
            match serde_json::from_slice(&raw) {
                Ok(m) => out.push(m),
                Err(e) => tracing::error!(error = %e, "skipping unreadable catalog entry"),
            }
        }
        Ok(out)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Directory of volume `id` under `volumes_dir`.
pub fn volume_dir(volumes_dir: &Path, id: u64) -> PathBuf {
    volumes_dir.join(format!("{id:016x}"))
}

/// Why a label list (`zone=a,disk=ssd`) did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A part is not `key=value`.
    #[error("label {0:?} is not key=value")]
    NotKeyValue(String),
    /// A key or value holds other characters.
    #[error("label {0:?}: keys and values are letters, digits, '-', '_' or '.'")]
    BadCharacters(String),
}

/// Parses `key=value[,key=value...]` (node labels, required labels).
pub fn parse_labels(s: &str) -> std::result::Result<BTreeMap<String, String>, LabelError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(LabelError::NotKeyValue(part.to_string()));
        };
        let (k, v) = (k.trim(), v.trim());
        let ok = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(k) || !ok(v) {
            return Err(LabelError::BadCharacters(part.to_string()));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("db-1.data_x").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            &"x".repeat(65),
            "a..b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert!(validate_sizes(1 << 30, 64 << 20).is_ok());
        assert!(validate_sizes(0, 64 << 20).is_err());
        assert!(validate_sizes(1000, 64 << 20).is_err());
        assert!(validate_sizes(1 << 30, 3 << 20).is_err());
        assert!(validate_sizes(1 << 30, 4096).is_err());
    }

    #[test]
    fn catalog_is_rebuilt_from_volume_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vols = dir.path().join("volumes");
        std::fs::create_dir_all(&vols).expect("mkdir");
        let meta = VolumeMeta {
            id: 7,
            name: "keep".into(),
            size: 1 << 20,
            chunk_size: 1 << 20,
            created_unix: 1,
            checksum: CHECKSUM_SCHEME.into(),
        };
        let vdir = volume_dir(&vols, 7);
        std::fs::create_dir_all(&vdir).expect("mkdir");
        std::fs::write(
            vdir.join("volume.json"),
            serde_json::to_vec(&meta).expect("json"),
        )
        .expect("write");
        let cat = Catalog::open(dir.path(), &vols).expect("open");
        assert_eq!(cat.get("keep").expect("get"), Some(meta));
        assert_eq!(cat.allocate_id().expect("id"), 8);
    }

    #[test]
    fn labels_parse_or_say_why() {
        let l = parse_labels(" zone=a , disk=ssd").expect("labels");
        assert_eq!(l["zone"], "a");
        assert_eq!(l["disk"], "ssd");
        assert!(parse_labels("").expect("none").is_empty());
        assert!(parse_labels("zone")
            .expect_err("refused")
            .to_string()
            .contains("key=value"));
        assert!(parse_labels("zo ne=a")
            .expect_err("refused")
            .to_string()
            .contains("letters"));
    }
}
