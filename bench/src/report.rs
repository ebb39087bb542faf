//! The benchmark report: one row per (workload, target) with IOPS, MiB/s and
//! completion-latency percentiles, raftblock/baseline IOPS ratios on the
//! raftblock rows, a per-workload "vs best baseline" summary and the servers'
//! CPU time and peak RSS. Rendered as an aligned markdown table for the
//! terminal and serialised as JSON for later comparison.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

use crate::fio::FioResult;
use crate::targets::TargetKind;

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
    /// I/O operations per second.
    pub iops: f64,
    /// Bandwidth in MiB/s.
    pub mib_s: f64,
    /// Median completion latency (ms).
    pub p50_ms: f64,
    /// 99th-percentile completion latency (ms).
    pub p99_ms: f64,
    /// raftblock IOPS / nbdkit IOPS (raftblock rows only).
    pub ratio_vs_nbdkit: Option<f64>,
    /// raftblock IOPS / qemu-nbd IOPS (raftblock rows only).
    pub ratio_vs_qemu_nbd: Option<f64>,
}

impl ResultRow {
    /// A row without ratios (filled in by [`Report::new`]).
    pub fn new(workload: &str, target: TargetKind, r: &FioResult) -> Self {
        ResultRow {
            workload: workload.to_string(),
            target: target.to_string(),
            iops: r.iops,
            mib_s: r.mib_s,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            ratio_vs_nbdkit: None,
            ratio_vs_qemu_nbd: None,
        }
    }
}

/// raftblock against the faster baseline for one workload.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Workload name.
    pub workload: String,
    /// Our target (raftblock, raftblock-r3, raftblock-r1).
    pub target: String,
    /// The baseline with the higher IOPS.
    pub best_baseline: String,
    /// raftblock IOPS / best baseline IOPS.
    pub ratio: f64,
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
    /// Per workload and target results, in run order.
    pub results: Vec<ResultRow>,
    /// raftblock vs best baseline per workload.
    pub summary: Vec<Summary>,
    /// Server resource usage.
    pub processes: Vec<ProcessRow>,
    /// Further measured lines (CPU per GiB written, ...).
    pub notes: Vec<String>,
}

fn iops_of(rows: &[ResultRow], workload: &str, target: TargetKind) -> Option<f64> {
    rows.iter()
        .find(|r| r.workload == workload && r.target == target.as_str())
        .map(|r| r.iops)
}

fn ratio(ours: f64, theirs: Option<f64>) -> Option<f64> {
    theirs.filter(|t| *t > 0.0).map(|t| ours / t)
}

impl Report {
    /// Builds the report, filling ratio columns and the per-workload summary.
    pub fn new(
        config: ReportConfig,
        mut results: Vec<ResultRow>,
        processes: Vec<ProcessRow>,
    ) -> Self {
        let mut summary = Vec::new();
        let mut workloads: Vec<String> = Vec::new();
        for r in &results {
            if !workloads.contains(&r.workload) {
                workloads.push(r.workload.clone());
            }
        }
        for (w, ours_kind) in workloads
            .iter()
            .flat_map(|w| TargetKind::OURS.into_iter().map(move |k| (w, k)))
            .collect::<Vec<_>>()
        {
            let nbdkit = iops_of(&results, w, TargetKind::Nbdkit);
            let qemu = iops_of(&results, w, TargetKind::QemuNbd);
            let Some(ours) = iops_of(&results, w, ours_kind) else {
                continue;
            };
            for r in results
                .iter_mut()
                .filter(|r| &r.workload == w && r.target == ours_kind.as_str())
            {
                r.ratio_vs_nbdkit = ratio(ours, nbdkit);
                r.ratio_vs_qemu_nbd = ratio(ours, qemu);
            }
            let best = [(TargetKind::Nbdkit, nbdkit), (TargetKind::QemuNbd, qemu)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((kind, iops)) = best {
                if let Some(ratio) = ratio(ours, Some(iops)) {
                    summary.push(Summary {
                        workload: w.clone(),
                        target: ours_kind.to_string(),
                        best_baseline: kind.to_string(),
                        ratio,
                    });
                }
            }
        }
        Report {
            config,
            results,
            summary,
            processes,
            notes: Vec::new(),
        }
    }

    /// The aligned markdown table, the summary lines and the process stats.
    pub fn render_text(&self) -> String {
        let header = [
            "workload",
            "target",
            "IOPS",
            "MiB/s",
            "p50 ms",
            "p99 ms",
            "ratio vs nbdkit",
            "ratio vs qemu-nbd",
        ];
        let fmt_ratio = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_default();
        let cells: Vec<[String; 8]> = self
            .results
            .iter()
            .map(|r| {
                [
                    r.workload.clone(),
                    r.target.clone(),
                    format!("{:.0}", r.iops),
                    format!("{:.1}", r.mib_s),
                    format!("{:.3}", r.p50_ms),
                    format!("{:.3}", r.p99_ms),
                    fmt_ratio(r.ratio_vs_nbdkit),
                    fmt_ratio(r.ratio_vs_qemu_nbd),
                ]
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
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
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
        if !self.processes.is_empty() {
            out.push('\n');
        }
        for p in &self.processes {
            out.push_str(&format!(
                "{} (pid {}): {:.1} CPU s, peak RSS {:.1} MiB\n",
                p.target, p.pid, p.cpu_seconds, p.peak_rss_mib
            ));
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: TargetKind, iops: f64) -> ResultRow {
        let r = FioResult {
            iops,
            mib_s: iops * 4.0 / 1024.0,
            p50_ms: 0.5,
            p99_ms: 1.5,
        };
        ResultRow::new("4k randwrite", target, &r)
    }

    #[test]
    fn fills_ratios_and_summary() {
        let config = ReportConfig {
            size_bytes: 1 << 30,
            runtime_s: 5,
            rounds: 1,
            ramp_s: 2,
            engine: None,
            fio_version: "fio-3.33".into(),
            unix_time: 0,
        };
        let rows = vec![
            row(TargetKind::Raftblock, 90.0),
            row(TargetKind::Nbdkit, 100.0),
            row(TargetKind::QemuNbd, 45.0),
        ];
        let rep = Report::new(config, rows, Vec::new());
        assert_eq!(rep.results[0].ratio_vs_nbdkit, Some(0.9));
        assert_eq!(rep.results[0].ratio_vs_qemu_nbd, Some(2.0));
        assert_eq!(rep.results[1].ratio_vs_nbdkit, None);
        assert_eq!(rep.summary.len(), 1);
        assert_eq!(rep.summary[0].best_baseline, "nbdkit");
        let text = rep.render_text();
        assert!(text.contains("raftblock vs best baseline: 0.90x"), "{text}");
        let widths: Vec<usize> = text.lines().take(5).map(str::len).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
