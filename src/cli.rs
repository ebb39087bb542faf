//! Command-line interface: `serve`, `volume create|list|info|delete`, `demo`.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

use raftblock_storage::EngineKind;

use crate::client::AdminClient;
use crate::size::{human, parse_size};

/// raftblock: replicated block volumes served over NBD, one daemon per node.
#[derive(Parser, Debug)]
#[command(name = "raftblock", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon on this node.
    Serve(Box<ServeArgs>),
    /// Create, list, inspect and delete volumes on a running daemon.
    Volume(VolumeArgs),
    /// Start a throwaway local 3-node cluster with a replicated volume,
    /// export it over NBD on every node and self-check it.
    Demo(DemoArgs),
    /// Show the cluster: nodes, and every volume's shards with their leaders.
    Cluster(ClusterArgs),
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Admin address of any node.
    #[arg(
        long,
        env = "RAFTBLOCK_SERVER",
        default_value = "127.0.0.1:7480",
        global = true
    )]
    server: String,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Nodes (up/down, addresses) and per volume its shards with leader,
    /// replicas, applied index and lag.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

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
            log_keep: std::time::Duration::from_secs(90),
            log_keep_bytes: 256 << 20,
            log_keep_node_bytes: 1 << 30,
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

#[derive(Args, Debug)]
struct VolumeArgs {
    /// Admin address of the daemon.
    #[arg(
        long,
        env = "RAFTBLOCK_SERVER",
        default_value = "127.0.0.1:7480",
        global = true
    )]
    server: String,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Create a volume.
    Create {
        /// Volume name (letters, digits, `.`, `_`, `-`; at most 64).
        name: String,
        /// Size, e.g. 10G.
        #[arg(long)]
        size: String,
        /// Chunk size, a power of two from 1M to 1G (default 64M).
        #[arg(long)]
        chunk_size: Option<String>,
        /// Replicas per shard, on distinct nodes (cluster mode; default 3,
        /// or the number of nodes when there are fewer).
        #[arg(long)]
        replicas: Option<u32>,
    },
    /// List volumes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one volume.
    Info {
        /// Volume name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and its data (refused while clients are connected).
    Delete {
        /// Volume name.
        name: String,
    },
    /// Verify every node's copy of a volume against its checksums and
    /// repair bad blocks from other replicas (cluster mode).
    Scrub {
        /// Volume name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the replicas of every shard of a volume block by block at a
    /// consistent point of its log, and repair the minority from the
    /// majority (cluster mode). Fails when a divergence stays.
    Verify {
        /// Volume name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Prints what comparing the replicas found.
fn print_verify(v: &serde_json::Value) {
    if let Some(e) = v["error"].as_str() {
        println!("replicas not compared: {e}");
        return;
    }
    println!(
        "replicas compared: {} shard(s), {} chunk(s); {} divergent block(s), {} repaired",
        v["shards"], v["chunks"], v["divergent"], v["repaired"]
    );
    for b in v["blocks"].as_array().into_iter().flatten() {
        println!(
            "  shard {} chunk {} offset {}: node(s) {} differ{}",
            b["shard"],
            b["chunk"],
            b["offset"],
            b["minority"],
            match b["reason"].as_str() {
                Some(r) => format!(" (not repaired: {r})"),
                None if b["repaired"] == true => " (repaired)".to_string(),
                None => String::new(),
            }
        );
    }
    for s in v["skipped"].as_array().into_iter().flatten() {
        println!("  not compared: {}", s.as_str().unwrap_or("?"));
    }
}

/// Whether a comparison found nothing it could not repair and skipped nothing.
fn verify_clean(v: &serde_json::Value) -> bool {
    v["error"].is_null()
        && v["divergent"].as_u64() == v["repaired"].as_u64()
        && v["skipped"].as_array().is_none_or(|s| s.is_empty())
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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            crate::daemon::init_logging();
            let rt = crate::daemon::runtime(args.worker_threads)?;
            rt.block_on(crate::daemon::serve_until_signal(*args))
        }
        Command::Demo(args) => {
            crate::daemon::init_logging();
            let rt = crate::daemon::runtime(None)?;
            rt.block_on(crate::demo::run(args))
        }
        Command::Volume(v) => volume(v),
        Command::Cluster(c) => cluster(c),
    }
}

fn cluster(c: ClusterArgs) -> Result<()> {
    let client = AdminClient::new(&c.server);
    match c.command {
        ClusterCommand::Status { json } => {
            let st = client.cluster_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", crate::status::render(&st));
            }
        }
    }
    Ok(())
}

fn volume(v: VolumeArgs) -> Result<()> {
    let client = AdminClient::new(&v.server);
    let v_server = v.server.clone();
    match v.command {
        VolumeCommand::Create {
            name,
            size,
            chunk_size,
            replicas,
        } => {
            let size = parse_size(&size).context("--size")?;
            let chunk_size = chunk_size
                .map(|c| parse_size(&c).context("--chunk-size"))
                .transpose()?;
            if replicas == Some(0) {
                anyhow::bail!("--replicas must be at least 1");
            }
            let vol = client.create_volume_with(&name, size, chunk_size, replicas)?;
            println!(
                "created volume {} ({}, chunk size {})",
                vol["name"].as_str().unwrap_or(&name),
                human(vol["size"].as_u64().unwrap_or(size)),
                human(vol["chunk_size"].as_u64().unwrap_or(0)),
            );
            if let Some(uri) = vol["nbd_uri"].as_str() {
                println!("NBD: {uri}");
            }
        }
        VolumeCommand::List { json } => {
            let vols = client.list_volumes()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                println!(
                    "{:<24} {:>12} {:>10} {:>12} {:>6}",
                    "NAME", "SIZE", "CHUNK", "ALLOCATED", "CONNS"
                );
                for v in vols.as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:>12} {:>10} {:>12} {:>6}",
                        v["name"].as_str().unwrap_or("?"),
                        human(v["size"].as_u64().unwrap_or(0)),
                        human(v["chunk_size"].as_u64().unwrap_or(0)),
                        human(v["allocated_bytes"].as_u64().unwrap_or(0)),
                        v["connections"].as_u64().unwrap_or(0),
                    );
                }
            }
        }
        VolumeCommand::Info { name, json } => {
            let v = client.volume(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("name:        {}", v["name"].as_str().unwrap_or("?"));
                println!(
                    "size:        {} ({} bytes)",
                    human(v["size"].as_u64().unwrap_or(0)),
                    v["size"]
                );
                println!(
                    "chunk size:  {}",
                    human(v["chunk_size"].as_u64().unwrap_or(0))
                );
                println!(
                    "allocated:   {}",
                    human(v["allocated_bytes"].as_u64().unwrap_or(0))
                );
                println!("connections: {}", v["connections"]);
                println!("checksum:    {}", v["checksum"].as_str().unwrap_or("?"));
                println!("nbd:         {}", v["nbd_uri"].as_str().unwrap_or("?"));
            }
        }
        VolumeCommand::Delete { name } => {
            client.delete_volume(&name)?;
            println!("deleted volume {name}");
        }
        VolumeCommand::Scrub { name, json } => {
            // Every node reads its whole copy: no 60 s limit.
            let v = AdminClient::with_timeout(&v_server, std::time::Duration::from_secs(24 * 3600))
                .scrub_volume(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<6} {:>8} {:>6} {:>9} {:>11}",
                    "NODE", "CHUNKS", "BAD", "REPAIRED", "UNREPAIRED"
                );
                for n in v["nodes"].as_array().into_iter().flatten() {
                    match n["error"].as_str() {
                        Some(e) => println!("{:<6} error: {e}", n["node"]),
                        None => println!(
                            "{:<6} {:>8} {:>6} {:>9} {:>11}",
                            n["node"],
                            n["chunks"],
                            n["bad"],
                            n["repaired"],
                            n["unrepaired"].as_array().map_or(0, |u| u.len())
                        ),
                    }
                }
            }
            let unrepaired = v["nodes"].as_array().into_iter().flatten().any(|n| {
                n["error"].is_string() || n["unrepaired"].as_array().is_some_and(|u| !u.is_empty())
            });
            if !json {
                print_verify(&v["replicas"]);
            }
            if unrepaired || !verify_clean(&v["replicas"]) {
                anyhow::bail!("volume {name}: some blocks could not be verified or repaired");
            }
        }
        VolumeCommand::Verify { name, json } => {
            let v = AdminClient::with_timeout(&v_server, std::time::Duration::from_secs(24 * 3600))
                .verify_volume(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_verify(&v);
            }
            if !verify_clean(&v) {
                anyhow::bail!("volume {name}: replicas differ where they could not be repaired, or were not all compared");
            }
        }
    }
    Ok(())
}
