//! `raftblock demo`: a throwaway node in a temporary directory with a volume
//! `demo` exported over NBD, and a self-check that writes random data through
//! a real NBD connection, flushes, reads it back and verifies every byte.

use anyhow::{bail, Context, Result};
use rand::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::time::Instant;

use raftblock_volume_driver::NbdClient;

use crate::cli::{DemoArgs, ServeArgs};
use crate::client::AdminClient;
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

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let size = parse_size(&args.size).context("--size")?;
    if size < CHECK_BYTES {
        bail!("--size must be at least 64M for the self-check");
    }
    let dir = tempfile::Builder::new()
        .prefix("raftblock-demo-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let serve = ServeArgs {
        data_dir: dir.path().to_path_buf(),
        nbd_listen: free_or(args.nbd_listen).await,
        admin_listen: free_or(args.admin_listen).await,
        io_engine: None,
        io_threads: 4,
        inline_write_max: "32M".into(),
        worker_threads: None,
    };
    let node = Node::bind(&serve).await?;
    let (nbd, admin) = (node.nbd_addr, node.admin_addr);
    // The node stops when Ctrl-C/SIGTERM arrives or when the demo is done.
    let mut signalled = shutdown_on_signal()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        if signalled.wait_for(|s| *s).await.is_ok() {
            let _ = stop_on_signal.send(true);
        }
    });
    let mut stopped = stop_rx.clone();
    let node_task = tokio::spawn(node.run(stop_rx));

    println!("raftblock demo: one node in {}", dir.path().display());
    let admin_s = admin.to_string();
    let vol = tokio::task::spawn_blocking(move || {
        AdminClient::new(&admin_s).create_volume("demo", size, None)
    })
    .await??;
    let uri = vol["nbd_uri"].as_str().unwrap_or("?").to_string();
    println!("volume `demo`: {} at {uri}", human(size));
    println!("admin API:     http://{admin}  (metrics at /metrics)");

    let check = self_check(nbd).await;
    match &check {
        Ok(()) => println!("self-check:    PASSED"),
        Err(e) => println!("self-check:    FAILED: {e:#}"),
    }
    if check.is_ok() && !args.exit {
        println!();
        println!("Try it (the node stays up until Ctrl-C):");
        println!("  nbdinfo {uri}");
        println!("  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' {uri}");
        println!("  fio --name=t --ioengine=nbd --uri={uri} --rw=randwrite --bs=4k --iodepth=32 --size=256M --verify=crc32c");
        println!("  raftblock volume list --server {admin}");
        let _ = stopped.wait_for(|s| *s).await;
    }
    let _ = stop_tx.send(true);
    node_task.await??;
    check
}

async fn self_check(nbd: SocketAddr) -> Result<()> {
    let mut data = vec![0u8; CHECK_BYTES as usize];
    rand::rngs::StdRng::seed_from_u64(0x5eed).fill_bytes(&mut data);
    let mut c = NbdClient::connect(nbd, "demo")
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
    let mib = CHECK_BYTES as f64 / (1 << 20) as f64;
    println!(
        "self-check:    wrote {} in 1 MiB requests (depth {DEPTH}) at {:.0} MiB/s, flushed",
        human(CHECK_BYTES),
        mib / wsecs
    );
    println!(
        "self-check:    read back and verified {} at {:.0} MiB/s; unwritten range reads as zeros",
        human(verified),
        mib / rsecs
    );
    Ok(())
}
