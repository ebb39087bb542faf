//! `raftblock demo`: a throwaway local 3-node cluster (one process, each
//! node with its own data directory and loopback ports) with a 3-replica
//! volume `demo` exported over NBD on every node, and a self-check that
//! writes random data through one node's NBD server, flushes, and reads it
//! back and verifies every byte through the other two.

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::time::Instant;

use raftblock_volume_driver::NbdClient;

use crate::client::AdminClient;
use crate::config::{DemoArgs, ServeArgs};
use crate::daemon::{shutdown_on_signal, Node};
use crate::size::{human, parse_size};

const CHECK_BYTES: u64 = 64 << 20;
const REQ: usize = 1 << 20;
const DEPTH: usize = 8;

async fn free_or(addr: SocketAddr) -> SocketAddr {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => addr,
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

/// Nodes in the demo cluster.
const NODES: u64 = 3;

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let size = parse_size(&args.size).context("--size")?;
    if size < 2 * CHECK_BYTES {
        // The self-check writes 64 MiB and reads unwritten space after it.
        bail!("--size must be at least 128M for the self-check");
    }
    let (dir, _tmp) = match &args.dir {
        Some(d) => {
            if d.join("node1").exists() {
                bail!(
                    "{} already holds a demo cluster; pass an empty or new directory to --dir",
                    d.display()
                );
            }
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating the demo directory {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("raftblock-demo-")
                .tempdir()
                .context("creating a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let log = dir.join("raftblock.log");
    if args.verbose {
        crate::daemon::init_logging();
    } else {
        crate::daemon::init_logging_to(&log)?;
    }
    println!("raftblock demo: starting a {NODES}-node cluster on this machine…");
    // Addresses first: every node needs the whole member list.
    let mut listen = Vec::new();
    for i in 0..NODES {
        let want = SocketAddr::new(args.admin_listen.ip(), 7470 + i as u16);
        listen.push((i + 1, free_port(want).await?));
    }
    let mut nodes = Vec::new();
    for (id, raft) in &listen {
        let i = (*id - 1) as u16;
        let mut serve = ServeArgs::new(dir.join(format!("node{id}")));
        serve.node_id = Some(*id);
        serve.listen = *raft;
        serve.peers = listen.clone();
        serve.nbd_listen = free_or(port_plus(args.nbd_listen, i)).await;
        serve.admin_listen = free_or(port_plus(args.admin_listen, i)).await;
        serve.worker_threads = Some(2);
        if *id == 1 {
            // One socket path, one node: the others could only stand by.
            serve.plugin_socket = args.plugin_socket.clone();
        }
        nodes.push(Node::bind(&serve).await?);
    }
    let nbd: Vec<SocketAddr> = nodes.iter().map(|n| n.nbd_addr).collect();
    let admin: Vec<SocketAddr> = nodes.iter().map(|n| n.admin_addr).collect();
    // The nodes stop when Ctrl-C/SIGTERM arrives or when the demo is done.
    let mut signalled = shutdown_on_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        if signalled.wait_for(|s| *s).await.is_ok() {
            let _ = stop_on_signal.send(true);
        }
    });
    let mut stopped = stop_rx.clone();
    let tasks: Vec<_> = nodes
        .into_iter()
        .map(|n| tokio::spawn(n.run(stop_rx.clone())))
        .collect();

    let t = Instant::now();
    let admin0 = admin[0].to_string();
    let vol = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
        // The cluster elects its metadata leader first: retry until it can
        // take the volume.
        let client = AdminClient::new(&admin0);
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match client.create_volume_with("demo", size, None, Some(NODES as u32)) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() < deadline && e.to_string().contains("HTTP 503") => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await??;
    let kept = if args.dir.is_some() {
        "kept"
    } else {
        "removed at exit"
    };
    println!();
    println!(
        "  cluster   {NODES} nodes on {}, data in {} ({kept}), ready in {:.1} s",
        admin[0].ip(),
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "  volume    demo: {}, {} replicas, {} shards",
        human(size),
        vol["replicas"],
        vol["shards"].as_array().map(|a| a.len()).unwrap_or(0),
    );
    for (i, n) in nbd.iter().enumerate() {
        let label = if i == 0 { "  NBD      " } else { "           " };
        println!("{label} nbd://{n}/demo   (node {})", i + 1);
    }
    println!(
        "  status    http://{}/   (open it in a browser; every node serves it: {})",
        admin[0],
        admin[1..]
            .iter()
            .map(|a| format!("http://{a}/"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.verbose {
        println!("  logs      on this terminal (--verbose)");
    } else {
        println!(
            "  logs      {}   (--verbose shows them here)",
            log.display()
        );
    }
    println!();

    let check = self_check(nbd[0], &nbd[1..]).await;
    match &check {
        Ok(c) => println!(
            "self-check PASSED: wrote {} of random data through node 1 at {:.0} MiB/s, flushed, then read it back through node 2 ({:.0} MiB/s) and node 3 ({:.0} MiB/s): every byte matched, and unwritten space reads as zeros.",
            human(CHECK_BYTES),
            c.write_mib_s,
            c.read_mib_s[0],
            c.read_mib_s[1],
        ),
        Err(e) => println!("self-check FAILED: {e:#}"),
    }
    if check.is_err() && args.dir.is_none() && !args.verbose {
        if let Some(t) = _tmp {
            // Keep the evidence: the logs say why.
            let kept = t.keep();
            println!("the demo's data and logs are kept in {}", kept.display());
        }
    } else if check.is_ok() && !args.exit {
        let (uri, a) = (format!("nbd://{}/demo", nbd[1]), admin[0]);
        println!();
        println!("Try next (the cluster runs until Ctrl-C):");
        println!("  open http://{a}/ in a browser");
        println!("  nbdinfo {uri}");
        println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {uri}");
        println!("  fio --name=t --ioengine=nbd --uri={uri} --rw=randwrite --bs=4k --iodepth=32 --size=256M --verify=crc32c");
        println!("  raftblock top --server {a}");
        println!("  raftblock cluster status --server {a}");
        println!("  raftblock volume list --server {a}");
        if args.plugin_socket != "off" {
            println!("  docker volume create -d raftblock -o size=1G data   # node 1 serves {} (as root)", args.plugin_socket);
            println!("  docker run --rm -v data:/data busybox sh -c 'echo hello > /data/f && cat /data/f'");
        }
        let _ = stopped.wait_for(|s| *s).await;
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await??;
    }
    check.map(|_| ())
}

/// What the self-check measured.
struct CheckFigures {
    write_mib_s: f64,
    /// Per node read back from.
    read_mib_s: Vec<f64>,
}

/// Node `i`'s port: the next ones after the one asked for, or any free
/// port for each node when port 0 is asked for.
fn port_plus(a: SocketAddr, i: u16) -> SocketAddr {
    if a.port() == 0 {
        return a;
    }
    SocketAddr::new(a.ip(), a.port().saturating_add(i))
}

async fn free_port(want: SocketAddr) -> Result<SocketAddr> {
    if tokio::net::TcpListener::bind(want).await.is_ok() {
        return Ok(want);
    }
    let l = tokio::net::TcpListener::bind(SocketAddr::new(want.ip(), 0)).await?;
    Ok(l.local_addr()?)
}

/// Writes through `write_to`, then reads everything back through each of
/// `read_from` (other nodes, so reads are forwarded to the shard leaders).
async fn self_check(write_to: SocketAddr, read_from: &[SocketAddr]) -> Result<CheckFigures> {
    let mut data = vec![0u8; CHECK_BYTES as usize];
    rand::rngs::StdRng::seed_from_u64(0x5eed).fill_bytes(&mut data);
    let mut c = NbdClient::connect(write_to, "demo")
        .await
        .context("connecting over NBD")?;

    let t = Instant::now();
    let mut next = 0usize;
    while next < data.len() || c.in_flight() > 0 {
        while next < data.len() && c.in_flight() < DEPTH {
            c.send_write(next as u64, &data[next..next + REQ]).await?;
            next += REQ;
        }
        let done = c.complete().await?;
        if done.error != 0 {
            bail!("write failed with NBD error {}", done.error);
        }
    }
    c.send_flush().await?;
    let f = c.complete().await?;
    if f.error != 0 {
        bail!("flush failed with NBD error {}", f.error);
    }
    let wsecs = t.elapsed().as_secs_f64();
    c.disconnect().await?;
    let mib = CHECK_BYTES as f64 / (1 << 20) as f64;
    let mut figures = CheckFigures {
        write_mib_s: mib / wsecs,
        read_mib_s: Vec::new(),
    };
    for addr in read_from {
        figures.read_mib_s.push(read_back(*addr, &data).await?);
    }
    Ok(figures)
}

/// Reads `data` back through `addr` and checks it; returns the MiB/s.
async fn read_back(addr: SocketAddr, data: &[u8]) -> Result<f64> {
    let mut c = NbdClient::connect(addr, "demo")
        .await
        .context("connecting over NBD")?;
    let t = Instant::now();
    let mut offsets = std::collections::HashMap::new();
    let mut next = 0usize;
    let mut verified = 0u64;
    while next < data.len() || c.in_flight() > 0 {
        while next < data.len() && c.in_flight() < DEPTH {
            let cookie = c.send_read(next as u64, REQ as u32).await?;
            offsets.insert(cookie, next);
            next += REQ;
        }
        let done = c.complete().await?;
        if done.error != 0 {
            bail!("read failed with NBD error {}", done.error);
        }
        let off = offsets
            .remove(&done.cookie)
            .context("reply for an unknown read")?;
        if done.data != data[off..off + REQ] {
            bail!("data read back at offset {off} differs from what was written");
        }
        verified += REQ as u64;
    }
    let rsecs = t.elapsed().as_secs_f64();
    // Past the written range the volume is still a hole and reads as zeros.
    let cookie = c.send_read(CHECK_BYTES, 65536).await?;
    let z = c.complete().await?;
    if z.cookie != cookie || z.error != 0 || z.data.iter().any(|&b| b != 0) {
        bail!("unwritten range did not read as zeros");
    }
    c.disconnect().await?;
    if verified != CHECK_BYTES {
        bail!("read back {verified} bytes of {CHECK_BYTES} through {addr}");
    }
    Ok(CHECK_BYTES as f64 / (1 << 20) as f64 / rsecs)
}
