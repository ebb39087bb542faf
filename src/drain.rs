//! `raftblock node drain N --wait`: follows a drain in the cluster status
//! with a progress bar until the node holds no replica and leads no shard,
//! and says what each move is doing (a shard that cannot move says why).

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::time::Duration;

use crate::client::AdminClient;

/// Replicas and leaderships node `id` still holds, from the status.
fn left_on(st: &Value, id: u64) -> (u64, u64) {
    st["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .map(|n| {
            (
                n["replicas"].as_u64().unwrap_or(0),
                n["leaders"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// The first reason a shard on node `id` gives (a move's progress, or
/// why it cannot move).
fn what_now(st: &Value, id: u64) -> String {
    st["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|v| v["shards"].as_array().into_iter().flatten())
        .filter(|s| {
            s["move"]["remove"] == id
                || s["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["node"] == id))
        })
        .find_map(|s| s["reason"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Waits until node `id` is empty, showing progress.
pub fn wait(client: &AdminClient, id: u64) -> Result<()> {
    let st = client.cluster_status()?;
    let (start, _) = left_on(&st, id);
    let bar = ProgressBar::new(start.max(1));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} replicas moved  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let st = client.cluster_status()?;
        let (replicas, leaders) = left_on(&st, id);
        bar.set_length(start.max(replicas).max(1));
        bar.set_position(start.saturating_sub(replicas));
        bar.set_message(what_now(&st, id));
        if replicas == 0 && leaders == 0 {
            bar.finish_with_message(format!(
                "node {id} holds no replica; `raftblock node remove {id}` takes it out"
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        bar.tick();
    }
}
