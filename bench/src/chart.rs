//! The report as an SVG chart next to its JSON: one small bar panel per
//! workload, one labelled bar per target (same colour for a target in every
//! panel). Queued workloads show IOPS (4k) or MiB/s (1M), higher is better;
//! queue-depth-1 workloads show the median latency in µs, lower is better.
//! Drawn with plotters' SVG backend only (no font or bitmap libraries: the
//! text goes into the SVG as `<text>` elements).

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

use crate::report::{Report, ResultRow};

/// Colours of the targets, in first-appearance order (repeating).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x6b, 0xae, 0xd6),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x98, 0xdf, 0x8a),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Width and height of one workload panel in pixels.
const PANEL: (u32, u32) = (480, 330);
/// Height of the title strip.
const TITLE_HEIGHT: u32 = 60;

/// What a panel plots for a row: (value, unit label, value label).
fn metric(row: &ResultRow) -> (f64, &'static str, String) {
    if row.iodepth == 1 {
        let us = row.p50_ms * 1000.0;
        (us, "p50 latency µs, lower is better", format!("{us:.0} µs"))
    } else if row.workload.starts_with("1M") {
        (row.mib_s, "MiB/s", format!("{:.0}", row.mib_s))
    } else {
        (row.iops, "IOPS", format!("{:.0}", row.iops))
    }
}

/// In-order distinct values.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Renders the chart of `report` as SVG text; `title` heads it.
pub fn render_svg(report: &Report, title: &str) -> Result<String> {
    let workloads = distinct(report.results.iter().map(|r| r.workload.as_str()));
    let targets = distinct(report.results.iter().map(|r| r.target.as_str()));
    let cols = match workloads.len() {
        0..=2 => workloads.len().max(1),
        3 | 4 => 2,
        _ => 3,
    };
    let rows = workloads.len().div_ceil(cols).max(1);
    let size = (PANEL.0 * cols as u32, PANEL.1 * rows as u32 + TITLE_HEIGHT);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (head, body) = root.split_vertically(TITLE_HEIGHT);
        head.draw(&Text::new(
            title.to_string(),
            (size.0 as i32 / 2, 12),
            ("sans-serif", 20)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(|e| anyhow!("{e}"))?;
        let c = &report.config;
        head.draw(&Text::new(
            format!(
                "{} MiB device, {} s runs after {} s ramp, median of {} round(s), {}; IOPS and MiB/s: higher is better, QD1 latency: lower is better",
                c.size_bytes >> 20,
                c.runtime_s,
                c.ramp_s,
                c.rounds,
                c.fio_version
            ),
            (size.0 as i32 / 2, 38),
            ("sans-serif", 12)
                .into_font()
                .color(&BLACK.mix(0.7))
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(|e| anyhow!("{e}"))?;

        let panels = body.split_evenly((rows, cols));
        for (panel, workload) in panels.iter().zip(&workloads) {
            let bars: Vec<(usize, f64, &'static str, String)> = targets
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    report
                        .results
                        .iter()
                        .find(|r| r.workload == *workload && r.target == *t)
                        .map(|r| {
                            let (v, unit, label) = metric(r);
                            (i, v, unit, label)
                        })
                })
                .collect();
            let unit = bars.first().map(|b| b.2).unwrap_or("");
            let top = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max);
            let top = if top > 0.0 { top * 1.18 } else { 1.0 };
            let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            // A discrete i32 range includes its end: `0..last` has one
            // segment per target (a lone target gets a spare one: the
            // one-point range 0..0 does not draw).
            let last = (targets.len() as i32 - 1).max(1);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{workload} ({unit})"), ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(55)
                .build_cartesian_2d((0..last).into_segmented(), 0.0..top)
                .map_err(|e| anyhow!("{e}"))?;
            let label_names = names.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(targets.len())
                .x_label_formatter(&move |v| match v {
                    SegmentValue::CenterOf(i) => usize::try_from(*i)
                        .ok()
                        .and_then(|i| label_names.get(i))
                        .cloned()
                        .unwrap_or_default(),
                    _ => String::new(),
                })
                .x_label_style(("sans-serif", 11))
                .y_label_style(("sans-serif", 11))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(bars.iter().map(|(i, v, _, _)| {
                    let i = *i as i32;
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), *v),
                        ],
                        PALETTE[i as usize % PALETTE.len()].filled(),
                    );
                    bar.set_margin(0, 0, 10, 10);
                    bar
                }))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(bars.iter().map(|(i, v, _, label)| {
                    Text::new(
                        label.clone(),
                        (SegmentValue::CenterOf(*i as i32), *v),
                        ("sans-serif", 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Ok(svg)
}

/// Writes the chart of `report` to `path`.
pub fn write_svg(report: &Report, title: &str, path: &Path) -> Result<()> {
    let svg = render_svg(report, title).context("drawing the chart")?;
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fio::{FioResult, Workload};
    use crate::report::ReportConfig;
    use crate::targets::TargetKind;

    fn report() -> Report {
        let config = ReportConfig {
            size_bytes: 1 << 30,
            runtime_s: 3,
            rounds: 1,
            ramp_s: 2,
            engine: None,
            fio_version: "fio-3.33".into(),
            unix_time: 0,
        };
        let mut rows = Vec::new();
        for (n, w) in Workload::CLUSTER.into_iter().enumerate() {
            for (k, t) in [
                TargetKind::ClusterR3,
                TargetKind::ClusterR1,
                TargetKind::Nbdkit,
                TargetKind::QemuNbd,
                TargetKind::CephRbdR3,
            ]
            .into_iter()
            .enumerate()
            {
                let r = FioResult {
                    iops: 1000.0 * (n + k + 1) as f64,
                    mib_s: 10.0 * (n + k + 1) as f64,
                    p50_ms: 0.1 * (k + 1) as f64,
                    p99_ms: 0.5,
                };
                rows.push(ResultRow::new(w, t, &r));
            }
        }
        Report::new(config, rows, Vec::new())
    }

    #[test]
    fn writes_an_svg_with_every_target_and_workload() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bench-cluster.svg");
        write_svg(&report(), "raftblock-bench cluster", &path)?;
        let svg = std::fs::read_to_string(&path)?;
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for name in [
            "raftblock-r3",
            "raftblock-r1",
            "nbdkit",
            "qemu-nbd",
            "ceph-rbd-r3",
            "4k randwrite QD1 (p50 latency µs, lower is better)",
            "4k randwrite (IOPS)",
            "1M seqread (MiB/s)",
            "raftblock-bench cluster",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        // 6 panels x 5 bars, plus the background.
        assert!(svg.matches("<rect").count() >= 31);
        Ok(())
    }

    #[test]
    fn empty_report_still_draws() -> Result<()> {
        let mut r = report();
        r.results.clear();
        let svg = render_svg(&r, "empty")?;
        assert!(svg.contains("empty"));
        Ok(())
    }
}
