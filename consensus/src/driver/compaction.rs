//! Log compaction: a shard's log is compacted as its applied data becomes
//! durable (keeping what live followers still need), its Raft snapshot then
//! points at where the log starts, and WAL segments no log needs any more
//! are purged.

use bytes::Bytes;
use raft::prelude::{Snapshot, SnapshotMetadata};
use raft::{StateRole, Storage as _};

use super::config::{COMPACT_MIN, FOLLOWER_LOG_KEEP};
use super::replica::Replica;
use super::Driver;

impl Driver {
    /// Records that a shard's applied data up to `index` is durable and
    /// compacts its log when enough of it can go.
    pub(super) fn durable(&mut self, group: u64, index: u64) {
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        r.durable = r.durable.max(index);
        let store = r.node.mut_store();
        store.stage_applied(r.durable, &mut self.carry);
        let first = store.first_index().unwrap_or(1);
        // Everything in the log is applied and durable: the group is idle,
        // and what is left of its log would only pin WAL segments.
        let idle = r.durable >= store.last_index().unwrap_or(0);
        let to = if r.node.raft.state == StateRole::Leader {
            // Keep what a live follower still needs; one that is down does
            // not pin the log: it is sent a snapshot when it is back.
            r.node
                .raft
                .prs()
                .iter()
                .filter(|(_, p)| p.recent_active)
                .map(|(_, p)| p.matched)
                .min()
                .unwrap_or(0)
                .min(r.durable)
        } else if idle {
            r.durable
        } else {
            r.durable.saturating_sub(FOLLOWER_LOG_KEEP)
        };
        if to > first + COMPACT_MIN || (idle && to > first) {
            if let Err(e) = r.node.mut_store().stage_compact(to, &mut self.carry) {
                tracing::warn!(group, error = %e, "compacting a shard log");
            } else {
                self.compacted = true;
                set_shard_snapshot(r);
            }
        }
    }

    /// After a compaction, drops the WAL segments no log needs any more
    /// (on a tick where some replica's tick count is a multiple of 10).
    pub(super) fn purge_if_compacted(&mut self) {
        if self.compacted && self.replicas.values().any(|r| r.ticks % 10 == 0) {
            self.compacted = false;
            match self.wal.purge() {
                Ok(n) if n > 0 => tracing::debug!(segments = n, "purged WAL segments"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging WAL segments failed"),
            }
        }
    }
}

/// Points the shard's Raft snapshot at where its log now starts: the data
/// behind it is the shard's chunks, copied by the follower (`snapshot`).
pub(super) fn set_shard_snapshot(r: &mut Replica) {
    let store = r.node.store();
    let index = store.first_index().unwrap_or(1).saturating_sub(1);
    if index == 0 {
        return;
    }
    let Ok(term) = store.term(index) else {
        return;
    };
    let mut md = SnapshotMetadata {
        index,
        term,
        ..SnapshotMetadata::default()
    };
    md.set_conf_state(store.conf_state());
    let mut snap = Snapshot {
        data: Bytes::from(crate::fence::snapshot_marker(r.fences.at(index))),
        ..Snapshot::default()
    };
    snap.set_metadata(md);
    r.node.mut_store().set_snapshot(snap);
}
