//! The `events` of `GET /v1/status`: what the nodes noticed lately
//! (`raftblock_consensus::events`), merged. A node's death is seen by every
//! survivor, so reports of the same thing (the same key) from different
//! nodes within seconds of each other become one entry naming the nodes
//! that saw it. A node says each event once, so its second report of a
//! key is a second event (a node down again).

use raftblock_consensus::events::ClusterEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Other nodes' reports of one key this soon after the first are the same
/// event (nodes notice a death within seconds of each other).
const SAME_EVENT_SECS: u64 = 15;
/// Entries listed, newest first.
const LISTED: usize = 50;

/// One event as the cluster saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergedEvent {
    /// When the first node saw it (unix seconds).
    pub at_unix: u64,
    pub severity: raftblock_consensus::events::Severity,
    pub key: String,
    /// The first node's sentence.
    pub message: String,
    /// The nodes that saw it, in order of id.
    pub nodes: Vec<u64>,
}

/// Merges the events each node's facts list (`facts["events"]`), newest
/// first; a node that sent none or something else adds nothing.
pub fn merge<'a>(facts: impl Iterator<Item = &'a Value>) -> Vec<MergedEvent> {
    // Entry by entry: one a node of another version words differently
    // costs only itself.
    let mut all: Vec<ClusterEvent> = facts
        .filter_map(|f| f["events"].as_array())
        .flatten()
        .filter_map(|e| ClusterEvent::deserialize(e).ok())
        .collect();
    all.sort_by_key(|e| (e.at_unix, e.node));
    let mut merged: Vec<MergedEvent> = Vec::new();
    for e in all {
        // Only the latest event of the key: a report never joins one that
        // a newer occurrence has followed.
        let same = merged
            .iter_mut()
            .rev()
            .find(|m| m.key == e.key)
            .filter(|m| {
                !m.nodes.contains(&e.node) && e.at_unix.saturating_sub(m.at_unix) <= SAME_EVENT_SECS
            });
        match same {
            Some(m) => m.nodes.push(e.node),
            None => merged.push(MergedEvent {
                at_unix: e.at_unix,
                severity: e.severity,
                key: e.key,
                message: e.message,
                nodes: vec![e.node],
            }),
        }
    }
    merged.reverse();
    merged.truncate(LISTED);
    for m in &mut merged {
        m.nodes.sort_unstable();
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(node: u64, at: u64, key: &str, message: &str) -> Value {
        json!({"node": node, "at_unix": at, "severity": "warning", "key": key, "message": message})
    }

    #[test]
    fn the_same_event_seen_by_several_nodes_is_one_entry() {
        let facts = [
            json!({"events": [ev(1, 100, "node/4/down", "node 4 is down: not heard from for 5.1 s"),
                              ev(1, 104, "node/4/back", "node 4 is back after 4 s"),
                              ev(1, 108, "node/4/down", "node 4 is down: not heard from for 5.0 s")]}),
            json!({"events": [ev(2, 101, "node/4/down", "node 4 is down: not heard from for 5.6 s")]}),
            // Node 3 is not answering; node 5 runs an older version; node 6
            // a newer one, with an entry this one cannot read.
            Value::Null,
            json!({"events": "nonsense"}),
            json!({"events": [{"node": 6, "at_unix": 102, "severity": "fatal", "key": "x", "message": "?"},
                              ev(6, 101, "node/4/down", "node 4 is down: not heard from for 5.2 s")]}),
            // Much later: a new event.
            json!({"events": [ev(3, 500, "node/4/down", "node 4 is down: not heard from for 5.0 s")]}),
        ];
        let m = merge(facts.iter());
        let got: Vec<(u64, &str, Vec<u64>)> = m
            .iter()
            .map(|e| (e.at_unix, e.key.as_str(), e.nodes.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (500, "node/4/down", vec![3]),
                // Node 1 said it again: down a second time.
                (108, "node/4/down", vec![1]),
                (104, "node/4/back", vec![1]),
                (100, "node/4/down", vec![1, 2, 6]),
            ]
        );
        assert_eq!(m[3].message, "node 4 is down: not heard from for 5.1 s");
    }

    #[test]
    fn a_report_joins_only_the_latest_occurrence() {
        // Node 1 saw node 4 go down twice in 15 s; node 2's later report
        // is of the second death, not the first.
        let facts = [
            json!({"events": [ev(1, 100, "node/4/down", "a"), ev(1, 107, "node/4/down", "b")]}),
            json!({"events": [ev(2, 108, "node/4/down", "c"), ev(2, 114, "node/4/down", "d")]}),
        ];
        let m = merge(facts.iter());
        let got: Vec<(u64, Vec<u64>)> = m.iter().map(|e| (e.at_unix, e.nodes.clone())).collect();
        assert_eq!(got, vec![(114, vec![2]), (107, vec![1, 2]), (100, vec![1])]);
    }

    #[test]
    fn only_the_newest_are_listed() {
        let events: Vec<Value> = (0..LISTED as u64 + 10)
            .map(|i| ev(1, i, &format!("k/{i}"), "x"))
            .collect();
        let m = merge([json!({ "events": events })].iter());
        assert_eq!(m.len(), LISTED);
        assert_eq!(m[0].at_unix, LISTED as u64 + 9);
    }
}
