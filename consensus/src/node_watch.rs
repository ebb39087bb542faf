//! The metadata leader's watch over the nodes. A node unheard for the
//! down-out interval is marked out, and an out node heard from again is
//! taken back in. Nothing is marked out while more than a third of the
//! nodes are down (then the cluster, not the node, is the problem), nor a
//! node in maintenance, nor before this node has led the metadata group for
//! a whole interval: its count of the others' silence may have started
//! late, so a new leader errs toward waiting. An out node is what healing
//! acts on: its replicas are re-created on the other nodes (`healing`),
//! from this same loop, and so are pending volume resizes (`resize`).
//! The loop also logs each replica move once when it starts and once when
//! it ends (`healing::MoveLog`): here, on the metadata leader, and not on
//! every node that applies the metadata.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::events::{say, Severity};
use crate::healing::{MoveEnd, MoveLog};
use crate::meta::{MetaCommand, MetaState, MoveReason, ReplicaMove, META_GROUP};

/// A node unheard this long counts as down (nodes ping each other every
/// 250 ms): for the count of down nodes that holds marking out back, and
/// for where new replicas may go.
pub(crate) const DOWN_AFTER: Duration = Duration::from_secs(2);

/// An out node heard from within this is back; shorter than `DOWN_AFTER`,
/// so a node just marked out is not taken back in by the silence it was
/// marked out for.
const HEARD_AGAIN: Duration = Duration::from_secs(1);

/// Starts the watch on this node; it acts only while this node leads the
/// metadata group. `interval`: the down-out interval.
pub fn spawn(cluster: Arc<Cluster>, interval: Duration) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut leading_since: Option<Instant> = None;
        let mut resizing = std::collections::HashMap::new();
        let mut moves = MoveLog::default();
        loop {
            every.tick().await;
            if Arc::strong_count(&cluster) == 1 {
                return; // the node stopped
            }
            crate::healing::report_memberships(&cluster).await;
            let me = cluster.node();
            if cluster.view().leader(META_GROUP) != Some(me) {
                leading_since = None;
                moves.forget();
                continue;
            }
            let leading_for = leading_since.get_or_insert_with(Instant::now).elapsed();
            let meta = cluster.view().meta();
            log_ended_moves(me, &meta, &mut moves);
            let silent = |n| cluster.silent_for(n);
            for cmd in decide(&meta, me, silent, leading_for, interval) {
                let what = match &cmd {
                    MetaCommand::MarkOut { node } => format!("marking node {node} out"),
                    MetaCommand::MarkIn { node } => format!("taking node {node} back in"),
                    other => format!("{other:?}"),
                };
                match cluster.propose_meta(cmd.clone()).await {
                    Ok(()) => match cmd {
                        MetaCommand::MarkOut { node } => {
                            let silent_s = cluster.silent_for(node).as_secs();
                            let message = format!(
                                "node {node} marked out: down {silent_s} s, longer than the down-out interval; its replicas are re-created elsewhere"
                            );
                            let key = format!("node/{node}/out");
                            say!(me, Severity::Warning, key, message; node, silent_s,);
                        }
                        MetaCommand::MarkIn { node } => {
                            let message = format!("node {node} taken back in: it answers again");
                            say!(me, Severity::Info, format!("node/{node}/in"), message; node,);
                        }
                        _ => tracing::info!("{what}"),
                    },
                    Err(e) => tracing::debug!(error = %e, "{what}"),
                }
            }
            // Healing acts on the metadata as it is after the marks.
            let meta = cluster.view().meta();
            let up = |n| n == me || cluster.silent_for(n) < DOWN_AFTER;
            let now = unix_now();
            for cmd in crate::healing::plan(&meta, up, now) {
                let proposed = cmd.clone();
                if let Err(e) = cluster.propose_meta(cmd).await {
                    tracing::debug!(error = %e, "proposing a replica move");
                    continue;
                }
                match proposed {
                    MetaCommand::StartMove(m) => {
                        log_started_move(me, &meta, &m);
                        moves.started(&m);
                    }
                    MetaCommand::EndMove { group, add } => {
                        let why = meta
                            .moves
                            .get(&group)
                            .and_then(|m| crate::healing::give_up(&meta, m, up, now));
                        moves.giving_up(group, add, why.unwrap_or("no longer wanted"));
                    }
                    _ => {}
                }
            }
            crate::resize::drive_pending(&cluster, &mut resizing);
        }
    });
}

fn log_started_move(me: u64, meta: &MetaState, m: &ReplicaMove) {
    let volume = meta.volume_of(m.group);
    let from = m.remove.map_or_else(
        || "as an extra replica".to_string(),
        |r| format!("in place of node {r}'s"),
    );
    let reason = match m.reason {
        MoveReason::Heal => "heal",
        MoveReason::Drain => "drain",
        MoveReason::Rebalance => "rebalance",
    };
    let message = format!(
        "rebuild started: {} gets a new replica on node {} {from} ({reason})",
        meta.describe_group(m.group),
        m.add
    );
    let key = format!("group/{}/rebuild-started/{}", m.group, m.add);
    say!(me, Severity::Info, key, message;
        group = m.group, volume, to = m.add, from = m.remove, reason,);
}

/// One line per move that ended since the last look.
fn log_ended_moves(me: u64, meta: &MetaState, moves: &mut MoveLog) {
    let now = unix_now();
    for (m, end) in moves.ended(meta) {
        let took = now.saturating_sub(m.since_unix);
        let volume = meta.volume_of(m.group);
        let what = meta.describe_group(m.group);
        let (severity, how, message) = match end {
            MoveEnd::Done => (
                Severity::Info,
                "finished",
                format!(
                    "rebuild finished: {what} has its new replica on node {} (took {took} s)",
                    m.add
                ),
            ),
            MoveEnd::GivenUp(why) => (
                Severity::Warning,
                "given-up",
                format!(
                    "rebuild given up: {what}'s new replica on node {}: {} (after {took} s)",
                    m.add,
                    why.unwrap_or("ended before its replica was in place")
                ),
            ),
            MoveEnd::VolumeDeleted => (
                Severity::Info,
                "ended",
                format!("rebuild ended: {what}'s volume was deleted"),
            ),
        };
        let key = format!("group/{}/rebuild-{how}/{}", m.group, m.add);
        say!(me, severity, key, message;
            group = m.group, volume, to = m.add, from = m.remove, took_s = took,);
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The changes due now: `silent(n)` is how long node `n` has been unheard.
fn decide(
    meta: &MetaState,
    me: u64,
    silent: impl Fn(u64) -> Duration,
    leading_for: Duration,
    interval: Duration,
) -> Vec<MetaCommand> {
    let others: Vec<u64> = meta.nodes.keys().copied().filter(|n| *n != me).collect();
    let down = others.iter().filter(|n| silent(**n) >= DOWN_AFTER).count();
    let cluster_in_trouble = down * 3 > meta.nodes.len();
    let mut out = Vec::new();
    for node in others {
        let state = meta.node_state(node);
        let quiet = silent(node);
        if state.out {
            // Heard again (nodes ping each other several times a second).
            if quiet < HEARD_AGAIN {
                out.push(MetaCommand::MarkIn { node });
            }
        } else if !state.maintenance
            && !cluster_in_trouble
            && quiet.min(leading_for) >= interval.max(DOWN_AFTER)
        {
            out.push(MetaCommand::MarkOut { node });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(nodes: &[u64]) -> MetaState {
        let n = nodes.iter().copied().max().unwrap_or(0);
        crate::meta::testing::state(n, Vec::new())
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn down_nodes_go_out_after_the_interval_unless_excused() {
        let m = meta(&[1, 2, 3, 4]);
        let silent = |down: &'static [u64], for_: Duration| {
            move |n: u64| {
                if down.contains(&n) {
                    for_
                } else {
                    Duration::ZERO
                }
            }
        };
        // One of four down for longer than the interval: out.
        assert_eq!(
            decide(&m, 1, silent(&[4], 11 * MIN), 20 * MIN, 10 * MIN),
            vec![MetaCommand::MarkOut { node: 4 }]
        );
        // Not yet; a short flap moves nothing.
        assert!(decide(&m, 1, silent(&[4], 9 * MIN), 20 * MIN, 10 * MIN).is_empty());
        // A leader that has not led for the interval waits.
        assert!(decide(&m, 1, silent(&[4], 11 * MIN), 5 * MIN, 10 * MIN).is_empty());
        // Two of four down: the cluster is in trouble, nothing goes out.
        assert!(decide(&m, 1, silent(&[3, 4], 11 * MIN), 20 * MIN, 10 * MIN).is_empty());
        // In maintenance: stays in.
        let mut mm = m.clone();
        mm.apply(10, MetaCommand::SetMaintenance { node: 4, on: true })
            .expect("maintenance");
        assert!(decide(&mm, 1, silent(&[4], 11 * MIN), 20 * MIN, 10 * MIN).is_empty());
        // Out and heard again: back in; out and still down: nothing more.
        let mut mo = m.clone();
        mo.apply(10, MetaCommand::MarkOut { node: 4 }).expect("out");
        assert_eq!(
            decide(&mo, 1, silent(&[], MIN), 20 * MIN, 10 * MIN),
            vec![MetaCommand::MarkIn { node: 4 }]
        );
        assert!(decide(&mo, 1, silent(&[4], 11 * MIN), 20 * MIN, 10 * MIN).is_empty());
        // Still silent, only not for long yet (a short interval): stays out.
        let secs = |s| Duration::from_secs(s);
        assert!(decide(&mo, 1, silent(&[4], secs(4)), 20 * MIN, secs(3)).is_empty());
    }
}
