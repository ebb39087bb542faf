//! Where replicas live, with real processes: draining a node under a
//! writing client moves its replicas and leaders away and lets it be
//! removed (and a drain that cannot complete is refused up front); a node
//! that joins takes its share of replicas and leaders, which then stay
//! put; volumes follow node labels (`--spread`, `--require`).

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::TestCluster;
use raftblock_tests::fio::FioVerify;
use raftblock_tests::require_tool;

const MIB: u64 = 1 << 20;

/// `(replicas, leaders)` per node id, as the status counts them.
fn counts(st: &Value) -> Vec<(u64, u64, u64)> {
    st["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["id"].as_u64().unwrap_or(0),
                n["replicas"].as_u64().unwrap_or(0),
                n["leaders"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The replica nodes of every shard of every volume.
fn placements(st: &Value) -> Vec<Vec<u64>> {
    st["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["shards"].as_array().into_iter().flatten())
        .map(|s| {
            s["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["node"].as_u64())
                .collect()
        })
        .collect()
}

#[test]
fn draining_a_node_under_load_empties_it_and_then_it_can_be_removed() {
    if !require_tool("fio") {
        return;
    }
    let mut c =
        TestCluster::start_each(4, |_| ["--recovery-rate", "8M"].map(String::from).to_vec());
    c.wait_registered(4);
    c.create_volume_json(&serde_json::json!({
        "name": "d", "size": 32 * MIB, "replicas": 3, "shards": 4, "chunk_size": 4 * MIB,
    }));
    c.wait_converged("d", Duration::from_secs(60));

    // Drained under a writing client.
    let fio = FioVerify::start(
        "drain",
        &c.node(1).uri("d"),
        &[
            "--bs=4k",
            "--iodepth=8",
            "--size=32M",
            "--io_size=24M",
            "--rate=2m",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));

    // Bounded, so a drain that never ends fails the test with the status.
    let drained = Command::new("timeout")
        .arg("180")
        .arg(raftblock_tests::raftblock_bin())
        .args(["node", "drain", "2", "--wait"])
        .env("RAFTBLOCK_SERVER", c.node(1).admin.to_string())
        .output()
        .expect("run raftblock node drain");
    assert!(
        drained.status.success(),
        "{}\n{:#}",
        String::from_utf8_lossy(&drained.stderr),
        c.status()
    );
    let st = c.status();
    let node2 = counts(&st).into_iter().find(|(id, _, _)| *id == 2);
    assert_eq!(node2, Some((2, 0, 0)), "node 2 holds nothing: {st:#}");
    assert!(
        placements(&st)
            .iter()
            .all(|p| !p.contains(&2) && p.len() == 3),
        "{st:#}"
    );
    // Three nodes left for three replicas: draining another is refused.
    let refused = c.node(1).cli(&["node", "drain", "3"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("cannot be drained") && why.contains("no other node"),
        "{why}"
    );
    // A node holding replicas cannot be removed; the drained one can.
    let busy = c.node(1).cli(&["node", "remove", "3"]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("drain it first"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );

    fio.finish();

    let removed = c.node(1).cli(&["node", "remove", "2"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.status();
        let ids: Vec<u64> = counts(&st).iter().map(|(id, _, _)| *id).collect();
        let voters = st["meta_voters"].as_array().cloned().unwrap_or_default();
        if ids == vec![1, 3, 4] && !voters.contains(&2.into()) && voters.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "node 2 still a member: {st:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    c.wait_converged("d", Duration::from_secs(60));
    let verify = c.node(1).cli(&["volume", "verify", "d", "--json"]);
    let v: Value = serde_json::from_slice(&verify.stdout).expect("verify json");
    assert!(verify.status.success(), "{v:#}");
    assert_eq!(v["divergent"], 0, "{v:#}");
}

#[test]
fn a_joining_node_takes_its_share_of_replicas_and_leaders_which_then_stay_put() {
    let mut c = TestCluster::start(3);
    c.wait_registered(3);
    for v in ["a", "b"] {
        c.create_volume(v, 16 * MIB, 3, Some(3));
    }
    c.join(4);
    // 18 replicas over four nodes: 4 or 5 each; leaders (6) 1 or 2 each.
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = loop {
        let st = c.status();
        let n = counts(&st);
        let even = n.len() == 4
            && n.iter().all(|(_, r, _)| (4..=5).contains(r))
            && n.iter().all(|(_, _, l)| (1..=2).contains(l))
            && st["moves"].as_array().is_some_and(Vec::is_empty);
        if even {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never spread: {n:?}\n{st:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Nothing moves back and forth afterwards.
    let before = placements(&c.status());
    std::thread::sleep(Duration::from_secs(8));
    let st = c.status();
    assert_eq!(placements(&st), before, "replicas moved again: {st:#}");
    assert!(st["moves"].as_array().is_some_and(Vec::is_empty), "{st:#}");
    println!("after node 4 joined: (node, replicas, leaders) = {settled:?}");
}

#[test]
fn volumes_follow_node_labels() {
    let zones = [
        "zone=a,disk=ssd",
        "zone=a,disk=hdd",
        "zone=b,disk=ssd",
        "zone=c,disk=ssd",
    ];
    let mut c = TestCluster::start_each(4, |id| {
        vec![
            "--labels".into(),
            zones[id as usize - 1].into(),
            "--down-out-interval".into(),
            "3s".into(),
        ]
    });
    c.wait_registered(4);
    let zone_of = |n: u64| {
        zones[n as usize - 1]
            .split(',')
            .next()
            .unwrap_or("")
            .to_string()
    };

    let out = c.node(1).cli(&[
        "volume",
        "create",
        "z",
        "--size",
        "16M",
        "--replicas",
        "3",
        "--spread",
        "zone",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.status();
    for p in placements(&st) {
        let mut z: Vec<String> = p.iter().map(|n| zone_of(*n)).collect();
        z.sort();
        z.dedup();
        assert_eq!(z.len(), 3, "replicas {p:?} share a zone");
    }
    // Only ssd nodes (1, 3, 4), one per zone.
    let out = c.node(1).cli(&[
        "volume",
        "create",
        "s",
        "--size",
        "16M",
        "--replicas",
        "3",
        "--spread",
        "zone",
        "--require",
        "disk=ssd",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = c.node(1).admin_client().volume("s").expect("info");
    for s in info["shards"].as_array().expect("shards") {
        let mut r: Vec<u64> = s["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        r.sort_unstable();
        assert_eq!(r, vec![1, 3, 4], "{info:#}");
    }
    // Rules that no placement can meet are a clear error.
    for (args, says) in [
        (
            vec!["--replicas", "4", "--spread", "zone"],
            "spread over zone",
        ),
        (
            vec!["--replicas", "1", "--require", "disk=nvme"],
            "requiring disk=nvme",
        ),
    ] {
        let mut cmd = vec!["volume", "create", "no", "--size", "16M"];
        cmd.extend(args);
        let out = c.node(1).cli(&cmd);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    // Healing keeps the rule: zone b's only node lost, its replicas have
    // nowhere to go (node 2 is in zone a, like node 1), and the shards say
    // why.
    c.node(3).kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status();
        let reasons: Vec<String> = st["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["name"] == "z")
            .flat_map(|v| v["shards"].as_array().into_iter().flatten())
            .filter_map(|s| s["reason"].as_str().map(String::from))
            .collect();
        let stuck = !reasons.is_empty()
            && reasons.iter().all(|r| {
                r.contains("no node can take a replica") && r.contains("spread over zone")
            });
        if stuck {
            assert!(st["moves"].as_array().is_some_and(Vec::is_empty), "{st:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{reasons:?}\n{st:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
