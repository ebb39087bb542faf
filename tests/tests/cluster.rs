//! A real 3-node cluster (three `raftblock serve` processes): volumes are
//! cluster-wide, replicas land on distinct nodes, any node serves any volume
//! over NBD, and acknowledged writes survive SIGKILL of a shard leader
//! under load, a follower that was down, all nodes killed at once, and a
//! torn or corrupt WAL.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::{Netns, TestCluster};
use raftblock_tests::{qemu_io, require_tool, run_ok, sha256_of};

const MIB: u64 = 1 << 20;

#[test]
fn volumes_are_cluster_wide_and_served_by_every_node() {
    let mut c = TestCluster::start(3);
    let v = c.create_volume("r3", 96 * MIB, 3, None);
    assert_eq!(v["replicas"], 3);
    for s in v["shards"].as_array().expect("shards") {
        let mut nodes: Vec<u64> = s["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(nodes.len(), 3, "replicas on distinct nodes: {s}");
    }
    // Visible from every node right away.
    for d in &c.nodes {
        let out = d.cli(&["volume", "list", "--json"]);
        assert!(out.status.success());
        let list: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(
            list.as_array()
                .is_some_and(|l| l.iter().any(|v| v["name"] == "r3")),
            "r3 listed on {}: {list}",
            d.admin
        );
    }
    // More replicas than nodes is a clear error, and nothing is created.
    let out = c.nodes[1].cli(&["volume", "create", "r4", "--size", "64M", "--replicas", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 replicas asked for"), "{err}");
    assert!(!c.nodes[2].cli(&["volume", "info", "r4"]).status.success());
    // Fewer replicas work too; nodes without a replica forward.
    c.create_volume("r1", 64 * MIB, 1, None);
    c.create_volume("r2", 64 * MIB, 2, None);
    // Creating an existing volume is a conflict.
    let out = c.nodes[2].cli(&["volume", "create", "r1", "--size", "64M"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    if require_tool("qemu-io") {
        for vol in ["r3", "r1", "r2"] {
            qemu_io(
                &c.nodes[0].uri(vol),
                &[
                    "write -P 0x5a 0 1M",
                    "write -P 0xa5 40M 68k",
                    "write -z 41M 8k",
                ],
            );
            for d in &c.nodes {
                qemu_io(
                    &d.uri(vol),
                    &[
                        "read -P 0x5a 0 1M",
                        "read -P 0xa5 40M 68k",
                        "read -P 0 41M 8k",
                        "read -P 0 20M 64k",
                    ],
                );
            }
        }
        // A write through node 3 is read back through node 1 at once.
        qemu_io(&c.nodes[2].uri("r3"), &["write -P 0x77 1M 4k"]);
        qemu_io(&c.nodes[0].uri("r3"), &["read -P 0x77 1M 4k"]);

        // Deleting a volume an NBD client uses through another node is
        // refused, naming where; once it disconnects the delete goes through.
        let mut client = Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(c.nodes[2].uri("r2"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("qemu-io");
        let sample = "raftblock_nbd_connections{volume=\"r2\"}";
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.nodes[2].metric(sample) != Some(1.0) {
            assert!(Instant::now() < deadline, "{}", c.nodes[2].metrics());
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = c.nodes[0].cli(&["volume", "delete", "r2"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("1 NBD client(s) connected (node 3: 1)"),
            "{err}"
        );
        drop(client.stdin.take());
        let _ = client.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.nodes[2].metric(sample) != Some(0.0) {
            assert!(Instant::now() < deadline, "{}", c.nodes[2].metrics());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let out = c.nodes[2].cli(&["cluster", "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).expect("json");
    let nodes = st["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{st:#}");
    assert!(nodes.iter().all(|n| n["up"] == true), "{st:#}");
    c.wait_converged("r3", Duration::from_secs(30));
    let text = c.nodes[0].cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("VOLUME r3") && text.contains("leader"),
        "{text}"
    );

    // Deleting removes it everywhere.
    let out = c.nodes[1].cli(&["volume", "delete", "r2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.nodes[0].cli(&["volume", "info", "r2"]).status.success());
}

fn fio_json(path: &Path) -> Value {
    let text = std::fs::read(path).expect("fio output");
    serde_json::from_slice(&text).expect("fio json")
}

#[test]
fn killing_a_shard_leader_during_fio_verify_loses_no_write() {
    if !require_tool("fio") || !require_tool("nbdinfo") {
        return;
    }
    let mut c = TestCluster::start(3);
    // One shard, so the leader we kill is the one being written.
    c.create_volume("f", 64 * MIB, 3, Some(1));
    c.wait_converged("f", Duration::from_secs(30));
    let leader = c.leader("f", 0).expect("a leader");
    let client = if leader == 1 { 2 } else { 1 };
    // A volume's leaders move to the node serving it, which would make the
    // client's node the leader. With three volumes on three nodes a node
    // serves at most two with local leaders, so the client's node serves
    // two others first and "f" keeps its leader on another node.
    for v in ["g", "h"] {
        c.create_volume(v, 16 * MIB, 3, Some(1));
    }
    for v in ["g", "h"] {
        let out = Command::new("nbdinfo")
            .arg(c.node(client).uri(v))
            .output()
            .expect("nbdinfo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.wait_leaders_on(v, client, Duration::from_secs(30));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("fio.json");
    let mut fio = Command::new("fio")
        // fio drops a verify state file into its working directory.
        .current_dir(tmp.path())
        .args([
            "--name=failover",
            "--ioengine=nbd",
            "--rw=randwrite",
            // Mostly 4 KiB, some writes large enough that their entries
            // reach the log and the transport in pieces (16 KiB and up).
            "--bssplit=4k/70:64k/20:256k/10",
            "--iodepth=16",
            "--size=64M",
            "--io_size=64M",
            // Paced, so fio is still writing when the leader dies however
            // fast the cluster is (about 8 s of writes).
            "--rate=8m",
            "--verify=crc32c",
            "--do_verify=1",
            "--randrepeat=1",
            "--output-format=json",
        ])
        .arg(format!("--uri={}", c.node(client).uri("f")))
        .arg(format!("--output={}", out.display()))
        .spawn()
        .expect("spawn fio");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        fio.try_wait().expect("fio").is_none(),
        "fio still writing when the leader dies"
    );
    assert_eq!(
        c.leader("f", 0),
        Some(leader),
        "the leader stayed off the client's node while fio writes"
    );
    let killed_at = Instant::now();
    c.node(leader).kill9();
    let status = fio.wait().expect("fio");
    let v = fio_json(&out);
    let job = &v["jobs"][0];
    assert!(status.success(), "fio failed: {job}");
    assert_eq!(job["error"].as_i64(), Some(0), "fio error: {job}");
    let max_ms = job["write"]["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1e6;
    println!(
        "leader (node {leader}) killed; fio through node {client} finished {:.1} s later; \
         longest write stall {max_ms:.0} ms; verify pass over every written block succeeded",
        killed_at.elapsed().as_secs_f64()
    );
    // A new leader took over among the survivors.
    let new = c.leader("f", 0).expect("a new leader");
    assert_ne!(new, leader);
    // The killed node comes back and catches up.
    c.node(leader).restart();
    c.wait_converged("f", Duration::from_secs(60));
}

#[test]
fn a_follower_that_was_down_catches_up_by_snapshot_to_identical_chunks() {
    if !require_tool("nbdcopy") || !require_tool("qemu-io") {
        return;
    }
    // No log kept for age's sake: a replica that was down is caught up by
    // copy (the short-outage test below covers the log).
    let mut c = TestCluster::start_each(3, |_| vec!["--log-keep".into(), "0s".into()]);
    c.create_volume("cu", 256 * MIB, 3, None);
    c.wait_converged("cu", Duration::from_secs(30));
    c.node(3).kill9();
    // 192 MiB of data written while node 3 is down (some shards lose their
    // leader with it and elect another).
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src.img");
    std::fs::write(&src, raftblock_tests::pattern(7, (192 * MIB) as usize)).expect("write src");
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(c.node(1).uri("cu"))
            .arg("--flush"),
    );
    // Let the leaders settle the large writes into their chunk files, make
    // their applied data durable and drop the log the dead node would
    // need, so it has to be caught up by snapshot.
    c.wait_settled(1, Duration::from_secs(60));
    c.wait_settled(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    c.node(3).restart();
    c.wait_converged("cu", Duration::from_secs(120));
    let log = c.node(3).log_text();
    assert!(
        log.contains("shard snapshot installed") && log.contains("staged shard copy swapped in"),
        "node 3 was caught up by snapshot: {log}"
    );
    // The restarted node serves the data itself...
    let back = tmp.path().join("back.img");
    run_ok(Command::new("nbdcopy").arg(c.node(3).uri("cu")).arg(&back));
    let want = sha256_of(&src);
    let got = {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&back)
            .expect("back");
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(0));
        f.set_len(192 * MIB).expect("truncate to the written part");
        sha256_of(&back)
    };
    assert_eq!(got, want, "data read through the restarted node");
    // ...and its chunk files and checksum tables equal node 1's.
    c.assert_same_chunks(1, 3);
}

#[test]
fn a_short_outage_is_caught_up_from_the_log() {
    if !require_tool("nbdcopy") {
        return;
    }
    // The default retention: a replica back within 90 s replays entries.
    let mut c = TestCluster::start(3);
    c.create_volume("so", 128 * MIB, 3, None);
    c.wait_converged("so", Duration::from_secs(30));
    c.node(3).kill9();
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src.img");
    std::fs::write(&src, raftblock_tests::pattern(11, (64 * MIB) as usize)).expect("write src");
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(c.node(1).uri("so"))
            .arg("--flush"),
    );
    // Long enough for the leaders to make their data durable and compact
    // whatever the retention lets go.
    std::thread::sleep(Duration::from_secs(7));
    c.node(3).restart();
    c.wait_converged("so", Duration::from_secs(60));
    let log = c.node(3).log_text();
    assert!(
        !log.contains("shard snapshot"),
        "node 3 should have replayed the log, not copied chunks: {log}"
    );
    c.assert_same_chunks(1, 3);
}

#[test]
fn catch_up_by_copy_sends_only_the_chunks_that_differ() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut c = TestCluster::start_each(3, |_| vec!["--log-keep".into(), "0s".into()]);
    // Two shards of two 64 MiB chunks each: shard 0 holds chunks 0 and 2.
    c.create_volume("df", 256 * MIB, 3, Some(2));
    c.wait_converged("df", Duration::from_secs(30));
    for chunk in 0..4u64 {
        let off = chunk * 64 * MIB;
        qemu_io(
            &c.node(1).uri("df"),
            &[&format!("write -P 0x{:x} {off} 1M", chunk + 1)],
        );
    }
    // Node 1 serves the volume, so its shards' leaders move there: let that
    // happen (a new leader's first entry) before node 3 goes down.
    c.wait_leaders_on("df", 1, Duration::from_secs(30));
    c.wait_converged("df", Duration::from_secs(30));
    c.node(3).kill9();
    // Only chunk 0 changes while node 3 is down.
    qemu_io(&c.node(1).uri("df"), &["write -P 0x77 4M 1M"]);
    std::thread::sleep(Duration::from_secs(7));
    c.node(3).restart();
    c.wait_converged("df", Duration::from_secs(60));
    let log = c.node(3).log_text();
    let staged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("shard snapshot staged"))
        .collect();
    assert!(!staged.is_empty(), "node 3 was caught up by copy: {log}");
    for l in &staged {
        assert!(
            l.contains("chunks=2") && l.contains("differed=1"),
            "only chunk 0 differed: {l}"
        );
    }
    assert!(log.contains("staged shard copy swapped in"), "{log}");
    qemu_io(
        &c.node(3).uri("df"),
        &["read -P 0x77 4M 1M", "read -P 0x3 128M 1M"],
    );
    c.assert_same_chunks(1, 3);
}

#[test]
fn all_nodes_killed_and_restarted_keep_every_acknowledged_write() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut c = TestCluster::start(3);
    c.create_volume("all", 128 * MIB, 3, None);
    let writes: Vec<String> = (0..24u64)
        .map(|i| format!("write -P {} {}M 64k", 0x10 + i, i * 5))
        .collect();
    let w: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&c.node(2).uri("all"), &w);
    for d in c.nodes.iter_mut() {
        d.kill9();
    }
    for d in c.nodes.iter_mut() {
        d.restart();
    }
    let reads: Vec<String> = (0..24u64)
        .map(|i| format!("read -P {} {}M 64k", 0x10 + i, i * 5))
        .collect();
    let r: Vec<&str> = reads.iter().map(String::as_str).collect();
    for id in 1..=3 {
        qemu_io(&c.node(id).uri("all"), &r);
    }
}

fn wal_segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .expect("wal dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Where the log in a WAL segment ends: after the last record, found by
/// its header magic ("RLBG") and its payload length.
fn log_end(segment: &[u8]) -> u64 {
    let mut at = segment.len().saturating_sub(16);
    loop {
        if segment[at..].starts_with(b"RLBG") {
            let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().expect("4 bytes"));
            let end = at + 16 + len as usize;
            if end <= segment.len() {
                return end as u64;
            }
        }
        assert!(at > 0, "no record in the segment");
        at -= 1;
    }
}

#[test]
fn a_torn_wal_tail_is_cut_and_a_corrupt_record_stops_only_that_node() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut c = TestCluster::start(3);
    c.create_volume("w", 64 * MIB, 3, None);
    qemu_io(&c.node(1).uri("w"), &["write -P 0x42 0 2M"]);
    c.wait_converged("w", Duration::from_secs(30));

    // Torn tail: the node dies while writing a record, so only its first
    // bytes reach the segment (a header and part of the payload; the copy
    // of the segment's first record stands in for the record being written).
    c.node(3).kill9();
    let dir3 = c.node(3).data_dir().to_path_buf();
    let last = wal_segments(&dir3).pop().expect("a segment");
    let bytes = std::fs::read(&last).expect("segment");
    let partial = &bytes[16..16 + 16 + 8];
    {
        // At the end of the log, not of the file (segments are allocated
        // whole when created).
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .expect("open");
        f.write_all_at(partial, log_end(&bytes))
            .expect("write a partial record");
    }
    c.node(3).restart();
    assert!(
        c.node(3).log_text().contains("cut a torn last record"),
        "{}",
        c.node(3).log_text()
    );
    qemu_io(&c.node(1).uri("w"), &["write -P 0x43 4M 1M"]);
    c.wait_converged("w", Duration::from_secs(60));
    qemu_io(
        &c.node(3).uri("w"),
        &["read -P 0x42 0 2M", "read -P 0x43 4M 1M"],
    );

    // Corrupt middle: flip a byte inside the first record of the first segment.
    c.node(2).kill9();
    let dir2 = c.node(2).data_dir().to_path_buf();
    let first = wal_segments(&dir2).remove(0);
    let mut bytes = std::fs::read(&first).expect("segment");
    let at = 100.min(bytes.len() - 1);
    bytes[at] ^= 0xff;
    std::fs::write(&first, &bytes).expect("write back");
    let restarted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.node(2).restart()));
    assert!(restarted.is_err(), "node 2 must refuse a corrupt WAL");
    let log = c.node(2).log_text();
    assert!(
        log.contains(&first.display().to_string()) && log.contains("offset"),
        "the error names the file and offset: {log}"
    );
    // The other two go on serving reads and writes.
    qemu_io(
        &c.node(1).uri("w"),
        &["write -P 0x44 8M 1M", "read -P 0x42 0 2M"],
    );
    qemu_io(&c.node(3).uri("w"), &["read -P 0x44 8M 1M"]);
}

#[test]
fn a_node_cut_off_cannot_acknowledge_writes_and_converges_after_healing() {
    if !require_tool("ip") || !require_tool("qemu-io") {
        return;
    }
    let Some(net) = Netns::create() else {
        return;
    };
    let mut c = TestCluster::start_with_node3_in(&net, &["--leader-wait", "5s"]);
    c.create_volume("p", 64 * MIB, 3, Some(1));
    qemu_io(&c.node(1).uri("p"), &["write -P 0x11 0 64k"]);
    c.wait_converged("p", Duration::from_secs(30));

    net.cut();
    // Through the cut-off node: no quorum, so the write is never
    // acknowledged (it fails once --leader-wait runs out).
    let t = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.name,
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "write -P 0x22 0 64k",
        ])
        .arg(c.node(3).uri("p"))
        .output()
        .expect("qemu-io in the namespace");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("failed") || !out.status.success(),
        "a write through the cut-off node must not be acknowledged: {text}"
    );
    println!(
        "write through the cut-off node failed after {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        text.trim()
    );
    // The majority side goes on, and never saw the refused write.
    qemu_io(
        &c.node(1).uri("p"),
        &["write -P 0x33 1M 64k", "read -P 0x11 0 64k"],
    );
    qemu_io(&c.node(2).uri("p"), &["read -P 0x33 1M 64k"]);

    net.heal();
    c.wait_converged("p", Duration::from_secs(60));
    qemu_io(
        &c.node(3).uri("p"),
        &["read -P 0x11 0 64k", "read -P 0x33 1M 64k"],
    );
}

#[test]
fn a_node_joins_a_running_cluster_and_takes_replicas() {
    if !require_tool("qemu-io") {
        return;
    }
    let mut c = TestCluster::start(3);
    c.create_volume("before", 64 * MIB, 3, None);
    qemu_io(&c.node(1).uri("before"), &["write -P 0x61 0 1M"]);

    // Node 4 knows only one member's admin address.
    c.join(4);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status();
        let up = st["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["up"] == true).count())
            .unwrap_or(0);
        if up == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 never came up: {st:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Four nodes keep three metadata voters; the fourth follows.
    wait_meta_members(&mut c, &[1, 2, 3], &[4]);
    // It serves a volume created before it existed, through forwarding.
    let out = qemu_io(&c.node(4).uri("before"), &["read -P 0x61 0 1M"]);
    assert!(!out.contains("Pattern verification failed"), "{out}");

    // New volumes place replicas on it.
    let v = c.create_volume("after", 256 * MIB, 3, Some(4));
    let on_4 = v["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter(|s| {
            s["replicas"]
                .as_array()
                .is_some_and(|r| r.contains(&4.into()))
        })
        .count();
    assert!(on_4 > 0, "no replica of `after` on the new node: {v}");
    qemu_io(&c.node(4).uri("after"), &["write -P 0x62 0 8M"]);
    c.wait_converged("after", Duration::from_secs(60));
    let out = qemu_io(&c.node(2).uri("after"), &["read -P 0x62 0 8M"]);
    assert!(!out.contains("Pattern verification failed"), "{out}");

    // Restarted with the same flags, it is a member, not a new joiner.
    c.node(4).kill9();
    c.node(4).restart();
    let out = qemu_io(&c.node(4).uri("after"), &["read -P 0x62 0 8M"]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(
        !c.node(4).log_text().contains("joining; retrying"),
        "{}",
        c.node(4).log_text()
    );

    // A fifth node makes five voters: it and the fourth are promoted in one
    // joint change, and the group keeps committing.
    c.join(5);
    wait_meta_members(&mut c, &[1, 2, 3, 4, 5], &[]);
    c.create_volume("five", 64 * MIB, 3, None);
}

/// Waits until the metadata group has exactly these voters and learners.
fn wait_meta_members(c: &mut TestCluster, voters: &[u64], learners: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status();
        let ids = |k: &str| -> Vec<u64> {
            st[k]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default()
        };
        if ids("meta_voters") == voters && ids("meta_learners") == learners {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metadata group never had voters {voters:?} and learners {learners:?}: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A node holding a replica of a shard it does not lead serves reads from
/// its own chunk files after a ReadIndex (Raft forwards it to the leader;
/// the data does not cross nodes), and what it reads is what was written.
#[test]
fn a_follower_serves_reads_from_its_own_replica() {
    if !require_tool("nbdcopy") || !require_tool("nbdinfo") {
        return;
    }
    let mut c = TestCluster::start(3);
    // Node 2 serves two other volumes first: its share of serving nodes is
    // full, so the leaders of `fr` do not all move to it when it reads.
    for v in ["a", "b"] {
        c.create_volume(v, 16 * MIB, 3, None);
        run_ok(Command::new("nbdinfo").arg(c.node(2).uri(v)));
    }
    c.create_volume("fr", 48 * MIB, 3, Some(3));
    c.wait_converged("fr", Duration::from_secs(30));
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src.img");
    std::fs::write(&src, raftblock_tests::pattern(11, (48 * MIB) as usize)).expect("write src");
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(c.node(1).uri("fr"))
            .arg("--flush"),
    );
    let reads = |c: &mut TestCluster| {
        c.node(2)
            .metric("raftblock_follower_reads_total")
            .expect("follower read counter")
    };
    let before = reads(&mut c);
    let back = tmp.path().join("back.img");
    run_ok(Command::new("nbdcopy").arg(c.node(2).uri("fr")).arg(&back));
    assert_eq!(
        sha256_of(&back),
        sha256_of(&src),
        "node 2 read back what was written"
    );
    let status = c.status();
    let led_elsewhere = status["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "fr"))
        .and_then(|v| v["shards"].as_array())
        .is_some_and(|s| s.iter().any(|s| s["leader"].as_u64() != Some(2)));
    assert!(
        led_elsewhere,
        "some shard of fr is led by another node: {status:#}"
    );
    let after = reads(&mut c);
    assert!(
        after > before,
        "node 2 served reads from its own replicas ({before} -> {after})"
    );
}
