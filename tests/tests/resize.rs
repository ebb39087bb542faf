//! Online resize with real processes: a volume grows while NBD clients use
//! it (new connections through every node see the new size, data on both
//! sides of the old end reads back), a shrink needs `--allow-shrink` and
//! clears what lies past the new end, and a metadata leader killed with
//! SIGKILL in the middle of a resize leaves the volume at one size on
//! every node (the next leader finishes it).

use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::TestCluster;
use raftblock_tests::{qemu_io, require_tool};

const MIB: u64 = 1 << 20;

/// The size `nbdinfo` reports for `uri`.
fn nbd_size(uri: &str) -> u64 {
    let out = Command::new("nbdinfo")
        .args(["--size", uri])
        .output()
        .expect("run nbdinfo");
    assert!(out.status.success(), "nbdinfo {uri}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("nbdinfo --size {uri}: {e}: {out:?}"))
}

/// The sizes recorded in `volume.json` of volume `name` under `data_dir`.
fn local_sizes(data_dir: &Path, name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(data_dir.join("volumes")) else {
        return out;
    };
    for d in dirs.flatten() {
        let Ok(raw) = std::fs::read(d.path().join("volume.json")) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
        if v["name"] == name {
            out.push(v["size"].as_u64().unwrap_or(0));
        }
    }
    out
}

fn resize(c: &mut TestCluster, node: u64, size: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["volume", "resize", "r", "--size", size];
    args.extend_from_slice(extra);
    c.node(node).cli(&args)
}

#[test]
fn a_volume_grows_online_shrinks_on_request_and_survives_a_leader_killed_mid_resize() {
    if !require_tool("nbdinfo") || !require_tool("qemu-io") {
        return;
    }
    // The metadata leader pauses between the shards' resize entries and
    // finishing the resize, so the test can kill it in between.
    std::env::set_var("RAFTBLOCK_TEST_RESIZE_PAUSE_MS", "3000");
    let mut c = TestCluster::start(3);
    c.create_volume_json(&json!({
        "name": "r", "size": 32 * MIB, "chunk_size": MIB, "replicas": 3, "shards": 4
    }));
    c.wait_converged("r", Duration::from_secs(60));
    let uri = |c: &mut TestCluster, n: u64| c.node(n).uri("r");
    let u1 = uri(&mut c, 1);
    qemu_io(&u1, &["write -P 0x11 0 1M", "write -P 0x22 31M 1M"]);

    // Grow while a client is connected.
    let mut held = raftblock_tests::nbd::RawNbd::connect(c.node(1).nbd, "r")
        .expect("connect a client that stays");
    let out = resize(&mut c, 2, "64M", &[]);
    assert!(out.status.success(), "grow: {out:?}");
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    for n in 1..=3 {
        let u = uri(&mut c, n);
        assert_eq!(nbd_size(&u), 64 * MIB, "node {n} after the grow");
    }
    // The old connection still works within the size it was given.
    assert!(
        matches!(held.read(0, 4096), Ok(Ok(_))),
        "the held connection broke"
    );
    let u3 = uri(&mut c, 3);
    qemu_io(&u3, &["write -P 0x33 48M 1M"]);
    qemu_io(
        &u1,
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 31M 1M",
            "read -P 0x33 48M 1M",
        ],
    );

    // Shrinking needs consent; then what lies past the end is gone.
    let out = resize(&mut c, 1, "40M", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--allow-shrink"),
        "{out:?}"
    );
    assert_eq!(nbd_size(&u1), 64 * MIB, "a refused shrink changed the size");
    let out = resize(&mut c, 1, "40M", &["--allow-shrink"]);
    assert!(out.status.success(), "shrink: {out:?}");
    assert_eq!(nbd_size(&u3), 40 * MIB);
    let out = resize(&mut c, 3, "64M", &[]);
    assert!(out.status.success(), "grow again: {out:?}");
    qemu_io(
        &u1,
        &[
            "read -P 0x11 0 1M",
            "read -P 0x22 31M 1M",
            "read -P 0 48M 1M",
        ],
    );

    // Kill the metadata leader while it carries a resize through.
    let st = c.status();
    let leader = st["meta_leader"].as_u64().expect("a metadata leader");
    let asker = if leader == 1 { 2 } else { 1 };
    let admin = c.node(asker).admin_client();
    let asking = std::thread::spawn(move || admin.resize_volume("r", 96 * MIB, false));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c
        .node(leader)
        .log_text()
        .contains("test hook: pausing before finishing the resize")
    {
        assert!(
            Instant::now() < deadline,
            "the leader never reached the pause"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.node(leader).kill9();
    println!("killed the metadata leader, node {leader}, in the middle of the resize");
    let answer = asking.join().expect("the resize thread");
    assert!(
        answer.is_ok(),
        "the resize was not finished by the next leader: {answer:?}"
    );
    for n in (1..=3).filter(|n| *n != leader) {
        let u = uri(&mut c, n);
        assert_eq!(nbd_size(&u), 96 * MIB, "node {n} after the leader died");
    }
    let u = uri(&mut c, asker);
    qemu_io(&u, &["write -P 0x44 90M 1M", "read -P 0x11 0 1M"]);
    c.node(leader).restart();
    c.wait_converged("r", Duration::from_secs(120));
    let u = uri(&mut c, leader);
    assert_eq!(nbd_size(&u), 96 * MIB, "the restarted node {leader}");
    qemu_io(&u, &["read -P 0x44 90M 1M", "read -P 0 48M 1M"]);
    for n in 1..=3 {
        let sizes = local_sizes(c.node(n).data_dir(), "r");
        assert_eq!(sizes, vec![96 * MIB], "volume.json on node {n}");
    }
    for n in 2..=3 {
        c.wait_settled(1, Duration::from_secs(60));
        c.wait_settled(n, Duration::from_secs(60));
        c.assert_same_chunks(1, n);
    }
}
