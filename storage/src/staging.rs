//! The staging area of a shard replica that is caught up by copy. Chunks
//! copied from the leader land in `staging-<shard>/` beside the volume's
//! live chunk files, where no reader and no apply sees them; the copy is
//! made durable there, and only when Raft has accepted the snapshot it
//! belongs to are the staged chunks swapped in (renamed over the live
//! files), in the apply task, so applying and swapping never run at once.
//!
//! The swap of several chunks is made atomic by a redo journal: `INSTALL`
//! in the staging directory lists every chunk to replace or remove and is
//! synced before the first rename. A node that crashes mid-swap finishes it
//! when it opens the shard again ([`recover`]); a staging directory without
//! a journal is an unfinished copy and is deleted. docs/catch-up.md has the
//! whole crash argument.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::chunk::{crc_path, data_path};
use crate::{LocalVolume, Result, StorageError};

/// Name of the redo journal in a staging directory.
const JOURNAL: &str = "INSTALL";

/// What the swap does to one chunk of the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkSwap {
    /// Rename the staged chunk over the live one.
    Replace(u64),
    /// Delete the live chunk (the leader holds no data in it).
    Remove(u64),
}

/// The journal: every chunk the swap touches.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    /// Raft index of the snapshot the staged data belongs to (for the log).
    index: u64,
    swaps: Vec<ChunkSwap>,
}

/// Where shard `shard` of `volume` stages its copy.
pub fn staging_dir(volume: &LocalVolume, shard: u32) -> PathBuf {
    volume.dir().join(format!("staging-{shard}"))
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Staging {
        path: path.to_path_buf(),
        op,
        source,
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir, "sync directory"))
}

/// Starts an empty staging area for `shard` (whatever an earlier copy left
/// there is dropped) and returns a volume over it to write the copy into.
pub fn create(volume: &LocalVolume, shard: u32) -> Result<LocalVolume> {
    let dir = staging_dir(volume, shard);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove old staging"))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir, "create staging"))?;
    Ok(LocalVolume::new(
        crate::VolumeMeta {
            size: volume.size(),
            ..volume.meta().clone()
        },
        dir,
        volume.engine().clone(),
    ))
}

/// Commits to swapping the staged chunks in: writes and syncs the journal.
/// The staged data must already be durable. From here on a crash finishes
/// the swap at the next start.
pub fn commit(volume: &LocalVolume, shard: u32, index: u64, swaps: &[ChunkSwap]) -> Result<()> {
    let dir = staging_dir(volume, shard);
    let journal = Journal {
        index,
        swaps: swaps.to_vec(),
    };
    let path = dir.join(JOURNAL);
    let tmp = dir.join("INSTALL.tmp");
    let bytes = serde_json::to_vec(&journal).map_err(|e| StorageError::Catalog(e.to_string()))?;
    std::fs::write(&tmp, bytes).map_err(io(&tmp, "write journal"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp, "sync journal"))?;
    std::fs::rename(&tmp, &path).map_err(io(&path, "rename journal"))?;
    sync_dir(&dir)
}

/// Performs a committed swap (rolling it forward if it was half done) and
/// removes the staging area. Returns the journal's snapshot index.
pub fn install(volume: &LocalVolume, shard: u32) -> Result<u64> {
    let dir = staging_dir(volume, shard);
    let path = dir.join(JOURNAL);
    let bytes = std::fs::read(&path).map_err(io(&path, "read journal"))?;
    let journal: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| StorageError::Catalog(format!("{}: {e}", path.display())))?;
    let chunks: Vec<u64> = journal
        .swaps
        .iter()
        .map(|s| match s {
            ChunkSwap::Replace(c) | ChunkSwap::Remove(c) => *c,
        })
        .collect();
    // Open handles on the old files go: later reads open the new ones.
    let live = volume.dir();
    volume.change_chunk_files(&chunks, || -> Result<()> {
        for s in &journal.swaps {
            match *s {
                ChunkSwap::Replace(c) => {
                    // A file already moved by an interrupted swap is not in
                    // staging any more; the journal says it is a replacement.
                    for (from, to) in [
                        (data_path(&dir, c), data_path(live, c)),
                        (crc_path(&dir, c), crc_path(live, c)),
                    ] {
                        if from.exists() {
                            std::fs::rename(&from, &to)
                                .map_err(io(&from, "swap in staged chunk"))?;
                        }
                    }
                }
                ChunkSwap::Remove(c) => {
                    for p in [data_path(live, c), crc_path(live, c)] {
                        match std::fs::remove_file(&p) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(io(&p, "remove replaced chunk")(e)),
                        }
                    }
                }
            }
        }
        Ok(())
    })?;
    sync_dir(live)?;
    discard(volume, shard)?;
    Ok(journal.index)
}

/// Drops the staging area of `shard` (a copy that is not needed).
pub fn discard(volume: &LocalVolume, shard: u32) -> Result<()> {
    let dir = staging_dir(volume, shard);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir, "remove staging"))?;
        sync_dir(volume.dir())?;
    }
    Ok(())
}

/// At start: finishes a swap that was committed but not done, and drops
/// unfinished copies. Returns the snapshot index of a finished swap.
pub fn recover(volume: &LocalVolume, shard: u32) -> Result<Option<u64>> {
    let dir = staging_dir(volume, shard);
    if !dir.exists() {
        return Ok(None);
    }
    if dir.join(JOURNAL).exists() {
        return install(volume, shard).map(Some);
    }
    discard(volume, shard)?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, EngineKind, VolumeIo, VolumeMeta};
    use bytes::Bytes;

    fn volume(dir: &Path) -> LocalVolume {
        let meta = VolumeMeta {
            id: 1,
            name: "v".into(),
            size: 4 << 20,
            chunk_size: 1 << 20,
            created_unix: 0,
            checksum: crate::catalog::CHECKSUM_SCHEME.into(),
        };
        let engine = Engine::start(Some(EngineKind::Threads), 1).expect("engine");
        LocalVolume::new(meta, dir.to_path_buf(), engine)
    }

    async fn read(v: &LocalVolume, off: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for s in v.read(off, 4096).await.expect("read") {
            match s {
                crate::ReadSegment::Data(d) => out.extend_from_slice(&d),
                crate::ReadSegment::Hole(n) => out.extend(std::iter::repeat_n(0, n as usize)),
            }
        }
        out
    }

    /// Stages shard 0 of `live` with its first block full of 9s.
    async fn stage_nines(live: &LocalVolume) {
        let staged = create(live, 0).expect("staging");
        staged
            .write(0, Bytes::from(vec![9u8; 4096]), false)
            .await
            .expect("staged write");
        staged.flush().await.expect("staged flush");
    }

    #[tokio::test]
    async fn staged_chunks_are_invisible_until_installed_and_a_half_done_swap_finishes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let live = volume(tmp.path());
        live.write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .expect("write");
        live.write(1 << 20, Bytes::from(vec![2u8; 4096]), false)
            .await
            .expect("write");
        live.flush().await.expect("flush");

        stage_nines(&live).await;
        // Not visible before the swap.
        assert_eq!(read(&live, 0).await, vec![1u8; 4096]);
        // An unfinished copy is dropped at start.
        assert_eq!(recover(&live, 0).expect("recover"), None);
        assert!(!staging_dir(&live, 0).exists());
        assert_eq!(read(&live, 0).await, vec![1u8; 4096]);

        stage_nines(&live).await;
        commit(&live, 0, 42, &[ChunkSwap::Replace(0), ChunkSwap::Remove(1)]).expect("commit");
        // A crash after the data file moved but before its checksums did.
        let dir = staging_dir(&live, 0);
        std::fs::rename(data_path(&dir, 0), data_path(tmp.path(), 0)).expect("half swap");
        let reopened = volume(tmp.path());
        assert_eq!(recover(&reopened, 0).expect("recover"), Some(42));
        assert_eq!(read(&reopened, 0).await, vec![9u8; 4096]);
        assert_eq!(read(&reopened, 1 << 20).await, vec![0u8; 4096]);
        assert!(!data_path(tmp.path(), 1).exists());
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_chunk_opened_while_a_swap_renames_is_the_swapped_in_one() {
        let scenario = fail::FailScenario::setup();
        let tmp = tempfile::tempdir().expect("tmp");
        let live = volume(tmp.path());
        live.write(0, Bytes::from(vec![1u8; 4096]), false)
            .await
            .expect("write");
        live.flush().await.expect("flush");
        stage_nines(&live).await;
        commit(&live, 0, 7, &[ChunkSwap::Replace(0)]).expect("commit");
        live.chunk_sums(0).expect("open chunk 0");

        // The swap pauses once chunk 0 is closed and before its files move;
        // meanwhile another thread opens chunk 0 (as a settle, a status
        // request or a read would).
        fail::cfg("storage::chunk_files_changing", "sleep(300)").expect("fail point");
        std::thread::scope(|s| {
            let swap = s.spawn(|| install(&live, 0));
            std::thread::sleep(std::time::Duration::from_millis(100));
            live.chunk_sums(0).expect("open chunk 0 during the swap");
            assert_eq!(swap.join().expect("swap thread").expect("install"), 7);
        });
        fail::remove("storage::chunk_files_changing");

        // What is written now must be in the files on disk, with checksums
        // that match: read it back through a volume opened afresh.
        assert_eq!(read(&live, 0).await, vec![9u8; 4096]);
        live.write(4096, Bytes::from(vec![5u8; 4096]), false)
            .await
            .expect("write after the swap");
        live.flush().await.expect("flush");
        let reopened = volume(tmp.path());
        assert_eq!(read(&reopened, 0).await, vec![9u8; 4096]);
        assert_eq!(read(&reopened, 4096).await, vec![5u8; 4096]);
        scenario.teardown();
    }
}
