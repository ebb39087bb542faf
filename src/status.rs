//! Text rendering of `raftblock cluster status` and `node list` from the
//! status document the admin API returns (`GET /v1/status`, which the
//! status page shows too): health and alerts, a node table, one line per
//! shard replica, then the recent events.

use raftblock_storage::DiskUsage;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;

use crate::size::human;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        v => v.to_string(),
    }
}

/// Renders the status JSON as text: health and alerts, nodes, volumes.
pub fn render(st: &Value) -> String {
    let mut out = String::new();
    let health = &st["health"];
    let _ = writeln!(
        out,
        "HEALTH: {}   (cluster seen from node {}, metadata leader: {})",
        s(&health["status"]).to_uppercase(),
        s(&st["node"]),
        s(&st["meta_leader"])
    );
    for a in health["alerts"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<7} {}",
            s(&a["severity"]).to_uppercase(),
            s(&a["message"])
        );
    }
    let _ = writeln!(out, "\nNODES");
    out.push_str(&render_nodes(st));
    for v in st["volumes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\nVOLUME {} [{}] ({}, {} allocated, {} replica(s){})",
            s(&v["name"]),
            s(&v["state"]),
            human(v["size"].as_u64().unwrap_or(0)),
            human(v["allocated_bytes"].as_u64().unwrap_or(0)),
            s(&v["replicas"]),
            match v["attached_to"].as_u64() {
                Some(n) => format!(", attached on node {n}, epoch {}", s(&v["attach_epoch"])),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "{:<6} {:<8} {:<7} {:<6} {:<11} {:<10} {:<10} {:<8}",
            "SHARD", "GROUP", "LEADER", "NODE", "ROLE", "APPLIED", "COMMIT", "LAG"
        );
        for sh in v["shards"].as_array().into_iter().flatten() {
            for r in sh["replicas"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<6} {:<8} {:<7} {:<6} {:<11} {:<10} {:<10} {:<8}",
                    s(&sh["index"]),
                    s(&sh["group"]),
                    s(&sh["leader"]),
                    s(&r["node"]),
                    s(&r["role"]),
                    s(&r["applied"]),
                    s(&r["commit"]),
                    s(&r["lag"])
                );
            }
        }
        for sh in v["shards"].as_array().into_iter().flatten() {
            if let Some(reason) = sh["reason"].as_str() {
                let _ = writeln!(
                    out,
                    "  shard {} is {}: {reason}",
                    s(&sh["index"]),
                    s(&sh["state"])
                );
            }
        }
    }
    let events = st["events"].as_array().map_or(&[][..], |e| e.as_slice());
    if !events.is_empty() {
        let _ = writeln!(
            out,
            "\nRECENT EVENTS (newest first; `raftblock cluster events` lists more)"
        );
    }
    for e in events.iter().take(RECENT_EVENTS) {
        let _ = writeln!(out, "  {}", event_line(e));
    }
    out
}

/// One entry of the status document's `events` as a line: when (UTC), how
/// much it matters, what happened, and which nodes saw it.
pub fn event_line(e: &Value) -> String {
    let seen: Vec<String> = e["nodes"].as_array().into_iter().flatten().map(s).collect();
    format!(
        "{} UTC  {:<7}  {}  (seen by node {})",
        crate::admin::health::clock(e["at_unix"].as_u64().unwrap_or(0)),
        s(&e["severity"]).to_uppercase(),
        s(&e["message"]),
        seen.join(", ")
    )
}

/// Events `cluster status` prints.
const RECENT_EVENTS: usize = 10;

/// The node table of the status JSON: state, disk, replicas, leaders,
/// addresses, and why a node is not simply up.
pub fn render_nodes(st: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<12} {:<22} {:>8} {:>8} {:<22} {:<22}",
        "ID", "STATE", "DISK USED", "REPLICAS", "LEADERS", "NBD", "ADMIN"
    );
    for n in st["nodes"].as_array().into_iter().flatten() {
        let disk = match DiskUsage::deserialize(&n["disk"]) {
            Ok(d) => format!(
                "{:.0}% of {}",
                d.used_share() * 100.0,
                human(d.usable_bytes())
            ),
            Err(_) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<12} {:<22} {:>8} {:>8} {:<22} {:<22}",
            s(&n["id"]),
            s(&n["state"]),
            disk,
            s(&n["replicas"]),
            s(&n["leaders"]),
            s(&n["nbd_addr"]),
            s(&n["admin_addr"])
        );
        if let Some(reason) = n["reason"].as_str() {
            let _ = writeln!(out, "       {reason}");
        }
    }
    out
}
