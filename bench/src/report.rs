//! The benchmark report: one row per (workload, target) with IOPS, MiB/s and
//! completion-latency percentiles, raftblock/baseline IOPS ratios on the
//! raftblock rows, a per-workload "vs best baseline" summary, the
//! head-to-head of `raftblock-r3` against the `ceph-rbd-r3` anchor (IOPS
//! ratios, and p50/p99 latency ratios for the queue-depth-1 workloads), the
//! servers' CPU time and peak RSS per process and per target, and the CPU
//! seconds per GiB moved. Rendered as an aligned markdown table for the
//! terminal and serialised as JSON for later comparison.
//!
//! Which targets are ours is [`TargetKind::OURS`]; every other target in the
//! results is a baseline, and gets a "ratio vs <baseline>" column, in the
//! order the baselines first appear in the results.

use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

use crate::fio::{FioResult, Workload};
use crate::targets::TargetKind;

/// Head-to-head pairs: (our target, the anchor it is compared with).
const HEAD_TO_HEAD: [(TargetKind, TargetKind); 1] =
    [(TargetKind::ClusterR3, TargetKind::CephRbdR3)];

/// Settings the numbers were measured with.
#[derive(Debug, Serialize)]
pub struct ReportConfig {
    /// Device size in bytes on every target.
    pub size_bytes: u64,
    /// Measured seconds per run.
    pub runtime_s: u64,
    /// Rounds run; each row is the median-IOPS run of its rounds.
    pub rounds: usize,
    /// Ramp seconds per run (not measured).
    pub ramp_s: u64,
    /// raftblock I/O engine, if one was forced.
    pub engine: Option<String>,
    /// `fio --version`.
    pub fio_version: String,
    /// When the run finished (seconds since the epoch).
    pub unix_time: u64,
}

/// Result of one workload on one target.
#[derive(Debug, Serialize)]
pub struct ResultRow {
    /// Workload name, e.g. `4k randread`.
    pub workload: String,
    /// Target name, e.g. `nbdkit`.
    pub target: String,
    /// fio queue depth of the workload.
    pub iodepth: u32,
    /// I/O operations per second.
    pub iops: f64,
    /// Bandwidth in MiB/s.
    pub mib_s: f64,
    /// Median completion latency (ms).
    pub p50_ms: f64,
    /// 99th-percentile completion latency (ms).
    pub p99_ms: f64,
    /// Our IOPS / the baseline's IOPS, by baseline name (our rows only;
    /// empty on baseline rows).
    pub ratio_vs: BTreeMap<String, f64>,
}

impl ResultRow {
    /// A row without ratios (filled in by [`Report::new`]).
    pub fn new(workload: Workload, target: TargetKind, r: &FioResult) -> Self {
        ResultRow {
            workload: workload.name().to_string(),
            target: target.to_string(),
            iodepth: workload.iodepth(),
            iops: r.iops,
            mib_s: r.mib_s,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            ratio_vs: BTreeMap::new(),
        }
    }
}

/// raftblock against the faster baseline for one workload.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Workload name.
    pub workload: String,
    /// Our target (raftblock, raftblock-r3, raftblock-r1-mount, ...).
    pub target: String,
    /// The baseline with the higher IOPS.
    pub best_baseline: String,
    /// raftblock IOPS / best baseline IOPS.
    pub ratio: f64,
}

/// One of our targets against an anchor (`raftblock-r3` vs `ceph-rbd-r3`)
/// on one workload.
#[derive(Debug, Serialize)]
pub struct HeadToHead {
    /// Workload name.
    pub workload: String,
    /// Our target.
    pub target: String,
    /// The anchor it is compared with.
    pub anchor: String,
    /// The headline figure: `iops` (higher is better) for queued
    /// workloads, `p50_latency` (lower is better) at queue depth 1.
    pub metric: String,
    /// Ours / anchor of `metric`.
    pub ratio: f64,
    /// Ours / anchor IOPS (equal to the bandwidth ratio).
    pub iops_ratio: f64,
    /// Ours / anchor median latency (below 1: we are faster).
    pub p50_ratio: f64,
    /// Ours / anchor 99th-percentile latency.
    pub p99_ratio: f64,
}

/// CPU seconds the processes of a target used per GiB fio moved.
#[derive(Debug, Serialize)]
pub struct CpuPerGib {
    /// Workload name.
    pub workload: String,
    /// Target name.
    pub target: String,
    /// Whether the workload writes (else it reads).
    pub write: bool,
    /// CPU seconds of all the target's processes over its runs (ramp included).
    pub cpu_seconds: f64,
    /// GiB fio moved in that time.
    pub gib: f64,
    /// `cpu_seconds / gib`.
    pub cpu_s_per_gib: f64,
}

impl CpuPerGib {
    /// `4k randwrite on raftblock-r3: 45.5 CPU s per GiB written`.
    pub fn note(&self) -> String {
        format!(
            "{} on {}: {:.1} CPU s per GiB {}",
            self.workload,
            self.target,
            self.cpu_s_per_gib,
            if self.write { "written" } else { "read" }
        )
    }
}

/// The processes behind one or more targets, summed over the whole run.
#[derive(Debug, Serialize)]
pub struct TargetResources {
    /// The targets these processes serve (raftblock-r3 and -r1 share nodes).
    pub targets: Vec<String>,
    /// Process names (see [`ProcessRow::target`]).
    pub processes: Vec<String>,
    /// User plus system CPU seconds of all of them.
    pub cpu_seconds: f64,
    /// Sum of the processes' peak RSS (MiB): an upper bound of the joint peak.
    pub peak_rss_mib: f64,
}

/// CPU time and peak memory of one server over the whole run.
#[derive(Debug, Serialize)]
pub struct ProcessRow {
    /// Target name.
    pub target: String,
    /// Process id.
    pub pid: u32,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM) in MiB.
    pub peak_rss_mib: f64,
}

/// Everything measured in one benchmark run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Settings.
    pub config: ReportConfig,
    /// The baseline targets in the results, in first-appearance order.
    pub baselines: Vec<String>,
    /// Per workload and target results, in run order.
    pub results: Vec<ResultRow>,
    /// raftblock vs best baseline per workload.
    pub summary: Vec<Summary>,
    /// raftblock-r3 vs ceph-rbd-r3 per workload (when both ran).
    pub head_to_head: Vec<HeadToHead>,
    /// Server resource usage.
    pub processes: Vec<ProcessRow>,
    /// Server resource usage summed per target.
    pub resources: Vec<TargetResources>,
    /// CPU seconds per GiB per (workload, target) with processes of its own.
    pub cpu_per_gib: Vec<CpuPerGib>,
    /// Further measured lines (CPU per GiB written, ...).
    pub notes: Vec<String>,
}

/// Whether `target` names one of our targets (the rest are baselines).
pub fn is_ours(target: &str) -> bool {
    TargetKind::OURS.iter().any(|k| k.as_str() == target)
}

fn row_of<'a>(rows: &'a [ResultRow], workload: &str, target: &str) -> Option<&'a ResultRow> {
    rows.iter()
        .find(|r| r.workload == workload && r.target == target)
}

fn iops_of(rows: &[ResultRow], workload: &str, target: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.workload == workload && r.target == target)
        .map(|r| r.iops)
}

fn ratio(ours: f64, theirs: Option<f64>) -> Option<f64> {
    theirs.filter(|t| *t > 0.0).map(|t| ours / t)
}

/// The [`HEAD_TO_HEAD`] comparisons of every workload where both ran.
pub fn head_to_head(results: &[ResultRow]) -> Vec<HeadToHead> {
    let workloads = distinct(results, |r| &r.workload, |_| true);
    let mut out = Vec::new();
    for (ours, anchor) in HEAD_TO_HEAD {
        for w in &workloads {
            let (Some(a), Some(b)) = (
                row_of(results, w, ours.as_str()),
                row_of(results, w, anchor.as_str()),
            ) else {
                continue;
            };
            let (Some(iops_ratio), Some(p50_ratio), Some(p99_ratio)) = (
                ratio(a.iops, Some(b.iops)),
                ratio(a.p50_ms, Some(b.p50_ms)),
                ratio(a.p99_ms, Some(b.p99_ms)),
            ) else {
                continue;
            };
            let latency = a.iodepth == 1;
            out.push(HeadToHead {
                workload: w.clone(),
                target: ours.to_string(),
                anchor: anchor.to_string(),
                metric: if latency { "p50_latency" } else { "iops" }.into(),
                ratio: if latency { p50_ratio } else { iops_ratio },
                iops_ratio,
                p50_ratio,
                p99_ratio,
            });
        }
    }
    out
}

/// The distinct values of `f` over `rows` that satisfy `keep`, in
/// first-appearance order.
fn distinct(
    rows: &[ResultRow],
    f: impl Fn(&ResultRow) -> &String,
    keep: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let v = f(r);
        if keep(v) && !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

impl Report {
    /// Builds the report, filling ratio columns and the per-workload summary.
    pub fn new(
        config: ReportConfig,
        mut results: Vec<ResultRow>,
        processes: Vec<ProcessRow>,
    ) -> Self {
        let workloads = distinct(&results, |r| &r.workload, |_| true);
        let ours = distinct(&results, |r| &r.target, is_ours);
        let baselines = distinct(&results, |r| &r.target, |t| !is_ours(t));
        let mut summary = Vec::new();
        for w in &workloads {
            let theirs: Vec<(&String, f64)> = baselines
                .iter()
                .filter_map(|b| iops_of(&results, w, b).map(|v| (b, v)))
                .collect();
            for target in &ours {
                let Some(mine) = iops_of(&results, w, target) else {
                    continue;
                };
                for r in results
                    .iter_mut()
                    .filter(|r| &r.workload == w && &r.target == target)
                {
                    r.ratio_vs = theirs
                        .iter()
                        .filter_map(|(b, v)| ratio(mine, Some(*v)).map(|x| ((*b).clone(), x)))
                        .collect();
                }
                // The first of equally fast baselines wins.
                let best = theirs.iter().rev().max_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((name, iops)) = best {
                    if let Some(ratio) = ratio(mine, Some(*iops)) {
                        summary.push(Summary {
                            workload: w.clone(),
                            target: target.clone(),
                            best_baseline: (*name).clone(),
                            ratio,
                        });
                    }
                }
            }
        }
        let head_to_head = head_to_head(&results);
        Report {
            config,
            baselines,
            results,
            summary,
            head_to_head,
            processes,
            resources: Vec::new(),
            cpu_per_gib: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The aligned markdown table, the summary lines and the process stats.
    pub fn render_text(&self) -> String {
        let mut header: Vec<String> = ["workload", "target", "IOPS", "MiB/s", "p50 ms", "p99 ms"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        header.extend(self.baselines.iter().map(|b| format!("ratio vs {b}")));
        let fmt_ratio = |r: Option<&f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_default();
        let cells: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.workload.clone(),
                    r.target.clone(),
                    format!("{:.0}", r.iops),
                    format!("{:.1}", r.mib_s),
                    format!("{:.3}", r.p50_ms),
                    format!("{:.3}", r.p99_ms),
                ];
                row.extend(self.baselines.iter().map(|b| fmt_ratio(r.ratio_vs.get(b))));
                row
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        // The first two columns are text (left-aligned), the rest numbers.
        let line = |row: &[String]| -> String {
            let parts: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i < 2 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        let mut out = String::new();
        out.push_str(&line(&header));
        out.push('\n');
        let sep: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i < 2 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                }
            })
            .collect();
        out.push_str(&format!("| {} |", sep.join(" | ")));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        if !self.summary.is_empty() {
            out.push('\n');
        }
        for s in &self.summary {
            out.push_str(&format!(
                "{}: {} vs best baseline: {:.2}x ({})\n",
                s.workload, s.target, s.ratio, s.best_baseline
            ));
        }
        let mut pair = None;
        for h in &self.head_to_head {
            if pair != Some((&h.target, &h.anchor)) {
                pair = Some((&h.target, &h.anchor));
                out.push_str(&format!(
                    "\n{} vs {} (IOPS: higher is better; latency: lower is better):\n",
                    h.target, h.anchor
                ));
            }
            out.push_str(&self.render_head_to_head(h));
            out.push('\n');
        }
        if !self.processes.is_empty() {
            out.push('\n');
        }
        for p in &self.processes {
            out.push_str(&format!(
                "{} (pid {}): {:.1} CPU s, peak RSS {:.1} MiB\n",
                p.target, p.pid, p.cpu_seconds, p.peak_rss_mib
            ));
        }
        for r in &self.resources {
            out.push_str(&format!(
                "{} ({} process{}: {}): {:.1} CPU s in all, peak RSS {:.1} MiB (sum of per-process peaks)\n",
                r.targets.join(" + "),
                r.processes.len(),
                if r.processes.len() == 1 { "" } else { "es" },
                r.processes.join(", "),
                r.cpu_seconds,
                r.peak_rss_mib
            ));
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }

    /// One head-to-head line, with both sides' figures.
    fn render_head_to_head(&self, h: &HeadToHead) -> String {
        let ours = row_of(&self.results, &h.workload, &h.target);
        let theirs = row_of(&self.results, &h.workload, &h.anchor);
        let (Some(a), Some(b)) = (ours, theirs) else {
            return format!("  {}: {:.2}x {}", h.workload, h.ratio, h.metric);
        };
        if h.metric == "p50_latency" {
            format!(
                "  {}: p50 latency {:.2}x ({} vs {}), p99 {:.2}x ({} vs {})",
                h.workload,
                h.p50_ratio,
                fmt_latency(a.p50_ms),
                fmt_latency(b.p50_ms),
                h.p99_ratio,
                fmt_latency(a.p99_ms),
                fmt_latency(b.p99_ms),
            )
        } else {
            format!(
                "  {}: {:.2}x IOPS ({:.0} vs {:.0} IOPS, {:.1} vs {:.1} MiB/s), p99 latency {:.2}x",
                h.workload, h.iops_ratio, a.iops, b.iops, a.mib_s, b.mib_s, h.p99_ratio
            )
        }
    }

    /// Writes the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// A latency in µs below 1 ms, else in ms: `85 µs`, `2.11 ms`.
pub fn fmt_latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str) -> Workload {
        Workload::CLUSTER
            .into_iter()
            .find(|w| w.name() == name)
            .unwrap_or(Workload::RandWrite4k)
    }

    fn row(name: &str, target: TargetKind, iops: f64) -> ResultRow {
        let r = FioResult {
            iops,
            mib_s: iops * 4.0 / 1024.0,
            p50_ms: 0.5,
            p99_ms: 1.5,
        };
        ResultRow::new(workload(name), target, &r)
    }

    fn latency_row(name: &str, target: TargetKind, p50_ms: f64, p99_ms: f64) -> ResultRow {
        let r = FioResult {
            iops: 1000.0 / p50_ms,
            mib_s: 4.0 / p50_ms,
            p50_ms,
            p99_ms,
        };
        ResultRow::new(workload(name), target, &r)
    }

    fn config() -> ReportConfig {
        ReportConfig {
            size_bytes: 1 << 30,
            runtime_s: 5,
            rounds: 1,
            ramp_s: 2,
            engine: None,
            fio_version: "fio-3.33".into(),
            unix_time: 0,
        }
    }

    /// Every table line (header, separator, rows) has the same width.
    fn assert_aligned(text: &str, lines: usize) {
        let widths: Vec<usize> = text.lines().take(lines).map(str::len).collect();
        assert_eq!(widths.len(), lines, "{text}");
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn fills_ratios_and_summary() {
        let rows = vec![
            row("4k randwrite", TargetKind::Raftblock, 90.0),
            row("4k randwrite", TargetKind::Nbdkit, 100.0),
            row("4k randwrite", TargetKind::QemuNbd, 45.0),
        ];
        let rep = Report::new(config(), rows, Vec::new());
        assert_eq!(rep.baselines, ["nbdkit", "qemu-nbd"]);
        assert_eq!(rep.results[0].ratio_vs.get("nbdkit"), Some(&0.9));
        assert_eq!(rep.results[0].ratio_vs.get("qemu-nbd"), Some(&2.0));
        assert!(rep.results[1].ratio_vs.is_empty());
        assert_eq!(rep.summary.len(), 1);
        assert_eq!(rep.summary[0].best_baseline, "nbdkit");
        let text = rep.render_text();
        let header = text.lines().next().unwrap_or_default();
        assert!(
            header.ends_with("| ratio vs nbdkit | ratio vs qemu-nbd |"),
            "{text}"
        );
        assert!(text.contains("raftblock vs best baseline: 0.90x"), "{text}");
        assert_aligned(&text, 5);
    }

    #[test]
    fn cluster_report_keeps_its_columns() {
        let mut rows = Vec::new();
        for w in ["4k randwrite", "4k randread"] {
            rows.push(row(w, TargetKind::ClusterR3, 50.0));
            rows.push(row(w, TargetKind::ClusterR1, 80.0));
            rows.push(row(w, TargetKind::Nbdkit, 100.0));
            rows.push(row(w, TargetKind::QemuNbd, 200.0));
        }
        let rep = Report::new(config(), rows, Vec::new());
        assert_eq!(rep.baselines, ["nbdkit", "qemu-nbd"]);
        let targets: Vec<&str> = rep.summary.iter().map(|s| s.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "raftblock-r3",
                "raftblock-r1",
                "raftblock-r3",
                "raftblock-r1"
            ]
        );
        assert!(rep.summary.iter().all(|s| s.best_baseline == "qemu-nbd"));
        let text = rep.render_text();
        assert!(
            text.contains("4k randread: raftblock-r1 vs best baseline: 0.40x (qemu-nbd)"),
            "{text}"
        );
        assert_aligned(&text, 10);
    }

    #[test]
    fn mount_report_against_ext4_loop() -> Result<()> {
        let rows = vec![
            row("1M seqwrite", TargetKind::MountR3, 60.0),
            row("1M seqwrite", TargetKind::MountR1, 120.0),
            row("1M seqwrite", TargetKind::Ext4Loop, 240.0),
        ];
        let rep = Report::new(config(), rows, Vec::new());
        assert_eq!(rep.baselines, ["ext4-loop"]);
        assert_eq!(rep.results[0].ratio_vs.get("ext4-loop"), Some(&0.25));
        assert_eq!(rep.results[1].ratio_vs.get("ext4-loop"), Some(&0.5));
        assert!(rep.results[2].ratio_vs.is_empty());
        let text = rep.render_text();
        let header = text.lines().next().unwrap_or_default();
        assert!(
            header.ends_with("| p99 ms | ratio vs ext4-loop |"),
            "{text}"
        );
        assert!(!text.contains("nbdkit"), "{text}");
        assert!(
            text.contains("1M seqwrite: raftblock-r3-mount vs best baseline: 0.25x (ext4-loop)"),
            "{text}"
        );
        assert_aligned(&text, 5);
        let json: serde_json::Value = serde_json::to_value(&rep)?;
        assert_eq!(json["results"][1]["ratio_vs"]["ext4-loop"], 0.5);
        assert_eq!(json["baselines"][0], "ext4-loop");
        Ok(())
    }

    #[test]
    fn raftblock_r3_against_ceph() -> Result<()> {
        let rows = vec![
            row("4k randwrite", TargetKind::ClusterR3, 8000.0),
            row("4k randwrite", TargetKind::ClusterR1, 9000.0),
            row("4k randwrite", TargetKind::Nbdkit, 20000.0),
            row("4k randwrite", TargetKind::CephRbdR3, 1600.0),
            latency_row("4k randread QD1", TargetKind::ClusterR3, 0.1, 0.4),
            latency_row("4k randread QD1", TargetKind::ClusterR1, 0.09, 0.3),
            latency_row("4k randread QD1", TargetKind::CephRbdR3, 0.4, 2.0),
            // No ceph row: no head-to-head for this workload.
            row("1M seqread", TargetKind::ClusterR3, 100.0),
            row("1M seqread", TargetKind::Nbdkit, 100.0),
        ];
        let rep = Report::new(config(), rows, Vec::new());
        assert_eq!(rep.baselines, ["nbdkit", "ceph-rbd-r3"]);
        assert_eq!(rep.head_to_head.len(), 2);
        let w = &rep.head_to_head[0];
        assert_eq!(
            (w.workload.as_str(), w.target.as_str(), w.anchor.as_str()),
            ("4k randwrite", "raftblock-r3", "ceph-rbd-r3")
        );
        assert_eq!(w.metric, "iops");
        assert!((w.ratio - 5.0).abs() < 1e-9);
        let q = &rep.head_to_head[1];
        assert_eq!(q.metric, "p50_latency");
        assert!((q.ratio - 0.25).abs() < 1e-9);
        assert!((q.p99_ratio - 0.2).abs() < 1e-9);
        assert!((q.iops_ratio - 4.0).abs() < 1e-9);
        // The ceph row is a baseline: our rows get a column for it.
        assert_eq!(rep.results[0].ratio_vs.get("ceph-rbd-r3"), Some(&5.0));
        assert_eq!(rep.results[4].iodepth, 1);

        let text = rep.render_text();
        assert!(text.contains("raftblock-r3 vs ceph-rbd-r3 ("), "{text}");
        assert!(
            text.contains("  4k randwrite: 5.00x IOPS (8000 vs 1600 IOPS"),
            "{text}"
        );
        assert!(
            text.contains(
                "  4k randread QD1: p50 latency 0.25x (100 µs vs 400 µs), p99 0.20x (400 µs vs 2.00 ms)"
            ),
            "{text}"
        );
        assert!(!text.contains("  1M seqread:"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&rep)?;
        assert_eq!(json["head_to_head"][1]["metric"], "p50_latency");
        assert_eq!(json["head_to_head"][1]["ratio"], 0.25);
        assert_eq!(json["results"][4]["iodepth"], 1);
        Ok(())
    }

    #[test]
    fn no_anchor_no_head_to_head() {
        let rows = vec![
            row("4k randwrite", TargetKind::ClusterR3, 80.0),
            row("4k randwrite", TargetKind::Nbdkit, 100.0),
        ];
        let rep = Report::new(config(), rows, Vec::new());
        assert!(rep.head_to_head.is_empty());
        assert!(!rep.render_text().contains(" vs ceph-rbd-r3"));
    }

    #[test]
    fn renders_resources_and_cpu_per_gib() {
        let mut rep = Report::new(
            config(),
            vec![row("4k randwrite", TargetKind::CephRbdR3, 100.0)],
            Vec::new(),
        );
        rep.resources.push(TargetResources {
            targets: vec!["ceph-rbd-r3".into()],
            processes: vec!["ceph-mon.a".into(), "ceph-osd.0".into()],
            cpu_seconds: 12.3,
            peak_rss_mib: 400.0,
        });
        let c = CpuPerGib {
            workload: "4k randread".into(),
            target: "ceph-rbd-r3".into(),
            write: false,
            cpu_seconds: 10.0,
            gib: 2.0,
            cpu_s_per_gib: 5.0,
        };
        assert_eq!(
            c.note(),
            "4k randread on ceph-rbd-r3: 5.0 CPU s per GiB read"
        );
        let text = rep.render_text();
        assert!(
            text.contains(
                "ceph-rbd-r3 (2 processes: ceph-mon.a, ceph-osd.0): 12.3 CPU s in all, peak RSS 400.0 MiB"
            ),
            "{text}"
        );
    }

    #[test]
    fn latency_units() {
        assert_eq!(fmt_latency(0.0855), "86 µs");
        assert_eq!(fmt_latency(2.114), "2.11 ms");
    }
}
