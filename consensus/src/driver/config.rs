//! Configuration shared by every group on the node: the Raft `Config`
//! each replica is started with, and the constants of the meta group's
//! start and of log compaction.

use raft::prelude::Config;
use raft::ReadOnlyOption;

use super::{Driver, DriverConfig};

/// Index of the meta group's initial snapshot: its log starts after it, so
/// a node that joins later is sent the metadata as a snapshot.
pub(super) const META_INIT_INDEX: u64 = 5;
/// Meta log entries kept behind the applied index.
pub(super) const META_LOG_KEEP: u64 = 200;
/// Entries a log must be able to drop before it is compacted.
pub(super) const COMPACT_MIN: u64 = 64;

/// The Raft configuration of every group on a node.
pub(super) fn raft_config(cfg: &DriverConfig, applied: u64) -> Config {
    Config {
        id: cfg.node,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        // raft-rs defaults to one entry per append message.
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        // Off: it merges appends without a size limit (a catching-up
        // follower would get one message past the transport's frame limit);
        // the transport batches messages per peer anyway.
        batch_append: false,
        max_uncommitted_size: 256 << 20,
        max_committed_size_per_ready: 16 << 20,
        // raft-rs draws the timeout from [min, max) with its own RNG; a
        // one-tick range takes the draw out.
        min_election_tick: if cfg.fixed_election_timeout {
            cfg.election_ticks
        } else {
            0
        },
        max_election_tick: if cfg.fixed_election_timeout {
            cfg.election_ticks + 1
        } else {
            0
        },
        ..Config::default()
    }
}

impl Driver {
    /// The Raft configuration of a replica whose state machine is at `applied`.
    pub(super) fn raft_config(&self, applied: u64) -> Config {
        raft_config(&self.cfg, applied)
    }
}
