//! What an operator reads in the logs of real daemons when a node dies and
//! comes back: one line per event, at the right level, on the nodes that
//! see it. Four nodes, node 4 killed twice: first in maintenance (it stays
//! in; its shards lose and then regain a replica), then for good (marked
//! out after 3 s, its replicas rebuilt on the others).

use std::time::{Duration, Instant};

use raftblock_tests::cluster::{voters, TestCluster};

/// Where each node's log stood: only what came after counts.
fn marks(c: &TestCluster) -> Vec<usize> {
    c.nodes.iter().map(|d| d.log_text().len()).collect()
}

/// Node `n`'s log lines since `mark`, at `level` (" WARN ", " INFO "),
/// that contain `text`.
fn lines(c: &TestCluster, n: u64, mark: &[usize], level: &str, text: &str) -> Vec<String> {
    let i = (n - 1) as usize;
    let log = c.nodes[i].log_text();
    log.get(mark[i]..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(level) && l.contains(text))
        .map(String::from)
        .collect()
}

/// All of nodes `ns`' lines since `mark` at `level` containing `text`.
fn all_lines(c: &TestCluster, ns: &[u64], mark: &[usize], level: &str, text: &str) -> Vec<String> {
    ns.iter()
        .flat_map(|n| lines(c, *n, mark, level, text))
        .collect()
}

/// Waits up to `within` for `ok`; panics with `what` and the survivors'
/// logs otherwise.
fn wait_for(c: &TestCluster, within: Duration, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        if Instant::now() > deadline {
            let logs: String = c.nodes.iter().map(|d| d.log_text()).collect();
            panic!("{what} within {within:?}; logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `group=` field of a log line.
fn group_of(line: &str) -> Option<u64> {
    let rest = &line[line.find("group=")? + 6..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Asserts no group has more than one of `lines` (said once per event).
fn once_per_group(lines: &[String]) {
    let mut groups: Vec<u64> = lines.iter().filter_map(|l| group_of(l)).collect();
    assert_eq!(
        groups.len(),
        lines.len(),
        "a line without group=: {lines:#?}"
    );
    groups.sort_unstable();
    let n = groups.len();
    groups.dedup();
    assert_eq!(groups.len(), n, "a group said twice: {lines:#?}");
}

#[test]
fn node_and_shard_events_are_one_line_each_at_the_right_level() {
    let survivors = [1, 2, 3];
    let mut c = TestCluster::start_each(4, |_| {
        ["--down-out-interval", "3s"].map(String::from).to_vec()
    });
    // Node 4 must be a member before the volume is placed.
    c.wait_registered(4);
    c.create_volume_json(&serde_json::json!({
        "name": "ev", "size": 16 << 20, "replicas": 3, "shards": 4, "chunk_size": 4 << 20,
    }));
    c.wait_converged("ev", Duration::from_secs(60));
    let st = c.status();
    let shards = st["volumes"][0]["shards"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let on_4 = shards.iter().filter(|s| voters(s).contains(&4)).count();
    assert!(on_4 > 0, "node 4 holds replicas: {st:#}");

    // Phase 1: node 4 in maintenance dies and comes back.
    let out = c.node(1).cli(&["node", "maintenance", "4", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mark = marks(&c);
    let killed = Instant::now();
    c.node(4).kill9();
    wait_for(
        &c,
        Duration::from_secs(10),
        "every survivor says node 4 is down",
        || {
            survivors
                .iter()
                .all(|n| !lines(&c, *n, &mark, " WARN ", "node 4 is down").is_empty())
        },
    );
    println!(
        "node 4 seen down {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    wait_for(
        &c,
        Duration::from_secs(10),
        "a shard says it lost node 4",
        || {
            !all_lines(
                &c,
                &survivors,
                &mark,
                " WARN ",
                "lost its replica on node 4",
            )
            .is_empty()
        },
    );
    // Said once, not at every look.
    std::thread::sleep(Duration::from_secs(3));
    for n in survivors {
        let down = lines(&c, n, &mark, " WARN ", "node 4 is down");
        assert_eq!(down.len(), 1, "node {n}: {down:#?}");
        assert!(
            down[0].contains("not heard from for") && down[0].contains("node=4"),
            "{}",
            down[0]
        );
        once_per_group(&lines(&c, n, &mark, " WARN ", "lost its replica on node 4"));
    }
    let lost = all_lines(
        &c,
        &survivors,
        &mark,
        " WARN ",
        "lost its replica on node 4",
    );
    assert!(
        lost.iter().all(|l| l.contains("volume ev shard")),
        "{lost:#?}"
    );
    // Node 4 led shards: others took them over and said so.
    let led = all_lines(
        &c,
        &survivors,
        &mark,
        " INFO ",
        "became leader of shard group",
    );
    let told = all_lines(&c, &survivors, &mark, " INFO ", "has a new leader");
    assert!(
        led.iter().all(|l| l.contains("volume ev shard")),
        "{led:#?}"
    );
    println!(
        "{} lost-replica lines, {} new leaders, {} followers told",
        lost.len(),
        led.len(),
        told.len()
    );

    let mark2 = marks(&c);
    c.node(4).restart();
    wait_for(
        &c,
        Duration::from_secs(15),
        "every survivor says node 4 is back",
        || {
            survivors
                .iter()
                .all(|n| !lines(&c, *n, &mark2, " INFO ", "node 4 is back").is_empty())
        },
    );
    wait_for(
        &c,
        Duration::from_secs(15),
        "each lost replica regained",
        || {
            let regained = all_lines(
                &c,
                &survivors,
                &mark2,
                " INFO ",
                "regained its replica on node 4",
            );
            regained.len() >= lost.len()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for n in survivors {
        let back = lines(&c, n, &mark2, " INFO ", "node 4 is back");
        assert_eq!(back.len(), 1, "node {n}: {back:#?}");
        once_per_group(&lines(
            &c,
            n,
            &mark2,
            " INFO ",
            "regained its replica on node 4",
        ));
        assert!(
            lines(&c, n, &mark2, " WARN ", "is down").is_empty(),
            "node {n} called a node down after 4 came back"
        );
    }
    // The restarted node heard the others at once: it calls nobody down.
    assert!(
        lines(&c, 4, &mark2, " WARN ", " is down").is_empty(),
        "{}",
        c.nodes[3].log_text()
    );

    // Phase 2: node 4, out of maintenance, dies for good: marked out, and
    // each of its replicas rebuilt elsewhere, one line when each starts and
    // one when it ends, on the metadata leader alone.
    let out = c.node(1).cli(&["node", "maintenance", "4", "off"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mark3 = marks(&c);
    // `cluster events --follow` on node 2 prints what happens from here on.
    let mut follower = std::process::Command::new(raftblock_tests::raftblock_bin())
        .args(["cluster", "events", "--follow", "--interval", "500ms"])
        .env("RAFTBLOCK_SERVER", c.nodes[1].admin.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start cluster events --follow");
    let followed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let out = follower.stdout.take().expect("stdout");
        let followed = followed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                followed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        })
    };
    c.node(4).kill9();
    wait_for(
        &c,
        Duration::from_secs(40),
        "every rebuild started and finished",
        || {
            let started = all_lines(&c, &survivors, &mark3, " INFO ", "rebuild started");
            let finished = all_lines(&c, &survivors, &mark3, " INFO ", "rebuild finished");
            started.len() >= on_4 && finished.len() == started.len()
        },
    );
    let started = all_lines(&c, &survivors, &mark3, " INFO ", "rebuild started");
    let finished = all_lines(&c, &survivors, &mark3, " INFO ", "rebuild finished");
    once_per_group(&started);
    once_per_group(&finished);
    assert!(
        started
            .iter()
            .all(|l| l.contains("in place of node 4's (heal)")),
        "{started:#?}"
    );
    assert!(finished.iter().all(|l| l.contains("took")), "{finished:#?}");
    assert!(
        all_lines(&c, &survivors, &mark3, " WARN ", "rebuild given up").is_empty(),
        "nothing was given up"
    );
    // One node (the metadata leader) tells of them, not every node.
    let tellers = survivors
        .iter()
        .filter(|n| !lines(&c, **n, &mark3, " INFO ", "rebuild ").is_empty())
        .count();
    assert_eq!(tellers, 1, "{started:#?}");
    println!("{started:#?}\n{finished:#?}");
    // Down once again, for the second death.
    wait_for(&c, Duration::from_secs(10), "node 4 down again", || {
        survivors
            .iter()
            .all(|n| !lines(&c, *n, &mark3, " WARN ", "node 4 is down").is_empty())
    });
    for n in survivors {
        assert_eq!(
            lines(&c, n, &mark3, " WARN ", "node 4 is down").len(),
            1,
            "node {n}"
        );
    }

    // The status document (the page's "Recent events", the end of `cluster
    // status`) lists the same events, each report merged with the other
    // nodes' of it: each death once, seen by every survivor.
    let st = c.status();
    let events = st["events"].as_array().cloned().unwrap_or_default();
    let keyed = |key: &str| -> Vec<serde_json::Value> {
        events.iter().filter(|e| e["key"] == key).cloned().collect()
    };
    let seen_by = |e: &serde_json::Value| -> Vec<u64> {
        let mut n: Vec<u64> = e["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_u64())
            .collect();
        n.sort_unstable();
        n
    };
    let downs = keyed("node/4/down");
    assert_eq!(downs.len(), 2, "two deaths: {events:#?}");
    for d in &downs {
        assert_eq!(seen_by(d), survivors, "{d:#}");
        assert_eq!(d["severity"], "warning");
        assert!(d["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("node 4 is down")));
    }
    assert!(
        downs[0]["at_unix"].as_u64() > downs[1]["at_unix"].as_u64(),
        "newest first: {downs:#?}"
    );
    assert_eq!(keyed("node/4/back").len(), 1, "{events:#?}");
    assert_eq!(keyed("node/4/out").len(), 1, "{events:#?}");
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["key"].as_str().is_some_and(|k| k.contains(kind)))
            .collect()
    };
    assert_eq!(
        of_kind("/rebuild-started/").len(),
        started.len(),
        "{events:#?}"
    );
    assert_eq!(
        of_kind("/rebuild-finished/").len(),
        finished.len(),
        "{events:#?}"
    );
    assert!(of_kind("/rebuild-given-up/").is_empty(), "{events:#?}");
    assert!(!of_kind("/lost/4").is_empty(), "{events:#?}");
    let text = c.node(2).cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("RECENT EVENTS") && text.contains("node 4 is down"),
        "{text}"
    );
    // `cluster events`: the same entries, oldest first, one line each.
    let listed = c.node(2).cli(&["cluster", "events"]);
    assert!(listed.status.success());
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let lines: Vec<&str> = listed.lines().collect();
    // (At least: an event may come between the two calls.)
    assert!(lines.len() >= events.len(), "{listed}");
    let downs_at: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("node 4 is down"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(downs_at.len(), 2, "{listed}");
    let back_at = lines.iter().position(|l| l.contains("node 4 is back"));
    assert!(
        back_at.is_some_and(|b| downs_at[0] < b && b < downs_at[1]),
        "down, back, down again, in that order: {listed}"
    );
    assert!(
        lines[downs_at[1]].contains("WARNING")
            && lines[downs_at[1]].contains("(seen by node 1, 2, 3)"),
        "{listed}"
    );
    let json = c.node(2).cli(&["cluster", "events", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("events JSON");
    assert!(
        json.as_array().map_or(0, Vec::len) >= events.len(),
        "{json:#}"
    );
    // The follower printed the second death and the rebuilds as they came,
    // and nothing from before it started twice. (Each of its looks takes
    // a couple of seconds: the status waits for the dead node.)
    wait_for(
        &c,
        Duration::from_secs(20),
        "the follower printed the rebuilds",
        || {
            let f = followed.lock().unwrap_or_else(|p| p.into_inner());
            f.iter().filter(|l| l.contains("rebuild finished")).count() >= finished.len()
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let _ = follower.kill();
    let _ = follower.wait();
    let _ = reader.join();
    let followed = followed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let count = |text: &str| followed.iter().filter(|l| l.contains(text)).count();
    assert_eq!(
        count("node 4 is down"),
        2,
        "the first death, then the second: {followed:#?}"
    );
    assert_eq!(count("rebuild finished"), finished.len(), "{followed:#?}");
    assert_eq!(count("node 4 marked out"), 1, "{followed:#?}");
}
