//! Text rendering of `raftblock cluster status` from the JSON the admin API
//! returns: a node table, then one line per shard replica.

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

/// Renders the status JSON as text.
pub fn render(st: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster seen from node {} (meta leader: {})",
        s(&st["node"]),
        s(&st["meta_leader"])
    );
    let _ = writeln!(out, "\nNODES");
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<22} {:<22} {:<22}",
        "ID", "STATE", "RAFT", "NBD", "ADMIN"
    );
    for n in st["nodes"].as_array().into_iter().flatten() {
        let mut state = if n["up"].as_bool() == Some(true) {
            "up".to_string()
        } else {
            "down".to_string()
        };
        if n["out"].as_bool() == Some(true) {
            state.push_str(",out");
        }
        if n["maintenance"].as_bool() == Some(true) {
            state.push_str(",maint");
        }
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<22} {:<22} {:<22}",
            s(&n["id"]),
            state,
            s(&n["raft_addr"]),
            s(&n["nbd_addr"]),
            s(&n["admin_addr"])
        );
    }
    for v in st["volumes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "\nVOLUME {} [{}] ({}, {} replica(s){})",
            s(&v["name"]),
            s(&v["state"]),
            human(v["size"].as_u64().unwrap_or(0)),
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
    out
}
