//! What `deploy/` ships is checked against the tools that read it and the
//! daemon it describes: the alert rules and the example Prometheus config
//! pass `promtool` (`check rules`, the rule unit tests, `check config`), the
//! dashboard's queries parse as PromQL, every metric name the rules and the
//! dashboard use is one a real 3-node cluster exports (so renaming a metric
//! fails here), the systemd unit passes `systemd-analyze verify` where that
//! runs, and every `serve` flag the unit and its env file name exists.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use raftblock_tests::cluster::TestCluster;
use raftblock_tests::nbd::{RawNbd, CMD_TRIM};
use raftblock_tests::{pattern, raftblock_bin, require_tool, run_ok, which};

const MIB: u64 = 1 << 20;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(rel: &str) -> String {
    let p = deploy().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------------ PromQL names

/// Aggregation operators and keywords: identifiers that are not metrics.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Skips from `chars[i]` (an opening `open`) past its matching `close`,
/// stepping over quoted strings; returns the index after it.
fn skip_group(chars: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(chars, i);
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

/// Skips a quoted string starting at `chars[i]`; returns the index after it.
fn skip_string(chars: &[char], i: usize) -> usize {
    let q = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        if chars[j] == '\\' && q != '`' {
            j += 2;
            continue;
        }
        if chars[j] == q {
            return j + 1;
        }
        j += 1;
    }
    j
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, ranges, strings and `by (...)`-style label lists that are not
/// functions (followed by `(`), aggregation operators or keywords. Grafana
/// variables (`$x`, `${x}`, `[[x]]`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let next_non_space = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if i < chars.len() && chars[i] == '{' {
                    i = skip_group(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && is_ident(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations: 0.99, 1e3, 0x1f, 5m, 1h30m.
                while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let after = next_non_space(i);
                let lower = word.to_ascii_lowercase();
                if LABEL_LIST_WORDS.contains(&lower.as_str()) {
                    if after < chars.len() && chars[after] == '(' {
                        i = skip_group(&chars, after, '(', ')');
                    }
                } else if PROMQL_WORDS.contains(&lower.as_str())
                    || (after < chars.len() && chars[after] == '(')
                {
                    // An operator, a keyword or a function call.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn metric_names_are_picked_out_of_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, volume) (rate(a_bucket{job=~"$job", x="b_c"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("count by (job, node) (x == 0) * 2 > count without(node) (y) and on(instance) z offset 5m"),
        ["x", "y", "z"]
    );
    assert_eq!(
        names("max(t{job=\"r\"}) - sum(s) > 0 unless absent(up{job=\"r\"}) or vector(1e3)"),
        ["s", "t", "up"]
    );
    assert_eq!(
        names("min_over_time(r[15m]) > 0\n  or\nmin_over_time(c[15m:1m]) > 0 # comment metric_x"),
        ["c", "r"]
    );
    assert_eq!(
        names("sum(rate(a[${__rate_interval}])) / ignoring(op) group_left(volume) b"),
        ["a", "b"]
    );
}

// ------------------------------------------------------ rules and dashboard

/// The `expr` of every rule in a Prometheus rules file, read crudely: the
/// rest of an `expr:` line, or its block scalar (`|`, `>`) or plain
/// continuation lines, i.e. the lines indented deeper than the key.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let key = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        let mut value = rest.trim().to_string();
        if value.starts_with('|') || value.starts_with('>') {
            value.clear();
        }
        for more in &lines[n + 1..] {
            let t = more.trim_start();
            if !t.is_empty() && more.len() - t.len() <= indent {
                break;
            }
            value.push('\n');
            value.push_str(t);
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('\'') && value.ends_with('\''))
                || (value.starts_with('"') && value.ends_with('"')))
        {
            value[1..value.len() - 1].replace("''", "'")
        } else {
            value.to_string()
        };
        exprs.push(value);
    }
    exprs
}

/// Every `expr` in a Grafana dashboard (panels, nested rows, anything).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// The selector part of each template variable's query:
/// `label_values(SELECTOR, label)` gives SELECTOR, `query_result(Q)` gives Q.
fn template_exprs(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let q = match &var["query"] {
            Value::String(s) => s.clone(),
            q => q["query"].as_str().unwrap_or_default().to_string(),
        };
        let q = q.trim();
        if let Some(inner) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            // The label is the last argument; a lone argument is a label.
            if let Some((sel, _label)) = inner.rsplit_once(',') {
                out.push(sel.to_string());
            }
        } else if let Some(inner) = q
            .strip_prefix("query_result(")
            .and_then(|r| r.strip_suffix(')'))
        {
            out.push(inner.to_string());
        } else if !q.is_empty() {
            out.push(q.to_string());
        }
    }
    out
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/raftblock-dashboard.json"))
        .expect("deploy/grafana/raftblock-dashboard.json is JSON")
}

/// The rule file's and the dashboard's expressions, with where each is from.
fn deploy_exprs() -> Vec<(String, String)> {
    let rules = read("prometheus/raftblock-alerts.yml");
    let exprs = rule_exprs(&rules);
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        exprs.len(),
        alerts,
        "one expr per alert rule in raftblock-alerts.yml: {exprs:#?}"
    );
    let dash = dashboard();
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dash, &mut panel_exprs);
    assert!(
        panel_exprs.len() >= 10,
        "dashboard queries: {panel_exprs:?}"
    );
    let mut all: Vec<(String, String)> = exprs
        .into_iter()
        .map(|e| ("raftblock-alerts.yml".to_string(), e))
        .collect();
    all.extend(
        panel_exprs
            .into_iter()
            .chain(template_exprs(&dash))
            .map(|e| ("raftblock-dashboard.json".to_string(), e)),
    );
    all
}

#[test]
fn dashboard_is_an_importable_grafana_dashboard() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "the datasource is an import input: {inputs:?}"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap_or(99),
            g["y"].as_u64().unwrap_or(0),
            g["w"].as_u64().unwrap_or(0),
            g["h"].as_u64().unwrap_or(0),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        assert_eq!(var["datasource"]["uid"], "${DS_PROMETHEUS}", "{var}");
    }
}

#[test]
fn prometheus_rules_config_and_dashboard_queries_pass_promtool() {
    if !require_tool("promtool") {
        return;
    }
    let prom = deploy().join("prometheus");
    for args in [
        vec!["check", "rules", "raftblock-alerts.yml"],
        vec!["test", "rules", "raftblock-alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = run_ok(Command::new("promtool").args(&args).current_dir(&prom));
        eprintln!("promtool {}:\n{}", args.join(" "), output_text(&out));
    }

    // The dashboard's queries, Grafana's variables filled in, as recording
    // rules: `promtool check rules` parses every one.
    let mut panel_exprs = Vec::new();
    let dash = dashboard();
    dashboard_exprs(&dash, &mut panel_exprs);
    panel_exprs.extend(template_exprs(&dash));
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, e) in panel_exprs.iter().enumerate() {
        let e = e
            .replace("${__rate_interval}", "1m")
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$volume", ".*");
        assert!(!e.contains('$'), "unexpected Grafana variable in {e}");
        let quoted = serde_json::to_string(&e).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {quoted}\n"
        ));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("write dashboard queries");
    let out = run_ok(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(&file),
    );
    eprintln!(
        "promtool check rules (dashboard queries):\n{}",
        output_text(&out)
    );
}

// ------------------------------------------------------------- systemd unit

/// The `--flags` a text passes to `raftblock serve`.
fn serve_flags(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '"' || c == '='))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_unit_and_env_file_use_real_flags_and_keep_devices_reachable() {
    let unit = read("systemd/raftblock.service");
    let env = read("systemd/raftblock.env.example");
    let help = run_ok(Command::new(raftblock_bin()).args(["serve", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let flags: BTreeSet<String> = serve_flags(&unit)
        .union(&serve_flags(&env))
        .cloned()
        .collect();
    assert!(
        flags.contains("--data-dir") && flags.contains("--peers"),
        "{flags:?}"
    );
    for f in &flags {
        assert!(
            help.contains(&format!("{f} ")),
            "deploy/systemd uses `{f}`, which `raftblock serve --help` does not list:\n{help}"
        );
    }

    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| directives.iter().find(|(d, _)| *d == k).map(|(_, v)| *v);
    assert_eq!(get("KillSignal"), Some("SIGTERM"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(get("EnvironmentFile"), Some("/etc/raftblock/raftblock.env"));
    assert!(get("LimitNOFILE").is_some());
    assert!(get("After").is_some_and(|a| a.contains("network-online.target")));
    // The daemon drains NBD requests for up to 30 s, then syncs.
    let stop: u64 = get("TimeoutStopSec")
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop >= 60,
        "TimeoutStopSec={stop} leaves no time to sync after the 30 s drain"
    );
    // Options that give the service its own mount namespace (mounts of
    // Docker volumes would be invisible to dockerd) or a device policy
    // (no /dev/fuse, loop or NBD devices).
    for bad in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadWritePaths",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "ProtectProc",
        "MountFlags",
        "DevicePolicy",
        "DeviceAllow",
        "CapabilityBoundingSet",
        "User",
        "DynamicUser",
    ] {
        assert!(get(bad).is_none(), "raftblock.service must not set {bad}=");
    }

    // systemd-analyze is not installed everywhere (CI containers may lack
    // systemd); where it is, the unit must verify cleanly, with ExecStart
    // pointed at the binary under test (verify checks that it exists).
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("SKIPPED: systemd-analyze verify (systemd-analyze not installed)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("raftblock.service");
    let bin = raftblock_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/raftblock", &bin.display().to_string()),
    )
    .expect("write the unit copy");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let text = output_text(&out);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("raftblock.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify raftblock.service ({}):\n{text}",
        out.status
    );
    eprintln!("systemd-analyze verify raftblock.service: clean");
}

// --------------------------------------------- names against a real cluster

/// The metric names in a Prometheus text exposition: sample names and the
/// names of `# TYPE` lines, with their types.
fn exposition_names(text: &str) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.insert(n.to_string(), t.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, types)
}

fn exported(name: &str, samples: &BTreeSet<String>, types: &BTreeMap<String, String>) -> bool {
    if samples.contains(name) || types.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix).is_some_and(|base| {
            matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            )
        })
    })
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_exported_by_a_cluster() {
    let used = deploy_exprs();
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, e) in &used {
        for n in metric_names(e) {
            names.entry(n).or_default().insert(file.clone());
        }
    }
    // Prometheus' own scrape health, not the daemon's.
    names.remove("up");
    assert!(
        names.len() >= 10,
        "metric names found in deploy/: {:?}",
        names.keys()
    );

    let mut c = TestCluster::start(3);
    c.create_volume("dv", 64 * MIB, 3, None);
    c.wait_converged("dv", Duration::from_secs(60));
    // Some NBD I/O, so the per-volume request series and latency buckets
    // of reads, writes, flushes and trims exist.
    let data = pattern(14, 256 * 1024);
    let mut nbd = RawNbd::connect(c.node(1).nbd, "dv").expect("connect");
    assert_eq!(nbd.write(0, &data, false).expect("write"), 0);
    assert_eq!(nbd.flush().expect("flush"), 0);
    assert_eq!(
        nbd.read(0, data.len() as u32).expect("read"),
        Ok(data.clone())
    );
    assert_eq!(nbd.command(0, CMD_TRIM, 128 * 1024, 4096).expect("trim"), 0);
    drop(nbd);

    // Every node's exposition; node 1's once it reports every member.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (samples, types) = loop {
        let mut text = String::new();
        for n in &c.nodes {
            text.push_str(&n.metrics());
            text.push('\n');
        }
        let (samples, types) = exposition_names(&text);
        let ready = c.nodes[0].metrics().matches("raftblock_node_up{").count() == 3
            && samples.contains("raftblock_nbd_request_duration_seconds_bucket");
        if ready || Instant::now() > deadline {
            break (samples, types);
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let missing: Vec<String> = names
        .iter()
        .filter(|(n, _)| !exported(n, &samples, &types))
        .map(|(n, files)| format!("{n} (used in {})", Vec::from_iter(files.clone()).join(", ")))
        .collect();
    eprintln!(
        "{} metric names used in deploy/, all checked against the cluster's /metrics: {:?}",
        names.len(),
        names.keys()
    );
    assert!(
        missing.is_empty(),
        "deploy/ uses metrics the daemon does not export:\n  {}\nexported: {samples:?}",
        missing.join("\n  ")
    );
}
