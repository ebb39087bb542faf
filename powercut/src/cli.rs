//! Command line: `raftblock-powercut --backing DIR --mount DIR` mounts the
//! filesystem, prints `ready` on stdout once it is mounted (tests wait for
//! that line) and serves in the foreground until unmounted or killed. Logs
//! go to stderr (`RUST_LOG`, default `warn` without fuser's unmount noise).
//! A library function, so the integration tests of the workspace can build
//! the same program into their own package.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// A FUSE filesystem that loses unsynced data when killed: a power cut you
/// can run in a test.
#[derive(Debug, Parser)]
#[command(name = "raftblock-powercut", version, about)]
struct Args {
    /// Directory holding the files (durable state).
    #[arg(long)]
    backing: PathBuf,
    /// Where to mount the view.
    #[arg(long)]
    mount: PathBuf,
}

/// Parses the command line and serves until unmounted or killed.
pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser logs a failed umount2 at ERROR after every external
                // unmount (the mount is already gone); that is not news.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser::mnt=off")),
        )
        .init();
    crate::serve(&args.backing, &args.mount, || {
        let mut out = std::io::stdout().lock();
        // A lost line only makes a waiting test time out; nothing to do here.
        let _ = writeln!(out, "ready").and_then(|_| out.flush());
    })
    .context("raftblock-powercut")
}
