//! The acknowledged-write oracle. Per block it keeps the last acknowledged
//! version and the versions sent after it whose outcome is unknown (error
//! reply, connection lost); a read must return one of those, never anything
//! older and never garbage (the reading and judging of every block through
//! every node is in `check.rs`).
//!
//! The writers own their blocks' histories while they run (no lock on the
//! write path) and hand them back when the pool stops, so one oracle can
//! follow several runs of writers, as the power-cut test does across cuts.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use super::blocks::{Seen, Workload};
use super::check::Check;

/// Acknowledged write records kept per block for failure reports.
const RECENT_ACKS: usize = 4;

/// How one write ended.
#[derive(Clone, Debug)]
pub(super) enum WriteEnd {
    Acked,
    Errno(u32),
    Lost(String),
}

/// One write, for the report of a violation.
#[derive(Clone, Debug)]
pub(super) struct WriteRecord {
    pub(super) version: u64,
    pub(super) node: u64,
    /// Wall clock, to find the daemons' log lines of the time.
    pub(super) sent_wall: SystemTime,
    /// From the writers' start.
    pub(super) at: Duration,
    pub(super) took: Duration,
    pub(super) end: WriteEnd,
}

impl fmt::Display for WriteRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match &self.end {
            WriteEnd::Acked => "acknowledged".to_string(),
            WriteEnd::Errno(e) => format!("error reply errno {e}"),
            WriteEnd::Lost(e) => format!("connection lost ({e})"),
        };
        write!(
            f,
            "v{} via node {} sent at +{:.3} s, {end} after {} ms",
            self.version,
            self.node,
            self.at.as_secs_f64(),
            self.took.as_millis()
        )
    }
}

/// What the oracle knows of one block.
#[derive(Clone, Debug, Default)]
pub(super) struct BlockLog {
    /// Highest version sent.
    pub(super) sent: u64,
    /// Last acknowledged version (or the one settled by a read-back).
    pub(super) acked: Option<u64>,
    /// Versions sent after `acked` whose outcome is unknown.
    pub(super) unknown: Vec<u64>,
    /// A version of unknown outcome that every node returned at an earlier
    /// check ([`Oracle::settle`]); it is committed, so it counts as acked.
    pub(super) settled: Option<u64>,
    /// Every write that was not acknowledged (rare: faults only).
    pub(super) unacked: Vec<WriteRecord>,
    /// The last few acknowledged writes.
    pub(super) recent: VecDeque<WriteRecord>,
}

impl BlockLog {
    pub(super) fn record(&mut self, r: WriteRecord) {
        match r.end {
            WriteEnd::Acked => {
                // Everything sent before it is now older than the last
                // acknowledged version: no longer an acceptable outcome.
                self.acked = Some(r.version);
                self.unknown.clear();
                if self.recent.len() == RECENT_ACKS {
                    self.recent.pop_front();
                }
                self.recent.push_back(r);
            }
            _ => {
                self.unknown.push(r.version);
                self.unacked.push(r);
            }
        }
    }

    pub(super) fn find(&self, version: u64) -> Option<&WriteRecord> {
        self.recent
            .iter()
            .chain(self.unacked.iter())
            .find(|r| r.version == version)
    }

    /// How the last acknowledged version `a` came to be required.
    fn how(&self, a: u64) -> &'static str {
        if self.settled == Some(a) {
            "read back by every node at an earlier check"
        } else {
            "acknowledged"
        }
    }

    /// Whether a read may return `seen`: the last acknowledged version or a
    /// later one of unknown outcome (zeroes only if nothing was acknowledged).
    pub(super) fn judge(&self, seen: &Seen) -> Result<(), String> {
        let v = match seen {
            Seen::Garbage(g) => return Err(format!("garbage: {g}")),
            Seen::Zero => {
                return match self.acked {
                    None => Ok(()),
                    Some(a) => Err(format!(
                        "LOST WRITE: reads as never written, but version {a} was {}",
                        self.how(a)
                    )),
                }
            }
            Seen::Version(v) => *v,
        };
        if self.acked == Some(v) || self.unknown.contains(&v) {
            return Ok(());
        }
        if v > self.sent {
            return Err(format!(
                "version {v} was never sent (highest sent {})",
                self.sent
            ));
        }
        match self.acked {
            Some(a) if v < a => Err(format!(
                "STALE: version {v}, older than the last acknowledged version {a}{}",
                if self.settled == Some(a) {
                    format!(" ({})", self.how(a))
                } else {
                    String::new()
                }
            )),
            _ => Err(format!(
                "version {v} is neither the last acknowledged ({:?}) nor a later one of \
                 unknown outcome ({:?})",
                self.acked, self.unknown
            )),
        }
    }
}

/// The write history of every block written so far.
#[derive(Debug, Default)]
pub struct Oracle {
    pub(super) logs: BTreeMap<u64, BlockLog>,
}

impl Oracle {
    /// An oracle that has seen no write.
    pub fn new() -> Oracle {
        Oracle::default()
    }

    /// Blocks written at least once.
    pub fn blocks_written(&self) -> usize {
        self.logs.len()
    }

    /// Takes writer `w`'s block histories out, for the writer to extend.
    pub(super) fn take_for(&mut self, workload: &Workload, w: usize) -> BTreeMap<u64, BlockLog> {
        let (mine, rest) = std::mem::take(&mut self.logs)
            .into_iter()
            .partition(|(b, _)| workload.owner(*b) == w);
        self.logs = rest;
        mine
    }

    /// Puts histories taken by [`Oracle::take_for`] back.
    pub(super) fn give_back(&mut self, logs: BTreeMap<u64, BlockLog>) {
        self.logs.extend(logs);
    }

    /// Takes what every node returned at `check` as the blocks' new floor.
    /// Only sound when nothing can still change them: writers stopped and
    /// every daemon restarted since (no request of theirs still in
    /// flight), replicas converged under a leader that committed in its
    /// term. Then a version of unknown outcome that was read back is
    /// committed and may not vanish later, and one that was not read back
    /// never will appear. Blocks the check found bad are left alone.
    pub fn settle(&mut self, check: &Check) {
        for (b, per_node) in &check.seen {
            let Some(log) = self.logs.get_mut(b) else {
                continue;
            };
            let agree = per_node.windows(2).all(|w| w[0] == w[1]);
            if !agree || per_node.iter().any(|s| log.judge(s).is_err()) {
                continue;
            }
            match per_node.first() {
                Some(Seen::Version(v)) => {
                    if log.acked != Some(*v) {
                        log.acked = Some(*v);
                        log.settled = Some(*v);
                    }
                    log.unknown.clear();
                }
                Some(Seen::Zero) => log.unknown.clear(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, end: WriteEnd) -> WriteRecord {
        WriteRecord {
            version,
            node: 1,
            sent_wall: SystemTime::now(),
            at: Duration::ZERO,
            took: Duration::ZERO,
            end,
        }
    }

    fn log_of(writes: &[(u64, WriteEnd)]) -> BlockLog {
        let mut log = BlockLog::default();
        for (v, end) in writes {
            log.sent = *v;
            log.record(record(*v, end.clone()));
        }
        log
    }

    #[test]
    fn the_oracle_accepts_the_last_ack_or_later_unknowns_only() {
        assert!(BlockLog::default().judge(&Seen::Zero).is_ok());
        let log = log_of(&[
            (1, WriteEnd::Acked),
            (2, WriteEnd::Lost("reset".into())),
            (3, WriteEnd::Acked),
            (4, WriteEnd::Errno(5)),
            (5, WriteEnd::Lost("reset".into())),
        ]);
        for ok in [3, 4, 5] {
            assert!(log.judge(&Seen::Version(ok)).is_ok(), "v{ok}");
        }
        // Older than the last ack, even one of unknown outcome: a lost write.
        for stale in [1, 2] {
            let e = log.judge(&Seen::Version(stale)).expect_err("stale");
            assert!(e.contains("STALE"), "{e}");
        }
        assert!(log.judge(&Seen::Zero).is_err());
        assert!(log.judge(&Seen::Version(6)).is_err());
        assert!(log.judge(&Seen::Garbage("x".into())).is_err());
    }

    #[test]
    fn a_settled_read_back_becomes_the_floor() {
        let mut o = Oracle::new();
        o.logs.insert(
            0,
            log_of(&[
                (1, WriteEnd::Acked),
                (2, WriteEnd::Lost("reset".into())),
                (3, WriteEnd::Lost("reset".into())),
            ]),
        );
        o.logs
            .insert(1, log_of(&[(1, WriteEnd::Lost("reset".into()))]));
        let mut check = Check::default();
        check.seen.insert(0, vec![Seen::Version(2); 3]);
        check.seen.insert(1, vec![Seen::Zero; 3]);
        o.settle(&check);
        let b0 = &o.logs[&0];
        assert!(b0.judge(&Seen::Version(2)).is_ok());
        for bad in [Seen::Version(1), Seen::Version(3), Seen::Zero] {
            let e = b0.judge(&bad).expect_err("below or beside the floor");
            assert!(!e.is_empty());
        }
        assert!(b0
            .judge(&Seen::Zero)
            .expect_err("lost")
            .contains("read back by every node"));
        let b1 = &o.logs[&1];
        assert!(b1.judge(&Seen::Zero).is_ok());
        assert!(b1.judge(&Seen::Version(1)).is_err());
    }
}
