//! Linearizable reads. Reads queue on their replica and go out as one
//! ReadIndex request per group per round (or, on a leader whose lease is
//! valid, are served at the current commit index); the ReadState that
//! answers a batch gives its waiters the index they wait for, and they are
//! answered once the replica has applied it. Reads that get no answer in
//! time fail so callers retry.

use raft::ReadState;
use std::time::{Duration, Instant};

use crate::read_lease::ReadLeases;

use super::replica::{ReadBatch, Replica};
use super::{Driver, ReplicaError, Reply};

/// A shard follower this many entries behind the index a read must see
/// sends the reader to the leader rather than make it wait for its apply
/// task (`inbox` checks its own commit index the same way before asking).
pub(super) const FOLLOWER_READ_MAX_LAG: u64 = 256;

impl Replica {
    /// Answers the reads whose index this replica's chunk files hold.
    pub(super) fn complete_reads(&mut self) {
        let applied = self.reads_applied;
        let mut i = 0;
        while i < self.reads_ready.len() {
            if self.reads_ready[i].0 <= applied {
                let (_, _, r) = self.reads_ready.swap_remove(i);
                let _ = r.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }

    /// Queues a read that got its read index `index`; a follower too far
    /// behind it sends the reader to the leader instead of making it wait.
    fn read_ready(&mut self, group: u64, index: u64, now: Instant, w: Reply) {
        if !self.is_leader() && index.saturating_sub(self.reads_applied) > FOLLOWER_READ_MAX_LAG {
            let leader = self.leader();
            let _ = w.send(Err(ReplicaError::NotLeader { group, leader }));
            return;
        }
        self.reads_ready.push((index, now, w));
    }

    /// Fails the reads that waited longer than `timeout`.
    pub(super) fn expire_reads(&mut self, g: u64, now: Instant, timeout: Duration) {
        // Reads that got no ReadState (Raft drops them silently without
        // a leader, or right after an election) fail so callers retry.
        while self
            .reads_sent
            .front()
            .is_some_and(|b| now.duration_since(b.issued) > timeout)
        {
            if let Some(b) = self.reads_sent.pop_front() {
                for w in b.waiters {
                    let _ = w.send(Err(ReplicaError::Retry(g)));
                }
            }
        }
        let mut i = 0;
        while i < self.reads_new.len() {
            if now.duration_since(self.reads_new[i].0) > timeout {
                let (_, w) = self.reads_new.swap_remove(i);
                let _ = w.send(Err(ReplicaError::Retry(g)));
            } else {
                i += 1;
            }
        }
        // A follower cut off from its leader may never apply the index it
        // was given.
        let mut i = 0;
        while i < self.reads_ready.len() {
            if now.duration_since(self.reads_ready[i].1) > timeout {
                let (_, _, w) = self.reads_ready.swap_remove(i);
                let _ = w.send(Err(ReplicaError::Retry(g)));
            } else {
                i += 1;
            }
        }
    }

    /// Hands the waiters of the batches that `states` answer their read
    /// index; on the leader a confirmed batch renews the lease.
    pub(super) fn on_read_states(
        &mut self,
        group: u64,
        states: Vec<ReadState>,
        now: Instant,
        lease: Duration,
    ) {
        for rs in states {
            let ctx = rs
                .request_ctx
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            // A ReadState for a batch no longer queued (it expired, or the
            // answer came twice or late) says nothing about the batches
            // issued after it: answering them with its index would let a
            // read miss a write acknowledged in between. It is dropped.
            let Some(pos) = self.reads_sent.iter().position(|b| b.ctx == ctx) else {
                tracing::debug!(
                    group,
                    ctx,
                    index = rs.index,
                    "read state for no queued batch"
                );
                continue;
            };
            // Older batches are answered by this newer ReadState.
            for _ in 0..=pos {
                let Some(b) = self.reads_sent.pop_front() else {
                    break;
                };
                if b.ctx == ctx && self.is_leader() && self.node.raft.lead_transferee.is_none() {
                    self.lease_until = Some(b.issued + lease);
                }
                for w in b.waiters {
                    self.read_ready(group, rs.index, now, w);
                }
            }
        }
    }
}

impl Replica {
    /// Until when reads may be served from this replica's chunk files
    /// without asking the driver (see `read_lease`): its lease, while it
    /// leads with no transfer under way and has applied an entry of its
    /// own term.
    pub(super) fn local_read_lease(&self) -> Option<Instant> {
        let raft = &self.node.raft;
        let own_term_applied = raft.raft_log.term(self.applied).ok() == Some(raft.term);
        self.lease_until
            .filter(|_| self.is_leader() && raft.lead_transferee.is_none() && own_term_applied)
    }

    /// Publishes [`Replica::local_read_lease`] for readers.
    pub(super) fn publish_lease(&self, group: u64, leases: &ReadLeases) {
        leases.publish(group, self.local_read_lease());
    }

    /// Renews a lease that local readers use before it runs out: a
    /// ReadIndex with no waiters, confirmed by a heartbeat round.
    pub(super) fn renew_wanted_lease(
        &mut self,
        group: u64,
        now: Instant,
        lease: Duration,
        leases: &ReadLeases,
    ) {
        let Some(until) = self.local_read_lease() else {
            return;
        };
        if until > now + lease / 2 || !self.reads_sent.is_empty() {
            return;
        }
        if leases.take_wanted(group) {
            self.renew_lease = true;
        }
    }
}

impl Driver {
    /// Turns queued reads into ReadIndex requests (one per group per round)
    /// or, under a valid lease, into reads at the current commit index.
    pub(super) fn send_reads(&mut self) {
        let now = self.clock.now();
        let lease = self.cfg.lease();
        for g in &self.awake {
            let Some(r) = self.replicas.get_mut(g) else {
                continue;
            };
            let renew = std::mem::take(&mut r.renew_lease) && r.is_leader();
            if r.reads_new.is_empty() && !renew {
                continue;
            }
            if r.is_leader() && !renew {
                // Raft drops a ReadIndex until the leader has committed an
                // entry of its term: keep the reads queued until then.
                if !r.node.raft.commit_to_current_term() {
                    continue;
                }
                if r.lease_until.is_some_and(|t| t > now) && r.node.raft.lead_transferee.is_none() {
                    let index = r.node.raft.raft_log.committed;
                    for (_, w) in r.reads_new.drain(..) {
                        r.reads_ready.push((index, now, w));
                    }
                    r.complete_reads();
                    continue;
                }
            } else if r.leader().is_none() {
                continue; // dropped silently by Raft: wait for a leader
            }
            let ctx = self.next_ctx;
            self.next_ctx += 1;
            r.node.read_index(ctx.to_le_bytes().to_vec());
            let waiters = r.reads_new.drain(..).map(|(_, w)| w).collect();
            r.reads_sent.push_back(ReadBatch {
                ctx,
                issued: now,
                waiters,
            });
            let _ = lease;
        }
    }
}
