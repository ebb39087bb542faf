//! The status page in a real headless browser (Debian's chromium through
//! chromedriver): against a real 3-node cluster it renders with no script
//! errors, shows every node up and every volume healthy with its traffic
//! charted; after one node is killed with SIGKILL it shows that node down
//! and the volumes with a replica there degraded, with the reasons, within
//! seconds. With four nodes and one marked out, it shows the rebuilds in
//! flight with bytes copied, rate and ETA, and the volume rebuilding, then
//! healthy again. Screenshots of each state are written under
//! `target/screenshots/` for a person to look at.

use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use raftblock_tests::browser::Browser;
use raftblock_tests::cluster::TestCluster;
use raftblock_tests::{qemu_io, require_tool};

/// What the test reads off the page: the health badge, each node's and
/// volume's state, the alerts shown, the chart lines drawn, and any script
/// error the page caught.
const PAGE_STATE: &str = r##"
const rows = sel => [...document.querySelectorAll(sel)];
return {
  refreshes: window.__refreshes || 0,
  errors: window.__pageErrors || [],
  health: document.getElementById("health").dataset.status || "",
  nodes: Object.fromEntries(rows("#nodes tr[data-node]").map(r => [r.dataset.node, r.dataset.state])),
  volumes: Object.fromEntries(rows("#volumes tr[data-volume]").map(r => [r.dataset.volume, r.dataset.state])),
  volume_reasons: Object.fromEntries(rows("#volumes tr[data-volume]").map(r => [r.dataset.volume, (r.querySelector(".reason") || {}).textContent || ""])),
  node_reasons: Object.fromEntries(rows("#nodes tr[data-node]").map(r => [r.dataset.node, (r.querySelector(".reason") || {}).textContent || ""])),
  alerts: rows("#alerts li[data-kind]").map(l => l.dataset.kind),
  lines: rows(".chart svg path").length,
  events: rows("#events tr[data-key]").map(r => [r.dataset.key, r.cells[2].innerText]),
  text: document.body.innerText,
};
"##;

/// The two tests take turns: each runs a cluster and a browser, and two
/// at once on two cores would make their timings meaningless.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The rebuild rows of the page: per shard group, its cells' text.
const REBUILDS: &str = r##"
return {
  errors: window.__pageErrors || [],
  rows: [...document.querySelectorAll("#rebuilds tr[data-group]")].map(r => [...r.cells].map(c => c.innerText)),
  volumes: Object.fromEntries([...document.querySelectorAll("#volumes tr[data-volume]")].map(r => [r.dataset.volume, r.dataset.state])),
  nodes: Object.fromEntries([...document.querySelectorAll("#nodes tr[data-node]")].map(r => [r.dataset.node, r.dataset.state])),
};
"##;

fn screenshot_dir() -> PathBuf {
    // Test executables run from target/<profile>/deps.
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("deps directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.pop();
    dir.join("screenshots")
}

#[test]
fn the_status_page_shows_a_killed_node_down_and_its_volumes_degraded() {
    if !require_tool("chromium") || !require_tool("chromedriver") || !require_tool("qemu-io") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = TestCluster::start(3);
    c.create_volume("db", 256 << 20, 3, Some(3));
    c.create_volume("scratch", 64 << 20, 1, Some(1));
    // Traffic for the charts and the allocation column.
    qemu_io(
        &c.nodes[0].uri("db"),
        &["write -P 0xab 0 16M", "read -P 0xab 0 16M"],
    );
    c.wait_converged("db", Duration::from_secs(60));

    // The page is one self-contained document: nothing loads from elsewhere.
    let html = ureq::get(&format!("http://{}/", c.nodes[0].admin))
        .call()
        .expect("GET /")
        .into_string()
        .expect("page text");
    for outside in [
        "src=\"http",
        "href=\"http",
        "href=\"/",
        "<script src",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(outside), "the page loads {outside}…");
    }

    let b = Browser::start(1400, 1500);
    b.open(&format!("http://{}/", c.nodes[0].admin));
    let healthy = b.wait_for(
        "page shows 3 nodes up and volume db healthy",
        PAGE_STATE,
        Duration::from_secs(30),
        |v| {
            v["health"] == "ok"
                && ["1", "2", "3"].iter().all(|n| v["nodes"][n] == "up")
                && v["volumes"]["db"] == "healthy"
        },
    );
    assert_eq!(healthy["errors"], Value::Array(vec![]), "script errors");
    assert!(
        healthy["text"]
            .as_str()
            .is_some_and(|t| t.contains("Nothing needs attention")),
        "{healthy:#}"
    );
    // The 16 MiB written shows in the allocation column.
    assert!(
        healthy["text"]
            .as_str()
            .is_some_and(|t| t.contains("16 MiB")),
        "allocation of db: {}",
        healthy["text"]
    );
    // The write shows in the charts once its 5 s step has ended.
    let charted = b.wait_for(
        "charts draw the traffic",
        PAGE_STATE,
        Duration::from_secs(20),
        |v| v["lines"].as_u64().unwrap_or(0) >= 4,
    );
    let dir = screenshot_dir();
    let shot = dir.join("status-page-healthy.png");
    let size = b.screenshot(&shot);
    eprintln!("screenshot: {} ({size} bytes)", shot.display());

    // Which volumes have a replica on node 3: db (3 copies), and scratch
    // only if its one copy landed there.
    let st = c.status();
    let on_3 = |name: &str| {
        st["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["name"] == name)
            .flat_map(|v| v["shards"].as_array().into_iter().flatten())
            .flat_map(|s| s["replicas"].as_array().into_iter().flatten())
            .any(|r| r["node"] == 3)
    };
    let scratch_on_3 = on_3("scratch");

    let killed = Instant::now();
    c.node(3).kill9();
    let down = b.wait_for(
        "page shows node 3 down and db degraded",
        PAGE_STATE,
        Duration::from_secs(20),
        |v| v["nodes"]["3"] == "down" && v["volumes"]["db"] == "degraded",
    );
    let took = killed.elapsed();
    eprintln!("the page showed node 3 down {took:.1?} after SIGKILL");
    assert_eq!(down["health"], "error", "{down:#}");
    for kind in ["node_down", "volume_degraded"] {
        assert!(
            down["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|k| k == kind)),
            "alert {kind}: {down:#}"
        );
    }
    assert!(
        down["node_reasons"]["3"]
            .as_str()
            .is_some_and(|r| r.contains("last heard")),
        "why node 3 is down: {down:#}"
    );
    assert!(
        down["volume_reasons"]["db"]
            .as_str()
            .is_some_and(|r| r.contains("node(s) [3] down")),
        "why db is degraded: {down:#}"
    );
    if scratch_on_3 {
        // One copy, on the dead node: nothing can serve it.
        b.wait_for(
            "scratch (one copy, on node 3) unavailable",
            PAGE_STATE,
            Duration::from_secs(20),
            |v| v["volumes"]["scratch"] == "unavailable",
        );
    } else {
        assert_eq!(down["volumes"]["scratch"], "healthy", "{down:#}");
    }
    for n in ["1", "2"] {
        assert_eq!(down["nodes"][n], "up", "{down:#}");
    }
    // The death is listed under "Recent events" once, seen by both
    // survivors (a node calls a peer down after some seconds of silence).
    let listed = b.wait_for(
        "the events list node 3 down, seen by nodes 1 and 2",
        PAGE_STATE,
        Duration::from_secs(20),
        |v| {
            v["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|r| r[0] == "node/3/down" && r[1] == "node 1, node 2")
            })
        },
    );
    let downs = listed["events"]
        .as_array()
        .map_or(0, |e| e.iter().filter(|r| r[0] == "node/3/down").count());
    assert_eq!(downs, 1, "{listed:#}");
    let shot = dir.join("status-page-node-down.png");
    let size = b.screenshot(&shot);
    eprintln!("screenshot: {} ({size} bytes)", shot.display());

    assert_eq!(down["errors"], Value::Array(vec![]), "script errors");
    let severe: Vec<_> = b
        .console()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "browser errors: {severe:?}");
    assert!(charted["refreshes"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn the_status_page_shows_rebuilds_with_progress_rate_and_eta() {
    if !require_tool("chromium") || !require_tool("chromedriver") || !require_tool("qemu-io") {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Copies paced at 2 MiB/s so the rebuild lasts long enough to watch.
    let mut c = TestCluster::start_each(4, |_| {
        ["--down-out-interval", "3s", "--recovery-rate", "2M"]
            .map(String::from)
            .to_vec()
    });
    c.wait_registered(4);
    c.create_volume_json(&serde_json::json!({
        "name": "db", "size": 64 << 20, "replicas": 3, "shards": 2, "chunk_size": 4 << 20,
    }));
    qemu_io(&c.nodes[0].uri("db"), &["write -P 0xcd 0 32M"]);
    c.wait_converged("db", Duration::from_secs(60));
    // The victim leads shard 0: its shard must get a new leader and then
    // add the new replica with the dead voter's progress unknown (that
    // once waited for the log to age out, 90 s). The page is read from
    // another node.
    let victim = c.leader("db", 0).expect("shard 0 of db has a leader");
    let viewer = if victim == 1 { 1 } else { 0 };
    let b = Browser::start(1400, 1500);
    b.open(&format!("http://{}/", c.nodes[viewer].admin));
    b.wait_for(
        "page shows db healthy",
        REBUILDS,
        Duration::from_secs(30),
        |v| v["volumes"]["db"] == "healthy",
    );
    let killed = Instant::now();
    c.node(victim).kill9();
    let key = victim.to_string();
    // Marked out after 3 s, then each of its replicas is re-created.
    let copying = b.wait_for(
        "a rebuild row with bytes copied, a rate and an ETA",
        REBUILDS,
        Duration::from_secs(60),
        |v| {
            v["rows"].as_array().into_iter().flatten().any(|r| {
                let cell = |i: usize| r[i].as_str().unwrap_or("").to_string();
                cell(1).starts_with(&format!("node {victim} →"))
                    && cell(2).starts_with("heal")
                    && cell(3).contains(" of ")
                    && cell(4).ends_with("/s")
                    && cell(5).ends_with(" s")
            })
        },
    );
    eprintln!(
        "{:.1?} after the kill, rebuilds on the page: {:#}",
        killed.elapsed(),
        copying["rows"]
    );
    assert_eq!(copying["nodes"][&key], "out", "{copying:#}");
    assert_eq!(copying["volumes"]["db"], "rebuilding", "{copying:#}");
    let shot = screenshot_dir().join("status-page-rebuilding.png");
    let size = b.screenshot(&shot);
    eprintln!("screenshot: {} ({size} bytes)", shot.display());
    // Done: healthy again, nothing in flight. 16 MiB a shard at 2 MiB/s
    // is 8 s of copying; a minute is ample. (A shard whose leader died
    // with the node used to wait for its log to age out, 90 s, before it
    // could add the new replica.)
    let done = b.wait_for(
        "db healthy again with no rebuild left",
        REBUILDS,
        Duration::from_secs(60),
        |v| v["volumes"]["db"] == "healthy" && v["rows"].as_array().is_some_and(Vec::is_empty),
    );
    eprintln!("{:.1?} after the kill, db is healthy", killed.elapsed());
    assert_eq!(done["errors"], Value::Array(vec![]), "script errors");
}
