//! Healing: the metadata leader re-creates, on other nodes, the replicas
//! that nodes marked out held (`MetaCommand::StartMove`; the shard leaders
//! carry the moves out, see `driver::reconfigure`), and gives up a move
//! whose target went out or whose replaced node came back before the
//! swap. A target honours the placement rules: a node that is up, neither
//! out nor in maintenance, holding no replica of the shard, the least
//! loaded first; and at most `MOVES_PER_NODE` copies go to one node at a
//! time, so client I/O keeps going. A shard no node can take stays
//! degraded (`cluster status` says why).
//!
//! Every node also reports the voters of the shard groups it leads when
//! the metadata has them otherwise (`ShardMembership`), which is what
//! completes a move.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::meta::{MetaCommand, MetaState, MoveReason, ReplicaMove};

/// Replica copies in flight to one node at most.
pub const MOVES_PER_NODE: usize = 2;

/// The moves to start and to give up now. `up(n)`: node `n` was heard from
/// lately; `now_unix`: the time to stamp new moves with.
pub fn plan(meta: &MetaState, up: impl Fn(u64) -> bool, now_unix: u64) -> Vec<MetaCommand> {
    let mut out = Vec::new();
    let mut load = replica_load(meta);
    let mut incoming: BTreeMap<u64, usize> = BTreeMap::new();
    for m in meta.moves.values() {
        let gone = meta.node_state(m.add).out || !meta.nodes.contains_key(&m.add);
        let back =
            m.reason == MoveReason::Heal && m.remove.is_some_and(|r| !meta.node_state(r).out);
        if gone || back {
            out.push(MetaCommand::EndMove {
                group: m.group,
                add: m.add,
            });
        } else {
            *incoming.entry(m.add).or_default() += 1;
        }
    }
    for rec in meta.volumes.values() {
        for (group, voters) in rec.groups() {
            if meta.moves.contains_key(&group) {
                continue;
            }
            let Some(lost) = voters.iter().find(|v| meta.node_state(**v).out) else {
                continue;
            };
            let Some(target) = pick_target(meta, voters, &load, &incoming, &up) else {
                continue;
            };
            *incoming.entry(target).or_default() += 1;
            *load.entry(target).or_default() += 1;
            out.push(MetaCommand::StartMove(ReplicaMove {
                group,
                add: target,
                remove: Some(*lost),
                reason: MoveReason::Heal,
                since_unix: now_unix,
            }));
        }
    }
    out
}

/// Why no node can take a replica of a shard placed on `voters`, if so.
pub fn unplaceable(meta: &MetaState, voters: &[u64], up: impl Fn(u64) -> bool) -> Option<String> {
    let fit = meta.nodes.keys().any(|n| eligible(meta, *n, voters, &up));
    (!fit).then(|| {
        format!(
            "no node can take a replica: every node that is up, in and not in maintenance \
             already holds one (replicas on {voters:?})"
        )
    })
}

fn eligible(meta: &MetaState, n: u64, voters: &[u64], up: &impl Fn(u64) -> bool) -> bool {
    let s = meta.node_state(n);
    up(n) && !s.out && !s.maintenance && !voters.contains(&n)
}

/// The node to take a new replica of a shard placed on `voters`: eligible,
/// with room for another copy in flight, the fewest replicas first.
fn pick_target(
    meta: &MetaState,
    voters: &[u64],
    load: &BTreeMap<u64, usize>,
    incoming: &BTreeMap<u64, usize>,
    up: &impl Fn(u64) -> bool,
) -> Option<u64> {
    meta.nodes
        .keys()
        .copied()
        .filter(|n| eligible(meta, *n, voters, up))
        .filter(|n| incoming.get(n).copied().unwrap_or(0) < MOVES_PER_NODE)
        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), *n))
}

/// Shard replicas per node, counting moves' targets.
fn replica_load(meta: &MetaState) -> BTreeMap<u64, usize> {
    let mut load = BTreeMap::new();
    for rec in meta.volumes.values() {
        for nodes in &rec.shards {
            for n in nodes {
                *load.entry(*n).or_default() += 1;
            }
        }
    }
    for m in meta.moves.values() {
        *load.entry(m.add).or_default() += 1;
    }
    load
}

/// Proposes the memberships this node's driver found the metadata lacking
/// (`driver::MembershipReport`); each is dropped once proposed (the driver
/// offers it again while it still differs).
pub async fn report_memberships(cluster: &Arc<Cluster>) {
    let reports: Vec<_> = {
        let map = cluster
            .view()
            .membership_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(g, r)| (*g, r.clone())).collect()
    };
    for (group, report) in reports {
        let cmd = MetaCommand::ShardMembership {
            group,
            voters: report.voters.clone(),
            conf_index: report.as_of,
        };
        match cluster.propose_meta(cmd).await {
            Ok(()) => {
                tracing::info!(group, voters = ?report.voters, "shard membership recorded");
                let mut map = cluster
                    .view()
                    .membership_reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if map.get(&group) == Some(&report) {
                    map.remove(&group);
                }
            }
            Err(e) => tracing::debug!(group, error = %e, "reporting a shard membership"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{shard_group, NodeInfo};

    fn meta(nodes: u64, shards: Vec<Vec<u64>>) -> MetaState {
        let mut m = MetaState::default();
        for id in 1..=nodes {
            let info = NodeInfo {
                id,
                raft_addr: format!("127.0.0.1:{}", 7000 + id).parse().expect("addr"),
                nbd_addr: None,
                admin_addr: None,
            };
            m.apply(id, MetaCommand::PutNode(info)).expect("node");
        }
        m.apply(
            100,
            MetaCommand::CreateVolume {
                name: "v".into(),
                size: 1 << 30,
                chunk_size: 64 << 20,
                replicas: 3,
                shards,
                created_unix: 0,
                labels: Default::default(),
            },
        )
        .expect("create");
        m
    }

    fn starts(cmds: &[MetaCommand]) -> Vec<(u64, u64, Option<u64>)> {
        cmds.iter()
            .filter_map(|c| match c {
                MetaCommand::StartMove(m) => Some((m.group, m.add, m.remove)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_out_nodes_replicas_go_to_eligible_nodes_a_few_at_a_time() {
        let shards = vec![vec![1, 2, 3]; 6];
        let mut m = meta(5, shards);
        let all_up = |_| true;
        assert!(plan(&m, all_up, 0).is_empty());
        m.apply(200, MetaCommand::MarkOut { node: 3 }).expect("out");
        m.apply(201, MetaCommand::SetMaintenance { node: 5, on: true })
            .expect("maint");
        // Node 4 is the only one eligible: two copies at a time.
        let cmds = plan(&m, |n| n != 3, 0);
        assert_eq!(
            starts(&cmds),
            vec![
                (shard_group(1, 0), 4, Some(3)),
                (shard_group(1, 1), 4, Some(3))
            ]
        );
        for (i, c) in cmds.into_iter().enumerate() {
            m.apply(300 + i as u64, c).expect("start");
        }
        // In flight: no more to node 4 until those end.
        assert!(starts(&plan(&m, |n| n != 3, 0)).is_empty());
        // Node 5 out of maintenance takes the next ones.
        m.apply(400, MetaCommand::SetMaintenance { node: 5, on: false })
            .expect("maint off");
        let next = starts(&plan(&m, |n| n != 3, 0));
        assert_eq!(next.len(), 2);
        assert!(next.iter().all(|(_, add, _)| *add == 5));
        // Node 3 back in before the swaps: its moves are given up.
        m.apply(401, MetaCommand::MarkIn { node: 3 }).expect("in");
        let cmds = plan(&m, all_up, 0);
        let ends = cmds
            .iter()
            .filter(|c| matches!(c, MetaCommand::EndMove { .. }))
            .count();
        assert_eq!(ends, 2);
        assert!(starts(&cmds).is_empty());
    }

    #[test]
    fn a_shard_with_nowhere_to_go_says_why() {
        let mut m = meta(3, vec![vec![1, 2, 3]]);
        m.apply(200, MetaCommand::MarkOut { node: 3 }).expect("out");
        assert!(plan(&m, |n| n != 3, 0).is_empty());
        let why = unplaceable(&m, &[1, 2, 3], |n| n != 3).expect("unplaceable");
        assert!(why.contains("no node can take a replica"), "{why}");
        let m4 = meta(4, vec![vec![1, 2, 3]]);
        assert_eq!(unplaceable(&m4, &[1, 2, 3], |_| true), None);
    }
}
