//! A cluster that watches its nodes (real processes, four nodes): the
//! metadata leader marks a node out once it has been down for the
//! down-out interval, takes it back in when it returns, and leaves alone a
//! node in maintenance and the nodes of a cluster with more than a third of
//! them down.

use serde_json::Value;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::TestCluster;

/// The flags of node `id` in `cluster status` as node 1 sees them:
/// `(up, out, maintenance)`.
fn node_flags(c: &mut TestCluster, id: u64) -> (bool, bool, bool) {
    let st = c.status();
    let n = st["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .cloned()
        .unwrap_or(Value::Null);
    let flag = |k: &str| n[k].as_bool().unwrap_or(false);
    (flag("up"), flag("out"), flag("maintenance"))
}

/// Waits until node `id`'s `out` flag is `out`.
fn wait_out(c: &mut TestCluster, id: u64, out: bool, within: Duration) {
    let deadline = Instant::now() + within;
    while node_flags(c, id).1 != out {
        assert!(
            Instant::now() < deadline,
            "node {id} never became {}: {:#}",
            if out { "out" } else { "in" },
            c.status()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Asserts node `id` stays in for `for_`.
fn stays_in(c: &mut TestCluster, id: u64, for_: Duration, why: &str) {
    let until = Instant::now() + for_;
    while Instant::now() < until {
        assert!(!node_flags(c, id).1, "node {id} was marked out {why}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn down_nodes_are_marked_out_unless_in_maintenance_or_too_many() {
    let interval = Duration::from_secs(3);
    let mut c = TestCluster::start_each(4, |_| vec!["--down-out-interval".into(), "3s".into()]);
    c.create_volume("w", 16 << 20, 3, None);
    // Every node has registered in the metadata (they do so as they start).
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.status()["nodes"].as_array().map_or(0, Vec::len) < 4 {
        assert!(
            Instant::now() < deadline,
            "not every node registered: {:#}",
            c.status()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Maintenance, through the CLI: node 3 down stays in.
    let out = c.node(1).cli(&["node", "maintenance", "3", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node_flags(&mut c, 3).2, "node 3 in maintenance");
    c.node(3).kill9();
    stays_in(&mut c, 3, interval * 4, "while in maintenance");
    c.node(3).restart();
    let out = c.node(1).cli(&["node", "maintenance", "3", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!node_flags(&mut c, 3).2);
    let bad = c.node(1).cli(&["node", "maintenance", "9", "on"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // One node of four down past the interval: out; back: in again.
    c.node(4).kill9();
    wait_out(&mut c, 4, true, interval + Duration::from_secs(20));
    let log: String = (1..=3).map(|n| c.node(n).log_text()).collect();
    assert!(log.contains("node marked out"), "a warning says so");
    c.node(4).restart();
    wait_out(&mut c, 4, false, Duration::from_secs(20));

    // Two of four down: the cluster is the problem; nobody goes out.
    c.node(3).kill9();
    c.node(4).kill9();
    stays_in(&mut c, 3, interval * 4, "with half the nodes down");
    assert!(
        !node_flags(&mut c, 4).1,
        "node 4 was marked out with half the nodes down"
    );
}
