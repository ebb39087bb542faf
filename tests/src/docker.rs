//! A real Docker engine for the volume-plugin tests: a private `dockerd`
//! (its own socket, data root and exec root under a temporary directory, no
//! networking) started per test and stopped on drop, a tiny image imported
//! from a tarball holding the static busybox binary, and [`plugin_call`] to
//! ask a node's plugin directly (a panicking wrapper over
//! `raftblock::client::plugin_request` that also checks the content type).

use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::require_tool;

/// Where dockerd looks for plugin sockets.
pub const PLUGIN_DIR: &str = "/run/docker/plugins";
/// The test image (busybox only).
pub const IMAGE: &str = "raftblock-it-busybox";

/// A dockerd of our own; dropping it stops it.
pub struct DockerEngine {
    child: Option<Child>,
    host: String,
    dir: tempfile::TempDir,
}

/// Whether every tool the Docker tests drive is here (else they skip, or
/// fail under RAFTBLOCK_REQUIRE_TOOLS=1).
pub fn tools_present() -> bool {
    [
        "dockerd",
        "docker",
        "busybox",
        "mkfs.ext4",
        "mkfs.xfs",
        "losetup",
        "fusermount3",
    ]
    .iter()
    .all(|t| require_tool(t))
        && Path::new("/dev/fuse").exists()
}

impl DockerEngine {
    /// Starts dockerd and imports the busybox image.
    pub fn start() -> DockerEngine {
        let dir = tempfile::Builder::new()
            .prefix("raftblock-docker-")
            .tempdir()
            .expect("temporary directory for dockerd");
        let sock = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut e = DockerEngine {
            child: Some(child),
            host: format!("unix://{}", sock.display()),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !e.docker(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up:\n{}",
                e.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        e.import_busybox();
        e
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn import_busybox(&mut self) {
        let root = self.dir.path().join("image");
        std::fs::create_dir_all(root.join("bin")).expect("image dir");
        std::fs::create_dir_all(root.join("tmp")).expect("image tmp");
        let busybox = crate::which("busybox").expect("busybox on PATH");
        std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh",
            "cat",
            "echo",
            "sync",
            "sleep",
            "ls",
            "dd",
            "sha256sum",
            "rm",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .expect("applet link");
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .output()
            .expect("docker import");
        let tar_status = tar.wait().expect("tar");
        assert!(tar_status.success(), "tar of the image: {tar_status}");
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .expect("run the docker CLI")
    }

    /// Runs the docker CLI and returns its stdout; panics with stderr on
    /// failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs the docker CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {} succeeded but should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(["rm", "-f", "-v"])
            .args(
                String::from_utf8_lossy(
                    &Command::new("docker")
                        .env("DOCKER_HOST", &self.host)
                        .args(["ps", "-aq"])
                        .output()
                        .map(|o| o.stdout)
                        .unwrap_or_default(),
                )
                .split_whitespace(),
            )
            .output();
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A unique driver name (and socket path under [`PLUGIN_DIR`]) for a test.
pub fn driver_name(tag: &str) -> (String, PathBuf) {
    let name = format!("rbit-{}-{tag}", std::process::id());
    let path = Path::new(PLUGIN_DIR).join(format!("{name}.sock"));
    (name, path)
}

/// Calls the plugin on `socket` (`/VolumeDriver.Get` etc.) with a JSON
/// body; returns the answer's JSON whatever its status (error answers carry
/// `Err`). Panics if the plugin cannot be reached or answers without the
/// plugin content type.
pub fn plugin_call(socket: &Path, endpoint: &str, body: &Value) -> Value {
    let a = raftblock::client::plugin_request(socket, endpoint, body)
        .unwrap_or_else(|e| panic!("{endpoint} on {}: {e:#}", socket.display()));
    let content_type = a.content_type.unwrap_or_default();
    assert!(
        content_type.eq_ignore_ascii_case("application/vnd.docker.plugins.v1.1+json"),
        "plugin answer without the plugin content type: {content_type:?}"
    );
    a.body
}

/// Waits until something answers on `socket`.
pub fn wait_for_socket(socket: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while UnixStream::connect(socket).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing serves {} after {within:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mount points under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Loop devices bound to files under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let dev = it.next()?;
            let file = it.next()?;
            Path::new(file).starts_with(dir).then(|| dev.to_string())
        })
        .collect()
}

/// Lazily unmounts everything under `dirs` and frees their loop devices,
/// so a failed test leaves nothing mounted on the host.
pub struct MountSweeper(pub Vec<PathBuf>);

impl Drop for MountSweeper {
    fn drop(&mut self) {
        for d in &self.0 {
            let mut ms = mounts_under(d);
            ms.sort();
            for m in ms.iter().rev() {
                let _ = Command::new("umount").arg("-l").arg(m).output();
            }
            for dev in loops_under(d) {
                let _ = Command::new("losetup").arg("-d").arg(dev).output();
            }
        }
    }
}

/// Removes the given files (plugin sockets) when dropped, so a failed test
/// leaves no dead socket for dockerd to retry on every `volume ls`.
pub struct RemoveOnDrop(pub Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Serializes the tests that use dockerd: every dockerd on the host scans
/// the one plugin directory, so one test's dying plugin would slow another
/// test's `docker volume ls`.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A plugin socket for node `node` of a test, in the temporary directory.
pub fn temp_socket(tag: &str, node: u64) -> PathBuf {
    std::env::temp_dir().join(format!("rbit-{}-{tag}-{node}.sock", std::process::id()))
}

/// A 3-node test cluster whose nodes serve the plugin on the given
/// sockets (`None`: no plugin), started with `extra` `serve` arguments;
/// dropping it stops the nodes, then sweeps their mounts and sockets.
pub struct PluginCluster {
    /// The nodes.
    pub c: crate::cluster::TestCluster,
    /// Node `i + 1`'s socket.
    pub socks: Vec<Option<PathBuf>>,
    _sweep: MountSweeper,
    _rm: RemoveOnDrop,
}

impl PluginCluster {
    /// Starts the nodes and waits until every socket answers.
    pub fn start(socks: Vec<Option<PathBuf>>, extra: &[&str]) -> PluginCluster {
        let rm = RemoveOnDrop(socks.iter().flatten().cloned().collect());
        let (s2, extra): (Vec<Option<PathBuf>>, Vec<String>) =
            (socks.clone(), extra.iter().map(|s| s.to_string()).collect());
        let c = crate::cluster::TestCluster::start_each(socks.len(), move |id| {
            let sock = s2[(id - 1) as usize]
                .as_ref()
                .map_or_else(|| "off".to_string(), |p| p.display().to_string());
            let mut args = vec!["--plugin-socket".to_string(), sock];
            args.extend(extra.iter().cloned());
            args
        });
        let sweep = MountSweeper(c.nodes.iter().map(|d| d.data_dir().to_path_buf()).collect());
        for s in socks.iter().flatten() {
            wait_for_socket(s, Duration::from_secs(60));
        }
        PluginCluster {
            c,
            socks,
            _sweep: sweep,
            _rm: rm,
        }
    }

    /// Node `node`'s socket (panics for a node without one).
    pub fn sock(&self, node: u64) -> &Path {
        self.socks[(node - 1) as usize]
            .as_deref()
            .unwrap_or_else(|| panic!("node {node} serves no plugin"))
    }

    /// The nodes' data directories.
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.c
            .nodes
            .iter()
            .map(|d| d.data_dir().to_path_buf())
            .collect()
    }
}

/// The plugin answer's `Err`, empty on success.
pub fn err_of(v: &Value) -> String {
    v["Err"].as_str().unwrap_or("").to_string()
}

/// Creates `name` through the plugin on `socket` with options `opts`.
pub fn create(socket: &Path, name: &str, opts: Value) {
    let e = plugin_call(
        socket,
        "/VolumeDriver.Create",
        &serde_json::json!({"Name": name, "Opts": opts}),
    );
    assert_eq!(err_of(&e), "", "Create {name}: {e}");
}

/// Mounts `name` for mount ID `id` through the plugin on `socket`; returns
/// the mountpoint.
pub fn mount(socket: &Path, name: &str, id: &str) -> PathBuf {
    let m = plugin_call(
        socket,
        "/VolumeDriver.Mount",
        &serde_json::json!({"Name": name, "ID": id}),
    );
    assert_eq!(err_of(&m), "", "Mount {name}: {m}");
    PathBuf::from(
        m["Mountpoint"]
            .as_str()
            .expect("Mount answers a mountpoint"),
    )
}

/// Unmounts `name` for mount ID `id` through the plugin on `socket`.
pub fn unmount(socket: &Path, name: &str, id: &str) {
    let u = plugin_call(
        socket,
        "/VolumeDriver.Unmount",
        &serde_json::json!({"Name": name, "ID": id}),
    );
    assert_eq!(err_of(&u), "", "Unmount {name}: {u}");
}
