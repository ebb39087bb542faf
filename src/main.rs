//! The `raftblock` binary: parses the command line and hands off to the
//! daemon (`serve`), the volume commands (which talk to a daemon's admin
//! API), or the demo. Errors are printed with their context and exit 1.

mod admin;
mod cli;
mod client;
mod daemon;
mod demo;
mod size;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let code = match cli::run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
