//! `raftblock cluster events`: what the nodes noticed lately (a node down
//! or back, replicas lost and regained, rebuilds), from the `events` of
//! `GET /v1/status`, oldest first like a log. `--follow` then prints each
//! new one as it comes, like `ceph -w`.

use anyhow::Result;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

use crate::client::AdminClient;

/// An event's identity: the same event keeps it while more nodes report
/// it.
fn id(e: &Value) -> (String, u64) {
    (
        e["key"].as_str().unwrap_or_default().to_string(),
        e["at_unix"].as_u64().unwrap_or(0),
    )
}

/// The entries of `events` (newest first, as the API lists them) not in
/// `printed`, oldest first; marks them printed.
pub fn unseen(events: &[Value], printed: &mut HashSet<(String, u64)>) -> Vec<Value> {
    let mut out: Vec<Value> = events
        .iter()
        .filter(|e| printed.insert(id(e)))
        .cloned()
        .collect();
    out.reverse();
    out
}

/// Prints the events (JSON: the document's `events` as they are), then
/// with `follow` every new one each `interval` until interrupted. A node
/// that stops answering while followed is reported and asked again.
pub fn run(server: &str, json: bool, follow: bool, interval: Duration) -> Result<()> {
    let client = AdminClient::new(server);
    let st = client.cluster_status()?;
    let events = st["events"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let mut printed = HashSet::new();
    let first = unseen(&events, &mut printed);
    if first.is_empty() && !follow {
        println!("no events since the nodes started");
    }
    for e in first {
        println!("{}", crate::status::event_line(&e));
    }
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(interval);
        match client.cluster_status() {
            Ok(st) => {
                let events = st["events"].as_array().cloned().unwrap_or_default();
                for e in unseen(&events, &mut printed) {
                    println!("{}", crate::status::event_line(&e));
                }
            }
            Err(e) => eprintln!("{server} did not answer ({e:#}); asking again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_event_is_printed_once_oldest_first() {
        let mut printed = HashSet::new();
        let a = json!({"key": "node/4/down", "at_unix": 100, "nodes": [1]});
        let b = json!({"key": "node/4/back", "at_unix": 130, "nodes": [1]});
        assert_eq!(
            unseen(&[b.clone(), a.clone()], &mut printed),
            vec![a, b.clone()]
        );
        // The same event seen by one more node, and a new one.
        let a2 = json!({"key": "node/4/down", "at_unix": 100, "nodes": [1, 2]});
        let c = json!({"key": "node/4/down", "at_unix": 200, "nodes": [2]});
        assert_eq!(unseen(&[c.clone(), b, a2], &mut printed), vec![c]);
    }
}
