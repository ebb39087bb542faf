//! The `raftblock-powercut` program: see [`raftblock_powercut::cli`].

fn main() -> anyhow::Result<()> {
    raftblock_powercut::cli::main()
}
