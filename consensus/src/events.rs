//! The cluster events this process's nodes noticed lately: a node down,
//! back or marked out, a shard losing or regaining a replica, a group long
//! without a leader, a rebuild starting and ending. Each is also a log
//! line; this list exists so the status page and `cluster status` can say
//! what happened and not only how things are now (a rebuild shorter than
//! the page's refresh is otherwise never seen). It is kept in memory, the
//! last [`KEEP`] per node, and lost with the process. Entries are keyed by
//! node, as in `progress`: the demo runs three nodes in one process.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Events kept per node.
pub const KEEP: usize = 100;

/// How much an event matters: the level of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
}

/// One event as one node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// The node that saw it.
    pub node: u64,
    /// When (unix seconds).
    pub at_unix: u64,
    pub severity: Severity,
    /// What happened to what (`node/4/down`, `group/G/rebuild-finished`):
    /// the same on every node that sees it, so reports can be merged.
    pub key: String,
    /// The sentence of the log line.
    pub message: String,
}

static EVENTS: Mutex<VecDeque<ClusterEvent>> = Mutex::new(VecDeque::new());

fn events() -> std::sync::MutexGuard<'static, VecDeque<ClusterEvent>> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Says an event once: its log line, at the level its severity asks, with
/// the given fields, and its entry in `node`'s list, the same sentence in
/// both. `say!(node, severity, key, message; field = value, ...)`.
macro_rules! say {
    ($node:expr, $severity:expr, $key:expr, $message:expr; $($field:tt)*) => {{
        let (severity, message): ($crate::events::Severity, String) = ($severity, $message);
        match severity {
            $crate::events::Severity::Warning => tracing::warn!($($field)* "{message}"),
            $crate::events::Severity::Info => tracing::info!($($field)* "{message}"),
        }
        $crate::events::record($node, severity, $key, message);
    }};
}
pub(crate) use say;

/// Keeps an event `node` saw now.
pub fn record(node: u64, severity: Severity, key: String, message: String) {
    let at_unix = raftblock_storage::catalog::unix_now();
    let mut all = events();
    if all.iter().filter(|e| e.node == node).count() >= KEEP {
        if let Some(i) = all.iter().position(|e| e.node == node) {
            all.remove(i);
        }
    }
    all.push_back(ClusterEvent {
        node,
        at_unix,
        severity,
        key,
        message,
    });
}

/// The events `node` kept, oldest first.
pub fn recent(node: u64) -> Vec<ClusterEvent> {
    events()
        .iter()
        .filter(|e| e.node == node)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_per_node_up_to_the_limit() {
        for i in 0..KEEP + 5 {
            record(801, Severity::Info, format!("k/{i}"), format!("event {i}"));
        }
        record(
            802,
            Severity::Warning,
            "node/1/down".into(),
            "node 1 is down".into(),
        );
        let mine = recent(801);
        assert_eq!(mine.len(), KEEP);
        assert_eq!(mine[0].key, "k/5", "the oldest go first");
        assert_eq!(mine[KEEP - 1].key, format!("k/{}", KEEP + 4));
        let other = recent(802);
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].severity, Severity::Warning);
    }
}
