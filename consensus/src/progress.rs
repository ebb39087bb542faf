//! Long operations running on this process's nodes (a scrub reading a
//! copy, a verify comparing replicas) and how far along each is, so the
//! CLI can draw a progress bar and the status page can list them while
//! they run. Entries are keyed by node: the demo runs three nodes in one
//! process. An operation is listed from [`Running::start`] until its
//! guard is dropped, however it ends.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One running operation as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationProgress {
    /// The node doing it.
    pub node: u64,
    /// `scrub` or `verify`.
    pub kind: String,
    /// The volume.
    pub volume: String,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What is counted (`chunks`).
    pub unit: String,
    /// When it started (unix seconds).
    pub started_unix: u64,
}

struct Entry {
    node: u64,
    kind: &'static str,
    volume: String,
    unit: &'static str,
    total: u64,
    started_unix: u64,
    done: AtomicU64,
}

static RUNNING: Mutex<Vec<Arc<Entry>>> = Mutex::new(Vec::new());

fn running_list() -> std::sync::MutexGuard<'static, Vec<Arc<Entry>>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running operation; dropping it takes it off the list.
pub struct Running(Arc<Entry>);

impl Running {
    /// Lists `kind` on `volume` at `node`, with `total` `unit`s to do.
    pub fn start(
        node: u64,
        kind: &'static str,
        volume: &str,
        total: u64,
        unit: &'static str,
    ) -> Running {
        let e = Arc::new(Entry {
            node,
            kind,
            volume: volume.to_string(),
            unit,
            total,
            started_unix: raftblock_storage::catalog::unix_now(),
            done: AtomicU64::new(0),
        });
        running_list().push(e.clone());
        Running(e)
    }

    /// Counts `n` more units done.
    pub fn advance(&self, n: u64) {
        self.0.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        running_list().retain(|e| !Arc::ptr_eq(e, &self.0));
    }
}

/// The operations running at `node`.
pub fn running(node: u64) -> Vec<OperationProgress> {
    running_list()
        .iter()
        .filter(|e| e.node == node)
        .map(|e| OperationProgress {
            node: e.node,
            kind: e.kind.to_string(),
            volume: e.volume.clone(),
            done: e.done.load(Ordering::Relaxed).min(e.total),
            total: e.total,
            unit: e.unit.to_string(),
            started_unix: e.started_unix,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_running_per_node() {
        let a = Running::start(901, "scrub", "v", 10, "chunks");
        let b = Running::start(902, "verify", "v", 4, "chunks");
        a.advance(3);
        a.advance(30);
        let at_901 = running(901);
        assert_eq!(at_901.len(), 1);
        assert_eq!((at_901[0].done, at_901[0].total), (10, 10));
        assert_eq!(running(902)[0].kind, "verify");
        drop(a);
        assert!(running(901).is_empty());
        assert_eq!(running(902).len(), 1);
        drop(b);
        assert!(running(902).is_empty());
    }
}
