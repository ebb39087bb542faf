//! Command-line interface: `serve`, `volume create|list|info|resize|delete`,
//! `demo`, `cluster`, `node`, and `completions` for shells.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::client::AdminClient;
use crate::config::{DemoArgs, ServeArgs};
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
    /// Act on a node of the cluster.
    Node(NodeArgs),
    /// A live view of every volume's IOPS, throughput and latency across
    /// the cluster (Ctrl-C to stop).
    Top(TopArgs),
    /// Print the completion script for a shell, e.g.
    /// `raftblock completions bash > /etc/bash_completion.d/raftblock`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct TopArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Time between screens, e.g. 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
    interval: std::time::Duration,
    /// Stop after this many screens (default: until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
    /// Order of the rows.
    #[arg(long, value_enum, default_value = "iops")]
    sort: crate::top::SortBy,
}

#[derive(Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    admin: AdminAddr,
    #[command(subcommand)]
    command: NodeCommand,
}

/// On or off.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Switch {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// The cluster's nodes: state and why, disk use, replicas and leaders.
    List {
        /// Print JSON (the `nodes` of `cluster status --json`).
        #[arg(long)]
        json: bool,
    },
    /// Put a node in maintenance (`on`: it is never marked out while it is
    /// down, like Ceph's noout) or take it out of maintenance (`off`).
    Maintenance {
        /// The node's id.
        id: u64,
        /// on or off.
        #[arg(value_enum)]
        state: Switch,
    },
    /// Drain a node: no new replicas go to it, its leaders and replicas
    /// move to the other nodes (refused up front when they cannot hold
    /// them). Afterwards `node remove` takes it out of the cluster.
    Drain {
        /// The node's id.
        id: u64,
        /// Stop draining it instead (replicas already moved stay moved).
        #[arg(long)]
        cancel: bool,
        /// Wait until it holds no replica and leads no shard, showing
        /// progress.
        #[arg(long)]
        wait: bool,
    },
    /// Remove a node that holds no replicas (drained, or lost and healed)
    /// from the cluster.
    Remove {
        /// The node's id.
        id: u64,
    },
}

/// Where the cluster commands reach the cluster.
#[derive(Args, Debug)]
struct AdminAddr {
    /// Admin address of any node.
    #[arg(
        long,
        env = "RAFTBLOCK_SERVER",
        default_value = "127.0.0.1:7480",
        global = true
    )]
    server: String,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    #[command(flatten)]
    admin: AdminAddr,
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
    /// What the nodes noticed lately, oldest first: nodes down and back,
    /// replicas lost and regained, rebuilds started and finished (kept in
    /// memory, the last 100 per node).
    Events {
        /// Print JSON (the `events` of `cluster status --json`, newest
        /// first).
        #[arg(long, conflicts_with = "follow")]
        json: bool,
        /// Keep printing new events as they come (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// With --follow, time between looks, e.g. 2s.
        #[arg(long, default_value = "2s", value_parser = crate::config::parse_duration)]
        interval: std::time::Duration,
    },
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
        /// Put each shard's replicas on nodes with distinct values of this
        /// node label (`serve --labels zone=a`), e.g. zone.
        #[arg(long)]
        spread: Option<String>,
        /// Place replicas only on nodes with these labels, e.g. disk=ssd.
        #[arg(long, value_parser = crate::config::parse_labels)]
        require: Option<std::collections::BTreeMap<String, String>>,
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
    /// Grow (or, with --allow-shrink, shrink) a volume, online: new NBD
    /// connections see the new size, and a volume attached through the
    /// Docker plugin grows under its container, filesystem included.
    Resize {
        /// Volume name.
        name: String,
        /// The new size, e.g. 20G.
        #[arg(long)]
        size: String,
        /// Allow a smaller size (the data past it is lost; refused while
        /// the volume is attached).
        #[arg(long)]
        allow_shrink: bool,
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

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            crate::daemon::init_logging();
            let rt = crate::daemon::runtime(args.worker_threads)?;
            rt.block_on(crate::daemon::serve_until_signal(*args))
        }
        Command::Demo(args) => {
            // The demo sets up its own logging: to a file unless --verbose.
            let rt = crate::daemon::runtime(None)?;
            rt.block_on(crate::demo::run(args))
        }
        Command::Volume(v) => volume(v),
        Command::Cluster(c) => cluster(c),
        Command::Node(n) => node(n),
        Command::Top(t) => crate::top::run(&t.admin.server, t.interval, t.count, t.sort),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "raftblock",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

fn node(n: NodeArgs) -> Result<()> {
    let client = AdminClient::new(&n.admin.server);
    match n.command {
        NodeCommand::List { json } => {
            let st = client.cluster_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st["nodes"])?);
            } else {
                print!("{}", crate::status::render_nodes(&st));
            }
            Ok(())
        }
        NodeCommand::Maintenance { id, state } => {
            let on = matches!(state, Switch::On);
            client.post(
                &format!("/v1/cluster/nodes/{id}/maintenance"),
                &serde_json::json!({ "on": on }),
            )?;
            println!(
                "node {id} {}",
                if on {
                    "is in maintenance: it is not marked out while it is down"
                } else {
                    "is out of maintenance"
                }
            );
            Ok(())
        }
        NodeCommand::Drain { id, cancel, wait } => {
            let r = client.post(
                &format!("/v1/cluster/nodes/{id}/drain"),
                &serde_json::json!({ "on": !cancel }),
            )?;
            if cancel {
                println!("node {id} is no longer draining");
                return Ok(());
            }
            println!(
                "node {id} is draining: {} replica(s) to move",
                r["replicas"].as_u64().unwrap_or(0)
            );
            if wait {
                crate::drain::wait(&client, id)?;
            }
            Ok(())
        }
        NodeCommand::Remove { id } => {
            client.delete(&format!("/v1/cluster/nodes/{id}"))?;
            println!("node {id} removed from the cluster");
            Ok(())
        }
    }
}

fn cluster(c: ClusterArgs) -> Result<()> {
    let client = AdminClient::new(&c.admin.server);
    match c.command {
        ClusterCommand::Status { json } => {
            let st = client.cluster_status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print!("{}", crate::status::render(&st));
            }
        }
        ClusterCommand::Events {
            json,
            follow,
            interval,
        } => crate::events::run(&c.admin.server, json, follow, interval)?,
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
            spread,
            require,
        } => {
            let size = parse_size(&size).context("--size")?;
            let chunk_size = chunk_size
                .map(|c| parse_size(&c).context("--chunk-size"))
                .transpose()?;
            if replicas == Some(0) {
                anyhow::bail!("--replicas must be at least 1");
            }
            let mut body = serde_json::json!({ "name": name, "size": size });
            if let Some(c) = chunk_size {
                body["chunk_size"] = c.into();
            }
            if let Some(r) = replicas {
                body["replicas"] = r.into();
            }
            if let Some(k) = spread {
                body["spread"] = k.into();
            }
            if let Some(req) = require {
                body["require"] = serde_json::json!(req);
            }
            let vol = client.post("/v1/volumes", &body)?;
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
        VolumeCommand::Resize {
            name,
            size,
            allow_shrink,
        } => {
            let size = parse_size(&size).context("--size")?;
            let (server, vol) = (v_server.clone(), name.clone());
            let v = crate::progress::follow(
                &v_server,
                &name,
                &format!(
                    "resizing {name} to {} (every shard applies it)",
                    human(size)
                ),
                move || AdminClient::new(&server).resize_volume(&vol, size, allow_shrink),
            )?;
            println!(
                "volume {name} is now {}",
                human(v["size"].as_u64().unwrap_or(size))
            );
        }
        VolumeCommand::Delete { name } => {
            client.delete_volume(&name)?;
            println!("deleted volume {name}");
        }
        VolumeCommand::Scrub { name, json } => {
            // Every node reads its whole copy: no 60 s limit.
            let (server, vol) = (v_server.clone(), name.clone());
            let v = crate::progress::follow(&v_server, &name, "scrubbing", move || {
                AdminClient::with_timeout(&server, std::time::Duration::from_secs(24 * 3600))
                    .scrub_volume(&vol)
            })?;
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
            let (server, vol) = (v_server.clone(), name.clone());
            let v = crate::progress::follow(&v_server, &name, "comparing replicas", move || {
                AdminClient::with_timeout(&server, std::time::Duration::from_secs(24 * 3600))
                    .verify_volume(&vol)
            })?;
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
