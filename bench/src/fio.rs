//! Running fio and parsing its JSON output: against an NBD server with fio's
//! `nbd` ioengine, against a file with `libaio` and direct I/O, or against
//! a Ceph RBD image with the `rbd` engine; the benchmark workloads (4k
//! random write/read at queue depth 32, 1 MiB sequential write/read at
//! depth 8, and for the cluster suite 4k random write/read at depth 1 for
//! latency), the sequential prefill that makes reads
//! hit written data, and extraction of IOPS, bandwidth and completion-latency
//! percentiles from the read or write side of the single job.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds of warm-up fio discards before measuring (`ramp_time`).
pub const RAMP_SECONDS: u64 = 2;

/// One of the benchmark workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 4 KiB random writes, iodepth 32.
    RandWrite4k,
    /// 4 KiB random reads, iodepth 32.
    RandRead4k,
    /// 1 MiB sequential writes, iodepth 8.
    SeqWrite1m,
    /// 1 MiB sequential reads, iodepth 8.
    SeqRead1m,
    /// 4 KiB random writes, iodepth 1 (latency).
    RandWrite4kQd1,
    /// 4 KiB random reads, iodepth 1 (latency).
    RandRead4kQd1,
}

impl Workload {
    /// The workloads of the `nbd` and `mount` suites, in the order they are run.
    pub const ALL: [Workload; 4] = [
        Workload::RandWrite4k,
        Workload::RandRead4k,
        Workload::SeqWrite1m,
        Workload::SeqRead1m,
    ];

    /// The workloads of the `cluster` suite: [`Workload::ALL`] plus the
    /// queue-depth-1 latency runs, in the order they are run.
    pub const CLUSTER: [Workload; 6] = [
        Workload::RandWrite4k,
        Workload::RandWrite4kQd1,
        Workload::RandRead4k,
        Workload::RandRead4kQd1,
        Workload::SeqWrite1m,
        Workload::SeqRead1m,
    ];

    /// Short human name, e.g. `4k randread`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandWrite4k => "4k randwrite",
            Workload::RandRead4k => "4k randread",
            Workload::SeqWrite1m => "1M seqwrite",
            Workload::SeqRead1m => "1M seqread",
            Workload::RandWrite4kQd1 => "4k randwrite QD1",
            Workload::RandRead4kQd1 => "4k randread QD1",
        }
    }

    /// Whether the workload reads (and so needs prefilled data).
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Workload::RandRead4k | Workload::SeqRead1m | Workload::RandRead4kQd1
        )
    }

    fn rw(self) -> &'static str {
        match self {
            Workload::RandWrite4k | Workload::RandWrite4kQd1 => "randwrite",
            Workload::RandRead4k | Workload::RandRead4kQd1 => "randread",
            Workload::SeqWrite1m => "write",
            Workload::SeqRead1m => "read",
        }
    }

    fn block_size(self) -> &'static str {
        match self {
            Workload::RandWrite4k
            | Workload::RandRead4k
            | Workload::RandWrite4kQd1
            | Workload::RandRead4kQd1 => "4k",
            Workload::SeqWrite1m | Workload::SeqRead1m => "1M",
        }
    }

    /// fio's queue depth for the workload.
    pub fn iodepth(self) -> u32 {
        match self {
            Workload::RandWrite4k | Workload::RandRead4k => 32,
            Workload::SeqWrite1m | Workload::SeqRead1m => 8,
            Workload::RandWrite4kQd1 | Workload::RandRead4kQd1 => 1,
        }
    }
}

/// What fio does I/O to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoTarget {
    /// An NBD export, `nbd://host:port/export` (fio's `nbd` engine).
    Nbd(String),
    /// A file, opened with `O_DIRECT` and driven by `libaio`.
    File(PathBuf),
    /// An RBD image (fio's `rbd` engine as `client.admin`, finding the
    /// cluster through `CEPH_CONF=conf`).
    Rbd {
        /// The cluster's ceph.conf.
        conf: PathBuf,
        /// Pool of the image.
        pool: String,
        /// Image name.
        image: String,
    },
}

impl std::fmt::Display for IoTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoTarget::Nbd(uri) => f.write_str(uri),
            IoTarget::File(path) => write!(f, "{}", path.display()),
            IoTarget::Rbd { pool, image, .. } => write!(f, "rbd:{pool}/{image}"),
        }
    }
}

/// One timed fio run against one target.
#[derive(Debug)]
pub struct FioJob<'a> {
    /// What to run.
    pub workload: Workload,
    /// Where to run it.
    pub target: &'a IoTarget,
    /// Bytes of the device (or file) the job covers.
    pub size: u64,
    /// Measured seconds (after the ramp).
    pub runtime_s: u64,
}

/// Figures of one fio run, for the side (read or write) the workload exercises.
#[derive(Clone, Debug, PartialEq)]
pub struct FioResult {
    /// I/O operations per second.
    pub iops: f64,
    /// Bandwidth in MiB/s.
    pub mib_s: f64,
    /// Median completion latency in milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile completion latency in milliseconds.
    pub p99_ms: f64,
}

pub(crate) fn base_command(target: &IoTarget, size: u64, out: &Path) -> Command {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=bench");
    match target {
        IoTarget::Nbd(uri) => {
            cmd.arg("--ioengine=nbd").arg(format!("--uri={uri}"));
        }
        IoTarget::File(path) => {
            // fio splits file names at ':' unless escaped.
            let name = path.to_string_lossy().replace(':', "\\:");
            cmd.arg("--ioengine=libaio")
                .arg("--direct=1")
                .arg(format!("--filename={name}"));
        }
        IoTarget::Rbd { conf, pool, image } => {
            // librados reads the file CEPH_CONF names; `invalidate=0` because
            // the engine cannot drop a cache (and `rbd cache` is off anyway).
            cmd.env("CEPH_CONF", conf)
                .arg("--ioengine=rbd")
                .arg("--clientname=admin")
                .arg(format!("--pool={pool}"))
                .arg(format!("--rbdname={image}"))
                .arg("--invalidate=0");
        }
    }
    cmd.arg(format!("--size={size}"))
        .arg("--numjobs=1")
        .arg("--output-format=json")
        .arg(format!("--output={}", out.display()));
    cmd
}

/// Runs one timed workload and parses its result; `out` receives fio's JSON.
pub fn run(job: &FioJob<'_>, out: &Path) -> Result<FioResult> {
    let w = job.workload;
    let mut cmd = base_command(job.target, job.size, out);
    cmd.arg(format!("--rw={}", w.rw()))
        .arg(format!("--bs={}", w.block_size()))
        .arg(format!("--iodepth={}", w.iodepth()))
        .arg("--time_based")
        .arg(format!("--ramp_time={RAMP_SECONDS}"))
        .arg(format!("--runtime={}", job.runtime_s));
    if w.rw().starts_with("rand") {
        // No block-coverage bookkeeping on the client: time-based runs wrap anyway.
        cmd.arg("--norandommap");
    }
    // Generous slack for connection setup and a slow server; a hung server
    // must not hang the benchmark.
    let limit = Duration::from_secs(job.runtime_s + RAMP_SECONDS + 60);
    execute(cmd, out, limit)?;
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("reading fio output {}", out.display()))?;
    parse(&text, w.is_read())
}

/// Writes the whole device (or file) once with 1 MiB sequential writes, so
/// later reads hit data rather than holes.
pub fn prefill(target: &IoTarget, size: u64, out: &Path) -> Result<()> {
    let mut cmd = base_command(target, size, out);
    cmd.arg("--rw=write").arg("--bs=1M").arg("--iodepth=8");
    // At least 10 MiB/s, plus setup slack.
    let limit = Duration::from_secs(size / (10 << 20) + 60);
    execute(cmd, out, limit)?;
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("reading fio output {}", out.display()))?;
    parse(&text, false).map(|_| ())
}

/// Runs fio to completion within `limit`, keeping its stderr next to `out`.
pub(crate) fn execute(mut cmd: Command, out: &Path, limit: Duration) -> Result<()> {
    let err_path = out.with_extension("stderr");
    let err_file =
        File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .context("starting fio (is it installed?)")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for fio")? {
            break status;
        }
        if started.elapsed() > limit {
            // Best effort: the process may have exited in between.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "fio did not finish within {} s{}",
                limit.as_secs(),
                stderr_tail(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!("fio failed ({status}){}", stderr_tail(&err_path));
    }
    Ok(())
}

/// The last lines of fio's stderr, formatted for an error message.
pub(crate) fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

/// Extracts the figures of the read (`read == true`) or write side of the
/// first job from fio's JSON output.
pub fn parse(text: &str, read: bool) -> Result<FioResult> {
    // fio may print notices before the JSON document.
    let start = text.find('{').context("fio output contains no JSON")?;
    let doc: Value = serde_json::from_str(&text[start..]).context("parsing fio JSON output")?;
    let job = doc
        .get("jobs")
        .and_then(|j| j.get(0))
        .context("fio JSON has no jobs")?;
    let error = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if error != 0 {
        bail!("fio job reported error {error}");
    }
    let side_name = if read { "read" } else { "write" };
    let side = job
        .get(side_name)
        .with_context(|| format!("fio JSON job has no `{side_name}` section"))?;
    let number = |v: Option<&Value>, what: &str| -> Result<f64> {
        v.and_then(Value::as_f64)
            .with_context(|| format!("fio JSON: missing {side_name}.{what}"))
    };
    let iops = number(side.get("iops"), "iops")?;
    let bw_bytes = number(side.get("bw_bytes"), "bw_bytes")?;
    let total_ios = number(side.get("total_ios"), "total_ios")?;
    if total_ios <= 0.0 {
        bail!("fio completed no {side_name} I/O");
    }
    let pct = side
        .get("clat_ns")
        .and_then(|c| c.get("percentile"))
        .with_context(|| format!("fio JSON: missing {side_name}.clat_ns.percentile"))?;
    let p50 = number(pct.get("50.000000"), "clat_ns.percentile.50")?;
    let p99 = number(pct.get("99.000000"), "clat_ns.percentile.99")?;
    Ok(FioResult {
        iops,
        mib_s: bw_bytes / (1024.0 * 1024.0),
        p50_ms: p50 / 1e6,
        p99_ms: p99 / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: both iodepth >= 1 and synchronous I/O engine
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "bench",
      "error" : 0,
      "read" : { "iops" : 0.0, "bw_bytes" : 0, "total_ios" : 0, "clat_ns" : {} },
      "write" : {
        "iops" : 60195.4,
        "bw_bytes" : 246625871,
        "total_ios" : 120000,
        "clat_ns" : { "percentile" : { "50.000000" : 456704, "99.000000" : 1204224 } }
      }
    }
  ]
}"#;

    #[test]
    fn parses_write_side() -> Result<()> {
        let r = parse(SAMPLE, false)?;
        assert!((r.iops - 60195.4).abs() < 1e-6);
        assert!((r.mib_s - 235.2).abs() < 0.1);
        assert!((r.p50_ms - 0.456704).abs() < 1e-9);
        assert!((r.p99_ms - 1.204224).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn empty_side_is_an_error() {
        assert!(parse(SAMPLE, true).is_err());
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn rbd_target_uses_the_rbd_engine_and_the_conf() {
        let target = IoTarget::Rbd {
            conf: PathBuf::from("/w/ceph.conf"),
            pool: "rbd".into(),
            image: "bench".into(),
        };
        assert_eq!(target.to_string(), "rbd:rbd/bench");
        let cmd = base_command(&target, 1 << 30, Path::new("/w/out.json"));
        let a = args(&cmd);
        for want in [
            "--ioengine=rbd",
            "--clientname=admin",
            "--pool=rbd",
            "--rbdname=bench",
            "--size=1073741824",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing in {a:?}");
        }
        let conf = cmd
            .get_envs()
            .find(|(k, _)| *k == "CEPH_CONF")
            .and_then(|(_, v)| v);
        assert_eq!(conf, Some(std::ffi::OsStr::new("/w/ceph.conf")));
    }

    #[test]
    fn cluster_suite_adds_queue_depth_one() {
        let qd1: Vec<&str> = Workload::CLUSTER
            .iter()
            .filter(|w| w.iodepth() == 1)
            .map(|w| w.name())
            .collect();
        assert_eq!(qd1, ["4k randwrite QD1", "4k randread QD1"]);
        assert!(Workload::ALL.iter().all(|w| w.iodepth() > 1));
        assert!(Workload::RandRead4kQd1.is_read());
        assert!(!Workload::RandWrite4kQd1.is_read());
    }
}
