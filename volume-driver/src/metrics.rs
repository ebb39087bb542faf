//! NBD request metrics per volume: counts, errors, bytes and a latency
//! histogram per command, plus open connections, rendered in the Prometheus
//! text exposition format by [`NbdMetrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Commands we keep separate series for. `Op::of` (in `nbd::proto`, which
/// knows the wire codes) maps an NBD command to its series; this module
/// stays below the NBD server and knows nothing of the protocol.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// NBD_CMD_READ
    Read,
    /// NBD_CMD_WRITE
    Write,
    /// NBD_CMD_FLUSH
    Flush,
    /// NBD_CMD_TRIM
    Trim,
    /// NBD_CMD_WRITE_ZEROES
    WriteZeroes,
    /// NBD_CMD_BLOCK_STATUS
    BlockStatus,
    /// NBD_CMD_CACHE and anything unknown
    Other,
}

const OPS: [(&str, Op); 7] = [
    ("read", Op::Read),
    ("write", Op::Write),
    ("flush", Op::Flush),
    ("trim", Op::Trim),
    ("write_zeroes", Op::WriteZeroes),
    ("block_status", Op::BlockStatus),
    ("other", Op::Other),
];

/// Latency histogram bucket upper bounds, in seconds (the last bucket,
/// `+Inf`, is implied).
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct OpSeries {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_ns: AtomicU64,
}

/// A counter family: metric name, help text, and how to read it from a series.
type CounterSeries = (&'static str, &'static str, fn(&OpSeries) -> u64);

/// Counters of one volume.
#[derive(Default)]
pub struct VolumeCounters {
    ops: [OpSeries; 7],
    connections: AtomicI64,
}

impl VolumeCounters {
    /// Records one completed request.
    pub fn record(&self, op: Op, bytes: u64, took: Duration, ok: bool) {
        let s = &self.ops[op as usize];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        s.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Requests completed for `op`.
    pub fn requests(&self, op: Op) -> u64 {
        self.ops[op as usize].requests.load(Ordering::Relaxed)
    }
}

/// What one series of requests added up to: counts, bytes, and the latency
/// histogram (one count per [`BUCKETS`] bound, not cumulative, plus one
/// for slower requests). Sums and differences of these merge nodes and
/// time steps exactly, quantiles included.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpTotals {
    /// Requests completed.
    pub requests: u64,
    /// Of which answered with an error.
    pub errors: u64,
    /// Bytes read or written.
    pub bytes: u64,
    /// Requests per latency bucket.
    pub buckets: Vec<u64>,
}

impl OpTotals {
    fn of(s: &OpSeries) -> OpTotals {
        let mut t = OpTotals::default();
        t.add_series(s);
        t
    }

    fn add_series(&mut self, s: &OpSeries) {
        self.requests += s.requests.load(Ordering::Relaxed);
        self.errors += s.errors.load(Ordering::Relaxed);
        self.bytes += s.bytes.load(Ordering::Relaxed);
        self.buckets.resize(BUCKETS.len() + 1, 0);
        let mut counted = 0;
        for (i, b) in s.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            self.buckets[i] += n;
            counted += n;
        }
        // Requests slower than the last bound are counted only in `requests`.
        let reqs = s.requests.load(Ordering::Relaxed);
        self.buckets[BUCKETS.len()] += reqs.saturating_sub(counted);
    }

    /// Adds `other` to these.
    pub fn add(&mut self, other: &OpTotals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes += other.bytes;
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// What was added since `earlier` (zero where a counter went back, as
    /// after a restart).
    pub fn since(&self, earlier: &OpTotals) -> OpTotals {
        OpTotals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The latency below which a fraction `q` of these requests finished,
    /// in seconds, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does; `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let Some(&hi) = BUCKETS.get(i) else {
                    // Past the last bound: all we know is "slower than it".
                    return Some(lo);
                };
                return Some(lo + (hi - lo) * (rank - below as f64) / *n as f64);
            }
            below += n;
        }
        BUCKETS.last().copied()
    }
}

/// One volume's requests on one node, by kind: reads; writes (write, write
/// zeroes, trim); everything else (flush, block status, cache).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VolumeTotals {
    /// NBD_CMD_READ.
    pub read: OpTotals,
    /// NBD_CMD_WRITE, WRITE_ZEROES and TRIM.
    pub write: OpTotals,
    /// The rest.
    pub other: OpTotals,
}

impl VolumeTotals {
    /// Adds `o` to these.
    pub fn add(&mut self, o: &VolumeTotals) {
        self.read.add(&o.read);
        self.write.add(&o.write);
        self.other.add(&o.other);
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &VolumeTotals) -> VolumeTotals {
        VolumeTotals {
            read: self.read.since(&earlier.read),
            write: self.write.since(&earlier.write),
            other: self.other.since(&earlier.other),
        }
    }
}

/// Metrics of the NBD front end.
#[derive(Default)]
pub struct NbdMetrics {
    volumes: Mutex<BTreeMap<String, Arc<VolumeCounters>>>,
}

impl NbdMetrics {
    /// The counters of `volume`, created on first use.
    pub fn volume(&self, volume: &str) -> Arc<VolumeCounters> {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(volume.to_string())
            .or_default()
            .clone()
    }

    /// Forgets a deleted volume's series.
    pub fn remove(&self, volume: &str) {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume);
    }

    /// Open NBD connections to `volume` on this node.
    pub fn connections(&self, volume: &str) -> i64 {
        self.volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(volume)
            .map_or(0, |c| c.connections.load(Ordering::Relaxed))
    }

    pub(crate) fn connection_opened(&self, volume: &str) {
        self.volume(volume)
            .connections
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self, volume: &str) {
        self.volume(volume)
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Every volume's counters as they are now.
    pub fn totals(&self) -> BTreeMap<String, VolumeTotals> {
        let vols = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        vols.iter()
            .map(|(name, c)| {
                let mut t = VolumeTotals {
                    read: OpTotals::of(&c.ops[Op::Read as usize]),
                    write: OpTotals::of(&c.ops[Op::Write as usize]),
                    other: OpTotals::default(),
                };
                t.write.add_series(&c.ops[Op::WriteZeroes as usize]);
                t.write.add_series(&c.ops[Op::Trim as usize]);
                for op in [Op::Flush, Op::BlockStatus, Op::Other] {
                    t.other.add_series(&c.ops[op as usize]);
                }
                (name.clone(), t)
            })
            .collect()
    }

    /// Appends the Prometheus text for every volume to `out`.
    pub fn render(&self, out: &mut String) {
        let vols: Vec<(String, Arc<VolumeCounters>)> = self
            .volumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        per_volume(
            out,
            "raftblock_nbd_connections",
            "gauge",
            "Open NBD connections.",
            vols.iter()
                .map(|(name, c)| (name.as_str(), c.connections.load(Ordering::Relaxed))),
        );
        let series: [CounterSeries; 3] = [
            (
                "raftblock_nbd_requests_total",
                "NBD requests completed.",
                |s| s.requests.load(Ordering::Relaxed),
            ),
            (
                "raftblock_nbd_request_errors_total",
                "NBD requests answered with an error.",
                |s| s.errors.load(Ordering::Relaxed),
            ),
            (
                "raftblock_nbd_bytes_total",
                "Bytes read or written over NBD.",
                |s| s.bytes.load(Ordering::Relaxed),
            ),
        ];
        for (metric, help, get) in series {
            header(out, metric, "counter", help);
            for (name, c) in &vols {
                for (op_name, op) in OPS {
                    let _ = writeln!(
                        out,
                        "{metric}{{volume=\"{}\",op=\"{op_name}\"}} {}",
                        label_value(name),
                        get(&c.ops[op as usize])
                    );
                }
            }
        }
        let metric = "raftblock_nbd_request_duration_seconds";
        header(
            out,
            metric,
            "histogram",
            "NBD request latency, from parsed request to reply queued.",
        );
        for (name, c) in &vols {
            for (op_name, op) in OPS {
                let s = &c.ops[op as usize];
                let count = s.requests.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let labels = format!("volume=\"{}\",op=\"{op_name}\"", label_value(name));
                let mut cum = 0;
                for (i, b) in BUCKETS.iter().enumerate() {
                    cum += s.buckets[i].load(Ordering::Relaxed);
                    let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"{b}\"}} {cum}");
                }
                let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {count}");
                let sum = s.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
                let _ = writeln!(out, "{metric}_sum{{{labels}}} {sum}");
                let _ = writeln!(out, "{metric}_count{{{labels}}} {count}");
            }
        }
    }
}

/// Escapes a Prometheus label value.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a metric family with one `{volume="..."}` sample per volume.
pub fn per_volume<'a, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, V)>,
) {
    header(out, name, kind, help);
    for (volume, value) in samples {
        let _ = writeln!(out, "{name}{{volume=\"{}\"}} {value}", label_value(volume));
    }
}

/// Writes the HELP and TYPE lines of a metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = NbdMetrics::default();
        let c = m.volume("v1");
        c.record(Op::Write, 4096, Duration::from_micros(300), true);
        c.record(Op::Read, 0, Duration::from_millis(2), false);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("raftblock_nbd_requests_total{volume=\"v1\",op=\"write\"} 1"));
        assert!(out.contains("raftblock_nbd_bytes_total{volume=\"v1\",op=\"write\"} 4096"));
        assert!(out.contains("raftblock_nbd_request_errors_total{volume=\"v1\",op=\"read\"} 1"));
        assert!(out.contains("raftblock_nbd_request_duration_seconds_bucket{volume=\"v1\",op=\"write\",le=\"0.0005\"} 1"));
        assert!(out
            .contains("raftblock_nbd_request_duration_seconds_count{volume=\"v1\",op=\"read\"} 1"));
    }

    #[test]
    fn totals_merge_and_give_quantiles() {
        let m = NbdMetrics::default();
        let c = m.volume("v1");
        for _ in 0..98 {
            c.record(Op::Write, 4096, Duration::from_micros(200), true);
        }
        c.record(Op::WriteZeroes, 0, Duration::from_millis(3), true);
        c.record(Op::Trim, 0, Duration::from_secs(60), true);
        c.record(Op::Flush, 0, Duration::from_millis(1), true);
        let before = m.totals()["v1"].clone();
        assert_eq!(before.write.requests, 100);
        assert_eq!(before.other.requests, 1);
        assert_eq!(before.write.buckets.iter().sum::<u64>(), 100);
        // The slowest request is past every bound: counted in the last.
        assert_eq!(before.write.buckets[BUCKETS.len()], 1);
        // p50 falls in the (100 µs, 250 µs] bucket, p99 at the 3 ms one.
        let p50 = before.write.quantile(0.5).expect("requests");
        assert!(p50 > 0.0001 && p50 <= 0.00025, "{p50}");
        let p99 = before.write.quantile(0.99).expect("requests");
        assert!(p99 > 0.0025 && p99 <= 0.005, "{p99}");
        c.record(Op::Read, 65536, Duration::from_millis(20), true);
        let delta = m.totals()["v1"].since(&before);
        assert_eq!(delta.read.requests, 1);
        assert_eq!(delta.read.bytes, 65536);
        assert_eq!(delta.write.requests, 0);
        let mut sum = before.clone();
        sum.add(&delta);
        assert_eq!(sum, m.totals()["v1"]);
        assert_eq!(OpTotals::default().quantile(0.99), None);
    }
}
