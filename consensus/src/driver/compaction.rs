//! Log compaction: a shard's log is compacted as its applied data becomes
//! durable, keeping what live followers still need and, within a byte
//! budget per shard and per node, every entry younger than the retention
//! age (`--log-keep`), so a replica back from a short outage replays the
//! log instead of copying chunks. Its Raft snapshot then points at where
//! the log starts, and WAL segments no log needs any more are purged.

use raft::{StateRole, Storage as _};
use std::time::{Duration, Instant};

use raftblock_storage::Wal;

use crate::meta::META_GROUP;

use super::config::COMPACT_MIN;
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
        r.node.mut_store().stage_applied(r.durable, &mut self.carry);
        self.maybe_compact(group);
    }

    /// Compacts a shard's log as far as the retention rules let it, when
    /// enough of it can go.
    pub(super) fn maybe_compact(&mut self, group: u64) {
        let keep = self.retention();
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        let now = self.clock.now();
        let up = |node| self.liveness.is_up(node, now);
        let to = compact_to(r, &keep, &self.wal, group, now, &up);
        let store = r.node.store();
        let first = store.first_index().unwrap_or(1);
        // Everything in the log is applied and durable: the group is idle,
        // and what is left of its log would only pin WAL segments.
        let idle = r.durable >= store.last_index().unwrap_or(0);
        if to > first + COMPACT_MIN || (idle && to >= first) {
            if let Err(e) = r.node.mut_store().stage_compact(to, &mut self.carry) {
                tracing::warn!(group, error = %e, "compacting a shard log");
            } else {
                self.compacted = true;
                r.set_shard_snapshot();
            }
        }
    }

    /// The retention rules in force now.
    fn retention(&self) -> Retention {
        Retention {
            age: self.cfg.log_keep,
            shard_bytes: self.cfg.log_keep_bytes,
            // Over the node's budget, age stops counting: logs are kept
            // only for the followers that are up.
            by_age: self.retained_bytes <= self.cfg.log_keep_node_bytes,
        }
    }

    /// Notes how far each log reached a moment ago (for compaction by
    /// age) and the bytes of log the node holds; once a second.
    pub(super) fn mark_log_ages(&mut self, now: Instant) {
        let keep = self.cfg.log_keep;
        // A sleeping group's log does not grow: its marks stay as they are.
        for g in &self.awake {
            let Some(r) = self.replicas.get_mut(g) else {
                continue;
            };
            let last = r.node.raft.raft_log.last_index();
            r.log_marks.push_back((now, last));
            // The newest mark older than `keep` is all that is needed of
            // the old ones.
            while r.log_marks.len() >= 2 && r.log_marks[1].0 + keep <= now {
                r.log_marks.pop_front();
            }
        }
        // Kept per group by the log: cheap enough to read every second,
        // and a stale zero would keep logs by age over the budget.
        self.retained_bytes = self.wal.live_bytes();
        // Entries that aged out of a quiet shard's log go without waiting
        // for its next write: the awake groups every 5 s, all every minute.
        if !self.ticks.is_multiple_of(50) {
            return;
        }
        let all = self.ticks.is_multiple_of(600);
        let groups: Vec<u64> = self
            .replicas
            .keys()
            .filter(|g| **g != META_GROUP && (all || self.awake.contains(*g)))
            .copied()
            .collect();
        for g in groups {
            self.maybe_compact(g);
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

/// How much log a shard keeps behind what it has applied and made durable.
struct Retention {
    /// Entries younger than this stay, so a replica that was down for less
    /// catches up from the log, not by copying chunks.
    age: Duration,
    /// At most this many bytes are kept for age's sake.
    shard_bytes: u64,
    /// False when the node's logs are over their budget.
    by_age: bool,
}

/// Where a shard's log may be compacted to: never past what is durable,
/// nor past what a follower that is up still needs (on the leader), nor
/// past entries younger than the retention age, unless the age-kept part
/// is over its byte budget.
fn compact_to(
    r: &Replica,
    keep: &Retention,
    wal: &Wal,
    group: u64,
    now: Instant,
    up: &dyn Fn(u64) -> bool,
) -> u64 {
    let mut to = r.durable;
    if r.node.raft.state == StateRole::Leader {
        let live_need = r
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| up(**id))
            // A replica being sent a snapshot needs the log after it only.
            .map(|(_, p)| match p.state {
                raft::ProgressState::Snapshot => p.matched.max(p.pending_snapshot),
                _ => p.matched,
            })
            .min()
            .unwrap_or(0);
        to = to.min(live_need);
    }
    if keep.by_age {
        // Entries up to `old` were in the log `keep.age` ago.
        let old = r
            .log_marks
            .front()
            .filter(|(t, _)| *t + keep.age <= now)
            .map_or(0, |(_, last)| *last);
        let by_age = r.durable.min(old);
        let by_size = wal.index_keeping(group, r.durable, keep.shard_bytes);
        to = to.min(by_age.max(by_size));
    }
    to
}
