//! What a node is started with: the options of `raftblock serve`
//! (`ServeArgs`) and `raftblock demo` (`DemoArgs`) and their value parsers.
//! Kept apart from the command line's dispatch (`cli`) so that the daemon,
//! the demo and the replication wiring read their options without
//! depending on the module that starts them.

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

use raftblock_storage::EngineKind;

use crate::size::parse_size;

/// Options of `raftblock serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory holding this node's catalog and chunk files.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address the NBD server listens on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: SocketAddr,
    /// Address of the admin HTTP API (volumes, metrics).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub admin_listen: SocketAddr,
    /// I/O engine: uring or threads (default: uring when the kernel allows it).
    #[arg(long)]
    pub io_engine: Option<EngineKind>,
    /// Writes up to this size are issued inline on the connection's thread
    /// when the kernel has no non-blocking buffered write (0: always use the
    /// engine). Inline is faster (io_uring punts such writes to kernel worker
    /// threads) but a worker thread then waits out dirty-page throttling.
    #[arg(long, default_value = "32M")]
    pub inline_write_max: String,
    /// Threads of the thread-pool engine.
    #[arg(long, default_value_t = 4)]
    pub io_threads: usize,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// This node's id in the cluster (a positive number, unique per node).
    /// Any cluster flag turns on cluster mode; without them the node serves
    /// its local volumes alone.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Address for node-to-node traffic (Raft and forwarded requests).
    #[arg(long, default_value = "127.0.0.1:7470")]
    pub listen: SocketAddr,
    /// Initial members, `ID=ADDR` of every node's --listen, comma-separated
    /// (the same list on every node; this node must be in it).
    #[arg(long, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<(u64, SocketAddr)>,
    /// Join a running cluster through the admin address of one member.
    #[arg(long)]
    pub join: Option<String>,
    /// How long an NBD request waits for a shard leader (failover) before
    /// it fails, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub leader_wait: std::time::Duration,
    /// Raft tick (elections after 10 to 20 ticks of silence, heartbeats
    /// every 2), e.g. 100ms.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub raft_tick: std::time::Duration,
    /// Unix socket of the Docker volume plugin (cluster mode), or `off`.
    /// While another daemon on this host serves it, this one stands by.
    #[arg(long, default_value = raftblock_volume_driver::docker::DEFAULT_SOCKET)]
    pub plugin_socket: String,
    /// How long a node holding a volume attached must be unheard of before
    /// another node may take the volume over, e.g. 15s.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub attach_grace: std::time::Duration,
    /// How often this node verifies its copy of every volume against the
    /// checksums and repairs bad blocks from replicas (`off`: only on
    /// `volume scrub`), e.g. 7d.
    #[arg(long, default_value = "7d", value_parser = parse_every)]
    pub scrub_interval: Every,
    /// Bytes per second a scrub reads on this node (periodic or `volume
    /// scrub`), so client I/O keeps going; 0 for no limit, e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    pub scrub_rate: u64,
    /// Shard log entries younger than this are kept, so a replica that was
    /// down for less catches up from the log instead of copying chunks
    /// (`0s`: keep only what replicas that are up still need), e.g. 90s.
    #[arg(long, default_value = "90s", value_parser = parse_duration_or_zero)]
    pub log_keep: std::time::Duration,
    /// At most this much of one shard's log is kept for --log-keep's sake,
    /// e.g. 256M.
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub log_keep_bytes: u64,
    /// Over this much log on the node, --log-keep stops counting, e.g. 1G.
    #[arg(long, default_value = "1G", value_parser = parse_bytes)]
    pub log_keep_node_bytes: u64,
    /// How long a node must be unheard of before the metadata leader marks
    /// it out (never while it is in maintenance, nor while more than a
    /// third of the nodes are down), e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub down_out_interval: std::time::Duration,
    /// Bytes per second this node copies, for all the shard copies it
    /// receives together (a replica re-created on it, one catching up), so
    /// client I/O keeps going; 0 for no limit, e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    pub recovery_rate: u64,
    /// This node's labels, for volumes' placement rules (`volume create
    /// --spread zone --require disk=ssd`), e.g. zone=a,disk=ssd.
    #[arg(long, default_value = "", value_parser = parse_labels)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ServeArgs {
    /// Default options for a node in `data_dir` (used by the demo).
    pub fn new(data_dir: PathBuf) -> ServeArgs {
        ServeArgs {
            data_dir,
            nbd_listen: ([127, 0, 0, 1], 10809).into(),
            admin_listen: ([127, 0, 0, 1], 7480).into(),
            io_engine: None,
            inline_write_max: "32M".into(),
            io_threads: 4,
            worker_threads: None,
            node_id: None,
            listen: ([127, 0, 0, 1], 7470).into(),
            peers: Vec::new(),
            join: None,
            leader_wait: std::time::Duration::from_secs(30),
            raft_tick: std::time::Duration::from_millis(100),
            plugin_socket: "off".into(),
            attach_grace: std::time::Duration::from_secs(15),
            scrub_interval: Every(None),
            scrub_rate: 64 << 20,
            log_keep: std::time::Duration::from_secs(90),
            log_keep_bytes: 256 << 20,
            log_keep_node_bytes: 1 << 30,
            down_out_interval: std::time::Duration::from_secs(600),
            recovery_rate: 64 << 20,
            labels: Default::default(),
        }
    }
}

/// Parses `ID=HOST:PORT`.
fn parse_peer(s: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ID=ADDR, e.g. 1=10.0.0.1:7470"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: node id `{id}` is not a number"))?;
    if id == 0 {
        return Err(format!("`{s}`: node ids start at 1"));
    }
    let addr = addr
        .trim()
        .parse()
        .map_err(|e| format!("`{s}`: address `{addr}`: {e}"))?;
    Ok((id, addr))
}

/// Parses a duration that may be zero (`0s`).
fn parse_duration_or_zero(s: &str) -> Result<std::time::Duration, String> {
    if s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic()) == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    parse_duration(s)
}

/// Parses a byte count like `256M` or `1G`.
/// Parses `key=value[,key=value...]` (node labels, required labels).
pub fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    raftblock_storage::catalog::parse_labels(s).map_err(|e| e.to_string())
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Parses `30s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (like 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 366.0 * 86400.0) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// A period, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(pub Option<std::time::Duration>);

/// Parses a duration, or `off` for none.
pub fn parse_every(s: &str) -> Result<Every, String> {
    if s.trim() == "off" {
        Ok(Every(None))
    } else {
        parse_duration(s).map(|d| Every(Some(d)))
    }
}

/// Options of `raftblock demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// End after the self-check instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// Size of the demo volume.
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// NBD listen address (a free port is picked if this one is taken).
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_listen: SocketAddr,
    /// Admin listen address (a free port is picked if this one is taken).
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub admin_listen: SocketAddr,
    /// Docker volume plugin socket served by node 1 (`off`: none).
    #[arg(long, default_value = raftblock_volume_driver::docker::DEFAULT_SOCKET)]
    pub plugin_socket: String,
    /// Show the nodes' logs here instead of writing them to
    /// `raftblock.log` in the demo's directory.
    #[arg(long, short)]
    pub verbose: bool,
    /// Keep the nodes' data and logs in this directory (kept afterwards)
    /// instead of a temporary one removed at exit.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}
