//! The in-process cluster the consensus tests share: nodes on loopback,
//! each with its own WAL and chunk store in a temporary directory, talking
//! over the real transport.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftblock_consensus::{
    Cluster, ClusterView, Driver, DriverConfig, DriverHandle, NodeInfo, Transport, META_GROUP,
};
use raftblock_storage::engine::{Engine, EngineKind};
use raftblock_storage::{ChunkStore, Wal, WalOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One running node.
pub struct Node {
    pub id: u64,
    pub cluster: Arc<Cluster>,
    pub driver: DriverHandle,
    pub view: Arc<ClusterView>,
    pub wal_dir: std::path::PathBuf,
    /// Where its transport listens.
    pub raft_addr: SocketAddr,
    pub store: Arc<ChunkStore>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.driver.stop();
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Addresses for nodes 1..=n, with their listeners.
pub async fn listeners(n: u64) -> (HashMap<u64, SocketAddr>, HashMap<u64, TcpListener>) {
    let mut addrs = HashMap::new();
    let mut ls = HashMap::new();
    for id in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.insert(id, l.local_addr().expect("addr"));
        ls.insert(id, l);
    }
    (addrs, ls)
}

/// Starts node `id` of the cluster `peers` on `listener`.
pub fn start(id: u64, peers: &HashMap<u64, SocketAddr>, listener: TcpListener) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_dir = dir.path().join("wal");
    let wal = Arc::new(Wal::open(&wal_dir, WalOptions::default()).expect("wal"));
    let engine = Engine::start(Some(EngineKind::Threads), 1).expect("engine");
    let store = Arc::new(ChunkStore::open(dir.path(), engine).expect("store"));
    let (stop, stop_rx) = watch::channel(false);
    let (transport, events) = Transport::start(id, listener, stop_rx);
    let mut cfg = DriverConfig::new(id);
    cfg.tick = Duration::from_millis(50);
    // Elections after 2 s: the trap tests slow follower WAL writes down by
    // 1.5 s, and a driver blocked in its WAL write answers nobody meanwhile.
    cfg.election_ticks = 40;
    let mut ids: Vec<u64> = peers.keys().copied().collect();
    ids.sort_unstable();
    cfg.bootstrap = Some(ids);
    let (snap_tx, snap_rx) = tokio::sync::mpsc::unbounded_channel();
    let (driver, view, thread) = Driver::spawn(
        cfg,
        wal,
        store.clone(),
        transport.clone(),
        dir.path().join("meta.json"),
        peers,
        snap_tx,
    )
    .expect("driver");
    let cluster = Cluster::start(
        id,
        driver.clone(),
        view.clone(),
        transport,
        store.clone(),
        events,
        snap_rx,
        Duration::from_secs(5),
        raftblock_consensus::BackgroundRates {
            recovery: 0,
            scrub: 0,
        },
    );
    Node {
        id,
        cluster,
        driver,
        view,
        wal_dir,
        raft_addr: peers[&id],
        store,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}

/// Starts every node of a cluster of `n`.
pub async fn start_all(n: u64) -> Vec<Node> {
    let (addrs, mut ls) = listeners(n).await;
    (1..=n)
        .map(|id| start(id, &addrs, ls.remove(&id).expect("listener")))
        .collect()
}

/// The meta group's leader once every node agrees on one.
pub async fn meta_leader(nodes: &[Node]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Vec<Option<u64>> = nodes.iter().map(|n| n.view.leader(META_GROUP)).collect();
        if let Some(Some(l)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*l)) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no meta leader: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn node_info(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        raft_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        nbd_addr: None,
        admin_addr: None,
        labels: Default::default(),
    }
}
