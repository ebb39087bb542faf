//! One log line per change in a group's health, as this node's replica
//! sees it: a leader losing or regaining a voter (its node unheard), a
//! group getting a new leader, a group left without a leader for several
//! election timeouts. Each is said once when it happens, never again at
//! every look, so an operator reading the log at INFO sees the events
//! and not the ticks.
//!
//! A voter counts as lost by its node's liveness (`PeerLiveness`, which
//! node-to-node pings keep fresh): a hibernating group sends no Raft
//! traffic at all, and it must not read as a group that lost its
//! replicas. A group sleeps only while every voter is up, and wakes when
//! one goes silent, so looking at the awake groups misses nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Driver;
use crate::events::Severity;

/// Election windows a voter's node may go unheard before the group's
/// leader calls the replica lost: a short stall (a slow disk, a busy
/// driver) is no loss, and a leader cut off from the others steps down
/// (check quorum) within one window, before it would say anything.
const LOST_AFTER_WINDOWS: u32 = 3;

/// Election windows a group may go without a leader before it is worth a
/// warning (an ordinary failover takes one or two).
const LEADERLESS_AFTER_WINDOWS: u32 = 5;

/// What a group's leader knows of the voters it is missing.
#[derive(Debug, Default)]
pub(super) struct VoterWatch {
    /// Voters seen silent, with since when (their last message before the
    /// silence), and whether they were called lost.
    silent: BTreeMap<u64, (Instant, bool)>,
}

/// A change in a voter's state worth a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VoterChange {
    /// Silent for this long: lost.
    Lost(u64, Duration),
    /// Heard again after being called lost; it was silent this long.
    Regained(u64, Duration),
}

impl VoterWatch {
    /// One look by the leader at its `voters`: `heard(n)` is when node `n`
    /// was last heard from; it is up while that is within `window`, and
    /// lost once it is `lost_after` ago.
    pub(super) fn look(
        &mut self,
        voters: &[u64],
        heard: impl Fn(u64) -> Option<Instant>,
        now: Instant,
        (window, lost_after): (Duration, Duration),
    ) -> Vec<VoterChange> {
        // Voters that left the configuration (replaced by a move) are
        // forgotten: the move says what happened to them.
        self.silent.retain(|n, _| voters.contains(n));
        let mut out = Vec::new();
        for &v in voters {
            let last = heard(v);
            if last.is_some_and(|t| now.saturating_duration_since(t) <= window) {
                if let (Some((since, true)), Some(t)) = (self.silent.remove(&v), last) {
                    out.push(VoterChange::Regained(v, t.saturating_duration_since(since)));
                }
                continue;
            }
            // Never heard: silent since this leader first looked.
            let (since, said) = self.silent.entry(v).or_insert((last.unwrap_or(now), false));
            let silent = now.saturating_duration_since(*since);
            if !*said && silent >= lost_after {
                *said = true;
                out.push(VoterChange::Lost(v, silent));
            }
        }
        out
    }

    /// This node no longer leads the group: what it counted is the next
    /// leader's to say.
    pub(super) fn clear(&mut self) {
        self.silent.clear();
    }
}

/// What a replica knows of its group's leadership.
#[derive(Debug)]
pub(super) struct LeaderWatch {
    /// The last leader seen (0: none yet).
    known: u64,
    /// Since when the group has had no leader, and whether that was said.
    leaderless: Option<(Instant, bool)>,
}

/// A leadership change worth a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaderChange {
    /// The leader before (0: none seen since this replica started).
    pub(super) previous: u64,
    /// How long the group had been without a leader, if that was warned
    /// about.
    pub(super) after: Option<Duration>,
}

impl LeaderWatch {
    /// A replica that has seen no leader yet, since `now`.
    pub(super) fn new(now: Instant) -> LeaderWatch {
        LeaderWatch {
            known: 0,
            leaderless: Some((now, false)),
        }
    }

    /// Raft says the leader is `leader` (0: none) as of `now`. The change
    /// worth saying, if any: a different leader than the last one seen, or
    /// a leader at last after a warning that there was none.
    pub(super) fn leader_is(&mut self, leader: u64, now: Instant) -> Option<LeaderChange> {
        if leader == 0 {
            self.leaderless.get_or_insert((now, false));
            return None;
        }
        let after = match self.leaderless.take() {
            Some((since, true)) => Some(now.saturating_duration_since(since)),
            _ => None,
        };
        if leader == self.known && after.is_none() {
            return None; // the same leader after a lost pre-vote
        }
        let previous = std::mem::replace(&mut self.known, leader);
        Some(LeaderChange { previous, after })
    }

    /// How long the group has been without a leader, once it is `after`
    /// or longer and only the first time.
    pub(super) fn overdue(&mut self, now: Instant, after: Duration) -> Option<Duration> {
        let (since, said) = self.leaderless.as_mut()?;
        let silent = now.saturating_duration_since(*since);
        if *said || silent < after {
            return None;
        }
        *said = true;
        Some(silent)
    }
}

impl Driver {
    /// Once a second, over the awake groups: logs voters lost and regained
    /// by the groups led here, and groups without a leader for too long.
    pub(super) fn watch_groups(&mut self, now: Instant) {
        let me = self.cfg.node;
        let window = self.cfg.tick * self.cfg.election_ticks as u32;
        let liveness = &self.liveness;
        for g in self.awake.iter().copied() {
            let Some(r) = self.replicas.get_mut(&g) else {
                continue;
            };
            let cs = r.node.store().conf_state();
            // A replica outside the voters (a learner, one being removed)
            // has no say in the group's leadership.
            if !cs.voters.contains(&me) && !cs.voters_outgoing.contains(&me) {
                continue;
            }
            if let Some(silent) = r
                .leader_watch
                .overdue(now, window * LEADERLESS_AFTER_WINDOWS)
            {
                let message = format!(
                    "{} has had no leader for {:.0} s",
                    self.meta.describe_group(g),
                    silent.as_secs_f64()
                );
                let key = format!("group/{g}/leaderless");
                crate::events::say!(me, Severity::Warning, key, message;
                    group = g, volume = self.meta.volume_of(g),);
            }
            if !r.is_leader() {
                r.voter_watch.clear();
                continue;
            }
            let mut voters: Vec<u64> = cs
                .voters
                .iter()
                .chain(&cs.voters_outgoing)
                .copied()
                .filter(|v| *v != me)
                .collect();
            voters.sort_unstable();
            voters.dedup();
            let heard = |n| liveness.heard_at(n);
            let windows = (window, window * LOST_AFTER_WINDOWS);
            for change in r.voter_watch.look(&voters, heard, now, windows) {
                let name = self.meta.describe_group(g);
                let volume = self.meta.volume_of(g);
                let (severity, node, key, message) = match change {
                    VoterChange::Lost(node, silent) => (
                        Severity::Warning,
                        node,
                        format!("group/{g}/lost/{node}"),
                        format!(
                            "{name} lost its replica on node {node}: not heard from for {:.0} s",
                            silent.as_secs_f64()
                        ),
                    ),
                    VoterChange::Regained(node, after) => (
                        Severity::Info,
                        node,
                        format!("group/{g}/regained/{node}"),
                        format!(
                            "{name} regained its replica on node {node} after {:.0} s",
                            after.as_secs_f64()
                        ),
                    ),
                };
                crate::events::say!(me, severity, key, message; group = g, volume, node,);
            }
        }
    }

    /// Logs a leadership change Raft reported for `group` (the leader is
    /// now `leader`, 0 for none): one line when this node becomes leader
    /// or sees a new one; the first leader a replica sees after it starts
    /// is no news (every group has one at start).
    pub(super) fn log_leader(&mut self, group: u64, leader: u64, now: Instant) {
        let me = self.cfg.node;
        let Some(r) = self.replicas.get_mut(&group) else {
            return;
        };
        let Some(change) = r.leader_watch.leader_is(leader, now) else {
            return;
        };
        let term = r.node.raft.term;
        let name = self.meta.describe_group(group);
        let volume = self.meta.volume_of(group);
        let without = change.after.map_or_else(String::new, |d| {
            format!(" after {:.0} s without one", d.as_secs_f64())
        });
        if leader == me {
            tracing::info!(
                group,
                volume,
                term,
                previous = change.previous,
                "became leader of {name}{without}"
            );
        } else if change.previous != 0 || change.after.is_some() {
            tracing::info!(
                group,
                volume,
                node = leader,
                term,
                previous = change.previous,
                "{name} has a new leader: node {leader}{without}"
            );
        } else {
            tracing::debug!(group, node = leader, term, "{name} is led by node {leader}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_voter_is_lost_once_after_the_grace_and_regained_once() {
        let t0 = Instant::now();
        let w3 = (S, 3 * S);
        let mut w = VoterWatch::default();
        // One look at `now`: node 2 heard just now, node 3 last at `n3`.
        let look = |w: &mut VoterWatch, voters: &[u64], n3: Option<Instant>, now| {
            w.look(voters, |n| if n == 3 { n3 } else { Some(now) }, now, w3)
        };
        let n3 = Some(t0);
        assert!(look(&mut w, &[2, 3], n3, t0 + S).is_empty());
        assert!(look(&mut w, &[2, 3], n3, t0 + 2 * S).is_empty());
        assert_eq!(
            look(&mut w, &[2, 3], n3, t0 + 3 * S),
            vec![VoterChange::Lost(3, 3 * S)]
        );
        assert!(look(&mut w, &[2, 3], n3, t0 + 9 * S).is_empty(), "once");
        // Heard again at 42 s: regained, silent for those 42 s.
        let n3 = Some(t0 + 42 * S);
        assert_eq!(
            look(&mut w, &[2, 3], n3, t0 + 42 * S),
            vec![VoterChange::Regained(3, 42 * S)]
        );
        assert!(look(&mut w, &[2, 3], n3, t0 + 43 * S).is_empty());
        // A short silence is no loss, and its end no regain.
        assert!(look(&mut w, &[2, 3], n3, t0 + 44 * S).is_empty());
        assert!(look(&mut w, &[2, 3], Some(t0 + 45 * S), t0 + 45 * S).is_empty());
        // Never heard: lost after the grace from the first look.
        let mut w = VoterWatch::default();
        let t1 = t0 + 50 * S;
        assert!(look(&mut w, &[2, 3], None, t1).is_empty());
        assert_eq!(
            look(&mut w, &[2, 3], None, t1 + 3 * S),
            vec![VoterChange::Lost(3, 3 * S)]
        );
        // A lost voter replaced by a move is forgotten without a line.
        assert!(look(&mut w, &[2, 4], None, t1 + 4 * S).is_empty());
        assert!(w.silent.is_empty());
        // Leadership lost: nothing carried over.
        look(&mut w, &[2, 3], None, t1 + 10 * S);
        w.clear();
        assert!(look(&mut w, &[2, 3], Some(t1 + 11 * S), t1 + 11 * S).is_empty());
    }

    #[test]
    fn leader_changes_are_said_once_and_a_long_gap_warned_once() {
        let t0 = Instant::now();
        let mut w = LeaderWatch::new(t0);
        // The first leader since start is no change of leader.
        assert_eq!(
            w.leader_is(2, t0 + S),
            Some(LeaderChange {
                previous: 0,
                after: None
            })
        );
        assert_eq!(w.leader_is(2, t0 + S), None);
        // A pre-vote that found the same leader: nothing.
        assert_eq!(w.leader_is(0, t0 + 2 * S), None);
        assert_eq!(w.leader_is(2, t0 + 3 * S), None);
        // A failover: one line, from the new leader.
        assert_eq!(w.leader_is(0, t0 + 4 * S), None);
        assert_eq!(w.overdue(t0 + 5 * S, 5 * S), None);
        assert_eq!(
            w.leader_is(3, t0 + 6 * S),
            Some(LeaderChange {
                previous: 2,
                after: None
            })
        );
        assert_eq!(w.overdue(t0 + 60 * S, 5 * S), None, "it has a leader");
        // No leader for long: warned once; the leader after it says so.
        w.leader_is(0, t0 + 100 * S);
        assert_eq!(w.overdue(t0 + 104 * S, 5 * S), None);
        assert_eq!(w.overdue(t0 + 105 * S, 5 * S), Some(5 * S));
        assert_eq!(w.overdue(t0 + 106 * S, 5 * S), None);
        assert_eq!(
            w.leader_is(3, t0 + 110 * S),
            Some(LeaderChange {
                previous: 3,
                after: Some(10 * S)
            })
        );
    }
}
