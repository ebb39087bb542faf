//! Applying a shard's committed entries to this node's copy of the volume.
//! Each shard replica has one apply task, so entries of a shard are applied
//! in log order while shards apply in parallel and the Raft driver never
//! waits for the disk. Block commands are idempotent byte ranges, so after a
//! crash the entries since the last durable applied index are simply applied
//! again; the task makes its chunks durable (fdatasync) now and then and
//! only then tells the driver it may record the applied index and drop the
//! log before it. The task also keeps the shard's attach-epoch fence
//! (`fence`): Fence entries raise it, and writes below it are refused.
//! And it swaps a staged catch-up copy in (`snapshot`), between two
//! entries, so applying and swapping never touch the chunk files at once.
//!
//! Large writes are not copied into the chunk files: the volume records
//! that their blocks are in the log (`raftblock_storage::logged`), and the
//! durable applied index stays below the oldest such entry, so the log
//! keeps it and a restart records it again. The blocks settle into their
//! chunks later (`Settling`), unless newer writes replace them first; so a
//! large write reaches each replica's disk once on the hot path.

use bytes::Bytes;
use prost::Message as _;
use raft::prelude::{Entry, EntryType};
use std::sync::Arc;
use std::time::Duration;
// tokio's clock: the node's own in production, the simulation's in tests.
use tokio::sync::mpsc;
use tokio::time::Instant;

use raftblock_storage::staging;
use raftblock_storage::{LocalVolume, LogRef, VolumeIo, Wal, ZeroMode};

use crate::command::{BlockOp, ShardCommand};
use crate::cut::{OpenCut, CUT_MAX_ENTRIES};
use crate::driver::{DriverHandle, DriverMsg, ReplicaError, Reply};
use crate::fence::FenceHistory;
use crate::layout::{ShardId, ShardLayout};
use crate::meta::shard_of_group;

mod resize;

/// How long applied data may stay only in the page cache (the log still has it).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Bytes applied between two syncs at most.
const SYNC_BYTES: u64 = 128 << 20;
/// Block-aligned writes at least this long are left in the log when applied.
const LOGGED_WRITE_MIN: usize = 128 << 10;

/// When a shard's logged blocks move into their chunk files. Until then the
/// log keeps every entry since the oldest of them (on disk, not in memory).
#[derive(Debug, Clone)]
pub struct Settling {
    /// Over this much log on the node, shards settle their older blocks...
    pub node_log_budget: u64,
    /// ... keeping the blocks of their newest this many bytes of log.
    pub keep_under_pressure: u64,
    /// Blocks logged longer ago than this settle (restarts replay less).
    pub max_age: Duration,
    /// A shard with nothing applied for this long settles everything.
    pub idle: Duration,
}

impl Default for Settling {
    fn default() -> Self {
        Settling {
            node_log_budget: 2 << 30,
            keep_under_pressure: 64 << 20,
            max_age: Duration::from_secs(30),
            idle: Duration::from_secs(5),
        }
    }
}

/// What the driver sends a shard's apply task, in log order.
pub enum ApplyMsg {
    /// Committed entries, with the replies of the local proposals among
    /// them (`(index, reply)`).
    Entries(Vec<Entry>, Vec<(u64, Reply)>),
    /// Raft installed a snapshot: `(its index, the fence it carries)`.
    Snapshot(u64, u64),
    /// A catch-up copy is staged: commit to swapping it in if this replica
    /// has applied less than the snapshot and the chunks the copy keeps are
    /// unchanged; the answer goes to the driver (`SnapshotPrepared`).
    Prepare(crate::snapshot::StagedCopy),
    /// Raft took the snapshot: swap the committed copy in.
    Install,
    /// Raft did not take it: drop the staged copy.
    Discard,
    /// The replica left its group: delete the shard's chunks, staging area
    /// and fence, and stop.
    Remove,
    /// Settle every logged block at the next sync, whatever its age: the
    /// leader needs its log compacted (a learner waits for a snapshot, and
    /// logged blocks hold the log).
    SettleAll,
}

/// The shard's fence, loaded from and saved to its file.
struct Fence {
    group: u64,
    path: std::path::PathBuf,
    history: FenceHistory,
}

impl Fence {
    fn load(group: u64, volume: &LocalVolume) -> Fence {
        let path = FenceHistory::path(volume.dir(), shard_of_group(group).1);
        let history = FenceHistory::load(&path).unwrap_or_else(|e| {
            tracing::error!(group, error = %e, "unreadable shard fence; starting unfenced");
            FenceHistory::default()
        });
        Fence {
            group,
            path,
            history,
        }
    }

    /// Raises the fence to `epoch` at `index`, durably, before anything after
    /// it is applied.
    fn raise(&mut self, index: u64, epoch: u64, driver: &DriverHandle) {
        if !self.history.record(index, epoch) {
            return;
        }
        if let Err(e) = self.history.save(&self.path) {
            // The log still holds the entry until the applied index is
            // durable, which needs this file; an error here is retried by
            // the next fence or snapshot. Writes are still refused in memory.
            tracing::error!(group = self.group, error = %e, "saving the shard fence");
        }
        tracing::info!(group = self.group, epoch, index, "shard fenced");
        driver.fenced(self.group, self.history.fences.clone());
    }
}

/// What the apply task keeps about its shard besides the chunk files.
struct ShardState {
    fence: Fence,
    /// The shard, and how its volume is striped.
    shard: ShardId,
    layout: ShardLayout,
    /// The last resize this replica applied.
    resized: resize::AppliedResize,
    /// The chunks of the shard up to the volume's size on this node (their
    /// tables are recorded at a cut).
    chunks: Vec<u64>,
    /// The comparison cut open on this replica (`verify`).
    cut: Option<OpenCut>,
    /// The node's log, which holds the shard's logged blocks.
    wal: Arc<Wal>,
    settling: Settling,
    /// When the first block logged since everything last settled was.
    logged_since: Option<Instant>,
    /// When entries were last applied.
    last_applied_at: Instant,
    /// Settle everything at the next sync (`ApplyMsg::SettleAll`).
    settle_all: bool,
}

impl ShardState {
    /// Up to which entry the shard's logged blocks should settle at this
    /// sync, if any should (see [`Settling`]).
    fn settle_upto(&self, group: u64, applied: u64) -> Option<u64> {
        let since = self.logged_since?;
        if self.settle_all {
            return Some(applied);
        }
        let s = &self.settling;
        let idle = self.last_applied_at.elapsed() >= s.idle && since.elapsed() >= s.idle;
        if since.elapsed() >= s.max_age || idle {
            return Some(applied);
        }
        (self.wal.live_bytes() > s.node_log_budget).then(|| {
            self.wal
                .index_keeping(group, applied, s.keep_under_pressure)
        })
    }
}

/// Deletes what this node held of shard `group`: its chunk files (with
/// their blocks still in the log), a staged copy and its fence.
pub(crate) fn remove_shard(group: u64, volume: &LocalVolume, chunks: &[u64]) {
    let shard = shard_of_group(group).1;
    let result = volume
        .remove_chunks(chunks)
        .and_then(|files| staging::discard(volume, shard).map(|()| files));
    match result {
        Ok(files) => tracing::info!(group, files, "removed this node's replica of the shard"),
        Err(e) => tracing::warn!(group, error = %e, "removing the shard's files"),
    }
    for file in [
        FenceHistory::path(volume.dir(), shard),
        resize::AppliedResize::path(volume.dir(), shard),
    ] {
        if let Err(e) = std::fs::remove_file(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(group, path = %file.display(), error = %e, "removing the shard's state file");
            }
        }
    }
}

/// Starts the apply task of shard `group` of `volume`, striped as `layout`,
/// whose data is applied up to `applied` (and, when the replica has no
/// record of its own, its resizes up to number `resizes_done`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    group: u64,
    volume: Arc<LocalVolume>,
    layout: ShardLayout,
    resizes_done: u64,
    applied: u64,
    driver: DriverHandle,
    wal: Arc<Wal>,
    settling: Settling,
) -> mpsc::UnboundedSender<ApplyMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (vol, index) = shard_of_group(group);
    let shard = ShardId { volume: vol, index };
    let state = ShardState {
        fence: Fence::load(group, &volume),
        chunks: layout.with_size(volume.size()).chunks_of(shard).collect(),
        shard,
        layout,
        resized: resize::AppliedResize::load(volume.dir(), index, resizes_done),
        cut: None,
        wal,
        settling,
        logged_since: None,
        last_applied_at: Instant::now(),
        settle_all: false,
    };
    tokio::spawn(run(group, volume, state, applied, driver, rx));
    tx
}

async fn run(
    group: u64,
    volume: Arc<LocalVolume>,
    mut state: ShardState,
    mut applied: u64,
    driver: DriverHandle,
    mut rx: mpsc::UnboundedReceiver<ApplyMsg>,
) {
    driver.fenced(group, state.fence.history.fences.clone());
    let mut durable = 0u64;
    let mut unsynced = 0u64;
    let mut last_sync = Instant::now();
    // One fdatasync of the volume's chunks at a time runs beside applying,
    // so a sync never holds up acknowledgements.
    let mut syncing: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    loop {
        let want_sync = syncing.is_none()
            && applied > durable
            && (unsynced >= SYNC_BYTES || last_sync.elapsed() >= SYNC_INTERVAL);
        if want_sync {
            let v = volume.clone();
            if state.logged_since.is_none() && volume.logged_summary(&state.chunks).blocks > 0 {
                // Blocks a settle could not move (a bad copy in the log
                // waits for repair): try again later, not every second.
                state.logged_since = Some(Instant::now());
            }
            let settle = state.settle_upto(group, applied);
            if settle == Some(applied) {
                state.logged_since = None;
                state.settle_all = false;
            }
            let chunks = state.chunks.clone();
            let at = applied;
            syncing = Some(tokio::spawn(async move {
                if let Some(upto) = settle {
                    match v.settle(&chunks, upto).await {
                        Ok(n) if n > 0 => {
                            tracing::debug!(group, upto, bytes = n, "settled logged blocks")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(group, error = %e,
                            "settling logged blocks failed; the log keeps them"),
                    }
                }
                // The log must keep the oldest entry a block still reads from.
                let at = match v.logged_summary(&chunks).lowest_index {
                    Some(l) => at.min(l - 1),
                    None => at,
                };
                match v.flush().await {
                    Ok(()) => Some(at),
                    Err(e) => {
                        tracing::error!(group, error = %e, "syncing applied data failed; keeping the log");
                        None
                    }
                }
            }));
            unsynced = 0;
            last_sync = Instant::now();
        }
        let idle = applied > durable && syncing.is_none();
        let batch = tokio::select! {
            // In order, not at random: the simulation replays from its seed.
            biased;
            b = rx.recv() => b,
            done = async { syncing.as_mut().expect("guarded").await }, if syncing.is_some() => {
                syncing = None;
                if let Ok(Some(at)) = done {
                    durable = durable.max(at);
                    driver.durable(group, durable);
                }
                continue;
            }
            _ = tokio::time::sleep(SYNC_INTERVAL), if idle => continue,
        };
        let Some(msg) = batch else {
            // The replica is gone (volume deleted or node stopping): make
            // what was applied durable so the recorded index stays honest.
            if let Some(s) = syncing.take() {
                let _ = s.await;
            }
            if applied > durable {
                if let Err(e) = volume.settle(&state.chunks, applied).await {
                    tracing::warn!(group, error = %e, "settling logged blocks at stop");
                }
                let at = match volume.logged_summary(&state.chunks).lowest_index {
                    Some(l) => applied.min(l - 1),
                    None => applied,
                };
                if volume.flush().await.is_ok() {
                    driver.durable(group, at);
                }
            }
            return;
        };
        let (entries, replies) = match msg {
            ApplyMsg::Entries(entries, replies) => (entries, replies),
            ApplyMsg::Snapshot(index, epoch) => {
                state.fence.raise(index, epoch, &driver);
                applied = applied.max(index);
                // Reads waiting on this replica may now see the swapped-in
                // copy (Install came before this in the queue).
                driver.applied(group, applied);
                // Writes between an open cut and the snapshot are unknown
                // here: repairs at that cut are no longer safe to apply.
                state.cut = None;
                continue;
            }
            ApplyMsg::Prepare(copy) => {
                // The snapshot drops the log the logged blocks read from,
                // and everything applied so far counts as durable after
                // it: the chunks the copy keeps are settled and synced
                // before the swap is committed.
                // (Swapped chunks lose their logged blocks with their files.)
                let kept: Vec<u64> = copy.keeps.iter().map(|(c, _)| *c).collect();
                if let Err(e) = volume.settle(&kept, u64::MAX).await {
                    // A block whose copy in the log is bad stays logged;
                    // reads of it fail and are repaired from a replica.
                    tracing::warn!(group, error = %e, "settling logged blocks before a swap");
                }
                // Only the shard's kept chunks: syncing every open chunk of
                // the volume (other shards' too) took seconds under load.
                let ok = match volume.sync_chunks(kept).await {
                    Ok(()) => prepare_swap(group, &volume, applied, &copy),
                    Err(e) => {
                        tracing::warn!(group, error = %e, "settling logged blocks before a swap");
                        let _ = staging::discard(&volume, shard_of_group(group).1);
                        false
                    }
                };
                driver.send(DriverMsg::SnapshotPrepared { group, ok });
                continue;
            }
            ApplyMsg::Install => {
                let (_, shard) = shard_of_group(group);
                match staging::install(&volume, shard) {
                    Ok(index) => tracing::info!(group, index, "staged shard copy swapped in"),
                    // The journal stays: the next start finishes the swap.
                    Err(e) => crate::driver::fatal(&format!(
                        "group {group}: swapping a staged copy in failed: {e}"
                    )),
                }
                continue;
            }
            ApplyMsg::Remove => {
                if let Some(s) = syncing.take() {
                    let _ = s.await;
                }
                remove_shard(group, &volume, &state.chunks);
                return;
            }
            ApplyMsg::SettleAll => {
                state.settle_all = true;
                continue;
            }
            ApplyMsg::Discard => {
                let (_, shard) = shard_of_group(group);
                if let Err(e) = staging::discard(&volume, shard) {
                    tracing::warn!(group, error = %e, "dropping a staged shard copy");
                }
                continue;
            }
        };
        let mut replies = replies.into_iter().peekable();
        for e in entries {
            let result = if e.data.is_empty() || e.get_entry_type() != EntryType::EntryNormal {
                Ok(0) // a new leader's empty entry, or a membership change
            } else {
                apply_entry(
                    group,
                    &volume,
                    e.index,
                    e.data.clone(),
                    &rx,
                    &mut state,
                    &driver,
                )
                .await
            };
            let failed = match result {
                Ok(n) => {
                    unsynced += n;
                    None
                }
                Err(msg) => Some(msg),
            };
            while let Some((index, _)) = replies.peek() {
                if *index > e.index {
                    break;
                }
                let Some((index, reply)) = replies.next() else {
                    break;
                };
                let r = match (&failed, index == e.index) {
                    (None, true) => Ok(()),
                    (Some(e), true) => Err(e.clone()),
                    (_, false) => Err(ReplicaError::Retry(group)),
                };
                let _ = reply.send(r);
            }
            applied = e.index;
        }
        state.last_applied_at = Instant::now();
        driver.applied(group, applied);
    }
}

/// Commits to swapping a staged copy in (see [`ApplyMsg::Prepare`]);
/// whether it did. On refusal the staged copy is dropped.
fn prepare_swap(
    group: u64,
    volume: &LocalVolume,
    applied: u64,
    copy: &crate::snapshot::StagedCopy,
) -> bool {
    let (_, shard) = shard_of_group(group);
    let refuse = |why: String| {
        tracing::info!(
            group,
            index = copy.index,
            applied,
            "not swapping a staged copy in: {why}"
        );
        if let Err(e) = staging::discard(volume, shard) {
            tracing::warn!(group, error = %e, "dropping a staged shard copy");
        }
        false
    };
    if applied >= copy.index {
        // Swapping would take back entries this replica already applied.
        return refuse(format!("already applied {applied}"));
    }
    for (chunk, sums) in &copy.keeps {
        match volume.chunk_sums(*chunk) {
            Ok(now) if now == *sums => {}
            Ok(_) => return refuse(format!("chunk {chunk} changed since it was compared")),
            Err(e) => return refuse(e.to_string()),
        }
    }
    match staging::commit(volume, shard, copy.index, &copy.swaps) {
        Ok(()) => true,
        Err(e) => refuse(e.to_string()),
    }
}

/// Applies one entry; returns the bytes it wrote. A command that cannot be
/// decoded or is outside the volume is logged and skipped on every replica
/// alike (it can only come from a bug, and stopping the shard would be
/// worse), and so is a write from a fenced-off epoch; a device error is
/// retried, since skipping it would let this replica silently differ from
/// the others.
async fn apply_entry(
    group: u64,
    volume: &LocalVolume,
    index: u64,
    data: Bytes,
    rx: &mpsc::UnboundedReceiver<ApplyMsg>,
    state: &mut ShardState,
    driver: &DriverHandle,
) -> Result<u64, ReplicaError> {
    let cmd = match ShardCommand::decode(data.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(group, index, error = %e, "skipping an undecodable shard entry");
            return Err(ReplicaError::Apply(format!(
                "undecodable entry {index}: {e}"
            )));
        }
    };
    if state
        .cut
        .as_ref()
        .is_some_and(|c| index > c.index + CUT_MAX_ENTRIES)
    {
        state.cut = None;
    }
    match &cmd.op {
        Some(BlockOp::Fence(_)) => {
            state.fence.raise(index, cmd.epoch, driver);
            return Ok(0);
        }
        Some(BlockOp::Cut(c)) => {
            let mut sums = std::collections::HashMap::new();
            for &chunk in &state.chunks {
                match volume.chunk_sums(chunk) {
                    Ok(t) => {
                        sums.insert(chunk, t);
                    }
                    Err(e) => {
                        tracing::error!(group, chunk, error = %e, "reading checksums at a cut")
                    }
                }
            }
            driver.cuts().record(group, c.id, sums);
            state.cut = Some(OpenCut::new(c.id, index, volume.meta().chunk_size));
            return Ok(0);
        }
        Some(BlockOp::CutEnd(c)) => {
            if state.cut.as_ref().is_some_and(|o| o.id == c.id) {
                state.cut = None;
            }
            driver.cuts().remove(group, c.id);
            return Ok(0);
        }
        Some(BlockOp::Resize(r)) => {
            resize::apply(group, index, volume, r, state, rx).await?;
            return Ok(0);
        }
        Some(BlockOp::Repair(r)) => {
            // Decided from this replica's own log, so alike on every one:
            // a block written after the cut keeps what was written.
            let open = state
                .cut
                .as_ref()
                .is_some_and(|o| o.id == r.cut && !o.written(r.offset));
            if !open {
                return Ok(0);
            }
        }
        _ => {
            if let (Some(o), Some((off, len))) = (state.cut.as_mut(), cmd.range()) {
                o.mark(off, len);
            }
        }
    }
    let fence = &state.fence;
    if fence.history.refuses(cmd.epoch, index) {
        crate::fence::count_refused();
        let (_, shard) = shard_of_group(group);
        tracing::warn!(
            group,
            index,
            epoch = cmd.epoch,
            fence = fence.history.current(),
            "refused a write from a fenced-off attachment"
        );
        return Err(ReplicaError::Fenced {
            volume: volume.name().to_string(),
            shard,
            epoch: cmd.epoch,
            current: fence.history.current(),
        });
    }
    let mut delay = Duration::from_millis(10);
    let mut reported = false;
    loop {
        let r = match resize::cover(volume, &cmd) {
            Err(e) => Err(e),
            Ok(()) => match &cmd.op {
                Some(BlockOp::Write(w)) if w.data.len() >= LOGGED_WRITE_MIN => {
                    match write_logged(group, index, volume, &data, w, state).await {
                        Ok(true) => Ok(0),
                        Ok(false) => volume
                            .write(w.offset, w.data.clone(), false)
                            .await
                            .map(|_| w.data.len() as u64),
                        Err(e) => Err(e),
                    }
                }
                Some(BlockOp::Write(w)) => volume
                    .write(w.offset, w.data.clone(), false)
                    .await
                    .map(|_| w.data.len() as u64),
                Some(BlockOp::Trim(t)) => volume.trim(t.offset, t.len, false).await.map(|_| 0),
                Some(BlockOp::ZeroAllocated(z)) => volume
                    .write_zeroes(z.offset, z.len, ZeroMode::Allocate, false)
                    .await
                    .map(|_| z.len),
                Some(BlockOp::Zero(z)) => volume
                    .write_zeroes(z.offset, z.len, ZeroMode::Punch, false)
                    .await
                    .map(|_| 0),
                Some(BlockOp::Repair(r)) if r.data.is_empty() => volume
                    .trim(r.offset, raftblock_storage::BLOCK_SIZE, false)
                    .await
                    .map(|_| 0),
                Some(BlockOp::Repair(r)) => volume
                    .write(r.offset, r.data.clone(), false)
                    .await
                    .map(|_| r.data.len() as u64),
                Some(
                    BlockOp::Fence(_) | BlockOp::Cut(_) | BlockOp::CutEnd(_) | BlockOp::Resize(_),
                )
                | None => Ok(0),
            },
        };
        match r {
            Ok(n) => return Ok(n),
            Err(e @ raftblock_storage::StorageError::OutOfRange { .. }) => {
                tracing::error!(group, index, error = %e, "skipping a shard entry outside the volume");
                return Err(ReplicaError::Apply(e.to_string()));
            }
            Err(e) => {
                if rx.is_closed() {
                    return Err(ReplicaError::Apply(format!(
                        "replica removed while applying entry {index}: {e}"
                    )));
                }
                if !reported {
                    tracing::error!(
                        group,
                        index,
                        volume = volume.name(),
                        error = %e,
                        "applying a committed entry failed; retrying until the device recovers"
                    );
                    reported = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Records a large write as held by the log instead of writing it (see the
/// module doc); whether it could.
async fn write_logged(
    group: u64,
    index: u64,
    volume: &LocalVolume,
    data: &Bytes,
    w: &crate::command::WriteOp,
    state: &mut ShardState,
) -> raftblock_storage::Result<bool> {
    let Some(from_end) = crate::peer_storage::payload_from_end(data, &w.data) else {
        return Ok(false);
    };
    let at = LogRef {
        group,
        index,
        from_end,
    };
    let logged = volume
        .write_logged(&state.wal, w.offset, &w.data, at)
        .await?;
    if logged && state.logged_since.is_none() {
        state.logged_since = Some(Instant::now());
    }
    Ok(logged)
}
