//! The Docker volume plugin against a real dockerd and a real 3-node
//! cluster: volumes created with `docker volume create`, visible on every
//! node's plugin, mounted into busybox containers (FUSE file + loop device +
//! ext4 on this machine), shared by two containers, refused removal while
//! in use; a node killed with SIGKILL and its volume mounted on another node
//! whose plugin takes over the socket; and a frozen holder fenced off.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raftblock_tests::docker::{
    create, driver_name, err_of, exclusive, loops_under, mount, mounts_under, plugin_call,
    temp_socket, tools_present, unmount, DockerEngine, PluginCluster, IMAGE,
};

#[test]
fn docker_volumes_are_created_shared_between_containers_and_removed() {
    if !tools_present() {
        return;
    }
    let _one_at_a_time = exclusive();
    // Node 1 serves the socket dockerd looks for; the others their own.
    let (driver, socket) = driver_name("basic");
    let mut pc = PluginCluster::start(
        vec![
            Some(socket),
            Some(temp_socket("basic", 2)),
            Some(temp_socket("basic", 3)),
        ],
        &[],
    );
    let socks: Vec<PathBuf> = pc.socks.iter().flatten().cloned().collect();
    let docker = DockerEngine::start();

    // Create through dockerd; every node's plugin knows the volume.
    let t = Instant::now();
    docker.ok(&["volume", "create", "-d", &driver, "-o", "size=1G", "v1"]);
    println!("docker volume create took {:?}", t.elapsed());
    let ls = docker.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == format!("{driver} v1")), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&docker.ok(&["volume", "inspect", "v1"])).expect("inspect JSON");
    assert_eq!(inspect[0]["Scope"], "global", "{inspect}");
    assert_eq!(inspect[0]["Status"]["size"], 1u64 << 30, "{inspect}");
    assert_eq!(inspect[0]["Status"]["replicas"], 3, "{inspect}");
    for s in &socks {
        let list = plugin_call(s, "/VolumeDriver.List", &json!({}));
        assert!(
            list["Volumes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["Name"] == "v1")),
            "{}: {list}",
            s.display()
        );
        let get = plugin_call(s, "/VolumeDriver.Get", &json!({"Name": "v1"}));
        assert_eq!(err_of(&get), "", "{get}");
    }
    // Create again with the same size is fine (Swarm does it on every node);
    // a different size or a bad option is a clear error.
    docker.ok(&["volume", "create", "-d", &driver, "-o", "size=1G", "v1"]);
    let e = plugin_call(
        &socks[1],
        "/VolumeDriver.Create",
        &json!({"Name": "v1", "Opts": {"size": "2G"}}),
    );
    assert!(err_of(&e).contains("already exists with size"), "{e}");
    let e = plugin_call(
        &socks[1],
        "/VolumeDriver.Create",
        &json!({"Name": "bad", "Opts": {"size": "1G", "replicas": "4"}}),
    );
    assert!(err_of(&e).contains("only 3 node(s) are up"), "{e}");
    let e = plugin_call(
        &socks[1],
        "/VolumeDriver.Create",
        &json!({"Name": "bad", "Opts": {"colour": "red"}}),
    );
    assert!(err_of(&e).contains("colour"), "{e}");

    // One container writes, a second one reads.
    let t = Instant::now();
    docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "v1:/data",
        IMAGE,
        "sh",
        "-c",
        "echo hello from the first container > /data/greeting && sync",
    ]);
    println!(
        "first container (mkfs + mount + write) took {:?}",
        t.elapsed()
    );
    let got = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "v1:/data",
        IMAGE,
        "cat",
        "/data/greeting",
    ]);
    assert_eq!(got, "hello from the first container");

    // Two containers at once share one attach; stopping one keeps the
    // other working.
    let a = docker.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "-v",
        "v1:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    let b = docker.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "-v",
        "v1:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    let get = plugin_call(&socks[0], "/VolumeDriver.Get", &json!({"Name": "v1"}));
    assert_eq!(get["Volume"]["Status"]["mounts"], 2, "{get}");
    let n1 = &pc.c.nodes[0];
    assert_eq!(n1.metric("raftblock_plugin_mounted_volumes"), Some(1.0));
    assert!(
        n1.metric("raftblock_plugin_calls_total{endpoint=\"Mount\",result=\"ok\"}") >= Some(4.0),
        "{}",
        n1.metrics()
    );
    assert_eq!(get["Volume"]["Status"]["attached_to_node"], 1, "{get}");
    docker.ok(&["exec", &b, "sh", "-c", "echo from b > /data/b && sync"]);
    assert_eq!(docker.ok(&["exec", &a, "cat", "/data/b"]), "from b");
    let path = plugin_call(&socks[0], "/VolumeDriver.Path", &json!({"Name": "v1"}));
    let mp = PathBuf::from(
        path["Mountpoint"]
            .as_str()
            .expect("Path answers the mountpoint"),
    );
    assert_eq!(
        std::fs::read_to_string(mp.join("b")).expect("the mountpoint holds the files"),
        "from b\n"
    );
    docker.ok(&["rm", "-f", &b]);
    docker.ok(&["exec", &a, "sh", "-c", "echo still here > /data/a && sync"]);
    assert_eq!(docker.ok(&["exec", &a, "cat", "/data/a"]), "still here");
    let get = plugin_call(&socks[0], "/VolumeDriver.Get", &json!({"Name": "v1"}));
    assert_eq!(get["Volume"]["Status"]["mounts"], 1, "{get}");

    // Removal is refused while mounted: by dockerd, and by the plugin of
    // another node (the volume is attached on node 1).
    docker.fails(&["volume", "rm", "v1"]);
    let e = plugin_call(&socks[1], "/VolumeDriver.Remove", &json!({"Name": "v1"}));
    assert!(err_of(&e).contains("attached on node 1"), "{e}");
    // Another node cannot mount it meanwhile (node 1 is alive).
    let e = plugin_call(
        &socks[2],
        "/VolumeDriver.Mount",
        &json!({"Name": "v1", "ID": "elsewhere"}),
    );
    assert!(err_of(&e).contains("attached on node 1"), "{e}");
    // A re-sent Mount with a known ID and an Unmount with an unknown one
    // change nothing.
    let again = plugin_call(
        &socks[0],
        "/VolumeDriver.Unmount",
        &json!({"Name": "v1", "ID": "never-mounted"}),
    );
    assert_eq!(err_of(&again), "", "{again}");
    assert_eq!(docker.ok(&["exec", &a, "cat", "/data/a"]), "still here");

    docker.ok(&["rm", "-f", &a]);
    let get = plugin_call(&socks[0], "/VolumeDriver.Get", &json!({"Name": "v1"}));
    assert!(
        get["Volume"]["Status"].get("attached_to_node").is_none(),
        "{get}"
    );
    let dirs = pc.data_dirs();
    assert!(
        mounts_under(&dirs[0]).is_empty(),
        "{:?}",
        mounts_under(&dirs[0])
    );
    assert!(loops_under(&dirs[0]).is_empty());
    docker.ok(&["volume", "rm", "v1"]);
    // Get answers from each node's copy of the metadata without waiting,
    // so the other nodes see the removal once they applied it.
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &socks {
        loop {
            let get = plugin_call(s, "/VolumeDriver.Get", &json!({"Name": "v1"}));
            if err_of(&get).contains("no such volume") {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {get}", s.display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // fs=xfs makes an XFS filesystem on first mount.
    docker.ok(&[
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        "size=512M",
        "-o",
        "fs=xfs",
        "-o",
        "replicas=2",
        "xfsvol",
    ]);
    let fs = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "xfsvol:/data",
        IMAGE,
        "sh",
        "-c",
        "echo on xfs > /data/f && sync && cat /proc/mounts",
    ]);
    assert!(fs.lines().any(|l| l.contains(" /data xfs ")), "{fs}");
    let got = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "xfsvol:/data",
        IMAGE,
        "cat",
        "/data/f",
    ]);
    assert_eq!(got, "on xfs");
    let get = plugin_call(&socks[2], "/VolumeDriver.Get", &json!({"Name": "xfsvol"}));
    assert_eq!(get["Volume"]["Status"]["fs"], "xfs", "{get}");
    assert_eq!(get["Volume"]["Status"]["replicas"], 2, "{get}");

    // With the cluster unreachable (nodes 2 and 3 gone, no quorum), Get and
    // List still answer from node 1's view at once: an error there would
    // make dockerd forget the volume.
    docker.ok(&["volume", "create", "-d", &driver, "-o", "size=64M", "kept"]);
    pc.c.node(2).kill9();
    pc.c.node(3).kill9();
    let t = Instant::now();
    let get = plugin_call(&socks[0], "/VolumeDriver.Get", &json!({"Name": "kept"}));
    println!("Get with the cluster down took {:?}: {get}", t.elapsed());
    let t = Instant::now();
    let inspect = docker.ok(&["volume", "inspect", "kept"]);
    println!("inspect with the cluster down took {:?}", t.elapsed());
    assert!(inspect.contains("\"kept\""), "{inspect}");
    let ls = docker.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == "kept"), "{ls}");
    let took = t.elapsed();
    println!("inspect + ls with the cluster down took {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// Retries `docker run` until it succeeds (the volume is still held by the
/// dead node during the grace period); returns its stdout.
fn run_until_ok(docker: &DockerEngine, args: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = docker.docker(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            Instant::now() < deadline,
            "docker {} still failing after {within:?}: {err}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_volume_moves_to_another_node_when_its_node_dies() {
    if !tools_present() {
        return;
    }
    // Nodes 1 and 2 both want the one plugin socket dockerd knows: node 1
    // serves it, node 2 stands by and takes it over when node 1 dies.
    let _one_at_a_time = exclusive();
    let (driver, socket) = driver_name("failover");
    let mut pc = PluginCluster::start(
        vec![
            Some(socket.clone()),
            Some(socket),
            Some(temp_socket("failover", 3)),
        ],
        &["--attach-grace", "3s"],
    );
    let docker = DockerEngine::start();
    docker.ok(&["volume", "create", "-d", &driver, "-o", "size=512M", "db"]);
    let holder = docker.ok(&[
        "run", "-d", "--network", "none", "-v", "db:/data", IMAGE, "sh", "-c",
        "cd /data && dd if=/dev/urandom of=table bs=64k count=64 && sha256sum table > table.sum && sync && touch synced && sleep 600",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    // `synced` appears once sync(2) returned: the data before it is durable.
    let sum = loop {
        let out = docker.docker(&[
            "exec",
            &holder,
            "sh",
            "-c",
            "ls /data/synced && cat /data/table.sum",
        ]);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            break text.lines().last().unwrap_or("").trim().to_string();
        }
        assert!(Instant::now() < deadline, "the holder never wrote its data");
        std::thread::sleep(Duration::from_millis(200));
    };
    let holder_pid = pc.c.node(1).pid();
    println!("node 1 (pid {holder_pid}) holds db; killing it with SIGKILL");
    let died = Instant::now();
    pc.c.node(1).kill9();
    // A new container (as Swarm would start on a surviving node) mounts db
    // through node 2's plugin once node 1's lease has lapsed.
    let got = run_until_ok(
        &docker,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "db:/data",
            IMAGE,
            "sh",
            "-c",
            "cd /data && sha256sum table",
        ],
        Duration::from_secs(120),
    );
    let took = died.elapsed();
    println!("failover: node death to the new container reading its data took {took:?}");
    assert_eq!(
        got, sum,
        "the data read on node 2 differs from what node 1 wrote"
    );
    let st = pc.c.status();
    let vol = st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "db").cloned())
        .expect("db in cluster status");
    println!("db after failover: {vol}");
    // Node 2 attached it with a new epoch (and detached when the container
    // exited).
    assert!(vol["attach_epoch"].as_u64() >= Some(2), "{vol}");
    assert!(vol["attached_to"].is_null(), "{vol}");

    // Node 1 comes back: its dead mounts are cleaned up, not re-served, and
    // its stale attachment is not given back over node 2's.
    let _ = docker.docker(&["rm", "-f", &holder]);
    let dirs = pc.data_dirs();
    pc.c.node(1).restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(mounts_under(&dirs[0]).is_empty() && loops_under(&dirs[0]).is_empty()) {
        assert!(
            Instant::now() < deadline,
            "node 1 left {:?} and {:?} behind after its restart",
            mounts_under(&dirs[0]),
            loops_under(&dirs[0])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The attachment is given back in the background once the socket is
    // served; its log line may come a moment after the mounts are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pc
        .c
        .node(1)
        .log_text()
        .contains("mount of the previous run was cleaned up")
    {
        assert!(Instant::now() < deadline, "{}", pc.c.node(1).log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Node 2 still serves the socket; the volume is free again and can be
    // removed.
    docker.ok(&["volume", "rm", "db"]);
}

#[test]
fn a_frozen_holder_is_fenced_once_the_volume_moves() {
    if !tools_present() {
        return;
    }
    let mut pc = PluginCluster::start(
        vec![
            Some(temp_socket("fence", 1)),
            Some(temp_socket("fence", 2)),
            None,
        ],
        &["--attach-grace", "3s"],
    );
    let socks: Vec<PathBuf> = pc.socks.iter().flatten().cloned().collect();
    create(&socks[0], "f", json!({"size": "256M"}));
    let mp1 = mount(&socks[0], "f", "one");
    std::fs::write(mp1.join("before"), b"written by node 1").expect("write on node 1");
    sync_file(&mp1.join("before"));

    // Freeze node 1 (a hung or cut-off node: alive, holding the volume).
    let pid1 = pc.c.node(1).pid() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid1, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mp2 = loop {
        let m = plugin_call(
            &socks[1],
            "/VolumeDriver.Mount",
            &json!({"Name": "f", "ID": "two"}),
        );
        if err_of(&m).is_empty() {
            break PathBuf::from(m["Mountpoint"].as_str().expect("mountpoint"));
        }
        assert!(err_of(&m).contains("attached on node 1"), "{m}");
        assert!(
            Instant::now() < deadline,
            "node 2 never took the volume: {m}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        std::fs::read(mp2.join("before")).expect("read on node 2"),
        b"written by node 1"
    );
    // Node 1 wakes up and writes under its old epoch: every write reaching
    // the cluster is refused.
    let target = mp1.join("late");
    let writer = std::thread::spawn(move || {
        std::process::Command::new("dd")
            .args([
                "if=/dev/urandom",
                "bs=4k",
                "count=16",
                "oflag=direct",
                "conv=fsync",
            ])
            .arg(format!("of={}", target.display()))
            .output()
            .expect("dd")
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(pid1, libc::SIGCONT) };
    let out = writer.join().expect("writer thread");
    assert!(
        !out.status.success(),
        "a write through node 1's stale attachment succeeded: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "node 1's late write failed as it must: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let log = pc.c.node(1).log_text();
    assert!(
        log.contains("refused; the volume was attached again"),
        "{log}"
    );
    // Node 2's filesystem is untouched by it and keeps working.
    assert!(!mp2.join("late").exists());
    std::fs::write(mp2.join("after"), b"node 2").expect("write on node 2");
    sync_file(&mp2.join("after"));
    unmount(&socks[1], "f", "two");
    unmount(&socks[0], "f", "one");
    // Remounted on node 1 (the newest epoch now), the data is node 2's.
    let mp = mount(&socks[0], "f", "three");
    assert_eq!(std::fs::read(mp.join("after")).expect("read"), b"node 2");
    assert!(!mp.join("late").exists());
    unmount(&socks[0], "f", "three");
}

#[test]
fn a_mount_sent_right_after_the_holder_dies_waits_out_the_grace() {
    if !tools_present() {
        return;
    }
    let mut pc = PluginCluster::start(
        vec![
            Some(temp_socket("grace", 1)),
            Some(temp_socket("grace", 2)),
            None,
        ],
        &["--attach-grace", "3s"],
    );
    let socks: Vec<PathBuf> = pc.socks.iter().flatten().cloned().collect();
    create(&socks[0], "gr", json!({"size": "256M"}));
    pc.c.wait_converged("gr", Duration::from_secs(60));
    let _held = mount(&socks[0], "gr", "a");
    pc.c.node(1).kill9();
    // dockerd sends Mount once: one sent at once, while node 1 was heard
    // from a moment ago, must wait for the grace to pass, then succeed.
    let sent = Instant::now();
    let m = plugin_call(
        &socks[1],
        "/VolumeDriver.Mount",
        &json!({"Name": "gr", "ID": "b"}),
    );
    let took = sent.elapsed();
    assert_eq!(err_of(&m), "", "{m}");
    println!("Mount right after the holder's death answered in {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "the Mount cannot have waited out a 3 s grace in {took:?}"
    );
    unmount(&socks[1], "gr", "b");
}

fn sync_file(p: &Path) {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
}

/// Every `fence-<shard>.json` under `dir`, with the epoch of its newest fence.
fn fences_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fence-") && n.ends_with(".json"))
            {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).expect("fence file"))
                        .expect("fence JSON");
                let epoch = v["fences"]
                    .as_array()
                    .and_then(|f| f.last())
                    .and_then(|f| f[1].as_u64())
                    .unwrap_or(0);
                out.push((p, epoch));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_replica_caught_up_by_snapshot_gets_the_fence() {
    if !tools_present() {
        return;
    }
    let mut pc = PluginCluster::start(
        vec![
            Some(temp_socket("snap", 1)),
            Some(temp_socket("snap", 2)),
            None,
        ],
        // No log kept for age's sake, so node 3 is caught up by copy.
        &["--log-keep", "0s"],
    );
    let socks: Vec<PathBuf> = pc.socks.iter().flatten().cloned().collect();
    create(&socks[0], "snap", json!({"size": "512M"}));
    pc.c.wait_converged("snap", Duration::from_secs(60));
    pc.c.node(3).kill9();
    // Epoch 1 on node 1, handed over cleanly to node 2 (epoch 2): the
    // fence goes into every shard's log while node 3 is down.
    let m = plugin_call(
        &socks[0],
        "/VolumeDriver.Mount",
        &json!({"Name": "snap", "ID": "a"}),
    );
    assert_eq!(err_of(&m), "", "{m}");
    unmount(&socks[0], "snap", "a");
    let mp = mount(&socks[1], "snap", "b");
    // Enough writes after the fence that the leaders compact their logs
    // past it: node 3 must be caught up by snapshot.
    let out = std::process::Command::new("dd")
        .args([
            "if=/dev/urandom",
            "bs=1M",
            "count=256",
            "oflag=direct",
            "conv=fsync",
        ])
        .arg(format!("of={}", mp.join("data").display()))
        .output()
        .expect("dd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The large writes settle into the chunk files first; only then may
    // the leaders drop the log node 3 would need.
    pc.c.wait_settled(1, Duration::from_secs(60));
    pc.c.wait_settled(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    pc.c.node(3).restart();
    pc.c.wait_converged("snap", Duration::from_secs(120));
    let log = pc.c.node(3).log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("shard snapshot installed") && l.contains("fence=2")),
        "node 3 should be caught up by a snapshot carrying fence 2: {log}"
    );
    let fences = fences_under(pc.c.node(3).data_dir());
    assert!(!fences.is_empty(), "node 3 has no fence files");
    for (path, epoch) in &fences {
        assert_eq!(*epoch, 2, "{}", path.display());
    }
    unmount(&socks[1], "snap", "b");
}

#[test]
fn an_unmount_that_finds_the_filesystem_busy_is_finished_later() {
    if !tools_present() {
        return;
    }
    let pc = PluginCluster::start(vec![Some(temp_socket("busy", 1)), None, None], &[]);
    let sock = pc.sock(1).to_path_buf();
    create(&sock, "busy", json!({"size": "128M"}));
    let mp = mount(&sock, "busy", "c1");
    // Something outside Docker keeps a file open in the filesystem.
    let holder = std::fs::File::create(mp.join("open")).expect("open a file");
    let u = plugin_call(
        &sock,
        "/VolumeDriver.Unmount",
        &json!({"Name": "busy", "ID": "c1"}),
    );
    assert!(err_of(&u).contains("busy"), "{u}");
    let get = plugin_call(&sock, "/VolumeDriver.Get", &json!({"Name": "busy"}));
    assert_eq!(get["Volume"]["Status"]["attached_to_node"], 1, "{get}");
    // Once it is closed, the sweep finishes the unmount and gives the
    // attachment back.
    drop(holder);
    let dir = pc.c.nodes[0].data_dir().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let get = plugin_call(&sock, "/VolumeDriver.Get", &json!({"Name": "busy"}));
        let free = get["Volume"]["Status"].get("attached_to_node").is_none();
        if free && mounts_under(&dir).is_empty() && loops_under(&dir).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still mounted: {get} {:?} {:?}",
            mounts_under(&dir),
            loops_under(&dir)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_swarm_service_mounts_a_raftblock_volume() {
    if !tools_present() {
        return;
    }
    let _one_at_a_time = exclusive();
    let (driver, socket) = driver_name("swarm");
    let _pc = PluginCluster::start(vec![Some(socket), None, None], &[]);
    let docker = DockerEngine::start();
    docker.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    // Swarm places a task only on nodes that report the volume driver, and
    // dockerd reports a legacy plugin once it has activated it: any volume
    // call does that (on a real host, the first `docker volume ls`).
    docker.ok(&["volume", "ls"]);
    // The README's service example: Swarm creates the volume with its
    // options on the node the task lands on, then mounts it.
    let mount = format!(
        "type=volume,source=swdata,target=/data,volume-driver={driver},volume-opt=size=256M,volume-opt=replicas=3"
    );
    docker.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "sw",
        "--replicas",
        "1",
        "--mount",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "echo from-swarm > /data/f && sync && sleep 600",
    ]);
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let id = docker.ok(&["ps", "-q", "--filter", "name=sw.1"]);
        if !id.is_empty() {
            let out = docker.docker(&["exec", &id, "cat", "/data/f"]);
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the service task never ran: {}",
            docker.ok(&["service", "ps", "--no-trunc", "sw"])
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(got, "from-swarm");
    let inspect = docker.ok(&["volume", "inspect", "swdata"]);
    assert!(
        inspect.contains(&driver) && inspect.contains("268435456"),
        "{inspect}"
    );
    docker.ok(&["service", "rm", "sw"]);
    // The task's container goes away, the volume is unmounted, then it can
    // be removed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker.docker(&["volume", "rm", "swdata"]).status.success() {
        assert!(Instant::now() < deadline, "swdata never became free");
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = docker.docker(&["swarm", "leave", "--force"]);
}

/// A mount whose record cannot be saved is undone, not left half done:
/// dockerd is told it failed and will not unmount it, so nothing may stay
/// mounted or attached; once the table can be written again it mounts.
#[test]
fn a_mount_that_cannot_be_recorded_is_undone() {
    if !tools_present() {
        return;
    }
    let pc = PluginCluster::start(vec![Some(temp_socket("rec", 1)), None, None], &[]);
    let sock = pc.sock(1).to_path_buf();
    create(&sock, "rec", json!({"size": "64M"}));
    // The table goes to a temporary file first: a directory there fails it.
    let docker_dir = pc.c.nodes[0].data_dir().join("docker");
    let blocker = docker_dir.join("mounts.json.tmp");
    std::fs::create_dir_all(&blocker).expect("blocker");
    let m = plugin_call(
        &sock,
        "/VolumeDriver.Mount",
        &json!({"Name": "rec", "ID": "a"}),
    );
    assert!(err_of(&m).contains("mounts.json"), "the table's error: {m}");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    assert!(
        !mounts.contains(&docker_dir.display().to_string()),
        "nothing stays mounted: {mounts}"
    );
    let info = pc.c.nodes[1].cli(&["volume", "info", "rec", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("volume info");
    assert!(
        info["attached_to"].is_null(),
        "the attachment was given back: {info}"
    );
    std::fs::remove_dir(&blocker).expect("unblock");
    // A request that is not what the endpoint takes is a clear error, and
    // counted with the failed calls.
    let bad = plugin_call(&sock, "/VolumeDriver.Mount", &json!({"Name": 5}));
    assert!(err_of(&bad).contains("request"), "{bad}");
    let errors = pc.c.nodes[0]
        .metric("raftblock_plugin_calls_total{endpoint=\"Mount\",result=\"error\"}")
        .expect("failed Mount calls counted");
    assert!(
        errors >= 2.0,
        "the unrecorded mount and the malformed one: {errors}"
    );
    let mp = mount(&sock, "rec", "b");
    assert!(mp.exists());
    unmount(&sock, "rec", "b");
}

/// `raftblock volume resize` grows a volume under a container that keeps
/// writing to it: the loop device and the XFS on it grow online, `df` in
/// the container shows the new size, and no write fails. (XFS, because
/// growing ext4 online needs CAP_SYS_RESOURCE, which this sandbox's
/// bounding set lacks: `resize2fs` gets EPERM here even on a plain loop
/// device.) A shrink of the
/// attached volume is refused; creating it again with its old size (as
/// Swarm does) is still fine.
#[test]
fn a_volume_grows_under_a_writing_container() {
    if !tools_present() {
        return;
    }
    let _one_at_a_time = exclusive();
    let (driver, socket) = driver_name("grow");
    let mut pc = PluginCluster::start(vec![Some(socket), None, None], &[]);
    let docker = DockerEngine::start();
    let create = [
        "volume",
        "create",
        "-d",
        &driver,
        "-o",
        "size=512M",
        "-o",
        "fs=xfs",
        "grow",
    ];
    docker.ok(&create);
    let writer = docker.ok(&[
        "run", "-d", "--network", "none", "-v", "grow:/data", IMAGE, "sh", "-c",
        "i=0; while true; do dd if=/dev/urandom of=/data/f$((i % 8)) bs=64k count=16 conv=fsync 2>/dev/null || { echo WRITE-FAILED; exit 1; }; i=$((i + 1)); done",
    ]);
    let df_kib = |docker: &DockerEngine| -> u64 {
        let out = docker.ok(&["exec", &writer, "sh", "-c", "df -k /data"]);
        out.lines()
            .last()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("df output: {out}"))
    };
    let before = df_kib(&docker);
    assert!(before < 512 * 1024, "df before: {before} KiB");
    let t = Instant::now();
    let out =
        pc.c.node(2)
            .cli(&["volume", "resize", "grow", "--size", "1G"]);
    assert!(out.status.success(), "resize: {out:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let kib = df_kib(&docker);
        if kib > 900 * 1024 {
            break kib;
        }
        assert!(
            Instant::now() < deadline,
            "df in the container still shows {kib} KiB; plugin log: {}",
            pc.c.node(1).log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "df in the container: {before} KiB before, {after} KiB after the resize ({:?})",
        t.elapsed()
    );
    // The writer kept going through it.
    std::thread::sleep(Duration::from_secs(2));
    let logs = docker.ok(&["logs", &writer]);
    assert!(!logs.contains("WRITE-FAILED"), "{logs}");
    let running = docker.ok(&["inspect", "-f", "{{.State.Running}}", &writer]);
    assert_eq!(running, "true", "the writer stopped: {logs}");
    // The new space is usable: a file larger than the old volume.
    docker.ok(&[
        "exec",
        &writer,
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=1M count=400 conv=fsync && rm /data/big",
    ]);
    let out = pc.c.node(1).cli(&[
        "volume",
        "resize",
        "grow",
        "--size",
        "256M",
        "--allow-shrink",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("attached"), "{out:?}");
    docker.ok(&create);
    docker.ok(&["rm", "-f", &writer]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker.docker(&["volume", "rm", "grow"]).status.success() {
        assert!(Instant::now() < deadline, "grow never became free");
        std::thread::sleep(Duration::from_millis(500));
    }
}
