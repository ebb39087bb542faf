//! The admin API in cluster mode: volumes come from the cluster metadata
//! (created and deleted through the meta group, read after a meta read
//! barrier so any node answers with the latest state), `GET /v1/cluster`
//! gathers every node's replica state into one picture, and
//! `POST /v1/cluster/nodes` adds a node (`serve --join`).

use axum::http::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftblock_consensus::meta::ReplicaMove;
use raftblock_consensus::recovery::CopyStatus;
use raftblock_consensus::{
    Cluster, GroupStatus, MetaCommand, MetaError, MetaState, NodeInfo, PlacementRules,
    ReplicaError, RouteError, VolumeRecord, VolumeSpec,
};
use raftblock_storage::catalog::{parse_labels, validate_name, validate_sizes};
use raftblock_storage::DEFAULT_CHUNK_SIZE;

use super::{AdminState, ApiError, CreateVolume};
use crate::client::AdminClient;

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let status = match &e {
            RouteError::Replica(ReplicaError::Meta(m)) => match m {
                MetaError::VolumeExists(_)
                | MetaError::Attached { .. }
                | MetaError::EpochMoved { .. } => StatusCode::CONFLICT,
                MetaError::VolumeNotFound(_)
                | MetaError::NodeNotFound(_)
                | MetaError::GroupNotFound(_) => StatusCode::NOT_FOUND,
                MetaError::InMaintenance(_)
                | MetaError::Move { .. }
                | MetaError::CannotDrain { .. }
                | MetaError::CannotRemove { .. }
                | MetaError::Resize { .. } => StatusCode::CONFLICT,
                MetaError::Placement(_) => StatusCode::BAD_REQUEST,
                MetaError::Undecodable(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            RouteError::Replica(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let msg = match &e {
            RouteError::Replica(
                ReplicaError::NotLeader { .. } | ReplicaError::Retry(_) | ReplicaError::NoReplica(_),
            ) => format!("the cluster metadata group has no reachable leader ({e}); is a majority of nodes up?"),
            _ => e.to_string(),
        };
        ApiError(status, msg)
    }
}

/// A volume as the API shows it.
pub fn volume_view(s: &AdminState, c: &Cluster, rec: &VolumeRecord) -> Value {
    let meta = c.view().meta();
    let allocated = s
        .store
        .volume(&rec.meta.name)
        .ok()
        .filter(|v| v.meta().id == rec.meta.id)
        .and_then(|v| v.allocated_bytes().ok());
    let uris: Vec<String> = meta
        .nodes
        .values()
        .filter_map(|n| n.nbd_addr)
        .map(|a| format!("nbd://{a}/{}", rec.meta.name))
        .collect();
    let shards: Vec<Value> = rec
        .groups()
        .enumerate()
        .map(|(i, (group, nodes))| {
            json!({
                "index": i,
                "group": group,
                "replicas": nodes,
                "leader": c.view().leader(group),
            })
        })
        .collect();
    json!({
        "id": rec.meta.id,
        "name": rec.meta.name,
        "size": rec.meta.size,
        "chunk_size": rec.meta.chunk_size,
        "checksum": rec.meta.checksum,
        "created_unix": rec.meta.created_unix,
        "replicas": rec.replicas,
        "shards": shards,
        "labels": rec.labels,
        "spread": rec.rules.spread,
        "require": rec.rules.require,
        "attach_epoch": rec.attach_epoch,
        "attached_to": rec.attachment.as_ref().map(|a| a.node),
        "allocated_bytes": allocated.unwrap_or(0),
        "connections": s.metrics.connections(&rec.meta.name),
        "nbd_uri": format!("nbd://{}/{}", s.nbd_addr, rec.meta.name),
        "nbd_uris": uris,
        "resizing": rec.resize,
    })
}

/// `GET /v1/volumes`.
pub async fn list(s: &AdminState, c: &Cluster) -> Value {
    c.meta_barrier(Duration::from_secs(3)).await;
    let meta = c.view().meta();
    Value::Array(
        meta.volumes
            .values()
            .map(|r| volume_view(s, c, r))
            .collect(),
    )
}

/// `GET /v1/volumes/{name}`.
pub async fn info(s: &AdminState, c: &Cluster, name: &str) -> Result<Value, ApiError> {
    c.meta_barrier(Duration::from_secs(3)).await;
    let meta = c.view().meta();
    let rec = meta.volumes.get(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("volume `{name}` does not exist"),
        )
    })?;
    Ok(volume_view(s, c, rec))
}

/// `POST /v1/volumes`.
pub async fn create(s: &AdminState, c: &Cluster, req: &CreateVolume) -> Result<Value, ApiError> {
    validate_name(&req.name)?;
    let chunk_size = req.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    validate_sizes(req.size, chunk_size)?;
    let members = c.view().meta().nodes.len().max(1) as u32;
    let replicas = req.replicas.unwrap_or(3.min(members));
    let shards = req.shards.unwrap_or_else(|| {
        raftblock_consensus::layout::default_shards(req.size, chunk_size).max(3)
    });
    if req
        .spread
        .as_deref()
        .is_some_and(|k| parse_labels(&format!("{k}=x")).is_err())
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("spread: {:?} is not a label key", req.spread),
        ));
    }
    let spec = VolumeSpec {
        size: req.size,
        chunk_size,
        replicas,
        shards,
        labels: Default::default(),
        rules: PlacementRules {
            spread: req.spread.clone(),
            require: req.require.clone(),
        },
    };
    let rec = c.create_volume(&req.name, spec).await?;
    Ok(volume_view(s, c, &rec))
}

/// `POST /v1/volumes/{name}/resize`.
pub async fn resize(
    s: &AdminState,
    c: &Cluster,
    name: &str,
    size: u64,
    allow_shrink: bool,
) -> Result<Value, ApiError> {
    let chunk_size = c
        .volume_record(name)
        .map_err(RouteError::from)?
        .meta
        .chunk_size;
    validate_sizes(size, chunk_size)?;
    let rec = c.resize_volume(name, size, allow_shrink).await?;
    Ok(volume_view(s, c, &rec))
}

/// Why a member gave no answer to [`ask_members`].
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    /// The member registered no admin API address.
    #[error("no admin address")]
    NoAdminAddress,
    /// The call to its admin API failed.
    #[error("{0}")]
    Failed(anyhow::Error),
}

/// Asks the members `ids` other than this node, in parallel on blocking
/// threads, through their admin APIs (`ask`, within `timeout`); a member
/// without an admin address, or whose call failed, answers the error. The
/// calls start now, not when the answers are awaited, so the caller can do
/// its own share meanwhile (a scrub of its own copy).
pub(super) fn ask_members<T: Send + 'static>(
    c: &Cluster,
    ids: impl IntoIterator<Item = u64>,
    timeout: Duration,
    ask: impl Fn(&AdminClient) -> anyhow::Result<T> + Clone + Send + 'static,
) -> impl std::future::Future<Output = Vec<(u64, Result<T, AskError>)>> {
    let meta = c.view().meta();
    let mut asks = Vec::new();
    for id in ids.into_iter().filter(|id| *id != c.node()) {
        let addr = meta.nodes.get(&id).and_then(|n| n.admin_addr);
        let ask = ask.clone();
        asks.push(tokio::task::spawn_blocking(move || {
            let answer = match addr {
                Some(a) => ask(&AdminClient::with_timeout(&a.to_string(), timeout))
                    .map_err(AskError::Failed),
                None => Err(AskError::NoAdminAddress),
            };
            (id, answer)
        }));
    }
    async move {
        let mut out = Vec::new();
        for a in asks {
            if let Ok(r) = a.await {
                out.push(r);
            }
        }
        out
    }
}

/// `DELETE /v1/volumes/{name}`: refused while NBD clients are connected to
/// the volume through any node that answers (a node that cannot be reached
/// has no live clients to lose, or they are cut off anyway).
pub async fn delete(s: &AdminState, c: &Cluster, name: &str) -> Result<(), ApiError> {
    let ids: Vec<u64> = c.view().meta().nodes.keys().copied().collect();
    let mut busy = Vec::new();
    let here = s.metrics.connections(name);
    if here > 0 {
        busy.push((c.node(), here));
    }
    let vol = name.to_string();
    let there = ask_members(c, ids, Duration::from_secs(2), move |a| {
        Ok(a.local_replicas()?["nbd_connections"][vol.as_str()]
            .as_i64()
            .unwrap_or(0))
    })
    .await;
    busy.extend(
        there
            .into_iter()
            .filter_map(|(id, n)| n.ok().filter(|n| *n > 0).map(|n| (id, n))),
    );
    if !busy.is_empty() {
        busy.sort_unstable();
        let total: i64 = busy.iter().map(|b| b.1).sum();
        let on: Vec<String> = busy
            .iter()
            .map(|(id, n)| format!("node {id}: {n}"))
            .collect();
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "volume {name} has {total} NBD client(s) connected ({}); disconnect them first",
                on.join(", ")
            ),
        ));
    }
    c.delete_volume(name).await?;
    Ok(())
}

/// `POST /v1/volumes/{name}/scrub`: every member scrubs its own copy (in
/// parallel; a member that cannot be reached is reported as such), then the
/// replicas are compared with each other (`replicas`, as `verify`).
pub async fn scrub(c: &Cluster, name: &str) -> Result<Value, ApiError> {
    c.meta_barrier(Duration::from_secs(3)).await;
    let meta = c.view().meta();
    let rec = meta.volumes.get(name).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("volume `{name}` does not exist"),
        )
    })?;
    let holders: std::collections::BTreeSet<u64> = rec.shards.iter().flatten().copied().collect();
    let vol = name.to_string();
    // A scrub reads the whole copy: allow it time.
    let remote = ask_members(c, holders.clone(), Duration::from_secs(3600), move |a| {
        a.scrub_local(&vol)
    });
    let mut nodes = Vec::new();
    if holders.contains(&c.node()) {
        nodes.push(match c.scrub_volume(name).await {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => json!({ "node": c.node(), "error": e.to_string() }),
        });
    }
    for (id, v) in remote.await {
        nodes.push(v.unwrap_or_else(|e| json!({ "node": id, "error": e.to_string() })));
    }
    nodes.sort_by_key(|n| n["node"].as_u64().unwrap_or(0));
    // Each copy is sound by its own checksums; now compare them.
    let replicas = match c.verify_volume(name, false).await {
        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
        Err(e) => json!({ "error": e.to_string() }),
    };
    Ok(json!({ "volume": name, "nodes": nodes, "replicas": replicas }))
}

/// `POST /v1/cluster/nodes`.
pub async fn join(c: &Cluster, info: NodeInfo) -> Result<Value, ApiError> {
    if info.id == 0 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "node ids start at 1".into(),
        ));
    }
    c.add_node(info.clone()).await?;
    // The joiner needs the members' addresses to answer them before it
    // has the metadata.
    let members: Vec<Value> = c
        .view()
        .meta()
        .nodes
        .values()
        .map(|n| json!({ "id": n.id, "raft_addr": n.raft_addr }))
        .collect();
    Ok(json!({ "joined": info.id, "members": members }))
}

/// `POST /v1/cluster/nodes/{id}/maintenance`: puts node `id` in
/// maintenance (`on`) or takes it out; a node in maintenance is never
/// marked out while it is down.
pub async fn set_maintenance(c: &Cluster, node: u64, on: bool) -> Result<Value, ApiError> {
    c.propose_meta(MetaCommand::SetMaintenance { node, on })
        .await?;
    Ok(json!({ "node": node, "maintenance": on }))
}

/// `POST /v1/cluster/nodes/{id}/drain`: starts draining node `id` (its
/// replicas move to other nodes, no new ones go there), refused up front
/// when the others cannot hold them; `on: false` stops it.
pub async fn set_draining(c: &Cluster, node: u64, on: bool) -> Result<Value, ApiError> {
    c.propose_meta(MetaCommand::SetDraining { node, on })
        .await?;
    let replicas = c.view().meta().groups_on(node).len();
    Ok(json!({ "node": node, "draining": on, "replicas": replicas }))
}

/// `DELETE /v1/cluster/nodes/{id}`: removes node `id` from the cluster,
/// refused while it holds replicas.
pub async fn remove_node(c: &Cluster, node: u64) -> Result<Value, ApiError> {
    c.propose_meta(MetaCommand::RemoveNode { node }).await?;
    Ok(json!({ "removed": node }))
}

/// `GET /v1/cluster/local`.
pub async fn local(s: &AdminState, c: &Cluster) -> Value {
    let connections: BTreeMap<String, i64> = c
        .view()
        .meta()
        .volumes
        .keys()
        .map(|v| (v.clone(), s.metrics.connections(v)))
        .filter(|(_, n)| *n > 0)
        .collect();
    json!({
        "node": c.node(),
        "groups": c.driver().status().await,
        "copies": c.recovery().status(),
        "nbd_connections": connections,
        "facts": node_facts(s, c),
    })
}

/// What this node knows of itself that the status page shows: its disk,
/// the space each of its shard replicas takes, its error counters.
fn node_facts(s: &AdminState, c: &Cluster) -> Value {
    let meta = c.view().meta();
    let mut allocated: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
    for (name, rec) in &meta.volumes {
        let Ok(v) = s.store.volume(name) else {
            continue;
        };
        if v.meta().id != rec.meta.id {
            continue;
        }
        let layout = raftblock_consensus::ShardLayout::new(v.meta(), rec.shards.len() as u32);
        let per_shard = allocated.entry(name.clone()).or_default();
        for (chunk, bytes) in v.allocated_by_chunk().unwrap_or_default() {
            *per_shard
                .entry(layout.shard_of_chunk(chunk).index)
                .or_default() += bytes;
        }
    }
    let (mut checksum_errors, mut io_errors) = (0, 0);
    for v in s.store.open_volumes() {
        checksum_errors += v.stats().checksum_errors.load(Ordering::Relaxed);
        io_errors += v.stats().io_errors.load(Ordering::Relaxed);
    }
    json!({
        "disk": s.store.disk_usage().ok(),
        "allocated": allocated,
        "checksum_errors": checksum_errors,
        "io_errors": io_errors,
        "operations": raftblock_consensus::progress::running(c.node()),
        "events": raftblock_consensus::events::recent(c.node()),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /v1/cluster`: every node's replicas gathered into nodes and shards.
pub async fn status(s: &AdminState, c: &Arc<Cluster>) -> Value {
    c.meta_barrier(Duration::from_secs(3)).await;
    let meta = c.view().meta();
    // node -> its replicas' state and the copies it receives (None:
    // unreachable)
    let mut per_node: BTreeMap<u64, Option<NodeReplicas>> = BTreeMap::new();
    per_node.insert(
        c.node(),
        Some((
            c.driver().status().await,
            c.recovery().status(),
            node_facts(s, c),
        )),
    );
    let others = ask_members(c, meta.nodes.keys().copied(), Duration::from_secs(2), |a| {
        let local = a.local_replicas()?;
        Ok((
            serde_json::from_value::<Vec<GroupStatus>>(local["groups"].clone())?,
            serde_json::from_value::<Vec<CopyStatus>>(local["copies"].clone()).unwrap_or_default(),
            local["facts"].clone(),
        ))
    })
    .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    per_node.extend(others.into_iter().map(|(id, r)| (id, r.ok())));
    let live = c.live_nodes();
    let up = |n: u64| per_node.get(&n).is_some_and(|r| r.is_some()) || n == c.node();
    let nodes: Vec<Value> = meta
        .nodes
        .values()
        .map(|n| {
            let facts = per_node
                .get(&n.id)
                .and_then(|r| r.as_ref())
                .map(|r| r.2.clone())
                .unwrap_or(Value::Null);
            let silent = c.silent_for(n.id).as_secs();
            let (state, reason) = node_state(&meta, n.id, up(n.id), silent, now);
            json!({
                "id": n.id,
                "state": state,
                "reason": reason,
                "down_since_unix": (!up(n.id)).then(|| now.saturating_sub(silent)),
                "disk": facts["disk"],
                "checksum_errors": facts["checksum_errors"],
                "io_errors": facts["io_errors"],
                "up": up(n.id),
                "maintenance": meta.node_state(n.id).maintenance,
                "out": meta.node_state(n.id).out,
                "draining": meta.node_state(n.id).draining,
                "labels": n.labels,
                "replicas": meta.groups_on(n.id).len(),
                "heard_from": live.contains(&n.id),
                "raft_addr": n.raft_addr,
                "nbd_addr": n.nbd_addr,
                "admin_addr": n.admin_addr,
            })
        })
        .collect();
    let find = |node: u64, group: u64| -> Option<&GroupStatus> {
        per_node
            .get(&node)?
            .as_ref()?
            .0
            .iter()
            .find(|g| g.group == group)
    };
    let copy_of = |node: u64, group: u64| -> Option<&CopyStatus> {
        per_node
            .get(&node)?
            .as_ref()?
            .1
            .iter()
            .find(|c| c.group == group)
    };
    let volumes: Vec<Value> = meta
        .volumes
        .values()
        .map(|rec| {
            let shards: Vec<Value> = rec
                .groups()
                .enumerate()
                .map(|(i, (group, placed))| {
                    let mv = meta.moves.get(&group);
                    let mut replicas = placed.clone();
                    if let Some(m) = mv.filter(|m| !replicas.contains(&m.add)) {
                        replicas.push(m.add);
                    }
                    // The leader as the replicas see it (highest term wins).
                    let leader = replicas
                        .iter()
                        .filter_map(|n| find(*n, group))
                        .max_by_key(|g| g.term)
                        .map(|g| g.leader)
                        .unwrap_or(0);
                    let leader_status = find(leader, group);
                    let leader_last = leader_status.map(|g| g.last_index);
                    let reps: Vec<Value> = replicas
                        .iter()
                        .map(|n| match find(*n, group) {
                            Some(g) => json!({
                                "node": n,
                                "role": if g.role == "follower" && leader_status.is_some_and(|l| l.learners.contains(n)) { "learner".to_string() } else { g.role.clone() },
                                "term": g.term,
                                "commit": g.commit,
                                "applied": g.applied,
                                "durable": g.durable,
                                "last_index": g.last_index,
                                "lag": leader_last.map(|l| l.saturating_sub(g.applied)),
                            }),
                            None => json!({ "node": n, "role": "unreachable" }),
                        })
                        .collect();
                    let health = shard_health(&ShardFacts {
                        meta: &meta,
                        rec,
                        placed,
                        wanted: rec.replicas as usize,
                        leader: leader_status,
                        mv,
                        copy: mv.and_then(|m| copy_of(m.add, group)),
                        up: &up,
                    });
                    json!({
                        "index": i,
                        "group": group,
                        "leader": leader,
                        "state": health.state,
                        "reason": health.reason,
                        "move": mv.map(|m| json!({
                            "add": m.add,
                            "remove": m.remove,
                            "reason": format!("{:?}", m.reason).to_lowercase(),
                            "since_unix": m.since_unix,
                            "progress": mv.and_then(|m| copy_of(m.add, group)),
                        })),
                        "replicas": reps,
                    })
                })
                .collect();
            let worst = shards
                .iter()
                .filter_map(|s| s["state"].as_str())
                .max_by_key(|s| health_rank(s))
                .unwrap_or("healthy")
                .to_string();
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for sh in &shards {
                *counts.entry(sh["state"].as_str().unwrap_or("unknown")).or_default() += 1;
            }
            let reason = shards
                .iter()
                .find(|sh| sh["state"].as_str() == Some(worst.as_str()))
                .and_then(|sh| sh["reason"].as_str())
                .map(|r| {
                    let n = counts.get(worst.as_str()).copied().unwrap_or(0);
                    format!("{n} of {} shard(s) {worst}; e.g. {r}", shards.len())
                });
            // A shard's data is as large as its fullest replica's copy.
            let allocated: u64 = (0..rec.shards.len() as u32)
                .map(|i| {
                    per_node
                        .values()
                        .flatten()
                        .filter_map(|r| r.2["allocated"][&rec.meta.name][i.to_string()].as_u64())
                        .max()
                        .unwrap_or(0)
                })
                .sum();
            json!({
                "name": rec.meta.name,
                "size": rec.meta.size,
                "replicas": rec.replicas,
                "state": worst,
                "reason": reason,
                "shard_states": counts,
                "allocated_bytes": allocated,
                "resizing": rec.resize.is_some(),
                "shards": shards,
                "attach_epoch": rec.attach_epoch,
                "attached_to": rec.attachment.as_ref().map(|a| a.node),
            })
        })
        .collect();
    // Leaders per node, from the shards' views above.
    let mut nodes = nodes;
    for n in nodes.iter_mut() {
        let id = n["id"].as_u64().unwrap_or(0);
        let leads = volumes
            .iter()
            .flat_map(|v| v["shards"].as_array().into_iter().flatten())
            .filter(|s| s["leader"].as_u64() == Some(id))
            .count();
        n["leaders"] = json!(leads);
    }
    let meta_group = find(c.node(), raftblock_consensus::META_GROUP);
    let moves: Vec<Value> = meta
        .moves
        .values()
        .map(|m| {
            let shard = volumes.iter().find_map(|v| {
                v["shards"]
                    .as_array()?
                    .iter()
                    .find(|sh| sh["group"].as_u64() == Some(m.group))
                    .map(|sh| (v["name"].clone(), sh["index"].clone(), sh["reason"].clone()))
            });
            let (volume, index, status) = shard.unwrap_or_default();
            json!({
                "group": m.group,
                "volume": volume,
                "shard": index,
                "status": status,
                "add": m.add,
                "remove": m.remove,
                "reason": format!("{:?}", m.reason).to_lowercase(),
                "since_unix": m.since_unix,
                "progress": copy_of(m.add, m.group),
            })
        })
        .collect();
    // Scrubs and verifies running anywhere, with their progress.
    let operations: Vec<Value> = per_node
        .values()
        .flatten()
        .flat_map(|r| r.2["operations"].as_array().cloned().unwrap_or_default())
        .collect();
    let events = super::events::merge(per_node.values().flatten().map(|r| &r.2));
    let mut doc = json!({
        "node": c.node(),
        "generated_unix": now,
        "operations": operations,
        "events": events,
        "moves": moves,
        "meta_leader": meta_group.map(|g| g.leader),
        "meta_voters": meta_group.map(|g| g.voters.clone()),
        "meta_learners": meta_group.map(|g| g.learners.clone()),
        "nodes": nodes,
        "volumes": volumes,
        "nbd_addr": s.nbd_addr,
    });
    doc["health"] = super::health::assess(&doc, now);
    doc
}

/// `GET /v1/status` of a node that runs alone: the same document with one
/// node, volumes of one copy and no shards.
pub fn standalone_status(s: &AdminState) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let metas = s.store.list().unwrap_or_default();
    let (mut checksum_errors, mut io_errors) = (0, 0);
    for v in s.store.open_volumes() {
        checksum_errors += v.stats().checksum_errors.load(Ordering::Relaxed);
        io_errors += v.stats().io_errors.load(Ordering::Relaxed);
    }
    let volumes: Vec<Value> = metas
        .iter()
        .map(|m| {
            let allocated = s
                .store
                .volume(&m.name)
                .ok()
                .and_then(|v| v.allocated_bytes().ok());
            json!({
                "name": m.name,
                "size": m.size,
                "replicas": 1,
                "state": "healthy",
                "reason": null,
                "shard_states": {},
                "allocated_bytes": allocated.unwrap_or(0),
                "connections": s.metrics.connections(&m.name),
                "shards": [],
                "attached_to": null,
            })
        })
        .collect();
    let mut doc = json!({
        "standalone": true,
        "node": 0,
        "generated_unix": now,
        "moves": [],
        "events": [],
        "meta_leader": null,
        "nodes": [{
            "id": 0,
            "state": "up",
            "up": true,
            "disk": s.store.disk_usage().ok(),
            "checksum_errors": checksum_errors,
            "io_errors": io_errors,
            "replicas": volumes.len(),
            "leaders": 0,
            "nbd_addr": s.nbd_addr,
        }],
        "volumes": volumes,
        "nbd_addr": s.nbd_addr,
    });
    doc["health"] = super::health::assess(&doc, now);
    doc
}

/// A node's state as the status page shows it, and why: `down` (did not
/// answer), `out` (down long enough that its replicas are re-created
/// elsewhere), `draining`, `maintenance`, or `up`.
fn node_state(
    meta: &MetaState,
    id: u64,
    up: bool,
    silent_secs: u64,
    now: u64,
) -> (&'static str, Option<String>) {
    let st = meta.node_state(id);
    let since = |secs: u64| format!("{} UTC", super::health::clock(now.saturating_sub(secs)));
    match (up, st.out, st.draining, st.maintenance) {
        (false, true, ..) => (
            "out",
            Some(format!(
                "down since {} ({silent_secs} s without a word); marked out, so its replicas are re-created on other nodes",
                since(silent_secs)
            )),
        ),
        (false, false, _, maint) => (
            "down",
            Some(format!(
                "not answering; last heard {silent_secs} s ago (since {}){}",
                since(silent_secs),
                if maint {
                    "; in maintenance, so it is not marked out"
                } else {
                    "; marked out and healed if down longer than the down-out interval"
                }
            )),
        ),
        (true, _, true, _) => (
            "draining",
            Some(format!(
                "draining: {} replica(s) left to move away",
                meta.groups_on(id).len()
            )),
        ),
        (true, _, _, true) => (
            "maintenance",
            Some("in maintenance: never marked out while down".into()),
        ),
        (true, ..) => ("up", None),
    }
}

/// One node's replicas, the shard copies it receives, and its own facts
/// (`node_facts`).
type NodeReplicas = (Vec<GroupStatus>, Vec<CopyStatus>, Value);

/// What a shard's health is judged from.
struct ShardFacts<'a> {
    meta: &'a MetaState,
    /// The shard's volume.
    rec: &'a VolumeRecord,
    /// The voters the metadata records.
    placed: &'a [u64],
    /// Replicas the volume asks for.
    wanted: usize,
    /// The leader's view of the group (its configuration, its progress).
    leader: Option<&'a GroupStatus>,
    /// A move in flight.
    mv: Option<&'a ReplicaMove>,
    /// The copy of that move's target, once running.
    copy: Option<&'a CopyStatus>,
    /// Whether a node answered.
    up: &'a dyn Fn(u64) -> bool,
}

/// A shard's state and why.
struct Health {
    state: &'static str,
    reason: Option<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Worse states rank higher.
fn health_rank(state: &str) -> u8 {
    match state {
        "healthy" => 0,
        "rebuilding" => 1,
        "degraded" => 2,
        _ => 3,
    }
}

/// The shard's health from its Raft configuration (as its leader has it)
/// and which nodes answer, not from the replica count it is meant to have:
/// no leader is unavailable; a move in flight is rebuilding; fewer live
/// voters than asked for is degraded.
fn shard_health(f: &ShardFacts) -> Health {
    let Some(leader) = f.leader else {
        let down: Vec<u64> = f.placed.iter().copied().filter(|n| !(f.up)(*n)).collect();
        return Health {
            state: "unavailable",
            reason: Some(format!(
                "no leader: replicas on {:?}, down: {down:?}",
                f.placed
            )),
        };
    };
    let voters = if leader.voters.is_empty() {
        f.placed.to_vec()
    } else {
        leader.voters.clone()
    };
    let missing: Vec<u64> = voters.iter().copied().filter(|n| !(f.up)(*n)).collect();
    let live = voters.len() - missing.len();
    if let Some(m) = f.mv {
        let what = match m.remove {
            Some(r) => format!("replica of node {r} being re-created on node {}", m.add),
            None => format!("new replica on node {}", m.add),
        };
        let progress = match f.copy {
            Some(c) if c.total > 0 => format!(
                ": copied {:.1} of {:.1} MiB at {:.1} MiB/s, ETA {}",
                mib(c.done),
                mib(c.total),
                mib(c.rate),
                c.eta_secs.map_or("unknown".into(), |e| format!("{e}s"))
            ),
            Some(_) => ": comparing chunk checksums".into(),
            None if leader.learners.contains(&m.add) => ": catching up from the log".into(),
            None => ": waiting for the new replica to start".into(),
        };
        return Health {
            state: "rebuilding",
            reason: Some(format!("{what}{progress}")),
        };
    }
    if live < f.wanted {
        let mut why = if missing.is_empty() {
            format!("{live} of {} replicas", f.wanted)
        } else {
            format!("replica(s) on node(s) {missing:?} down")
        };
        let out: Vec<u64> = missing
            .iter()
            .copied()
            .filter(|n| f.meta.node_state(*n).out)
            .collect();
        if let Some(&lost) = out.first() {
            let placeable =
                raftblock_consensus::healing::unplaceable(f.meta, f.rec, &voters, lost, |n| {
                    (f.up)(n)
                });
            why.push_str(&match placeable {
                Some(no) => format!("; {no}"),
                None => "; a new replica is being planned".into(),
            });
        } else if !missing.is_empty() {
            why.push_str("; re-created elsewhere if down longer than the down-out interval");
        }
        return Health {
            state: "degraded",
            reason: Some(why),
        };
    }
    Health {
        state: "healthy",
        reason: None,
    }
}
