//! The `raftblock` program as a library: the command line (`serve`, the
//! volume commands that talk to a daemon's admin API, the demo) behind one
//! entry point, so the binary and the integration-test build of it share
//! every line. The admin API client and size parsing are public for the
//! bench and the test harness.

mod admin;
mod cli;
pub mod client;
mod config;
mod daemon;
mod demo;
mod docker_volumes;
mod drain;
mod events;
mod progress;
mod replication;
pub mod size;
mod stats;
mod status;
mod top;

use clap::Parser;

/// Parses the process's command line, runs it, and returns the exit status:
/// 0 on success, 1 with the error and its context printed to stderr.
pub fn main_exit_code() -> i32 {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
