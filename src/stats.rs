//! The last 15 minutes of traffic, kept by every node without Prometheus:
//! every [`STEP`] the node adds what its NBD volumes served (requests, bytes,
//! latency histograms, from `NbdMetrics`) and what it copied for recovery
//! since the step before. Steps end on wall-clock multiples of [`STEP`], so
//! the steps of different nodes line up and sum into the cluster's series
//! ([`ClusterSeries`]); histograms are summed before quantiles are taken, so
//! the cluster's p99 is a true p99, not an average of the nodes' p99s.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftblock_volume_driver::metrics::VolumeTotals;
use raftblock_volume_driver::NbdMetrics;

/// Length of one step.
pub const STEP: Duration = Duration::from_secs(5);

/// The longest window kept.
pub const KEEP: Duration = Duration::from_secs(15 * 60);

/// What one node served during one step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepSample {
    /// When the step ended (unix seconds, a multiple of [`STEP`]).
    pub t: u64,
    /// Bytes this node copied to rebuild or catch up replicas.
    pub recovery_bytes: u64,
    /// Per volume with traffic in the step.
    pub volumes: BTreeMap<String, VolumeTotals>,
}

/// One node's answer to `GET /v1/stats?scope=node`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node (0 when it runs alone).
    pub node: u64,
    /// Seconds per step.
    pub step_secs: u64,
    /// Its steps within the window asked for, oldest first.
    pub samples: Vec<StepSample>,
    /// Its counters as they are now, per volume (for live views such as
    /// `raftblock top`, which take differences between two answers).
    pub totals: BTreeMap<String, VolumeTotals>,
    /// Bytes copied for recovery since it started.
    pub recovery_bytes_total: u64,
}

/// What a node keeps.
pub struct StatsHistory {
    node: u64,
    metrics: Arc<NbdMetrics>,
    recovery: Box<dyn Fn() -> u64 + Send + Sync>,
    state: Mutex<History>,
}

#[derive(Default)]
struct History {
    samples: VecDeque<StepSample>,
    /// Counters at the end of the last step.
    last: BTreeMap<String, VolumeTotals>,
    last_recovery: u64,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl StatsHistory {
    /// Starts keeping the history of `metrics` and of the recovery byte
    /// counter `recovery` for node `node`; nothing is recorded until
    /// [`StatsHistory::run`] runs.
    pub fn new(
        node: u64,
        metrics: Arc<NbdMetrics>,
        recovery: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Arc<StatsHistory> {
        let h = StatsHistory {
            node,
            state: Mutex::new(History {
                last: metrics.totals(),
                last_recovery: recovery(),
                samples: VecDeque::new(),
            }),
            metrics,
            recovery: Box::new(recovery),
        };
        Arc::new(h)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one step ending at `t` (unix seconds).
    pub fn record(&self, t: u64) {
        let totals = self.metrics.totals();
        let recovery = (self.recovery)();
        let mut h = self.lock();
        let volumes = totals
            .iter()
            .map(|(name, now)| {
                let delta = match h.last.get(name) {
                    Some(before) => now.since(before),
                    None => now.clone(),
                };
                (name.clone(), delta)
            })
            .filter(|(_, d)| d.read.requests + d.write.requests + d.other.requests > 0)
            .collect();
        let sample = StepSample {
            t,
            recovery_bytes: recovery.saturating_sub(h.last_recovery),
            volumes,
        };
        h.last = totals;
        h.last_recovery = recovery;
        h.samples.push_back(sample);
        let oldest = t.saturating_sub(KEEP.as_secs());
        while h.samples.front().is_some_and(|s| s.t <= oldest) {
            h.samples.pop_front();
        }
    }

    /// Records a step at every multiple of [`STEP`] until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let step = STEP.as_millis() as u64;
            let next = (now.as_millis() as u64 / step + 1) * step;
            let wait = Duration::from_millis(next - now.as_millis() as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => self.record(next / 1000),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// The steps within the last `window`, and the counters now.
    pub fn node_stats(&self, window: Duration) -> NodeStats {
        let since = now_unix().saturating_sub(window.as_secs());
        let samples = self
            .lock()
            .samples
            .iter()
            .filter(|s| s.t > since)
            .cloned()
            .collect();
        NodeStats {
            node: self.node,
            step_secs: STEP.as_secs(),
            samples,
            totals: self.metrics.totals(),
            recovery_bytes_total: (self.recovery)(),
        }
    }
}

/// Rates of one volume, or of the whole cluster, per step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    /// Read requests per second.
    pub read_iops: Vec<f64>,
    /// Write requests (write, write zeroes, trim) per second.
    pub write_iops: Vec<f64>,
    /// Bytes read per second.
    pub read_bytes_per_sec: Vec<f64>,
    /// Bytes written per second.
    pub write_bytes_per_sec: Vec<f64>,
    /// 99th percentile of read latency, ms (null in a step without reads).
    pub read_p99_ms: Vec<Option<f64>>,
    /// 99th percentile of write latency, ms.
    pub write_p99_ms: Vec<Option<f64>>,
    /// Requests answered with an error, per second.
    pub errors_per_sec: Vec<f64>,
}

impl Series {
    fn push(&mut self, v: Option<&VolumeTotals>, secs: f64) {
        let empty = VolumeTotals::default();
        let v = v.unwrap_or(&empty);
        self.read_iops.push(v.read.requests as f64 / secs);
        self.write_iops.push(v.write.requests as f64 / secs);
        self.read_bytes_per_sec.push(v.read.bytes as f64 / secs);
        self.write_bytes_per_sec.push(v.write.bytes as f64 / secs);
        self.read_p99_ms
            .push(v.read.quantile(0.99).map(|s| s * 1e3));
        self.write_p99_ms
            .push(v.write.quantile(0.99).map(|s| s * 1e3));
        let errors = v.read.errors + v.write.errors + v.other.errors;
        self.errors_per_sec.push(errors as f64 / secs);
    }
}

/// The cluster's series over a window: `GET /v1/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterSeries {
    /// Seconds per step.
    pub step_secs: u64,
    /// The window, seconds.
    pub window_secs: u64,
    /// Nodes whose steps are summed in.
    pub nodes: Vec<u64>,
    /// Members that did not answer, and why.
    pub unreachable: BTreeMap<u64, String>,
    /// The end of each step (unix seconds), oldest first; every series
    /// has one value per step.
    pub t: Vec<u64>,
    /// All volumes together.
    pub cluster: Series,
    /// Bytes copied per second to rebuild or catch up replicas.
    pub recovery_bytes_per_sec: Vec<f64>,
    /// Per volume that had traffic in the window.
    pub volumes: BTreeMap<String, Series>,
    /// Every answering node's counters now: node → volume → counters.
    pub totals: BTreeMap<u64, BTreeMap<String, VolumeTotals>>,
}

impl ClusterSeries {
    /// Sums the nodes' steps over the last `window` up to `now` (unix
    /// seconds); a step no node recorded counts as idle.
    pub fn merge(nodes: &[NodeStats], window: Duration, now: u64) -> ClusterSeries {
        let step = STEP.as_secs();
        let secs = step as f64;
        let last = now / step * step;
        let steps = (window.as_secs() / step).max(1);
        let t: Vec<u64> = (0..steps).rev().map(|i| last - i * step).collect();
        let mut cluster: BTreeMap<u64, VolumeTotals> = BTreeMap::new();
        let mut recovery: BTreeMap<u64, u64> = BTreeMap::new();
        let mut per_volume: BTreeMap<&str, BTreeMap<u64, VolumeTotals>> = BTreeMap::new();
        for n in nodes {
            for s in &n.samples {
                *recovery.entry(s.t).or_default() += s.recovery_bytes;
                for (name, v) in &s.volumes {
                    cluster.entry(s.t).or_default().add(v);
                    per_volume
                        .entry(name)
                        .or_default()
                        .entry(s.t)
                        .or_default()
                        .add(v);
                }
            }
        }
        let mut out = ClusterSeries {
            step_secs: step,
            window_secs: window.as_secs(),
            nodes: nodes.iter().map(|n| n.node).collect(),
            t: t.clone(),
            totals: nodes.iter().map(|n| (n.node, n.totals.clone())).collect(),
            ..ClusterSeries::default()
        };
        for at in &t {
            out.cluster.push(cluster.get(at), secs);
            out.recovery_bytes_per_sec
                .push(recovery.get(at).copied().unwrap_or(0) as f64 / secs);
        }
        for (name, steps) in per_volume {
            let mut s = Series::default();
            for at in &t {
                s.push(steps.get(at), secs);
            }
            out.volumes.insert(name.to_string(), s);
        }
        out
    }
}

/// Parses a window such as `15m`, `90s`, `1h` or `300` (seconds), at most
/// [`KEEP`].
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("window {s:?}: expected a number and s, m or h, e.g. 15m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("window {s:?}: the unit must be s, m or h")),
    };
    if secs == 0 || secs > KEEP.as_secs() {
        return Err(format!(
            "window {s:?}: between 1s and {}m (what every node keeps)",
            KEEP.as_secs() / 60
        ));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftblock_volume_driver::metrics::Op;

    #[test]
    fn steps_hold_what_was_served_in_them() {
        let m = Arc::new(NbdMetrics::default());
        let copied = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c2 = copied.clone();
        let h = StatsHistory::new(7, m.clone(), move || {
            c2.load(std::sync::atomic::Ordering::Relaxed)
        });
        let v = m.volume("a");
        for _ in 0..10 {
            v.record(Op::Write, 4096, Duration::from_micros(300), true);
        }
        copied.store(1 << 20, std::sync::atomic::Ordering::Relaxed);
        let t0 = now_unix() / 5 * 5;
        h.record(t0 - 5);
        v.record(Op::Read, 512, Duration::from_millis(2), true);
        h.record(t0);
        let n = h.node_stats(Duration::from_secs(60));
        assert_eq!(n.samples.len(), 2);
        assert_eq!(n.samples[0].volumes["a"].write.requests, 10);
        assert_eq!(n.samples[0].recovery_bytes, 1 << 20);
        assert_eq!(n.samples[1].volumes["a"].write.requests, 0);
        assert_eq!(n.samples[1].volumes["a"].read.requests, 1);
        assert_eq!(n.samples[1].recovery_bytes, 0);
        assert_eq!(n.totals["a"].write.requests, 10);
        // A step without traffic keeps no volume.
        h.record(t0 + 5);
        assert!(h.lock().samples[2].volumes.is_empty());
    }

    #[test]
    fn nodes_sum_into_the_cluster_and_quantiles_come_from_summed_buckets() {
        let now = 1_000_000u64;
        let node = |id: u64, micros: u64, n: u64| {
            let m = NbdMetrics::default();
            for _ in 0..n {
                m.volume("v")
                    .record(Op::Write, 4096, Duration::from_micros(micros), true);
            }
            NodeStats {
                node: id,
                step_secs: 5,
                samples: vec![StepSample {
                    t: now - 5,
                    recovery_bytes: 5 << 20,
                    volumes: m.totals(),
                }],
                totals: m.totals(),
                recovery_bytes_total: 5 << 20,
            }
        };
        // 99 fast writes on one node, one slow one on another: the
        // cluster's p99 is fast-ish, but not the mean of 0.2 and 40 ms.
        let merged = ClusterSeries::merge(
            &[node(1, 200, 99), node(2, 40_000, 1)],
            Duration::from_secs(60),
            now,
        );
        assert_eq!(merged.t.len(), 12);
        assert_eq!(merged.t.last(), Some(&now));
        let i = merged.t.iter().position(|t| *t == now - 5).expect("step");
        assert_eq!(merged.cluster.write_iops[i], 20.0);
        assert_eq!(merged.cluster.write_bytes_per_sec[i], 100.0 * 4096.0 / 5.0);
        assert_eq!(merged.recovery_bytes_per_sec[i], (2 << 20) as f64);
        let p99 = merged.cluster.write_p99_ms[i].expect("writes");
        assert!(p99 > 0.1 && p99 <= 0.25, "{p99}");
        assert_eq!(merged.cluster.write_p99_ms[0], None);
        assert_eq!(merged.volumes["v"].write_iops[i], 20.0);
        assert_eq!(merged.totals[&2]["v"].write.requests, 1);
    }

    #[test]
    fn windows_parse_with_units_and_limits() {
        assert_eq!(parse_window("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_window("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_window("300"), Ok(Duration::from_secs(300)));
        assert!(parse_window("2h").is_err());
        assert!(parse_window("0m").is_err());
        assert!(parse_window("5d").expect_err("days").contains("unit"));
        assert!(parse_window("m").is_err());
    }
}
