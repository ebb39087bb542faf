//! What a run tells: the [`Outcome`] (a [`Report`] of counts and timings,
//! and the problems found), the failed writes as the writers saw them,
//! daemon log excerpts around a given time (the daemons log RFC 3339 UTC
//! timestamps, so the harness speaks that too), and where the logs are
//! saved so they outlive the run.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::faults::Blame;
use super::writer::SLOW_WRITE;
use crate::cluster::TestCluster;

/// The result of a run: what happened, and every violation found (each
/// line names the seed).
#[derive(Debug)]
pub struct Outcome {
    /// Counts and timings.
    pub report: Report,
    /// Lost or stale writes, garbage, diverging replicas, I/O errors from
    /// healthy nodes, a cluster that did not recover. Empty on success.
    pub problems: Vec<String>,
}

/// Counts and timings of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The run's seed.
    pub seed: u64,
    /// Fault rounds completed.
    pub rounds: usize,
    /// Wall time from the writers' start to the end of the checks.
    pub elapsed: Duration,
    /// When the writers started (the `+N s` times count from here), as
    /// the daemon logs show time.
    pub started_utc: String,
    /// Where the daemons' logs were saved.
    pub logs_dir: String,
    /// Writes sent.
    pub sent: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes answered with an NBD error.
    pub error_replies: u64,
    /// Writes whose connection died (or timed out) before a reply.
    pub lost: u64,
    /// New NBD connections after the first one per writer.
    pub reconnects: u64,
    /// Blocks written at least once / blocks checked through each node.
    pub blocks_written: usize,
    /// Blocks read back through each node.
    pub blocks_checked: usize,
    /// Of those, blocks every node returned at their last acknowledged
    /// version, at a later version of unknown outcome, and as never written.
    pub read_back: (usize, usize, usize),
    /// Longest wait of one request for its acknowledgement, and where.
    pub longest_request: (Duration, String),
    /// Longest time one writer went without an acknowledgement
    /// (reconnects included), and where.
    pub longest_writer_gap: (Duration, String),
    /// Longest window in which no writer got any acknowledgement, and when.
    pub longest_no_ack: (Duration, String),
    /// Longest time from the end of a fault until every shard was led and
    /// caught up again.
    pub longest_recovery: Duration,
    /// Acknowledged writes that waited longer than 5 s, described.
    pub slow_writes: Vec<String>,
    /// Faults injected, by kind and by the target's role.
    pub faults: BTreeMap<String, usize>,
    /// Every NBD error reply and lost connection the writers saw.
    pub events: Vec<IoEvent>,
}

/// One failed write as a writer saw it.
#[derive(Clone, Debug)]
pub struct IoEvent {
    /// Writer thread.
    pub writer: usize,
    /// The node it was connected to.
    pub node: u64,
    /// `errno 5`, `connection lost: ...`, `protocol: ...`.
    pub what: String,
    /// Whether it was an error reply, a lost connection or a protocol
    /// violation.
    pub kind: EventKind,
    /// How the faults at the time excuse it.
    pub blame: Blame,
    /// Time since the most recent fault ended (None during a fault or
    /// before the first one).
    pub since_fault_end: Option<Duration>,
    /// When the request was sent, from the writers' start.
    pub at: Duration,
    /// The fault it is attributed to, if any.
    pub fault: Option<String>,
}

/// The kinds of failed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// An NBD error reply.
    ErrorReply,
    /// The connection died or the reply did not come within the I/O timeout.
    Lost,
    /// The server broke the protocol (bad magic, wrong handle).
    Protocol,
}

/// The failed writes no fault excuses: protocol violations anywhere, and
/// errors from a node that was healthy and in the majority.
pub(super) fn unexcused(seed: u64, events: &[IoEvent]) -> Vec<String> {
    let mut problems = Vec::new();
    for e in events {
        let bad = match (e.kind, e.blame) {
            (EventKind::Protocol, _) => true,
            (_, Blame::DuringOtherFault | Blame::Quiet) => true,
            (_, Blame::NodeFaulted | Blame::Grace) => false,
        };
        if bad {
            problems.push(format!(
                "seed {seed}: writer {} got {} from node {} at +{:.3} s although that node was \
                 healthy and in the majority ({:?}{}{})",
                e.writer,
                e.what,
                e.node,
                e.at.as_secs_f64(),
                e.blame,
                e.since_fault_end
                    .map(|s| format!(", {} ms after the last fault ended", s.as_millis()))
                    .unwrap_or_default(),
                e.fault
                    .as_ref()
                    .map(|f| format!(", fault: {f}"))
                    .unwrap_or_default(),
            ));
        }
    }
    problems
}

/// Parses the RFC 3339 UTC timestamp a daemon log line starts with.
fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// `t` as the daemons' log timestamps show it (RFC 3339 UTC, ms).
pub fn utc(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Each node's log lines from `from` to `to` (at most `max` per node).
pub fn log_excerpt(c: &TestCluster, from: SystemTime, to: SystemTime, max: usize) -> String {
    let mut out = String::new();
    for (i, d) in c.nodes.iter().enumerate() {
        let text = d.log_text();
        let mut lines = Vec::new();
        let mut inside = false;
        for l in text.lines() {
            // Continuation lines (no timestamp) follow the line before.
            if let Some(t) = log_time(l) {
                inside = t >= from && t <= to;
            }
            if inside {
                lines.push(l);
            }
        }
        out.push_str(&format!(
            "  --- node {} log ({} lines) ---\n",
            i + 1,
            lines.len()
        ));
        for l in lines.iter().take(max) {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
        if lines.len() > max {
            out.push_str(&format!("  ... {} more\n", lines.len() - max));
        }
    }
    out
}

/// Copies every daemon log to `$TMPDIR/NAME/nodeN.log`, where it outlives
/// the run; returns the directory.
pub fn save_logs(c: &TestCluster, name: &str) -> String {
    let dir = std::env::temp_dir().join(name);
    let _ = std::fs::create_dir_all(&dir);
    for (i, d) in c.nodes.iter().enumerate() {
        let _ = std::fs::write(dir.join(format!("node{}.log", i + 1)), d.log_text());
    }
    dir.display().to_string()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos report: seed {}, {} rounds in {:.0} s (writers started at {}; daemon logs in {})",
            self.seed,
            self.rounds,
            self.elapsed.as_secs_f64(),
            self.started_utc,
            self.logs_dir
        )?;
        writeln!(
            f,
            "  writes: {} sent, {} acknowledged, {} error replies, {} lost with their \
             connection; {} reconnects",
            self.sent, self.acked, self.error_replies, self.lost, self.reconnects
        )?;
        writeln!(
            f,
            "  blocks: {} written, {} read back through each node: {} at their last \
             acknowledged version, {} at a later version of unknown outcome, {} never written",
            self.blocks_written,
            self.blocks_checked,
            self.read_back.0,
            self.read_back.1,
            self.read_back.2
        )?;
        writeln!(
            f,
            "  longest wait of one write for its ack: {} ms ({})",
            self.longest_request.0.as_millis(),
            self.longest_request.1
        )?;
        writeln!(
            f,
            "  longest time one writer went without an ack: {} ms ({})",
            self.longest_writer_gap.0.as_millis(),
            self.longest_writer_gap.1
        )?;
        writeln!(
            f,
            "  longest window with no ack at all: {} ms ({})",
            self.longest_no_ack.0.as_millis(),
            self.longest_no_ack.1
        )?;
        writeln!(
            f,
            "  longest recovery after a fault: {:.1} s",
            self.longest_recovery.as_secs_f64()
        )?;
        writeln!(
            f,
            "  writes that waited over {} s for their ack: {}",
            SLOW_WRITE.as_secs(),
            self.slow_writes.len()
        )?;
        for w in self.slow_writes.iter().take(20) {
            writeln!(f, "    {w}")?;
        }
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "  faults: {}", faults.join(", "))?;
        let mut by: BTreeMap<(u64, Blame, EventKind), usize> = BTreeMap::new();
        for e in &self.events {
            *by.entry((e.node, e.blame, e.kind)).or_default() += 1;
        }
        if by.is_empty() {
            writeln!(f, "  failed writes: none")?;
        }
        for ((node, blame, kind), n) in by {
            writeln!(f, "  failed writes: node {node}, {blame:?}, {kind:?}: {n}")?;
        }
        for e in self.events.iter().filter(|e| e.blame != Blame::NodeFaulted) {
            writeln!(
                f,
                "    writer {} node {} +{:.3} s {:?}: {}{}",
                e.writer,
                e.node,
                e.at.as_secs_f64(),
                e.blame,
                e.what,
                e.since_fault_end
                    .map(|s| format!(" ({} ms after a fault ended)", s.as_millis()))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_log_timestamps_parse() {
        let t = log_time("2025-11-27T14:32:00.123456Z  INFO raftblock: hello").expect("time");
        let d = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch");
        assert_eq!(d.as_secs(), 1_764_253_920);
        assert_eq!(d.subsec_micros(), 123_456);
        assert!(log_time("  continuation").is_none());
        assert_eq!(utc(t), "2025-11-27T14:32:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00.000Z");
    }
}
