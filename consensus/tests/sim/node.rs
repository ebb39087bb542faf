//! One simulated node: the real driver, WAL, chunk store and apply tasks,
//! run without threads of their own. Its apply tasks live on a
//! current-thread tokio runtime with paused time that the simulation
//! advances; its chunk store uses the inline I/O engine, so a read or write
//! is done when first polled. A crash drops the runtime (its tasks stop
//! where they are) and the driver without any shutdown step; a restart
//! opens the WAL and the chunk files as they were left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raftblock_consensus::driver::DriverMsg;
use raftblock_consensus::snapshot::{self, ChunkSource, SnapshotFetch, SourceError};
use raftblock_consensus::{
    Clock, ClusterView, Driver, DriverConfig, DriverHandle, GroupStatus, ManualClock, RaftNetwork,
};
use raftblock_storage::engine::{Engine, EngineKind};
use raftblock_storage::{ChunkStore, LocalVolume, ReadSegment, VolumeIo, Wal, WalOptions};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::net::{NodeNet, SimNet};

/// What runs while the node is up.
struct Running {
    rt: Runtime,
    driver: Driver,
    handle: DriverHandle,
    view: Arc<ClusterView>,
    store: Arc<ChunkStore>,
    snaps: mpsc::UnboundedReceiver<SnapshotFetch>,
}

pub struct SimNode {
    pub id: u64,
    dir: PathBuf,
    cfg: DriverConfig,
    running: Option<Running>,
}

/// The snapshot's sender, read directly (its volume in this process).
struct Direct(Arc<LocalVolume>);

/// Catch-up copies started, in this process.
pub static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Yields per settle. Each runs every task that is ready, and each costs
/// a pass of the runtime's time driver: 16 made that most of the
/// simulation's CPU. Over 100 seeds 1, 2, 4 and 16 gave the same schedules
/// (the same counts of everything); 2 leaves room for a task woken by
/// another within the same instant.
const SETTLE_YIELDS: usize = 2;

/// What one request to the sender takes.
const COPY_LATENCY: Duration = Duration::from_millis(40);

impl ChunkSource for Direct {
    async fn sums(&self, chunk: u64) -> Result<Option<Vec<u32>>, SourceError> {
        tokio::time::sleep(COPY_LATENCY).await;
        Ok(self.0.chunk_sums(chunk)?)
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Vec<ReadSegment>, SourceError> {
        // The request travels, the sender reads, the answer travels back.
        tokio::time::sleep(COPY_LATENCY).await;
        let data = self.0.read(offset, len).await.map_err(SourceError::from);
        tokio::time::sleep(COPY_LATENCY).await;
        data
    }
}

impl SimNode {
    pub fn new(id: u64, dir: PathBuf, cfg: DriverConfig) -> SimNode {
        SimNode {
            id,
            dir,
            cfg,
            running: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Starts (or restarts) the node on its directory.
    pub fn start(&mut self, net: &Arc<SimNet>, clock: &Arc<ManualClock>, peers: &[u64]) {
        assert!(self.running.is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        // Small segments: rotation and purging happen within a seed, and
        // preallocating 64 MiB of tmpfs per node (then reading it all back
        // after each crash) was most of the simulation's system time.
        let opts = WalOptions {
            segment_size: 4 << 20,
            ..WalOptions::default()
        };
        let wal = Arc::new(Wal::open(&self.dir.join("wal"), opts).expect("wal"));
        let engine = Engine::start(Some(EngineKind::Inline), 0).expect("engine");
        let store = Arc::new(ChunkStore::open(&self.dir.join("data"), engine).expect("store"));
        let peers: HashMap<u64, SocketAddr> = peers
            .iter()
            .map(|p| (*p, SocketAddr::from(([127, 0, 0, 1], 9))))
            .collect();
        let (snap_tx, snaps) = mpsc::unbounded_channel();
        let ports = (
            Arc::new(NodeNet {
                net: net.clone(),
                me: self.id,
            }) as Arc<dyn RaftNetwork>,
            clock.clone() as Arc<dyn Clock>,
        );
        let (driver, handle, view) = Driver::open(
            self.cfg.clone(),
            wal,
            store.clone(),
            ports,
            self.dir.join("meta.json"),
            &peers,
            snap_tx,
        )
        .expect("driver");
        drop(_guard);
        self.running = Some(Running {
            rt,
            driver,
            handle,
            view,
            store,
            snaps,
        });
    }

    /// Crashes the node: nothing of it runs any more, nothing is flushed.
    pub fn crash(&mut self) {
        if let Some(r) = self.running.take() {
            // Tasks first (they hold the store), then the driver.
            let Running {
                rt, driver, store, ..
            } = r;
            drop(rt);
            drop(driver);
            drop(store);
        }
    }

    pub fn handle(&self) -> Option<&DriverHandle> {
        self.running.as_ref().map(|r| &r.handle)
    }

    pub fn view(&self) -> Option<&Arc<ClusterView>> {
        self.running.as_ref().map(|r| &r.view)
    }

    /// The node's copy of volume `name`.
    pub fn volume(&self, name: &str) -> Option<Arc<LocalVolume>> {
        self.running.as_ref()?.store.volume(name).ok()
    }

    /// Lets the runtime's tasks run as far as they can without time passing.
    fn settle(r: &Running) {
        r.rt.block_on(async {
            for _ in 0..SETTLE_YIELDS {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Moves the node's task time forward.
    pub fn advance(&self, d: Duration) {
        if let Some(r) = &self.running {
            r.rt.block_on(tokio::time::advance(d));
        }
    }

    /// One turn: apply tasks run, the driver takes a turn and writes up to
    /// `persist` rounds' log, snapshot copies
    /// asked for are made from `sources` (the other nodes' volumes).
    pub fn turn(&mut self, sources: &HashMap<u64, Arc<LocalVolume>>, persist: usize) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        Self::settle(r);
        let _guard = r.rt.enter();
        r.driver.turn();
        r.driver.persist_pending(persist);
        drop(_guard);
        while let Ok(f) = r.snaps.try_recv() {
            COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The copy runs as a task that takes simulated time (each
            // request to the sender waits), so the replica goes on applying
            // meanwhile, as a real copy over the network lets it.
            let src = sources.get(&f.from).cloned();
            let (vol, index) = raftblock_consensus::meta::shard_of_group(f.group);
            let rec = r
                .view
                .meta()
                .volumes
                .values()
                .find(|v| v.meta.id == vol)
                .cloned();
            let local = rec
                .as_ref()
                .and_then(|rec| r.store.volume(&rec.meta.name).ok());
            let handle = r.handle.clone();
            r.rt.spawn(async move {
                let copy = match (src, rec, local) {
                    (Some(src), Some(rec), Some(local)) => {
                        let chunks: Vec<u64> = rec
                            .layout()
                            .chunks_of(raftblock_consensus::ShardId { volume: vol, index })
                            .collect();
                        let at = f.msg.get_snapshot().get_metadata().index;
                        snapshot::stage(
                            &local,
                            f.group,
                            &chunks,
                            at,
                            &Direct(src),
                            &Default::default(),
                        )
                        .await
                        .ok()
                    }
                    _ => None,
                };
                handle.send(DriverMsg::SnapshotFetched {
                    group: f.group,
                    from: f.from,
                    msg: Box::new(f.msg),
                    copy,
                });
            });
        }
        Self::settle(r);
    }

    /// The state of every replica (answered within one turn).
    pub fn status(&mut self) -> Vec<GroupStatus> {
        let Some(r) = self.running.as_mut() else {
            return Vec::new();
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        r.handle.send(DriverMsg::Status(tx));
        let _guard = r.rt.enter();
        r.driver.turn();
        rx.try_recv().unwrap_or_default()
    }
}
