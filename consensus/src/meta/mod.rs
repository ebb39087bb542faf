//! Cluster metadata, the state machine of the meta group (Raft group 0):
//! the member nodes and their addresses, and every volume with its shards
//! and the nodes holding each shard's replicas. Commands are decided by the
//! proposer (placement needs to know which nodes are alive) and checked again
//! when applied, so every node's copy stays identical.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use raftblock_storage::VolumeMeta;

use crate::layout::ShardLayout;

mod moves;
mod nodes;
mod placement;
mod resize;
#[cfg(test)]
pub(crate) mod testing;
pub use moves::{MoveReason, ReplicaMove};
pub use placement::{parse_labels, PlacementRules};
pub use resize::PendingResize;

/// Raft group id of the meta group.
pub const META_GROUP: u64 = 0;
/// Shards per volume are numbered below this (it splits the group id space).
pub const MAX_SHARDS: u32 = 1 << 20;

/// Raft group id of shard `index` of volume `volume`.
pub fn shard_group(volume: u64, index: u32) -> u64 {
    (volume << 20) | index as u64
}

/// The volume and shard index of a shard group id.
pub fn shard_of_group(group: u64) -> (u64, u32) {
    (group >> 20, (group & (MAX_SHARDS as u64 - 1)) as u32)
}

/// A member node and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (also its Raft peer id in every group).
    pub id: u64,
    /// Address of the node-to-node transport.
    pub raft_addr: SocketAddr,
    /// Address of its NBD server.
    pub nbd_addr: Option<SocketAddr>,
    /// Address of its admin HTTP API.
    pub admin_addr: Option<SocketAddr>,
    /// Its labels (`serve --labels zone=a,disk=ssd`), for placement rules.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What the operator or the metadata leader decided about a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// In maintenance: never marked out while it is down (Ceph's `noout`).
    #[serde(default)]
    pub maintenance: bool,
    /// Marked out: it was down longer than the down-out interval.
    #[serde(default)]
    pub out: bool,
    /// Being drained: no new replicas go there, and its replicas move away.
    #[serde(default)]
    pub draining: bool,
}

/// A volume of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Name, size, chunk size, id.
    pub meta: VolumeMeta,
    /// Replicas per shard.
    pub replicas: u32,
    /// For every shard, the nodes holding its replicas (the first one is
    /// the preferred leader).
    pub shards: Vec<Vec<u64>>,
    /// Free-form labels set at creation (the Docker plugin keeps `fs` here).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Which nodes its replicas may go to (node labels).
    #[serde(default)]
    pub rules: PlacementRules,
    /// Bumped by every attach; writes of an attached volume carry it and
    /// shards refuse older ones (fencing).
    #[serde(default)]
    pub attach_epoch: u64,
    /// The node the volume is attached on, if any.
    #[serde(default)]
    pub attachment: Option<Attachment>,
    /// The node whose clients use the volume (its attachment holder, or
    /// the node its NBD clients connected to last): its shards' leaders
    /// move there, so requests are served without a forwarding hop.
    #[serde(default)]
    pub served_by: Option<u64>,
    /// For every shard, the log index of its Raft group at which `shards`
    /// was last reported (0: the placement at creation). A report applies
    /// only when newer, so a deposed leader's stale view cannot undo it.
    #[serde(default)]
    pub shard_confs: Vec<u64>,
    /// A resize begun and not finished (see `resize`).
    #[serde(default)]
    pub resize: Option<PendingResize>,
    /// How many resizes were begun.
    #[serde(default)]
    pub resizes: u64,
}

/// A volume attached on a node for exclusive use (a lease in the metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The node holding it.
    pub node: u64,
    /// Its attach epoch.
    pub epoch: u64,
    /// When it was attached (seconds since the epoch, from the proposer).
    pub since_unix: u64,
    /// Bumped by every renewal of the holder. Other nodes watch it change
    /// (by their own clocks, so clock skew does not matter): a holder that
    /// still renews through the metadata quorum is alive, whatever one
    /// other node can or cannot hear from it.
    #[serde(default)]
    pub renewed: u64,
}

impl VolumeRecord {
    /// Which shard holds which chunk.
    pub fn layout(&self) -> ShardLayout {
        ShardLayout::new(&self.meta, self.shards.len() as u32)
    }

    /// The largest size a replica may hold the volume at: its size, or
    /// while a resize is pending, the larger of the sizes it goes between.
    pub fn span(&self) -> u64 {
        self.resize
            .as_ref()
            .map_or(self.meta.size, |p| p.size.max(p.from).max(self.meta.size))
    }

    /// The chunks shard `shard` holds, up to [`VolumeRecord::span`].
    pub fn shard_chunks(&self, shard: u32) -> Vec<u64> {
        self.layout()
            .with_size(self.span())
            .chunks_of(crate::layout::ShardId {
                volume: self.meta.id,
                index: shard,
            })
            .collect()
    }

    /// Raft group ids of the shards, with their replica nodes.
    pub fn groups(&self) -> impl Iterator<Item = (u64, &Vec<u64>)> + '_ {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, nodes)| (shard_group(self.meta.id, i as u32), nodes))
    }

    /// Whether `node` holds a replica of any shard.
    pub fn is_on(&self, node: u64) -> bool {
        self.shards.iter().any(|s| s.contains(&node))
    }

    /// The node that should lead a shard placed on `nodes`: the serving
    /// node when it holds a replica, else the placement's first.
    pub fn preferred_leader(&self, nodes: &[u64]) -> u64 {
        match self.served_by {
            Some(n) if nodes.contains(&n) => n,
            _ => nodes.first().copied().unwrap_or(0),
        }
    }
}

/// A change to the cluster metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node or updates its addresses.
    PutNode(NodeInfo),
    /// Creates a volume with the given shard placement.
    CreateVolume {
        /// Name.
        name: String,
        /// Size in bytes.
        size: u64,
        /// Chunk size in bytes.
        chunk_size: u64,
        /// Replicas per shard.
        replicas: u32,
        /// Replica nodes per shard.
        shards: Vec<Vec<u64>>,
        /// Creation time (seconds since the epoch, from the proposer).
        created_unix: u64,
        /// Labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// Placement rules (checked against `shards`).
        #[serde(default)]
        rules: PlacementRules,
    },
    /// Deletes a volume (refused while it is attached).
    DeleteVolume {
        /// Name.
        name: String,
    },
    /// Attaches a volume on `node` with the next epoch. Applies only if the
    /// volume's epoch is still `expect_epoch` (what the proposer looked at),
    /// and, when another node holds it, only with `takeover` (the proposer
    /// judged that node dead).
    Attach {
        /// Volume name.
        name: String,
        /// The node taking it.
        node: u64,
        /// The attach epoch the proposer saw.
        expect_epoch: u64,
        /// Take it from another node.
        takeover: bool,
        /// Time of the attach (seconds since the epoch).
        since_unix: u64,
    },
    /// The holder `node` renews its attachments: `(volume, epoch)` pairs;
    /// those that are no longer its own are skipped.
    Renew {
        /// The holder.
        node: u64,
        /// Volumes with the epoch the holder attached them at.
        volumes: Vec<(String, u64)>,
    },
    /// Clients use volume `name` through `node`: its shards prefer a
    /// leader there (within `MetaState::serving_cap`).
    Serve {
        /// Volume name.
        name: String,
        /// The serving node.
        node: u64,
    },
    /// Puts `node` in maintenance (`on`) or takes it out of it.
    SetMaintenance {
        /// The node.
        node: u64,
        /// In maintenance or not.
        on: bool,
    },
    /// Marks `node` out: down longer than the down-out interval (refused
    /// for a node in maintenance).
    MarkOut {
        /// The node.
        node: u64,
    },
    /// Takes `node` back in: it is heard from again.
    MarkIn {
        /// The node.
        node: u64,
    },
    /// Starts (`on`) or stops draining `node`: no new replicas go there and
    /// its replicas move to other nodes. Refused when the other nodes
    /// cannot hold them.
    SetDraining {
        /// The node.
        node: u64,
        /// Drain or stop draining.
        on: bool,
    },
    /// Removes `node` from the cluster; refused while it holds replicas.
    RemoveNode {
        /// The node.
        node: u64,
    },
    /// Makes `node`, one of the shard's voters, its preferred leader
    /// (leader balancing).
    PreferLeader {
        /// The shard group.
        group: u64,
        /// The node.
        node: u64,
    },
    /// Ends the attachment with epoch `epoch` (a no-op once it moved on).
    Detach {
        /// Volume name.
        name: String,
        /// The attachment's epoch.
        epoch: u64,
    },
    /// Starts moving a replica of shard group `group` to node `add`
    /// (replacing `remove`'s, if any): `add` starts an empty replica, and
    /// the shard's leader adds it as a learner, lets it catch up, then
    /// swaps it in.
    StartMove(ReplicaMove),
    /// Abandons the move of `group` to `add` (its target went away, or the
    /// node it replaced came back before the swap).
    EndMove {
        /// The shard group.
        group: u64,
        /// The move's target.
        add: u64,
    },
    /// The voters of shard group `group` as its leader saw them once its
    /// log was applied up to `conf_index`; completes a move they include.
    ShardMembership {
        /// The shard group.
        group: u64,
        /// Its voters.
        voters: Vec<u64>,
        /// The log index they hold at.
        conf_index: u64,
    },
    /// Begins resizing volume `name` to `size` (see `resize`).
    BeginResize {
        /// Volume name.
        name: String,
        /// The new size in bytes.
        size: u64,
        /// The user allowed a shrink.
        allow_shrink: bool,
        /// When (seconds since the epoch, from the proposer).
        since_unix: u64,
    },
    /// Every shard of `name` applied its resize to `size`: the volume has
    /// that size now.
    FinishResize {
        /// Volume name.
        name: String,
        /// The size the resize went to.
        size: u64,
    },
}

impl MetaCommand {
    /// Encodes the command for the log.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a logged command.
    pub fn decode(data: &[u8]) -> Result<MetaCommand, MetaError> {
        serde_json::from_slice(data).map_err(|e| MetaError::Undecodable(e.to_string()))
    }
}

/// Why a metadata command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    /// volume {0} already exists
    #[error("volume {0} already exists")]
    VolumeExists(String),
    /// volume {0} not found
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    /// The placement does not fit the cluster.
    #[error("{0}")]
    Placement(String),
    /// The volume is attached on a node.
    #[error("volume {name} is attached on node {node} (epoch {epoch})")]
    Attached {
        /// Volume name.
        name: String,
        /// The holder.
        node: u64,
        /// Its epoch.
        epoch: u64,
    },
    /// Another attach happened since the proposer looked.
    #[error("volume {name} was attached again meanwhile (epoch {current}, expected {expected})")]
    EpochMoved {
        /// Volume name.
        name: String,
        /// What the proposer saw.
        expected: u64,
        /// What it is.
        current: u64,
    },
    /// No such node.
    #[error("node {0} is not a member of the cluster")]
    NodeNotFound(u64),
    /// The node is in maintenance.
    #[error("node {0} is in maintenance; it is not marked out")]
    InMaintenance(u64),
    /// The node cannot be drained.
    #[error("node {node} cannot be drained: {reason}")]
    CannotDrain {
        /// The node.
        node: u64,
        /// Why.
        reason: String,
    },
    /// The node cannot be removed.
    #[error("node {node} cannot be removed: {reason}")]
    CannotRemove {
        /// The node.
        node: u64,
        /// Why.
        reason: String,
    },
    /// No such shard group.
    #[error("shard group {0} is not in any volume")]
    GroupNotFound(u64),
    /// A move that does not fit the shard or the cluster.
    #[error("moving a replica of group {group}: {reason}")]
    Move {
        /// The shard group.
        group: u64,
        /// Why it was refused.
        reason: String,
    },
    /// The volume cannot be resized so.
    #[error("volume {name} cannot be resized: {reason}")]
    Resize {
        /// Volume name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A log entry that is not a metadata command.
    #[error("undecodable metadata command: {0}")]
    Undecodable(String),
}

/// What applying a command changed, for the node to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEffect {
    /// Nothing beyond the state.
    None,
    /// A node joined or moved.
    NodePut(NodeInfo),
    /// A volume was created: its shard groups start.
    VolumeCreated(VolumeRecord),
    /// A volume was deleted: its shard groups stop and its data goes.
    VolumeDeleted(VolumeRecord),
    /// The nodes meant to hold shard group replicas changed (a move
    /// started or ended, a membership was reported): replicas start or go.
    ReplicasChanged,
}

/// The cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Index of the last applied meta log entry.
    pub applied: u64,
    /// Member nodes by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
    /// Id the next volume gets.
    pub next_volume_id: u64,
    /// Maintenance and out flags of nodes (a node without an entry is in,
    /// not in maintenance).
    #[serde(default)]
    pub node_states: BTreeMap<u64, NodeState>,
    /// Replica moves in flight, by shard group.
    #[serde(default)]
    pub moves: BTreeMap<u64, ReplicaMove>,
}

impl MetaState {
    /// Applies the command at log `index`. Entries at or below `applied`
    /// were applied before a restart and are skipped.
    pub fn apply(&mut self, index: u64, cmd: MetaCommand) -> Result<MetaEffect, MetaError> {
        if index <= self.applied {
            return Ok(MetaEffect::None);
        }
        self.applied = index;
        match cmd {
            MetaCommand::PutNode(n) => {
                if self.nodes.get(&n.id) == Some(&n) {
                    return Ok(MetaEffect::None);
                }
                self.nodes.insert(n.id, n.clone());
                Ok(MetaEffect::NodePut(n))
            }
            MetaCommand::CreateVolume {
                name,
                size,
                chunk_size,
                replicas,
                shards,
                created_unix,
                labels,
                rules,
            } => {
                if self.volumes.contains_key(&name) {
                    return Err(MetaError::VolumeExists(name));
                }
                self.check_placement(replicas, &shards, &rules)?;
                let id = self.next_volume_id.max(1);
                self.next_volume_id = id + 1;
                let rec = VolumeRecord {
                    meta: VolumeMeta {
                        id,
                        name: name.clone(),
                        size,
                        chunk_size,
                        created_unix,
                        checksum: raftblock_storage::catalog::CHECKSUM_SCHEME.to_string(),
                    },
                    replicas,
                    shards,
                    labels,
                    rules,
                    attach_epoch: 0,
                    attachment: None,
                    served_by: None,
                    shard_confs: Vec::new(),
                    resize: None,
                    resizes: 0,
                };
                self.volumes.insert(name, rec.clone());
                Ok(MetaEffect::VolumeCreated(rec))
            }
            MetaCommand::DeleteVolume { name } => {
                match self.volumes.get(&name).and_then(|v| v.attachment.as_ref()) {
                    Some(a) => Err(MetaError::Attached {
                        name,
                        node: a.node,
                        epoch: a.epoch,
                    }),
                    None => match self.volumes.remove(&name) {
                        Some(rec) => {
                            for (g, _) in rec.groups() {
                                self.moves.remove(&g);
                            }
                            Ok(MetaEffect::VolumeDeleted(rec))
                        }
                        None => Err(MetaError::VolumeNotFound(name)),
                    },
                }
            }
            MetaCommand::Attach {
                name,
                node,
                expect_epoch,
                takeover,
                since_unix,
            } => {
                if !self.nodes.contains_key(&node) {
                    return Err(MetaError::Placement(format!("node {node} is not a member")));
                }
                let rec = self
                    .volumes
                    .get_mut(&name)
                    .ok_or_else(|| MetaError::VolumeNotFound(name.clone()))?;
                if rec.attach_epoch != expect_epoch {
                    return Err(MetaError::EpochMoved {
                        name,
                        expected: expect_epoch,
                        current: rec.attach_epoch,
                    });
                }
                if let Some(a) = &rec.attachment {
                    if a.node != node && !takeover {
                        return Err(MetaError::Attached {
                            name,
                            node: a.node,
                            epoch: a.epoch,
                        });
                    }
                }
                rec.attach_epoch += 1;
                rec.attachment = Some(Attachment {
                    node,
                    epoch: rec.attach_epoch,
                    since_unix,
                    renewed: 0,
                });
                self.serve(&name, node);
                Ok(MetaEffect::None)
            }
            MetaCommand::Serve { name, node } => {
                if !self.volumes.contains_key(&name) {
                    return Err(MetaError::VolumeNotFound(name));
                }
                self.serve(&name, node);
                Ok(MetaEffect::None)
            }
            MetaCommand::Renew { node, volumes } => {
                for (name, epoch) in volumes {
                    let held = self
                        .volumes
                        .get_mut(&name)
                        .and_then(|v| v.attachment.as_mut())
                        .filter(|a| a.node == node && a.epoch == epoch);
                    if let Some(a) = held {
                        a.renewed += 1;
                    }
                }
                Ok(MetaEffect::None)
            }
            MetaCommand::SetMaintenance { node, on } => {
                self.node_state_mut(node)?.maintenance = on;
                Ok(MetaEffect::None)
            }
            MetaCommand::MarkOut { node } => {
                let state = self.node_state_mut(node)?;
                if state.maintenance {
                    return Err(MetaError::InMaintenance(node));
                }
                state.out = true;
                Ok(MetaEffect::None)
            }
            MetaCommand::MarkIn { node } => {
                self.node_state_mut(node)?.out = false;
                Ok(MetaEffect::None)
            }
            MetaCommand::SetDraining { node, on } => self.set_draining(node, on),
            MetaCommand::RemoveNode { node } => self.remove_node(node),
            MetaCommand::PreferLeader { group, node } => self.prefer_leader(group, node),
            MetaCommand::StartMove(m) => self.start_move(m),
            MetaCommand::EndMove { group, add } => Ok(self.end_move(group, add)),
            MetaCommand::ShardMembership {
                group,
                voters,
                conf_index,
            } => self.shard_membership(group, voters, conf_index),
            MetaCommand::BeginResize {
                name,
                size,
                allow_shrink,
                since_unix,
            } => self
                .begin_resize(&name, size, allow_shrink, since_unix)
                .map(|()| MetaEffect::None),
            MetaCommand::FinishResize { name, size } => {
                self.finish_resize(&name, size).map(|()| MetaEffect::None)
            }
            MetaCommand::Detach { name, epoch } => {
                let rec = self
                    .volumes
                    .get_mut(&name)
                    .ok_or_else(|| MetaError::VolumeNotFound(name.clone()))?;
                if rec.attachment.as_ref().is_some_and(|a| a.epoch == epoch) {
                    rec.attachment = None;
                }
                Ok(MetaEffect::None)
            }
        }
    }

    /// How many volumes one node may serve with their leaders local: twice
    /// its fair share of the volumes, so one node serving everything still
    /// leaves the other nodes leading some shards (leaders stay spread).
    pub fn serving_cap(&self) -> usize {
        let nodes = self.nodes.len().max(1);
        (2 * self.volumes.len()).div_ceil(nodes).max(1)
    }

    /// Records that `node` serves `name`, unless it already serves its cap
    /// of volumes: then a node already serving `name` keeps it (a client
    /// that also reads through a full node does not take its leaders away),
    /// and otherwise the shards keep their placement's leaders.
    fn serve(&mut self, name: &str, node: u64) {
        let serving = self
            .volumes
            .values()
            .filter(|v| v.served_by == Some(node) && v.meta.name != name)
            .count();
        let cap = self.serving_cap();
        if let Some(rec) = self.volumes.get_mut(name) {
            if serving < cap && rec.is_on(node) {
                rec.served_by = Some(node);
            } else if rec.served_by == Some(node) {
                rec.served_by = None;
            }
        }
    }

    /// Loads the state saved by [`MetaState::save`], or an empty one.
    pub fn load(path: &Path) -> Result<MetaState, StateFileError> {
        load_json(path)
    }

    /// Saves the state atomically (write, fsync, rename, fsync the directory).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &data)
    }
}

/// Why a JSON state file (the metadata's `meta.json`, a shard's
/// `fence-N.json`) could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file exists but could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Its contents are not what was saved there.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: serde_json::Error,
    },
}

/// Loads a JSON state file written by [`write_atomic`] (the default value
/// when there is none yet).
pub(crate) fn load_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> Result<T, StateFileError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| StateFileError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(StateFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `data` to `path` so a crash leaves the old or the new file.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> MetaCommand {
        MetaCommand::PutNode(NodeInfo {
            id,
            raft_addr: format!("127.0.0.1:{}", 7000 + id).parse().expect("addr"),
            nbd_addr: None,
            admin_addr: None,
            labels: Default::default(),
        })
    }

    fn create(name: &str, replicas: u32, shards: Vec<Vec<u64>>) -> MetaCommand {
        MetaCommand::CreateVolume {
            name: name.into(),
            size: 1 << 30,
            chunk_size: 64 << 20,
            replicas,
            shards,
            created_unix: 0,
            labels: BTreeMap::new(),
            rules: Default::default(),
        }
    }

    #[test]
    fn placement_is_distinct_and_spreads_leaders() {
        let mut m = MetaState::default();
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            m.apply(i as u64 + 1, node(id)).expect("node");
        }
        let p = m
            .place(3, 6, &[1, 2, 3], &Default::default())
            .expect("place");
        let leaders: std::collections::BTreeSet<u64> = p.iter().map(|s| s[0]).collect();
        assert_eq!(leaders.len(), 3);
        for s in &p {
            let mut d = s.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        let err = m
            .place(3, 1, &[1, 2], &Default::default())
            .expect_err("two live nodes");
        assert!(err.to_string().contains("only 2 node(s) are up"), "{err}");
    }

    #[test]
    fn apply_checks_again_and_skips_replayed_entries() {
        let mut m = MetaState::default();
        m.apply(1, node(1)).expect("node");
        m.apply(2, node(2)).expect("node");
        let e = m.apply(3, create("a", 2, vec![vec![1, 1]]));
        assert!(matches!(e, Err(MetaError::Placement(_))));
        let e = m.apply(4, create("a", 2, vec![vec![1, 9]]));
        assert!(matches!(e, Err(MetaError::Placement(_))));
        let e = m
            .apply(5, create("a", 2, vec![vec![1, 2]]))
            .expect("create");
        let MetaEffect::VolumeCreated(rec) = e else {
            panic!("{e:?}")
        };
        assert_eq!(rec.meta.id, 1);
        // A replayed entry changes nothing.
        assert_eq!(
            m.apply(5, create("b", 2, vec![vec![1, 2]])),
            Ok(MetaEffect::None)
        );
        assert_eq!(
            m.apply(6, create("a", 2, vec![vec![1, 2]])),
            Err(MetaError::VolumeExists("a".into()))
        );
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("meta.json");
        m.save(&path).expect("save");
        assert_eq!(MetaState::load(&path).expect("load"), m);
    }

    fn attach(name: &str, node: u64, expect_epoch: u64, takeover: bool) -> MetaCommand {
        MetaCommand::Attach {
            name: name.into(),
            node,
            expect_epoch,
            takeover,
            since_unix: 0,
        }
    }

    #[test]
    fn serving_moves_preferred_leaders_up_to_a_cap() {
        let mut m = MetaState::default();
        for (i, n) in (1..=3).enumerate() {
            m.apply(i as u64 + 1, node(n)).expect("node");
        }
        let shards = vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]];
        for (i, v) in ["a", "b", "c"].iter().enumerate() {
            m.apply(10 + i as u64, create(v, 3, shards.clone()))
                .expect("create");
        }
        assert_eq!(m.volumes["a"].preferred_leader(&shards[1]), 2);
        let serve = |name: &str, node: u64| MetaCommand::Serve {
            name: name.into(),
            node,
        };
        m.apply(20, serve("a", 3)).expect("serve");
        let a = &m.volumes["a"];
        assert!(shards.iter().all(|s| a.preferred_leader(s) == 3));
        // Three volumes on three nodes: a node serves at most two with
        // local leaders; the third keeps its placement.
        m.apply(21, serve("b", 3)).expect("serve");
        m.apply(22, serve("c", 3)).expect("serve");
        assert_eq!(m.volumes["b"].served_by, Some(3));
        assert_eq!(m.volumes["c"].served_by, None);
        assert_eq!(m.volumes["c"].preferred_leader(&shards[0]), 1);
        // Attaching serves too.
        m.apply(23, attach("c", 1, 0, false)).expect("attach");
        assert_eq!(m.volumes["c"].served_by, Some(1));
        // A full node reading `c` too does not take it from node 1.
        m.apply(24, serve("c", 3)).expect("serve");
        assert_eq!(m.volumes["c"].served_by, Some(1));
        assert!(m.apply(25, serve("nope", 1)).is_err());
    }

    #[test]
    fn attach_is_exclusive_compare_and_set_and_blocks_delete() {
        let mut m = MetaState::default();
        m.apply(1, node(1)).expect("node");
        m.apply(2, node(2)).expect("node");
        m.apply(3, create("v", 2, vec![vec![1, 2]]))
            .expect("create");
        m.apply(4, attach("v", 1, 0, false)).expect("attach");
        assert_eq!(m.volumes["v"].attach_epoch, 1);
        // Node 2 cannot take it without a takeover, nor with a stale epoch.
        assert!(matches!(
            m.apply(5, attach("v", 2, 1, false)),
            Err(MetaError::Attached {
                node: 1,
                epoch: 1,
                ..
            })
        ));
        assert!(matches!(
            m.apply(6, attach("v", 2, 0, true)),
            Err(MetaError::EpochMoved { current: 1, .. })
        ));
        assert!(matches!(
            m.apply(7, MetaCommand::DeleteVolume { name: "v".into() }),
            Err(MetaError::Attached { .. })
        ));
        m.apply(8, attach("v", 2, 1, true)).expect("takeover");
        let a = m.volumes["v"].attachment.clone().expect("attached");
        assert_eq!((a.node, a.epoch), (2, 2));
        // The old holder's detach is a no-op; the new one's ends it.
        m.apply(
            9,
            MetaCommand::Detach {
                name: "v".into(),
                epoch: 1,
            },
        )
        .expect("stale detach");
        assert!(m.volumes["v"].attachment.is_some());
        m.apply(
            10,
            MetaCommand::Detach {
                name: "v".into(),
                epoch: 2,
            },
        )
        .expect("detach");
        assert_eq!(m.volumes["v"].attachment, None);
        assert_eq!(m.volumes["v"].attach_epoch, 2);
        m.apply(11, attach("v", 1, 2, false)).expect("attach again");
        // Renewals count only for the current holder and epoch.
        let renew = |node, epoch| MetaCommand::Renew {
            node,
            volumes: vec![("v".into(), epoch), ("gone".into(), 1)],
        };
        m.apply(12, renew(1, 3)).expect("renew");
        m.apply(13, renew(2, 3)).expect("not the holder");
        m.apply(14, renew(1, 2)).expect("old epoch");
        let a = m.volumes["v"].attachment.clone().expect("attached");
        assert_eq!((a.node, a.epoch, a.renewed), (1, 3, 1));
        m.apply(
            15,
            MetaCommand::Detach {
                name: "v".into(),
                epoch: 3,
            },
        )
        .expect("detach");
        m.apply(16, MetaCommand::DeleteVolume { name: "v".into() })
            .expect("delete");
    }

    #[test]
    fn group_ids_round_trip() {
        assert_eq!(shard_of_group(shard_group(7, 3)), (7, 3));
        assert_ne!(shard_group(1, 0), META_GROUP);
    }

    #[test]
    fn nodes_are_marked_out_and_in_unless_in_maintenance() {
        let mut m = MetaState::default();
        m.apply(1, node(1)).expect("node");
        m.apply(2, node(2)).expect("node");
        assert_eq!(m.node_state(2), NodeState::default());
        m.apply(3, MetaCommand::MarkOut { node: 2 }).expect("out");
        assert!(m.node_state(2).out);
        m.apply(4, MetaCommand::MarkIn { node: 2 }).expect("in");
        assert!(!m.node_state(2).out);
        m.apply(5, MetaCommand::SetMaintenance { node: 2, on: true })
            .expect("maintenance");
        assert_eq!(
            m.apply(6, MetaCommand::MarkOut { node: 2 }),
            Err(MetaError::InMaintenance(2))
        );
        assert!(!m.node_state(2).out);
        m.apply(7, MetaCommand::SetMaintenance { node: 2, on: false })
            .expect("maintenance off");
        m.apply(8, MetaCommand::MarkOut { node: 2 }).expect("out");
        assert!(m.node_state(2).out);
        assert_eq!(
            m.apply(9, MetaCommand::MarkOut { node: 7 }),
            Err(MetaError::NodeNotFound(7))
        );
        // Older snapshots without node states still load.
        let old = r#"{"applied":1,"nodes":{},"volumes":{},"next_volume_id":1}"#;
        let m: MetaState = serde_json::from_str(old).expect("old state");
        assert!(m.node_states.is_empty());
    }
}
