//! A cluster that watches and heals itself (real processes, four nodes):
//! the metadata leader marks a node out once it has been down for the
//! down-out interval, takes it back in when it returns, and leaves alone a
//! node in maintenance and the nodes of a cluster with more than a third of
//! them down. The replicas of a node lost for good are re-created on the
//! others under a writing client, the metadata group gets its third voter
//! back, and the node, when it returns, finds its replicas removed.

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::{chunk_files, TestCluster};
use raftblock_tests::fio::FioVerify;
use raftblock_tests::{require_tool, sha256_of};

#[test]
fn down_nodes_are_marked_out_unless_in_maintenance_or_too_many() {
    let interval = Duration::from_secs(3);
    let mut c = TestCluster::start_each(4, |_| vec!["--down-out-interval".into(), "3s".into()]);
    c.create_volume("w", 16 << 20, 3, None);
    // Every node has registered in the metadata (they do so as they start).
    c.wait_registered(4);

    // Maintenance, through the CLI: node 3 down stays in.
    let out = c.node(1).cli(&["node", "maintenance", "3", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.node_flags(3).2, "node 3 in maintenance");
    c.node(3).kill9();
    c.stays_in(3, interval * 4, "while in maintenance");
    c.node(3).restart();
    let out = c.node(1).cli(&["node", "maintenance", "3", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!c.node_flags(3).2);
    let bad = c.node(1).cli(&["node", "maintenance", "9", "on"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // One node of four down past the interval: out; back: in again.
    c.node(4).kill9();
    c.wait_out(4, true, interval + Duration::from_secs(20));
    let log: String = (1..=3).map(|n| c.node(n).log_text()).collect();
    assert!(log.contains("node 4 marked out"), "a warning says so");
    c.node(4).restart();
    c.wait_out(4, false, Duration::from_secs(20));

    // Two of four down: the cluster is the problem; nobody goes out.
    c.node(3).kill9();
    c.node(4).kill9();
    c.stays_in(3, interval * 4, "with half the nodes down");
    assert!(
        !c.node_flags(4).1,
        "node 4 was marked out with half the nodes down"
    );
}

/// The number after `key` in a log line (`key=12.5 ...`).
fn field(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The voters of every shard of `volume` as the status shows them (the
/// nodes of its replicas that are not learners), and the shard states.
fn shard_voters(st: &Value, volume: &str) -> Vec<(Vec<u64>, String)> {
    st["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == volume))
        .and_then(|v| v["shards"].as_array())
        .map(|shards| {
            shards
                .iter()
                .map(|s| {
                    let state = s["state"].as_str().unwrap_or("?").to_string();
                    (raftblock_tests::cluster::voters(s), state)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_lost_nodes_replicas_are_recreated_under_load_and_it_is_cleaned_up_on_return() {
    if !require_tool("fio") || !require_tool("nbdcopy") {
        return;
    }
    const MIB: u64 = 1 << 20;
    let mut c = TestCluster::start_each(4, |_| {
        ["--down-out-interval", "3s", "--recovery-rate", "1M"]
            .map(String::from)
            .to_vec()
    });
    c.wait_registered(4);
    // Four shards of four 4 MiB chunks, spread over the four nodes: node 3
    // holds three of them.
    c.create_volume_json(&serde_json::json!({
        "name": "h", "size": 64 * MIB, "replicas": 3, "shards": 4, "chunk_size": 4 * MIB,
    }));
    c.wait_converged("h", Duration::from_secs(60));
    let before = shard_voters(&c.status(), "h");
    let on_3 = before.iter().filter(|(v, _)| v.contains(&3)).count();
    assert!(on_3 > 0, "node 3 holds replicas: {before:?}");

    // A client writes and verifies through node 1 all along.
    let fio = FioVerify::start(
        "heal",
        &c.node(1).uri("h"),
        &[
            "--bssplit=4k/70:64k/20:256k/10",
            "--iodepth=8",
            "--size=64M",
            "--io_size=48M",
            "--rate=3m",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));

    // Node 3, a metadata voter, is lost for good.
    let killed = Instant::now();
    c.node(3).kill9();
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let st = c.status();
        let shards = shard_voters(&st, "h");
        let rebuilding = st["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["shards"].as_array().into_iter().flatten())
            .filter(|s| s["state"] == "rebuilding")
            .filter_map(|s| s["reason"].as_str().map(String::from));
        reasons.extend(rebuilding);
        let healed = shards
            .iter()
            .all(|(v, state)| v.len() == 3 && !v.contains(&3) && state == "healthy");
        if healed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shards were not re-created off node 3: {shards:?}\n{st:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let healed_in = killed.elapsed();
    // The status showed the rebuild and how far its copy had got.
    let progress = reasons
        .iter()
        .find(|r| r.contains("re-created on node") && r.contains("copied"));
    assert!(progress.is_some(), "no progress shown: {reasons:?}");
    println!(
        "node 3 killed; {on_3} shard replica(s) re-created in {:.1} s; status showed e.g. {:?}",
        healed_in.as_secs_f64(),
        progress
    );
    // Copies were paced at 1 MiB/s (after a one-second burst).
    let log: String = [1, 2, 4].map(|n| c.node(n).log_text()).concat();
    let staged: Vec<(f64, f64)> = log
        .lines()
        .filter(|l| l.contains("shard snapshot staged"))
        .filter_map(|l| Some((field(l, "mib=")?, field(l, "secs=")?)))
        .collect();
    assert!(
        staged.iter().any(|(mib, _)| *mib >= 2.0),
        "copies of shard data: {staged:?}"
    );
    for (mib, secs) in &staged {
        assert!(
            *secs >= (mib - 1.5) * 0.8,
            "a {mib} MiB copy took {secs} s at 1 MiB/s"
        );
    }

    // The metadata group is back to three voters, none on node 3.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status();
        let mut voters: Vec<u64> = st["meta_voters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        voters.sort_unstable();
        if voters == vec![1, 2, 4] {
            break;
        }
        assert!(Instant::now() < deadline, "meta voters {voters:?}: {st:#}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The client saw no error, and every block it wrote verified.
    fio.finish();

    // Every replica holds the same data, and any node serves it.
    c.wait_converged("h", Duration::from_secs(60));
    let verify = c.node(1).cli(&["volume", "verify", "h", "--json"]);
    let v: Value = serde_json::from_slice(&verify.stdout).expect("verify json");
    assert!(verify.status.success(), "{v:#}");
    assert_eq!(v["divergent"], 0, "{v:#}");
    let tmp = tempfile::tempdir().expect("tmp");
    let copy = |node: u64, c: &mut TestCluster| {
        let file = tmp.path().join(format!("via-{node}.img"));
        let out = Command::new("nbdcopy")
            .arg(c.node(node).uri("h"))
            .arg(&file)
            .output()
            .expect("nbdcopy");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        sha256_of(&file)
    };
    assert_eq!(
        copy(1, &mut c),
        copy(4, &mut c),
        "nodes 1 and 4 serve the same bytes"
    );
    // Every shard is led somewhere and healthy, by the nodes' metrics.
    let healthy: f64 = [1, 2, 4]
        .iter()
        .map(|n| {
            c.node(*n)
                .metric("raftblock_shards{state=\"healthy\"}")
                .unwrap_or(0.0)
        })
        .sum();
    assert_eq!(
        Some(healthy),
        c.node(1).metric("raftblock_shards_total"),
        "healthy shards by metrics"
    );
    let recovered = c
        .node(4)
        .metric("raftblock_recovery_bytes_total")
        .unwrap_or(0.0);
    assert!(recovered > 0.0, "node 4 copied shard data");

    // Node 3 returns: it finds itself replaced and removes its old
    // replicas' files; it counts as empty, so rebalancing may then give it
    // new replicas, built by copy: every chunk file it holds belongs to a
    // shard that has it as a member now.
    c.node(3).restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = c.status();
        let (up, out, _) = c.node_flags(3);
        let members: Vec<u64> = st["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["name"] == "h")
            .flat_map(|v| v["shards"].as_array().into_iter().flatten())
            .filter(|s| {
                s["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["node"] == 3))
            })
            .filter_map(|s| s["index"].as_u64())
            .collect();
        // Chunk `c` of a four-shard volume belongs to shard `c % 4`.
        let stray: Vec<_> = chunk_files(c.node(3).data_dir())
            .into_iter()
            .filter(|f| {
                let chunk = f
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok());
                chunk.is_none_or(|c| !members.contains(&(c % 4)))
            })
            .collect();
        let said = c.node(3).log_text().contains("replaced in the shard")
            || c.node(3).log_text().contains("no longer holds a replica");
        if stray.is_empty() && said && up && !out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 kept {stray:?} (up {up}, out {out}, said why: {said})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Whatever moved since, the replicas still agree.
    c.wait_converged("h", Duration::from_secs(60));
    let verify = c.node(1).cli(&["volume", "verify", "h", "--json"]);
    let v: Value = serde_json::from_slice(&verify.stdout).expect("verify json");
    assert!(verify.status.success(), "{v:#}");
    assert_eq!(v["divergent"], 0, "{v:#}");
}
