//! What the metadata records about nodes besides their addresses: the
//! maintenance, out and draining flags, and the rules for draining and
//! removing a node. A drain is refused up front when some shard on the
//! node would have nowhere to go (CockroachDB's decommission waits forever
//! instead); a node is removed only once it holds no replica.

use super::{shard_group, MetaEffect, MetaError, MetaState, NodeState};

impl MetaState {
    /// The flags of `node` (default: in, not in maintenance, not draining).
    pub fn node_state(&self, node: u64) -> NodeState {
        self.node_states.get(&node).copied().unwrap_or_default()
    }

    pub(super) fn node_state_mut(&mut self, node: u64) -> Result<&mut NodeState, MetaError> {
        if !self.nodes.contains_key(&node) {
            return Err(MetaError::NodeNotFound(node));
        }
        Ok(self.node_states.entry(node).or_default())
    }

    /// Whether new replicas may go to `node` at all: a member, neither out
    /// nor draining.
    pub fn takes_replicas(&self, node: u64) -> bool {
        let s = self.node_state(node);
        self.nodes.contains_key(&node) && !s.out && !s.draining
    }

    /// Of a shard's replica nodes, those that may lead it: all but draining
    /// ones (unless that leaves none).
    pub fn may_lead(&self, nodes: &[u64]) -> Vec<u64> {
        let keep: Vec<u64> = nodes
            .iter()
            .copied()
            .filter(|n| !self.node_state(*n).draining)
            .collect();
        if keep.is_empty() {
            nodes.to_vec()
        } else {
            keep
        }
    }

    /// Shard groups with a replica on `node` (as a voter, or as a move's
    /// target).
    pub fn groups_on(&self, node: u64) -> Vec<u64> {
        let mut groups: Vec<u64> = self
            .volumes
            .values()
            .flat_map(|v| {
                v.shards
                    .iter()
                    .enumerate()
                    .filter(|(_, nodes)| nodes.contains(&node))
                    .map(|(i, _)| shard_group(v.meta.id, i as u32))
            })
            .collect();
        groups.extend(
            self.moves
                .values()
                .filter(|m| m.add == node)
                .map(|m| m.group),
        );
        groups.sort_unstable();
        groups.dedup();
        groups
    }

    /// Why draining `node` could not complete, if so: a shard of it that
    /// the other nodes cannot take (placement rules included), counting
    /// the replicas other draining nodes must give up too.
    pub fn drain_blocker(&self, node: u64) -> Option<String> {
        for rec in self.volumes.values() {
            for (i, voters) in rec.shards.iter().enumerate() {
                if !voters.contains(&node) {
                    continue;
                }
                let leaving = |n: &u64| *n == node || self.node_state(*n).draining;
                let staying: Vec<u64> = voters.iter().copied().filter(|n| !leaving(n)).collect();
                let needed = voters.len() - staying.len();
                let takers = self
                    .nodes
                    .keys()
                    .filter(|n| {
                        !leaving(n)
                            && !voters.contains(n)
                            && self.takes_replicas(**n)
                            && self.fits_rules(&rec.rules, **n, &staying)
                    })
                    .count();
                if takers < needed {
                    return Some(format!(
                        "shard {i} of volume {} (replicas on {voters:?}{}) would have no \
                         other node to go to",
                        rec.meta.name,
                        rec.rules.describe_suffix()
                    ));
                }
            }
        }
        None
    }

    pub(super) fn set_draining(&mut self, node: u64, on: bool) -> Result<MetaEffect, MetaError> {
        self.node_state_mut(node)?;
        if on {
            if let Some(reason) = self.drain_blocker(node) {
                return Err(MetaError::CannotDrain { node, reason });
            }
        }
        self.node_state_mut(node)?.draining = on;
        Ok(MetaEffect::None)
    }

    pub(super) fn remove_node(&mut self, node: u64) -> Result<MetaEffect, MetaError> {
        if !self.nodes.contains_key(&node) {
            return Err(MetaError::NodeNotFound(node));
        }
        let held = self.groups_on(node);
        if !held.is_empty() {
            return Err(MetaError::CannotRemove {
                node,
                reason: format!(
                    "it still holds {} shard replica(s); drain it first (`raftblock node drain {node}`)",
                    held.len()
                ),
            });
        }
        if self.moves.values().any(|m| m.remove == Some(node)) {
            return Err(MetaError::CannotRemove {
                node,
                reason: "a replica move away from it is still in flight".into(),
            });
        }
        self.nodes.remove(&node);
        self.node_states.remove(&node);
        for v in self.volumes.values_mut() {
            if v.served_by == Some(node) {
                v.served_by = None;
            }
        }
        Ok(MetaEffect::None)
    }

    pub(super) fn prefer_leader(&mut self, group: u64, node: u64) -> Result<MetaEffect, MetaError> {
        let (rec, i) = self.shard_mut(group)?;
        let voters = &mut rec.shards[i];
        let Some(at) = voters.iter().position(|n| *n == node) else {
            return Err(MetaError::Move {
                group,
                reason: format!("node {node} holds no replica to lead"),
            });
        };
        voters.swap(0, at);
        Ok(MetaEffect::None)
    }
}

#[cfg(test)]
mod tests {
    use crate::meta::{shard_group, MetaCommand, MetaError, MetaState};

    fn state(nodes: u64, shards: Vec<Vec<u64>>) -> MetaState {
        crate::meta::testing::state(nodes, shards)
    }

    #[test]
    fn a_drain_that_cannot_complete_is_refused_and_removal_waits_for_it() {
        let drain = |node, on| MetaCommand::SetDraining { node, on };
        // Three nodes, three replicas: nowhere to go.
        let mut m = state(3, vec![vec![1, 2, 3]]);
        let e = m.apply(101, drain(2, true)).expect_err("refused");
        assert!(
            matches!(&e, MetaError::CannotDrain { node: 2, reason } if reason.contains("no other node")),
            "{e}"
        );
        // Four: node 4 can take node 2's replica.
        let mut m = state(4, vec![vec![1, 2, 3]]);
        m.apply(101, drain(2, true)).expect("drain");
        assert!(m.node_state(2).draining && !m.takes_replicas(2));
        // A second drain would leave nowhere for the shard.
        assert!(matches!(
            m.apply(102, drain(1, true)),
            Err(MetaError::CannotDrain { .. })
        ));
        // Removal waits until the node holds nothing.
        assert!(matches!(
            m.apply(103, MetaCommand::RemoveNode { node: 2 }),
            Err(MetaError::CannotRemove { .. })
        ));
        m.apply(
            104,
            MetaCommand::ShardMembership {
                group: shard_group(1, 0),
                voters: vec![1, 3, 4],
                conf_index: 10,
            },
        )
        .expect("moved");
        assert_eq!(m.volumes["v"].shards[0], vec![1, 4, 3]);
        m.apply(105, MetaCommand::RemoveNode { node: 2 })
            .expect("remove");
        assert!(!m.nodes.contains_key(&2) && !m.node_states.contains_key(&2));
        assert_eq!(
            m.apply(106, MetaCommand::RemoveNode { node: 2 }),
            Err(MetaError::NodeNotFound(2))
        );
        // Leader preference moves within the shard only.
        m.apply(
            107,
            MetaCommand::PreferLeader {
                group: shard_group(1, 0),
                node: 3,
            },
        )
        .expect("prefer");
        assert_eq!(m.volumes["v"].shards[0], vec![3, 4, 1]);
        assert!(m
            .apply(
                108,
                MetaCommand::PreferLeader {
                    group: shard_group(1, 0),
                    node: 2,
                },
            )
            .is_err());
    }
}
