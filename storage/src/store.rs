//! The node's chunk store: the data directory, the catalog, the I/O engine
//! and the open volumes. Creating, listing, opening and deleting volumes goes
//! through here; a volume with open handles cannot be deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::catalog::{self, Catalog, CHECKSUM_SCHEME};
use crate::{Engine, LocalVolume, Result, StorageError, VolumeIo, VolumeMeta};

/// The node-local store of volumes.
pub struct ChunkStore {
    root: PathBuf,
    volumes_dir: PathBuf,
    catalog: Catalog,
    engine: Engine,
    _lock: std::fs::File,
    open: RwLock<HashMap<String, Arc<LocalVolume>>>,
}

/// Space on the filesystem of the data directory.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct DiskUsage {
    /// Its size.
    pub total_bytes: u64,
    /// Free to this (unprivileged) process.
    pub avail_bytes: u64,
    /// Free in all (root's reserve included): `total - free` is used.
    pub free_bytes: u64,
}

impl DiskUsage {
    /// Bytes in use, as `df` counts them.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }

    /// Bytes this process can fill: used plus available. Blocks reserved
    /// for root are left out, as `df` leaves them out of Use%; a host that
    /// reserves a large share would otherwise look nearly full while
    /// `df` says it is not.
    pub fn usable_bytes(&self) -> u64 {
        self.used_bytes().saturating_add(self.avail_bytes)
    }

    /// The share in use, `df`'s Use%: used / (used + available).
    pub fn used_share(&self) -> f64 {
        self.used_bytes() as f64 / self.usable_bytes().max(1) as f64
    }
}

/// A counted reference to an open volume; deleting waits for none to remain.
pub struct VolumeHandle {
    volume: Arc<LocalVolume>,
}

impl std::ops::Deref for VolumeHandle {
    type Target = Arc<LocalVolume>;
    fn deref(&self) -> &Arc<LocalVolume> {
        &self.volume
    }
}

impl Drop for VolumeHandle {
    fn drop(&mut self) {
        self.volume.drop_handle();
    }
}

fn path_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Path {
        path: path.to_path_buf(),
        source,
    }
}

impl ChunkStore {
    /// Opens (or initialises) the store in `root`.
    pub fn open(root: &Path, engine: Engine) -> Result<ChunkStore> {
        let volumes_dir = root.join("volumes");
        std::fs::create_dir_all(&volumes_dir).map_err(path_err(&volumes_dir))?;
        let lock = lock_data_dir(root)?;
        let catalog = Catalog::open(root, &volumes_dir)?;
        Ok(ChunkStore {
            root: root.to_path_buf(),
            volumes_dir,
            catalog,
            engine,
            _lock: lock,
            open: RwLock::new(HashMap::new()),
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Size and free space of the filesystem holding the data directory
    /// (what an operator watches to see a node filling up).
    pub fn disk_usage(&self) -> std::io::Result<DiskUsage> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs fills the zeroed struct we pass; the path is a
        // valid NUL-terminated string that outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let unit = st.f_frsize as u64;
        Ok(DiskUsage {
            total_bytes: st.f_blocks as u64 * unit,
            avail_bytes: st.f_bavail as u64 * unit,
            free_bytes: st.f_bfree as u64 * unit,
        })
    }

    /// The I/O engine in use.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Creates a volume.
    pub fn create_volume(&self, name: &str, size: u64, chunk_size: u64) -> Result<VolumeMeta> {
        catalog::validate_name(name)?;
        catalog::validate_sizes(size, chunk_size)?;
        let _map = self.open.write().unwrap_or_else(|p| p.into_inner());
        if self.catalog.get(name)?.is_some() {
            return Err(StorageError::VolumeExists(name.to_string()));
        }
        let meta = VolumeMeta {
            id: self.catalog.allocate_id()?,
            name: name.to_string(),
            size,
            chunk_size,
            created_unix: catalog::unix_now(),
            checksum: CHECKSUM_SCHEME.to_string(),
        };
        self.install(&meta)?;
        Ok(meta)
    }

    /// Makes `meta` (decided elsewhere: the cluster's metadata group) a local
    /// volume, keeping it if it is already here with the same id. A stale
    /// local volume of the same name and another id is deleted first.
    pub fn adopt_volume(&self, meta: &VolumeMeta) -> Result<()> {
        if let Some(cur) = self.catalog.get(&meta.name)? {
            if cur.id == meta.id {
                return Ok(());
            }
            self.delete_volume(&meta.name)?;
        }
        let _map = self.open.write().unwrap_or_else(|p| p.into_inner());
        self.install(meta)
    }

    fn install(&self, meta: &VolumeMeta) -> Result<()> {
        let dir = catalog::volume_dir(&self.volumes_dir, meta.id);
        std::fs::create_dir_all(&dir).map_err(path_err(&dir))?;
        catalog::write_volume_json(&dir, meta).map_err(path_err(&dir.join("volume.json")))?;
        sync_dir(&self.volumes_dir).map_err(path_err(&self.volumes_dir))?;
        self.catalog.put(meta)?;
        tracing::info!(
            volume = %meta.name,
            size = meta.size,
            chunk_size = meta.chunk_size,
            id = meta.id,
            "volume created"
        );
        Ok(())
    }

    /// All volumes.
    pub fn list(&self) -> Result<Vec<VolumeMeta>> {
        self.catalog.list()
    }

    /// Looks a volume up without opening it (with its current size when
    /// it is open).
    pub fn meta(&self, name: &str) -> Result<VolumeMeta> {
        let mut meta = self.catalog_meta(name)?;
        if let Some(v) = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            if v.meta().id == meta.id {
                meta.size = v.size();
            }
        }
        Ok(meta)
    }

    fn catalog_meta(&self, name: &str) -> Result<VolumeMeta> {
        self.catalog
            .get(name)?
            .ok_or_else(|| StorageError::VolumeNotFound(name.to_string()))
    }

    /// The open volume (opened on first use), without taking a handle.
    pub fn volume(&self, name: &str) -> Result<Arc<LocalVolume>> {
        if let Some(v) = self
            .open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(v.clone());
        }
        let mut map = self.open.write().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = map.get(name) {
            return Ok(v.clone());
        }
        let meta = self.catalog_meta(name)?;
        let dir = catalog::volume_dir(&self.volumes_dir, meta.id);
        let v = Arc::new(LocalVolume::new(meta, dir, self.engine.clone()));
        map.insert(name.to_string(), v.clone());
        Ok(v)
    }

    /// Opens a volume and counts the caller as a user until the handle drops.
    pub fn acquire(&self, name: &str) -> Result<VolumeHandle> {
        let v = self.volume(name)?;
        let map = self.open.read().unwrap_or_else(|p| p.into_inner());
        // Re-check under the lock so a concurrent delete cannot slip between.
        match map.get(name) {
            Some(cur) if Arc::ptr_eq(cur, &v) => {
                v.add_handle();
                Ok(VolumeHandle { volume: v })
            }
            _ => Err(StorageError::VolumeNotFound(name.to_string())),
        }
    }

    /// Resizes a volume of this node alone (no cluster): a grow takes
    /// effect at once; a shrink needs `allow_shrink` and first clears what
    /// lies past the new end, so a later grow reads zeros there.
    pub async fn resize_volume(
        &self,
        name: &str,
        size: u64,
        allow_shrink: bool,
    ) -> Result<VolumeMeta> {
        let v = self.volume(name)?;
        let cs = v.meta().chunk_size;
        catalog::validate_sizes(size, cs)?;
        let cur = v.size();
        if size < cur {
            if !allow_shrink {
                return Err(StorageError::InvalidSize {
                    what: "volume size",
                    value: size,
                    reason: "smaller than the volume: shrinking loses the data past the new end \
                             and needs --allow-shrink",
                });
            }
            let first_whole = size.div_ceil(cs);
            let tail_end = (first_whole * cs).min(cur);
            if tail_end > size {
                crate::VolumeIo::trim(v.as_ref(), size, tail_end - size, true).await?;
            }
            let whole: Vec<u64> = (first_whole..cur.div_ceil(cs)).collect();
            v.remove_chunks(&whole)?;
            v.set_size(size)?;
        } else {
            v.cover(size)?;
        }
        let meta = VolumeMeta {
            size,
            ..v.meta().clone()
        };
        self.catalog.put(&meta)?;
        Ok(meta)
    }

    /// Deletes a volume and its data; refused while it has open handles.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let mut map = self.open.write().unwrap_or_else(|p| p.into_inner());
        let meta = self.catalog_meta(name)?;
        if let Some(v) = map.get(name) {
            let handles = v.handles();
            if handles > 0 {
                return Err(StorageError::VolumeBusy {
                    name: name.to_string(),
                    handles,
                });
            }
        }
        self.catalog.remove(name)?;
        map.remove(name);
        let dir = catalog::volume_dir(&self.volumes_dir, meta.id);
        let doomed = self.volumes_dir.join(format!(".deleted-{:016x}", meta.id));
        std::fs::rename(&dir, &doomed).map_err(path_err(&dir))?;
        std::fs::remove_dir_all(&doomed).map_err(path_err(&doomed))?;
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }

    /// Open volumes, for metrics.
    pub fn open_volumes(&self) -> Vec<Arc<LocalVolume>> {
        self.open
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Flushes every open volume (used at shutdown).
    pub async fn sync_all(&self) -> Result<()> {
        for v in self.open_volumes() {
            v.flush().await?;
        }
        Ok(())
    }
}

/// Takes an exclusive lock on the data directory so two daemons never share it.
fn lock_data_dir(root: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = root.join("raftblock.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(path_err(&path))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(StorageError::Path {
            path,
            source: std::io::Error::other(
                "the data directory is in use by another raftblock daemon",
            ),
        });
    }
    Ok(f)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineKind;

    #[test]
    fn create_list_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::start(Some(EngineKind::Threads), 1).expect("engine");
        let store = ChunkStore::open(dir.path(), engine).expect("open");
        store.create_volume("a", 1 << 30, 64 << 20).expect("create");
        assert!(matches!(
            store.create_volume("a", 1 << 30, 64 << 20),
            Err(StorageError::VolumeExists(_))
        ));
        assert_eq!(store.list().expect("list").len(), 1);
        let h = store.acquire("a").expect("acquire");
        assert!(matches!(
            store.delete_volume("a"),
            Err(StorageError::VolumeBusy { .. })
        ));
        drop(h);
        store.delete_volume("a").expect("delete");
        assert!(matches!(
            store.delete_volume("a"),
            Err(StorageError::VolumeNotFound(_))
        ));
        // Same name again gets a fresh directory.
        store
            .create_volume("a", 1 << 20, 1 << 20)
            .expect("recreate");
    }
}
