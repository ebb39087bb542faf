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
    Serve(ServeArgs),
    /// Create, list, inspect and delete volumes on a running daemon.
    Volume(VolumeArgs),
    /// Start a throwaway node with a volume, export it over NBD and self-check it.
    Demo(DemoArgs),
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
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            crate::daemon::init_logging();
            let rt = crate::daemon::runtime(args.worker_threads)?;
            rt.block_on(crate::daemon::serve_until_signal(args))
        }
        Command::Demo(args) => {
            crate::daemon::init_logging();
            let rt = crate::daemon::runtime(None)?;
            rt.block_on(crate::demo::run(args))
        }
        Command::Volume(v) => volume(v),
    }
}

fn volume(v: VolumeArgs) -> Result<()> {
    let client = AdminClient::new(&v.server);
    match v.command {
        VolumeCommand::Create {
            name,
            size,
            chunk_size,
        } => {
            let size = parse_size(&size).context("--size")?;
            let chunk_size = chunk_size
                .map(|c| parse_size(&c).context("--chunk-size"))
                .transpose()?;
            let vol = client.create_volume(&name, size, chunk_size)?;
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
    }
    Ok(())
}
