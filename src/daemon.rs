//! Daemon wiring: opens the chunk store, binds the NBD and admin listeners,
//! runs both until a shutdown signal, then drains connections and syncs data.

use anyhow::{Context, Result};
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use raftblock_storage::{ChunkStore, Engine, StorageError, VolumeIo};
use raftblock_volume_driver::{ExportCatalog, ExportInfo, NbdMetrics, NbdServer, OpenExport};

use crate::admin::{self, AdminState};
use crate::config::ServeArgs;
use crate::docker_volumes::ClusterVolumes;
use crate::replication::{self, ClusterExports, ClusterNode};
use crate::stats::StatsHistory;
use raftblock_volume_driver::docker::{self, Plugin, PluginMetrics};

/// How long in-flight NBD requests may take to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(30);

fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = std::env::var("RAFTBLOCK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sled=warn".to_string());
    tracing_subscriber::EnvFilter::new(filter)
}

/// Sets up `tracing` output on stderr (filter from RAFTBLOCK_LOG or RUST_LOG).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Sends `tracing` output to the end of the file `path` instead.
pub fn init_logging_to(path: &std::path::Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init();
    Ok(())
}

/// A tokio runtime with `workers` threads (default: one per core).
pub fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    keep_large_buffers_on_the_heap();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all().build().context("starting the async runtime")
}

/// Request buffers of up to 32 MiB are allocated and freed all the time;
/// above glibc's mmap threshold each one would be a fresh mapping whose pages
/// fault in and are zeroed by the kernel. Keep them in the heap instead.
fn keep_large_buffers_on_the_heap() {
    // SAFETY: mallopt only changes allocator tunables; called before the
    // runtime's threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// Volumes of the local chunk store, as NBD exports.
pub struct LocalExports {
    store: Arc<ChunkStore>,
}

impl ExportCatalog for LocalExports {
    type Volume = raftblock_storage::LocalVolume;

    fn list(&self) -> Vec<ExportInfo> {
        self.store
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|m| ExportInfo {
                description: format!("raftblock volume, {} bytes", m.size),
                name: m.name,
            })
            .collect()
    }

    fn open(&self, name: &str) -> Result<OpenExport<Self::Volume>, StorageError> {
        let handle = self.store.acquire(name)?;
        let volume = Arc::clone(&handle);
        Ok(OpenExport {
            description: format!(
                "raftblock volume {} ({} bytes)",
                volume.name(),
                volume.size()
            ),
            volume,
            guard: Box::new(handle),
        })
    }
}

/// A node with its listeners bound, ready to run.
pub struct Node {
    store: Arc<ChunkStore>,
    cluster: Option<ClusterNode>,
    metrics: Arc<NbdMetrics>,
    nbd: TcpListener,
    admin: TcpListener,
    /// Bound NBD address.
    pub nbd_addr: SocketAddr,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    /// Docker plugin socket (cluster mode) and the attach grace period.
    plugin: Option<(PathBuf, Duration)>,
    data_dir: PathBuf,
    scrub_interval: Option<Duration>,
}

impl Node {
    /// Opens the store and binds both listeners.
    pub async fn bind(args: &ServeArgs) -> Result<Node> {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        let engine =
            Engine::start(args.io_engine, args.io_threads).context("starting the I/O engine")?;
        let inline =
            crate::size::parse_size(&args.inline_write_max).context("--inline-write-max")?;
        engine.set_inline_write_max(inline as usize);
        let store = Arc::new(
            ChunkStore::open(&args.data_dir, engine)
                .with_context(|| format!("opening data directory {}", args.data_dir.display()))?,
        );
        let nbd = TcpListener::bind(args.nbd_listen)
            .await
            .with_context(|| format!("binding the NBD listener on {}", args.nbd_listen))?;
        let admin = TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("binding the admin listener on {}", args.admin_listen))?;
        let nbd_addr = nbd.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let cluster = if replication::wanted(args) {
            Some(ClusterNode::start(args, store.clone(), nbd_addr, admin_addr).await?)
        } else {
            None
        };
        let plugin = match (&cluster, args.plugin_socket.as_str()) {
            (None, _) | (_, "off") => None,
            (Some(_), path) => Some((PathBuf::from(path), args.attach_grace)),
        };
        Ok(Node {
            plugin,
            data_dir: args.data_dir.clone(),
            scrub_interval: args.scrub_interval.0,
            nbd_addr,
            admin_addr,
            store,
            cluster,
            metrics: Arc::new(NbdMetrics::default()),
            nbd,
            admin,
        })
    }

    /// Serves until `shutdown` turns true; then drains and syncs.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<()> {
        tracing::info!(
            nbd = %self.nbd_addr,
            admin = %self.admin_addr,
            io_engine = %self.store.engine().kind(),
            data_dir = %self.store.root().display(),
            node = self.cluster.as_ref().map(|c| c.info.id),
            listen = self.cluster.as_ref().map(|c| c.info.raft_addr.to_string()),
            "raftblock serving"
        );
        let nbd_listener = self.nbd;
        let nbd_sd = shutdown.clone();
        let plugin_metrics = Arc::new(PluginMetrics::default());
        let nbd_task = match &self.cluster {
            Some(c) => {
                c.spawn_membership();
                if let Some(every) = self.scrub_interval {
                    tokio::spawn(scrub_periodically(c.cluster.clone(), every));
                }
                if let Some((socket, grace)) = self.plugin.clone() {
                    let backend = Arc::new(ClusterVolumes::new(c.cluster.clone(), grace));
                    let plugin = Plugin::new(
                        backend,
                        &self.data_dir.join("docker"),
                        plugin_metrics.clone(),
                    )
                    .map_err(|e| anyhow::anyhow!(e))
                    .context("starting the Docker volume plugin")?;
                    tokio::spawn(docker::serve(socket, plugin, shutdown.clone()));
                }
                let exports = Arc::new(ClusterExports {
                    cluster: c.cluster.clone(),
                });
                let server = NbdServer::new(exports, self.metrics.clone());
                tokio::spawn(async move { server.run(nbd_listener, nbd_sd, DRAIN).await })
            }
            None => {
                let exports = Arc::new(LocalExports {
                    store: self.store.clone(),
                });
                let server = NbdServer::new(exports, self.metrics.clone());
                tokio::spawn(async move { server.run(nbd_listener, nbd_sd, DRAIN).await })
            }
        };
        let stats = match &self.cluster {
            Some(c) => {
                let cluster = c.cluster.clone();
                StatsHistory::new(c.info.id, self.metrics.clone(), move || {
                    cluster.recovery().bytes_total()
                })
            }
            None => StatsHistory::new(0, self.metrics.clone(), || 0),
        };
        tokio::spawn(stats.clone().run(shutdown.clone()));
        let state = Arc::new(AdminState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            nbd_addr: self.nbd_addr,
            cluster: self.cluster.as_ref().map(|c| c.cluster.clone()),
            plugin: self.plugin.is_some().then_some(plugin_metrics),
            stats,
        });
        let mut admin_sd = shutdown.clone();
        let admin_task = tokio::spawn(
            axum::serve(self.admin, admin::router(state))
                .with_graceful_shutdown(async move {
                    let _ = admin_sd.wait_for(|s| *s).await;
                })
                .into_future(),
        );
        match nbd_task.await {
            Ok(r) => r.context("NBD server")?,
            Err(e) => tracing::error!(error = %e, "NBD server task failed"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), admin_task).await;
        if let Some(c) = self.cluster {
            c.stop().await;
        }
        self.store
            .sync_all()
            .await
            .context("syncing volumes at shutdown")?;
        tracing::info!("raftblock stopped; all data synced");
        Ok(())
    }
}

/// Scrubs this node's copy of every volume it holds, and compares the
/// replicas of the shards it leads, once per `every`,
/// starting at a random point of the first period so nodes do not all read
/// their disks at once.
async fn scrub_periodically(cluster: Arc<raftblock_consensus::Cluster>, every: Duration) {
    let first = every.mul_f64(rand::random::<f64>());
    tokio::time::sleep(first).await;
    loop {
        let me = cluster.node();
        let names: Vec<String> = cluster
            .view()
            .meta()
            .volumes
            .values()
            .filter(|v| v.is_on(me))
            .map(|v| v.meta.name.clone())
            .collect();
        for name in names {
            match cluster.scrub_volume(&name).await {
                Ok(r) if r.unrepaired.is_empty() => {}
                Ok(r) => {
                    tracing::error!(volume = %name, unrepaired = ?r.unrepaired, "scrub found blocks no replica could repair")
                }
                Err(e) => tracing::warn!(volume = %name, error = %e, "scrub failed"),
            }
            // The shards this node leads are compared across replicas
            // here (each shard by one node).
            match cluster.verify_volume(&name, true).await {
                Ok(r) if r.divergent > r.repaired => {
                    tracing::error!(volume = %name, divergent = r.divergent, repaired = r.repaired, "replicas disagree on blocks that could not be repaired")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = %name, error = %e, "comparing replicas failed"),
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Sets the returned flag on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// `raftblock serve`.
pub async fn serve_until_signal(args: ServeArgs) -> Result<()> {
    let node = Node::bind(&args).await?;
    let shutdown = shutdown_on_signal()?;
    node.run(shutdown).await
}
