//! The `mount` suite's targets and their lifecycle: ext4 on raftblock
//! volumes mounted through the Docker volume plugin of a local 3-node
//! cluster (`raftblock-r3-mount`, `raftblock-r1-mount`, created and mounted
//! with the same plugin calls dockerd makes), and the baseline `ext4-loop`:
//! the same filesystem on a loop device over a sparse file on the same disk,
//! without replication. fio runs on a file inside each filesystem.
//!
//! [`MountTargets`] owns everything set up here and undoes it on every exit
//! path: Unmount through the plugin, stop the nodes, unmount and detach the
//! baseline, and last sweep whatever is still mounted or bound under the
//! scratch directory (as the daemon does after a crash).

use anyhow::{anyhow, bail, Context, Result};
use raftblock::client::plugin_call;
use raftblock_volume_driver::attach::{self, fs, loop_dev};
use serde_json::json;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::{self, Server, TargetKind};

/// Room for ext4's metadata (journal, inode tables, reserved blocks): each
/// filesystem is this much bigger than the fio file in it.
pub const FS_OVERHEAD: u64 = 256 << 20;
/// `--attach-grace` of the nodes (short: nothing here moves volumes).
const ATTACH_GRACE: &str = "3s";
/// The mount ID sent with Mount and Unmount (dockerd sends one per container).
const MOUNT_ID: &str = "bench";
/// Name of the fio file in every filesystem.
const FIO_FILE: &str = "fio.dat";
/// How long the cluster may take to accept the first Create (leader election).
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// The targets of the `mount` suite, in the order they are run.
pub const ALL: [TargetKind; 3] = [
    TargetKind::MountR3,
    TargetKind::MountR1,
    TargetKind::Ext4Loop,
];

/// Whether `tool` is an executable on `PATH`.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        std::fs::metadata(d.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Fails, naming what is missing, unless this process is root and every
/// tool the chosen targets need is installed.
pub fn check_prerequisites(kinds: &[TargetKind]) -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("`raftblock-bench mount` needs root: it mounts filesystems and sets up loop devices");
    }
    let daemon = kinds.iter().any(|k| *k != TargetKind::Ext4Loop);
    // (tool, Debian package, needed by)
    let mut needs = vec![
        ("mkfs.ext4", "e2fsprogs", "making ext4"),
        ("losetup", "util-linux", "loop devices"),
        ("mount", "mount", "mounting"),
        ("umount", "mount", "unmounting"),
    ];
    if daemon {
        needs.push(("fusermount3", "fuse3", "the daemon's FUSE attach"));
        needs.push(("blkid", "util-linux", "the daemon's filesystem probe"));
    }
    let missing: Vec<String> = needs
        .iter()
        .filter(|(tool, _, _)| !on_path(tool))
        .map(|(tool, pkg, why)| format!("{tool} (Debian package {pkg}; for {why})"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools: {}", missing.join(", "));
    }
    if daemon && !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: the daemon attaches volumes through FUSE (modprobe fuse)");
    }
    Ok(())
}

/// A volume mounted through a node's plugin; unmounted through it on drop.
struct PluginMount {
    socket: PathBuf,
    name: String,
    /// Still to be unmounted.
    mounted: bool,
}

impl PluginMount {
    /// POST /VolumeDriver.Unmount (once).
    fn unmount(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.mounted) {
            return Ok(());
        }
        plugin_call(
            &self.socket,
            "/VolumeDriver.Unmount",
            &json!({ "Name": self.name, "ID": MOUNT_ID }),
        )
        .with_context(|| format!("unmounting volume {} through the plugin", self.name))
        .map(|_| ())
    }
}

impl Drop for PluginMount {
    fn drop(&mut self) {
        // Error path only; MountTargets::teardown reports failures.
        let _ = self.unmount();
    }
}

/// The baseline's loop device and mount; undone on drop.
struct LoopMount {
    dev: PathBuf,
    /// Where the filesystem is mounted, once it is.
    mnt: Option<PathBuf>,
    /// Still to be detached.
    bound: bool,
}

impl LoopMount {
    /// Unmounts the filesystem and detaches the loop device (once).
    fn release(&mut self) -> Result<()> {
        if let Some(mnt) = self.mnt.take() {
            if fs::is_mounted(&mnt) {
                fs::unmount(&mnt).map_err(|e| anyhow!(e))?;
            }
        }
        if std::mem::take(&mut self.bound) {
            loop_dev::release(&self.dev).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        // Error path only; the sweep in MountTargets catches what is left.
        let _ = self.release();
    }
}

/// One filesystem fio runs on.
pub struct MountTarget {
    /// Which target.
    pub kind: TargetKind,
    /// The fio file inside the mounted filesystem.
    pub file: PathBuf,
}

/// Everything the `mount` suite set up; dropping it tears it all down.
pub struct MountTargets {
    /// The filesystems, in run order.
    pub targets: Vec<MountTarget>,
    /// The cluster's node processes (empty when only `ext4-loop` runs).
    pub nodes: Vec<Server>,
    volumes: Vec<PluginMount>,
    baseline: Option<LoopMount>,
    dir: PathBuf,
    /// Torn down already (by [`MountTargets::teardown`]).
    released: bool,
}

impl MountTargets {
    /// Sets up `kinds` under the scratch directory `dir`, with fio files of
    /// `size` bytes; `bin` is the raftblock binary (needed unless only
    /// `ext4-loop` runs).
    pub fn start(bin: Option<&Path>, dir: &Path, size: u64, kinds: &[TargetKind]) -> Result<Self> {
        let fs_size = size + FS_OVERHEAD;
        let mut me = MountTargets {
            targets: Vec::new(),
            nodes: Vec::new(),
            volumes: Vec::new(),
            baseline: None,
            dir: dir.to_path_buf(),
            released: false,
        };
        let volumes: Vec<(TargetKind, &str, u32)> = [
            (TargetKind::MountR3, "bench-r3", 3),
            (TargetKind::MountR1, "bench-r1", 1),
        ]
        .into_iter()
        .filter(|(k, _, _)| kinds.contains(k))
        .collect();
        let mut mounted = Vec::new();
        if !volumes.is_empty() {
            let bin = bin.context("raftblock binary missing")?;
            let nodes =
                targets::start_nodes(bin, dir, TargetKind::MountR3, Some(ATTACH_GRACE), None)?;
            me.nodes = nodes.servers;
            for (i, p) in me.nodes.iter().enumerate() {
                eprintln!("started cluster node {} (pid {})", i + 1, p.pid());
            }
            let socket = targets::plugin_socket(dir, 1);
            targets::wait_ready(&mut me.nodes[0], "plugin socket", || {
                UnixStream::connect(&socket).is_ok()
            })?;
            for (kind, name, replicas) in volumes {
                let started = Instant::now();
                eprint!(
                    "creating and mounting {name} ({} MiB, {replicas} replica(s)) ... ",
                    fs_size >> 20
                );
                crate::flush_stderr();
                create_volume(&socket, name, fs_size, replicas)?;
                // Registered before Mount: Unmount of an ID the plugin never
                // mounted is a no-op, so a failed Mount is undone safely too.
                me.volumes.push(PluginMount {
                    socket: socket.clone(),
                    name: name.to_string(),
                    mounted: true,
                });
                let answer = plugin_call(
                    &socket,
                    "/VolumeDriver.Mount",
                    &json!({ "Name": name, "ID": MOUNT_ID }),
                )
                .with_context(|| format!("mounting volume {name}"))?;
                let mountpoint = answer
                    .get("Mountpoint")
                    .and_then(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(PathBuf::from)
                    .with_context(|| format!("Mount of {name} answered no Mountpoint: {answer}"))?;
                eprintln!(
                    "{} ({:.1} s)",
                    mountpoint.display(),
                    started.elapsed().as_secs_f64()
                );
                mounted.push((kind, mountpoint));
            }
        }
        for (kind, mountpoint) in mounted {
            me.targets.push(MountTarget {
                kind,
                file: mountpoint.join(FIO_FILE),
            });
        }
        if kinds.contains(&TargetKind::Ext4Loop) {
            let mnt = me.start_baseline(fs_size)?;
            me.targets.push(MountTarget {
                kind: TargetKind::Ext4Loop,
                file: mnt.join(FIO_FILE),
            });
        }
        Ok(me)
    }

    /// ext4 on a loop device (direct I/O where the kernel allows it) over a
    /// sparse file of `fs_size` bytes; returns the mountpoint.
    fn start_baseline(&mut self, fs_size: u64) -> Result<PathBuf> {
        let file = targets::backing_file(&self.dir, "ext4-loop.img", fs_size)?;
        // Like the daemon's attach: direct I/O, or buffered where refused.
        let dev = loop_dev::bind(&file).map_err(|e| anyhow!(e))?;
        let lm = self.baseline.insert(LoopMount {
            dev: dev.clone(),
            mnt: None,
            bound: true,
        });
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-E", "nodiscard,lazy_itable_init=1"])
            .arg(&dev)
            .stdin(Stdio::null())
            .output()
            .context("running mkfs.ext4")?;
        if !out.status.success() {
            bail!(
                "mkfs.ext4 {} failed ({}): {}",
                dev.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mnt = self.dir.join("ext4-loop-mnt");
        fs::mount(&dev, &mnt, "ext4").map_err(|e| anyhow!(e))?;
        lm.mnt = Some(mnt.clone());
        eprintln!(
            "ext4-loop: {} on {} mounted at {}",
            file.display(),
            dev.display(),
            mnt.display()
        );
        Ok(mnt)
    }

    /// Unmounts everything and stops the cluster; fails (after undoing all
    /// it can) if something could not be undone cleanly.
    pub fn teardown(mut self) -> Result<()> {
        let errors = self.release();
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up: {}", errors.join("; "))
        }
    }

    /// Undoes everything, in order, and returns what went wrong.
    fn release(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.released, true) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        // The plugin must still run to unmount its volumes.
        for mut v in self.volumes.drain(..) {
            if let Err(e) = v.unmount() {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(mut b) = self.baseline.take() {
            if let Err(e) = b.release() {
                errors.push(format!("ext4-loop: {e:#}"));
            }
        }
        for s in self.nodes.drain(..) {
            s.stop();
        }
        // Whatever is still there (a failed Unmount, a node that died with
        // its volume mounted): what the daemon does on restart after a crash.
        let swept = attach::clean_stale(&self.dir);
        if !swept.is_empty() {
            errors.push(format!("left behind, swept: {}", swept.join(", ")));
        }
        errors
    }
}

impl Drop for MountTargets {
    fn drop(&mut self) {
        for e in self.release() {
            eprintln!("warning: {e}");
        }
    }
}

/// Creates volume `name` through the plugin, retrying while the cluster
/// elects its leaders.
fn create_volume(socket: &Path, name: &str, size: u64, replicas: u32) -> Result<()> {
    let body = json!({
        "Name": name,
        "Opts": { "size": size.to_string(), "replicas": replicas.to_string() },
    });
    let deadline = Instant::now() + CREATE_TIMEOUT;
    loop {
        match plugin_call(socket, "/VolumeDriver.Create", &body) {
            Ok(_) => return Ok(()),
            // No leader yet (the nodes just started): try again.
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => return Err(e).with_context(|| format!("creating volume {name}")),
        }
    }
}
