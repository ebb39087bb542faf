//! Progress of the CLI's long calls (`volume scrub`, `volume verify`,
//! `volume resize`): the call runs on its own thread while a bar on stderr
//! follows the operations the cluster reports for the volume (each node's
//! scrub and verify count the chunks they have done, `GET /v1/status`
//! lists them). Nothing is drawn when stderr is not a terminal.

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::sync::mpsc;
use std::time::Duration;

use crate::client::AdminClient;

/// Chunks done and in all over the operations on `volume`, and what they
/// are (e.g. "scrub on 3 node(s)").
fn operations_on(st: &Value, volume: &str) -> Option<(u64, u64, String)> {
    let ops: Vec<&Value> = st["operations"]
        .as_array()?
        .iter()
        .filter(|o| o["volume"] == volume)
        .collect();
    if ops.is_empty() {
        return None;
    }
    let done = ops.iter().filter_map(|o| o["done"].as_u64()).sum();
    let total = ops.iter().filter_map(|o| o["total"].as_u64()).sum();
    let mut kinds: Vec<&str> = ops.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Some((
        done,
        total,
        format!("{} on {} node(s)", kinds.join(" + "), ops.len()),
    ))
}

/// Runs `call` while showing `label` and the progress of the operations on
/// `volume` that the daemon at `server` reports; returns what `call` did.
pub fn follow<T: Send + 'static>(
    server: &str,
    volume: &str,
    label: &str,
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let poll = AdminClient::with_timeout(server, Duration::from_secs(5));
    let counting = ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {pos}/{len} chunks {elapsed} (ETA {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut styled = false;
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(700)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!("the call ended without an answer"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if bar.is_hidden() {
            continue;
        }
        if let Some((done, total, what)) = poll
            .cluster_status()
            .ok()
            .and_then(|st| operations_on(&st, volume))
        {
            if !styled {
                bar.set_style(counting.clone());
                styled = true;
            }
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("{label}: {what}"));
        }
    };
    bar.finish_and_clear();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sums_the_operations_of_one_volume() {
        let st = json!({"operations": [
            {"node": 1, "kind": "scrub", "volume": "a", "done": 3, "total": 8},
            {"node": 2, "kind": "scrub", "volume": "a", "done": 5, "total": 8},
            {"node": 2, "kind": "verify", "volume": "b", "done": 1, "total": 2},
        ]});
        assert_eq!(
            operations_on(&st, "a"),
            Some((8, 16, "scrub on 2 node(s)".to_string()))
        );
        assert_eq!(operations_on(&st, "c"), None);
        assert_eq!(operations_on(&json!({}), "a"), None);
    }
}
