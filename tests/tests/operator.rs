//! What an operator sees outside the status page: the demo's short summary
//! with the logs in a file, `raftblock top` over real NBD traffic, `node
//! list`, `cluster status` (text and JSON, the same document as `GET
//! /v1/status`), and `GET /v1/stats` with its error answers.

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

use raftblock_tests::cluster::TestCluster;
use raftblock_tests::{raftblock_bin, require_tool};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn the_demo_prints_a_summary_and_keeps_its_logs_in_a_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo_dir = dir.path().join("demo");
    let out = Command::new(raftblock_bin())
        .args(["demo", "--exit", "--size", "128M", "--plugin-socket", "off"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(&demo_dir)
        .env_remove("RAFTBLOCK_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let log = demo_dir.join("raftblock.log");
    for want in [
        "volume    demo: 128.0 MiB, 3 replicas",
        "nbd://127.0.0.1:",
        "status    http://127.0.0.1:",
        &format!("logs      {}", log.display()),
        "self-check PASSED",
    ] {
        assert!(stdout.contains(want), "`{want}` in:\n{stdout}");
    }
    // A summary a person reads at a glance, with no log lines around it.
    assert!(stdout.lines().count() < 20, "{stdout}");
    for noise in [" INFO ", " WARN ", "raftblock_"] {
        assert!(!stdout.contains(noise), "log line on stdout: {stdout}");
        assert!(!stderr.contains(noise), "log line on stderr: {stderr}");
    }
    let logged = std::fs::read_to_string(&log).expect("the demo's log file");
    assert_eq!(
        logged.matches("raftblock serving").count(),
        3,
        "each node's start in {}:\n{logged}",
        log.display()
    );

    // The same directory again: refused up front, nothing touched.
    let again = Command::new(raftblock_bin())
        .args(["demo", "--exit", "--size", "128M", "--plugin-socket", "off"])
        .arg("--dir")
        .arg(&demo_dir)
        .output()
        .expect("run the demo");
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already holds a demo cluster"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("log").len(),
        logged.len()
    );

    // --verbose puts the logs back on the terminal.
    let verbose_dir = dir.path().join("verbose");
    let out = Command::new(raftblock_bin())
        .args(["demo", "--exit", "--verbose", "--size", "128M"])
        .args(["--plugin-socket", "off"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(&verbose_dir)
        .env_remove("RAFTBLOCK_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("raftblock serving"));
    assert!(text(&out.stdout).contains("logs      on this terminal"));
    assert!(!verbose_dir.join("raftblock.log").exists());
}

#[test]
fn top_status_and_node_list_show_the_cluster() {
    if !require_tool("fio") {
        return;
    }
    let mut c = TestCluster::start(3);
    c.create_volume("busy", 64 << 20, 3, Some(2));
    c.create_volume("idle", 64 << 20, 3, Some(1));
    c.wait_converged("busy", Duration::from_secs(60));
    // Writes through node 2, watched through node 1.
    let mut fio = Command::new("fio")
        .args(["--name=t", "--ioengine=nbd", "--rw=randwrite", "--bs=4k"])
        .args(["--iodepth=8", "--size=32M", "--time_based", "--runtime=12"])
        .arg(format!("--uri={}", c.nodes[1].uri("busy")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(2));
    let top = c.nodes[0].cli(&["top", "--interval", "1s", "--count", "3"]);
    let screens = text(&top.stdout);
    assert!(top.status.success(), "{}", text(&top.stderr));
    let status = fio.wait().expect("fio");
    assert!(status.success(), "fio failed");
    assert!(screens.contains("3 of 3 node(s) answering"), "{screens}");
    // Every screen has the busy volume first, writing, and nothing else.
    let rows: Vec<&str> = screens.lines().filter(|l| l.starts_with("busy ")).collect();
    assert_eq!(rows.len(), 3, "{screens}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let writes: f64 = cols[2].parse().expect("WRITE/s column");
        assert!(writes > 10.0, "writes per second in `{row}`");
        assert_eq!(cols[1], "0", "no reads in `{row}`");
        assert!(row.contains(" ms"), "a write p99 in `{row}`");
    }
    assert!(
        !screens.contains("idle "),
        "an idle volume has no row: {screens}"
    );

    // The CLI's JSON and the page's document are the same document.
    let json = c.nodes[0].cli(&["cluster", "status", "--json"]);
    assert!(json.status.success());
    let cli: Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    let api = c.nodes[0]
        .admin_client()
        .cluster_status()
        .expect("GET /v1/status");
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(keys(&cli), keys(&api));
    // The daemons report the disk they run on, which on a crowded host
    // may really be nearly full: a disk alert passes only if `df` agrees.
    let df = Command::new("df")
        .args(["--output=pcent"])
        .arg(c.nodes[0].data_dir())
        .output()
        .expect("df");
    let df_used: u32 = text(&df.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().trim_end_matches('%').parse().ok())
        .expect("df's Use%");
    for alert in cli["health"]["alerts"].as_array().expect("alerts") {
        assert!(
            alert["kind"] == "disk_full" && df_used >= 90,
            "a healthy cluster on a disk df says is {df_used}% used: {cli:#}"
        );
    }
    assert_eq!(cli["nodes"], api["nodes"]);

    let list = c.nodes[0].cli(&["node", "list"]);
    let list = text(&list.stdout);
    assert_eq!(
        list.lines().filter(|l| l.contains(" up ")).count(),
        3,
        "{list}"
    );
    c.node(3).kill9();
    std::thread::sleep(Duration::from_secs(1));
    let nodes: Value = serde_json::from_slice(&c.nodes[0].cli(&["node", "list", "--json"]).stdout)
        .expect("node list JSON");
    assert_eq!(nodes[2]["id"], 3);
    assert_eq!(nodes[2]["state"], "down", "{nodes:#}");
    let text_status = text(&c.nodes[0].cli(&["cluster", "status"]).stdout);
    assert!(text_status.starts_with("HEALTH: ERROR"), "{text_status}");
    assert!(text_status.contains("node 3 is down"), "{text_status}");

    // The series cover the write, and bad queries get clear errors.
    let stats = c.nodes[0]
        .admin_client()
        .stats("1m", false)
        .expect("GET /v1/stats");
    assert_eq!(stats["step_secs"], 5);
    assert_eq!(stats["t"].as_array().map(Vec::len), Some(12));
    let peak = stats["volumes"]["busy"]["write_iops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    assert!(peak > 10.0, "{stats:#}");
    assert!(stats["unreachable"]["3"].is_string(), "{stats:#}");
    for (query, needle) in [
        ("window=2h", "between 1s and 15m"),
        ("window=abc", "expected a number"),
        ("scope=moon", "expected cluster or node"),
        ("bogus=1", "unknown field"),
    ] {
        let url = format!("http://{}/v1/stats?{query}", c.nodes[0].admin);
        match ureq_get(&url) {
            (400, body) => assert!(body.contains(needle), "{query}: {body}"),
            other => panic!("{query}: {other:?}"),
        }
    }
}

/// `GET url`: status and body.
fn ureq_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let t = text(&out.stdout);
    let (body, code) = t.rsplit_once('\n').unwrap_or((&t, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn volume_scrub_on_a_terminal_draws_a_bar_that_moves_at_the_scrub_rate() {
    if !require_tool("qemu-io") || !require_tool("script") {
        return;
    }
    // 32 chunks of 1 MiB, all written, on each of the 3 nodes: at 8 MiB/s
    // (a second's worth up front) each node's scrub takes about 3 s.
    let mut c = TestCluster::start_each(3, |_| vec!["--scrub-rate".into(), "8M".into()]);
    c.create_volume_json(&serde_json::json!({
        "name": "db", "size": 32 << 20, "replicas": 3, "shards": 2, "chunk_size": 1 << 20,
    }));
    c.wait_converged("db", Duration::from_secs(60));
    raftblock_tests::qemu_io(&c.nodes[0].uri("db"), &["write -P 0x5a 0 32M"]);
    c.wait_converged("db", Duration::from_secs(60));

    // `script` gives the CLI a terminal, as an operator's shell would.
    let cmd = format!(
        "stty rows 40 cols 160; RAFTBLOCK_SERVER={} {} volume scrub db",
        c.nodes[0].admin,
        raftblock_bin().display()
    );
    let started = std::time::Instant::now();
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    let took = started.elapsed();
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    // The bar's frames: "scrubbing: scrub on 3 node(s) [===>  ] 40/96 chunks".
    let positions: Vec<(u64, u64)> = screen
        .split(['\r', '\n'])
        .filter(|f| f.contains("scrub on 3 node(s)"))
        .filter_map(|f| {
            let (done, rest) = f
                .split_once(" chunks")?
                .0
                .rsplit_once(' ')?
                .1
                .split_once('/')?;
            Some((done.parse().ok()?, rest.parse().ok()?))
        })
        .collect();
    let mut moving: Vec<u64> = positions
        .iter()
        .filter(|(d, t)| *t == 96 && *d > 0 && *d < 96)
        .map(|(d, _)| *d)
        .collect();
    moving.dedup();
    assert!(
        moving.len() >= 2,
        "the bar should show at least two steps short of 96 chunks: {positions:?}\n{screen}"
    );
    assert!(moving.windows(2).all(|w| w[0] < w[1]), "{moving:?}");
    // Then the report: every node scrubbed its 32 chunks, none bad.
    let rows = screen
        .lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .filter(|cols| cols.len() == 5 && cols[1] == "32" && cols[2] == "0")
        .count();
    assert_eq!(rows, 3, "{screen}");
    // Paced: a second's worth up front, then 24 MiB at 8 MiB/s. (That the
    // nodes scrub at once, not one after another, shows in the frames:
    // "scrub on 3 node(s)".)
    assert!(
        took >= Duration::from_millis(2500),
        "32 MiB at 8 MiB/s per node took only {took:?}"
    );
}
