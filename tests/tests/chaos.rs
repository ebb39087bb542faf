//! Chaos with an acknowledged-write oracle, bounded for CI: a few rounds of
//! SIGKILL/restart, SIGSTOP/SIGCONT and partitions of one node at a time
//! while three writers overwrite their own blocks through different nodes;
//! afterwards every node must return, for every block, the last
//! acknowledged version or a later one of unknown outcome, the replicas'
//! chunk files must be identical, and healthy nodes must not have failed a
//! write. The seed is random unless `RAFTBLOCK_CHAOS_SEED` is set; a failure
//! prints the `raftblock-chaos` command that replays its fault schedule.

use raftblock_tests::chaos::{self, Config};

#[test]
fn chaos_keeps_every_acknowledged_write() {
    let seed = std::env::var("RAFTBLOCK_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(chaos::random_seed);
    // Eight rounds keep the test near a minute and a half on a two-core machine.
    let cfg = Config::new(seed, 8);
    let Some(out) = chaos::run(&cfg) else {
        return;
    };
    println!("{}", out.report);
    assert!(
        out.problems.is_empty(),
        "chaos seed {seed}: {} problem(s); replay with `{}`:\n{}",
        out.problems.len(),
        chaos::replay_command(&cfg),
        out.problems.join("\n")
    );
}
