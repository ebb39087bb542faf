//! Faults: drawing one per round from the seeded RNG, picking the node it
//! hits from the shard leaders of the moment, waiting for the cluster to
//! be healthy again afterwards, and the timeline of what was faulted when,
//! against which every failed write is blamed (on its own node's fault, on
//! another node's, on the grace period after one, or on nothing).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;

use super::{lock, LAG_OK, NODES, SHARDS, VOLUME};
use crate::cluster::TestCluster;

/// The fault kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL, then restart on the same data.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Stop,
    /// Node 3's link down, then up.
    Partition,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Partition => "partition",
        })
    }
}

/// Whose fault a failed write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blame {
    /// The node the writer used was itself killed, stopped or cut off
    /// while the request was out.
    NodeFaulted,
    /// The node was healthy and in the majority; another node was faulted.
    DuringOtherFault,
    /// No fault at the time, but one ended within the grace period.
    Grace,
    /// No fault at the time, nor within the grace period before.
    Quiet,
}

/// One fault, from just before it was injected until it was undone (for a
/// kill: until the restarted daemon answered again).
#[derive(Clone, Debug)]
struct Span {
    node: u64,
    start: Instant,
    end: Option<Instant>,
    what: String,
}

/// Every fault of a run, for blaming failed writes and describing stalls.
pub(super) struct Timeline {
    /// When the writers started; report times count from here.
    pub(super) t0: Instant,
    grace: Duration,
    spans: Mutex<Vec<Span>>,
}

impl Timeline {
    pub(super) fn new(t0: Instant, grace: Duration) -> Timeline {
        Timeline {
            t0,
            grace,
            spans: Mutex::new(Vec::new()),
        }
    }

    /// Whether a fault on `node` is going on.
    pub(super) fn faulted_now(&self, node: u64) -> bool {
        lock(&self.spans)
            .iter()
            .any(|s| s.node == node && s.end.is_none())
    }

    pub(super) fn begin(&self, node: u64, what: String) {
        lock(&self.spans).push(Span {
            node,
            start: Instant::now(),
            end: None,
            what,
        });
    }

    /// Ends every fault going on.
    pub(super) fn end(&self) {
        let now = Instant::now();
        for s in lock(&self.spans).iter_mut().filter(|s| s.end.is_none()) {
            s.end = Some(now);
        }
    }

    /// Who is to blame for a request to `node` sent at `sent` that failed
    /// at `failed`; also the time since the last fault ended, and which
    /// fault it is attributed to.
    pub(super) fn blame(
        &self,
        node: u64,
        sent: Instant,
        failed: Instant,
    ) -> (Blame, Option<Duration>, Option<String>) {
        let spans = lock(&self.spans);
        let overlaps = |s: &&Span| s.start <= failed && s.end.is_none_or(|e| e >= sent);
        if let Some(s) = spans.iter().filter(|s| s.node == node).find(overlaps) {
            return (Blame::NodeFaulted, None, Some(s.what.clone()));
        }
        if let Some(s) = spans
            .iter()
            .find(|s| s.start <= failed && s.end.is_none_or(|e| e >= failed))
        {
            return (Blame::DuringOtherFault, None, Some(s.what.clone()));
        }
        let last = spans
            .iter()
            .filter_map(|s| s.end.filter(|e| *e <= failed).map(|e| (e, s)))
            .max_by_key(|(e, _)| *e);
        match last {
            Some((e, s)) => {
                let since = failed - e;
                let blame = if since <= self.grace {
                    Blame::Grace
                } else {
                    Blame::Quiet
                };
                (blame, Some(since), Some(s.what.clone()))
            }
            None => (Blame::Quiet, None, None),
        }
    }

    /// The time from `from` to `to` and the faults during it, for the
    /// stall report.
    pub(super) fn describe(&self, from: Instant, to: Instant) -> String {
        let spans = lock(&self.spans);
        let during: Vec<&str> = spans
            .iter()
            .filter(|s| s.start <= to && s.end.is_none_or(|e| e >= from))
            .map(|s| s.what.as_str())
            .collect();
        let at = format!(
            "+{:.1}..+{:.1} s",
            from.saturating_duration_since(self.t0).as_secs_f64(),
            to.saturating_duration_since(self.t0).as_secs_f64()
        );
        if during.is_empty() {
            format!("{at}, no fault")
        } else {
            format!("{at}, during {}", during.join("; "))
        }
    }
}

/// Leader per shard of the volume (0: none).
pub(super) fn shard_leaders(st: &Value) -> Vec<u64> {
    st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == VOLUME))
        .and_then(|v| v["shards"].as_array())
        .map(|s| {
            s.iter()
                .map(|s| s["leader"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// Every node up, every shard led, every replica within [`LAG_OK`].
fn healthy(st: &Value) -> bool {
    let nodes_up = st["nodes"]
        .as_array()
        .is_some_and(|n| n.len() == NODES as usize && n.iter().all(|n| n["up"] == true));
    let shards_ok = st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == VOLUME))
        .and_then(|v| v["shards"].as_array())
        .is_some_and(|shards| {
            shards.len() == SHARDS as usize
                && shards.iter().all(|s| {
                    s["leader"].as_u64().unwrap_or(0) != 0
                        && s["replicas"].as_array().is_some_and(|r| {
                            r.iter()
                                .all(|r| r["lag"].as_u64().is_some_and(|l| l <= LAG_OK))
                        })
                })
        });
    nodes_up && shards_ok
}

/// Waits until the cluster is [`healthy`]; how long that took, or the last
/// status seen.
pub(super) fn wait_healthy(c: &mut TestCluster, within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let st = c.status();
        if healthy(&st) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(format!("{st:#}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `sig` to a daemon this harness started.
pub(super) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a daemon this harness started.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// One round's fault, drawn before it is known which node leads what, so
/// the schedule (kinds, durations) replays exactly from the seed.
pub(super) struct Draw {
    pub(super) kind: FaultKind,
    want_leader: bool,
    pub(super) shard: usize,
    other: usize,
    pub(super) hold: Duration,
    pub(super) quiet: Duration,
}

pub(super) fn draw(rng: &mut StdRng) -> Draw {
    let kind = match rng.gen_range(0..3) {
        0 => FaultKind::Kill,
        1 => FaultKind::Stop,
        _ => FaultKind::Partition,
    };
    let want_leader = rng.gen_bool(0.5);
    let shard = rng.gen_range(0..SHARDS as usize);
    let other = rng.gen_range(0..2);
    let hold_ms = match kind {
        FaultKind::Kill => rng.gen_range(1000..=4000),
        FaultKind::Stop => rng.gen_range(1000..=3000),
        FaultKind::Partition => rng.gen_range(2000..=5000),
    };
    let quiet = Duration::from_millis(rng.gen_range(2000..=4000));
    Draw {
        kind,
        want_leader,
        shard,
        other,
        hold: Duration::from_millis(hold_ms),
        quiet,
    }
}

/// The node a drawn fault hits: node 3 for a partition (the only one in a
/// namespace), else the leader of the drawn shard or one of its followers.
pub(super) fn target(d: &Draw, leaders: &[u64]) -> u64 {
    if d.kind == FaultKind::Partition {
        return NODES;
    }
    let leader = leaders.get(d.shard).copied().unwrap_or(0);
    if leader == 0 {
        return d.other as u64 + 1;
    }
    if d.want_leader {
        return leader;
    }
    let followers: Vec<u64> = (1..=NODES).filter(|n| *n != leader).collect();
    followers[d.other % followers.len()]
}
