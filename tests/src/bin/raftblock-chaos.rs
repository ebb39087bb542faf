//! Long chaos runs by hand: the engine of the `chaos` test (faults one at a
//! time on a 3-node cluster, an acknowledged-write oracle, a read-back
//! through every node) for as many rounds as asked, with a progress line per
//! round; `--seed` replays a failed run's fault schedule. Needs root (the
//! partitioned node lives in a network namespace). The daemons it starts
//! are this very executable (it runs the `raftblock` program when its
//! environment says so), so `cargo run` of this binary alone never tests a
//! stale `raftblock-it`.

use raftblock_tests::chaos::{self, Config};

/// Set in the environment of the daemons (and CLI runs) this process
/// starts: then it is `raftblock`, not the chaos driver.
const AS_RAFTBLOCK: &str = "RAFTBLOCK_CHAOS_AS_RAFTBLOCK";

const USAGE: &str = "usage: raftblock-chaos [--rounds N] [--seed S] [--grace-ms MS]";

fn main() {
    if std::env::var_os(AS_RAFTBLOCK).is_some() {
        std::process::exit(raftblock::main_exit_code());
    }
    let mut cfg = Config::new(chaos::random_seed(), 20);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args.next().unwrap_or_default();
            v.parse().unwrap_or_else(|_| {
                eprintln!("{name} needs a number, got {v:?}\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--rounds" => cfg.rounds = value("--rounds") as usize,
            "--seed" => cfg.seed = value("--seed"),
            "--grace-ms" => cfg.grace = std::time::Duration::from_millis(value("--grace-ms")),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    // Before any thread exists: the daemons inherit both.
    let me = std::env::current_exe().expect("path of this executable");
    std::env::set_var(AS_RAFTBLOCK, "1");
    std::env::set_var(raftblock_tests::RAFTBLOCK_BIN_ENV, me);

    let Some(out) = chaos::run(&cfg) else {
        std::process::exit(2);
    };
    println!("{}", out.report);
    if out.problems.is_empty() {
        println!("chaos seed {}: every acknowledged write kept", cfg.seed);
        return;
    }
    eprintln!(
        "chaos seed {}: {} problem(s); replay with `{}`:",
        cfg.seed,
        out.problems.len(),
        chaos::replay_command(&cfg)
    );
    for p in &out.problems {
        eprintln!("{p}");
    }
    std::process::exit(1);
}
