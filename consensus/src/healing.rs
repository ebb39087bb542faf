//! The placement loop of the metadata leader, once a second:
//!
//! - **heal**: the replicas that nodes marked out held are re-created on
//!   other nodes;
//! - **drain**: the replicas of draining nodes move to other nodes;
//! - **rebalance**: while nothing is degraded or moving, one replica at a
//!   time moves from the node holding the most to the one holding the
//!   fewest until every node is within one of the others, and preferred
//!   leaders spread the same way (a node that joins takes its share);
//! - moves whose target went out or began draining, or has been unheard
//!   for `STALLED_TARGET` since the move began (it never starts its
//!   replica: the shard would stay degraded for the whole down-out
//!   interval), or whose replaced node came back before the swap, are
//!   given up; the next pass picks another target.
//!
//! Each move is recorded in the metadata (`MetaCommand::StartMove`) and
//! carried out by the shard's leader (`driver::reconfigure`). A target
//! honours the placement rules: up, taking replicas (not out, not
//! draining), not in maintenance, holding no replica of the shard, and
//! fitting the volume's label rules; the least loaded first, and at most
//! `MOVES_PER_NODE` copies go to one node at a time so client I/O keeps
//! going. A shard no node can take stays degraded (`unplaceable` says
//! why). Rebalancing waits for everything else and moves nothing back and
//! forth: a move only ever narrows the spread (Longhorn #4502).
//!
//! Every node also reports the voters of the shard groups it leads when
//! the metadata has them otherwise (`ShardMembership`), which is what
//! completes a move.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::Cluster;
use crate::meta::{MetaCommand, MetaState, MoveReason, ReplicaMove, VolumeRecord};

/// Replica copies in flight to one node at most.
pub const MOVES_PER_NODE: usize = 2;

/// A move whose target has been unheard this long since it began is given
/// up (its target died or cannot start the replica).
pub const STALLED_TARGET_S: u64 = 60;

/// The moves to start and to give up now. `up(n)`: node `n` was heard from
/// lately; `now_unix`: the time to stamp new moves with.
pub fn plan(meta: &MetaState, up: impl Fn(u64) -> bool, now_unix: u64) -> Vec<MetaCommand> {
    let mut out = Vec::new();
    let mut load = replica_load(meta);
    let mut incoming: BTreeMap<u64, usize> = BTreeMap::new();
    for m in meta.moves.values() {
        if give_up(meta, m, &up, now_unix).is_some() {
            out.push(MetaCommand::EndMove {
                group: m.group,
                add: m.add,
            });
        } else {
            *incoming.entry(m.add).or_default() += 1;
        }
    }
    let mut moving = !meta.moves.is_empty();
    for rec in meta.volumes.values() {
        for (group, voters) in rec.groups() {
            if meta.moves.contains_key(&group) {
                continue;
            }
            let leaving = voters
                .iter()
                .find(|v| meta.node_state(**v).out)
                .map(|v| (*v, MoveReason::Heal))
                .or_else(|| {
                    voters
                        .iter()
                        .find(|v| meta.node_state(**v).draining)
                        .map(|v| (*v, MoveReason::Drain))
                });
            let Some((lost, reason)) = leaving else {
                continue;
            };
            moving = true;
            let Some(target) = pick_target(meta, rec, voters, lost, &load, &incoming, &up) else {
                continue;
            };
            *incoming.entry(target).or_default() += 1;
            *load.entry(target).or_default() += 1;
            out.push(start(group, target, Some(lost), reason, now_unix));
        }
    }
    // Rebalancing only on a quiet, whole cluster.
    let degraded = meta
        .volumes
        .values()
        .any(|v| v.shards.iter().flatten().any(|n| !up(*n)));
    if !moving && !degraded && out.is_empty() {
        out.extend(rebalance(meta, &load, &up, now_unix));
    }
    out
}

/// Why move `m` is to be given up now, if it is.
pub fn give_up(
    meta: &MetaState,
    m: &ReplicaMove,
    up: impl Fn(u64) -> bool,
    now_unix: u64,
) -> Option<&'static str> {
    let s = meta.node_state(m.add);
    if !meta.nodes.contains_key(&m.add) {
        return Some("its target left the cluster");
    }
    if s.out {
        return Some("its target was marked out");
    }
    if s.draining {
        return Some("its target is draining");
    }
    if !up(m.add) && now_unix.saturating_sub(m.since_unix) >= STALLED_TARGET_S {
        return Some("its target has been unheard since the move began");
    }
    let back = m.reason == MoveReason::Heal && m.remove.is_some_and(|r| !meta.node_state(r).out);
    back.then_some("the replaced node is back in")
}

/// How a move ended, as the metadata leader saw it go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveEnd {
    /// Its new replica is a voter, the replaced one gone.
    Done,
    /// Given up (the reason, when this node gave it up).
    GivenUp(Option<&'static str>),
    /// Its volume was deleted.
    VolumeDeleted,
}

/// The metadata leader's record of the moves in flight, so that each move
/// is one line when it starts and one when it ends, on that node alone
/// (not on every node applying the metadata).
#[derive(Debug, Default)]
pub struct MoveLog {
    /// The moves at the last look (and those started since).
    seen: BTreeMap<u64, ReplicaMove>,
    /// Why this node gave up the moves of these groups.
    giving_up: BTreeMap<u64, (u64, &'static str)>,
}

impl MoveLog {
    /// This node started `m`.
    pub fn started(&mut self, m: &ReplicaMove) {
        self.seen.insert(m.group, m.clone());
    }

    /// This node proposed giving up the move of `group` to `add`, for
    /// `why`.
    pub fn giving_up(&mut self, group: u64, add: u64, why: &'static str) {
        self.giving_up.insert(group, (add, why));
    }

    /// The moves gone from `meta` since the last look, and how each ended.
    /// Moves in `meta` not seen before (a previous leader's) are taken in
    /// without a word.
    pub fn ended(&mut self, meta: &MetaState) -> Vec<(ReplicaMove, MoveEnd)> {
        let mut out = Vec::new();
        for (g, m) in std::mem::take(&mut self.seen) {
            if meta.moves.get(&g) == Some(&m) {
                continue;
            }
            let why = self
                .giving_up
                .remove(&g)
                .filter(|(add, _)| *add == m.add)
                .map(|(_, why)| why);
            let end = match meta.shard(g) {
                None => MoveEnd::VolumeDeleted,
                Some((rec, i)) => {
                    let voters = &rec.shards[i];
                    let done =
                        voters.contains(&m.add) && m.remove.is_none_or(|r| !voters.contains(&r));
                    if done {
                        MoveEnd::Done
                    } else {
                        MoveEnd::GivenUp(why)
                    }
                }
            };
            out.push((m, end));
        }
        self.seen = meta.moves.clone();
        self.giving_up.retain(|g, _| self.seen.contains_key(g));
        out
    }

    /// This node no longer leads the metadata group: the next leader
    /// tells how the moves end.
    pub fn forget(&mut self) {
        self.seen.clear();
        self.giving_up.clear();
    }
}

fn start(group: u64, add: u64, remove: Option<u64>, reason: MoveReason, now: u64) -> MetaCommand {
    MetaCommand::StartMove(ReplicaMove {
        group,
        add,
        remove,
        reason,
        since_unix: now,
    })
}

/// One step toward even replica counts, or else toward even preferred
/// leaders, over the nodes that take replicas and are up.
fn rebalance(
    meta: &MetaState,
    load: &BTreeMap<u64, usize>,
    up: &impl Fn(u64) -> bool,
    now: u64,
) -> Option<MetaCommand> {
    let nodes: Vec<u64> = meta
        .nodes
        .keys()
        .copied()
        .filter(|n| meta.takes_replicas(*n) && !meta.node_state(*n).maintenance && up(*n))
        .collect();
    let count = |n: &u64| load.get(n).copied().unwrap_or(0);
    // Fullest first; the emptiest node that fits a shard takes it.
    let mut by_load = nodes.clone();
    by_load.sort_by_key(|n| (std::cmp::Reverse(count(n)), *n));
    for from in &by_load {
        for to in by_load.iter().rev() {
            if count(from) <= count(to) + 1 {
                break;
            }
            for rec in meta.volumes.values() {
                for (group, voters) in rec.groups() {
                    let rest: Vec<u64> = voters.iter().copied().filter(|v| v != from).collect();
                    if voters.contains(from)
                        && !voters.contains(to)
                        && meta.fits_rules(&rec.rules, *to, &rest)
                    {
                        return Some(start(group, *to, Some(*from), MoveReason::Rebalance, now));
                    }
                }
            }
        }
    }
    // Leaders: the first replica of each shard is its preferred leader
    // (volumes served from a node lead there instead).
    let mut leads: BTreeMap<u64, usize> = nodes.iter().map(|n| (*n, 0)).collect();
    for rec in meta.volumes.values().filter(|v| v.served_by.is_none()) {
        for first in rec.shards.iter().filter_map(|s| s.first()) {
            if let Some(c) = leads.get_mut(first) {
                *c += 1;
            }
        }
    }
    let (&most, &hi) = leads
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    let (&least, &lo) = leads.iter().min_by_key(|(n, c)| (**c, **n))?;
    if hi <= lo + 1 {
        return None;
    }
    meta.volumes
        .values()
        .filter(|v| v.served_by.is_none())
        .flat_map(|v| v.groups())
        .find(|(_, voters)| voters.first() == Some(&most) && voters.contains(&least))
        .map(|(group, _)| MetaCommand::PreferLeader { group, node: least })
}

/// Why no node can take a replica of `rec`'s shard placed on `voters` in
/// place of `leaving`'s, if so.
pub fn unplaceable(
    meta: &MetaState,
    rec: &VolumeRecord,
    voters: &[u64],
    leaving: u64,
    up: impl Fn(u64) -> bool,
) -> Option<String> {
    let fit = meta
        .nodes
        .keys()
        .any(|n| eligible(meta, rec, *n, voters, leaving, &up));
    (!fit).then(|| {
        format!(
            "no node can take a replica: none is up, in, not draining nor in maintenance,              free of this shard{} (replicas on {voters:?})",
            if rec.rules == Default::default() {
                String::new()
            } else {
                format!(" and fitting its rules{}", rec.rules.describe_suffix())
            }
        )
    })
}

fn eligible(
    meta: &MetaState,
    rec: &VolumeRecord,
    n: u64,
    voters: &[u64],
    leaving: u64,
    up: &impl Fn(u64) -> bool,
) -> bool {
    let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != leaving).collect();
    up(n)
        && meta.takes_replicas(n)
        && !meta.node_state(n).maintenance
        && !voters.contains(&n)
        && meta.fits_rules(&rec.rules, n, &rest)
}

/// The node to take a new replica of `rec`'s shard placed on `voters` in
/// place of `leaving`'s: eligible, with room for another copy in flight,
/// the fewest replicas first.
fn pick_target(
    meta: &MetaState,
    rec: &VolumeRecord,
    voters: &[u64],
    leaving: u64,
    load: &BTreeMap<u64, usize>,
    incoming: &BTreeMap<u64, usize>,
    up: &impl Fn(u64) -> bool,
) -> Option<u64> {
    meta.nodes
        .keys()
        .copied()
        .filter(|n| eligible(meta, rec, *n, voters, leaving, up))
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
    use crate::meta::shard_group;

    fn meta(nodes: u64, shards: Vec<Vec<u64>>) -> MetaState {
        crate::meta::testing::state(nodes, shards)
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
        // Nothing to heal (nodes 4 and 5 would only take a rebalancing move).
        assert!(plan(&m, all_up, 0).iter().all(|c| matches!(
            c,
            MetaCommand::StartMove(ReplicaMove {
                reason: MoveReason::Rebalance,
                ..
            })
        )));
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
    fn a_move_to_a_target_unheard_for_a_minute_is_given_up() {
        let mut m = meta(5, vec![vec![1, 2, 3]]);
        m.apply(200, MetaCommand::MarkOut { node: 3 }).expect("out");
        let cmds = plan(&m, |n| n != 3, 1000);
        let target = starts(&cmds)[0].1;
        for (i, c) in cmds.into_iter().enumerate() {
            m.apply(300 + i as u64, c).expect("start");
        }
        let down = |n| n != 3 && n != target;
        let ends = |cmds: &[MetaCommand]| {
            cmds.iter()
                .filter(|c| matches!(c, MetaCommand::EndMove { add, .. } if *add == target))
                .count()
        };
        assert_eq!(ends(&plan(&m, down, 1000 + STALLED_TARGET_S - 1)), 0);
        assert_eq!(ends(&plan(&m, down, 1000 + STALLED_TARGET_S)), 1);
        assert_eq!(
            ends(&plan(&m, |n| n != 3, 5000)),
            0,
            "a slow copy to a live target goes on"
        );
    }

    #[test]
    fn the_move_log_tells_each_end_once() {
        let mut m = meta(5, vec![vec![1, 2, 3], vec![1, 2, 3]]);
        let (g0, g1) = (shard_group(1, 0), shard_group(1, 1));
        let mut log = MoveLog::default();
        m.apply(200, MetaCommand::MarkOut { node: 3 }).expect("out");
        let cmds = plan(&m, |n| n != 3, 1000);
        assert_eq!(starts(&cmds).len(), 2);
        for (i, c) in cmds.into_iter().enumerate() {
            if let MetaCommand::StartMove(mv) = &c {
                log.started(mv);
            }
            m.apply(300 + i as u64, c).expect("start");
        }
        assert!(log.ended(&m).is_empty(), "both in flight");
        // Shard 0's swap is reported: done. Shard 1's target goes out.
        let target0 = m.moves[&g0].add;
        let target1 = m.moves[&g1].add;
        m.apply(
            400,
            MetaCommand::ShardMembership {
                group: g0,
                voters: vec![1, 2, target0],
                conf_index: 9,
            },
        )
        .expect("done");
        m.apply(401, MetaCommand::MarkOut { node: target1 })
            .expect("out");
        let mv1 = m.moves[&g1].clone();
        let why = give_up(&m, &mv1, |n| n != 3, 1001).expect("given up");
        assert_eq!(why, "its target was marked out");
        log.giving_up(g1, target1, why);
        m.apply(
            402,
            MetaCommand::EndMove {
                group: g1,
                add: target1,
            },
        )
        .expect("end");
        let ended = log.ended(&m);
        assert_eq!(ended.len(), 2, "{ended:?}");
        assert_eq!(ended[0].1, MoveEnd::Done);
        assert_eq!(
            ended[1].1,
            MoveEnd::GivenUp(Some("its target was marked out"))
        );
        assert!(log.ended(&m).is_empty(), "said once");
        // A move a previous leader started is taken in quietly; its end
        // is told; so is a deleted volume's.
        m.apply(500, MetaCommand::MarkIn { node: target1 })
            .expect("in");
        let mut fresh = MoveLog::default();
        let cmds = plan(&m, |n| n != 3, 2000);
        for (i, c) in cmds.into_iter().enumerate() {
            m.apply(600 + i as u64, c).expect("start");
        }
        assert!(fresh.ended(&m).is_empty());
        m.apply(700, MetaCommand::DeleteVolume { name: "v".into() })
            .expect("delete");
        let ended = fresh.ended(&m);
        assert!(
            !ended.is_empty() && ended.iter().all(|(_, e)| *e == MoveEnd::VolumeDeleted),
            "{ended:?}"
        );
    }

    #[test]
    fn a_shard_with_nowhere_to_go_says_why() {
        let mut m = meta(3, vec![vec![1, 2, 3]]);
        m.apply(200, MetaCommand::MarkOut { node: 3 }).expect("out");
        assert!(plan(&m, |n| n != 3, 0).is_empty());
        let rec = m.volumes["v"].clone();
        let why = unplaceable(&m, &rec, &[1, 2, 3], 3, |n| n != 3).expect("unplaceable");
        assert!(why.contains("no node can take a replica"), "{why}");
        let m4 = meta(4, vec![vec![1, 2, 3]]);
        let rec = m4.volumes["v"].clone();
        assert_eq!(unplaceable(&m4, &rec, &[1, 2, 3], 3, |_| true), None);
    }

    #[test]
    fn a_draining_nodes_replicas_move_and_a_new_node_takes_its_share() {
        let mut m = meta(4, vec![vec![1, 2, 3]; 3]);
        let all_up = |_| true;
        // Node 4 holds nothing: rebalancing moves one replica at a time
        // from the fullest node until counts are within one.
        let cmds = plan(&m, all_up, 0);
        assert_eq!(
            starts(&cmds),
            vec![(shard_group(1, 0), 4, Some(1))],
            "{cmds:?}"
        );
        for c in cmds {
            m.apply(300, c).expect("start");
        }
        // Nothing more while a move is in flight.
        assert!(plan(&m, all_up, 0).is_empty());
        m.apply(
            301,
            MetaCommand::ShardMembership {
                group: shard_group(1, 0),
                voters: vec![2, 3, 4],
                conf_index: 9,
            },
        )
        .expect("done");
        let cmds = plan(&m, all_up, 0);
        assert_eq!(starts(&cmds), vec![(shard_group(1, 1), 4, Some(2))]);
        m.apply(302, cmds[0].clone()).expect("start");
        m.apply(
            303,
            MetaCommand::ShardMembership {
                group: shard_group(1, 1),
                voters: vec![1, 3, 4],
                conf_index: 9,
            },
        )
        .expect("done");
        // Counts 2,2,3,2: within one; no replica moves back and forth.
        // Node 4 took node 1's place in shard 0, its preferred leader.
        assert_eq!(m.volumes["v"].shards[0], vec![4, 2, 3]);
        assert!(starts(&plan(&m, all_up, 0)).is_empty(), "{:?}", m.volumes);
        // Drain node 3: its replicas go, to the least loaded node first.
        m.apply(304, MetaCommand::SetDraining { node: 3, on: true })
            .expect("drain");
        let next = starts(&plan(&m, all_up, 0));
        assert_eq!(next.len(), 3, "{next:?}");
        assert!(next.iter().all(|(_, add, rm)| *rm == Some(3) && *add != 3));
        // Nothing is planned while a voter is down.
        let mut quiet = meta(4, vec![vec![1, 2, 3]; 3]);
        assert!(plan(&quiet, |n| n != 2, 0).is_empty());
        // Leaders spread too: all preferred on node 1, replicas even.
        quiet = meta(3, vec![vec![1, 2, 3]; 3]);
        let cmds = plan(&quiet, all_up, 0);
        assert!(
            matches!(
                cmds.as_slice(),
                [MetaCommand::PreferLeader { node: 2 | 3, .. }]
            ),
            "{cmds:?}"
        );
    }
}
