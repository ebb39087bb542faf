//! Link cuts with real processes in network namespaces (four nodes, two of
//! them each in a namespace of its own): a cut shorter than the down-out
//! interval moves nothing, and with two of the four nodes cut off for
//! longer than it nothing is marked out either (more than a third of the
//! cluster is down: the cluster, not the nodes, is the problem). After the
//! links come back, every replica catches up from the log and the data
//! written meanwhile reads back through the nodes that were cut.

use serde_json::{json, Value};
use std::time::{Duration, Instant};

use raftblock_tests::cluster::{voters, Netns, TestCluster};
use raftblock_tests::{qemu_io, require_tool};

/// The nodes of every shard's voters (sorted), and the moves in flight.
fn placement(c: &mut TestCluster) -> (Vec<Vec<u64>>, Value) {
    let st = c.status();
    let shards = st["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["shards"].as_array().cloned().unwrap_or_default())
        .map(|s| voters(&s))
        .collect();
    (shards, st["moves"].clone())
}

/// Waits until no move is in flight and the placement has not changed for
/// `quiet` (a node that registered late gets its share first).
fn settled_placement(c: &mut TestCluster, quiet: Duration) -> (Vec<Vec<u64>>, Value) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last = placement(c);
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = placement(c);
        if now != last || now.1 != json!([]) {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "placement never settled: {last:?}"
        );
    }
}

#[test]
fn short_cuts_and_large_partitions_move_nothing() {
    if !require_tool("qemu-io") {
        return;
    }
    let (Some(a), Some(b)) = (Netns::create_nth(0), Netns::create_nth(1)) else {
        return;
    };
    let interval = Duration::from_secs(5);
    let mut c = TestCluster::start_in(&[None, None, Some(&a), Some(&b)], |_| {
        vec![
            "--down-out-interval".into(),
            "5s".into(),
            "--leader-wait".into(),
            "5s".into(),
        ]
    });
    c.create_volume_json(&json!({
        "name": "p", "size": 64u64 << 20, "chunk_size": 1u64 << 20, "replicas": 3, "shards": 8
    }));
    c.wait_converged("p", Duration::from_secs(90));
    let u1 = c.node(1).uri("p");
    qemu_io(&u1, &["write -P 0x51 0 8M"]);
    let before = settled_placement(&mut c, Duration::from_secs(10));
    println!("placement before: {:?}", before.0);

    // A 3-second cut of node 3: shorter than the interval.
    a.cut();
    std::thread::sleep(Duration::from_secs(3));
    a.heal();
    c.stays_in(3, interval * 2, "after a 3 s cut");
    assert_eq!(placement(&mut c), before, "a 3 s cut moved replicas");

    // Nodes 3 and 4 cut off for three intervals: half the cluster.
    a.cut();
    b.cut();
    let cut_at = Instant::now();
    // Shards with a replica on each of nodes 1 and 2 keep their quorum;
    // write one chunk of each (chunk i + 8 is in shard i).
    let alive: Vec<usize> = (0..before.0.len())
        .filter(|i| before.0[*i].contains(&1) && before.0[*i].contains(&2))
        .collect();
    assert!(
        !alive.is_empty(),
        "no shard on both nodes 1 and 2: {before:?}"
    );
    let writes: Vec<String> = alive
        .iter()
        .map(|i| format!("write -P 0x52 {}M 1M", 8 + i))
        .collect();
    let reads: Vec<String> = alive
        .iter()
        .map(|i| format!("read -P 0x52 {}M 1M", 8 + i))
        .collect();
    qemu_io(&u1, &writes.iter().map(String::as_str).collect::<Vec<_>>());
    while cut_at.elapsed() < interval * 3 {
        for n in [3, 4] {
            assert!(
                !c.node_flags(n).1,
                "node {n} was marked out with half the nodes cut"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let during = placement(&mut c);
    assert_eq!(
        during, before,
        "replicas moved while half the cluster was cut off"
    );
    a.heal();
    b.heal();
    c.wait_converged("p", Duration::from_secs(120));
    assert_eq!(
        placement(&mut c),
        before,
        "replicas moved after the links came back"
    );
    for n in [3, 4] {
        let u = c.node(n).uri("p");
        let mut cmds = vec!["read -P 0x51 0 8M"];
        cmds.extend(reads.iter().map(String::as_str));
        qemu_io(&u, &cmds);
    }
    for n in 2..=4 {
        c.wait_settled(1, Duration::from_secs(60));
        c.wait_settled(n, Duration::from_secs(60));
    }
}
