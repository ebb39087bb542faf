//! Replica moves in the metadata: which node is to get a new replica of a
//! shard group, and which replica it replaces. The metadata only records
//! intent and outcome; the shard's leader carries a move out in its own
//! Raft group (learner, catch-up, joint swap; `driver::reconfigure`) and
//! reports the voters it ended with (`ShardMembership`), which completes
//! the move. A node holds a replica of a group while the group's voters as
//! last reported include it, or a move is adding it (`hosts`).

use serde::{Deserialize, Serialize};

use super::{shard_of_group, MetaEffect, MetaError, MetaState, VolumeRecord};

/// Why a replica moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveReason {
    /// Its node was marked out: the shard is short of a replica.
    Heal,
    /// Its node is being drained.
    Drain,
    /// Spreading replicas over the nodes.
    Rebalance,
}

/// A replica of `group` being created on `add`, to replace `remove`'s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMove {
    /// The shard group.
    pub group: u64,
    /// The node getting the new replica.
    pub add: u64,
    /// The node whose replica the new one replaces (none: one more).
    pub remove: Option<u64>,
    /// Why.
    pub reason: MoveReason,
    /// When it was decided (seconds since the epoch, from the proposer).
    pub since_unix: u64,
}

impl MetaState {
    /// The volume holding shard group `group`, and the shard's index.
    pub fn shard(&self, group: u64) -> Option<(&VolumeRecord, usize)> {
        let (vol, index) = shard_of_group(group);
        self.volumes
            .values()
            .find(|v| v.meta.id == vol)
            .filter(|v| (index as usize) < v.shards.len())
            .map(|v| (v, index as usize))
    }

    /// How group `group` is named in the log: "shard group G (volume V
    /// shard I)", or the metadata group.
    pub fn describe_group(&self, group: u64) -> String {
        if group == super::META_GROUP {
            return "the metadata group".into();
        }
        match self.shard(group) {
            Some((rec, i)) => format!("shard group {group} (volume {} shard {i})", rec.meta.name),
            None => format!("shard group {group}"),
        }
    }

    /// The name of the volume holding `group` ("" for none), for the
    /// `volume` field of a log line.
    pub fn volume_of(&self, group: u64) -> &str {
        self.shard(group)
            .map_or("", |(rec, _)| rec.meta.name.as_str())
    }

    /// Like [`MetaState::shard`], for changing the volume; an unknown
    /// group is an error.
    pub(super) fn shard_mut(
        &mut self,
        group: u64,
    ) -> Result<(&mut VolumeRecord, usize), MetaError> {
        let (vol, index) = shard_of_group(group);
        self.volumes
            .values_mut()
            .find(|v| v.meta.id == vol)
            .filter(|v| (index as usize) < v.shards.len())
            .map(|v| (v, index as usize))
            .ok_or(MetaError::GroupNotFound(group))
    }

    /// Whether `node` is meant to hold a replica of `group`: one of its
    /// voters, or the target of its move.
    pub fn hosts(&self, node: u64, group: u64) -> bool {
        self.shard(group)
            .is_some_and(|(v, i)| v.shards[i].contains(&node))
            || self.moves.get(&group).is_some_and(|m| m.add == node)
    }

    /// The log index the shard's voters were last reported at.
    pub fn shard_conf(&self, group: u64) -> u64 {
        self.shard(group)
            .and_then(|(v, i)| v.shard_confs.get(i).copied())
            .unwrap_or(0)
    }

    pub(super) fn start_move(&mut self, m: ReplicaMove) -> Result<MetaEffect, MetaError> {
        let group = m.group;
        let refuse = |reason: String| Err(MetaError::Move { group, reason });
        let Some((rec, i)) = self.shard(group) else {
            return Err(MetaError::GroupNotFound(group));
        };
        if let Some(cur) = self.moves.get(&group) {
            return refuse(format!("a move to node {} is in flight", cur.add));
        }
        if !self.nodes.contains_key(&m.add) {
            return Err(MetaError::NodeNotFound(m.add));
        }
        if self.node_state(m.add).out {
            return refuse(format!("node {} is out", m.add));
        }
        let voters = &rec.shards[i];
        if voters.contains(&m.add) {
            return refuse(format!("node {} already holds a replica", m.add));
        }
        if let Some(r) = m.remove.filter(|r| !voters.contains(r)) {
            return refuse(format!("node {r} holds no replica to replace"));
        }
        self.moves.insert(group, m);
        Ok(MetaEffect::ReplicasChanged)
    }

    pub(super) fn end_move(&mut self, group: u64, add: u64) -> MetaEffect {
        if self.moves.get(&group).is_some_and(|m| m.add == add) {
            self.moves.remove(&group);
            return MetaEffect::ReplicasChanged;
        }
        MetaEffect::None
    }

    pub(super) fn shard_membership(
        &mut self,
        group: u64,
        voters: Vec<u64>,
        conf_index: u64,
    ) -> Result<MetaEffect, MetaError> {
        if voters.is_empty() {
            return Err(MetaError::Move {
                group,
                reason: "a shard cannot have no voters".into(),
            });
        }
        let known = conf_index > self.shard_conf(group);
        let (rec, i) = self.shard_mut(group)?;
        if !known {
            return Ok(MetaEffect::None); // an older view than the one recorded
        }
        // Replicas that stay keep their place, and a new one takes the
        // place of one that left: the first is the preferred leader, so a
        // replacement inherits the leadership the old replica had.
        let mut new = voters
            .iter()
            .copied()
            .filter(|n| !rec.shards[i].contains(n));
        let mut next: Vec<u64> = rec.shards[i]
            .iter()
            .filter_map(|n| {
                if voters.contains(n) {
                    Some(*n)
                } else {
                    new.next()
                }
            })
            .collect();
        next.extend(new);
        rec.shards[i] = next;
        if rec.shard_confs.len() < rec.shards.len() {
            rec.shard_confs.resize(rec.shards.len(), 0);
        }
        rec.shard_confs[i] = conf_index;
        let done = self.moves.get(&group).is_some_and(|m| {
            voters.contains(&m.add) && m.remove.is_none_or(|r| !voters.contains(&r))
        });
        if done {
            self.moves.remove(&group);
        }
        Ok(MetaEffect::ReplicasChanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{shard_group, MetaCommand};

    fn state(nodes: u64) -> MetaState {
        crate::meta::testing::state(nodes, vec![vec![1, 2, 3], vec![2, 3, 1]])
    }

    fn mv(group: u64, add: u64, remove: Option<u64>) -> MetaCommand {
        MetaCommand::StartMove(ReplicaMove {
            group,
            add,
            remove,
            reason: MoveReason::Heal,
            since_unix: 0,
        })
    }

    #[test]
    fn a_move_is_checked_hosts_its_target_and_ends_with_the_reported_voters() {
        let mut m = state(4);
        let g = shard_group(1, 0);
        assert!(!m.hosts(4, g));
        // Refused: unknown group, a target already in, nothing to replace.
        assert_eq!(
            m.apply(101, mv(shard_group(1, 9), 4, Some(3))),
            Err(MetaError::GroupNotFound(shard_group(1, 9)))
        );
        assert!(matches!(
            m.apply(102, mv(g, 2, Some(3))),
            Err(MetaError::Move { .. })
        ));
        assert!(matches!(
            m.apply(103, mv(g, 4, Some(9))),
            Err(MetaError::Move { .. })
        ));
        assert_eq!(
            m.apply(104, mv(g, 4, Some(3))),
            Ok(MetaEffect::ReplicasChanged)
        );
        assert!(m.hosts(4, g) && m.hosts(3, g));
        // One move per group at a time.
        assert!(matches!(
            m.apply(105, mv(g, 4, None)),
            Err(MetaError::Move { .. })
        ));
        // A report from before the swap keeps the move going.
        let report = |voters: Vec<u64>, conf_index| MetaCommand::ShardMembership {
            group: g,
            voters,
            conf_index,
        };
        m.apply(106, report(vec![1, 2, 3], 50)).expect("report");
        assert!(m.moves.contains_key(&g));
        // The swap done: 3 is out, 4 in, the preferred leader first still.
        m.apply(107, report(vec![4, 2, 1], 60)).expect("report");
        assert_eq!(m.volumes["v"].shards[0], vec![1, 2, 4]);
        assert!(m.moves.is_empty());
        assert!(!m.hosts(3, g) && m.hosts(4, g));
        // A stale report (a deposed leader's) changes nothing.
        assert_eq!(
            m.apply(108, report(vec![1, 2, 3], 55)),
            Ok(MetaEffect::None)
        );
        assert_eq!(m.volumes["v"].shards[0], vec![1, 2, 4]);
        assert_eq!(m.shard_conf(g), 60);
        // An abandoned move stops hosting its target.
        let g1 = shard_group(1, 1);
        m.apply(109, mv(g1, 4, Some(1))).expect("move");
        assert_eq!(
            m.apply(110, MetaCommand::EndMove { group: g1, add: 3 }),
            Ok(MetaEffect::None)
        );
        m.apply(111, MetaCommand::EndMove { group: g1, add: 4 })
            .expect("end");
        assert!(!m.hosts(4, g1));
        // Out nodes get no moves; deleting the volume drops its moves.
        m.apply(112, MetaCommand::MarkOut { node: 4 }).expect("out");
        assert!(matches!(
            m.apply(113, mv(g1, 4, Some(1))),
            Err(MetaError::Move { .. })
        ));
        m.apply(114, MetaCommand::MarkIn { node: 4 }).expect("in");
        m.apply(115, mv(g1, 4, Some(1))).expect("move");
        m.apply(116, MetaCommand::DeleteVolume { name: "v".into() })
            .expect("delete");
        assert!(m.moves.is_empty());
    }
}
