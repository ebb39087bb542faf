//! Cluster mode of the daemon: the node's identity in its data directory,
//! the WAL, the node-to-node listener and transport, the Raft driver and the
//! cluster service, and the NBD exports that reach volumes through their
//! shard leaders. Also registering this node's addresses in the metadata
//! and, with `--join`, asking a running member to add it.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use raftblock_consensus::{
    BackgroundRates, Cluster, ClusterVolume, Driver, DriverConfig, NodeInfo, Transport,
};
use raftblock_storage::{ChunkStore, StorageError, Wal, WalOptions};
use raftblock_volume_driver::{ExportCatalog, ExportInfo, OpenExport};

use crate::client::AdminClient;
use crate::config::ServeArgs;

/// What the data directory remembers about the node's place in a cluster.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
}

/// Whether `args` (or an existing data directory) ask for cluster mode.
pub fn wanted(args: &ServeArgs) -> bool {
    args.node_id.is_some()
        || !args.peers.is_empty()
        || args.join.is_some()
        || args.data_dir.join("cluster.json").exists()
}

fn identity(args: &ServeArgs) -> Result<u64> {
    let path = args.data_dir.join("cluster.json");
    let stored = match std::fs::read(&path) {
        Ok(b) => Some(
            serde_json::from_slice::<Identity>(&b)
                .with_context(|| format!("reading {}", path.display()))?
                .node_id,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let id = match (stored, args.node_id) {
        (Some(s), Some(a)) if s != a => bail!(
            "{} belongs to node {s}, but --node-id {a} was given",
            args.data_dir.display()
        ),
        (Some(s), _) => s,
        (None, Some(0)) => bail!("--node-id must be at least 1"),
        (None, Some(a)) => a,
        (None, None) => bail!("cluster mode needs --node-id on the first start"),
    };
    if !args.peers.is_empty() && !args.peers.iter().any(|(p, _)| *p == id) {
        bail!("--peers does not list this node ({id})");
    }
    let mut seen = std::collections::HashSet::new();
    if let Some((dup, _)) = args.peers.iter().find(|(p, _)| !seen.insert(*p)) {
        bail!("--peers lists node {dup} twice");
    }
    if stored.is_none() {
        let data = serde_json::to_vec_pretty(&Identity { node_id: id })?;
        raftblock_consensus::meta::write_atomic(&path, &data)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(id)
}

/// The running replication side of a node.
pub struct ClusterNode {
    /// The cluster service.
    pub cluster: Arc<Cluster>,
    /// This node as the metadata records it.
    pub info: NodeInfo,
    join: Option<String>,
    driver_thread: std::thread::JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl ClusterNode {
    /// Opens the WAL, binds `--listen` and starts the driver and the service.
    pub async fn start(
        args: &ServeArgs,
        store: Arc<ChunkStore>,
        nbd_addr: SocketAddr,
        admin_addr: SocketAddr,
    ) -> Result<ClusterNode> {
        let node = identity(args)?;
        let wal_dir = args.data_dir.join("wal");
        let wal = Wal::open(&wal_dir, WalOptions::default())
            .with_context(|| format!("opening the raft log in {}", wal_dir.display()))?;
        let rec = wal.recovery();
        match &rec.torn_tail {
            Some((file, offset)) => tracing::warn!(
                segments = rec.segments,
                records = rec.records,
                file = %file.display(),
                offset,
                "raft log recovered; cut a torn last record"
            ),
            None => tracing::info!(
                segments = rec.segments,
                records = rec.records,
                "raft log recovered"
            ),
        }
        let wal = Arc::new(wal);
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding the node listener on {}", args.listen))?;
        let raft_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (transport, events) = Transport::start(node, listener, stop_rx);
        let peers: HashMap<u64, SocketAddr> = args.peers.iter().copied().collect();
        let mut cfg = DriverConfig::new(node);
        cfg.tick = args.raft_tick;
        cfg.log_keep = args.log_keep;
        cfg.log_keep_bytes = args.log_keep_bytes;
        cfg.log_keep_node_bytes = args.log_keep_node_bytes;
        cfg.bootstrap = if args.join.is_some() {
            None
        } else if peers.is_empty() {
            Some(vec![node])
        } else {
            let mut ids: Vec<u64> = peers.keys().copied().collect();
            ids.sort_unstable();
            Some(ids)
        };
        let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
        let (driver, view, driver_thread) = Driver::spawn(
            cfg,
            wal,
            store.clone(),
            transport.clone(),
            args.data_dir.join("meta.json"),
            &peers,
            snap_tx,
        )
        .map_err(|e| anyhow::anyhow!(e))
        .context("starting the raft driver")?;
        let cluster = Cluster::start(
            node,
            driver,
            view,
            transport,
            store,
            events,
            snap_rx,
            args.leader_wait,
            BackgroundRates {
                recovery: args.recovery_rate,
                scrub: args.scrub_rate,
            },
        );
        raftblock_consensus::node_watch::spawn(cluster.clone(), args.down_out_interval);
        Ok(ClusterNode {
            cluster,
            info: NodeInfo {
                id: node,
                raft_addr,
                nbd_addr: Some(nbd_addr),
                admin_addr: Some(admin_addr),
                labels: args.labels.clone(),
            },
            join: args.join.clone(),
            driver_thread,
            stop,
        })
    }

    /// Joins (with `--join`) and records this node's addresses, in the
    /// background until it succeeds.
    pub fn spawn_membership(&self) {
        let cluster = self.cluster.clone();
        let info = self.info.clone();
        let join = self.join.clone();
        tokio::spawn(async move {
            if let Some(addr) = join {
                let body = serde_json::json!(info);
                loop {
                    let (addr2, body2) = (addr.clone(), body.clone());
                    let r = tokio::task::spawn_blocking(move || {
                        AdminClient::with_timeout(&addr2, Duration::from_secs(30)).join(&body2)
                    })
                    .await;
                    match r {
                        Ok(Ok(v)) => {
                            let members: Vec<(u64, std::net::SocketAddr)> = v["members"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|m| {
                                    let id = m["id"].as_u64()?;
                                    let addr = m["raft_addr"].as_str()?.parse().ok()?;
                                    Some((id, addr))
                                })
                                .collect();
                            cluster.learn_peers(&members);
                            tracing::info!(via = %addr, members = members.len(), "joined the cluster");
                            break;
                        }
                        Ok(Err(e)) => tracing::warn!(via = %addr, error = %e, "joining; retrying"),
                        Err(e) => tracing::warn!(error = %e, "joining; retrying"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            cluster.register(info).await;
        });
    }

    /// Stops the driver and the transport.
    pub async fn stop(self) {
        self.cluster.driver().stop();
        let _ = self.stop.send(true);
        let t = self.driver_thread;
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// Volumes of the cluster, as NBD exports reached through shard leaders.
pub struct ClusterExports {
    /// The cluster service.
    pub cluster: Arc<Cluster>,
}

impl ExportCatalog for ClusterExports {
    type Volume = ClusterVolume;

    fn list(&self) -> Vec<ExportInfo> {
        self.cluster
            .view()
            .meta()
            .volumes
            .values()
            .map(|v| ExportInfo {
                name: v.meta.name.clone(),
                description: format!(
                    "raftblock volume, {} bytes, {} replica(s)",
                    v.meta.size, v.replicas
                ),
            })
            .collect()
    }

    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        // A linearizable read of the metadata: afterwards this node knows
        // every volume created, and every resize finished, before the
        // request came in. Without a metadata quorum it gives up after 5 s
        // and the node answers from what it has.
        Box::pin(async {
            self.cluster.meta_barrier(Duration::from_secs(5)).await;
        })
    }

    fn open(&self, name: &str) -> Result<OpenExport<ClusterVolume>, StorageError> {
        let meta = self.cluster.view().meta();
        let rec = meta
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::VolumeNotFound(name.to_string()))?;
        let description = format!(
            "raftblock volume {} ({} bytes, {} replica(s))",
            rec.meta.name, rec.meta.size, rec.replicas
        );
        self.cluster.serve_here(name);
        Ok(OpenExport {
            volume: Arc::new(ClusterVolume::new(self.cluster.clone(), rec)),
            guard: Box::new(()),
            description,
        })
    }
}
