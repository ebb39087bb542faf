//! The cluster's health at a glance: `assess` reads the status document
//! (`cluster::status`) and lists what an operator must look at, worst
//! first, each with its reason, like Ceph's HEALTH_OK / HEALTH_WARN /
//! HEALTH_ERR. It only reads the document, so the page, the CLI and the
//! document itself cannot disagree.

use raftblock_storage::DiskUsage;
use serde::Deserialize;
use serde_json::{json, Value};

/// A disk more than this share used (`df`'s Use%) is a warning...
const DISK_WARN: f64 = 0.90;
/// ...and more than this, an error.
const DISK_ERROR: f64 = 0.95;
/// A replica move running this long without copying is stalled.
const REBUILD_STALLED_SECS: u64 = 10 * 60;

/// `{"status": "ok"|"warning"|"error", "alerts": [...]}`; each alert has a
/// `severity`, a `kind`, a `message` with its reason, and where known the
/// `node` or `volume` it is about and `since_unix`.
pub fn assess(doc: &Value, now: u64) -> Value {
    let mut alerts: Vec<Value> = Vec::new();
    let mut add = |severity: &str, kind: &str, message: String, extra: Value| {
        let mut a = json!({ "severity": severity, "kind": kind, "message": message });
        if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
            a.extend(extra.clone());
        }
        alerts.push(a);
    };
    let standalone = doc["standalone"].as_bool() == Some(true);
    if !standalone && !matches!(doc["meta_leader"].as_u64(), Some(l) if l > 0) {
        add(
            "error",
            "no_quorum",
            "the metadata group has no leader: volumes cannot be created, attached or healed until a majority of its voters is up".into(),
            json!({}),
        );
    }
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let id = &n["id"];
        let reason = n["reason"].as_str().unwrap_or("");
        match n["state"].as_str() {
            Some("down") => add(
                "error",
                "node_down",
                format!("node {id} is down: {reason}"),
                json!({ "node": id, "since_unix": n["down_since_unix"] }),
            ),
            Some("out") => add(
                "warning",
                "node_out",
                format!("node {id} is out: {reason}"),
                json!({ "node": id, "since_unix": n["down_since_unix"] }),
            ),
            Some("draining") => add(
                "info",
                "node_draining",
                format!("node {id} is {reason}"),
                json!({ "node": id }),
            ),
            Some("maintenance") => add(
                "info",
                "node_maintenance",
                format!("node {id} is {reason}"),
                json!({ "node": id }),
            ),
            _ => {}
        }
        let errors = n["checksum_errors"].as_u64().unwrap_or(0);
        if errors > 0 {
            add(
                "warning",
                "checksum_errors",
                format!("node {id}: {errors} block(s) failed their checksum since it started (each was refused and repaired from another replica where one was good); run `raftblock volume scrub` and check the disk"),
                json!({ "node": id }),
            );
        }
        let io = n["io_errors"].as_u64().unwrap_or(0);
        if io > 0 {
            add(
                "warning",
                "io_errors",
                format!("node {id}: {io} device I/O error(s) since it started; check the disk and the kernel log"),
                json!({ "node": id }),
            );
        }
        if let Ok(disk) = DiskUsage::deserialize(&n["disk"]) {
            let used = disk.used_share();
            let msg = format!(
                "node {id}: disk {:.0}% full ({} available of {})",
                used * 100.0,
                crate::size::human(disk.avail_bytes),
                crate::size::human(disk.usable_bytes())
            );
            if used > DISK_ERROR {
                add("error", "disk_full", msg, json!({ "node": id }));
            } else if used > DISK_WARN {
                add("warning", "disk_full", msg, json!({ "node": id }));
            }
        }
    }
    for v in doc["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("");
        let reason = v["reason"].as_str().unwrap_or("");
        let (severity, kind) = match v["state"].as_str() {
            Some("unavailable") => ("error", "volume_unavailable"),
            Some("degraded") => ("warning", "volume_degraded"),
            _ => continue,
        };
        add(
            severity,
            kind,
            format!(
                "volume {name} is {}: {reason}",
                v["state"].as_str().unwrap_or("")
            ),
            json!({ "volume": name }),
        );
    }
    for m in doc["moves"].as_array().into_iter().flatten() {
        let since = m["since_unix"].as_u64().unwrap_or(now);
        let copying = m["progress"]["rate"].as_u64().unwrap_or(0) > 0;
        if now.saturating_sub(since) > REBUILD_STALLED_SECS && !copying {
            add(
                "warning",
                "rebuild_stalled",
                format!(
                    "rebuild of volume {} shard {} onto node {} has run {} min without copying: {}",
                    m["volume"].as_str().unwrap_or("?"),
                    m["shard"],
                    m["add"],
                    now.saturating_sub(since) / 60,
                    m["status"].as_str().unwrap_or("no progress reported")
                ),
                json!({ "volume": m["volume"], "since_unix": since }),
            );
        }
    }
    let rank = |a: &Value| match a["severity"].as_str() {
        Some("error") => 0,
        Some("warning") => 1,
        _ => 2,
    };
    alerts.sort_by_key(rank);
    let status = match alerts.first().map(rank) {
        Some(0) => "error",
        Some(1) => "warning",
        _ => "ok",
    };
    json!({ "status": status, "alerts": alerts })
}

/// `unix` seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn clock(unix: u64) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_as_a_date() {
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        assert_eq!(clock(1_795_887_000), "2026-11-28 17:30:00");
        assert_eq!(clock(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn a_healthy_cluster_is_ok() {
        let doc = json!({
            "meta_leader": 1,
            "nodes": [{"id": 1, "state": "up", "disk": {"total_bytes": 100, "avail_bytes": 50, "free_bytes": 50}}],
            "volumes": [{"name": "v", "state": "healthy"}],
            "moves": [],
        });
        assert_eq!(assess(&doc, 1000), json!({"status": "ok", "alerts": []}));
    }

    #[test]
    fn disk_use_is_counted_as_df_counts_it() {
        // This CI host's filesystem: 252 GiB, 189 GiB free of which only
        // 28 GiB is available to non-root; `df` says 70% used, and the
        // 89% of `1 - avail/total` raised a false alarm at 93%.
        let gib = 1u64 << 30;
        let node = |avail: u64| {
            json!({"meta_leader": 1, "nodes": [{"id": 1, "state": "up",
                "disk": {"total_bytes": 252 * gib, "free_bytes": 189 * gib, "avail_bytes": avail}}]})
        };
        assert_eq!(assess(&node(28 * gib), 0)["status"], "ok");
        // 63 GiB used, 6 available: 91% used.
        let h = assess(&node(6 * gib), 0);
        assert_eq!(h["status"], "warning", "{h}");
        assert_eq!(
            h["alerts"][0]["message"],
            "node 1: disk 91% full (6.0 GiB available of 69.0 GiB)"
        );
        assert_eq!(assess(&node(3 * gib), 0)["status"], "error");
    }

    #[test]
    fn problems_come_worst_first_with_their_reasons() {
        let doc = json!({
            "meta_leader": 1,
            "nodes": [
                {"id": 1, "state": "up", "checksum_errors": 2,
                 "disk": {"total_bytes": 1000, "avail_bytes": 80, "free_bytes": 80}},
                {"id": 3, "state": "down", "reason": "last heard 42 s ago", "down_since_unix": 958},
            ],
            "volumes": [
                {"name": "a", "state": "degraded", "reason": "1 of 3 shard(s) degraded"},
                {"name": "b", "state": "rebuilding"},
            ],
            "moves": [{"volume": "a", "shard": 0, "add": 2, "since_unix": 0, "progress": null,
                       "status": "waiting for the new replica to start"}],
        });
        let h = assess(&doc, 1000);
        assert_eq!(h["status"], "error");
        let kinds: Vec<&str> = h["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| a["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(
            kinds,
            [
                "node_down",
                "checksum_errors",
                "disk_full",
                "volume_degraded",
                "rebuild_stalled"
            ]
        );
        assert_eq!(h["alerts"][0]["since_unix"], 958);
        assert!(h["alerts"][0]["message"]
            .as_str()
            .expect("message")
            .contains("last heard 42 s ago"));
        assert!(h["alerts"][2]["message"]
            .as_str()
            .expect("message")
            .contains("92% full"));
        assert!(h["alerts"][4]["message"]
            .as_str()
            .expect("message")
            .contains("waiting for the new replica"));
    }

    #[test]
    fn no_metadata_leader_is_an_error_except_alone() {
        let doc = json!({"meta_leader": null, "nodes": [], "volumes": [], "moves": []});
        assert_eq!(assess(&doc, 0)["alerts"][0]["kind"], "no_quorum");
        let alone = json!({"standalone": true, "nodes": [], "volumes": [], "moves": []});
        assert_eq!(assess(&alone, 0)["status"], "ok");
    }
}
