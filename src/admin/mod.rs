//! The admin HTTP/JSON API: volume create/list/info/delete, `/metrics` in
//! Prometheus text format, and `/health`; in cluster mode also the cluster
//! status and joining (`cluster`). Errors map to HTTP status codes here (400
//! bad input, 404 unknown, 409 exists or busy, 503 no quorum, 500 otherwise).

mod cluster;
mod events;
pub(crate) mod health;
mod page;
mod stats;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use raftblock_consensus::{Cluster, NodeInfo};
use raftblock_storage::{ChunkStore, StorageError, VolumeMeta, DEFAULT_CHUNK_SIZE};
use raftblock_volume_driver::metrics::{header as metric_header, per_volume};
use raftblock_volume_driver::NbdMetrics;

/// The wall clock now, as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn clock_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} UTC", health::clock(now))
}

/// What the admin handlers share.
pub struct AdminState {
    /// The node's chunk store.
    pub store: Arc<ChunkStore>,
    /// NBD request metrics.
    pub metrics: Arc<NbdMetrics>,
    /// Where NBD clients connect (for the URIs we hand out).
    pub nbd_addr: SocketAddr,
    /// The cluster service, in cluster mode.
    pub cluster: Option<Arc<Cluster>>,
    /// The Docker plugin's metrics, when it is served.
    pub plugin: Option<Arc<raftblock_volume_driver::docker::PluginMetrics>>,
    /// The last 15 minutes of traffic.
    pub stats: Arc<crate::stats::StatsHistory>,
}

/// An error reply: status plus `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = match &e {
            StorageError::VolumeNotFound(_) => StatusCode::NOT_FOUND,
            StorageError::VolumeExists(_) | StorageError::VolumeBusy { .. } => StatusCode::CONFLICT,
            StorageError::InvalidName { .. }
            | StorageError::InvalidSize { .. }
            | StorageError::OutOfRange { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// Body of `POST /v1/volumes`.
#[derive(Deserialize)]
pub(crate) struct CreateVolume {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) chunk_size: Option<u64>,
    pub(crate) replicas: Option<u32>,
    pub(crate) shards: Option<u32>,
    /// Replicas of a shard on nodes with distinct values of this label.
    #[serde(default)]
    pub(crate) spread: Option<String>,
    /// Only nodes with these labels.
    #[serde(default)]
    pub(crate) require: std::collections::BTreeMap<String, String>,
}

/// The admin router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/health", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/stats", get(stats::stats))
        .route("/metrics", get(metrics))
        .route("/v1/volumes", get(list).post(create))
        .route("/v1/volumes/{name}", get(info).delete(delete))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/local", get(cluster_local))
        .route("/v1/volumes/{name}/scrub", post(scrub))
        .route("/v1/volumes/{name}/resize", post(resize))
        .route("/v1/volumes/{name}/verify", post(verify))
        .route("/v1/cluster/local/scrub/{name}", post(scrub_local))
        .route("/v1/cluster/nodes", post(cluster_join))
        .route("/v1/cluster/nodes/{id}/maintenance", post(node_maintenance))
        .route("/v1/cluster/nodes/{id}/drain", post(node_drain))
        .route("/v1/cluster/nodes/{id}", axum::routing::delete(node_remove))
        .fallback(no_such_endpoint)
        .with_state(state)
}

/// Any other path or method: a JSON error like every other answer.
async fn no_such_endpoint(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}

fn view(state: &AdminState, meta: &VolumeMeta) -> Value {
    let (allocated, connections) = match state.store.volume(&meta.name) {
        Ok(v) => (v.allocated_bytes().unwrap_or(0), v.handles()),
        Err(_) => (0, 0),
    };
    json!({
        "id": meta.id,
        "name": meta.name,
        "size": meta.size,
        "chunk_size": meta.chunk_size,
        "checksum": meta.checksum,
        "created_unix": meta.created_unix,
        "allocated_bytes": allocated,
        "connections": connections,
        "nbd_uri": format!("nbd://{}/{}", state.nbd_addr, meta.name),
    })
}

fn need_cluster(s: &AdminState) -> Result<&Arc<Cluster>, ApiError> {
    s.cluster.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this node runs alone (start it with --node-id/--peers for cluster mode)".into(),
        )
    })
}

async fn cluster_status(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    Ok(Json(cluster::status(&s, c).await))
}

/// `GET /v1/status`: what `raftblock cluster status --json` prints and the
/// status page shows; a node running alone answers for itself.
async fn status(State(s): State<Arc<AdminState>>) -> Json<Value> {
    match &s.cluster {
        Some(c) => Json(cluster::status(&s, c).await),
        None => Json(cluster::standalone_status(&s)),
    }
}

async fn cluster_local(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    Ok(Json(cluster::local(&s, c).await))
}

async fn scrub(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    Ok(Json(cluster::scrub(c, &name).await?))
}

async fn verify(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    c.meta_barrier(std::time::Duration::from_secs(3)).await;
    let r = c.verify_volume(&name, false).await?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn scrub_local(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    let r = c.scrub_volume(&name).await?;
    Ok(Json(serde_json::to_value(r).unwrap_or_default()))
}

async fn cluster_join(
    State(s): State<Arc<AdminState>>,
    body: Result<Json<NodeInfo>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    let Json(info) = body.map_err(bad_body)?;
    Ok(Json(cluster::join(c, info).await?))
}

/// The body of `POST /v1/cluster/nodes/{id}/maintenance` and `.../drain`.
#[derive(serde::Deserialize)]
struct MaintenanceBody {
    on: bool,
}

async fn node_maintenance(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<u64>,
    body: Result<Json<MaintenanceBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    let Json(b) = body.map_err(bad_body)?;
    Ok(Json(cluster::set_maintenance(c, id, b.on).await?))
}

/// `raftblock_shards{state}`: the shard groups this node leads, by state
/// (from their Raft configuration and which voters are heard from), and
/// `raftblock_shards_total`, every shard of the cluster: the shards no
/// node reports have no leader (unavailable).
async fn shard_states(out: &mut String, c: &raftblock_consensus::Cluster) {
    let meta = c.view().meta();
    let mut counts = [("healthy", 0u64), ("degraded", 0), ("rebuilding", 0)];
    for g in c.driver().status().await {
        let (Some(up), Some((rec, _))) = (g.voters_up, meta.shard(g.group)) else {
            continue;
        };
        let state = if meta.moves.contains_key(&g.group) {
            2
        } else if up < rec.replicas as usize {
            1
        } else {
            0
        };
        counts[state].1 += 1;
    }
    metric_header(
        out,
        "raftblock_shards",
        "gauge",
        "Shard groups this node leads, by state: healthy, degraded (fewer voters heard from than replicas asked for), rebuilding (a replica move in flight).",
    );
    for (state, n) in counts {
        let _ = writeln!(out, "raftblock_shards{{state=\"{state}\"}} {n}");
    }
    let total: usize = meta.volumes.values().map(|v| v.shards.len()).sum();
    metric_header(
        out,
        "raftblock_shards_total",
        "gauge",
        "Shards in the cluster (those no node reports in raftblock_shards have no leader).",
    );
    let _ = writeln!(out, "raftblock_shards_total {total}");
}

async fn node_drain(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<u64>,
    body: Result<Json<MaintenanceBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    let Json(b) = body.map_err(bad_body)?;
    Ok(Json(cluster::set_draining(c, id, b.on).await?))
}

async fn node_remove(
    State(s): State<Arc<AdminState>>,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let c = need_cluster(&s)?;
    Ok(Json(cluster::remove_node(c, id).await?))
}

fn bad_body(e: JsonRejection) -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        format!("bad request body: {}", e.body_text()),
    )
}

async fn list(State(s): State<Arc<AdminState>>) -> Result<Json<Value>, ApiError> {
    if let Some(c) = &s.cluster {
        return Ok(Json(cluster::list(&s, c).await));
    }
    let vols = s.store.list()?;
    Ok(Json(Value::Array(
        vols.iter().map(|m| view(&s, m)).collect(),
    )))
}

async fn info(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(c) = &s.cluster {
        return Ok(Json(cluster::info(&s, c, &name).await?));
    }
    let meta = s.store.meta(&name)?;
    Ok(Json(view(&s, &meta)))
}

async fn create(
    State(s): State<Arc<AdminState>>,
    body: Result<Json<CreateVolume>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(bad_body)?;
    if let Some(c) = &s.cluster {
        let v = cluster::create(&s, c, &req).await?;
        return Ok((StatusCode::CREATED, Json(v)));
    }
    if req.spread.is_some() || !req.require.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "this node runs alone: placement rules (spread, require) need cluster mode".into(),
        ));
    }
    if req.replicas.is_some_and(|r| r != 1) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "this node runs alone: replicas other than 1 need cluster mode (serve --node-id/--peers)".into(),
        ));
    }
    let meta = s.store.create_volume(
        &req.name,
        req.size,
        req.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
    )?;
    Ok((StatusCode::CREATED, Json(view(&s, &meta))))
}

async fn delete(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if let Some(c) = &s.cluster {
        cluster::delete(&s, c, &name).await?;
        s.metrics.remove(&name);
        return Ok(StatusCode::NO_CONTENT);
    }
    s.store.delete_volume(&name)?;
    s.metrics.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/volumes/{name}/resize`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeBody {
    size: u64,
    #[serde(default)]
    allow_shrink: bool,
}

async fn resize(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Result<Json<ResizeBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(b) = body.map_err(bad_body)?;
    if let Some(c) = &s.cluster {
        return Ok(Json(
            cluster::resize(&s, c, &name, b.size, b.allow_shrink).await?,
        ));
    }
    if s.metrics.connections(&name) > 0 && b.size < s.store.meta(&name)?.size {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("volume {name} has NBD clients connected; shrink it once they are gone"),
        ));
    }
    let meta = s.store.resize_volume(&name, b.size, b.allow_shrink).await?;
    Ok(Json(view(&s, &meta)))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let mut out = String::new();
    metric_header(
        &mut out,
        "raftblock_info",
        "gauge",
        "Build and I/O engine of this daemon.",
    );
    let _ = writeln!(
        out,
        "raftblock_info{{version=\"{}\",io_engine=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        s.store.engine().kind()
    );
    if let Ok(d) = s.store.disk_usage() {
        for (name, help, value) in [
            (
                "raftblock_disk_total_bytes",
                "Size of the filesystem holding this node's data directory.",
                d.total_bytes,
            ),
            (
                "raftblock_disk_avail_bytes",
                "Free space on that filesystem available to the daemon.",
                d.avail_bytes,
            ),
            (
                "raftblock_disk_free_bytes",
                "Free space on that filesystem, root's reserve included; \
                 df's Use% is (total - free) / (total - free + avail).",
                d.free_bytes,
            ),
        ] {
            metric_header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    let metas = s.store.list().unwrap_or_default();
    metric_header(
        &mut out,
        "raftblock_volumes",
        "gauge",
        "Volumes on this node.",
    );
    let _ = writeln!(out, "raftblock_volumes {}", metas.len());
    per_volume(
        &mut out,
        "raftblock_volume_size_bytes",
        "gauge",
        "Volume size.",
        metas.iter().map(|m| (m.name.as_str(), m.size)),
    );
    let open = s.store.open_volumes();
    // Counters every open volume keeps (`VolumeStats`).
    type Counter = fn(&raftblock_storage::VolumeStats) -> &std::sync::atomic::AtomicU64;
    let counters: [(&str, &str, Counter); 4] = [
        (
            "raftblock_checksum_errors_total",
            "Blocks that failed checksum verification on read.",
            |s| &s.checksum_errors,
        ),
        ("raftblock_io_errors_total", "Device I/O errors.", |s| &s.io_errors),
        (
            "raftblock_logged_write_bytes_total",
            "Bytes of large writes this node applied by leaving them in its Raft log (written to disk once).",
            |s| &s.logged_bytes,
        ),
        (
            "raftblock_settled_bytes_total",
            "Bytes of logged blocks later moved from the Raft log into their chunk files (a second write).",
            |s| &s.settled_bytes,
        ),
    ];
    for (name, help, counter) in counters {
        per_volume(
            &mut out,
            name,
            "counter",
            help,
            open.iter().map(|v| {
                let n = counter(v.stats()).load(Ordering::Relaxed);
                (v.meta().name.as_str(), n)
            }),
        );
    }
    per_volume(
        &mut out,
        "raftblock_logged_bytes",
        "gauge",
        "Bytes of blocks whose newest data is only in this node's Raft log (not settled into chunk files yet).",
        open.iter().map(|v| (v.meta().name.as_str(), v.logged_bytes_now())),
    );
    s.metrics.render(&mut out);
    if let Some(p) = &s.plugin {
        p.render(&mut out);
    }
    if s.cluster.is_some() {
        metric_header(
            &mut out,
            "raftblock_follower_reads_total",
            "counter",
            "Reads served from a local replica this node does not lead (a ReadIndex to the leader, the data read here).",
        );
        let _ = writeln!(
            out,
            "raftblock_follower_reads_total {}",
            raftblock_consensus::router::follower_reads()
        );
        metric_header(
            &mut out,
            "raftblock_fenced_writes_total",
            "counter",
            "Writes this node's shard replicas refused because their attach epoch was fenced off.",
        );
        let _ = writeln!(
            out,
            "raftblock_fenced_writes_total {}",
            raftblock_consensus::fence::refused_writes()
        );
        metric_header(
            &mut out,
            "raftblock_replica_divergences_total",
            "counter",
            "Blocks whose replicas disagreed when this node compared them (scrub, volume verify), found and repaired from the majority.",
        );
        let _ = writeln!(
            out,
            "raftblock_replica_divergences_total{{result=\"found\"}} {}\nraftblock_replica_divergences_total{{result=\"repaired\"}} {}",
            raftblock_consensus::verify::divergences_found(),
            raftblock_consensus::verify::divergences_repaired()
        );
    }
    if let Some(c) = &s.cluster {
        metric_header(
            &mut out,
            "raftblock_node_up",
            "gauge",
            "Whether this node heard from each member of the cluster within the last 5 s (1) or not (0); itself included.",
        );
        let live = c.live_nodes();
        for id in c.view().meta().nodes.keys() {
            let _ = writeln!(
                out,
                "raftblock_node_up{{node=\"{id}\"}} {}",
                u8::from(live.contains(id))
            );
        }
        shard_states(&mut out, c).await;
        let recovery = c.recovery();
        let copies = recovery.status();
        let remaining: u64 = copies.iter().map(|c| c.total.saturating_sub(c.done)).sum();
        for (name, kind, help, value) in [
            (
                "raftblock_recovery_bytes_total",
                "counter",
                "Bytes this node copied to catch its shard replicas up or build new ones (shard snapshots).",
                recovery.bytes_total(),
            ),
            (
                "raftblock_recovery_remaining_bytes",
                "gauge",
                "Bytes the shard copies running on this node have yet to copy.",
                remaining,
            ),
            (
                "raftblock_recovery_copies",
                "gauge",
                "Shard copies this node is receiving or waiting to receive.",
                copies.len() as u64,
            ),
        ] {
            metric_header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
