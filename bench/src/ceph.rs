//! A throwaway local Ceph cluster as the `ceph-rbd-r3` anchor of
//! `raftblock-bench cluster --with-ceph`: one monitor, one manager and three
//! BlueStore OSDs on sparse files, all on 127.0.0.1 with auth off, a pool
//! `rbd` with 3 replicas (min_size 2, 64 PGs) and one image of the bench's
//! size, read and written by fio's `rbd` engine with the client cache off.
//! Settings follow shared/reference/ceph-anchor.md.
//!
//! Everything lives in one work directory (data, logs, conf) plus a short
//! run directory under the system temp dir for the admin sockets and pid
//! files (a Unix socket path must stay under 108 bytes). [`CephCluster`]
//! owns the daemons as [`Server`]s, so a failed start, an error later on or
//! Ctrl-C stops them (SIGTERM, then SIGKILL) and removes both directories.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::{self, Server, TargetKind};

/// Debian packages the anchor needs.
pub const PACKAGES: [&str; 5] = [
    "ceph-mon",
    "ceph-mgr",
    "ceph-osd",
    "ceph-common",
    "uuid-runtime",
];
/// Tools the cluster setup runs.
const TOOLS: [&str; 6] = [
    "ceph-mon",
    "ceph-mgr",
    "ceph-osd",
    "ceph",
    "rbd",
    "monmaptool",
];
/// Placement groups of the `rbd` pool.
pub const PG_COUNT: u64 = 64;
/// Pool and image fio uses.
pub const POOL: &str = "rbd";
/// Name of the benchmark image.
pub const IMAGE: &str = "bench";
/// How long the whole setup (daemons up, PGs active+clean, image created) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one `ceph`/`rbd` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Number of OSDs.
const OSDS: usize = 3;
/// Smallest sparse BlueStore block file per OSD (a file in its data dir).
const MIN_BLOCK_SIZE: u64 = 16 << 30;

/// Installs [`PACKAGES`] with apt-get if any tool is missing (printing what
/// it runs), and checks that fio has the `rbd` engine.
pub fn ensure_installed() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| !crate::mount::on_path(t))
        .collect();
    if !missing.is_empty() {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "ceph tools missing ({}); install them as root: apt-get install -y {}",
                missing.join(", "),
                PACKAGES.join(" ")
            );
        }
        eprintln!(
            "ceph: {} not installed; running: apt-get install -y {}",
            missing.join(", "),
            PACKAGES.join(" ")
        );
        if let Err(first) = apt_get(&["install", "-y"]) {
            eprintln!("ceph: apt-get install failed ({first:#}); running: apt-get update");
            apt_get(&["update"])?;
            eprintln!("ceph: running: apt-get install -y {}", PACKAGES.join(" "));
            apt_get(&["install", "-y"])?;
        }
        let still: Vec<&str> = TOOLS
            .iter()
            .copied()
            .filter(|t| !crate::mount::on_path(t))
            .collect();
        if !still.is_empty() {
            bail!("after apt-get install still missing: {}", still.join(", "));
        }
    }
    let out = Command::new("fio")
        .arg("--enghelp")
        .stdin(Stdio::null())
        .output()
        .context("running fio --enghelp (is fio installed?)")?;
    let engines = String::from_utf8_lossy(&out.stdout);
    if !engines.lines().any(|l| l.trim() == "rbd") {
        bail!("this fio has no `rbd` engine (Debian's fio package has it)");
    }
    Ok(())
}

/// Runs `apt-get ARGS [PACKAGES]` non-interactively, output on our stderr.
fn apt_get(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args);
    if args.first() == Some(&"install") {
        cmd.args(PACKAGES);
    }
    let status = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Everything the generated ceph.conf depends on.
#[derive(Clone, Debug)]
pub struct ConfParams {
    /// Cluster fsid.
    pub fsid: String,
    /// Monitor msgr2 port.
    pub mon_v2_port: u16,
    /// Monitor legacy (msgr1) port.
    pub mon_v1_port: u16,
    /// Work directory (data dirs, logs).
    pub work: PathBuf,
    /// Run directory (admin sockets, pid files).
    pub run: PathBuf,
    /// Size of each OSD's sparse BlueStore block file in bytes.
    pub block_size: u64,
}

impl ConfParams {
    /// The monitor's address vector, `[v2:127.0.0.1:P2,v1:127.0.0.1:P1]`.
    pub fn mon_addrs(&self) -> String {
        format!(
            "[v2:127.0.0.1:{},v1:127.0.0.1:{}]",
            self.mon_v2_port, self.mon_v1_port
        )
    }
}

/// The ceph.conf of the anchor cluster: loopback only, auth off, every path
/// under the work/run directories, 3 replicas on distinct OSDs of one host,
/// small OSD memory target, no client cache.
pub fn conf_text(p: &ConfParams) -> String {
    let w = p.work.display();
    let r = p.run.display();
    let mut s = String::new();
    let lines = [
        "[global]".to_string(),
        format!("fsid = {}", p.fsid),
        format!("mon host = {}", p.mon_addrs()),
        "public addr = 127.0.0.1".into(),
        "cluster addr = 127.0.0.1".into(),
        "ms bind ipv6 = false".into(),
        "auth cluster required = none".into(),
        "auth service required = none".into(),
        "auth client required = none".into(),
        "keyring = /dev/null".into(),
        format!("run dir = {r}"),
        format!("admin socket = {r}/$cluster-$name.asok"),
        format!("pid file = {r}/$cluster-$name.pid"),
        format!("log file = {w}/log/$cluster-$name.log"),
        format!("mon data = {w}/mon/$cluster-$id"),
        format!("mgr data = {w}/mgr/$cluster-$id"),
        format!("osd data = {w}/osd/$cluster-$id"),
        "osd objectstore = bluestore".into(),
        "bluestore block create = true".into(),
        format!("bluestore block size = {}", p.block_size),
        "osd memory target = 1073741824".into(),
        "osd crush chooseleaf type = 0".into(),
        "osd pool default size = 3".into(),
        "osd pool default min size = 2".into(),
        "osd pool default pg autoscale mode = off".into(),
        "mon allow pool delete = true".into(),
        "mon warn on insecure global id reclaim allowed = false".into(),
        String::new(),
        "[client]".into(),
        "rbd cache = false".into(),
        // No admin socket for fio and the ceph CLI (they come and go).
        "admin socket =".into(),
        format!("log file = {w}/log/client.log"),
    ];
    for l in lines {
        // Writing to a String cannot fail.
        let _ = writeln!(s, "{l}");
    }
    s
}

/// A random (version 4) UUID in its text form.
pub fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(format_uuid(b))
}

/// Formats 16 random bytes as a version-4, RFC 4122 variant UUID.
pub fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// What `ceph -s --format json` says about OSDs and PGs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// OSDs in the map.
    pub osds: u64,
    /// OSDs up.
    pub osds_up: u64,
    /// OSDs in.
    pub osds_in: u64,
    /// Placement groups in all pools.
    pub pgs: u64,
    /// Placement groups whose state is exactly `active+clean`.
    pub active_clean: u64,
    /// Every PG state with its count, e.g. `("creating+peering", 12)`.
    pub by_state: Vec<(String, u64)>,
}

impl Status {
    /// Whether at least `want` PGs exist and all of them are active+clean.
    pub fn pgs_clean(&self, want: u64) -> bool {
        self.pgs >= want && self.active_clean == self.pgs
    }

    /// `40 active+clean, 24 creating+peering` (or `no PGs`).
    pub fn pg_summary(&self) -> String {
        if self.by_state.is_empty() {
            return "no PGs".into();
        }
        self.by_state
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses `ceph -s --format json` (Pacific: `osdmap.num_up_osds`,
/// `pgmap.pgs_by_state[].state_name/count`, `pgmap.num_pgs`).
pub fn parse_status(text: &str) -> Result<Status> {
    let start = text.find('{').context("`ceph -s` printed no JSON")?;
    let doc: Value = serde_json::from_str(text[start..].trim_end())
        .context("parsing `ceph -s --format json`")?;
    let osdmap = doc.get("osdmap").context("`ceph -s`: no osdmap")?;
    // Older releases nest the counts in osdmap.osdmap.
    let osdmap = osdmap.get("osdmap").unwrap_or(osdmap);
    let count = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let pgmap = doc.get("pgmap").context("`ceph -s`: no pgmap")?;
    let mut by_state = Vec::new();
    if let Some(states) = pgmap.get("pgs_by_state").and_then(Value::as_array) {
        for s in states {
            let name = s
                .get("state_name")
                .and_then(Value::as_str)
                .context("`ceph -s`: pgs_by_state entry without state_name")?;
            by_state.push((name.to_string(), count(s, "count")));
        }
    }
    let active_clean = by_state
        .iter()
        .filter(|(s, _)| s == "active+clean")
        .map(|(_, n)| n)
        .sum();
    Ok(Status {
        osds: count(osdmap, "num_osds"),
        osds_up: count(osdmap, "num_up_osds"),
        osds_in: count(osdmap, "num_in_osds"),
        pgs: count(pgmap, "num_pgs"),
        active_clean,
        by_state,
    })
}

/// A running local Ceph cluster with one RBD image; dropping it kills the
/// daemons and removes its directories.
pub struct CephCluster {
    /// The daemons: mon.a, mgr.x, osd.0, osd.1, osd.2 (as far as started).
    pub daemons: Vec<Server>,
    /// The cluster's ceph.conf (fio gets it as `CEPH_CONF`).
    pub conf: PathBuf,
    /// How long [`CephCluster::start`] took.
    pub setup: Duration,
    work: PathBuf,
    run: Option<tempfile::TempDir>,
    started: Instant,
}

impl CephCluster {
    /// Sets the cluster up under `dir/ceph` and creates image `rbd/bench` of
    /// `size` bytes; fails (with the relevant log tail) if a daemon dies or
    /// the cluster is not ready within [`SETUP_TIMEOUT`].
    pub fn start(dir: &Path, size: u64) -> Result<CephCluster> {
        let work = dir.join("ceph");
        for sub in ["log", "mon", "mgr", "osd"] {
            let d = work.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let run = tempfile::Builder::new()
            .prefix("raftblock-ceph-")
            .tempdir()
            .context("creating the ceph run dir under the temp dir")?;
        let mut v1 = targets::free_port()?;
        let v2 = targets::free_port()?;
        while v1 == v2 {
            v1 = targets::free_port()?;
        }
        let params = ConfParams {
            fsid: random_uuid()?,
            mon_v2_port: v2,
            mon_v1_port: v1,
            work: work.clone(),
            run: run.path().to_path_buf(),
            block_size: MIN_BLOCK_SIZE.max(size.saturating_mul(2)),
        };
        let conf = work.join("ceph.conf");
        std::fs::write(&conf, conf_text(&params))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cluster = CephCluster {
            daemons: Vec::new(),
            conf,
            setup: Duration::ZERO,
            work,
            run: Some(run),
            started: Instant::now(),
        };
        cluster.bring_up(&params, size)?;
        cluster.setup = cluster.started.elapsed();
        eprintln!(
            "ceph: cluster ready in {:.0} s (conf {})",
            cluster.setup.as_secs_f64(),
            cluster.conf.display()
        );
        Ok(cluster)
    }

    /// The fio target of the image.
    pub fn io_target(&self) -> crate::fio::IoTarget {
        crate::fio::IoTarget::Rbd {
            conf: self.conf.clone(),
            pool: POOL.into(),
            image: IMAGE.into(),
        }
    }

    fn bring_up(&mut self, p: &ConfParams, size: u64) -> Result<()> {
        let conf = self.conf.clone();
        // Monitor.
        eprintln!("ceph: creating monitor a at {} ...", p.mon_addrs());
        let monmap = self.work.join("monmap");
        let mut cmd = Command::new("monmaptool");
        cmd.arg("--create")
            .args(["--fsid", &p.fsid])
            .args(["--addv", "a", &p.mon_addrs()])
            .arg(&monmap);
        self.tool(cmd, "monmaptool --create")?;
        let mut cmd = Command::new("ceph-mon");
        cmd.arg("-c")
            .arg(&conf)
            .arg("--mkfs")
            .args(["-i", "a", "--monmap"])
            .arg(&monmap);
        self.tool(cmd, "ceph-mon --mkfs")?;
        self.daemon("ceph-mon", "a")?;
        self.wait("the monitor to answer", |c| c.status().map(|_| true))?;

        // Manager.
        eprintln!("ceph: starting manager x ...");
        std::fs::create_dir_all(self.work.join("mgr/ceph-x"))
            .context("creating the manager's data dir")?;
        self.daemon("ceph-mgr", "x")?;

        // OSDs.
        for _ in 0..OSDS {
            let uuid = random_uuid()?;
            let id = self.ceph(&["osd", "new", &uuid])?;
            let id: u32 = id
                .trim()
                .parse()
                .with_context(|| format!("`ceph osd new` printed {id:?}, not an id"))?;
            eprintln!(
                "ceph: creating OSD {id} (BlueStore on a sparse {} GiB file) ...",
                p.block_size >> 30
            );
            let data = self.work.join(format!("osd/ceph-{id}"));
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let mut cmd = Command::new("ceph-osd");
            cmd.arg("-c")
                .arg(&conf)
                .args(["-i", &id.to_string(), "--mkfs", "--osd-uuid", &uuid]);
            self.tool(cmd, &format!("ceph-osd --mkfs (osd.{id})"))?;
            self.daemon("ceph-osd", &id.to_string())?;
        }
        eprintln!("ceph: waiting for {OSDS} OSDs up and in ...");
        self.wait("3 OSDs up", |c| {
            let s = c.status()?;
            Ok(s.osds_up >= OSDS as u64 && s.osds_in >= OSDS as u64)
        })?;

        // Pool and image.
        eprintln!("ceph: creating pool {POOL} ({PG_COUNT} PGs, size 3, min_size 2) ...");
        let pgs = PG_COUNT.to_string();
        self.ceph(&["osd", "pool", "create", POOL, &pgs, &pgs, "replicated"])?;
        self.ceph(&["osd", "pool", "set", POOL, "size", "3"])?;
        self.ceph(&["osd", "pool", "set", POOL, "min_size", "2"])?;
        self.ceph(&["osd", "pool", "set", POOL, "pg_autoscale_mode", "off"])?;
        eprintln!("ceph: waiting for {PG_COUNT} PGs active+clean ...");
        let mut last_note = Instant::now();
        self.wait("PGs active+clean", |c| {
            let s = c.status()?;
            if last_note.elapsed() > Duration::from_secs(10) {
                eprintln!("ceph:   {}", s.pg_summary());
                last_note = Instant::now();
            }
            Ok(s.pgs_clean(PG_COUNT))
        })?;
        eprintln!(
            "ceph: rbd pool init {POOL}; creating image {POOL}/{IMAGE} ({} MiB) ...",
            size >> 20
        );
        let mut cmd = Command::new("rbd");
        cmd.arg("-c").arg(&conf).args(["pool", "init", POOL]);
        self.tool(cmd, "rbd pool init")?;
        let mut cmd = Command::new("rbd");
        cmd.arg("-c")
            .arg(&conf)
            .args(["create", &format!("{POOL}/{IMAGE}")])
            .arg(format!("--size={}M", size >> 20));
        self.tool(cmd, "rbd create")?;
        Ok(())
    }

    /// Starts `BIN -d -c CONF -i ID` (foreground, log on stderr) as a daemon.
    fn daemon(&mut self, bin: &str, id: &str) -> Result<()> {
        let name = format!("{bin}.{id}");
        let mut cmd = Command::new(bin);
        cmd.arg("-d").arg("-c").arg(&self.conf).args(["-i", id]);
        let log = self.work.join("log").join(format!("{name}.stderr"));
        let uri = format!("rbd:{POOL}/{IMAGE}");
        let mut server = targets::spawn(TargetKind::CephRbdR3, cmd, log, uri)?;
        server.name = name;
        eprintln!("ceph: started {} (pid {})", server.name, server.pid());
        self.daemons.push(server);
        Ok(())
    }

    /// Fails if any daemon has exited.
    fn check_daemons(&mut self) -> Result<()> {
        for d in &mut self.daemons {
            d.check_alive()?;
        }
        Ok(())
    }

    /// Polls `ready` (errors count as "not yet") until it holds; fails when
    /// a daemon dies, on Ctrl-C, or at the setup deadline, with the cluster
    /// status and the log tails.
    fn wait(&mut self, what: &str, mut ready: impl FnMut(&mut Self) -> Result<bool>) -> Result<()> {
        let mut last_err = None;
        loop {
            crate::check_interrupted()?;
            self.check_daemons()?;
            match ready(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            if self.started.elapsed() > SETUP_TIMEOUT {
                let status = self
                    .ceph(&["-s"])
                    .unwrap_or_else(|e| format!("(ceph -s failed: {e:#})"));
                let last = last_err
                    .map(|e| format!("\nlast error: {e:#}"))
                    .unwrap_or_default();
                bail!(
                    "ceph: {what} not reached within {} s{last}\nceph -s:\n{status}{}",
                    SETUP_TIMEOUT.as_secs(),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The last lines of every daemon's log.
    fn log_tails(&self) -> String {
        self.daemons
            .iter()
            .map(|d| targets::log_tail_lines(d.log(), 8))
            .collect()
    }

    /// `ceph -s --format json`, parsed.
    fn status(&mut self) -> Result<Status> {
        let out = self.ceph(&["-s", "--format", "json"])?;
        parse_status(&out)
    }

    /// Runs `ceph -c CONF ARGS` and returns its stdout.
    fn ceph(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ceph");
        cmd.arg("-c")
            .arg(&self.conf)
            .args(["--connect-timeout", "30"])
            .args(args);
        self.tool(cmd, &format!("ceph {}", args.join(" ")))
    }

    /// Runs a setup command to completion within [`COMMAND_TIMEOUT`] and
    /// returns its stdout; on failure the error has its output and the
    /// daemons' log tails.
    fn tool(&self, mut cmd: Command, what: &str) -> Result<String> {
        let out_path = self.work.join("log").join("command.out");
        let err_path = self.work.join("log").join("command.err");
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let err =
            File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {program} (is ceph installed?)"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {what}"))?
            {
                break status;
            }
            if started.elapsed() > COMMAND_TIMEOUT {
                // Best effort: it may have exited in between.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "ceph: `{what}` did not finish within {} s{}{}",
                    COMMAND_TIMEOUT.as_secs(),
                    targets::log_tail_lines(&err_path, 10),
                    self.log_tails()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::fs::read_to_string(&out_path)
            .with_context(|| format!("reading {}", out_path.display()))?;
        if !status.success() {
            // A Ctrl-C reaches the command too: say why it failed.
            crate::check_interrupted()?;
            bail!(
                "ceph: `{what}` failed ({status}){}{}",
                targets::log_tail_lines(&err_path, 10),
                self.log_tails()
            );
        }
        Ok(stdout)
    }

    /// Stops the daemons (OSDs and manager first, all at once) and removes
    /// the work and run directories.
    pub fn stop(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if self.daemons.is_empty() && self.run.is_none() {
            return;
        }
        eprintln!("ceph: stopping {} daemons ...", self.daemons.len());
        for d in self.daemons.iter_mut().rev() {
            d.signal_term();
        }
        let pids: Vec<u32> = self.daemons.iter().map(Server::pid).collect();
        // Each `Server` waits for its process (SIGKILL after a grace period).
        for d in self.daemons.drain(..).rev() {
            d.stop();
        }
        // Every daemon led its own process group: sweep anything it left.
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on a process group we created; ESRCH if gone.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.work) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: removing {}: {e}", self.work.display());
            }
        }
        if let Some(run) = self.run.take() {
            if let Err(e) = run.close() {
                eprintln!("warning: removing the ceph run dir: {e}");
            }
        }
        eprintln!("ceph: stopped; removed {}", self.work.display());
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ConfParams {
        ConfParams {
            fsid: "0f4c3a5e-1111-4222-8333-444455556666".into(),
            mon_v2_port: 40000,
            mon_v1_port: 40001,
            work: PathBuf::from("/scratch/ceph"),
            run: PathBuf::from("/tmp/raftblock-ceph-x"),
            block_size: 16 << 30,
        }
    }

    /// The value of `key` in `section` of an ini text.
    fn value<'a>(text: &'a str, section: &str, key: &str) -> Option<&'a str> {
        let mut current = "";
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                current = line;
            } else if current == section {
                if let Some((k, v)) = line.split_once('=') {
                    if k.trim() == key {
                        return Some(v.trim());
                    }
                }
            }
        }
        None
    }

    #[test]
    fn conf_has_the_anchor_settings() {
        let text = conf_text(&params());
        let g = |k| value(&text, "[global]", k);
        assert_eq!(
            g("mon host"),
            Some("[v2:127.0.0.1:40000,v1:127.0.0.1:40001]")
        );
        assert_eq!(g("fsid"), Some("0f4c3a5e-1111-4222-8333-444455556666"));
        for k in [
            "auth cluster required",
            "auth service required",
            "auth client required",
        ] {
            assert_eq!(g(k), Some("none"), "{k}");
        }
        assert_eq!(g("osd pool default size"), Some("3"));
        assert_eq!(g("osd pool default min size"), Some("2"));
        assert_eq!(g("osd crush chooseleaf type"), Some("0"));
        assert_eq!(g("osd objectstore"), Some("bluestore"));
        assert_eq!(g("bluestore block size"), Some("17179869184"));
        assert_eq!(g("keyring"), Some("/dev/null"));
        assert_eq!(g("osd data"), Some("/scratch/ceph/osd/$cluster-$id"));
        assert_eq!(
            g("admin socket"),
            Some("/tmp/raftblock-ceph-x/$cluster-$name.asok")
        );
        assert_eq!(value(&text, "[client]", "rbd cache"), Some("false"));
        // Nothing points outside the two directories.
        for line in text.lines().filter(|l| l.contains('/')) {
            assert!(
                line.contains("= /scratch/ceph/")
                    || line.contains("= /tmp/raftblock-ceph-x")
                    || line.ends_with("/dev/null"),
                "{line}"
            );
        }
    }

    #[test]
    fn uuids_are_version_4() -> Result<()> {
        let u = format_uuid([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = format_uuid([0; 16]);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
        let a = random_uuid()?;
        assert_eq!(a.len(), 36);
        assert_ne!(a, random_uuid()?);
        Ok(())
    }

    /// Trimmed from a real Pacific 16.2.15 `ceph -s --format json`.
    const STATUS: &str = r#"
{"fsid":"9a651028-1d57-44f2-b938-982a5589303e","health":{"status":"HEALTH_WARN"},"election_epoch":3,"quorum":[0],"quorum_names":["a"],"monmap":{"epoch":1,"num_mons":1},"osdmap":{"epoch":17,"num_osds":3,"num_up_osds":3,"osd_up_since":1795803164,"num_in_osds":3,"osd_in_since":1795803157,"num_remapped_pgs":0},"pgmap":{"pgs_by_state":[{"state_name":"active+clean","count":40},{"state_name":"creating+peering","count":25}],"num_pgs":65,"num_pools":2,"num_objects":0,"data_bytes":0},"mgrmap":{"available":true}}
"#;

    #[test]
    fn parses_ceph_status_json() -> Result<()> {
        let s = parse_status(STATUS)?;
        assert_eq!((s.osds, s.osds_up, s.osds_in), (3, 3, 3));
        assert_eq!((s.pgs, s.active_clean), (65, 40));
        assert!(!s.pgs_clean(64));
        assert_eq!(s.pg_summary(), "40 active+clean, 25 creating+peering");
        let clean = STATUS.replace(
            r#"{"state_name":"active+clean","count":40},{"state_name":"creating+peering","count":25}"#,
            r#"{"state_name":"active+clean","count":65}"#,
        );
        let s = parse_status(&clean)?;
        assert!(s.pgs_clean(64));
        assert!(!s.pgs_clean(128), "fewer PGs than the pool has");
        Ok(())
    }

    #[test]
    fn fresh_monitor_status_has_no_pgs() -> Result<()> {
        let s = parse_status(
            r#"{"osdmap":{"num_osds":0,"num_up_osds":0,"num_in_osds":0},"pgmap":{"pgs_by_state":[],"num_pgs":0}}"#,
        )?;
        assert_eq!(s, Status::default());
        assert_eq!(s.pg_summary(), "no PGs");
        assert!(!s.pgs_clean(64));
        Ok(())
    }

    #[test]
    fn malformed_status_is_an_error() {
        assert!(parse_status("").is_err());
        assert!(parse_status("{\"osdmap\":{}}").is_err());
        assert!(parse_status("{not json").is_err());
    }
}
