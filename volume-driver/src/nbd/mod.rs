//! The NBD server: accepts TCP connections, negotiates an export with the
//! fixed newstyle handshake (`handshake`), then serves many requests
//! concurrently per connection, answered out of order (`transmission`).
//! Exports are volumes, looked up by name through an [`ExportCatalog`].

pub mod client;
mod handshake;
pub mod proto;
mod transmission;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use raftblock_storage::{StorageError, VolumeIo};

use crate::NbdMetrics;

/// An export as listed to clients.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// Export (volume) name.
    pub name: String,
    /// Human-readable description.
    pub description: String,
}

/// A volume opened for a connection; the guard keeps it counted as in use.
pub struct OpenExport<V> {
    /// The volume.
    pub volume: Arc<V>,
    /// Released when the connection ends.
    pub guard: Box<dyn Send + Sync>,
    /// Description sent with NBD_INFO_DESCRIPTION.
    pub description: String,
}

/// Where the server finds its exports.
pub trait ExportCatalog: Send + Sync + 'static {
    /// The volume type served.
    type Volume: VolumeIo;
    /// Exports to list.
    fn list(&self) -> Vec<ExportInfo>;
    /// Opens an export by name for one connection.
    fn open(&self, name: &str) -> Result<OpenExport<Self::Volume>, StorageError>;
    /// Brings the catalog up to date (a cluster member that just joined,
    /// restarted or was cut off may not know a volume, or its latest size,
    /// yet); asked before every export is opened.
    fn refresh(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// Opens `name` as the catalog knows it after a refresh: the size a client
/// is given must be that of the last resize, even on a node that has not
/// applied it yet (one that just restarted, say). A connection opens once,
/// so the refresh's round trip is paid once.
pub(crate) async fn open_export<C: ExportCatalog>(
    catalog: &C,
    name: &str,
) -> Result<OpenExport<C::Volume>, StorageError> {
    catalog.refresh().await;
    catalog.open(name)
}

/// The NBD server for one listen address.
pub struct NbdServer<C: ExportCatalog> {
    catalog: Arc<C>,
    metrics: Arc<NbdMetrics>,
}

impl<C: ExportCatalog> NbdServer<C> {
    /// A server over `catalog`, counting into `metrics`.
    pub fn new(catalog: Arc<C>, metrics: Arc<NbdMetrics>) -> Self {
        NbdServer { catalog, metrics }
    }

    /// Accepts connections until `shutdown` turns true, then lets every
    /// connection finish its in-flight requests (bounded by `drain`).
    pub async fn run(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<()> {
        let mut conns = JoinSet::new();
        let mut next_id = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let (sock, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    next_id += 1;
                    let _ = sock.set_nodelay(true);
                    let catalog = self.catalog.clone();
                    let metrics = self.metrics.clone();
                    let sd = shutdown.clone();
                    let span = tracing::info_span!("nbd", conn = next_id, %peer);
                    conns.spawn(serve_connection(sock, peer, catalog, metrics, sd).instrument(span));
                }
            }
        }
        tracing::info!(
            connections = conns.len(),
            "NBD server stopping; draining connections"
        );
        let _ =
            tokio::time::timeout(drain, async { while conns.join_next().await.is_some() {} }).await;
        conns.abort_all();
        Ok(())
    }
}

async fn serve_connection<C: ExportCatalog>(
    mut sock: tokio::net::TcpStream,
    peer: SocketAddr,
    catalog: Arc<C>,
    metrics: Arc<NbdMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    tracing::debug!("connected");
    let negotiated = match handshake::negotiate(&mut sock, catalog.as_ref(), &shutdown).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            tracing::debug!("client ended negotiation");
            return;
        }
        // A connection closed before the handshake is done is a port
        // probe (a load balancer's, a start-up check's): no news at INFO.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!(error = %e, "closed during negotiation");
            return;
        }
        Err(e) => {
            tracing::info!(error = %e, "negotiation failed; closing");
            return;
        }
    };
    let export = negotiated.export.volume.name().to_string();
    tracing::info!(%export, structured = negotiated.structured, "transmission started");
    metrics.connection_opened(&export);
    let (rd, wr) = sock.into_split();
    let result = transmission::serve(rd, wr, negotiated, metrics.clone(), shutdown).await;
    metrics.connection_closed(&export);
    match result {
        Ok(()) => tracing::info!(%export, %peer, "disconnected"),
        Err(e) => tracing::info!(%export, %peer, error = %e, "connection closed"),
    }
}

/// Serves `volume` on `sock` in the transmission phase directly, with no
/// handshake and simple replies only: the kernel's NBD client, handed the
/// other end of a socket pair, speaks exactly that.
pub(crate) async fn serve_kernel_socket<V: VolumeIo>(
    sock: tokio::net::UnixStream,
    volume: Arc<V>,
    metrics: Arc<NbdMetrics>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let n = handshake::Negotiated {
        export: OpenExport {
            volume,
            guard: Box::new(()),
            description: String::new(),
        },
        structured: false,
        allocation_context: false,
    };
    let (rd, wr) = sock.into_split();
    transmission::serve(rd, wr, n, metrics, shutdown).await
}

/// Transmission flags the kernel client is given (as a server would send
/// them without structured replies).
pub(crate) fn kernel_transmission_flags() -> u16 {
    handshake::transmission_flags(false)
}
