//! Placement: which nodes a volume's shard replicas may go to. Nodes carry
//! labels (`serve --labels zone=a,disk=ssd`); a volume may ask for its
//! shards' replicas on nodes with distinct values of one label
//! (`--spread zone`) and only on nodes with some labels (`--require
//! disk=ssd`). The rules are kept with the volume, so healing, draining
//! and rebalancing honour them too, and checked again when a placement is
//! applied, so every node's metadata agrees.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use raftblock_storage::catalog::parse_labels;

use super::{MetaError, MetaState, MAX_SHARDS};

/// Where a volume's replicas may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRules {
    /// The replicas of a shard go to nodes with distinct values of this
    /// label (a node without it cannot take one).
    #[serde(default)]
    pub spread: Option<String>,
    /// Only nodes carrying all these labels take replicas.
    #[serde(default)]
    pub require: BTreeMap<String, String>,
}

impl PlacementRules {
    /// The rules in words, as `, spread over zone, requiring disk=ssd`
    /// (empty without rules).
    pub fn describe_suffix(&self) -> String {
        let mut out = String::new();
        if let Some(key) = &self.spread {
            out.push_str(&format!(", spread over {key}"));
        }
        if !self.require.is_empty() {
            let req: Vec<String> = self
                .require
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(", requiring {}", req.join(",")));
        }
        out
    }
}

impl MetaState {
    /// Whether node `n` may hold a replica of a shard whose other replicas
    /// are on `others`, under `rules` (labels only; liveness and flags are
    /// the caller's).
    pub fn fits_rules(&self, rules: &PlacementRules, n: u64, others: &[u64]) -> bool {
        let Some(info) = self.nodes.get(&n) else {
            return false;
        };
        if rules
            .require
            .iter()
            .any(|(k, v)| info.labels.get(k) != Some(v))
        {
            return false;
        }
        let Some(key) = &rules.spread else {
            return true;
        };
        let Some(mine) = info.labels.get(key) else {
            return false;
        };
        !others
            .iter()
            .filter(|o| **o != n)
            .filter_map(|o| self.nodes.get(o))
            .any(|o| o.labels.get(key) == Some(mine))
    }

    /// Places `shards` shards of `replicas` replicas each on the `live`
    /// nodes under `rules`: distinct nodes per shard (and distinct values
    /// of the spread label), never on an out or draining node, and the
    /// first replica (the preferred leader) rotating so leaders spread
    /// over the nodes.
    pub fn place(
        &self,
        replicas: u32,
        shards: u32,
        live: &[u64],
        rules: &PlacementRules,
    ) -> Result<Vec<Vec<u64>>, MetaError> {
        let mut live: Vec<u64> = live
            .iter()
            .copied()
            .filter(|n| self.takes_replicas(*n))
            .collect();
        live.sort_unstable();
        live.dedup();
        if replicas == 0 {
            return Err(MetaError::Placement("replicas must be at least 1".into()));
        }
        let fitting: Vec<u64> = live
            .iter()
            .copied()
            .filter(|n| self.fits_rules(rules, *n, &[]))
            .collect();
        if replicas as usize > fitting.len() {
            return Err(MetaError::Placement(format!(
                "{replicas} replicas asked for but only {} node(s) are up and may take them \
                 ({fitting:?}{}); replicas of a shard must be on distinct nodes",
                fitting.len(),
                rules.describe_suffix()
            )));
        }
        // Start where the previous volume's shards ended, so small volumes
        // do not all put their leader on the lowest node id.
        let start = self.next_volume_id as usize;
        let mut out = Vec::with_capacity(shards as usize);
        for s in 0..shards as usize {
            let mut shard: Vec<u64> = Vec::with_capacity(replicas as usize);
            for k in 0..fitting.len() {
                let n = fitting[(start + s + k) % fitting.len()];
                if self.fits_rules(rules, n, &shard) {
                    shard.push(n);
                    if shard.len() == replicas as usize {
                        break;
                    }
                }
            }
            if shard.len() < replicas as usize {
                return Err(MetaError::Placement(format!(
                    "{replicas} replicas cannot be placed on distinct nodes{}: the nodes that \
                     are up and may take them are {}",
                    rules.describe_suffix(),
                    self.describe_nodes(&fitting, rules)
                )));
            }
            out.push(shard);
        }
        Ok(out)
    }

    /// `[1 (zone=a), 2 (zone=a)]`: the nodes with their spread label.
    fn describe_nodes(&self, nodes: &[u64], rules: &PlacementRules) -> String {
        let parts: Vec<String> = nodes
            .iter()
            .map(|n| {
                let label = rules.spread.as_ref().and_then(|k| {
                    let v = self.nodes.get(n)?.labels.get(k)?;
                    Some(format!(" ({k}={v})"))
                });
                format!("{n}{}", label.unwrap_or_default())
            })
            .collect();
        format!("[{}]", parts.join(", "))
    }

    /// Checks a placement when it is applied: the shard count, distinct
    /// member nodes, and the volume's rules.
    pub(super) fn check_placement(
        &self,
        replicas: u32,
        shards: &[Vec<u64>],
        rules: &PlacementRules,
    ) -> Result<(), MetaError> {
        if shards.is_empty() || shards.len() > MAX_SHARDS as usize {
            return Err(MetaError::Placement(format!(
                "a volume needs 1 to {MAX_SHARDS} shards, not {}",
                shards.len()
            )));
        }
        for (i, nodes) in shards.iter().enumerate() {
            let mut distinct = nodes.clone();
            distinct.sort_unstable();
            distinct.dedup();
            if distinct.len() != nodes.len() || nodes.len() != replicas as usize {
                return Err(MetaError::Placement(format!(
                    "shard {i} needs {replicas} replicas on distinct nodes, got {nodes:?}"
                )));
            }
            if let Some(n) = nodes.iter().find(|n| !self.nodes.contains_key(n)) {
                return Err(MetaError::Placement(format!(
                    "shard {i} placed on node {n}, which is not a member"
                )));
            }
            if let Some(n) = nodes.iter().find(|n| !self.fits_rules(rules, **n, nodes)) {
                return Err(MetaError::Placement(format!(
                    "shard {i} placed on node {n}, which its rules do not allow{}",
                    rules.describe_suffix()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{MetaCommand, NodeInfo};

    fn with_zones(zones: &[(&str, &str)]) -> MetaState {
        let mut m = MetaState::default();
        for (i, (zone, disk)) in zones.iter().enumerate() {
            let id = i as u64 + 1;
            let labels = parse_labels(&format!("zone={zone},disk={disk}")).expect("labels");
            let info = NodeInfo {
                labels,
                ..crate::meta::testing::node(id)
            };
            m.apply(id, MetaCommand::PutNode(info)).expect("node");
        }
        m
    }

    #[test]
    fn replicas_spread_over_zones_and_stay_on_required_nodes() {
        let m = with_zones(&[
            ("a", "ssd"),
            ("a", "ssd"),
            ("b", "ssd"),
            ("b", "hdd"),
            ("c", "ssd"),
        ]);
        let all = [1, 2, 3, 4, 5];
        let spread = PlacementRules {
            spread: Some("zone".into()),
            ..Default::default()
        };
        let p = m.place(3, 8, &all, &spread).expect("place");
        for shard in &p {
            let mut zones: Vec<&String> =
                shard.iter().map(|n| &m.nodes[n].labels["zone"]).collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "{shard:?}");
        }
        m.check_placement(3, &p, &spread).expect("valid");
        assert!(m.check_placement(3, &[vec![1, 2, 3]], &spread).is_err());
        // Only ssd nodes, still spread: zones a, b (node 3), c.
        let ssd = PlacementRules {
            spread: Some("zone".into()),
            require: parse_labels("disk=ssd").expect("labels"),
        };
        let p = m.place(3, 4, &all, &ssd).expect("place");
        assert!(p
            .iter()
            .all(|s| s.contains(&3) && s.contains(&5) && !s.contains(&4)));
        // Four zones asked of three: a clear error.
        let e = m.place(4, 1, &all, &spread).expect_err("too few zones");
        assert!(e.to_string().contains("spread over zone"), "{e}");
        // A node down: two zones left for three replicas.
        let e = m
            .place(3, 1, &[1, 2, 3, 4], &spread)
            .expect_err("zone c down");
        assert!(e.to_string().contains("zone=a"), "{e}");
    }
}
