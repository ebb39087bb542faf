//! `raftblock top`: a live view of each volume's IOPS, throughput and
//! latency across the whole cluster, like `rbd perf image iostat`. Every
//! interval it asks one node for `GET /v1/stats` (which gathers every
//! member's counters) and shows what each volume served since the last
//! answer: counters of the same node are subtracted, then summed over the
//! nodes, latency quantiles come from the summed histograms.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use raftblock_volume_driver::metrics::VolumeTotals;

use crate::client::AdminClient;
use crate::stats::ClusterSeries;

/// How the rows are ordered.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    /// Most requests per second first.
    Iops,
    /// Most bytes per second first.
    Bytes,
    /// Slowest p99 first.
    Latency,
    /// By name.
    Name,
}

/// What `top` shows of one volume over one interval.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    /// The volume.
    pub name: String,
    /// Reads per second.
    pub read_iops: f64,
    /// Writes (and trims, write-zeroes) per second.
    pub write_iops: f64,
    /// Bytes read per second.
    pub read_bps: f64,
    /// Bytes written per second.
    pub write_bps: f64,
    /// Read latency p99, seconds.
    pub read_p99: Option<f64>,
    /// Write latency p99, seconds.
    pub write_p99: Option<f64>,
    /// Errors per second.
    pub errors: f64,
}

/// Counters of every node, by node then volume.
type Totals = BTreeMap<u64, BTreeMap<String, VolumeTotals>>;

/// The rows for what was served between `before` and `now`, `secs` apart:
/// only nodes and volumes present in both count (a node that restarted or
/// stopped answering in between adds nothing rather than a bogus jump).
pub fn rows(before: &Totals, now: &Totals, secs: f64, sort: SortBy) -> Vec<Row> {
    let mut per_volume: BTreeMap<&str, VolumeTotals> = BTreeMap::new();
    for (node, vols) in now {
        for (name, t) in vols {
            let delta = match before.get(node).and_then(|b| b.get(name)) {
                Some(b) => t.since(b),
                // New since the last answer: everything it counted is new
                // only if the node itself was there before.
                None if before.contains_key(node) => t.clone(),
                None => continue,
            };
            per_volume.entry(name).or_default().add(&delta);
        }
    }
    let secs = secs.max(1e-3);
    let mut rows: Vec<Row> = per_volume
        .into_iter()
        .map(|(name, t)| Row {
            name: name.to_string(),
            read_iops: t.read.requests as f64 / secs,
            write_iops: t.write.requests as f64 / secs,
            read_bps: t.read.bytes as f64 / secs,
            write_bps: t.write.bytes as f64 / secs,
            read_p99: t.read.quantile(0.99),
            write_p99: t.write.quantile(0.99),
            errors: (t.read.errors + t.write.errors + t.other.errors) as f64 / secs,
        })
        .collect();
    let key = |r: &Row| -> f64 {
        match sort {
            SortBy::Iops => r.read_iops + r.write_iops,
            SortBy::Bytes => r.read_bps + r.write_bps,
            SortBy::Latency => r.read_p99.unwrap_or(0.0).max(r.write_p99.unwrap_or(0.0)),
            SortBy::Name => 0.0,
        }
    };
    if sort != SortBy::Name {
        rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.name.cmp(&b.name)));
    }
    rows
}

fn ms(s: Option<f64>) -> String {
    match s {
        Some(s) if s * 1e3 >= 100.0 => format!("{:.0} ms", s * 1e3),
        Some(s) => format!("{:.2} ms", s * 1e3),
        None => "-".into(),
    }
}

fn mib(bps: f64) -> String {
    format!("{:.1}", bps / (1u64 << 20) as f64)
}

/// One screen of `top`.
pub fn render(rows: &[Row], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(
        out,
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "VOLUME", "READ/s", "WRITE/s", "RD MiB/s", "WR MiB/s", "RD p99", "WR p99", "ERR/s"
    );
    let mut total = Row {
        name: "(all volumes)".into(),
        ..Row::default()
    };
    for r in rows {
        let _ = writeln!(
            out,
            "{:<24} {:>10.0} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>7.0}",
            r.name,
            r.read_iops,
            r.write_iops,
            mib(r.read_bps),
            mib(r.write_bps),
            ms(r.read_p99),
            ms(r.write_p99),
            r.errors
        );
        total.read_iops += r.read_iops;
        total.write_iops += r.write_iops;
        total.read_bps += r.read_bps;
        total.write_bps += r.write_bps;
        total.errors += r.errors;
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no NBD traffic yet on any volume)");
    } else {
        let _ = writeln!(
            out,
            "{:<24} {:>10.0} {:>10.0} {:>10} {:>10} {:>10} {:>10} {:>7.0}",
            total.name,
            total.read_iops,
            total.write_iops,
            mib(total.read_bps),
            mib(total.write_bps),
            "",
            "",
            total.errors
        );
    }
    out
}

/// Runs `top` against `server` until interrupted, or for `count` screens.
pub fn run(server: &str, interval: Duration, count: Option<u64>, sort: SortBy) -> Result<()> {
    if interval < Duration::from_millis(200) {
        bail!("--interval must be at least 200ms");
    }
    let client = AdminClient::with_timeout(server, Duration::from_secs(10));
    let fetch = || -> Result<(Instant, ClusterSeries)> {
        let v = client.stats("10s", false)?;
        Ok((Instant::now(), serde_json::from_value(v)?))
    };
    let tty = std::io::stdout().is_terminal();
    let mut before = fetch()?;
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(interval);
        let now = fetch()?;
        let secs = now.0.duration_since(before.0).as_secs_f64();
        let r = rows(&before.1.totals, &now.1.totals, secs, sort);
        let answering = now.1.nodes.len();
        let missing = now.1.unreachable.len();
        let header = format!(
            "raftblock top: {} via {server}, {answering} of {} node(s) answering, every {:.1} s{}",
            crate::admin::clock_now(),
            answering + missing,
            interval.as_secs_f64(),
            if missing > 0 {
                format!(
                    " (not answering: {:?}; their traffic is missing)",
                    now.1.unreachable.keys().collect::<Vec<_>>()
                )
            } else {
                String::new()
            }
        );
        let screen = render(&r, &header);
        let mut out = std::io::stdout().lock();
        if tty {
            // Home the cursor and clear, then draw: one steady screen.
            write!(out, "\x1b[H\x1b[2J{screen}")?;
        } else {
            writeln!(out, "{screen}")?;
        }
        out.flush()?;
        before = now;
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftblock_volume_driver::metrics::Op;
    use raftblock_volume_driver::NbdMetrics;

    fn totals(m: &NbdMetrics) -> BTreeMap<String, VolumeTotals> {
        m.totals()
    }

    #[test]
    fn rows_are_rates_of_what_changed_on_each_node() {
        let (n1, n2) = (NbdMetrics::default(), NbdMetrics::default());
        n1.volume("a")
            .record(Op::Write, 4096, Duration::from_micros(200), true);
        let before: Totals = [(1, totals(&n1)), (2, totals(&n2))].into();
        for _ in 0..20 {
            n1.volume("a")
                .record(Op::Write, 4096, Duration::from_micros(200), true);
            n2.volume("a")
                .record(Op::Read, 8192, Duration::from_millis(3), true);
        }
        n2.volume("b")
            .record(Op::Read, 512, Duration::from_micros(50), false);
        let now: Totals = [(1, totals(&n1)), (2, totals(&n2))].into();
        let r = rows(&before, &now, 2.0, SortBy::Iops);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].name, "a");
        assert_eq!(r[0].write_iops, 10.0);
        assert_eq!(r[0].read_iops, 10.0);
        assert_eq!(r[0].read_bps, 20.0 * 8192.0 / 2.0);
        let p99 = r[0].read_p99.expect("reads");
        assert!(p99 > 0.0025 && p99 <= 0.005, "{p99}");
        assert_eq!(r[1].name, "b");
        assert_eq!(r[1].errors, 0.5);
        let screen = render(&r, "hdr");
        assert!(screen.contains("(all volumes)"), "{screen}");
        assert!(screen.lines().nth(2).is_some_and(|l| l.starts_with("a ")));
    }

    #[test]
    fn a_node_that_appears_or_restarts_adds_no_jump() {
        let n1 = NbdMetrics::default();
        for _ in 0..1000 {
            n1.volume("a")
                .record(Op::Write, 4096, Duration::from_micros(200), true);
        }
        let before: Totals = BTreeMap::new();
        let now: Totals = [(1, totals(&n1))].into();
        assert!(rows(&before, &now, 1.0, SortBy::Name).is_empty());
        // Restarted: its counters went back; nothing negative shows.
        let fresh = NbdMetrics::default();
        fresh
            .volume("a")
            .record(Op::Write, 4096, Duration::from_micros(200), true);
        let after: Totals = [(1, totals(&fresh))].into();
        let r = rows(&now, &after, 1.0, SortBy::Name);
        assert_eq!(r[0].write_iops, 0.0);
    }
}
